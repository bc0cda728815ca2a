//! Command-line flags (clap derive) and their value parsers.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};
use protocol::client::{GroupName, DEFAULT_MAX_GROUP_ID_LEN};
use protocol::cluster::{ClientId, Uid, DEFAULT_MAX_UID_LEN};

pub const DEFAULT_URL: &str = "ws://127.0.0.1:1234";
pub const DEFAULT_ADMIN_URL: &str = "http://127.0.0.1:9090";

const EXIT_CODES: &str = "\
Exit codes:
  0  success: a send was acknowledged (`send`, `send-all`, `send-uid`, `send-client`), or
     was written to a server that sends no acknowledgements (said on stderr); a
     query was answered (`whoami`, `count`, `members`); the admin API accepted the request
     (HTTP 2xx: `publish`, `bind`, `unbind`, `groups`, `clients`, `nodes`); `join` received
     its --count messages, or was stopped by Ctrl-C or SIGTERM (the connection is closed
     cleanly with code 1000). A partial answer (some gateways did not answer in time) is a
     success too, reported on stderr: `partial answer: no answer from NODE, ...`
  1  error: bad arguments, cannot connect, an error reply from the server (`error: CODE:
     REASON`, for the admin API commands its error answer), the server closed the
     connection, stdout cannot be written, or `join`'s --resume-file is malformed or cannot
     be written
  2  timeout: --timeout expired first";

/// Client of the group push gateway: join groups and print what they receive, send to a group,
/// to everyone, to uids or to one connection, query the cluster over the WebSocket, or use the
/// gateway's admin HTTP API.
#[derive(Debug, Parser)]
#[command(name = "client-cli", version, after_help = EXIT_CODES)]
pub struct Cli {
    /// WebSocket URL of the gateway, for the commands that open a WebSocket (`ws://` or
    /// `wss://`; may also be given after the command).
    #[arg(long, env = "CLIENT_CLI_URL", default_value = DEFAULT_URL, value_parser = parse_ws_url)]
    pub url: String,

    /// How long to wait for the WebSocket handshake (or the admin API's TCP connection), in
    /// seconds.
    #[arg(long, global = true, value_name = "SECS", default_value = "5", value_parser = parse_secs)]
    pub connect_timeout: Secs,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Join groups, then print every message they receive on stdout, one per line.
    ///
    /// Once the server has acknowledged every join, prints `joined G1 G2 ...` then
    /// `client_id C` (the connection's id, from `whoami`) on stderr; from then on each text
    /// frame received is printed verbatim on stdout, flushed line by line: group messages and,
    /// with --presence, the groups' join and leave events
    /// (`{"cmd":"join","group_id":G,"client_id":C,"uid":U}`). Runs until Ctrl-C, until --count
    /// messages arrived, or until --timeout expires.
    ///
    /// With --positioned (groups with history on the gateway), each join is answered by a
    /// `joined` reply giving the group's position, and each message arrives with its offset and
    /// epoch: its text is printed as above. With --resume-file, the position of the last message
    /// printed for each group is kept in a file, and the next run receives what it missed first.
    /// A recovery that could not bring back every missed message is reported on stderr: `warning:
    /// group G: recovery incomplete (...): reload your state`.
    ///
    /// A server speaking the seed protocol (the original Workerman example) acknowledges
    /// nothing: when it has answered nothing within --ack-timeout, a warning says so on stderr,
    /// then `joined G1 G2 ... (unconfirmed)`, and what arrives is printed as above (--acks none
    /// does not wait).
    #[command(after_help = EXIT_CODES)]
    Join(JoinArgs),
    /// Send one message to a group and wait for the server's ack.
    ///
    /// A server speaking the seed protocol (the original Workerman example) acknowledges
    /// nothing: when it has answered nothing within --ack-timeout, the message was written but
    /// its delivery is unconfirmed: a warning says so on stderr and the exit code is 0, as the
    /// seed protocol promises no more (--acks require waits for an ack, --acks none does not).
    #[command(after_help = EXIT_CODES)]
    Send(SendArgs),
    /// Send one message to every connection of the cluster and wait for the server's ack.
    #[command(after_help = EXIT_CODES)]
    SendAll(SendAllArgs),
    /// Send one message to the connections bound to uids and wait for the server's ack.
    ///
    /// `send-uid UID MESSAGE`, or `send-uid UID1 UID2 ... MESSAGE` for several uids: the last
    /// argument is the message.
    #[command(after_help = EXIT_CODES)]
    SendUid(SendUidArgs),
    /// Send one message to one connection, anywhere in the cluster, and wait for the ack.
    #[command(after_help = EXIT_CODES)]
    SendClient(SendClientArgs),
    /// Print a new connection's client id, uid and groups.
    ///
    /// Prints `client_id C`, `uid U` (`uid -` when unbound) and one `group G` line per group.
    /// With --bind, binds the connection to a uid first.
    #[command(after_help = EXIT_CODES)]
    Whoami(WhoamiArgs),
    /// Print how many connections, and distinct uids, a group has across the cluster.
    ///
    /// Prints `GROUP: N connections, M uids`.
    #[command(after_help = EXIT_CODES)]
    Count(CountArgs),
    /// List a group's members across the cluster.
    ///
    /// Prints one `CLIENT_ID UID` line per member (`-` when unbound), for one page (--limit); --all follows the pages to the end. The gateway must allow
    /// member lists (its --client-member-lists).
    #[command(after_help = EXIT_CODES)]
    Members(MembersArgs),
    /// Publish through the gateway's admin HTTP API (POST /api/publish), as a backend does.
    ///
    /// `publish GROUP MESSAGE` publishes one message; `publish --batch FILE` (or `-` for stdin)
    /// publishes a JSON array of {"group_id":G,"message":M} objects, all or nothing. Prints
    /// `published N` on stderr once the gateway accepted them.
    #[command(after_help = EXIT_CODES)]
    Publish(PublishArgs),
    /// Bind a connection to a uid (admin API: POST /api/bind_uid).
    ///
    /// Prints `affected N`: the connections bound (0 when the client id is not connected).
    #[command(after_help = EXIT_CODES)]
    Bind(BindArgs),
    /// Unbind a connection, or every connection of a uid (admin API: POST /api/unbind_uid).
    ///
    /// Prints `affected N`: the connections unbound.
    #[command(after_help = EXIT_CODES)]
    Unbind(UnbindArgs),
    /// List the groups with members anywhere in the cluster (admin API: GET /api/groups).
    ///
    /// Prints one `GROUP CONNECTIONS` line per group, for one page (--limit); --all follows the
    /// pages to the end.
    #[command(after_help = EXIT_CODES)]
    Groups(GroupsArgs),
    /// Look up a connection, or with --uid a uid's connections (admin API: GET
    /// /api/clients/ID, GET /api/uids/UID).
    ///
    /// For a client id: `client_id C`, `online true|false`, `node N`, `uid U` (`-` when
    /// unbound) and one `group G` line per group. For a uid: `uid U`, `online true|false` and
    /// one `client_id C` line per connection.
    #[command(after_help = EXIT_CODES)]
    Clients(ClientsArgs),
    /// List the live gateways (admin API: GET /api/nodes).
    ///
    /// Prints one `NODE NAME CONNECTIONS conns` line per gateway, with ` (self)` after the one
    /// answering.
    #[command(after_help = EXIT_CODES)]
    Nodes(NodesArgs),
}

