//! A bound on the frames a client sends that never become messages: control frames (ping, pong,
//! close) and continuation frames. The WebSocket library answers and reassembles those itself,
//! so the connection never sees them, and the message rate limit cannot count them: a client
//! sending empty pings or continuation frames as fast as it can would otherwise keep a worker
//! busy at no cost to itself.
//!
//! [`FrameMeter`] sits between the socket and the WebSocket library and reads the frame headers
//! as the bytes go by (a small state machine, no copy). Past `--max-control-frames-per-second`
//! on average (with a burst of one second's worth), the read fails with [`FrameFlood`], which
//! the connection answers with close code 1008.
//!
//! Reading the headers, it also knows when every byte read so far belongs to a whole frame and
//! no fragmented message is open ([`FrameMeter::at_rest`]): once the library then finds nothing
//! more to read, it holds nothing, and the connection may drop it until the client sends again
//! (see `Wire` in [`connection`](super::connection)).

use std::io;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// The client sent more control and continuation frames than allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("more than {0} control or continuation frames per second")]
pub(crate) struct FrameFlood(pub(crate) u32);

/// The allowance: `per_second` frames on average, at most `per_second` in a burst (a window
/// of one second). Eight bytes, as every connection's meter holds a copy.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FrameBudget {
    per_second: NonZeroU32,
    /// One second / `per_second`, in nanoseconds.
    interval_nanos: u32,
}

/// How far ahead of now the budget may be spent.
const WINDOW: Duration = Duration::from_secs(1);

impl FrameBudget {
    /// `None` (no limit) for 0.
    pub(crate) fn new(per_second: u32) -> Option<FrameBudget> {
        let per_second = NonZeroU32::new(per_second)?;
        Some(FrameBudget {
            per_second,
            interval_nanos: 1_000_000_000 / per_second.get(),
        })
    }

    fn interval(self) -> Duration {
        Duration::from_nanos(u64::from(self.interval_nanos))
    }
}

/// Where the parser is in the byte stream.
#[derive(Debug, Clone, Copy)]
enum Parse {
    /// Reading a frame header: `have` of its bytes seen so far (`first` and `second` kept).
    Header {
        have: u8,
        first: u8,
        second: u8,
        /// Extended length bytes seen, big-endian.
        ext: u64,
    },
    /// Skipping a payload.
    Payload(u64),
}

const NEW_HEADER: Parse = Parse::Header {
    have: 0,
    first: 0,
    second: 0,
    ext: 0,
};

/// Counts frames as their headers pass; see the module docs.
#[derive(Debug)]
pub(crate) struct FrameMeter<S> {
    inner: S,
    parse: Parse,
    budget: Option<FrameBudget>,
    /// The theoretical arrival time of the next counted frame (GCRA).
    next: Instant,
    /// Counting starts once the WebSocket handshake is done.
    active: bool,
    /// The handshake is done: the bytes are frames. (The library refuses a request followed by
    /// anything before its answer, so no frame is read before.)
    framing: bool,
    /// A text or binary message's first frame came without FIN, and its last has not come yet.
    fragmented: bool,
    /// The last write or flush through it did not complete (the socket was full).
    write_blocked: bool,
}

impl<S> FrameMeter<S> {
    pub(crate) fn new(inner: S, budget: Option<FrameBudget>) -> FrameMeter<S> {
        FrameMeter {
            inner,
            parse: NEW_HEADER,
            budget,
            next: Instant::now(),
            active: false,
            framing: false,
            fragmented: false,
            write_blocked: false,
        }
    }

    /// The stream it reads from.
    pub(crate) fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The handshake is done: frames from here.
    pub(crate) fn start(&mut self) {
        self.framing = true;
        self.active = self.budget.is_some();
        self.next = Instant::now();
    }

    /// The last write or flush through it (the library's pong, say) completed.
    pub(crate) fn writes_done(&self) -> bool {
        !self.write_blocked
    }

    /// Every byte read so far belongs to a whole frame, and no fragmented message is open.
    pub(crate) fn at_rest(&self) -> bool {
        self.framing && matches!(self.parse, Parse::Header { have: 0, .. }) && !self.fragmented
    }

