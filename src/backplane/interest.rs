//! The groups this node's clients hold, as the backplane's engines tell
//! them to the rest of the cluster: a native link sends them to its peer,
//! the broker subscribes to them.

use std::collections::HashSet;
use std::sync::Arc;

use crate::fanout::{Changes, Routes};

/// What this node has told one follower (a peer link, the broker) about
/// the groups its clients hold, kept current from the routes' transition
/// log: each change costs what changed, not a diff of the whole table.
pub struct LocalInterest {
    sent: HashSet<Arc<str>>,
    /// The routes epoch `sent` reflects.
    pub epoch: u64,
}

impl LocalInterest {
    /// The groups held now (to send whole) and the follower.
    pub fn start(routes: &Routes) -> (LocalInterest, Vec<Arc<str>>) {
        let table = routes.load_full();
        let sent: HashSet<Arc<str>> = table.local_groups().cloned().collect();
        let all = sent.iter().cloned().collect();
        (
            LocalInterest {
                sent,
                epoch: table.epoch,
            },
            all,
        )
    }

    /// The local groups added and removed since the last call.
    pub fn catch_up(&mut self, routes: &Routes) -> (Vec<Arc<str>>, Vec<Arc<str>>) {
        let (changes, epoch) = routes.since(self.epoch);
        let (mut added, mut removed) = (Vec::new(), Vec::new());
        match changes {
            Changes::Transitions(ts) => {
                for t in ts {
                    match t.local {
                        Some(true) if self.sent.insert(t.group.clone()) => added.push(t.group),
                        Some(false) if self.sent.remove(&t.group) => removed.push(t.group),
                        _ => {}
                    }
                }
                // A group held and freed again within the window is in
                // both lists; the net effect is what the set says.
                added.retain(|g| self.sent.contains(g));
                removed.retain(|g| !self.sent.contains(g));
            }
            Changes::Resync => {
                let table = routes.load_full();
                let now: HashSet<Arc<str>> = table.local_groups().cloned().collect();
                added = now.difference(&self.sent).cloned().collect();
                removed = self.sent.difference(&now).cloned().collect();
                self.sent = now;
            }
        }
        self.epoch = epoch;
        (added, removed)
    }
}
