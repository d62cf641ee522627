//! One subscriber's outbound queue of shared frames, bounded in bytes and
//! count, drained by the connection writer in vectored writes.

use std::collections::VecDeque;

use bytes::Bytes;

use crate::protocol::{client, frame};

/// What happens when an event does not fit in a subscriber's queue.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    serde::Deserialize,
    serde::Serialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum SlowPolicy {
    /// Close the connection with 1013 "slow consumer" (the default: a UI
    /// that misses events shows a wrong job log, so reconnecting and
    /// reloading is the honest outcome).
    #[default]
    Disconnect,
    /// Drop the oldest queued events to make room and tell the client how
    /// many it lost with a `{"dropped": N}` message.
    DropOldest,
}

/// Queue bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLimits {
    pub max_bytes: usize,
    pub max_frames: usize,
}

/// Outcome of offering an event to a queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    /// Queued; `was_empty` tells the caller the writer needs a wake-up.
    Queued { was_empty: bool },
    /// Queued after dropping `dropped` older events (or the event itself was
    /// dropped when it alone exceeds the bound; then `dropped` counts it).
    DroppedOldest {
        dropped: u64,
        queued: bool,
        was_empty: bool,
    },
    /// Did not fit under the `disconnect` policy; nothing was queued.
    Overflow,
    /// The queue is closing; the event was not queued.
    Closed,
}

struct Entry {
    bytes: Bytes,
    /// Events may be dropped by `drop-oldest`; replies and control frames
    /// never are.
    is_event: bool,
    /// When the router took the event (`Event::at`), for the delivery
    /// latency; 0 for replies.
    at: u32,
}

/// A FIFO of frames. The writer moves a batch out (`take_batch`), writes
/// it, and puts back what the socket did not take (`settle`); frames in
/// flight are therefore out of reach of `drop-oldest` and `close`.
pub struct OutQueue {
    entries: VecDeque<Entry>,
    /// Bytes not yet written, queued or in flight.
    bytes: usize,
    /// The front entry is the rest of a frame the socket took part of: it
    /// must be written, never dropped, and nothing may go before it.
    front_started: bool,
    /// `(is_event, at)` of each frame in flight, in order.
    in_flight: Vec<(bool, u32)>,
    /// Events dropped by `drop-oldest` and not yet told to the client.
    dropped_untold: u64,
    closing: bool,
}

impl Default for OutQueue {
    fn default() -> Self {
        Self::new()
    }
}

impl OutQueue {
    pub fn new() -> Self {
        Self {
            entries: VecDeque::new(),
            bytes: 0,
            front_started: false,
            in_flight: Vec::new(),
            dropped_untold: 0,
            closing: false,
        }
    }

    /// Entries at the front that must stay: a head the socket took part of.
    fn pinned(&self) -> usize {
        usize::from(self.front_started)
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.dropped_untold == 0
    }

    /// Events queued and not written (a started head counts: the client
    /// cannot use half a frame).
    pub fn unsent_events(&self) -> u64 {
        self.entries.iter().filter(|e| e.is_event).count() as u64 + self.dropped_untold
    }