#[derive(Debug, Args)]
pub struct JoinArgs {
    /// Group ids to join.
    #[arg(required = true, value_name = "GROUP", allow_negative_numbers = true, value_parser = parse_group)]
    pub groups: Vec<String>,

    /// Exit (closing cleanly) after this many messages (presence events count as messages).
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,

    /// Give up (exit 2) if the joins, and the --count messages when given, have not all arrived
    /// this many seconds after start.
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    pub timeout: Option<Secs>,

    /// Also receive the groups' join and leave events (the gateway must allow it).
    #[arg(long)]
    pub presence: bool,

    /// Bind the connection to this uid before joining (a gateway without join tokens).
    #[arg(long, value_name = "UID", allow_negative_numbers = true, value_parser = parse_uid)]
    pub uid: Option<Uid>,

    /// Join with positions (groups with history on the gateway): each join waits for the
    /// group's `joined` reply, and each message arrives with its offset and epoch (only its
    /// text is printed, as for other joins).
    #[arg(long)]
    pub positioned: bool,

    /// Keep each group's position (of the last message printed) in FILE, a JSON file
    /// ({"groups":{"G":{"offset":N,"epoch":"E"}}}) written atomically at most every 200 ms and
    /// at exit; on start, ask to recover every message after the positions FILE holds. Implies
    /// --positioned.
    #[arg(long, value_name = "FILE")]
    pub resume_file: Option<PathBuf>,

    #[command(flatten)]
    pub ws: WsArgs,

    #[command(flatten)]
    pub acks: AckArgs,
}

#[derive(Debug, Args)]
pub struct SendArgs {
    /// Group id to send to.
    #[arg(value_name = "GROUP", allow_negative_numbers = true, value_parser = parse_group)]
    pub group: String,

    /// The message: sent as a JSON string, or with --json as the JSON value it spells.
    #[arg(value_name = "MESSAGE", allow_hyphen_values = true)]
    pub message: String,

    /// Parse MESSAGE as JSON and send that value (members receive its compact JSON text).
    #[arg(long)]
    pub json: bool,

    /// A connection that must not receive the message (repeatable), e.g. the sender's own.
    #[arg(long, value_name = "CLIENT_ID", value_parser = parse_client_id)]
    pub exclude: Vec<ClientId>,

    /// Give up (exit 2) if connecting, sending and the ack take longer than this, in seconds.
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = parse_secs)]
    pub timeout: Secs,

    #[command(flatten)]
    pub ws: WsArgs,

    #[command(flatten)]
    pub acks: AckArgs,
}

#[derive(Debug, Args)]
pub struct SendAllArgs {
    /// The message: sent as a JSON string, or with --json as the JSON value it spells.
    #[arg(value_name = "MESSAGE", allow_hyphen_values = true)]
    pub message: String,

    /// Parse MESSAGE as JSON and send that value (connections receive its compact JSON text).
    #[arg(long)]
    pub json: bool,

    /// A connection that must not receive the message (repeatable).
    #[arg(long, value_name = "CLIENT_ID", value_parser = parse_client_id)]
    pub exclude: Vec<ClientId>,

    /// Give up (exit 2) if connecting, sending and the ack take longer than this, in seconds.
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = parse_secs)]
    pub timeout: Secs,

    #[command(flatten)]
    pub ws: WsArgs,

    #[command(flatten)]
    pub acks: AckArgs,
}

#[derive(Debug, Args)]
pub struct SendUidArgs {
    /// The uids to send to: every connection bound to one of them receives the message.
    #[arg(required = true, value_name = "UID", allow_negative_numbers = true, value_parser = parse_uid)]
    pub uids: Vec<Uid>,

    /// The message (the last argument): sent as a JSON string, or with --json as the JSON
    /// value it spells.
    #[arg(value_name = "MESSAGE", required = true, allow_hyphen_values = true)]
    pub message: String,

    /// Parse MESSAGE as JSON and send that value (connections receive its compact JSON text).
    #[arg(long)]
    pub json: bool,

