//! Loss and duplicate accounting from sequence numbers. Pure.
//!
//! Each receiver keeps one [`SeqTracker`] per sender of its group. The server delivers one
//! sender's messages in order, so a tracker only remembers the next sequence number it expects
//! and the few gaps still open; a gap that is never filled is a loss. When the run ends, trackers
//! are summed per sender into [`SenderTotals`], which sum again across processes, and the losses
//! follow from how many messages each sender sent ([`Tally::new`]).

use std::ops::Range;

use serde::{Deserialize, Serialize};

/// Open gaps remembered per tracker. Past this, a new gap is counted as lost at once, and a late
/// arrival into it counts as a duplicate.
const MAX_OPEN_GAPS: usize = 16;

/// What one received sequence number was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// The one expected next.
    InOrder,
    /// Later than expected: the numbers in between are missing (for now).
    Skipped(u64),
    /// Filled an open gap: arrived out of order.
    Reordered,
    /// Already received.
    Duplicate,
}

/// The sequence numbers one receiver has seen from one sender.
#[derive(Debug, Clone, Default)]
pub struct SeqTracker {
    next: u64,
    gaps: Vec<Range<u64>>,
    /// Missing numbers of gaps that did not fit in `gaps`.
    untracked: u64,
    duplicates: u64,
    reordered: u64,
}

impl SeqTracker {
    pub fn observe(&mut self, seq: u64) -> Seen {
        if seq == self.next {
            self.next += 1;
            return Seen::InOrder;
        }
        if seq > self.next {
            let skipped = seq - self.next;
            if self.gaps.len() < MAX_OPEN_GAPS {
                self.gaps.push(self.next..seq);
            } else {
                self.untracked += skipped;
            }
            self.next = seq + 1;
            return Seen::Skipped(skipped);
        }
        match self.gaps.iter().position(|gap| gap.contains(&seq)) {
            Some(i) => {
                let gap = self.gaps.swap_remove(i);
                for part in [gap.start..seq, seq + 1..gap.end] {
                    if !part.is_empty() {
                        self.gaps.push(part);
                    }
                }
                self.reordered += 1;
                Seen::Reordered
            }
            None => {
                self.duplicates += 1;
                Seen::Duplicate
            }
        }
    }

    /// One past the highest sequence number seen.
    pub fn next(&self) -> u64 {
        self.next
    }

    /// Numbers below [`next`](Self::next) that have not arrived.
    pub fn missing(&self) -> u64 {
        self.untracked + self.gaps.iter().map(|gap| gap.end - gap.start).sum::<u64>()
    }
}

/// One sender's trackers summed over receivers (in one process, then in all).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SenderTotals {
    /// Receivers that joined the sender's group (each expects every message it sent).
    pub receivers: u64,
    /// Sum of the receivers' `next`.
    pub reached: u64,
    /// Sum of the receivers' `missing`.
    pub missing: u64,
    pub duplicates: u64,
    pub reordered: u64,
}

impl SenderTotals {
    pub fn add_tracker(&mut self, tracker: &SeqTracker) {
        self.receivers += 1;
        self.reached += tracker.next;
        self.missing += tracker.missing();
        self.duplicates += tracker.duplicates;
        self.reordered += tracker.reordered;
    }

    pub fn add(&mut self, other: &SenderTotals) {
        self.receivers += other.receivers;
        self.reached += other.reached;
        self.missing += other.missing;
        self.duplicates += other.duplicates;
        self.reordered += other.reordered;
    }
}

/// Adds `from` into `into` element by element, growing `into` if needed.
pub fn add_all<T: Default + Clone>(into: &mut Vec<T>, from: &[T], add: impl Fn(&mut T, &T)) {
    if into.len() < from.len() {
        into.resize(from.len(), T::default());
    }
    for (acc, item) in into.iter_mut().zip(from) {
        add(acc, item);
    }
}

/// The delivery outcome of a whole run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Tally {
    /// Each message times the members of its group that joined.
    pub expected: u64,
    /// Expected deliveries that never arrived (gaps never filled, and the tail a receiver never
    /// reached).
    pub lost: u64,
    /// Messages received again.
    pub duplicated: u64,
    /// Messages that arrived after a later one from the same sender.
    pub reordered: u64,
}

