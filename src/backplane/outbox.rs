//! What a node owes its peers: one `Sink` per outgoing link, holding the
//! peer's interest and the events sent but not yet acknowledged (the
//! resend buffer). Local producers `offer` each batch once; every sink
//! whose interest matches takes a reference to the same payload bytes.
//!
//! I/O-free: the link tasks take from sinks and report acks; nothing here
//! blocks beyond a short per-sink lock.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;
use bytes::Bytes;
use tokio::sync::Notify;

use super::wire::Origin;

/// The groups an interest change actually added and removed.
pub type InterestChange = (Vec<Arc<str>>, Vec<Arc<str>>);

/// A peer's interest would pass the node's group limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a peer's interest of {0} groups passes the node's group limit")]
pub struct TooManyGroups(pub usize);

/// Which groups a sink carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Interest {
    /// Every group (AWX 2020 dialers: they get every local event).
    All,
    /// Every group until the peer first says which it wants: a node that
    /// starts keeps what it routes for native peers whose links are not
    /// up yet (a Redis backlog read at start, say), bounded like any sink,
    /// instead of dropping it for want of an interest.
    Unknown,
    Groups(HashSet<Arc<str>>),
}

impl Interest {
    fn matches(&self, group: &str) -> bool {
        match self {
            Interest::All | Interest::Unknown => true,
            Interest::Groups(g) => g.contains(group),
        }
    }
}

/// Bounds of one sink's buffer.
#[derive(Debug, Clone, Copy)]
pub struct SinkLimits {
    pub max_events: usize,
    pub max_bytes: usize,
}

/// One event owed to a peer.
#[derive(Debug, Clone)]
pub struct Pending {
    pub seq: u64,
    pub group: Arc<str>,
    pub payload: Bytes,
    /// Where in this node's Redis stream it came from, if it did.
    pub origin: Origin,
}

/// Counts a sink reports to metrics (deltas since the last `take_counts`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SinkCounts {
    /// Evicted from a full buffer before the peer acknowledged them.
    pub evicted: u64,
    /// Dropped because the peer restarted and cannot want them any more.
    pub discarded: u64,
}

#[derive(Debug)]
struct State {
    interest: Interest,
    queue: VecDeque<Pending>,
    bytes: usize,
    /// The sequence number the next offered event gets.
    next_seq: u64,
    /// The highest sequence handed to the current connection.
    sent: u64,
    /// Whether a connection ever started: what waits before the first
    /// one was collected for this very peer and is kept.
    connected_once: bool,
    counts: SinkCounts,
}

/// One outgoing link's share of the outbox.
#[derive(Debug)]
pub struct Sink {
    pub label: String,
    limits: SinkLimits,
    state: Mutex<State>,
    /// Signalled when events arrive (a stored permit: none is missed).
    ready: Notify,
    /// Takes no events: the peer gets them another way (both nodes are on
    /// the broker), and a second path would deliver them twice.
    muted: AtomicBool,
    /// Left the outbox: holds nothing anyone waits for any more.
    gone: AtomicBool,
}

impl Sink {
    pub fn new(label: String, interest: Interest, limits: SinkLimits) -> Self {
        Self {
            label,
            limits,
            state: Mutex::new(State {
                interest,
                queue: VecDeque::new(),
                bytes: 0,
                next_seq: 1,
                sent: 0,
                connected_once: false,
                counts: SinkCounts::default(),
            }),
            ready: Notify::new(),
            muted: AtomicBool::new(false),
            gone: AtomicBool::new(false),
        }
    }