    /// Give up (exit 2) if connecting, sending and the ack take longer than this, in seconds.
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = parse_secs)]
    pub timeout: Secs,

    #[command(flatten)]
    pub ws: WsArgs,

    #[command(flatten)]
    pub acks: AckArgs,
}

#[derive(Debug, Args)]
pub struct SendClientArgs {
    /// The connection to send to (NODE-WORKER-CONN, as `whoami` or `join` print it).
    #[arg(value_name = "CLIENT_ID", value_parser = parse_client_id)]
    pub client_id: ClientId,

    /// The message: sent as a JSON string, or with --json as the JSON value it spells.
    #[arg(value_name = "MESSAGE", allow_hyphen_values = true)]
    pub message: String,

    /// Parse MESSAGE as JSON and send that value (the connection receives its compact JSON
    /// text).
    #[arg(long)]
    pub json: bool,

    /// Give up (exit 2) if connecting, sending and the ack take longer than this, in seconds.
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = parse_secs)]
    pub timeout: Secs,

    #[command(flatten)]
    pub ws: WsArgs,

    #[command(flatten)]
    pub acks: AckArgs,
}

#[derive(Debug, Args)]
pub struct WhoamiArgs {
    /// Bind the connection to this uid first (a gateway without join tokens).
    #[arg(long, value_name = "UID", allow_negative_numbers = true, value_parser = parse_uid)]
    pub bind: Option<Uid>,

    /// Print the server's JSON answer as it is, on one line.
    #[arg(long)]
    pub json: bool,

    /// Give up (exit 2) if connecting, the requests and their answers take longer than this,
    /// in seconds.
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = parse_secs)]
    pub timeout: Secs,

    #[command(flatten)]
    pub ws: WsArgs,
}

#[derive(Debug, Args)]
pub struct CountArgs {
    /// Group id to count.
    #[arg(value_name = "GROUP", allow_negative_numbers = true, value_parser = parse_group)]
    pub group: String,

    /// Print the server's JSON answer as it is, on one line.
    #[arg(long)]
    pub json: bool,

    /// Give up (exit 2) if connecting, the request and its answer take longer than this, in
    /// seconds.
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = parse_secs)]
    pub timeout: Secs,

    #[command(flatten)]
    pub ws: WsArgs,
}

#[derive(Debug, Args)]
pub struct MembersArgs {
    /// Group id whose members to list.
    #[arg(value_name = "GROUP", allow_negative_numbers = true, value_parser = parse_group)]
    pub group: String,

    /// Members per page (default 100; the gateway's --max-page-size is the most).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub limit: Option<u32>,

    /// Follow the pages to the last one, instead of printing only the first.
    #[arg(long)]
    pub all: bool,

    /// Print the server's JSON answer as it is, on one line (one line per page with --all).
    #[arg(long)]
    pub json: bool,

    /// Give up (exit 2) if connecting, the requests and their answers take longer than this,
    /// in seconds (every page included).
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = parse_secs)]
    pub timeout: Secs,

    #[command(flatten)]
    pub ws: WsArgs,
}

/// The WebSocket options, for the commands that open a WebSocket.
#[derive(Debug, Args)]
#[command(next_help_heading = "WebSocket options")]
pub struct WsArgs {
    /// WebSocket URL of the gateway: `ws://`, or `wss://` verified against the system's trusted
    /// roots (SSL_CERT_FILE names a PEM file of CA certificates to trust instead) [default:
    /// --url before the command, CLIENT_CLI_URL, or ws://127.0.0.1:1234].
    #[arg(long = "url", id = "ws_url", value_name = "URL", value_parser = parse_ws_url)]
    pub url: Option<String>,

    /// A join token (a JWT from the application's backend) for a gateway started with
    /// --require-join-token: presented with an `auth` request before anything else, so that a
    /// refused token fails with the gateway's reason. (A token in the URL, `?token=...`, works
    /// too.)
    #[arg(
        long,
        value_name = "TOKEN",
        env = "CLIENT_CLI_JOIN_TOKEN",
        hide_env_values = true
    )]
    pub join_token: Option<String>,
}

/// Whether to wait for the server's acknowledgements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Acks {
    /// Wait up to --ack-timeout for the server's first reply; when none comes, say so once on
    /// stderr and go on without acknowledgements, as with `none`.
    Auto,
    /// Wait for every acknowledgement, up to --timeout (exit 2 when it expires).
    Require,
    /// Do not wait for acknowledgements: for a server speaking the seed protocol, which sends
    /// none (the original Workerman example). Error replies that do come are still reported.
    None,
}

/// How `join` and the sends treat acknowledgements.
#[derive(Debug, Clone, Copy, Args)]
#[command(next_help_heading = "Acknowledgements")]
pub struct AckArgs {
    /// Whether to wait for the server's acknowledgements. A seed-protocol server (the original
    /// Workerman example) never answers a request; this gateway answers each at once.
    #[arg(long, value_name = "MODE", env = "CLIENT_CLI_ACKS", value_enum, default_value_t = Acks::Auto)]
    pub acks: Acks,

    /// With --acks auto: how long to wait for the server's first reply before going on without
    /// acknowledgements, in seconds.
    #[arg(long, value_name = "SECS", default_value = "2", value_parser = parse_secs)]
    pub ack_timeout: Secs,
}

impl AckArgs {
    /// How long to wait for the first reply before going on without acknowledgements: `None`
    /// to wait for every one (--acks require), zero not to wait (--acks none).
    pub fn grace(self) -> Option<Duration> {
        match self.acks {
            Acks::Auto => Some(self.ack_timeout.duration()),
            Acks::Require => None,
            Acks::None => Some(Duration::ZERO),
        }
    }
}

impl Cli {
    /// The WebSocket URL a command uses: its own --url, else the one before the command (or
    /// its default).
    pub fn ws_url<'a>(&'a self, ws: &'a WsArgs) -> &'a str {
        ws.url.as_deref().unwrap_or(&self.url)
    }
}

