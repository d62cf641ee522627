//! What a receiver has delivered of each sending run, per group: the
//! broker backplane's exactly-once. A resend, a replay's overlap, or a
//! restarted sender's replay of its Redis stream carries sequences this
//! node already delivered; they are recognised here and dropped. I/O-free:
//! `broker.rs` feeds it, and a resume point saves and restores its marks.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use super::{resume, wire};

/// Sending runs (and sending nodes' stream marks) remembered per group:
/// past it the oldest is forgotten, so a hostile or churning cluster
/// cannot grow a group's entry without bound.
const RUNS_PER_GROUP: usize = 64;

/// What this node has delivered from each sending run, per group: an
/// event at or below the mark was seen (a resend, a replay's overlap).
/// And per group and sending node, whatever the run, the latest entry of
/// that node's Redis stream delivered: what a restarted node replays of it
/// and this node already has is dropped.
#[derive(Default)]
pub struct Seen {
    groups: HashMap<Arc<str>, GroupSeen>,
    /// Bumped by every admitted event: whether a resume point is stale.
    changes: u64,
}

#[derive(Default)]
struct GroupSeen {
    runs: VecDeque<(String, u64, u64)>,
    stream: VecDeque<(String, wire::StreamId)>,
}

impl Seen {
    /// Whether `(node, incarnation, seq)` in `group`, from `origin`, is
    /// new; records it.
    pub fn admit(
        &mut self,
        group: &str,
        node: &str,
        incarnation: u64,
        seq: u64,
        origin: wire::Origin,
    ) -> bool {
        let g = match self.groups.get_mut(group) {
            Some(g) => g,
            None => self.groups.entry(Arc::from(group)).or_default(),
        };
        let runs = &mut g.runs;
        match runs
            .iter_mut()
            .find(|(n, i, _)| *i == incarnation && n == node)
        {
            Some(run) if seq <= run.2 => return false,
            Some(run) => run.2 = seq,
            None => {
                if runs.len() >= RUNS_PER_GROUP {
                    runs.pop_front();
                }
                runs.push_back((node.to_owned(), incarnation, seq));
            }
        }
        self.changes += 1;
        let Some(id) = origin.id() else {
            return true;
        };
        match g.stream.iter_mut().find(|(n, _)| n == node) {
            // Sequence order is the sender's stream order: the mark only
            // moves forward within a run, and a live entry of a recreated
            // stream moves it down rather than being taken for a replay.
            Some((_, upto)) => {
                if matches!(origin, wire::Origin::Replay(_)) && id <= *upto {
                    return false;
                }
                *upto = id;
            }
            None => {
                if g.stream.len() >= RUNS_PER_GROUP {
                    g.stream.pop_front();
                }
                g.stream.push_back((node.to_owned(), id));
            }
        }
        true
    }

    /// The group is no longer held here: what was seen of it goes.
    pub fn forget(&mut self, group: &str) {
        if self.groups.remove(group).is_some() {
            self.changes += 1;
        }
    }

    /// Keeps only the groups `held` says yes to.
    pub fn retain(&mut self, mut held: impl FnMut(&str) -> bool) {
        let before = self.groups.len();
        self.groups.retain(|g, _| held(g));
        if self.groups.len() != before {
            self.changes += 1;
        }
    }

    /// How many changes so far (compare two readings).
    pub fn changes(&self) -> u64 {
        self.changes
    }

    /// What was delivered of each of `groups` (empty marks for a group
    /// nothing was delivered of yet), for a resume point.
    pub fn marks<'a>(&self, groups: impl Iterator<Item = &'a str>) -> Vec<resume::GroupMarks> {
        groups
            .map(|g| match self.groups.get(g) {
                Some(s) => resume::GroupMarks {
                    group: g.to_owned(),
                    runs: s.runs.iter().cloned().collect(),
                    stream: s.stream.iter().cloned().collect(),
                },
                None => resume::GroupMarks {
                    group: g.to_owned(),
                    ..Default::default()
                },
            })
            .collect()
    }

    /// Takes the marks a previous run of this node saved (bounded as
    /// `admit` bounds them).
    pub fn restore(&mut self, marks: Vec<resume::GroupMarks>) {
        fn newest<T>(v: Vec<T>) -> VecDeque<T> {
            let skip = v.len().saturating_sub(RUNS_PER_GROUP);
            v.into_iter().skip(skip).collect()
        }
        for m in marks {
            self.groups.insert(
                Arc::from(m.group),
                GroupSeen {
                    runs: newest(m.runs),
                    stream: newest(m.stream),
                },
            );
        }
        self.changes += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seen_drops_repeats_per_group_and_run() {
        let none = wire::Origin::None;
        let mut s = Seen::default();
        assert!(s.admit("g", "a", 1, 5, none));
        assert!(!s.admit("g", "a", 1, 5, none));
        assert!(!s.admit("g", "a", 1, 3, none));
        assert!(s.admit("g", "a", 1, 6, none));
        // Another group, another run, another node: their own marks.
        assert!(s.admit("h", "a", 1, 2, none));
        assert!(s.admit("g", "a", 2, 1, none));
        assert!(s.admit("g", "b", 1, 1, none));
        s.forget("g");
        assert!(s.admit("g", "a", 1, 1, none));
    }

    #[test]
    fn seen_drops_a_restarted_senders_replay_of_what_it_delivered() {
        let id = |seq| wire::StreamId { ms: 100, seq };
        let (live, replay) = (wire::Origin::Live, wire::Origin::Replay);
        let mut s = Seen::default();
        assert!(s.admit("g", "a", 1, 1, live(id(1))));
        assert!(s.admit("g", "a", 1, 2, live(id(2))));
        // Run 2 of node a replays entries 1..=3: only 3 is new here.
        assert!(!s.admit("g", "a", 2, 1, replay(id(1))));
        assert!(!s.admit("g", "a", 2, 2, replay(id(2))));
        assert!(s.admit("g", "a", 2, 3, replay(id(3))));
        assert!(s.admit("g", "a", 2, 4, live(id(4))));
        // Another node's entries, and another group, have their own marks.
        assert!(s.admit("g", "b", 1, 1, replay(id(1))));
        assert!(s.admit("h", "a", 2, 5, replay(id(2))));
        // A recreated stream starts lower: live entries go through.
        assert!(s.admit("g", "a", 3, 1, live(wire::StreamId { ms: 1, seq: 0 })));
    }
}
