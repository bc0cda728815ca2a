//! Gateway settings. Each is a command-line flag and an environment variable of the `gateway`
//! binary; docs/configuration.md lists them with what happens when a limit is hit.

use std::time::Duration;

use protocol::client::DEFAULT_MAX_GROUP_ID_LEN;
use protocol::DEFAULT_MAX_FRAME_SIZE;

use crate::edge::origin::AllowedOrigin;

/// Workers are tracked in a 64-bit set per group; run more processes for more cores.
pub const MAX_WORKERS: usize = 64;

/// Highest `--max-messages-per-second`: a frame then costs a microsecond of the bucket.
pub const MAX_MESSAGES_PER_SECOND: u32 = 1_000_000;

#[derive(Debug, Clone, clap::Args)]
pub struct GatewayConfig {
    /// Worker threads, each owning its share of the connections. Default: one per CPU.
    #[arg(long, env = "GATEWAY_WORKERS")]
    pub workers: Option<usize>,

    /// Largest WebSocket message (and frame) a client may send, in bytes. Larger closes the
    /// connection with code 1009.
    #[arg(long, env = "GATEWAY_MAX_MESSAGE_SIZE", default_value_t = 64 * 1024)]
    pub max_message_size: usize,

    /// Longest group id, in bytes. Longer gets an `invalid_group_id` error reply.
    #[arg(long, env = "GATEWAY_MAX_GROUP_ID_LEN", default_value_t = DEFAULT_MAX_GROUP_ID_LEN)]
    pub max_group_id_len: usize,

