//! Limits on what clients may take: connections per process and per client address (checked by
//! the acceptor before a socket reaches a worker), and frames per second per connection (checked
//! by the connection on each frame it reads).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::handshake::server::{
    Callback, ErrorResponse, Request, Response,
};
use tokio_tungstenite::tungstenite::http::{header, HeaderValue, StatusCode};

use crate::config::GatewayConfig;

/// Why the acceptor refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// `--max-connections` reached.
    ProcessFull,
    /// `--max-connections-per-ip` reached for the client's address.
    AddressFull,
}

impl Refusal {
    /// The body of the HTTP 503 answer.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            Refusal::ProcessFull => "too many connections: try again later",
            Refusal::AddressFull => "too many connections from your address: try again later",
        }
    }
}

/// As a handshake callback, a refusal answers the request `503 Service Unavailable`.
impl Callback for Refusal {
    fn on_request(self, _: &Request, _: Response) -> Result<Response, ErrorResponse> {
        let mut response = ErrorResponse::new(Some(format!("{}\n", self.reason())));
        *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        Err(response)
    }
}

/// Open connections, in total and per client address. Every socket the acceptor admits holds a
/// [`Permit`] until its connection task ends, whatever way it ends.
#[derive(Debug)]
pub(crate) struct ConnectionLimits {
    max: usize,
    /// 0: no per-address limit (and no map entries).
    max_per_ip: usize,
    open: AtomicUsize,
    /// Address -> open connections from it. Entries exist only while the count is positive,
    /// so the map never holds more entries than there are open connections.
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    refused_process: AtomicU64,
    refused_per_ip: AtomicU64,
}

impl ConnectionLimits {
    pub(crate) fn new(config: &GatewayConfig) -> ConnectionLimits {
        ConnectionLimits {
            max: config.max_connections,
            max_per_ip: config.max_connections_per_ip,
            open: AtomicUsize::new(0),
            per_ip: Mutex::new(HashMap::new()),
            refused_process: AtomicU64::new(0),
            refused_per_ip: AtomicU64::new(0),
        }
    }

    /// Counts a new connection from `ip`, or refuses it (and counts the refusal).
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Permit, Refusal> {
        let admitted = self
            .open
            .fetch_update(Relaxed, Relaxed, |n| (n < self.max).then_some(n + 1));
        if admitted.is_err() {
            self.refused_process.fetch_add(1, Relaxed);
            return Err(Refusal::ProcessFull);
        }
        let mut permit = Permit {
            limits: self.clone(),
            address: None,
        };
        if self.max_per_ip > 0 {
            let address = address_key(ip);
            let mut per_ip = self.per_ip.lock();
            let count = per_ip.entry(address).or_insert(0);
            if *count >= self.max_per_ip {
                drop(per_ip);
                self.refused_per_ip.fetch_add(1, Relaxed);
                return Err(Refusal::AddressFull); // dropping `permit` gives the slot back
            }
            *count += 1;
            permit.address = Some(address);
        }
        Ok(permit)
    }

    pub(crate) fn open(&self) -> usize {
        self.open.load(Relaxed)
    }

    /// Distinct client addresses with open connections (0 without a per-address limit).
    pub(crate) fn addresses(&self) -> usize {
        self.per_ip.lock().len()
    }

    /// Connections refused for `--max-connections` and for `--max-connections-per-ip`.
    pub(crate) fn refused(&self) -> (u64, u64) {
        (
            self.refused_process.load(Relaxed),
            self.refused_per_ip.load(Relaxed),
        )
    }

    fn release(&self, address: Option<IpAddr>) {
        if let Some(address) = address {
            let mut per_ip = self.per_ip.lock();
            if let Some(count) = per_ip.get_mut(&address) {
                *count -= 1;
                if *count == 0 {
                    per_ip.remove(&address);
                }
            }
        }
        self.open.fetch_sub(1, Relaxed);
    }
}

/// One admitted connection's place in the counts; given back on drop.
#[derive(Debug)]
pub(crate) struct Permit {
    limits: Arc<ConnectionLimits>,
    address: Option<IpAddr>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.limits.release(self.address);
    }
}

