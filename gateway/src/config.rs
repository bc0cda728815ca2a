//! Gateway settings. Each is a command-line flag and an environment variable of the `gateway`
//! binary; docs/configuration.md lists them with what happens when a limit is hit. Settings of
//! the link to the broker are `--link-*`, as in the broker; those of the embedded broker
//! ([`EmbeddedBrokerConfig`]) are `--broker-*`, the names the `broker` binary gives them.

use std::net::IpAddr;
use std::time::Duration;

use broker::config::{
    PhpConfig, PhpListen, DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_HISTORY_MAX_BYTES,
    DEFAULT_HISTORY_MAX_CHANNELS, DEFAULT_LINK_IDLE_TIMEOUT, DEFAULT_LINK_QUEUE_BYTES,
    DEFAULT_LINK_QUEUE_FRAMES, DEFAULT_MAX_CHANNELS_PER_LINK, DEFAULT_MAX_CHANNEL_LEN,
    DEFAULT_PHP_IDLE_TIMEOUT, DEFAULT_PHP_QUEUE_MAX_ITEMS,
};
use broker::BrokerConfig;
use protocol::client::DEFAULT_MAX_GROUP_ID_LEN;
use protocol::php::{DEFAULT_PHP_MAX_DEPTH, DEFAULT_PHP_MAX_ELEMENTS};
use protocol::DEFAULT_MAX_FRAME_SIZE;
use server_kit::settings::ConfigError;

use crate::edge::origin::AllowedOrigin;
use crate::history::policy::HistoryRule;

/// Workers are tracked in a 64-bit set per group; run more processes for more cores.
pub const MAX_WORKERS: usize = 64;

/// Highest `--max-messages-per-second`: a frame then costs a microsecond of the bucket.
pub const MAX_MESSAGES_PER_SECOND: u32 = 1_000_000;

/// Default of `--link-queue-bytes`: 64 MiB, as the broker's.
pub const DEFAULT_LINK_QUEUE_BYTES_TO_BROKER: usize = 64 * 1024 * 1024;

const ADDRESSES: &str = "Addresses and process";
const CLIENT_LIMITS: &str = "Client limits";
const TIMERS: &str = "Timers";
const BUS: &str = "Bus (between gateways)";
const CLUSTER: &str = "Cluster API (uids, sends, queries, presence)";
const HISTORY: &str = "History and recovery";

/// Largest `--max-page-size`: an answer of that many members must fit in one control frame.
pub const MAX_PAGE_SIZE: u32 = 10_000;
/// Largest `--max-targets`.
pub const MAX_TARGETS: usize = 10_000;

#[derive(Debug, Clone, clap::Args)]
pub struct GatewayConfig {
    /// Worker threads; each owns its share of the connections (handed out in turn).
    #[arg(long, env = "GATEWAY_WORKERS", help_heading = ADDRESSES)]
    pub workers: Option<usize>,

    /// Largest WebSocket message, and frame, a client may send, in bytes: the whole JSON request,
    /// not just `message`. Also the largest `message` accepted by `POST /api/publish`.
    #[arg(long, env = "GATEWAY_MAX_MESSAGE_SIZE", help_heading = CLIENT_LIMITS, default_value_t = 64 * 1024)]
    pub max_message_size: usize,

    /// Longest group id, in bytes of its text.
    #[arg(long, env = "GATEWAY_MAX_GROUP_ID_LEN", help_heading = CLIENT_LIMITS, default_value_t = DEFAULT_MAX_GROUP_ID_LEN)]
    pub max_group_id_len: usize,

