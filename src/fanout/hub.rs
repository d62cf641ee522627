//! One worker's subscribers: which of its connections hold which groups,
//! their outbound queues, and delivery of a shared frame to all of them.
//!
//! A hub belongs to exactly one worker thread and is only touched there, so
//! it needs no synchronisation at all; the cross-thread part is `Routes`.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use indexmap::IndexSet;
use slab::Slab;

use super::queue::{OutQueue, Push, QueueLimits, SlowPolicy};
use crate::protocol::frame;

/// A subscriber's index in its worker's hub.
pub type SubId = usize;

/// Groups this worker started or stopped holding; the worker publishes them
/// to the cluster-wide `Routes`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RouteDelta {
    pub held: Vec<Arc<str>>,
    pub freed: Vec<Arc<str>>,
}

impl RouteDelta {
    pub fn is_empty(&self) -> bool {
        self.held.is_empty() && self.freed.is_empty()
    }
}

/// The result of replacing a subscriber's groups.
#[derive(Debug, Default)]
pub struct GroupChange {
    pub joined: Vec<Arc<str>>,
    pub left: Vec<Arc<str>>,
}

/// Counts from delivering frames, summed by the worker into metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryStats {
    /// Frames queued to subscribers.
    pub delivered: u64,
    /// Frames lost: dropped by `drop-oldest`, or discarded with a queue
    /// closed for being slow.
    pub dropped: u64,
    /// Subscribers disconnected as slow consumers.
    pub slow_disconnects: u64,
    /// Frames an observer (the status page's tail) missed: not a client's
    /// loss, so not in `dropped`.
    pub observer_dropped: u64,
}

/// The depth of a worker's client queues, summed and at its deepest.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct QueueDepth {
    pub frames: usize,
    pub bytes: usize,
    pub deepest_frames: usize,
}

/// An observer's queue bound: small, so a browser that falls behind sees
/// `{"dropped": N}` within a second instead of megabytes of backlog.
pub const OBSERVER_LIMITS: QueueLimits = QueueLimits {
    max_bytes: 1 << 20,
    max_frames: 1024,
};

struct Subscriber {
    queue: OutQueue,
    groups: BTreeSet<Arc<str>>,
    /// An operator watching (the status page's tail), not a client: it
    /// drops its oldest within `OBSERVER_LIMITS` whatever the node's
    /// policy, and what it misses is counted apart.
    observer: bool,
    /// The writer, waiting for bytes to write.
    waker: Option<Waker>,
    /// What the waiting writer waits for: 0, any frame in an empty queue
    /// (`poll_pending`); otherwise this many frames queued (`poll_batch`).
    wake_at: usize,
    /// The session, waiting to learn that a close was queued.
    close_waker: Option<Waker>,
}

/// One worker's subscription table and queues.
pub struct Hub {
    subs: Slab<Subscriber>,
    groups: HashMap<Arc<str>, IndexSet<SubId>>,
    limits: QueueLimits,
    policy: SlowPolicy,
}

// === impl Hub ===

impl Hub {
    pub fn new(limits: QueueLimits, policy: SlowPolicy) -> Self {
        Self {
            subs: Slab::new(),
            groups: HashMap::new(),
            limits,
            policy,
        }
    }

    pub fn limits(&self) -> QueueLimits {
        self.limits
    }

    /// Number of subscribers (connections) on this worker.
    pub fn len(&self) -> usize {
        self.subs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.subs.is_empty()
    }

    /// Number of distinct groups held on this worker.
    pub fn group_count(&self) -> usize {
        self.groups.len()
    }

    /// Adds a subscriber with no groups.
    pub fn insert(&mut self) -> SubId {
        self.insert_as(false)
    }

    /// Adds an observer (the status page's tail) with no groups.
    pub fn insert_observer(&mut self) -> SubId {
        self.insert_as(true)
    }

    fn insert_as(&mut self, observer: bool) -> SubId {
        self.subs.insert(Subscriber {
            queue: OutQueue::new(),
            groups: BTreeSet::new(),
            observer,
            waker: None,
            wake_at: 0,
            close_waker: None,
        })
    }

