//! Which workers hold subscribers of which group: a read-mostly snapshot
//! behind `arc-swap`. The emit path loads it without a lock; a worker whose
//! hub started or stopped holding a group publishes a new snapshot.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arc_swap::{ArcSwap, Guard};

use super::hub::RouteDelta;

/// Group -> bit set of workers (bit `i` is worker `i`; at most 64 workers).
pub type RouteTable = HashMap<Arc<str>, u64>;

/// The most workers a node can have: one bit each in a `u64`.
pub const MAX_WORKERS: usize = 64;

pub struct Routes {
    table: ArcSwap<RouteTable>,
    /// Serialises writers only; readers never touch it.
    write: Mutex<()>,
}

impl Default for Routes {
    fn default() -> Self {
        Self {
            table: ArcSwap::from_pointee(RouteTable::new()),
            write: Mutex::new(()),
        }
    }
}

impl Routes {
    /// The current snapshot. Cheap; never blocks.
    pub fn load(&self) -> Guard<Arc<RouteTable>> {
        self.table.load()
    }

    /// Publishes `worker`'s changes. Copy-on-write: the cost is one clone of
    /// the table per call, paid by the subscribing side, never by emitters.
    pub fn apply(&self, worker: usize, delta: &RouteDelta) {
        if delta.is_empty() {
            return;
        }
        let bit = 1u64 << worker;
        // A poisoned lock only means another writer panicked mid-clone; the
        // published table is still whole, so carry on.
        let _guard = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let mut table = RouteTable::clone(&self.table.load());
        for g in &delta.held {
            *table.entry(g.clone()).or_insert(0) |= bit;
        }
        for g in &delta.freed {
            if let Some(mask) = table.get_mut(&**g) {
                *mask &= !bit;
                if *mask == 0 {
                    table.remove(&**g);
                }
            }
        }
        self.table.store(Arc::new(table));
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
        assert_eq!(before.get("b"), Some(&0b1001));
        r.apply(0, &delta(&[], &["a", "b"]));
        let now = r.load();
        assert_eq!(now.get("a"), None);
        assert_eq!(now.get("b"), Some(&0b1000));
        // An old snapshot held by a reader is untouched.
        assert_eq!(before.get("a"), Some(&1));
    }
}