    /// Groups one connection may be in at once. Joining a group it is already in does not count.
    #[arg(
        long,
        env = "GATEWAY_MAX_GROUPS_PER_CONNECTION", help_heading = CLIENT_LIMITS,
        default_value_t = 1000
    )]
    pub max_groups_per_connection: usize,

    /// Distinct groups this process may have members in at once: each is one subscription on the
    /// bus, so no client can push the gateway past what its bus takes (keep it below the broker's
    /// `--broker-max-channels-per-link`).
    #[arg(long, env = "GATEWAY_MAX_GROUPS", help_heading = CLIENT_LIMITS, default_value_t = 100_000)]
    pub max_groups: usize,

    /// Messages (group messages and replies) waiting for one connection's writer. The batch the
    /// writer has already taken does not count.
    #[arg(long, env = "GATEWAY_OUTBOUND_QUEUE_MESSAGES", help_heading = CLIENT_LIMITS, default_value_t = 1024)]
    pub outbound_queue_messages: usize,

    /// Bytes of messages (their WebSocket frames: the text and a 2 to 10 byte header) waiting for one connection's writer (as above).
    #[arg(long, env = "GATEWAY_OUTBOUND_QUEUE_BYTES", help_heading = CLIENT_LIMITS, default_value_t = 1024 * 1024)]
    pub outbound_queue_bytes: usize,

    /// Deliveries queued for one worker (its inbox), from any sender in this process and from the
    /// broker link.
    #[arg(long, env = "GATEWAY_WORKER_QUEUE", help_heading = CLIENT_LIMITS, default_value_t = 4096)]
    pub worker_queue: usize,

    /// Interval of WebSocket pings to each client. Browsers answer them by themselves.
    #[arg(long, env = "GATEWAY_PING_INTERVAL", help_heading = TIMERS, default_value = "25s", value_parser = humantime::parse_duration)]
    pub ping_interval: Duration,

    /// A client from which nothing at all (no message, no pong) arrives for this long is idle. Keep
    /// it above `--ping-interval`.
    #[arg(long, env = "GATEWAY_IDLE_TIMEOUT", help_heading = TIMERS, default_value = "60s", value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,

    /// Time one step of a write to a client may take: handing one frame to the socket, or the final
    /// flush. A client that reads slowly but steadily is never cut off, however long the whole
    /// batch takes.
    #[arg(long, env = "GATEWAY_WRITE_TIMEOUT", help_heading = TIMERS, default_value = "10s", value_parser = humantime::parse_duration)]
    pub write_timeout: Duration,

    /// Time a new TCP connection has to complete the WebSocket handshake (with `--tls-cert`, the
    /// TLS handshake and the WebSocket handshake together).
    #[arg(long, env = "GATEWAY_HANDSHAKE_TIMEOUT", help_heading = TIMERS, default_value = "10s", value_parser = humantime::parse_duration)]
    pub handshake_timeout: Duration,

    /// Client connections this process holds at once, those still in the WebSocket handshake
    /// included (`client_sockets`). Keep it below the process's file-descriptor limit (`ulimit
    /// -n`), which also covers the broker link and admin connections.
    #[arg(long, env = "GATEWAY_MAX_CONNECTIONS", help_heading = CLIENT_LIMITS, default_value_t = 100_000)]
    pub max_connections: usize,

    /// Connections from one client address at once, handshakes included. IPv4-mapped IPv6 addresses
    /// count as IPv4; IPv6 addresses count by their /64 network, which one host usually holds
    /// whole. `0`: no limit. Behind a reverse proxy every client has the proxy's address: set `0`
    /// there and limit at the proxy.
    #[arg(long, env = "GATEWAY_MAX_CONNECTIONS_PER_IP", help_heading = CLIENT_LIMITS, default_value_t = 1000)]
    pub max_connections_per_ip: usize,

    /// Average rate of text and binary frames one connection may send: a token bucket per
    /// connection, `--message-burst` frames deep, refilled at this rate. Pings, pongs and close
    /// frames do not count; a message sent in fragments counts once. `0`: no limit; at most
    /// 1000000. The admin API's `POST /api/publish` is not limited.
    #[arg(long, env = "GATEWAY_MAX_MESSAGES_PER_SECOND", help_heading = CLIENT_LIMITS, default_value_t = 100)]
    pub max_messages_per_second: u32,

    /// Frames a connection may send at once, beyond the average rate; a connection that has been
    /// quiet for `message-burst` / `max-messages-per-second` seconds has the whole burst again. At
    /// least 1 when the rate is limited.
    #[arg(long, env = "GATEWAY_MESSAGE_BURST", help_heading = CLIENT_LIMITS, default_value_t = 200)]
    pub message_burst: u32,

    /// Rate-limited frames a connection is forgiven. The count restarts only when a whole second
    /// passes without a rate-limited frame, so a client that slows down is forgiven, and one that
    /// keeps sending over the rate is not, even though some of its frames get through. `0`: the
    /// first rate-limited frame closes the connection.
    #[arg(long, env = "GATEWAY_RATE_LIMIT_STRIKES", help_heading = CLIENT_LIMITS, default_value_t = 100)]
    pub rate_limit_strikes: u32,

    /// Control frames (ping, pong) and continuation frames one connection may send per second,
    /// on average, with a burst of one second's worth; 0 = no limit. More closes it with 1008.
    #[arg(
        long,
        env = "GATEWAY_MAX_CONTROL_FRAMES_PER_SECOND",
        help_heading = CLIENT_LIMITS,
        default_value_t = 1000
    )]
    pub max_control_frames_per_second: u32,

    /// Web origins whose pages may open connections, as browsers send them in the `Origin` header:
    /// `scheme://host[:port]`, such as `https://example.com` or `http://127.0.0.1:9090`; several
    /// are comma-separated or the flag repeated (in the file, an array of strings). Compared
    /// ignoring case; a default port (`:443` for https, `:80` for http) and a trailing `/` are
    /// dropped. `*` allows any. Unset, any web page a user visits can open connections from their
    /// browser and join and send to groups as that page likes: set it whenever browsers connect. A
    /// handshake without an `Origin` header is always accepted, since it does not come from a web
    /// page: this keeps other sites' pages out, not other programs.
    #[arg(long, env = "GATEWAY_ALLOWED_ORIGINS", help_heading = CLIENT_LIMITS, value_delimiter = ',')]
    pub allowed_origins: Vec<AllowedOrigin>,

    /// Read buffer per connection while it reads, in bytes (a resting connection, with nothing
    /// half read, holds none: see BENCHMARKS.md). Not a limit: larger messages are read in
    /// several steps.
    #[arg(long, env = "GATEWAY_WS_READ_BUFFER", help_heading = CLIENT_LIMITS, default_value_t = 1024)]
    pub ws_read_buffer: usize,

    /// Bytes of the WebSocket library's own outgoing frames (pings, pongs, the close frame)
    /// gathered per connection before they are written. Messages do not pass through it: they are
    /// written as frames encoded once per worker. Not a limit on message size.
    #[arg(long, env = "GATEWAY_WS_WRITE_BUFFER", help_heading = CLIENT_LIMITS, default_value_t = 8192)]
    pub ws_write_buffer: usize,

    /// Largest broker link frame sent or accepted, in bytes. Also the embedded broker's. Must hold
    /// the largest group id plus the largest message plus 64 bytes.
    #[arg(long, env = "GATEWAY_LINK_MAX_FRAME_SIZE", help_heading = BUS, default_value_t = DEFAULT_MAX_FRAME_SIZE)]
    pub link_max_frame_size: usize,

    /// Publishes queued for the bus (the broker link, or the Redis or NATS connection; per
    /// shard with Redis shards).
    #[arg(long = "link-queue-frames",
        value_name = "LINK_QUEUE_FRAMES", env = "GATEWAY_LINK_QUEUE_FRAMES", help_heading = BUS, default_value_t = 65_536)]
    pub link_queue: usize,

    /// Bytes of publishes queued for the bus (counted when a publish is queued, released once it
    /// is written); bounds the memory an engine that does not read can hold.
    #[arg(long, env = "GATEWAY_LINK_QUEUE_BYTES", help_heading = BUS, default_value_t = DEFAULT_LINK_QUEUE_BYTES_TO_BROKER)]
    pub link_queue_bytes: usize,

    /// Interval of heartbeat pings on the bus (the broker link's pings, Redis `PING` on the
    /// subscriber connection, NATS pings); silence is checked at each one.
    #[arg(long, env = "GATEWAY_LINK_PING_INTERVAL", help_heading = BUS, default_value = "5s", value_parser = humantime::parse_duration)]
    pub link_ping_interval: Duration,

    /// A bus connection on which nothing arrives for this long is dead (noticed at the next
    /// heartbeat, so within `link-idle-timeout` + `link-ping-interval`; or as soon as a write
    /// blocks past `link-idle-timeout` since the last reply heard, as when a half-open connection
    /// fills the socket buffers), and is replaced. NATS: its client's own rule applies instead,
    /// two pings unanswered at `link-ping-interval` (about three intervals).
    #[arg(long = "link-idle-timeout",
        value_name = "LINK_IDLE_TIMEOUT", env = "GATEWAY_LINK_IDLE_TIMEOUT", help_heading = BUS, default_value = "15s", value_parser = humantime::parse_duration)]
    pub link_timeout: Duration,

    /// Time to connect to the bus's engine and be accepted (the broker: hellos, TLS, the link
    /// secret's challenge; Redis and NATS: TLS and authentication).
    #[arg(long, env = "GATEWAY_LINK_CONNECT_TIMEOUT", help_heading = BUS, default_value = "3s", value_parser = humantime::parse_duration)]
    pub link_connect_timeout: Duration,

    /// Backoff after the first failed or lost bus connection; it doubles after each failure up
    /// to `--reconnect-max`, and returns to this once a connection has stayed up for at least
    /// `--reconnect-max` (and at least 1 s), so an engine that accepts and then drops the
    /// connection is not hammered. Each wait is random between half the backoff and the backoff.
    #[arg(long, env = "GATEWAY_RECONNECT_MIN", help_heading = BUS, default_value = "100ms", value_parser = humantime::parse_duration)]
    pub reconnect_min: Duration,

    /// Largest backoff. Must be at least `--reconnect-min`. After an outage of any length, the
    /// gateway tries again at least this often, so it is back within about this long after the
    /// engine is (each attempt against a stopped engine is one refused TCP connect).
    #[arg(long, env = "GATEWAY_RECONNECT_MAX", help_heading = BUS, default_value = "1s", value_parser = humantime::parse_duration)]
    pub reconnect_max: Duration,

    /// On SIGTERM or Ctrl-C the gateway stops accepting (the listener is closed, so new connections
    /// are refused by the system, and handshakes in progress are dropped), delivers what the
    /// workers' inboxes already hold to the connections' queues, and then gives each connection
    /// this long to write its queue before it is closed with code 1001.
    #[arg(long, env = "GATEWAY_SHUTDOWN_TIMEOUT", help_heading = TIMERS, default_value = "5s", value_parser = humantime::parse_duration)]
    pub shutdown_timeout: Duration,

    /// This gateway's name in its hello to the broker, which logs it, and in its heartbeats
    /// (`/api/nodes`).
    #[arg(long, env = "GATEWAY_NODE_NAME", help_heading = BUS)]
    pub node_name: Option<String>,

    /// What every Redis channel and NATS subject of this deployment starts with, so that several
    /// deployments can share one Redis or NATS: 1 to 64 letters, digits, `_` or `-`.
    #[arg(long, env = "GATEWAY_BUS_PREFIX", help_heading = BUS, default_value = "gp")]
    pub bus_prefix: String,

    /// Longest uid (the application's user id of a connection), in bytes.
    #[arg(long, env = "GATEWAY_MAX_UID_LEN", help_heading = CLUSTER, default_value_t = protocol::cluster::DEFAULT_MAX_UID_LEN)]
    pub max_uid_len: usize,

    /// Most uids in one `send_to_uid`, and most client ids in one `exclude` list (at most
    /// 10000).
    #[arg(long, env = "GATEWAY_MAX_TARGETS", help_heading = CLUSTER, default_value_t = 100)]
    pub max_targets: usize,

    /// Largest page of `members` (and of the admin API's `/api/groups` and
    /// `/api/groups/{id}/members`) a request may ask for (at most 10000).
    #[arg(long, env = "GATEWAY_MAX_PAGE_SIZE", help_heading = CLUSTER, default_value_t = 1000)]
    pub max_page_size: u32,

    /// Without join tokens, whether clients may list a group's members and ask for presence
    /// events (`members`, `add_group` with `presence`), which show other connections' client ids
    /// and uids. With join tokens the `presence` claim decides.
    #[arg(long, env = "GATEWAY_CLIENT_MEMBER_LISTS", help_heading = CLUSTER, default_value_t = true, action = clap::ArgAction::Set)]
    pub client_member_lists: bool,

    /// How often this gateway announces itself to the others on the bus.
    #[arg(long, env = "GATEWAY_NODE_HEARTBEAT", help_heading = CLUSTER, default_value = "2s", value_parser = humantime::parse_duration)]
    pub node_heartbeat: Duration,

    /// A gateway not heard from for this long is taken for dead: it leaves `/api/nodes`, and
    /// cluster queries stop waiting for it (and stop listing it as `missing`). Must be longer
    /// than `--node-heartbeat`.
    #[arg(long, env = "GATEWAY_NODE_TIMEOUT", help_heading = CLUSTER, default_value = "10s", value_parser = humantime::parse_duration)]
    pub node_timeout: Duration,

    /// How long a cluster query (counts, member lists, lookups, orders by uid) waits for the
    /// other gateways.
    #[arg(long, env = "GATEWAY_CLUSTER_QUERY_TIMEOUT", help_heading = CLUSTER, default_value = "1s", value_parser = humantime::parse_duration)]
    pub cluster_query_timeout: Duration,

    /// Groups that keep a history, as `PREFIX=SIZE,TTL` (repeatable; `;`-separated in the
    /// variable; in a config file an array, or a `[history]` table of `"PREFIX" = "SIZE,TTL"`):
    /// groups whose id starts with PREFIX keep their last SIZE messages (1 to 1000000), each for
    /// at most TTL (1s to 30 days). Their messages get offsets and an epoch; positioned members
    /// receive them with their position and recover what they missed (docs/protocol.md,
    /// "History and recovery"). The longest matching prefix wins; an empty prefix matches every
    /// group. On every carrier: the embedded and built-in broker, Redis, NATS with JetStream.
    #[arg(long, env = "GATEWAY_HISTORY", value_name = "PREFIX=SIZE,TTL", help_heading = HISTORY, value_delimiter = ';')]
    pub history: Vec<HistoryRule>,

    /// How long a history read (a recovering join, a hole repaired, the admin API) waits for
    /// the store; on NATS also how long a message is tried again while the store does not answer.
    #[arg(long, env = "GATEWAY_HISTORY_TIMEOUT", help_heading = HISTORY, default_value = "2s", value_parser = humantime::parse_duration)]
    pub history_timeout: Duration,

    #[command(flatten, next_help_heading = "Embedded broker")]
    pub embedded_broker: EmbeddedBrokerConfig,
}