/// Where the admin HTTP API is, and how long to wait for it: shared by its commands.
#[derive(Debug, Args)]
pub struct AdminArgs {
    /// Base URL of the gateway's admin HTTP server (its --admin address).
    #[arg(long, env = "CLIENT_CLI_ADMIN_URL", default_value = DEFAULT_ADMIN_URL, value_parser = parse_http_url)]
    pub admin_url: String,

    /// Bearer token of the admin API (the gateway's --api-token).
    #[arg(long, env = "CLIENT_CLI_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// Give up (exit 2) if the gateway has not answered within this many seconds (each page,
    /// with --all).
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = parse_secs)]
    pub timeout: Secs,
}

#[derive(Debug, Args)]
pub struct PublishArgs {
    /// Group id to publish to.
    #[arg(
        value_name = "GROUP",
        allow_negative_numbers = true,
        value_parser = parse_group,
        required_unless_present = "batch"
    )]
    pub group: Option<String>,

    /// The message: sent as a JSON string, or with --json as the JSON value it spells.
    #[arg(
        value_name = "MESSAGE",
        allow_hyphen_values = true,
        required_unless_present = "batch"
    )]
    pub message: Option<String>,

    /// Parse MESSAGE as JSON and publish that value (members receive its compact JSON text).
    #[arg(long, conflicts_with = "batch")]
    pub json: bool,

    /// A connection that must not receive the message (repeatable). In a --batch, give each
    /// item its own "exclude" array instead.
    #[arg(long, value_name = "CLIENT_ID", value_parser = parse_client_id, conflicts_with = "batch")]
    pub exclude: Vec<ClientId>,

    /// Publish the JSON array of {"group_id":G,"message":M} objects in FILE (`-`: stdin).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["group", "message"])]
    pub batch: Option<String>,

    #[command(flatten)]
    pub admin: AdminArgs,
}

#[derive(Debug, Args)]
pub struct BindArgs {
    /// The connection to bind (NODE-WORKER-CONN).
    #[arg(value_name = "CLIENT_ID", value_parser = parse_client_id)]
    pub client_id: ClientId,

    /// The uid to bind it to (replacing any previous one).
    #[arg(value_name = "UID", allow_negative_numbers = true, value_parser = parse_uid)]
    pub uid: Uid,

    /// Print the gateway's JSON answer as it is, on one line.
    #[arg(long)]
    pub json: bool,

    #[command(flatten)]
    pub admin: AdminArgs,
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("target").required(true).args(["client", "uid"])))]
pub struct UnbindArgs {
    /// Unbind this connection (NODE-WORKER-CONN).
    #[arg(long, value_name = "CLIENT_ID", value_parser = parse_client_id)]
    pub client: Option<ClientId>,

    /// Unbind every connection bound to this uid.
    #[arg(long, value_name = "UID", allow_negative_numbers = true, value_parser = parse_uid)]
    pub uid: Option<Uid>,

    /// Print the gateway's JSON answer as it is, on one line.
    #[arg(long)]
    pub json: bool,

    #[command(flatten)]
    pub admin: AdminArgs,
}

#[derive(Debug, Args)]
pub struct GroupsArgs {
    /// Groups per page (default 100; the gateway's --max-page-size is the most).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub limit: Option<u32>,

    /// Follow the pages to the last one, instead of printing only the first.
    #[arg(long)]
    pub all: bool,

    /// Print the gateway's JSON answer as it is, on one line (one line per page with --all).
    #[arg(long)]
    pub json: bool,

    #[command(flatten)]
    pub admin: AdminArgs,
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("target").required(true).args(["client_id", "uid"])))]
pub struct ClientsArgs {
    /// The connection to look up (NODE-WORKER-CONN).
    #[arg(value_name = "CLIENT_ID", value_parser = parse_client_id)]
    pub client_id: Option<ClientId>,

    /// Look up the connections bound to this uid instead.
    #[arg(long, value_name = "UID", allow_negative_numbers = true, value_parser = parse_uid)]
    pub uid: Option<Uid>,

    /// Print the gateway's JSON answer as it is, on one line.
    #[arg(long)]
    pub json: bool,

    #[command(flatten)]
    pub admin: AdminArgs,
}

#[derive(Debug, Args)]
pub struct NodesArgs {
    /// Print the gateway's JSON answer as it is, on one line.
    #[arg(long)]
    pub json: bool,

    #[command(flatten)]
    pub admin: AdminArgs,
}

/// A positive duration given on the command line as seconds (`0.5`, `10`) or as a humantime
/// duration (`500ms`, `1m`). Displays as seconds, the way error messages quote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Secs(Duration);

impl Secs {
    pub fn duration(self) -> Duration {
        self.0
    }
}

impl fmt::Display for Secs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.as_secs_f64())
    }
}

fn parse_secs(text: &str) -> Result<Secs, String> {
    let duration = match text.trim().parse::<f64>() {
        Ok(secs) => Duration::try_from_secs_f64(secs)
            .map_err(|e| format!("{text:?} is not a usable number of seconds: {e}"))?,
        Err(_) => humantime::parse_duration(text).map_err(|_| {
            format!("{text:?} is neither seconds (e.g. 0.5 or 10) nor a duration (e.g. 500ms)")
        })?,
    };
    if duration.is_zero() {
        return Err("must be greater than zero".to_owned());
    }
    Ok(Secs(duration))
}

/// A WebSocket URL: `ws://` or `wss://`. Without a scheme, the error suggests `ws://`.
fn parse_ws_url(text: &str) -> Result<String, String> {
    check_scheme(text, &["ws", "wss"], "ws")
}

