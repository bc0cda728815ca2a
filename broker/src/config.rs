//! Broker settings. Each is a command-line flag and an environment variable of the `broker`
//! binary; docs/configuration.md lists them. Settings of the broker's listener are
//! `--broker-*` and those of the link itself `--link-*`, as in the gateway, which offers the same
//! settings for its embedded broker.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use protocol::php::{DEFAULT_PHP_MAX_DEPTH, DEFAULT_PHP_MAX_ELEMENTS};
use protocol::DEFAULT_MAX_FRAME_SIZE;
use server_kit::settings::{ConfigError, MAX_DURATION};

pub const DEFAULT_LINK_QUEUE_FRAMES: usize = 16_384;
pub const DEFAULT_LINK_QUEUE_BYTES: usize = 64 * 1024 * 1024;
pub const DEFAULT_LINK_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_MAX_CHANNELS_PER_LINK: usize = 1_000_000;
pub const DEFAULT_MAX_CHANNEL_LEN: usize = 1024;
pub const DEFAULT_HISTORY_MAX_CHANNELS: usize = 100_000;
pub const DEFAULT_HISTORY_MAX_BYTES: usize = 256 * 1024 * 1024;
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_PHP_QUEUE_MAX_ITEMS: usize = 10_000;
pub const DEFAULT_PHP_IDLE_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, clap::Args)]
pub struct BrokerConfig {
    /// Largest link frame accepted or sent, in bytes. Gateways' `--link-max-frame-size` should
    /// not exceed it.
    #[arg(long = "link-max-frame-size",
        value_name = "LINK_MAX_FRAME_SIZE", env = "BROKER_LINK_MAX_FRAME_SIZE", default_value_t = DEFAULT_MAX_FRAME_SIZE)]
    pub max_frame_size: usize,

    /// Frames queued for one gateway link.
    #[arg(long, env = "BROKER_LINK_QUEUE_FRAMES", default_value_t = DEFAULT_LINK_QUEUE_FRAMES)]
    pub link_queue_frames: usize,

    /// Bytes of frames queued for one gateway link (counted when a frame is queued, released once
    /// the link's writer has written it out); bounds the memory a link that does not read can hold.
    /// A frame larger than this is still queued when the link's queue is empty, so a
    /// `--link-max-frame-size` above it works, one such frame at a time.
    #[arg(long, env = "BROKER_LINK_QUEUE_BYTES", default_value_t = DEFAULT_LINK_QUEUE_BYTES)]
    pub link_queue_bytes: usize,

    /// A link that sends nothing, not even a ping, for this long is closed. Gateways ping every 5 s
    /// by default.
    #[arg(long, env = "BROKER_LINK_IDLE_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub link_idle_timeout: Duration,

    /// Time a new link has to send its hello (and, with a link secret, its auth frame; with TLS,
    /// the TLS handshake has this long too).
    #[arg(long = "broker-handshake-timeout",
        value_name = "BROKER_HANDSHAKE_TIMEOUT", env = "BROKER_HANDSHAKE_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub handshake_timeout: Duration,

    /// Channels (groups) one link may be subscribed to at once; subscriptions past it are
    /// refused (the link is told which) and the link stays.
    #[arg(long = "broker-max-channels-per-link",
        value_name = "BROKER_MAX_CHANNELS_PER_LINK", env = "BROKER_MAX_CHANNELS_PER_LINK", default_value_t = DEFAULT_MAX_CHANNELS_PER_LINK)]
    pub max_channels_per_link: usize,

    /// Longest channel name (group id), in bytes; must fit in a frame. Keep it at least the
    /// gateways' `--max-group-id-len`.
    #[arg(long = "broker-max-channel-len",
        value_name = "BROKER_MAX_CHANNEL_LEN", env = "BROKER_MAX_CHANNEL_LEN", default_value_t = DEFAULT_MAX_CHANNEL_LEN)]
    pub max_channel_len: usize,

    /// Channels with history (gateways' `--history` groups) kept at once; past it the
    /// histories started first are dropped (their next message starts a new epoch).
    #[arg(long = "history-max-channels",
        value_name = "BROKER_HISTORY_MAX_CHANNELS", env = "BROKER_HISTORY_MAX_CHANNELS", default_value_t = DEFAULT_HISTORY_MAX_CHANNELS)]
    pub history_max_channels: usize,

    /// Bytes of message text kept in histories, all channels together; past it the histories
    /// started first are dropped.
    #[arg(long = "history-max-bytes",
        value_name = "BROKER_HISTORY_MAX_BYTES", env = "BROKER_HISTORY_MAX_BYTES", default_value_t = DEFAULT_HISTORY_MAX_BYTES)]
    pub history_max_bytes: usize,

    /// On SIGTERM or Ctrl-C, how long to wait for links to finish.
    #[arg(long, env = "BROKER_SHUTDOWN_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub shutdown_timeout: Duration,

    #[command(flatten)]
    pub php: PhpConfig,
}