    /// Parses `bytes`; returns how many counted frames (control or continuation) began in them.
    fn scan(&mut self, mut bytes: &[u8]) -> u32 {
        let mut counted = 0;
        while !bytes.is_empty() {
            match &mut self.parse {
                Parse::Payload(remaining) => {
                    let skip = (*remaining).min(bytes.len() as u64);
                    bytes = &bytes[skip as usize..];
                    *remaining -= skip;
                    if *remaining == 0 {
                        self.parse = NEW_HEADER;
                    }
                }
                Parse::Header {
                    have,
                    first,
                    second,
                    ext,
                } => {
                    let byte = bytes[0];
                    bytes = &bytes[1..];
                    match *have {
                        0 => *first = byte,
                        1 => *second = byte,
                        _ => {
                            if (*have as usize) < 2 + ext_len(*second) {
                                *ext = (*ext << 8) | u64::from(byte);
                            }
                        }
                    }
                    *have += 1;
                    if *have >= 2 && *have as usize == header_len(*second) {
                        let opcode = *first & 0x0f;
                        let fin = *first & 0x80 != 0;
                        // Continuation (0) and control frames (8 and up).
                        if opcode == 0 || opcode >= 8 {
                            counted += 1;
                        }
                        match opcode {
                            1 | 2 => self.fragmented = !fin,
                            0 if fin => self.fragmented = false,
                            _ => {}
                        }
                        let payload = match *second & 0x7f {
                            126 | 127 => *ext,
                            short => u64::from(short),
                        };
                        self.parse = if payload == 0 {
                            NEW_HEADER
                        } else {
                            Parse::Payload(payload)
                        };
                    }
                }
            }
        }
        counted
    }

    /// Charges `frames` to the budget; false once over it.
    fn charge(&mut self, frames: u32) -> bool {
        let Some(budget) = self.budget else {
            return true;
        };
        let now = Instant::now();
        self.next = self.next.max(now) + budget.interval().saturating_mul(frames);
        self.next.saturating_duration_since(now) <= WINDOW
    }
}

/// Bytes of extended payload length after the first two header bytes.
fn ext_len(second: u8) -> usize {
    match second & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    }
}

/// The whole header's length, known once its second byte is.
fn header_len(second: u8) -> usize {
    let mask = if second & 0x80 != 0 { 4 } else { 0 };
    2 + ext_len(second) + mask
}

impl<S: AsyncRead + Unpin> AsyncRead for FrameMeter<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let (true, Poll::Ready(Ok(()))) = (this.framing, &polled) {
            let frames = this.scan(&buf.filled()[before..]);
            if this.active && frames > 0 && !this.charge(frames) {
                let per_second = this.budget.map_or(0, |b| b.per_second.get());
                return Poll::Ready(Err(io::Error::other(FrameFlood(per_second))));
            }
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FrameMeter<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.write_blocked = polled.is_pending();
        polled
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_flush(cx);
        this.write_blocked = polled.is_pending();
        polled
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.write_blocked = polled.is_pending();
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meter() -> FrameMeter<()> {
        let mut meter = FrameMeter::new((), FrameBudget::new(10));
        meter.start();
        meter
    }

    /// A masked client frame: opcode, payload.
    fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![(u8::from(fin) << 7) | opcode];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 0xffff => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&[1, 2, 3, 4]);
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn counts_control_and_continuation_frames_across_any_split() {
        let mut stream = Vec::new();
        stream.extend(frame(true, 1, b"a text message is not counted"));
        stream.extend(frame(true, 9, b""));
        stream.extend(frame(false, 1, &[b'x'; 300]));
        stream.extend(frame(false, 0, b""));
        stream.extend(frame(true, 0, &[b'y'; 70_000]));
        stream.extend(frame(true, 10, b"pong"));
        stream.extend(frame(true, 2, &[0; 5]));
        for split in [1, 2, 3, 7, 64, 1000, stream.len()] {
            let mut meter = meter();
            let counted: u32 = stream.chunks(split).map(|chunk| meter.scan(chunk)).sum();
            assert_eq!(counted, 4, "split {split}");
            assert!(matches!(meter.parse, Parse::Header { have: 0, .. }));
        }
    }

    #[test]
    fn at_rest_only_between_whole_frames_and_outside_a_fragmented_message() {
        let mut meter = meter();
        assert!(meter.at_rest());
        let text = frame(true, 1, b"hello");
        meter.scan(&text[..3]);
        assert!(!meter.at_rest(), "within a header");
        meter.scan(&text[3..8]);
        assert!(!meter.at_rest(), "within a payload");
        meter.scan(&text[8..]);
        assert!(meter.at_rest());
        meter.scan(&frame(false, 1, b"first"));
        assert!(!meter.at_rest(), "a fragmented message is open");
        meter.scan(&frame(true, 9, b"ping"));
        assert!(!meter.at_rest(), "a control frame does not close it");
        meter.scan(&frame(false, 0, b"more"));
        assert!(!meter.at_rest());
        meter.scan(&frame(true, 0, b"last"));
        assert!(meter.at_rest());
    }

    #[test]
    fn the_budget_allows_a_burst_then_the_rate() {
        let mut meter = meter();
        assert!(meter.charge(10), "a second's worth at once");
        assert!(!meter.charge(2), "then no more at once");
    }

    #[test]
    fn no_budget_counts_nothing() {
        assert!(FrameBudget::new(0).is_none());
        let mut meter: FrameMeter<()> = FrameMeter::new((), None);
        meter.start();
        assert!(!meter.active);
        assert!(meter.charge(1_000_000));
    }
}