/// Settings of the embedded broker's server side, named as the `broker` binary names them (its
/// `--link-*` queue and idle settings with `broker-` in front, since here `--link-*` is this
/// gateway's end of its link). Its frame size is `--link-max-frame-size` and its shutdown
/// timeout `--shutdown-timeout`, shared with the rest of the process.
#[derive(Debug, Clone, clap::Args)]
pub struct EmbeddedBrokerConfig {
    /// Time a new link to the embedded broker has to send its hello (and, with a link secret,
    /// its auth frame; with TLS, the TLS handshake has this long too).
    #[arg(long, env = "GATEWAY_BROKER_HANDSHAKE_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub broker_handshake_timeout: Duration,

    /// Frames the embedded broker queues for one gateway link before it counts as a slow
    /// consumer and is disconnected.
    #[arg(long, env = "GATEWAY_BROKER_LINK_QUEUE_FRAMES", default_value_t = DEFAULT_LINK_QUEUE_FRAMES)]
    pub broker_link_queue_frames: usize,

    /// Bytes of frames the embedded broker queues for one gateway link before it counts as a
    /// slow consumer and is disconnected.
    #[arg(long, env = "GATEWAY_BROKER_LINK_QUEUE_BYTES", default_value_t = DEFAULT_LINK_QUEUE_BYTES)]
    pub broker_link_queue_bytes: usize,