    /// Removes a subscriber and its groups; returns how many events were
    /// still queued for it (lost with it, for the drop counter; none for
    /// an observer, whose losses are not a client's).
    pub fn remove(&mut self, id: SubId, delta: &mut RouteDelta) -> u64 {
        self.leave_all(id, delta);
        self.subs
            .try_remove(id)
            .filter(|sub| !sub.observer)
            .map_or(0, |sub| sub.queue.unsent_events())
    }

    /// The groups `id` holds, sorted.
    pub fn groups_of(&self, id: SubId) -> impl Iterator<Item = &str> {
        self.subs[id].groups.iter().map(|g| &**g)
    }

    /// Replaces the groups of `id` with `target`.
    pub fn set_groups(
        &mut self,
        id: SubId,
        target: BTreeSet<String>,
        delta: &mut RouteDelta,
    ) -> GroupChange {
        let sub = &mut self.subs[id];
        let mut change = GroupChange::default();
        let left: Vec<Arc<str>> = sub
            .groups
            .iter()
            .filter(|g| !target.contains(&***g))
            .cloned()
            .collect();
        for g in &left {
            sub.groups.remove(g);
            unlink(&mut self.groups, id, g, delta);
        }
        change.left = left;
        for name in target {
            if sub.groups.contains(name.as_str()) {
                continue;
            }
            let key = match self.groups.get_key_value(name.as_str()) {
                Some((k, _)) => k.clone(),
                None => {
                    let k: Arc<str> = name.into();
                    delta.held.push(k.clone());
                    k
                }
            };
            self.groups.entry(key.clone()).or_default().insert(id);
            sub.groups.insert(key.clone());
            change.joined.push(key);
        }
        change
    }

    fn leave_all(&mut self, id: SubId, delta: &mut RouteDelta) {
        let Some(sub) = self.subs.get_mut(id) else {
            return;
        };
        for g in std::mem::take(&mut sub.groups) {
            unlink(&mut self.groups, id, &g, delta);
        }
    }

    /// Queues `frame` for every local subscriber of `group`.
    pub fn deliver(
        &mut self,
        group: &str,
        frame: &Bytes,
        stats: &mut DeliveryStats,
        delta: &mut RouteDelta,
    ) {
        self.deliver_at(group, frame, 0, stats, delta);
    }

    /// `deliver`, for an event the router took at `at` (`Event::at`).
    pub fn deliver_at(
        &mut self,
        group: &str,
        frame: &Bytes,
        at: u32,
        stats: &mut DeliveryStats,
        delta: &mut RouteDelta,
    ) {
        let Some(members) = self.groups.get(group) else {
            return;
        };
        let mut overflowed = Vec::new();
        for &id in members {
            let sub = &mut self.subs[id];
            let pushed = if sub.observer {
                sub.queue
                    .push_event(frame, at, OBSERVER_LIMITS, SlowPolicy::DropOldest)
            } else {
                sub.queue.push_event(frame, at, self.limits, self.policy)
            };
            let wake = match pushed {
                Push::Queued { was_empty } => {
                    stats.delivered += 1;
                    was_empty
                }
                Push::DroppedOldest {
                    dropped,
                    queued,
                    was_empty,
                } => {
                    stats.delivered += u64::from(queued);
                    if sub.observer {
                        stats.observer_dropped += dropped;
                    } else {
                        stats.dropped += dropped;
                    }
                    was_empty
                }
                Push::Overflow => {
                    overflowed.push(id);
                    false
                }
                Push::Closed => false,
            };
            // A writer pacing its writes wakes early once a whole batch
            // is waiting: a burst must not fill the queue while it sleeps.
            let wake = wake || (sub.wake_at > 0 && sub.queue.len() >= sub.wake_at);
            if wake {
                if let Some(w) = sub.waker.take() {
                    sub.wake_at = 0;
                    w.wake();
                }
            }
        }
        for id in overflowed {
            // The event that did not fit is lost too.
            stats.dropped += 1 + self.close(
                id,
                frame::close_code::TRY_AGAIN_LATER,
                "slow consumer",
                delta,
            );
            stats.slow_disconnects += 1;
        }
    }