    /// Groups one connection may be in at once. More gets a `too_many_groups` error reply.
    #[arg(
        long,
        env = "GATEWAY_MAX_GROUPS_PER_CONNECTION",
        default_value_t = 1000
    )]
    pub max_groups_per_connection: usize,

    /// Distinct groups this process may have members in at once (each is one subscription on
    /// the bus). A join that would make one more gets a `too_many_groups` error reply. Keep it
    /// below the broker's --max-channels-per-link.
    #[arg(long, env = "GATEWAY_MAX_GROUPS", default_value_t = 100_000)]
    pub max_groups: usize,

    /// Messages queued for one connection before it is closed as a slow consumer (code 4001).
    #[arg(long, env = "GATEWAY_OUTBOUND_QUEUE_MESSAGES", default_value_t = 1024)]
    pub outbound_queue_messages: usize,

    /// Bytes queued for one connection before it is closed as a slow consumer (code 4001).
    #[arg(long, env = "GATEWAY_OUTBOUND_QUEUE_BYTES", default_value_t = 1024 * 1024)]
    pub outbound_queue_bytes: usize,

    /// Deliveries queued for one worker; a full queue makes publishers wait (backpressure).
    #[arg(long, env = "GATEWAY_WORKER_QUEUE", default_value_t = 4096)]
    pub worker_queue: usize,

    /// Interval of WebSocket pings to each client.
    #[arg(long, env = "GATEWAY_PING_INTERVAL", default_value = "25s", value_parser = humantime::parse_duration)]
    pub ping_interval: Duration,

    /// A client that sends nothing (not even a pong) for this long is closed with code 4000.
    #[arg(long, env = "GATEWAY_IDLE_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,

    /// A write to a client that makes no progress for this long closes it as a slow consumer.
    #[arg(long, env = "GATEWAY_WRITE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub write_timeout: Duration,

    /// Time a new TCP connection has to complete the WebSocket handshake.
    #[arg(long, env = "GATEWAY_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub handshake_timeout: Duration,

    /// Most client connections this process holds at once, those still in the handshake
    /// included. Over it, a new connection's upgrade is answered HTTP 503.
    #[arg(long, env = "GATEWAY_MAX_CONNECTIONS", default_value_t = 100_000)]
    pub max_connections: usize,

    /// Most connections from one client address at once (IPv6: one /64 network); 0 = no limit.
    /// Over it, a new connection's upgrade is answered HTTP 503.
    #[arg(long, env = "GATEWAY_MAX_CONNECTIONS_PER_IP", default_value_t = 1000)]
    pub max_connections_per_ip: usize,

    /// Text and binary frames one connection may send per second, on average; 0 = no limit.
    /// A frame over the rate is not executed and gets a `rate_limited` error reply.
    #[arg(long, env = "GATEWAY_MAX_MESSAGES_PER_SECOND", default_value_t = 100)]
    pub max_messages_per_second: u32,

    /// Frames a connection may send in a burst above the average rate (the bucket size).
    #[arg(long, env = "GATEWAY_MESSAGE_BURST", default_value_t = 200)]
    pub message_burst: u32,

    /// Rate-limited frames a connection may send before it is closed with 1008; the count
    /// restarts after a second without one.
    #[arg(long, env = "GATEWAY_RATE_LIMIT_STRIKES", default_value_t = 100)]
    pub rate_limit_strikes: u32,

    /// Control frames (ping, pong) and continuation frames one connection may send per second,
    /// on average, with a burst of one second's worth; 0 = no limit. More closes it with 1008.
    #[arg(
        long,
        env = "GATEWAY_MAX_CONTROL_FRAMES_PER_SECOND",
        default_value_t = 1000
    )]
    pub max_control_frames_per_second: u32,

    /// Origins browsers may connect from (comma-separated or repeated), such as
    /// https://example.com; `*` allows any. Unset: any. Other origins get HTTP 403; handshakes
    /// without an Origin header (not browsers) are always accepted.
    #[arg(long, env = "GATEWAY_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<AllowedOrigin>,

    /// Read buffer per connection, in bytes (tokio-tungstenite's default of 128 KiB is far too
    /// much for many mostly idle connections). Larger messages still arrive whole: the buffer
    /// grows for them.
    #[arg(long, env = "GATEWAY_WS_READ_BUFFER", default_value_t = 1024)]
    pub ws_read_buffer: usize,

    /// Bytes of outgoing frames buffered per connection before they are written to the socket.
    #[arg(long, env = "GATEWAY_WS_WRITE_BUFFER", default_value_t = 8192)]
    pub ws_write_buffer: usize,

    /// Largest broker link frame sent or accepted, in bytes.
    #[arg(long, env = "GATEWAY_LINK_MAX_FRAME_SIZE", default_value_t = DEFAULT_MAX_FRAME_SIZE)]
    pub link_max_frame_size: usize,

    /// Publishes queued for the broker link; when full, further publishes to other gateways are
    /// dropped and counted (local members still receive them).
    #[arg(long, env = "GATEWAY_LINK_QUEUE", default_value_t = 65_536)]
    pub link_queue: usize,

    /// Interval of heartbeat pings on the broker link.
    #[arg(long, env = "GATEWAY_LINK_PING_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub link_ping_interval: Duration,

    /// A broker link silent for this long is considered dead and reconnected; so is one whose
    /// writes stay blocked past that point (a half-open link with full socket buffers).
    #[arg(long, env = "GATEWAY_LINK_TIMEOUT", default_value = "15s", value_parser = humantime::parse_duration)]
    pub link_timeout: Duration,

    /// Time allowed to connect to the broker: TCP, the TLS handshake (with --broker-tls), the
    /// hellos and the link authentication.
    #[arg(long, env = "GATEWAY_LINK_CONNECT_TIMEOUT", default_value = "3s", value_parser = humantime::parse_duration)]
    pub link_connect_timeout: Duration,

    /// First reconnect delay after the broker link drops; doubles up to the maximum, with jitter,
    /// and returns to this once a link has stayed up for the maximum (at least 1 s).
    #[arg(long, env = "GATEWAY_RECONNECT_MIN", default_value = "100ms", value_parser = humantime::parse_duration)]
    pub reconnect_min: Duration,

    /// Largest reconnect delay. It bounds how long after a broker comes back the gateway
    /// notices, however long the outage was: the default keeps resumption under 2 s.
    #[arg(long, env = "GATEWAY_RECONNECT_MAX", default_value = "1s", value_parser = humantime::parse_duration)]
    pub reconnect_max: Duration,

    /// How long shutdown waits for queued messages to be written before closing clients.
    #[arg(long, env = "GATEWAY_SHUTDOWN_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub shutdown_timeout: Duration,

    /// Name of this gateway on the broker link, for logs. Default: gateway-<pid>.
    #[arg(long, env = "GATEWAY_NODE_NAME")]
    pub node_name: Option<String>,
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

    pub fn node_name(&self) -> String {
        self.node_name
            .clone()
            .unwrap_or_else(|| format!("gateway-{}", std::process::id()))
    }

    /// Rejects settings that cannot work, naming the setting.
    pub fn validate(&self) -> Result<(), String> {
        let workers = self.worker_count();
        if workers == 0 || workers > MAX_WORKERS {
            return Err(format!("workers must be between 1 and {MAX_WORKERS}"));
        }
        let positive = [
            ("max-message-size", self.max_message_size),
            ("max-group-id-len", self.max_group_id_len),
            ("max-groups-per-connection", self.max_groups_per_connection),
            ("max-groups", self.max_groups),
            ("outbound-queue-messages", self.outbound_queue_messages),
            ("outbound-queue-bytes", self.outbound_queue_bytes),
            ("worker-queue", self.worker_queue),
            ("ws-read-buffer", self.ws_read_buffer),
            ("link-queue", self.link_queue),
            ("max-connections", self.max_connections),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(format!("{name} must be at least 1"));
            }
        }
        let durations = [
            ("ping-interval", self.ping_interval),
            ("idle-timeout", self.idle_timeout),
            ("handshake-timeout", self.handshake_timeout),
            ("write-timeout", self.write_timeout),
            ("link-ping-interval", self.link_ping_interval),
            ("link-timeout", self.link_timeout),
            ("link-connect-timeout", self.link_connect_timeout),
            ("reconnect-min", self.reconnect_min),
        ];
        for (name, value) in durations {
            if value.is_zero() {
                return Err(format!("{name} must be greater than zero"));
            }
        }
        // Deadlines are computed as `now + duration`: absurd values would overflow.
        let bounded = durations.into_iter().chain([
            ("reconnect-max", self.reconnect_max),
            ("shutdown-timeout", self.shutdown_timeout),
        ]);
        for (name, value) in bounded {
            if value > server_kit::settings::MAX_DURATION {
                return Err(format!("{name} must be at most one day"));
            }
        }
        if self.max_messages_per_second > MAX_MESSAGES_PER_SECOND {
            return Err(format!(
                "max-messages-per-second must be at most {MAX_MESSAGES_PER_SECOND}"
            ));
        }
        if self.max_messages_per_second > 0 && self.message_burst == 0 {
            return Err("message-burst must be at least 1 (or max-messages-per-second 0)".into());
        }
        if self.reconnect_max < self.reconnect_min {
            return Err("reconnect-max must be at least reconnect-min".into());
        }
        if self.link_max_frame_size < 1024 || self.link_max_frame_size > u32::MAX as usize {
            return Err("link-max-frame-size must be between 1 KiB and 4 GiB".into());
        }
        if self.max_group_id_len + 64 > self.link_max_frame_size
            || self.max_message_size + self.max_group_id_len + 64 > self.link_max_frame_size
        {
            return Err("link-max-frame-size must hold the largest group id and message".into());
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
        assert!(config.validate().unwrap_err().contains("workers"));
        let config = GatewayConfig {
            outbound_queue_bytes: 0,
            ..GatewayConfig::default()
        };
        assert!(config
            .validate()
            .unwrap_err()
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
                config.validate().unwrap_err().contains(setting),
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