impl Tally {
    /// `sent[s]` is how many messages sender `s` sent; `totals[s]` its receivers' trackers.
    pub fn new(sent: &[u64], totals: &[SenderTotals]) -> Tally {
        let mut tally = Tally::default();
        for (s, &count) in sent.iter().enumerate() {
            let t = totals.get(s).copied().unwrap_or_default();
            let expected = count * t.receivers;
            // A receiver never gets past the last message sent, so `reached <= expected`.
            tally.expected += expected;
            tally.lost += expected.saturating_sub(t.reached) + t.missing;
            tally.duplicated += t.duplicates;
            tally.reordered += t.reordered;
        }
        tally
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn track(seqs: &[u64]) -> (SeqTracker, Vec<Seen>) {
        let mut tracker = SeqTracker::default();
        let seen = seqs.iter().map(|&s| tracker.observe(s)).collect();
        (tracker, seen)
    }

    #[test]
    fn in_order() {
        let (t, seen) = track(&[0, 1, 2, 3]);
        assert!(seen.iter().all(|s| *s == Seen::InOrder));
        assert_eq!(
            (t.next(), t.missing(), t.duplicates, t.reordered),
            (4, 0, 0, 0)
        );
    }

    #[test]
    fn gaps_that_never_fill_are_missing() {
        let (t, seen) = track(&[0, 3, 4, 9]);
        assert_eq!(
            seen,
            [
                Seen::InOrder,
                Seen::Skipped(2),
                Seen::InOrder,
                Seen::Skipped(4)
            ]
        );
        assert_eq!((t.next(), t.missing()), (10, 6));
    }

    #[test]
    fn late_arrivals_fill_gaps_and_repeats_are_duplicates() {
        let (t, seen) = track(&[0, 5, 2, 2, 1, 4, 3, 5, 0]);
        assert_eq!(seen[2], Seen::Reordered);
        assert_eq!(seen[3], Seen::Duplicate);
        assert_eq!((t.next(), t.missing()), (6, 0));
        assert_eq!((t.duplicates, t.reordered), (3, 4));
    }

    #[test]
    fn too_many_gaps_are_lost_for_good() {
        let seqs: Vec<u64> = (0..=MAX_OPEN_GAPS as u64 + 1).map(|i| i * 2 + 1).collect();
        let (mut t, _) = track(&seqs);
        assert_eq!(t.gaps.len(), MAX_OPEN_GAPS);
        assert_eq!(t.missing(), MAX_OPEN_GAPS as u64 + 2);
        // 0 sits in a remembered gap; the last gap was not remembered.
        assert_eq!(t.observe(0), Seen::Reordered);
        assert_eq!(t.observe(seqs[seqs.len() - 1] - 1), Seen::Duplicate);
        assert_eq!(t.missing(), MAX_OPEN_GAPS as u64 + 1);
    }

    #[test]
    fn tally_counts_tails_and_gaps() {
        // Sender 0 sent 10 to 3 receivers: one got all, one stopped at 7, one missed 2 in the
        // middle and got one twice. Sender 1 sent 5 to nobody (its group had no one else and it
        // failed). Sender 2 sent nothing.
        let mut s0 = SenderTotals::default();
        s0.add_tracker(&track(&(0..10).collect::<Vec<_>>()).0);
        s0.add_tracker(&track(&(0..7).collect::<Vec<_>>()).0);
        s0.add_tracker(&track(&[0, 1, 2, 5, 6, 7, 8, 9, 9]).0);
        let tally = Tally::new(&[10, 5, 0], &[s0]);
        assert_eq!(
            tally,
            Tally {
                expected: 30,
                lost: 3 + 2,
                duplicated: 1,
                reordered: 0
            }
        );
    }

    #[test]
    fn totals_merge_across_processes() {
        let a = [SenderTotals {
            receivers: 2,
            reached: 20,
            missing: 1,
            duplicates: 0,
            reordered: 1,
        }];
        let b = [a[0], SenderTotals::default()];
        let mut all = Vec::new();
        add_all(&mut all, &a, SenderTotals::add);
        add_all(&mut all, &b, SenderTotals::add);
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].receivers, 4);
        assert_eq!(all[0].reached, 40);
        assert_eq!(Tally::new(&[10], &all).lost, 2);

        let mut sent = vec![1u64];
        add_all(&mut sent, &[2, 3], |a, b| *a += b);
        assert_eq!(sent, [3, 3]);
    }
}