    /// A link that sends the embedded broker nothing, not even a ping, for this long is closed.
    #[arg(long, env = "GATEWAY_BROKER_LINK_IDLE_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub broker_link_idle_timeout: Duration,

    /// Channels (groups) one link may be subscribed to at once on the embedded broker;
    /// subscriptions past it are refused (the link is told which) and the link stays.
    #[arg(long, env = "GATEWAY_BROKER_MAX_CHANNELS_PER_LINK", default_value_t = DEFAULT_MAX_CHANNELS_PER_LINK)]
    pub broker_max_channels_per_link: usize,

    /// Groups with history the embedded broker keeps at once; past it the histories started
    /// first are dropped (their next message starts a new epoch).
    #[arg(long, env = "GATEWAY_BROKER_HISTORY_MAX_CHANNELS", default_value_t = DEFAULT_HISTORY_MAX_CHANNELS)]
    pub broker_history_max_channels: usize,

    /// Bytes of message text the embedded broker keeps in histories, all groups together.
    #[arg(long, env = "GATEWAY_BROKER_HISTORY_MAX_BYTES", default_value_t = DEFAULT_HISTORY_MAX_BYTES)]
    pub broker_history_max_bytes: usize,

    /// Longest channel name (group id) the embedded broker takes, in bytes. Default: the larger
    /// of 1024 and `--max-group-id-len`, so it never refuses a group this gateway accepts.
    #[arg(long, env = "GATEWAY_BROKER_MAX_CHANNEL_LEN")]
    pub broker_max_channel_len: Option<usize>,