/// The address a connection is counted under: IPv4 addresses (also when mapped into IPv6) as
/// they are, IPv6 addresses by their /64 network, since one host usually holds a whole /64.
fn address_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let network = u128::from(v6) & !u128::from(u64::MAX);
            IpAddr::V6(Ipv6Addr::from(network))
        }
        v4 => v4,
    }
}

/// Seconds after the last rejected frame at which a connection's strikes are forgotten.
pub(crate) const STRIKE_MEMORY: Duration = Duration::from_secs(1);

/// The per-connection frame rate limit, from the settings (`None` when disabled).
#[derive(Debug, Clone, Copy)]
pub(crate) struct RateLimit {
    /// Time one frame "costs": 1 s / max-messages-per-second.
    interval: Duration,
    /// How far ahead of now the bucket may be spent: interval × burst.
    window: Duration,
    max_strikes: u32,
}

impl RateLimit {
    pub(crate) fn from_config(config: &GatewayConfig) -> Option<RateLimit> {
        if config.max_messages_per_second == 0 {
            return None;
        }
        let interval = Duration::from_secs(1) / config.max_messages_per_second;
        Some(RateLimit {
            interval,
            window: interval.saturating_mul(config.message_burst),
            max_strikes: config.rate_limit_strikes,
        })
    }
}

/// What to do with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Allow,
    /// Over the rate: answer `rate_limited`, do not execute.
    Reject,
    /// Over the rate once too often: close the connection (1008).
    Close,
}

/// A token bucket kept as a single instant (the generic cell rate algorithm): `spent_until` is
/// when the bucket would be full again. A frame is allowed if, after paying its interval, the
/// bucket is not more than `window` ahead of now. No timer, no allocation: a few operations on
/// the instant the read path already took. The limit itself is the worker's (one copy, not one
/// per connection).
#[derive(Debug)]
pub(crate) struct RateLimiter {
    spent_until: Instant,
    strikes: u32,
    last_reject: Instant,
}

impl RateLimiter {
    /// A full bucket at `now`.
    pub(crate) fn new(now: Instant) -> RateLimiter {
        RateLimiter {
            spent_until: now,
            strikes: 0,
            last_reject: now,
        }
    }

