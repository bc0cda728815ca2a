//! Broker settings. Each is a command-line flag and an environment variable of the `broker`
//! binary; docs/configuration.md lists them.

use std::time::Duration;

use protocol::DEFAULT_MAX_FRAME_SIZE;

pub const DEFAULT_LINK_QUEUE_FRAMES: usize = 16_384;
pub const DEFAULT_LINK_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_MAX_CHANNELS_PER_LINK: usize = 1_000_000;
pub const DEFAULT_MAX_CHANNEL_LEN: usize = 1024;
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, clap::Args)]
pub struct BrokerConfig {
    /// Largest link frame accepted or sent, in bytes. A larger frame closes the link.
    #[arg(long, env = "BROKER_MAX_FRAME_SIZE", default_value_t = DEFAULT_MAX_FRAME_SIZE)]
    pub max_frame_size: usize,

    /// Frames queued for one link before it counts as a slow consumer and is disconnected.
    #[arg(long, env = "BROKER_LINK_QUEUE_FRAMES", default_value_t = DEFAULT_LINK_QUEUE_FRAMES)]
    pub link_queue_frames: usize,

    /// A link that sends nothing (not even a ping) for this long is closed.
    #[arg(long, env = "BROKER_LINK_IDLE_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub link_idle_timeout: Duration,

    /// Time a new link has to send its hello frame.
    #[arg(long, env = "BROKER_HANDSHAKE_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub handshake_timeout: Duration,

    /// Channels one link may be subscribed to at once; more closes the link.
    #[arg(long, env = "BROKER_MAX_CHANNELS_PER_LINK", default_value_t = DEFAULT_MAX_CHANNELS_PER_LINK)]
    pub max_channels_per_link: usize,

    /// Longest channel name, in bytes; a longer one closes the link.
    #[arg(long, env = "BROKER_MAX_CHANNEL_LEN", default_value_t = DEFAULT_MAX_CHANNEL_LEN)]
    pub max_channel_len: usize,

    /// How long shutdown waits for links to finish.
    #[arg(long, env = "BROKER_SHUTDOWN_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub shutdown_timeout: Duration,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            max_frame_size: DEFAULT_MAX_FRAME_SIZE,
            link_queue_frames: DEFAULT_LINK_QUEUE_FRAMES,
            link_idle_timeout: DEFAULT_LINK_IDLE_TIMEOUT,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            max_channels_per_link: DEFAULT_MAX_CHANNELS_PER_LINK,
            max_channel_len: DEFAULT_MAX_CHANNEL_LEN,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
        }
    }
}

impl BrokerConfig {
    /// Rejects settings that cannot work, with a message naming the setting.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_frame_size < 64 || self.max_frame_size > u32::MAX as usize {
            return Err(format!(
                "max-frame-size must be between 64 and {} bytes",
                u32::MAX
            ));
        }
        if self.link_queue_frames == 0 {
            return Err("link-queue-frames must be at least 1".into());
        }
        if self.max_channel_len == 0 || self.max_channel_len + 16 > self.max_frame_size {
            return Err("max-channel-len must be at least 1 and fit in a frame".into());
        }
        if self.link_idle_timeout.is_zero() || self.handshake_timeout.is_zero() {
            return Err("timeouts must be greater than zero".into());
        }
        if [
            self.link_idle_timeout,
            self.handshake_timeout,
            self.shutdown_timeout,
        ]
        .iter()
        .any(|d| *d > server_kit::settings::MAX_DURATION)
        {
            return Err("timeouts must be at most one day".into());
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
}
