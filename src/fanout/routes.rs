//! Which workers hold subscribers of which group: a read-mostly snapshot
//! behind `arc-swap`. The emit path loads it without a lock; a worker whose
//! hub started or stopped holding a group publishes a new snapshot.
//!
//! The snapshot's map is persistent (`imbl`): publishing a change copies
//! the few nodes on the changed paths, not the table, so a subscribe costs
//! the same with a hundred groups held or a hundred thousand. Followers
//! (peer links telling peers our interest, the Redis membership loop) read
//! what changed from a bounded log of transitions instead of diffing whole
//! tables; one that fell behind the log resyncs from the snapshot.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use arc_swap::{ArcSwap, Guard};
use tokio::sync::{watch, Notify};

use super::hub::RouteDelta;

/// One snapshot of who holds what.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    /// Group -> bit set of workers (bit `i` is worker `i`).
    pub groups: imbl::HashMap<Arc<str>, u64>,
    /// Bumped by every change; lets a follower (the Redis membership loop)
    /// say how far it has caught up.
    pub epoch: u64,
}

/// The bit that stands for "a peer node wants this group": set while any
/// backplane link carries the group, so that the Redis ingest registers
/// it even when no local client holds it. Never a worker.
pub const PEERS: usize = 63;
const LOCAL: u64 = !(1u64 << PEERS);

/// The most workers a node can have: one bit each in a `u64`, but the
/// peers' bit.
pub const MAX_WORKERS: usize = 63;

/// Transitions the log keeps; a follower further behind resyncs.
const LOG_LIMIT: usize = 1 << 16;

impl RouteTable {
    /// Groups some local client holds (what this node tells its peers it
    /// wants; groups only peers want are not passed on).
    pub fn local_groups(&self) -> impl Iterator<Item = &Arc<str>> {
        self.groups
            .iter()
            .filter(|(_, m)| **m & LOCAL != 0)
            .map(|(g, _)| g)
    }

    /// The workers holding `group` (the peers' bit removed).
    pub fn local_mask(mask: u64) -> u64 {
        mask & LOCAL
    }
}

/// How one group's holding changed in one publication. `local`: whether
/// some local client holds it now (`Some(true)`), no longer
/// (`Some(false)`), or unchanged (`None`); `any`: the same for anyone,
/// peers included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub group: Arc<str>,
    pub local: Option<bool>,
    pub any: Option<bool>,
}

/// What a follower missed since the epoch it last saw.
#[derive(Debug, PartialEq, Eq)]
pub enum Changes {
    /// In order; apply them one by one.
    Transitions(Vec<Transition>),
    /// The log no longer reaches back that far: compare with a snapshot.
    Resync,
}

#[derive(Default)]
struct Log {
    /// (epoch, its transitions), oldest first.
    entries: VecDeque<(u64, Vec<Transition>)>,
    transitions: usize,
    /// The newest epoch ever trimmed away (0: none).
    trimmed_upto: u64,
}

pub struct Routes {
    table: ArcSwap<RouteTable>,
    /// Serialises writers, and holds the transition log; readers of the
    /// table never touch it.
    write: Mutex<Log>,
    /// Signalled after each change (a stored permit: none is missed).
    changed: Notify,
    /// The latest epoch, for any number of followers (peer links).
    epoch: watch::Sender<u64>,
}

impl Default for Routes {
    fn default() -> Self {
        Self {
            table: ArcSwap::from_pointee(RouteTable::default()),
            write: Mutex::new(Log::default()),
            changed: Notify::new(),
            epoch: watch::channel(0).0,
        }
    }
}

impl Routes {
    /// The current snapshot. Cheap; never blocks.
    pub fn load(&self) -> Guard<Arc<RouteTable>> {
        self.table.load()
    }

    /// The current snapshot, owned (for holding across an `.await`).
    pub fn load_full(&self) -> Arc<RouteTable> {
        self.table.load_full()
    }

    /// Distinct groups held on the node (local clients or peers).
    pub fn len(&self) -> usize {
        self.table.load().groups.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waits for the next change after the last wait.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    /// Follows the epoch: `changed()` wakes after every change (several
    /// changes may be seen as one; the table then holds all of them).
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.epoch.subscribe()
    }

    /// What changed after `epoch`, and the epoch that brings a follower to.
    pub fn since(&self, epoch: u64) -> (Changes, u64) {
        let log = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let current = log
            .entries
            .back()
            .map_or(epoch.max(log.trimmed_upto), |(e, _)| *e);
        if epoch < log.trimmed_upto {
            return (Changes::Resync, self.table.load().epoch);
        }
        let out = log
            .entries
            .iter()
            .filter(|(e, _)| *e > epoch)
            .flat_map(|(_, t)| t.iter().cloned())
            .collect();
        (Changes::Transitions(out), current.max(epoch))
    }

