//! Which workers hold subscribers of which group: a read-mostly snapshot
//! behind `arc-swap`. The emit path loads it without a lock; a worker whose
//! hub started or stopped holding a group publishes a new snapshot.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arc_swap::{ArcSwap, Guard};
use tokio::sync::{watch, Notify};

use super::hub::RouteDelta;

/// One snapshot of who holds what.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    /// Group -> bit set of workers (bit `i` is worker `i`).
    pub groups: HashMap<Arc<str>, u64>,
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

pub struct Routes {
    table: ArcSwap<RouteTable>,
    /// Serialises writers only; readers never touch it.
    write: Mutex<()>,
    /// Signalled after each change (a stored permit: none is missed).
    changed: Notify,
    /// The latest epoch, for any number of followers (peer links).
    epoch: watch::Sender<u64>,
}

impl Default for Routes {
    fn default() -> Self {
        Self {
            table: ArcSwap::from_pointee(RouteTable::default()),
            write: Mutex::new(()),
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

    /// Waits for the next change after the last wait.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    /// Follows the epoch: `changed()` wakes after every change (several
    /// changes may be seen as one; the table then holds all of them).
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.epoch.subscribe()
    }

    /// Publishes `worker`'s changes and returns the new epoch (`None` when
    /// there was nothing to change). Copy-on-write: the cost is one clone of
    /// the table per call, paid by the subscribing side, never by emitters.
    pub fn apply(&self, worker: usize, delta: &RouteDelta) -> Option<u64> {
        if delta.is_empty() {
            return None;
        }
        let bit = 1u64 << worker;
        // A poisoned lock only means another writer panicked mid-clone; the
        // published table is still whole, so carry on.
        let _guard = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let mut table = RouteTable::clone(&self.table.load());
        for g in &delta.held {
            *table.groups.entry(g.clone()).or_insert(0) |= bit;
        }
        for g in &delta.freed {
            if let Some(mask) = table.groups.get_mut(&**g) {
                *mask &= !bit;
                if *mask == 0 {
                    table.groups.remove(&**g);
                }
            }
        }
        table.epoch += 1;
        let epoch = table.epoch;
        self.table.store(Arc::new(table));
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
}