/// Where PHP Channel clients are served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PhpListen {
    /// Recognized on the link listener by their first frame.
    Shared,
    Off,
    /// A listener of their own (the `broker` binary binds it).
    Addr(SocketAddr),
}

impl FromStr for PhpListen {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "shared" => Ok(PhpListen::Shared),
            "off" => Ok(PhpListen::Off),
            addr => addr
                .parse()
                .map(PhpListen::Addr)
                .map_err(|_| format!("{addr:?} is not `shared`, `off` or a socket address")),
        }
    }
}

impl std::fmt::Display for PhpListen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PhpListen::Shared => f.write_str("shared"),
            PhpListen::Off => f.write_str("off"),
            PhpListen::Addr(addr) => write!(f, "{addr}"),
        }
    }
}

/// Settings of the PHP Channel protocol (Workerman's `Channel\Server`), docs/php-channel.md.
#[derive(Debug, Clone, clap::Args)]
pub struct PhpConfig {
    /// PHP Channel clients (Workerman's `Channel\Client`): `shared` recognizes them by their
    /// first frame on `--broker-listen`, beside gateways (not with `--broker-tls-cert`); `off`
    /// refuses them; an address gives them a listener of their own, under the same rule as
    /// `--broker-listen` (loopback, or a link secret, or `--insecure`). PHP clients cannot
    /// authenticate: with a link secret they are served only from loopback or `--php-allow`.
    #[arg(
        long = "php-channel",
        env = "BROKER_PHP_CHANNEL",
        value_name = "shared|off|ADDR",
        default_value = "shared"
    )]
    pub channel: PhpListen,

    /// Source addresses PHP Channel clients may connect from, comma-separated (for example
    /// `10.0.0.5,10.0.0.6`): only these (loopback too only if listed). Unset: loopback only when
    /// the broker has a link secret, any host that can reach the port when it has none.
    #[arg(
        long = "php-allow",
        env = "BROKER_PHP_ALLOW",
        value_name = "IP",
        value_delimiter = ','
    )]
    pub allow: Vec<IpAddr>,

    /// A PHP Channel client that sends nothing, not even a ping, for this long is closed.
    /// Workerman's `Channel\Client` pings every 55 s.
    #[arg(long = "php-idle-timeout", env = "BROKER_PHP_IDLE_TIMEOUT", default_value = "120s", value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,

    /// Items one PHP Channel queue (`enqueue`) holds until a watcher reserves them.
    #[arg(long = "php-queue-max-items", env = "BROKER_PHP_QUEUE_MAX_ITEMS", default_value_t = DEFAULT_PHP_QUEUE_MAX_ITEMS)]
    pub queue_max_items: usize,

    /// Deepest nesting of arrays in a value a PHP Channel client sends.
    #[arg(long = "php-max-depth", env = "BROKER_PHP_MAX_DEPTH", default_value_t = DEFAULT_PHP_MAX_DEPTH)]
    pub max_depth: usize,

    /// Most array elements (counted at every level) in one frame from a PHP Channel client.
    #[arg(long = "php-max-elements", env = "BROKER_PHP_MAX_ELEMENTS", default_value_t = DEFAULT_PHP_MAX_ELEMENTS)]
    pub max_elements: usize,
}

impl Default for PhpConfig {
    fn default() -> Self {
        PhpConfig {
            channel: PhpListen::Shared,
            allow: Vec::new(),
            idle_timeout: DEFAULT_PHP_IDLE_TIMEOUT,
            queue_max_items: DEFAULT_PHP_QUEUE_MAX_ITEMS,
            max_depth: DEFAULT_PHP_MAX_DEPTH,
            max_elements: DEFAULT_PHP_MAX_ELEMENTS,
        }
    }
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            max_frame_size: DEFAULT_MAX_FRAME_SIZE,
            link_queue_frames: DEFAULT_LINK_QUEUE_FRAMES,
            link_queue_bytes: DEFAULT_LINK_QUEUE_BYTES,
            link_idle_timeout: DEFAULT_LINK_IDLE_TIMEOUT,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            max_channels_per_link: DEFAULT_MAX_CHANNELS_PER_LINK,
            max_channel_len: DEFAULT_MAX_CHANNEL_LEN,
            history_max_channels: DEFAULT_HISTORY_MAX_CHANNELS,
            history_max_bytes: DEFAULT_HISTORY_MAX_BYTES,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            php: PhpConfig::default(),
        }
    }
}