    /// Publishes `worker`'s changes and returns the new epoch (`None` when
    /// there was nothing to change). The cost is that of the change: the
    /// persistent map shares everything it did not touch, and the
    /// transitions go to the log for followers.
    pub fn apply(&self, worker: usize, delta: &RouteDelta) -> Option<u64> {
        if delta.is_empty() {
            return None;
        }
        let bit = 1u64 << worker;
        // A poisoned lock only means another writer panicked mid-change;
        // the published table is still whole, so carry on.
        let mut log = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let mut table = RouteTable::clone(&self.table.load());
        let mut transitions = Vec::with_capacity(delta.held.len() + delta.freed.len());
        let mut note = |group: &Arc<str>, before: u64, after: u64| {
            let flip = |b: bool, a: bool| (b != a).then_some(a);
            let local = flip(before & LOCAL != 0, after & LOCAL != 0);
            let any = flip(before != 0, after != 0);
            if local.is_some() || any.is_some() {
                transitions.push(Transition {
                    group: group.clone(),
                    local,
                    any,
                });
            }
        };
        for g in &delta.held {
            let before = table.groups.get(g).copied().unwrap_or(0);
            table.groups.insert(g.clone(), before | bit);
            note(g, before, before | bit);
        }
        for g in &delta.freed {
            if let Some(&before) = table.groups.get(g) {
                let after = before & !bit;
                if after == 0 {
                    table.groups.remove(g);
                } else {
                    table.groups.insert(g.clone(), after);
                }
                note(g, before, after);
            }
        }
        table.epoch += 1;
        let epoch = table.epoch;
        log.transitions += transitions.len();
        log.entries.push_back((epoch, transitions));
        while log.transitions > LOG_LIMIT && log.entries.len() > 1 {
            if let Some((e, t)) = log.entries.pop_front() {
                log.transitions -= t.len();
                log.trimmed_upto = e;
            }
        }
        self.table.store(Arc::new(table));
        drop(log);
        self.changed.notify_one();
        self.epoch.send_replace(epoch);
        Some(epoch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delta(held: &[&str], freed: &[&str]) -> RouteDelta {
        RouteDelta {
            held: held.iter().map(|&g| g.into()).collect(),
            freed: freed.iter().map(|&g| g.into()).collect(),
        }
    }

    #[test]
    fn workers_flip_only_their_own_bit() {
        let r = Routes::default();
        r.apply(0, &delta(&["a", "b"], &[]));
        r.apply(3, &delta(&["b"], &[]));
        let before = r.load();
        assert_eq!(before.groups.get("b"), Some(&0b1001));
        assert_eq!(r.apply(0, &delta(&[], &["a", "b"])), Some(3));
        assert_eq!(r.apply(0, &delta(&[], &[])), None);
        let now = r.load();
        assert_eq!(now.groups.get("a"), None);
        assert_eq!(now.groups.get("b"), Some(&0b1000));
        assert_eq!(now.epoch, 3);
        // An old snapshot held by a reader is untouched.
        assert_eq!(before.groups.get("a"), Some(&1));
    }

    fn t(group: &str, local: Option<bool>, any: Option<bool>) -> Transition {
        Transition {
            group: group.into(),
            local,
            any,
        }
    }

    #[test]
    fn followers_read_node_level_transitions() {
        let r = Routes::default();
        r.apply(0, &delta(&["a"], &[]));
        // Held on a second worker: no node-level change.
        r.apply(1, &delta(&["a"], &[]));
        // Wanted by peers only.
        r.apply(PEERS, &delta(&["p"], &[]));
        // A local client takes a group peers want: local changes, any not.
        r.apply(2, &delta(&["p"], &[]));
        r.apply(0, &delta(&[], &["a"]));
        r.apply(1, &delta(&[], &["a"]));
        let (changes, epoch) = r.since(0);
        assert_eq!(epoch, 6);
        assert_eq!(
            changes,
            Changes::Transitions(vec![
                t("a", Some(true), Some(true)),
                t("p", None, Some(true)),
                t("p", Some(true), None),
                t("a", Some(false), Some(false)),
            ])
        );
        assert_eq!(
            r.since(4),
            (
                Changes::Transitions(vec![t("a", Some(false), Some(false))]),
                6
            )
        );
        assert_eq!(r.since(6), (Changes::Transitions(vec![]), 6));
    }

    #[test]
    fn a_follower_behind_the_log_resyncs() {
        let r = Routes::default();
        for i in 0..(LOG_LIMIT + 10) {
            r.apply(0, &delta(&[&format!("g{i}")], &[]));
        }
        assert!(matches!(r.since(0), (Changes::Resync, _)));
        let latest = r.load().epoch;
        assert!(
            matches!(r.since(latest - 1), (Changes::Transitions(v), e) if v.len() == 1 && e == latest)
        );
    }
}