    /// Frames queued or in flight.
    pub fn len(&self) -> usize {
        self.entries.len() + self.in_flight.len()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn is_closing(&self) -> bool {
        self.closing
    }

    /// True once a close frame was queued and everything up to it written.
    pub fn is_closed_and_drained(&self) -> bool {
        self.closing && self.entries.is_empty()
    }

    /// Offers a shared event frame the router took at `at`.
    pub fn push_event(
        &mut self,
        frame: &Bytes,
        at: u32,
        limits: QueueLimits,
        policy: SlowPolicy,
    ) -> Push {
        if self.closing {
            return Push::Closed;
        }
        let was_empty = self.is_empty();
        if self.fits(frame.len(), limits) {
            self.push(frame.clone(), true, at);
            return Push::Queued { was_empty };
        }
        match policy {
            SlowPolicy::Disconnect => Push::Overflow,
            SlowPolicy::DropOldest => {
                let mut dropped = 0;
                // Never drop what the socket has (partly) taken.
                let mut i = self.pinned();
                while !self.fits(frame.len(), limits) && i < self.entries.len() {
                    if self.entries[i].is_event {
                        let e = self.entries.remove(i).expect("index checked");
                        self.bytes -= e.bytes.len();
                        dropped += 1;
                    } else {
                        i += 1;
                    }
                }
                let queued = self.fits(frame.len(), limits);
                if queued {
                    self.push(frame.clone(), true, at);
                } else {
                    dropped += 1;
                }
                self.dropped_untold += dropped;
                Push::DroppedOldest {
                    dropped,
                    queued,
                    was_empty,
                }
            }
        }
    }

    fn fits(&self, len: usize, limits: QueueLimits) -> bool {
        self.len() < limits.max_frames && self.bytes + len <= limits.max_bytes
    }

    /// Queues a reply or control frame. These are caused by the client
    /// itself, so they are never dropped; they count against the same
    /// bound as events, and `false` means it is reached (a client that
    /// sends but does not read): the caller must disconnect it.
    pub fn push_control(&mut self, frame: Bytes, limits: QueueLimits) -> bool {
        if self.closing {
            return true;
        }
        if !self.fits(frame.len(), limits) {
            return false;
        }
        self.push(frame, false, 0);
        true
    }

    fn push(&mut self, bytes: Bytes, is_event: bool, at: u32) {
        self.bytes += bytes.len();
        self.entries.push_back(Entry {
            bytes,
            is_event,
            at,
        });
    }

    /// Discards everything not yet started, queues `close` as the last
    /// frame and refuses further pushes. Returns how many events were
    /// discarded, for the drop counters.
    pub fn close(&mut self, close: Bytes) -> u64 {
        if self.closing {
            return 0;
        }
        let keep = self.pinned();
        let mut discarded = 0;
        for e in self.entries.drain(keep..) {
            self.bytes -= e.bytes.len();
            discarded += u64::from(e.is_event);
        }
        discarded += std::mem::take(&mut self.dropped_untold);
        self.closing = true;
        self.push(close, false, 0);
        discarded
    }

    /// Queues `close` after everything already queued and refuses further
    /// pushes: a graceful close that loses nothing (shutdown).
    pub fn finish(&mut self, close: Bytes) {
        if self.closing {
            return;
        }
        self.closing = true;
        self.push(close, false, 0);
    }

    /// Moves up to `max` frames, oldest first, into `out` (which must be
    /// empty) for one vectored write. Moving costs no reference count and
    /// copies no payload byte. A pending `{"dropped": N}` notice goes first,
    /// where the lost events were (after a started head, if any).
    pub fn take_batch(&mut self, out: &mut Vec<Bytes>, max: usize) {
        debug_assert!(out.is_empty() && self.in_flight.is_empty());
        if self.dropped_untold > 0 && !self.front_started {
            let notice = frame::text_frame(client::dropped_message(self.dropped_untold).as_bytes());
            self.dropped_untold = 0;
            self.bytes += notice.len();
            self.entries.push_front(Entry {
                bytes: notice,
                is_event: false,
                at: 0,
            });
        }
        // With a notice owed behind a started head, send the head alone so
        // the notice can go right after it.
        let max = if self.dropped_untold > 0 { 1 } else { max };
        while out.len() < max {
            let Some(e) = self.entries.pop_front() else {
                break;
            };
            out.push(e.bytes);
            self.in_flight.push((e.is_event, e.at));
        }
        self.front_started = false;
    }

    /// Settles a batch after the socket took `written` bytes of it: written
    /// frames are released, the rest go back to the front in order (a frame
    /// the socket took part of goes back as its remainder). Clears `out`.
    /// Returns when the router took the oldest event written whole (for
    /// the delivery latency), if one was.
    pub fn settle(&mut self, out: &mut Vec<Bytes>, mut written: usize) -> Option<u32> {
        self.bytes -= written;
        let mut first_unwritten = out.len();
        for (i, b) in out.iter_mut().enumerate() {
            if written >= b.len() {
                written -= b.len();
                continue;
            }
            if written > 0 {
                bytes::Buf::advance(b, written);
                self.front_started = true;
            }
            first_unwritten = i;
            break;
        }
        let flags = std::mem::take(&mut self.in_flight);
        let oldest = flags[..first_unwritten]
            .iter()
            .find(|(is_event, at)| *is_event && *at != 0)
            .map(|(_, at)| *at);
        for (b, (is_event, at)) in out
            .drain(first_unwritten..)
            .zip(&flags[first_unwritten..])
            .rev()
        {
            self.entries.push_front(Entry {
                bytes: b,
                is_event: *is_event,
                at: *at,
            });
        }
        out.clear();
        self.in_flight = flags;
        self.in_flight.clear();
        oldest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: QueueLimits = QueueLimits {
        max_bytes: 100,
        max_frames: 3,
    };

    fn frame(n: usize) -> Bytes {
        Bytes::from(vec![b'x'; n])
    }

    fn drain(q: &mut OutQueue) -> Vec<u8> {
        let mut out = Vec::new();
        let mut batch = Vec::new();
        loop {
            q.take_batch(&mut batch, 8);
            if batch.is_empty() {
                return out;
            }
            let total: usize = batch.iter().map(|s| s.len()).sum();
            for s in &batch {
                out.extend_from_slice(s);
            }
            q.settle(&mut batch, total);
        }
    }

    /// Writes `n` bytes of a batch, as a socket taking part of it would.
    fn write_part(q: &mut OutQueue, n: usize) {
        let mut batch = Vec::new();
        q.take_batch(&mut batch, 8);
        q.settle(&mut batch, n);
    }

    #[test]
    fn bounds_by_count_and_bytes() {
        let mut q = OutQueue::new();
        let d = SlowPolicy::Disconnect;
        assert_eq!(
            q.push_event(&frame(10), 1, LIMITS, d),
            Push::Queued { was_empty: true }
        );
        assert_eq!(
            q.push_event(&frame(10), 1, LIMITS, d),
            Push::Queued { was_empty: false }
        );
        assert_eq!(q.push_event(&frame(90), 1, LIMITS, d), Push::Overflow);
        assert_eq!(
            q.push_event(&frame(10), 1, LIMITS, d),
            Push::Queued { was_empty: false }
        );
        assert_eq!(q.push_event(&frame(1), 1, LIMITS, d), Push::Overflow);
        assert_eq!((q.len(), q.bytes()), (3, 30));
    }

    #[test]
    fn partial_writes_resume_mid_frame() {
        let mut q = OutQueue::new();
        for b in [b"abc".as_slice(), b"de", b"f"] {
            q.push_event(
                &Bytes::copy_from_slice(b),
                1,
                LIMITS,
                SlowPolicy::Disconnect,
            );
        }
        write_part(&mut q, 4);
        assert_eq!(q.bytes(), 2);
        assert_eq!(q.len(), 2);
        assert_eq!(drain(&mut q), b"ef");
        assert_eq!(q.bytes(), 0);
    }

    #[test]
    fn drop_oldest_keeps_the_partial_head_and_tells_the_client() {
        let mut q = OutQueue::new();
        let p = SlowPolicy::DropOldest;
        for c in [b'a', b'b', b'c'] {
            q.push_event(&Bytes::from(vec![c; 30]), 1, LIMITS, p);
        }
        write_part(&mut q, 5); // the socket has part of "a"
        let pushed = q.push_event(&Bytes::from(vec![b'd'; 30]), 1, LIMITS, p);
        assert_eq!(
            pushed,
            Push::DroppedOldest {
                dropped: 1,
                queued: true,
                was_empty: false
            }
        );
        let out = drain(&mut q);
        // The rest of "a", then the notice where "b" was, then the rest.
        assert_eq!(&out[..25], &[b'a'; 25][..]);
        let rest = &out[25..];
        let notice = frame::text_frame(b"{\"dropped\": 1}");
        assert_eq!(&rest[..notice.len()], &notice[..]);
        let rest = &rest[notice.len()..];
        assert_eq!(rest, [vec![b'c'; 30], vec![b'd'; 30]].concat());
    }

    #[test]
    fn an_event_bigger_than_the_bound_is_itself_dropped() {
        let mut q = OutQueue::new();
        let pushed = q.push_event(&frame(101), 1, LIMITS, SlowPolicy::DropOldest);
        assert_eq!(
            pushed,
            Push::DroppedOldest {
                dropped: 1,
                queued: false,
                was_empty: true
            }
        );
        assert_eq!(q.len(), 0);
        assert!(!q.is_empty(), "the notice is still owed");
    }

    #[test]
    fn replies_are_not_dropped_and_close_discards_events() {
        let mut q = OutQueue::new();
        let p = SlowPolicy::DropOldest;
        assert!(q.push_control(frame(10), LIMITS));
        q.push_event(&frame(40), 1, LIMITS, p);
        q.push_event(&frame(40), 1, LIMITS, p);
        q.push_event(&frame(40), 1, LIMITS, p); // drops one event, not the reply
        assert_eq!(q.len(), 3);
        assert_eq!(q.close(Bytes::from_static(b"CLOSE")), 3); // 2 events + 1 untold
        assert_eq!(q.push_event(&frame(1), 1, LIMITS, p), Push::Closed);
        let out = drain(&mut q);
        assert_eq!(out, b"CLOSE");
        assert!(q.is_closed_and_drained());
    }

    #[test]
    fn frames_in_flight_are_never_dropped_or_discarded() {
        let mut q = OutQueue::new();
        let p = SlowPolicy::DropOldest;
        for c in [b'a', b'b', b'c'] {
            q.push_event(&Bytes::from(vec![c; 30]), 1, LIMITS, p);
        }
        let mut batch = Vec::new();
        q.take_batch(&mut batch, 2); // "a" and "b" go to the socket
                                     // While they are in flight, making room drops "c", not them.
        q.push_event(&Bytes::from(vec![b'd'; 30]), 1, LIMITS, p);
        q.settle(&mut batch, 60);
        let out = drain(&mut q);
        let notice = frame::text_frame(b"{\"dropped\": 1}");
        assert_eq!(out, [&notice[..], &[b'd'; 30][..]].concat());

        // Close keeps the in-flight frames so the socket's count stays true.
        let mut q = OutQueue::new();
        q.push_event(&frame(10), 1, LIMITS, p);
        q.push_event(&frame(10), 1, LIMITS, p);
        q.take_batch(&mut batch, 8);
        assert_eq!(q.close(Bytes::from_static(b"C")), 0);
        // The socket took only part: the rest still goes before the close.
        q.settle(&mut batch, 15);
        assert_eq!(drain(&mut q), [&[b'x'; 5][..], b"C"].concat());
    }

    #[test]
    fn control_frames_are_bounded_too() {
        // Regression (issue 10, finding 2): replies count against the same
        // bound as events, not twice it.
        let mut q = OutQueue::new();
        assert!(q.push_control(frame(LIMITS.max_bytes - 10), LIMITS));
        assert!(!q.push_control(frame(11), LIMITS));
        assert!(q.push_control(frame(10), LIMITS));
        let mut q = OutQueue::new();
        assert_eq!(
            q.push_event(&frame(LIMITS.max_bytes), 1, LIMITS, SlowPolicy::Disconnect),
            Push::Queued { was_empty: true }
        );
        assert!(!q.push_control(frame(1), LIMITS));
    }
}