    /// PHP Channel clients (Workerman's `Channel\Client`) of the embedded broker: `shared`
    /// recognizes them by their first frame on `--broker-listen`, beside gateways (not with
    /// `--broker-tls-cert`); `off` refuses them; an address gives them a listener of their own,
    /// under the same rule as `--broker-listen` (loopback, or a link secret, or `--insecure`). PHP
    /// clients cannot authenticate: with a link secret they are served only from loopback or
    /// `--broker-php-allow`.
    #[arg(
        long,
        env = "GATEWAY_BROKER_PHP_CHANNEL",
        value_name = "shared|off|ADDR",
        default_value = "shared"
    )]
    pub broker_php_channel: PhpListen,

    /// Source addresses PHP Channel clients may connect to the embedded broker from,
    /// comma-separated (for example `10.0.0.5,10.0.0.6`): only these (loopback too only if
    /// listed). Unset: loopback only when there is a link secret, any host that can reach the
    /// port when there is none.
    #[arg(
        long,
        env = "GATEWAY_BROKER_PHP_ALLOW",
        value_name = "IP",
        value_delimiter = ','
    )]
    pub broker_php_allow: Vec<IpAddr>,

    /// A PHP Channel client that sends the embedded broker nothing, not even a ping, for this
    /// long is closed. Workerman's `Channel\Client` pings every 55 s.
    #[arg(long, env = "GATEWAY_BROKER_PHP_IDLE_TIMEOUT", default_value = "120s", value_parser = humantime::parse_duration)]
    pub broker_php_idle_timeout: Duration,

    /// Items one PHP Channel queue (`enqueue`) of the embedded broker holds until a watcher
    /// reserves them.
    #[arg(long, env = "GATEWAY_BROKER_PHP_QUEUE_MAX_ITEMS", default_value_t = DEFAULT_PHP_QUEUE_MAX_ITEMS)]
    pub broker_php_queue_max_items: usize,

    /// Deepest nesting of arrays in a value a PHP Channel client sends the embedded broker.
    #[arg(long, env = "GATEWAY_BROKER_PHP_MAX_DEPTH", default_value_t = DEFAULT_PHP_MAX_DEPTH)]
    pub broker_php_max_depth: usize,

    /// Most array elements (counted at every level) in one frame from a PHP Channel client of
    /// the embedded broker.
    #[arg(long, env = "GATEWAY_BROKER_PHP_MAX_ELEMENTS", default_value_t = DEFAULT_PHP_MAX_ELEMENTS)]
    pub broker_php_max_elements: usize,
}