    /// Judges a frame that arrived at `now`, under `limit` (`None`: no limit).
    pub(crate) fn check(&mut self, limit: Option<&RateLimit>, now: Instant) -> Verdict {
        let Some(limit) = limit else {
            return Verdict::Allow;
        };
        let from = self.spent_until.max(now);
        let spent_until = from.checked_add(limit.interval).unwrap_or(from);
        if spent_until.saturating_duration_since(now) <= limit.window {
            self.spent_until = spent_until;
            return Verdict::Allow;
        }
        if now.saturating_duration_since(self.last_reject) > STRIKE_MEMORY {
            self.strikes = 0;
        }
        self.last_reject = now;
        self.strikes = self.strikes.saturating_add(1);
        if self.strikes > limit.max_strikes {
            Verdict::Close
        } else {
            Verdict::Reject
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn limits(max: usize, max_per_ip: usize) -> Arc<ConnectionLimits> {
        Arc::new(ConnectionLimits::new(&GatewayConfig {
            max_connections: max,
            max_connections_per_ip: max_per_ip,
            ..GatewayConfig::default()
        }))
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
    }

    #[test]
    fn process_limit_counts_and_releases() {
        let limits = limits(2, 0);
        let a = limits.admit(ip(1)).expect("first");
        let _b = limits.admit(ip(2)).expect("second");
        assert_eq!(limits.admit(ip(3)).unwrap_err(), Refusal::ProcessFull);
        assert_eq!(limits.refused(), (1, 0));
        drop(a);
        assert_eq!(limits.open(), 1);
        assert!(limits.admit(ip(3)).is_ok());
        assert_eq!(limits.addresses(), 0, "no map without a per-address limit");
    }

    #[test]
    fn per_address_limit_is_per_address_and_map_empties() {
        let limits = limits(100, 2);
        let a1 = limits.admit(ip(1)).expect("a1");
        let a2 = limits.admit(ip(1)).expect("a2");
        assert_eq!(limits.admit(ip(1)).unwrap_err(), Refusal::AddressFull);
        let b1 = limits.admit(ip(2)).expect("another address");
        assert_eq!(limits.refused(), (0, 1));
        assert_eq!(limits.open(), 3, "the refused one gave its slot back");
        assert_eq!(limits.addresses(), 2);
        drop((a1, a2, b1));
        assert_eq!(limits.open(), 0);
        assert_eq!(limits.addresses(), 0);
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        let limits = limits(100, 1);
        let host1: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let host2: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        let _p = limits.admit(host1).expect("first in the /64");
        assert_eq!(limits.admit(host2).unwrap_err(), Refusal::AddressFull);
        assert!(limits.admit(other).is_ok());
        let _v4 = limits.admit(ip(7)).expect("ipv4");
        let mapped: IpAddr = "::ffff:10.0.0.7".parse().unwrap();
        assert_eq!(limits.admit(mapped).unwrap_err(), Refusal::AddressFull);
    }

    /// A limiter and the limit it is checked against.
    struct Limited(Option<RateLimit>, RateLimiter);

    impl Limited {
        fn check(&mut self, now: Instant) -> Verdict {
            self.1.check(self.0.as_ref(), now)
        }
    }

    fn limiter(rate: u32, burst: u32, strikes: u32, now: Instant) -> Limited {
        let config = GatewayConfig {
            max_messages_per_second: rate,
            message_burst: burst,
            rate_limit_strikes: strikes,
            ..GatewayConfig::default()
        };
        Limited(RateLimit::from_config(&config), RateLimiter::new(now))
    }

    #[test]
    fn burst_then_rate() {
        let start = Instant::now();
        let mut limiter = limiter(10, 5, 1000, start);
        for i in 0..5 {
            assert_eq!(limiter.check(start), Verdict::Allow, "burst frame {i}");
        }
        assert_eq!(limiter.check(start), Verdict::Reject);
        // One frame's worth (100 ms) later, exactly one more.
        let later = start + Duration::from_millis(100);
        assert_eq!(limiter.check(later), Verdict::Allow);
        assert_eq!(limiter.check(later), Verdict::Reject);
        // A steady 10 per second is fine forever.
        let mut now = later;
        for _ in 0..100 {
            now += Duration::from_millis(100);
            assert_eq!(limiter.check(now), Verdict::Allow);
        }
        // After a quiet second the whole burst is back (and not more).
        now += Duration::from_secs(1);
        for _ in 0..5 {
            assert_eq!(limiter.check(now), Verdict::Allow);
        }
        assert_eq!(limiter.check(now), Verdict::Reject);
    }

    #[test]
    fn sustained_abuse_closes_and_pauses_forgive() {
        let start = Instant::now();
        let mut limiter = limiter(10, 1, 3, start);
        assert_eq!(limiter.check(start), Verdict::Allow);
        for _ in 0..3 {
            assert_eq!(limiter.check(start), Verdict::Reject);
        }
        // A second without a rejection forgets the strikes.
        let later = start + Duration::from_millis(1500);
        assert_eq!(limiter.check(later), Verdict::Allow);
        for _ in 0..3 {
            assert_eq!(limiter.check(later), Verdict::Reject);
        }
        assert_eq!(limiter.check(later), Verdict::Close);
    }

    #[test]
    fn allowed_frames_do_not_forgive_strikes() {
        // Twice the rate, for long: every other frame is rejected and the strikes add up.
        let start = Instant::now();
        let mut limiter = limiter(10, 1, 5, start);
        let mut now = start;
        let mut verdicts = Vec::new();
        for _ in 0..40 {
            verdicts.push(limiter.check(now));
            now += Duration::from_millis(50);
        }
        assert!(verdicts.contains(&Verdict::Allow));
        assert!(verdicts.contains(&Verdict::Close), "{verdicts:?}");
    }

    #[test]
    fn zero_rate_is_unlimited() {
        let now = Instant::now();
        let mut limiter = limiter(0, 1, 0, now);
        for _ in 0..10_000 {
            assert_eq!(limiter.check(now), Verdict::Allow);
        }
    }
}