    /// Starts closing `id`: discards its unsent events, queues a close frame
    /// and takes it out of every group. Returns the events discarded.
    pub fn close(&mut self, id: SubId, code: u16, reason: &str, delta: &mut RouteDelta) -> u64 {
        self.leave_all(id, delta);
        let Some(sub) = self.subs.get_mut(id) else {
            return 0;
        };
        let discarded = sub.queue.close(frame::close_frame(code, reason));
        for w in [sub.waker.take(), sub.close_waker.take()]
            .into_iter()
            .flatten()
        {
            w.wake();
        }
        if sub.observer {
            0
        } else {
            discarded
        }
    }

    /// Closes every subscriber after what is already queued for it (server
    /// shutdown): takes them out of their groups and queues the close frame
    /// last, discarding nothing.
    pub fn finish_all(&mut self, code: u16, reason: &str, delta: &mut RouteDelta) {
        let ids: Vec<SubId> = self.subs.iter().map(|(id, _)| id).collect();
        for id in ids {
            self.leave_all(id, delta);
            let sub = &mut self.subs[id];
            sub.queue.finish(frame::close_frame(code, reason));
            for w in [sub.waker.take(), sub.close_waker.take()]
                .into_iter()
                .flatten()
            {
                w.wake();
            }
        }
    }

    /// Queues a reply or control frame for `id`; `false` means the client
    /// is far behind on replies it caused and must be disconnected.
    pub fn push_control(&mut self, id: SubId, frame: Bytes) -> bool {
        let sub = &mut self.subs[id];
        let was_empty = sub.queue.is_empty();
        let ok = sub.queue.push_control(frame, self.limits);
        if was_empty {
            if let Some(w) = sub.waker.take() {
                w.wake();
            }
        }
        ok
    }

    /// What this worker's client queues hold now (observers included).
    pub fn queue_depth(&self) -> QueueDepth {
        let mut d = QueueDepth::default();
        for (_, sub) in &self.subs {
            let frames = sub.queue.len();
            d.frames += frames;
            d.bytes += sub.queue.bytes();
            d.deepest_frames = d.deepest_frames.max(frames);
        }
        d
    }

    /// The queue of `id`, for the connection writer.
    pub fn queue_mut(&mut self, id: SubId) -> &mut OutQueue {
        &mut self.subs[id].queue
    }

    /// Ready when `id` has bytes to write; otherwise remembers the waker.
    pub fn poll_pending(&mut self, id: SubId, cx: &mut Context<'_>) -> Poll<()> {
        let sub = &mut self.subs[id];
        if sub.queue.is_empty() {
            sub.waker = Some(cx.waker().clone());
            sub.wake_at = 0;
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    }

    /// Ready when `id` holds at least `frames` frames (queued or in
    /// flight) or is closing; otherwise remembers the waker. For a writer
    /// that paces its writes: it waits out its interval unless a whole
    /// batch is there to write.
    pub fn poll_batch(&mut self, id: SubId, frames: usize, cx: &mut Context<'_>) -> Poll<()> {
        let sub = &mut self.subs[id];
        if sub.queue.len() >= frames || sub.queue.is_closing() {
            Poll::Ready(())
        } else {
            sub.waker = Some(cx.waker().clone());
            sub.wake_at = frames.max(1);
            Poll::Pending
        }
    }
}

impl Hub {
    /// Ready once a close frame has been queued for `id`.
    pub fn poll_closing(&mut self, id: SubId, cx: &mut Context<'_>) -> Poll<()> {
        let sub = &mut self.subs[id];
        if sub.queue.is_closing() {
            Poll::Ready(())
        } else {
            sub.close_waker = Some(cx.waker().clone());
            Poll::Pending
        }
    }
}

fn unlink(
    groups: &mut HashMap<Arc<str>, IndexSet<SubId>>,
    id: SubId,
    group: &str,
    delta: &mut RouteDelta,
) {
    let Some(members) = groups.get_mut(group) else {
        return;
    };
    members.swap_remove(&id);
    if members.is_empty() {
        if let Some((key, _)) = groups.remove_entry(group) {
            delta.freed.push(key);
        }
    }
}

#[cfg(test)]
mod tests;