impl Default for EmbeddedBrokerConfig {
    fn default() -> Self {
        EmbeddedBrokerConfig {
            broker_handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            broker_link_queue_frames: DEFAULT_LINK_QUEUE_FRAMES,
            broker_link_queue_bytes: DEFAULT_LINK_QUEUE_BYTES,
            broker_link_idle_timeout: DEFAULT_LINK_IDLE_TIMEOUT,
            broker_max_channels_per_link: DEFAULT_MAX_CHANNELS_PER_LINK,
            broker_max_channel_len: None,
            broker_history_max_channels: DEFAULT_HISTORY_MAX_CHANNELS,
            broker_history_max_bytes: DEFAULT_HISTORY_MAX_BYTES,
            broker_php_channel: PhpListen::Shared,
            broker_php_allow: Vec::new(),
            broker_php_idle_timeout: DEFAULT_PHP_IDLE_TIMEOUT,
            broker_php_queue_max_items: DEFAULT_PHP_QUEUE_MAX_ITEMS,
            broker_php_max_depth: DEFAULT_PHP_MAX_DEPTH,
            broker_php_max_elements: DEFAULT_PHP_MAX_ELEMENTS,
        }
    }
}

impl Default for GatewayConfig {
    fn default() -> Self {
        use clap::Parser;
        #[derive(Parser)]
        struct Defaults {
            #[command(flatten)]
            config: GatewayConfig,
        }
        // The clap attributes above are the single source of the defaults; a test parses them.
        Defaults::try_parse_from(["gateway"])
            .map(|d| d.config)
            .expect("gateway config defaults parse")
    }
}