/// The admin API's base URL: `http://` or `https://`. Without a scheme, the error suggests
/// `http://`.
fn parse_http_url(text: &str) -> Result<String, String> {
    check_scheme(text, &["http", "https"], "http")
}

fn check_scheme(text: &str, schemes: &[&str], suggested: &str) -> Result<String, String> {
    let listed = schemes
        .iter()
        .map(|s| format!("{s}://"))
        .collect::<Vec<_>>()
        .join(" or ");
    match text.split_once("://") {
        Some((scheme, rest)) if !rest.is_empty() => {
            if schemes.iter().any(|s| s.eq_ignore_ascii_case(scheme)) {
                Ok(text.to_owned())
            } else {
                Err(format!("{text:?}: the URL must start with {listed}"))
            }
        }
        Some(_) => Err(format!("{text:?}: no host after the scheme")),
        None => Err(format!(
            "{text:?} has no scheme: did you mean {suggested}://{text}? (the URL must start with \
             {listed})"
        )),
    }
}

/// Checks a group id the way the server does (non-empty, at most the default length, not one
/// of the gateways' own topics).
fn parse_group(text: &str) -> Result<String, String> {
    GroupName::parse_client(text, DEFAULT_MAX_GROUP_ID_LEN)
        .map(|name| name.as_str().to_owned())
        .map_err(|e| e.to_string())
}

/// Checks a uid the way the server does (non-empty, at most the default length).
fn parse_uid(text: &str) -> Result<Uid, String> {
    Uid::new(text, DEFAULT_MAX_UID_LEN).map_err(|e| e.to_string())
}

/// A client id as `whoami`, `join` and presence events give it: `NODE-WORKER-CONN`.
fn parse_client_id(text: &str) -> Result<ClientId, String> {
    text.parse()
        .map_err(|e: protocol::cluster::BadId| e.to_string())
}

/// Environment variables of the previous release, and their names now.
pub const RENAMED_ENV: [(&str, &str); 3] = [
    ("PUSH_URL", "CLIENT_CLI_URL"),
    ("PUSH_ADMIN_URL", "CLIENT_CLI_ADMIN_URL"),
    ("PUSH_API_TOKEN", "CLIENT_CLI_TOKEN"),
];