    /// Stops (or resumes) taking events for this peer. Muting also forgets
    /// what waits (not counted as lost: the broker carries the same events
    /// to that peer, and sending them here too would deliver them twice).
    pub fn mute(&self, muted: bool) {
        self.muted.store(muted, Ordering::Relaxed);
        if muted {
            let mut s = self.lock();
            s.queue.clear();
            s.bytes = 0;
            s.sent = s.next_seq - 1;
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent across every early return, so a
        // panic elsewhere while holding the lock leaves it usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until there may be something to send.
    pub async fn ready(&self) {
        self.ready.notified().await;
    }

    /// Wakes the link (for example to send an interest acknowledgement).
    pub fn wake(&self) {
        self.ready.notify_one();
    }

    /// Replaces the interest (a full set) or changes it; returns the groups
    /// actually added and removed. A change costs its own size, not the
    /// set's. `Err` (and no change) when the set would pass `max` groups:
    /// a peer's interest becomes routes and Redis memberships here, so it
    /// is bounded like a node's own groups.
    pub fn set_interest(
        &self,
        full: bool,
        added: &[&str],
        removed: &[&str],
        max: usize,
    ) -> Result<InterestChange, TooManyGroups> {
        let mut s = self.lock();
        if matches!(s.interest, Interest::All | Interest::Unknown) {
            s.interest = Interest::Groups(HashSet::new());
        }
        let Interest::Groups(set) = &mut s.interest else {
            unreachable!("made a group set above");
        };
        if full {
            let unique: HashSet<&str> = added.iter().copied().collect();
            if unique.len() > max {
                return Err(TooManyGroups(unique.len()));
            }
            let old = std::mem::take(set);
            *set = unique.into_iter().map(Arc::from).collect();
            for g in removed {
                set.remove(*g);
            }
            let plus = set.difference(&old).cloned().collect();
            let minus = old.difference(set).cloned().collect();
            return Ok((plus, minus));
        }
        let growth = added.iter().filter(|g| !set.contains(**g)).count();
        if set.len() + growth > max {
            return Err(TooManyGroups(set.len() + growth));
        }
        let mut plus = Vec::new();
        let mut minus = Vec::new();
        for g in added {
            if !set.contains(*g) {
                let g: Arc<str> = Arc::from(*g);
                set.insert(g.clone());
                plus.push(g);
            }
        }
        for g in removed {
            if let Some(g) = set.take(*g) {
                minus.push(g);
            }
        }
        // Added and removed in one message: the net effect is the set's.
        plus.retain(|g| set.contains(g));
        Ok((plus, minus))
    }

    /// The groups this sink carries (empty for `All` and `Unknown`).
    pub fn groups(&self) -> Vec<Arc<str>> {
        match &self.lock().interest {
            Interest::Groups(g) => g.iter().cloned().collect(),
            Interest::All | Interest::Unknown => Vec::new(),
        }
    }

    /// Whether the sink carries `group` now (for tests and the interest
    /// test's explanation of counters).
    pub fn wants(&self, group: &str) -> bool {
        self.lock().interest.matches(group)
    }

    /// Queues the events this sink's peer wants; `payloads` holds one
    /// shared copy per event, made on first need; `origins` (empty, or one
    /// per event) where each came from. Returns the last sequence taken.
    fn offer(
        &self,
        events: &[(&str, &[u8])],
        origins: &[Origin],
        payloads: &mut [Option<(Arc<str>, Bytes)>],
    ) -> Option<u64> {
        if self.muted.load(Ordering::Relaxed) {
            return None;
        }
        let mut s = self.lock();
        let mut last = None;
        for (i, ((group, payload), shared)) in events.iter().zip(payloads.iter_mut()).enumerate() {
            if !s.interest.matches(group) {
                continue;
            }
            let (g, p) = shared
                .get_or_insert_with(|| (Arc::from(*group), Bytes::copy_from_slice(payload)))
                .clone();
            let seq = s.next_seq;
            s.next_seq += 1;
            s.bytes += p.len();
            s.queue.push_back(Pending {
                seq,
                group: g,
                payload: p,
                origin: origins.get(i).copied().unwrap_or_default(),
            });
            last = Some(seq);
        }
        while s.queue.len() > self.limits.max_events || s.bytes > self.limits.max_bytes {
            let Some(old) = s.queue.pop_front() else {
                break;
            };
            s.bytes -= old.payload.len();
            s.counts.evicted += 1;
        }
        last
    }

    /// Whether anything up to `seq` still waits here for the peer (sent
    /// or not, unacknowledged). Acknowledged, evicted, discarded or muted
    /// events are not held, nor is anything once the sink left the outbox.
    pub fn holds(&self, seq: u64) -> bool {
        if self.gone.load(Ordering::Acquire) {
            return false;
        }
        self.lock().queue.front().is_some_and(|p| p.seq <= seq)
    }

    /// Copies (by reference) up to `max_events` / about `max_bytes` of the
    /// events not yet handed to this connection into `out`, and marks them
    /// handed.
    pub fn take(&self, out: &mut Vec<Pending>, max_events: usize, max_bytes: usize) {
        let mut s = self.lock();
        let sent = s.sent;
        let start = s.queue.partition_point(|p| p.seq <= sent);
        let mut bytes = 0;
        for p in s.queue.range(start..) {
            if out.len() >= max_events || (bytes >= max_bytes && !out.is_empty()) {
                break;
            }
            bytes += p.payload.len();
            out.push(p.clone());
        }
        if let Some(last) = out.last() {
            s.sent = s.sent.max(last.seq);
        }
    }

    /// Whether events wait that this connection has not been handed.
    pub fn has_unsent(&self) -> bool {
        let s = self.lock();
        s.queue.back().is_some_and(|p| p.seq > s.sent)
    }

    /// Forgets everything up to `seq`, which the peer has delivered.
    pub fn ack(&self, seq: u64) {
        let mut s = self.lock();
        while s.queue.front().is_some_and(|p| p.seq <= seq) {
            let p = s.queue.pop_front().expect("checked");
            s.bytes -= p.payload.len();
        }
    }

    /// A new connection starts. `resume` is what the peer says it holds of
    /// this sender's run: `Some(seq)` resends everything after `seq`;
    /// `None` (the peer restarted, or never heard of us) discards what was
    /// buffered for its previous run, which has no clients left to want it.
    /// The first connection of this process's run keeps everything: the
    /// peer has not heard of a run that only just started, and what waits
    /// was collected for it.
    pub fn connected(&self, resume: Option<u64>) {
        let first = !std::mem::replace(&mut self.lock().connected_once, true);
        match resume {
            Some(seq) => {
                self.ack(seq);
                let mut s = self.lock();
                s.sent = seq.min(s.next_seq - 1);
            }
            None if first => self.lock().sent = 0,
            None => {
                let mut s = self.lock();
                s.counts.discarded += s.queue.len() as u64;
                s.queue.clear();
                s.bytes = 0;
                s.sent = s.next_seq - 1;
            }
        }
        self.wake();
    }

    /// A connection that resumes nothing (AWX's forms): what waits is
    /// discarded and counted, the first connection included.
    pub fn start_afresh(&self) {
        self.lock().connected_once = true;
        self.connected(None);
    }

    /// Forgets everything handed so far at once (AWX links have no acks:
    /// what was written is gone).
    pub fn ack_sent(&self) {
        let sent = self.lock().sent;
        self.ack(sent);
    }

    /// Events buffered (sent or not) and not acknowledged.
    pub fn depth(&self) -> usize {
        self.lock().queue.len()
    }

    pub fn take_counts(&self) -> SinkCounts {
        std::mem::take(&mut self.lock().counts)
    }
}

/// The sinks that took part of one offer, each with the last sequence it
/// took. The offer is *released* once none of them holds any of it any
/// more: acknowledged by the peer (or written, for AWX's forms, which have
/// no acknowledgements), evicted or discarded (both counted), or the sink
/// left the outbox. The stream reader keeps its record of what peers have
/// by this (ARCHITECTURE.md, "Stream events across a crash").
#[derive(Debug, Default, Clone)]
pub struct Held(Vec<(Arc<Sink>, u64)>);

impl Held {
    pub fn released(&self) -> bool {
        self.0.iter().all(|(sink, seq)| !sink.holds(*seq))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Folds a later offer into this one when the same sinks took both, so
    /// a run of batches costs one record: released together, since each
    /// sink releases in order.
    pub fn absorb(&mut self, later: &Held) -> bool {
        let same = self.0.len() == later.0.len()
            && self
                .0
                .iter()
                .zip(&later.0)
                .all(|((a, _), (b, _))| Arc::ptr_eq(a, b));
        if same {
            for ((_, seq), (_, newer)) in self.0.iter_mut().zip(&later.0) {
                *seq = (*seq).max(*newer);
            }
        }
        same
    }
}

/// Every sink of the node, behind `arc-swap`: producers load the list
/// without a lock; links come and go by publishing a new list.
#[derive(Default)]
pub struct Outbox {
    sinks: ArcSwap<Vec<Arc<Sink>>>,
    write: Mutex<()>,
}

impl Outbox {
    /// Hands a batch of locally produced events to every sink that wants
    /// them. Never waits: a sink that is full evicts its oldest (counted).
    pub fn offer(&self, events: &[(&str, &[u8])]) {
        self.offer_from(events, &[]);
    }

    /// `offer`, with where each event came from (`origins`: empty, or one
    /// per event); returns which sinks took what, to learn when the peers
    /// have it.
    pub fn offer_from(&self, events: &[(&str, &[u8])], origins: &[Origin]) -> Held {
        let sinks = self.sinks.load();
        let mut held = Held::default();
        if sinks.is_empty() || events.is_empty() {
            return held;
        }
        let mut payloads = vec![None; events.len()];
        for sink in sinks.iter() {
            if let Some(last) = sink.offer(events, origins, &mut payloads) {
                sink.ready.notify_one();
                held.0.push((sink.clone(), last));
            }
        }
        held
    }

    /// Whether any link is registered (the emit path skips the outbox
    /// entirely on a single node).
    pub fn has_sinks(&self) -> bool {
        !self.sinks.load().is_empty()
    }

    pub fn add(&self, sink: Arc<Sink>) {
        let _w = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let mut list = Vec::clone(&self.sinks.load());
        list.push(sink);
        self.sinks.store(Arc::new(list));
    }

    pub fn remove(&self, sink: &Arc<Sink>) {
        sink.gone.store(true, Ordering::Release);
        let _w = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let mut list = Vec::clone(&self.sinks.load());
        list.retain(|s| !Arc::ptr_eq(s, sink));
        self.sinks.store(Arc::new(list));
    }

    pub fn sinks(&self) -> Arc<Vec<Arc<Sink>>> {
        self.sinks.load_full()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_events: usize) -> SinkLimits {
        SinkLimits {
            max_events,
            max_bytes: usize::MAX,
        }
    }

    fn seqs(v: &[Pending]) -> Vec<u64> {
        v.iter().map(|p| p.seq).collect()
    }

    #[test]
    fn offers_follow_interest_and_share_payload_bytes() {
        let outbox = Outbox::default();
        let a = Arc::new(Sink::new("a".into(), Interest::All, limits(100)));
        let b = Arc::new(Sink::new(
            "b".into(),
            Interest::Groups(HashSet::new()),
            limits(100),
        ));
        outbox.add(a.clone());
        outbox.add(b.clone());
        b.set_interest(true, &["g1"], &[], 10).unwrap();
        outbox.offer(&[("g1", b"one"), ("g2", b"two")]);
        let (mut ta, mut tb) = (Vec::new(), Vec::new());
        a.take(&mut ta, 10, usize::MAX);
        b.take(&mut tb, 10, usize::MAX);
        assert_eq!(seqs(&ta), [1, 2]);
        assert_eq!(seqs(&tb), [1]);
        assert_eq!(&*tb[0].group, "g1");
        // One copy of the payload, shared by both sinks.
        assert_eq!(ta[0].payload.as_ptr(), tb[0].payload.as_ptr());
        b.set_interest(false, &["g2"], &["g1"], 10).unwrap();
        assert!(b.wants("g2") && !b.wants("g1"));
        outbox.remove(&a);
        outbox.offer(&[("g1", b"x"), ("g2", b"y")]);
        assert_eq!(a.depth(), 2);
        tb.clear();
        b.take(&mut tb, 10, usize::MAX);
        assert_eq!(seqs(&tb), [2]);
    }

    #[test]
    fn resend_after_reconnect_resumes_after_the_peers_last_seq() {
        let s = Sink::new("p".into(), Interest::All, limits(100));
        let outbox = Outbox::default();
        let s = Arc::new(s);
        outbox.add(s.clone());
        outbox.offer(&[("g", b"1"), ("g", b"2"), ("g", b"3"), ("g", b"4")]);
        let mut t = Vec::new();
        s.take(&mut t, 3, usize::MAX);
        assert_eq!(seqs(&t), [1, 2, 3]);
        s.ack(1);
        assert_eq!(s.depth(), 3);
        // The link drops; the peer says it delivered up to 2.
        s.connected(Some(2));
        t.clear();
        s.take(&mut t, 10, usize::MAX);
        assert_eq!(seqs(&t), [3, 4]);
        assert!(!s.has_unsent());
        // The peer restarted: nothing old is resent, and it is counted.
        outbox.offer(&[("g", b"5")]);
        s.connected(None);
        assert_eq!(s.depth(), 0);
        assert_eq!(s.take_counts().discarded, 3);
        outbox.offer(&[("g", b"6")]);
        t.clear();
        s.take(&mut t, 10, usize::MAX);
        assert_eq!(seqs(&t), [6]);
    }

    #[test]
    fn a_full_buffer_evicts_oldest_and_counts() {
        let s = Arc::new(Sink::new("p".into(), Interest::All, limits(2)));
        let outbox = Outbox::default();
        outbox.add(s.clone());
        outbox.offer(&[("g", b"1"), ("g", b"2"), ("g", b"3")]);
        assert_eq!(s.depth(), 2);
        assert_eq!(s.take_counts().evicted, 1);
        let mut t = Vec::new();
        s.take(&mut t, 1, usize::MAX);
        assert_eq!(seqs(&t), [2]);
        s.ack_sent();
        assert_eq!(s.depth(), 1);
    }

    /// A native peer's sink keeps everything until the peer first says
    /// what it wants, and its first connection sends all of it: a node
    /// that just started routes a backlog before its links are up.
    #[test]
    fn before_the_first_interest_a_sink_keeps_everything_for_its_first_connection() {
        let s = Arc::new(Sink::new("p".into(), Interest::Unknown, limits(100)));
        let outbox = Outbox::default();
        outbox.add(s.clone());
        outbox.offer(&[("g1", b"1"), ("g2", b"2")]);
        assert!(s.wants("anything"));
        s.connected(None);
        s.set_interest(true, &["g1"], &[], 10).unwrap();
        outbox.offer(&[("g1", b"3"), ("g2", b"4")]);
        let mut t = Vec::new();
        s.take(&mut t, 10, usize::MAX);
        assert_eq!(seqs(&t), [1, 2, 3]);
        assert_eq!(s.take_counts().discarded, 0);
        // A later fresh start (the peer restarted) discards, as before.
        s.connected(None);
        assert_eq!(s.take_counts().discarded, 3);
    }

    /// An offer is released once no sink that took part of it holds any
    /// of it: acknowledged, evicted, muted or the sink gone.
    #[test]
    fn an_offer_is_released_when_every_sink_let_go_of_it() {
        let outbox = Outbox::default();
        let a = Arc::new(Sink::new("a".into(), Interest::All, limits(2)));
        let b = Arc::new(Sink::new("b".into(), Interest::All, limits(100)));
        let c = Arc::new(Sink::new("c".into(), Interest::All, limits(100)));
        for s in [&a, &b, &c] {
            outbox.add(s.clone());
        }
        let origin = |seq| Origin::Live(super::super::wire::StreamId { ms: 1, seq });
        let first = outbox.offer_from(&[("g", b"1")], &[origin(1)]);
        let later = outbox.offer_from(&[("g", b"2")], &[origin(2)]);
        let mut t = Vec::new();
        b.take(&mut t, 10, usize::MAX);
        assert_eq!(t[0].origin, origin(1));
        assert!(!first.released());
        b.ack(1);
        c.mute(true);
        // a still holds event 1 of the first offer.
        assert!(!first.released());
        outbox.offer(&[("g", b"3"), ("g", b"4")]);
        assert_eq!(a.take_counts().evicted, 2);
        assert!(
            first.released(),
            "a evicted it, b acknowledged it, c was muted"
        );
        assert!(!later.released(), "b holds event 2");
        // Offers to the same sinks fold into one record, released together.
        let mut x = outbox.offer_from(&[("g", b"5")], &[origin(5)]);
        let y = outbox.offer_from(&[("g", b"6")], &[origin(6)]);
        assert!(x.absorb(&y));
        assert!(!x.absorb(&Held::default()));
        a.ack(6);
        assert!(!x.released(), "b holds 5 and 6");
        b.ack(6);
        assert!(x.released() && later.released());
        // A sink that left the outbox holds nothing.
        let z = outbox.offer_from(&[("g", b"7")], &[origin(7)]);
        outbox.remove(&a);
        assert!(!z.released());
        outbox.remove(&b);
        assert!(z.released());
        let none = Outbox::default().offer_from(&[("g", b"x")], &[]);
        assert!(none.is_empty() && none.released());
    }

    #[test]
    fn take_respects_the_byte_budget_but_always_makes_progress() {
        let s = Arc::new(Sink::new("p".into(), Interest::All, limits(10)));
        let outbox = Outbox::default();
        outbox.add(s.clone());
        outbox.offer(&[("g", &[0u8; 100]), ("g", &[0u8; 100]), ("g", &[0u8; 100])]);
        let mut t = Vec::new();
        s.take(&mut t, 10, 50);
        assert_eq!(seqs(&t), [1]);
        t.clear();
        s.take(&mut t, 10, 150);
        assert_eq!(seqs(&t), [2, 3]);
    }
}