impl GatewayConfig {
    pub fn worker_count(&self) -> usize {
        self.workers.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
                .min(MAX_WORKERS)
        })
    }

    /// Longest cluster topic name (a uid's, a group's presence topic): what the bus must carry
    /// beside group ids.
    pub fn max_topic_len(&self) -> usize {
        crate::bus::inbound::max_topic_len(self.max_group_id_len, self.max_uid_len)
    }

    pub fn node_name(&self) -> String {
        self.node_name
            .clone()
            .unwrap_or_else(|| format!("gateway-{}", std::process::id()))
    }

    /// The embedded broker's settings: [`EmbeddedBrokerConfig`], and the frame size and
    /// shutdown timeout of the whole process.
    pub fn embedded_broker_config(&self) -> BrokerConfig {
        let EmbeddedBrokerConfig {
            broker_handshake_timeout,
            broker_link_queue_frames,
            broker_link_queue_bytes,
            broker_link_idle_timeout,
            broker_max_channels_per_link,
            broker_max_channel_len,
            broker_history_max_channels,
            broker_history_max_bytes,
            broker_php_channel,
            ref broker_php_allow,
            broker_php_idle_timeout,
            broker_php_queue_max_items,
            broker_php_max_depth,
            broker_php_max_elements,
        } = self.embedded_broker;
        BrokerConfig {
            max_frame_size: self.link_max_frame_size,
            link_queue_frames: broker_link_queue_frames,
            link_queue_bytes: broker_link_queue_bytes,
            link_idle_timeout: broker_link_idle_timeout,
            handshake_timeout: broker_handshake_timeout,
            max_channels_per_link: broker_max_channels_per_link,
            // Group ids are the broker's channel names: by default never refuse one the gateway
            // accepts.
            max_channel_len: broker_max_channel_len
                .unwrap_or(self.max_topic_len().max(DEFAULT_MAX_CHANNEL_LEN)),
            history_max_channels: broker_history_max_channels,
            history_max_bytes: broker_history_max_bytes,
            shutdown_timeout: self.shutdown_timeout,
            // docs/php-channel.md. With an address, the `gateway` binary binds it and hands it to
            // `GatewayBuilder::embedded_broker_php`.
            php: PhpConfig {
                channel: broker_php_channel,
                allow: broker_php_allow.clone(),
                idle_timeout: broker_php_idle_timeout,
                queue_max_items: broker_php_queue_max_items,
                max_depth: broker_php_max_depth,
                max_elements: broker_php_max_elements,
            },
        }
    }

    /// Rejects settings that cannot work, naming the setting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let workers = self.worker_count();
        if workers == 0 || workers > MAX_WORKERS {
            return Err(ConfigError::new(
                "--workers",
                format!("must be between 1 and {MAX_WORKERS}"),
            ));
        }
        let positive = [
            ("--max-message-size", self.max_message_size),
            ("--max-group-id-len", self.max_group_id_len),
            (
                "--max-groups-per-connection",
                self.max_groups_per_connection,
            ),
            ("--max-groups", self.max_groups),
            ("--outbound-queue-messages", self.outbound_queue_messages),
            ("--outbound-queue-bytes", self.outbound_queue_bytes),
            ("--worker-queue", self.worker_queue),
            ("--ws-read-buffer", self.ws_read_buffer),
            ("--link-queue-frames", self.link_queue),
            ("--link-queue-bytes", self.link_queue_bytes),
            (
                "--broker-link-queue-frames",
                self.embedded_broker.broker_link_queue_frames,
            ),
            (
                "--broker-link-queue-bytes",
                self.embedded_broker.broker_link_queue_bytes,
            ),
            (
                "--broker-php-queue-max-items",
                self.embedded_broker.broker_php_queue_max_items,
            ),
            (
                "--broker-php-max-depth",
                self.embedded_broker.broker_php_max_depth,
            ),
            (
                "--broker-php-max-elements",
                self.embedded_broker.broker_php_max_elements,
            ),
            ("--max-connections", self.max_connections),
            ("--max-uid-len", self.max_uid_len),
            ("--max-targets", self.max_targets),
            ("--max-page-size", self.max_page_size as usize),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(ConfigError::new(name, "must be at least 1"));
            }
        }
        let prefix = &self.bus_prefix;
        if prefix.is_empty()
            || prefix.len() > 64
            || !prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(ConfigError::new(
                "--bus-prefix",
                format!("{prefix:?}: must be 1 to 64 letters, digits, `_` or `-`"),
            ));
        }
        let durations = [
            ("--ping-interval", self.ping_interval),
            ("--idle-timeout", self.idle_timeout),
            ("--handshake-timeout", self.handshake_timeout),
            ("--write-timeout", self.write_timeout),
            ("--link-ping-interval", self.link_ping_interval),
            ("--link-idle-timeout", self.link_timeout),
            (
                "--broker-handshake-timeout",
                self.embedded_broker.broker_handshake_timeout,
            ),
            (
                "--broker-link-idle-timeout",
                self.embedded_broker.broker_link_idle_timeout,
            ),
            (
                "--broker-php-idle-timeout",
                self.embedded_broker.broker_php_idle_timeout,
            ),
            ("--link-connect-timeout", self.link_connect_timeout),
            ("--reconnect-min", self.reconnect_min),
            ("--node-heartbeat", self.node_heartbeat),
            ("--node-timeout", self.node_timeout),
            ("--cluster-query-timeout", self.cluster_query_timeout),
        ];
        for (name, value) in durations {
            if value.is_zero() {
                return Err(ConfigError::new(name, "must be greater than zero"));
            }
        }
        // Deadlines are computed as `now + duration`: absurd values would overflow.
        let bounded = durations.into_iter().chain([
            ("--reconnect-max", self.reconnect_max),
            ("--shutdown-timeout", self.shutdown_timeout),
        ]);
        for (name, value) in bounded {
            if value > server_kit::settings::MAX_DURATION {
                return Err(ConfigError::new(name, "must be at most one day"));
            }
        }
        if self.max_messages_per_second > MAX_MESSAGES_PER_SECOND {
            return Err(ConfigError::new(
                "--max-messages-per-second",
                format!("must be at most {MAX_MESSAGES_PER_SECOND}"),
            ));
        }
        if self.max_messages_per_second > 0 && self.message_burst == 0 {
            return Err(ConfigError::new(
                "--message-burst",
                "must be at least 1 (or max-messages-per-second 0)",
            ));
        }
        if self.reconnect_max < self.reconnect_min {
            return Err(ConfigError::new(
                "--reconnect-max",
                "must be at least reconnect-min",
            ));
        }
        if self.link_max_frame_size < 1024 || self.link_max_frame_size > u32::MAX as usize {
            return Err(ConfigError::new(
                "--link-max-frame-size",
                "must be between 1 KiB and 4 GiB",
            ));
        }
        if self.max_group_id_len + 64 > self.link_max_frame_size
            || self.max_message_size + self.max_group_id_len + 64 > self.link_max_frame_size
        {
            return Err(ConfigError::new(
                "--link-max-frame-size",
                "must hold the largest group id and message",
            ));
        }
        if self.max_page_size > MAX_PAGE_SIZE {
            return Err(ConfigError::new(
                "--max-page-size",
                format!("must be at most {MAX_PAGE_SIZE}"),
            ));
        }
        if self.max_targets > MAX_TARGETS {
            return Err(ConfigError::new(
                "--max-targets",
                format!("must be at most {MAX_TARGETS}"),
            ));
        }
        if self.node_timeout <= self.node_heartbeat {
            return Err(ConfigError::new(
                "--node-timeout",
                "must be longer than --node-heartbeat (three heartbeats or more is wise)",
            ));
        }
        // A control frame carries a message with an `exclude` list, or an answer of a page of
        // members: both must fit in a frame.
        let exclude = self.max_targets * (protocol::cluster::MAX_CLIENT_ID_LEN + 3);
        if self.max_message_size + exclude + self.max_topic_len() + 128 > self.link_max_frame_size {
            return Err(ConfigError::new(
                "--link-max-frame-size",
                "must hold the largest message with an `exclude` list of --max-targets client ids",
            ));
        }
        // A page of members (or of a uid's connections, or of groups) travels as one answer.
        let entry =
            protocol::cluster::MAX_CLIENT_ID_LEN + self.max_uid_len.max(self.max_group_id_len) + 48;
        if (self.max_page_size as usize + 1) * entry + 1024 > self.link_max_frame_size {
            return Err(ConfigError::new(
                "--max-page-size",
                "a page of that many members or groups does not fit in --link-max-frame-size",
            ));
        }
        if let Some(len) = self.embedded_broker.broker_max_channel_len {
            if len == 0 || len + 16 > self.link_max_frame_size {
                return Err(ConfigError::new(
                    "--broker-max-channel-len",
                    "must be at least 1 and fit in a link frame",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_parse_and_validate() {
        let config = GatewayConfig::default();
        assert_eq!(config.max_message_size, 64 * 1024);
        assert_eq!(config.idle_timeout, Duration::from_secs(60));
        assert!(config.validate().is_ok());
    }

    #[test]
    fn bad_settings_are_named() {
        let config = GatewayConfig {
            workers: Some(65),
            ..GatewayConfig::default()
        };
        assert!(config
            .validate()
            .unwrap_err()
            .to_string()
            .contains("workers"));
        let config = GatewayConfig {
            outbound_queue_bytes: 0,
            ..GatewayConfig::default()
        };
        assert!(config
            .validate()
            .unwrap_err()
            .to_string()
            .contains("outbound-queue-bytes"));
    }

    #[test]
    fn limits_are_checked_and_origins_parsed() {
        let defaults = GatewayConfig::default();
        assert_eq!(defaults.max_connections, 100_000);
        assert_eq!(defaults.max_messages_per_second, 100);
        assert!(defaults.allowed_origins.is_empty());
        for (config, setting) in [
            (
                GatewayConfig {
                    max_connections: 0,
                    ..GatewayConfig::default()
                },
                "max-connections",
            ),
            (
                GatewayConfig {
                    message_burst: 0,
                    ..GatewayConfig::default()
                },
                "message-burst",
            ),
            (
                GatewayConfig {
                    max_messages_per_second: MAX_MESSAGES_PER_SECOND + 1,
                    ..GatewayConfig::default()
                },
                "max-messages-per-second",
            ),
        ] {
            assert!(
                config.validate().unwrap_err().to_string().contains(setting),
                "{setting}"
            );
        }
        let unlimited = GatewayConfig {
            max_messages_per_second: 0,
            message_burst: 0,
            max_connections_per_ip: 0,
            ..GatewayConfig::default()
        };
        assert!(unlimited.validate().is_ok());

        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            config: GatewayConfig,
        }
        let cli = Cli::try_parse_from([
            "gateway",
            "--allowed-origins",
            "https://example.com,http://127.0.0.1:9090",
            "--allowed-origins=https://b.example:443",
        ])
        .expect("origins parse");
        let origins: Vec<String> = cli
            .config
            .allowed_origins
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            origins,
            [
                "https://example.com",
                "http://127.0.0.1:9090",
                "https://b.example"
            ]
        );
        assert!(Cli::try_parse_from(["gateway", "--allowed-origins", "example.com"]).is_err());
    }
}