/// Applies environment variables of the previous release: each `(old, new)` whose old variable is
/// set, and whose new one is not, becomes the default of the setting that reads the new one, so
/// a flag and the new variable still win. Returns the command and the old names that were used.
pub fn with_old_env(
    mut command: clap::Command,
    renamed: &[(&'static str, &'static str)],
    env: impl Fn(&str) -> Option<String>,
) -> (clap::Command, Vec<&'static str>) {
    let mut used = Vec::new();
    for &(old, new) in renamed {
        let Some(value) = env(old) else {
            continue;
        };
        used.push(old);
        if env(new).is_some() {
            continue;
        }
        // Read once per process: leaking it gives clap the 'static default it wants.
        let value: &'static str = Box::leak(value.into_boxed_str());
        let reads_new = |arg: &clap::Arg| arg.get_env().is_some_and(|e| e == new);
        let set = |arg: clap::Arg| {
            if reads_new(&arg) {
                arg.default_value(value)
            } else {
                arg
            }
        };
        command = command.mut_args(set);
        let names: Vec<String> = command
            .get_subcommands()
            .map(|s| s.get_name().to_owned())
            .collect();
        for name in names {
            command = command.mut_subcommand(name, |sub| sub.mut_args(set));
        }
    }
    (command, used)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("client-cli").chain(args.iter().copied()))
    }

    fn join(cli: &Cli) -> &JoinArgs {
        match &cli.command {
            Command::Join(args) => args,
            other => panic!("not a join: {other:?}"),
        }
    }

    fn send(cli: &Cli) -> &SendArgs {
        match &cli.command {
            Command::Send(args) => args,
            other => panic!("not a send: {other:?}"),
        }
    }

    #[test]
    fn defaults() {
        let cli = parse(&["join", "123"]).unwrap();
        if std::env::var_os("CLIENT_CLI_URL").is_none() {
            assert_eq!(cli.url, DEFAULT_URL);
        }
        assert_eq!(cli.connect_timeout.duration(), Duration::from_secs(5));
        let args = join(&cli);
        assert_eq!(args.groups, ["123"]);
        assert_eq!(args.count, None);
        assert_eq!(args.timeout, None);

        let cli = parse(&["send", "123", "msg"]).unwrap();
        let args = send(&cli);
        assert_eq!((args.group.as_str(), args.message.as_str()), ("123", "msg"));
        assert!(!args.json);
        assert_eq!(args.timeout.duration(), Duration::from_secs(10));
    }

    #[test]
    fn urls_need_their_scheme_and_say_which() {
        assert_eq!(parse_ws_url("ws://h:1").as_deref(), Ok("ws://h:1"));
        assert_eq!(parse_ws_url("WSS://h:1").as_deref(), Ok("WSS://h:1"));
        let err = parse_ws_url("127.0.0.1:1234").expect_err("no scheme");
        assert!(err.contains("did you mean ws://127.0.0.1:1234?"), "{err}");
        let err = parse_ws_url("http://h:1").expect_err("not a WebSocket scheme");
        assert!(err.contains("ws:// or wss://"), "{err}");
        assert!(parse_ws_url("ws://").is_err());
        assert_eq!(parse_http_url("https://h").as_deref(), Ok("https://h"));
        let err = parse_http_url("127.0.0.1:9090").expect_err("no scheme");
        assert!(err.contains("did you mean http://127.0.0.1:9090?"), "{err}");
    }

    #[test]
    fn url_before_or_after_the_subcommand() {
        let url = "ws://example.test:9";
        for args in [
            &["--url", url, "join", "1", "2"][..],
            &["join", "--url", url, "1", "2"],
            &["join", "1", "2", "--url", url],
        ] {
            let cli = parse(args).unwrap();
            assert_eq!(cli.ws_url(&join(&cli).ws), url, "{args:?}");
            assert_eq!(join(&cli).groups, ["1", "2"], "{args:?}");
        }
        let cli = parse(&["send", "1", "hi", "--url", url, "--connect-timeout", "0.25"]).unwrap();
        assert_eq!(cli.ws_url(&send(&cli).ws), url);
        assert_eq!(cli.connect_timeout.duration(), Duration::from_millis(250));
        // After the command, it wins over the one before.
        let cli = parse(&["--url", "ws://before:1", "send", "1", "hi", "--url", url]).unwrap();
        assert_eq!(cli.ws_url(&send(&cli).ws), url);
    }

    #[test]
    fn admin_commands_take_no_websocket_options() {
        use clap::CommandFactory;
        let ws_only = ["--url", "--join-token", "--acks", "--ack-timeout"];
        for name in ["publish", "bind", "unbind", "groups", "clients", "nodes"] {
            let help = parse(&[name, "--help"]).unwrap_err().to_string();
            for flag in ws_only {
                assert!(
                    !help.contains(flag),
                    "`{name} --help` lists {flag}:\n{help}"
                );
            }
            assert!(help.contains("--connect-timeout"), "{name}: it is used");
            let err = parse(&[name, "--url", "ws://h:1"]).unwrap_err();
            assert_eq!(
                err.kind(),
                clap::error::ErrorKind::UnknownArgument,
                "{name}"
            );
        }
        for sub in Cli::command().get_subcommands() {
            let name = sub.get_name();
            if ["join", "send", "send-all", "send-uid", "send-client"].contains(&name) {
                let help = parse(&[name, "--help"]).unwrap_err().to_string();
                for flag in ws_only {
                    assert!(help.contains(flag), "`{name} --help` lacks {flag}");
                }
            }
        }
        let help = parse(&["whoami", "--help"]).unwrap_err().to_string();
        assert!(help.contains("--url") && help.contains("--join-token"));
        assert!(
            !help.contains("--acks"),
            "a query always waits for its answer"
        );
    }

    #[test]
    fn acknowledgement_modes() {
        let args = send(&parse(&["send", "1", "m"]).unwrap()).acks;
        if std::env::var_os("CLIENT_CLI_ACKS").is_none() {
            assert_eq!(args.acks, Acks::Auto);
            assert_eq!(args.grace(), Some(Duration::from_secs(2)));
        }
        let cli = parse(&["join", "1", "--acks", "none"]).unwrap();
        assert_eq!(join(&cli).acks.grace(), Some(Duration::ZERO));
        let cli = parse(&["send", "1", "m", "--acks", "require"]).unwrap();
        assert_eq!(send(&cli).acks.grace(), None);
        let cli = parse(&["send", "1", "m", "--acks", "auto", "--ack-timeout", "500ms"]).unwrap();
        assert_eq!(send(&cli).acks.grace(), Some(Duration::from_millis(500)));
        assert!(parse(&["send", "1", "m", "--acks", "maybe"]).is_err());
        assert!(parse(&["send", "1", "m", "--ack-timeout", "0"]).is_err());
        let cli = parse(&["join", "1", "--join-token", "a.b.c"]).unwrap();
        assert_eq!(join(&cli).ws.join_token.as_deref(), Some("a.b.c"));
    }

    #[test]
    fn join_flags() {
        let cli = parse(&["join", "1", "--count", "3", "--timeout", "0.5", "-7"]).unwrap();
        let args = join(&cli);
        assert_eq!(args.groups, ["1", "-7"]);
        assert_eq!(args.count, Some(3));
        assert_eq!(
            args.timeout.map(Secs::duration),
            Some(Duration::from_millis(500))
        );
        assert!(parse(&["join"]).is_err(), "at least one group");
        assert!(parse(&["join", "1", "--count", "-1"]).is_err());
    }

    #[test]
    fn send_flags() {
        let cli = parse(&["send", "1", "--json", r#"{"a":1}"#, "--timeout", "2"]).unwrap();
        let args = send(&cli);
        assert!(args.json);
        assert_eq!(args.message, r#"{"a":1}"#);
        assert_eq!(args.timeout.duration(), Duration::from_secs(2));

        let cli = parse(&["send", "1", "-not a flag", "--json"]).unwrap();
        assert_eq!(send(&cli).message, "-not a flag");
        assert!(send(&cli).json);

        assert!(parse(&["send", "1"]).is_err(), "message is required");
        assert!(parse(&["send", "1", "a", "b"]).is_err(), "one message only");
    }

    fn publish(cli: &Cli) -> &PublishArgs {
        match &cli.command {
            Command::Publish(args) => args,
            other => panic!("not a publish: {other:?}"),
        }
    }

    #[test]
    fn publish_flags() {
        let cli = parse(&[
            "publish",
            "-5",
            "--json",
            "[1]",
            "--admin-url",
            "http://h:1",
        ])
        .unwrap();
        let args = publish(&cli);
        assert_eq!(args.group.as_deref(), Some("-5"));
        assert_eq!(args.message.as_deref(), Some("[1]"));
        assert!(args.json);
        assert_eq!(args.admin.admin_url, "http://h:1");
        assert_eq!(args.batch, None);
        assert_eq!(args.admin.timeout.duration(), Duration::from_secs(10));

        let cli = parse(&["publish", "--batch", "-", "--token", "t", "--timeout", "2"]).unwrap();
        let args = publish(&cli);
        assert_eq!(args.batch.as_deref(), Some("-"));
        assert_eq!(args.admin.token.as_deref(), Some("t"));
        assert_eq!((args.group.as_ref(), args.message.as_ref()), (None, None));

        if std::env::var_os("CLIENT_CLI_ADMIN_URL").is_none() {
            let cli = parse(&["publish", "1", "m"]).unwrap();
            assert_eq!(publish(&cli).admin.admin_url, DEFAULT_ADMIN_URL);
        }
        assert!(parse(&["publish"]).is_err(), "GROUP MESSAGE or --batch");
        assert!(parse(&["publish", "1"]).is_err(), "MESSAGE is required");
        assert!(parse(&["publish", "1", "m", "--batch", "f"]).is_err());
        assert!(parse(&["publish", "--batch", "f", "--json"]).is_err());
        assert!(parse(&["publish", "", "m"]).is_err());
    }

    #[test]
    fn group_ids_are_validated() {
        assert!(parse(&["join", ""]).is_err());
        assert!(parse(&["send", "", "m"]).is_err());
        let long = "x".repeat(DEFAULT_MAX_GROUP_ID_LEN + 1);
        assert!(parse(&["join", &long]).is_err());
        let max = "x".repeat(DEFAULT_MAX_GROUP_ID_LEN);
        assert!(parse(&["join", &max]).is_ok());
    }

    #[test]
    fn seconds() {
        let ok = |text: &str| parse_secs(text).map(Secs::duration);
        assert_eq!(ok("0.5"), Ok(Duration::from_millis(500)));
        assert_eq!(ok("10"), Ok(Duration::from_secs(10)));
        assert_eq!(ok("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(ok("1m"), Ok(Duration::from_secs(60)));
        for bad in ["0", "-1", "abc", "nan", "inf", "1e400", ""] {
            assert!(parse_secs(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_secs("0.5").unwrap().to_string(), "0.5");
        assert_eq!(parse_secs("10").unwrap().to_string(), "10");
    }

    #[test]
    fn help_lists_exit_codes() {
        let err = parse(&["--help"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::DisplayHelp);
        assert!(err.to_string().contains("Exit codes:"));
    }

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn old_environment_variables_are_defaults_below_flags_and_new_ones() {
        use clap::{CommandFactory, FromArgMatches};
        let parse = |args: &[&str], env: &[(&str, &str)]| {
            let lookup = |name: &str| {
                env.iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| (*v).to_owned())
            };
            let (command, used) = with_old_env(Cli::command(), &RENAMED_ENV, lookup);
            let matches = command
                .try_get_matches_from(std::iter::once("client-cli").chain(args.iter().copied()))
                .expect("parses");
            (Cli::from_arg_matches(&matches).expect("fits"), used)
        };
        let old = [
            ("PUSH_URL", "ws://old:1"),
            ("PUSH_ADMIN_URL", "http://old:2"),
            ("PUSH_API_TOKEN", "old-token"),
        ];
        let (cli, used) = parse(&["publish", "1", "m"], &old);
        assert_eq!(used, ["PUSH_URL", "PUSH_ADMIN_URL", "PUSH_API_TOKEN"]);
        assert_eq!(cli.url, "ws://old:1");
        let args = publish(&cli);
        assert_eq!(args.admin.admin_url, "http://old:2");
        assert_eq!(args.admin.token.as_deref(), Some("old-token"));

        let (cli, _) = parse(&["--url", "ws://flag:1", "publish", "1", "m"], &old);
        assert_eq!(cli.url, "ws://flag:1", "a flag beats an old variable");
        let (cli, _) = parse(
            &["join", "1"],
            &[("PUSH_URL", "ws://old:1"), ("CLIENT_CLI_URL", "ws://x")],
        );
        assert_ne!(cli.url, "ws://old:1", "the new variable beats the old one");
    }

    const C1: &str = "5f0c1d2e3a4b6c7d-1-42";
    const C2: &str = "00000000000000ff-0-7";

    fn client_id(text: &str) -> ClientId {
        text.parse().unwrap()
    }

    fn uid(text: &str) -> Uid {
        Uid::new(text, DEFAULT_MAX_UID_LEN).unwrap()
    }

    #[test]
    fn join_positioned_and_resume_file() {
        let cli = parse(&["join", "1", "--positioned"]).unwrap();
        assert!(join(&cli).positioned);
        assert_eq!(join(&cli).resume_file, None);
        let cli = parse(&["join", "1", "--resume-file", "state.json", "2"]).unwrap();
        let args = join(&cli);
        assert!(!args.positioned, "implied when joining, not set");
        assert_eq!(args.resume_file.as_deref(), Some(Path::new("state.json")));
        assert_eq!(args.groups, ["1", "2"]);
        assert!(!join(&parse(&["join", "1"]).unwrap()).positioned);
        assert!(parse(&["join", "1", "--resume-file"]).is_err());
    }

    #[test]
    fn join_presence_and_uid() {
        let cli = parse(&["join", "1", "--presence", "--uid", "-3"]).unwrap();
        let args = join(&cli);
        assert!(args.presence);
        assert_eq!(args.uid, Some(uid("-3")));
        let args = parse(&["join", "1"]).unwrap();
        assert!(!join(&args).presence);
        assert_eq!(join(&args).uid, None);
        assert!(parse(&["join", "1", "--uid", ""]).is_err());
    }

    #[test]
    fn send_exclusions() {
        let cli = parse(&["send", "1", "m", "--exclude", C1, "--exclude", C2]).unwrap();
        assert_eq!(send(&cli).exclude, [client_id(C1), client_id(C2)]);
        assert!(send(&parse(&["send", "1", "m"]).unwrap())
            .exclude
            .is_empty());
        for bad in ["x", "5f0c1d2e3a4b6c7d-1", "5f0c1d2e3a4b6c7d-01-2", ""] {
            assert!(
                parse(&["send", "1", "m", "--exclude", bad]).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn sends_to_all_uids_and_clients() {
        let cli = parse(&["send-all", "-hi", "--json", "--exclude", C1]).unwrap();
        let Command::SendAll(args) = &cli.command else {
            panic!("{cli:?}")
        };
        assert_eq!(
            (args.message.as_str(), args.json, args.exclude.as_slice()),
            ("-hi", true, &[client_id(C1)][..])
        );

        let cli = parse(&["send-uid", "alice", "msg"]).unwrap();
        let Command::SendUid(args) = &cli.command else {
            panic!("{cli:?}")
        };
        assert_eq!(
            (args.uids.as_slice(), args.message.as_str()),
            (&[uid("alice")][..], "msg")
        );
        let cli = parse(&["send-uid", "alice", "-5", "bob", "{}", "--json"]).unwrap();
        let Command::SendUid(args) = &cli.command else {
            panic!("{cli:?}")
        };
        assert_eq!(args.uids, [uid("alice"), uid("-5"), uid("bob")]);
        assert_eq!(args.message, "{}");
        assert!(args.json);
        assert!(
            parse(&["send-uid", "alice"]).is_err(),
            "a message is required"
        );
        assert!(parse(&["send-uid"]).is_err());

        let cli = parse(&["send-client", C1, "m", "--timeout", "3"]).unwrap();
        let Command::SendClient(args) = &cli.command else {
            panic!("{cli:?}")
        };
        assert_eq!(
            (args.client_id, args.message.as_str()),
            (client_id(C1), "m")
        );
        assert_eq!(args.timeout.duration(), Duration::from_secs(3));
        assert!(parse(&["send-client", "nope", "m"]).is_err());
    }

    #[test]
    fn queries() {
        let cli = parse(&["whoami", "--bind", "u1", "--json"]).unwrap();
        let Command::Whoami(args) = &cli.command else {
            panic!("{cli:?}")
        };
        assert_eq!((args.bind.clone(), args.json), (Some(uid("u1")), true));
        let cli = parse(&["count", "g"]).unwrap();
        let Command::Count(args) = &cli.command else {
            panic!("{cli:?}")
        };
        assert_eq!((args.group.as_str(), args.json), ("g", false));
        let cli = parse(&["members", "g", "--limit", "5", "--all"]).unwrap();
        let Command::Members(args) = &cli.command else {
            panic!("{cli:?}")
        };
        assert_eq!((args.limit, args.all, args.json), (Some(5), true, false));
        assert!(parse(&["members", "g", "--limit", "0"]).is_err());
        assert!(parse(&["count"]).is_err());
        assert!(
            parse(&["count", "\u{1f}ctl"]).is_err(),
            "reserved group ids"
        );
    }

    #[test]
    fn admin_commands() {
        let cli = parse(&[
            "bind",
            C1,
            "alice",
            "--admin-url",
            "http://h:1",
            "--token",
            "t",
        ])
        .unwrap();
        let Command::Bind(args) = &cli.command else {
            panic!("{cli:?}")
        };
        assert_eq!(
            (args.client_id, args.uid.clone()),
            (client_id(C1), uid("alice"))
        );
        assert_eq!(args.admin.admin_url, "http://h:1");
        assert_eq!(args.admin.token.as_deref(), Some("t"));

        let cli = parse(&["unbind", "--uid", "alice"]).unwrap();
        let Command::Unbind(args) = &cli.command else {
            panic!("{cli:?}")
        };
        assert_eq!((args.client, args.uid.clone()), (None, Some(uid("alice"))));
        let cli = parse(&["unbind", "--client", C1]).unwrap();
        let Command::Unbind(args) = &cli.command else {
            panic!("{cli:?}")
        };
        assert_eq!(args.client, Some(client_id(C1)));
        assert!(parse(&["unbind"]).is_err(), "--client or --uid");
        assert!(
            parse(&["unbind", "--client", C1, "--uid", "u"]).is_err(),
            "not both"
        );

        let cli = parse(&["groups", "--limit", "2", "--all", "--json"]).unwrap();
        let Command::Groups(args) = &cli.command else {
            panic!("{cli:?}")
        };
        assert_eq!((args.limit, args.all, args.json), (Some(2), true, true));

        let cli = parse(&["clients", C1]).unwrap();
        let Command::Clients(args) = &cli.command else {
            panic!("{cli:?}")
        };
        assert_eq!(
            (args.client_id, args.uid.clone()),
            (Some(client_id(C1)), None)
        );
        let cli = parse(&["clients", "--uid", "a/b"]).unwrap();
        let Command::Clients(args) = &cli.command else {
            panic!("{cli:?}")
        };
        assert_eq!((args.client_id, args.uid.clone()), (None, Some(uid("a/b"))));
        assert!(parse(&["clients"]).is_err());
        assert!(parse(&["clients", C1, "--uid", "u"]).is_err());

        let cli = parse(&["nodes", "--json", "--timeout", "1"]).unwrap();
        let Command::Nodes(args) = &cli.command else {
            panic!("{cli:?}")
        };
        assert!(args.json);
        assert_eq!(args.admin.timeout.duration(), Duration::from_secs(1));

        let cli = parse(&["publish", "g", "m", "--exclude", C1]).unwrap();
        assert_eq!(publish(&cli).exclude, [client_id(C1)]);
        assert!(parse(&["publish", "--batch", "f", "--exclude", C1]).is_err());
    }

    #[test]
    fn every_command_lists_exit_codes() {
        use clap::CommandFactory;
        let command = Cli::command();
        for sub in command.get_subcommands() {
            let name = sub.get_name();
            if name == "help" {
                continue;
            }
            let err = parse(&[name, "--help"]).unwrap_err();
            assert!(err.to_string().contains("Exit codes:"), "{name}");
        }
    }
}