impl BrokerConfig {
    /// Rejects settings that cannot work, naming the setting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_frame_size < 64 || self.max_frame_size > u32::MAX as usize {
            return Err(ConfigError::new(
                "--link-max-frame-size",
                format!("must be between 64 and {} bytes", u32::MAX),
            ));
        }
        if self.link_queue_frames == 0 {
            return Err(ConfigError::new(
                "--link-queue-frames",
                "must be at least 1",
            ));
        }
        if self.link_queue_bytes == 0 {
            return Err(ConfigError::new("--link-queue-bytes", "must be at least 1"));
        }
        if self.max_channel_len == 0 || self.max_channel_len + 16 > self.max_frame_size {
            return Err(ConfigError::new(
                "--broker-max-channel-len",
                "must be at least 1 and fit in a frame",
            ));
        }
        for (setting, value) in [
            ("--php-queue-max-items", self.php.queue_max_items),
            ("--php-max-depth", self.php.max_depth),
            ("--php-max-elements", self.php.max_elements),
        ] {
            if value == 0 {
                return Err(ConfigError::new(setting, "must be at least 1"));
            }
        }
        for (setting, timeout) in [
            ("--link-idle-timeout", self.link_idle_timeout),
            ("--broker-handshake-timeout", self.handshake_timeout),
            ("--php-idle-timeout", self.php.idle_timeout),
        ] {
            if timeout.is_zero() {
                return Err(ConfigError::new(setting, "must be greater than zero"));
            }
        }
        for (setting, timeout) in [
            ("--link-idle-timeout", self.link_idle_timeout),
            ("--broker-handshake-timeout", self.handshake_timeout),
            ("--shutdown-timeout", self.shutdown_timeout),
            ("--php-idle-timeout", self.php.idle_timeout),
        ] {
            if timeout > MAX_DURATION {
                return Err(ConfigError::new(setting, "must be at most one day"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        config: BrokerConfig,
    }

    #[test]
    fn clap_defaults_match_default() {
        let parsed = Cli::parse_from(["broker"]).config;
        let default = BrokerConfig::default();
        assert_eq!(format!("{parsed:?}"), format!("{default:?}"));
        assert!(default.validate().is_ok());
    }

    #[test]
    fn each_impossible_value_is_refused_naming_its_setting() {
        let day = MAX_DURATION;
        let cases: [(&str, BrokerConfig, &str); 9] = [
            (
                "--link-max-frame-size",
                BrokerConfig {
                    max_frame_size: 63,
                    ..BrokerConfig::default()
                },
                "link-max-frame-size must be between 64 and 4294967295 bytes",
            ),
            (
                "--link-queue-frames",
                BrokerConfig {
                    link_queue_frames: 0,
                    ..BrokerConfig::default()
                },
                "link-queue-frames must be at least 1",
            ),
            (
                "--link-queue-bytes",
                BrokerConfig {
                    link_queue_bytes: 0,
                    ..BrokerConfig::default()
                },
                "link-queue-bytes must be at least 1",
            ),
            (
                "--broker-max-channel-len",
                BrokerConfig {
                    max_channel_len: 0,
                    ..BrokerConfig::default()
                },
                "broker-max-channel-len must be at least 1 and fit in a frame",
            ),
            (
                "--broker-max-channel-len",
                BrokerConfig {
                    max_frame_size: 64,
                    max_channel_len: 49,
                    ..BrokerConfig::default()
                },
                "broker-max-channel-len must be at least 1 and fit in a frame",
            ),
            (
                "--link-idle-timeout",
                BrokerConfig {
                    link_idle_timeout: Duration::ZERO,
                    ..BrokerConfig::default()
                },
                "link-idle-timeout must be greater than zero",
            ),
            (
                "--broker-handshake-timeout",
                BrokerConfig {
                    handshake_timeout: Duration::ZERO,
                    ..BrokerConfig::default()
                },
                "broker-handshake-timeout must be greater than zero",
            ),
            (
                "--link-idle-timeout",
                BrokerConfig {
                    link_idle_timeout: day + Duration::from_secs(1),
                    ..BrokerConfig::default()
                },
                "link-idle-timeout must be at most one day",
            ),
            (
                "--shutdown-timeout",
                BrokerConfig {
                    shutdown_timeout: day + Duration::from_secs(1),
                    ..BrokerConfig::default()
                },
                "shutdown-timeout must be at most one day",
            ),
        ];
        for (setting, config, message) in cases {
            let err = config.validate().expect_err(message);
            assert_eq!(err.setting, setting);
            assert_eq!(err.to_string(), message);
        }
        let edge = BrokerConfig {
            max_frame_size: 64,
            max_channel_len: 48,
            shutdown_timeout: day,
            ..BrokerConfig::default()
        };
        assert_eq!(edge.validate(), Ok(()));
    }
}
