//! Where a node restarted on the broker picks up (JetStream only).
//!
//! A node that lost its broker connection replays the stream from a
//! checkpoint it took before the loss, and its de-duplication marks (what
//! it delivered from each sending run, per group) drop the overlap. A
//! restarted node has neither in memory, so the broker keeps them for it:
//! once a second while something changed, and once more at shutdown, the
//! node saves a *resume point* (the stream sequence a replay would start
//! from and the marks of every group its clients hold) to a key-value
//! bucket next to the stream. At start it reads its point back, waits
//! `--backlog-hold-ms` for its clients to reconnect and subscribe, then
//! replays the stream from the point for the groups that were held then
//! and are held again; the marks drop what the previous run delivered.
//!
//! After a shutdown the point is exact (it is saved after the last
//! delivery): nothing is lost or repeated. After a crash it is at most one
//! saving interval old: what the previous run delivered in its last second
//! comes again (at least once, never lost). This module is the point and
//! its encoding; the broker thread does the saving and the reading.

use std::collections::HashMap;

use bytes::{BufMut, Bytes, BytesMut};

use super::is_node_name;
use super::wire::StreamId;

/// What a restarted node needs to resume its groups.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ResumePoint {
    /// When it was saved (Unix milliseconds): a point older than the
    /// stream's window is of no use.
    pub saved_at_ms: u64,
    /// A replay starts after this stream sequence: everything this node
    /// had not received when the point was saved is stored after it.
    pub stream_seq: u64,
    pub groups: Vec<GroupMarks>,
}

/// What was delivered here of one group.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GroupMarks {
    pub group: String,
    /// Per sending run `(node, incarnation)`, the highest sequence delivered.
    pub runs: Vec<(String, u64, u64)>,
    /// Per sending node, the last entry of its Redis stream delivered.
    pub stream: Vec<(String, StreamId)>,
}

/// Why a stored point could not be read (it is then ignored: the node
/// starts fresh, and says so).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResumeError {
    #[error("not a resume point (bad magic or version)")]
    Version,
    #[error("truncated")]
    Truncated,
    #[error("a node name that is not one")]
    BadNode,
    #[error("a group name that is not UTF-8 or is too long")]
    BadGroup,
    #[error("a node index out of range")]
    BadIndex,
    #[error("{0} bytes after the end")]
    Trailing(usize),
}

const MAGIC: &[u8; 4] = b"wsrp";
const VERSION: u8 = 1;
/// Each run or stream mark: node index, two u64.
const MARK: usize = 2 + 8 + 8;
/// The empty point: magic, version, time, sequence, node and group counts.
pub const HEAD: usize = 4 + 1 + 8 + 8 + 2 + 4;

/// The key a node's point is stored under: `n.<name>` for names a key can
/// carry as they are, `h.<hex>` for the rest (a leading, trailing or
/// doubled dot), so no two names share a key.
pub fn key(node: &str) -> String {
    if node.starts_with('.') || node.ends_with('.') || node.contains("..") {
        let mut k = String::from("h.");
        for b in node.bytes() {
            k.push_str(&format!("{b:02x}"));
        }
        k
    } else {
        format!("n.{node}")
    }
}

/// The bucket next to `stream`: its name with anything a bucket name
/// cannot hold as `_`, then `_resume`.
pub fn bucket(stream: &str) -> String {
    let mut b: String = stream
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    b.push_str("_resume");
    b
}

impl ResumePoint {
    /// The point in at most `budget` bytes (`HEAD` bytes at least: the
    /// empty point), and how many groups did not fit. Groups are left out
    /// whole (those start fresh after a restart rather than with half
    /// their marks), and the node table holds only the nodes the kept
    /// groups name, so it counts against the budget with them: a node
    /// that heard from hundreds of senders still saves what fits.
    pub fn encode(&self, budget: usize) -> (Bytes, usize) {
        fn names(g: &GroupMarks) -> Vec<&str> {
            g.runs
                .iter()
                .map(|r| r.0.as_str())
                .chain(g.stream.iter().map(|s| s.0.as_str()))
                .collect()
        }
        // First which groups fit, with the table entries each adds.
        let mut index: HashMap<&str, u16> = HashMap::new();
        let mut nodes: Vec<&str> = Vec::new();
        let mut kept: Vec<(&GroupMarks, Vec<&str>)> = Vec::new();
        let mut size = HEAD;
        let mut left_out = 0usize;
        for g in &self.groups {
            let named = names(g);
            let mut new: Vec<&str> = Vec::new();
            for n in &named {
                if !index.contains_key(n) && !new.contains(n) {
                    new.push(n);
                }
            }
            let need = 2
                + g.group.len()
                + 4
                + MARK * named.len()
                + new.iter().map(|n| 1 + n.len()).sum::<usize>();
            let fits = g.group.len() <= u16::MAX as usize
                && g.runs.len() <= u16::MAX as usize
                && g.stream.len() <= u16::MAX as usize
                && new.iter().all(|n| n.len() <= u8::MAX as usize)
                && nodes.len() + new.len() <= u16::MAX as usize
                && size + need <= budget;
            if !fits {
                left_out += 1;
                continue;
            }
            for n in new {
                index.insert(n, nodes.len() as u16);
                nodes.push(n);
            }
            size += need;
            kept.push((g, named));
        }
        let mut out = BytesMut::with_capacity(size);
        out.put_slice(MAGIC);
        out.put_u8(VERSION);
        out.put_u64(self.saved_at_ms);
        out.put_u64(self.stream_seq);
        out.put_u16(nodes.len() as u16);
        for n in &nodes {
            out.put_u8(n.len() as u8);
            out.put_slice(n.as_bytes());
        }
        out.put_u32(kept.len() as u32);
        for (g, named) in &kept {
            // Every name was entered in the table above.
            let mut ids = named.iter().map(|n| index.get(n).copied().unwrap_or(0));
            out.put_u16(g.group.len() as u16);
            out.put_slice(g.group.as_bytes());
            out.put_u16(g.runs.len() as u16);
            for (_, inc, seq) in &g.runs {
                out.put_u16(ids.next().unwrap_or(0));
                out.put_u64(*inc);
                out.put_u64(*seq);
            }
            out.put_u16(g.stream.len() as u16);
            for (_, id) in &g.stream {
                out.put_u16(ids.next().unwrap_or(0));
                out.put_u64(id.ms);
                out.put_u64(id.seq);
            }
        }
        debug_assert_eq!(out.len(), size);
        (out.freeze(), left_out)
    }

    /// Reads a point written by `encode`; groups longer than
    /// `max_group_name` are refused with the rest.
    pub fn decode(b: &[u8], max_group_name: usize) -> Result<ResumePoint, ResumeError> {
        let mut r = Reader(b);
        if r.take(4)? != MAGIC || r.u8()? != VERSION {
            return Err(ResumeError::Version);
        }
        let saved_at_ms = r.u64()?;
        let stream_seq = r.u64()?;
        let n = r.u16()? as usize;
        let mut nodes = Vec::with_capacity(n.min(r.0.len()));
        for _ in 0..n {
            let len = r.u8()? as usize;
            let name = std::str::from_utf8(r.take(len)?).map_err(|_| ResumeError::BadNode)?;
            if !is_node_name(name) {
                return Err(ResumeError::BadNode);
            }
            nodes.push(name.to_owned());
        }
        let node = |i: u16| nodes.get(i as usize).cloned().ok_or(ResumeError::BadIndex);
        let count = r.u32()? as usize;
        // Each group takes at least 6 bytes: a count past what is left is
        // a lie, not an allocation.
        let mut groups = Vec::with_capacity(count.min(r.0.len() / 6));
        for _ in 0..count {
            let len = r.u16()? as usize;
            let group = std::str::from_utf8(r.take(len)?).map_err(|_| ResumeError::BadGroup)?;
            if group.is_empty() || group.len() > max_group_name {
                return Err(ResumeError::BadGroup);
            }
            let nruns = r.u16()? as usize;
            let mut runs = Vec::with_capacity(nruns.min(r.0.len() / MARK));
            for _ in 0..nruns {
                runs.push((node(r.u16()?)?, r.u64()?, r.u64()?));
            }
            let nstream = r.u16()? as usize;
            let mut stream = Vec::with_capacity(nstream.min(r.0.len() / MARK));
            for _ in 0..nstream {
                let n = node(r.u16()?)?;
                stream.push((
                    n,
                    StreamId {
                        ms: r.u64()?,
                        seq: r.u64()?,
                    },
                ));
            }
            groups.push(GroupMarks {
                group: group.to_owned(),
                runs,
                stream,
            });
        }
        if !r.0.is_empty() {
            return Err(ResumeError::Trailing(r.0.len()));
        }
        Ok(ResumePoint {
            saved_at_ms,
            stream_seq,
            groups,
        })
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ResumeError> {
        let (a, b) = self.0.split_at_checked(n).ok_or(ResumeError::Truncated)?;
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, ResumeError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, ResumeError> {
        Ok(u16::from_be_bytes(
            self.take(2)?.try_into().unwrap_or_default(),
        ))
    }
    fn u32(&mut self) -> Result<u32, ResumeError> {
        Ok(u32::from_be_bytes(
            self.take(4)?.try_into().unwrap_or_default(),
        ))
    }
    fn u64(&mut self) -> Result<u64, ResumeError> {
        Ok(u64::from_be_bytes(
            self.take(8)?.try_into().unwrap_or_default(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point() -> ResumePoint {
        ResumePoint {
            saved_at_ms: 1_700_000_000_000,
            stream_seq: 42,
            groups: vec![
                GroupMarks {
                    group: "job_events-1".into(),
                    runs: vec![("a".into(), 7, 500), ("b.x".into(), 9, 3)],
                    stream: vec![("a".into(), StreamId { ms: 5, seq: 1 })],
                },
                GroupMarks {
                    group: "jobs-status_changed".into(),
                    runs: vec![("b.x".into(), 9, 4)],
                    stream: vec![],
                },
            ],
        }
    }

    #[test]
    fn a_point_comes_back_as_it_was_saved() {
        let p = point();
        let (b, left_out) = p.encode(1 << 20);
        assert_eq!(left_out, 0);
        assert_eq!(ResumePoint::decode(&b, 256).unwrap(), p);
        let empty = ResumePoint::default();
        assert_eq!(
            ResumePoint::decode(&empty.encode(64).0, 256).unwrap(),
            empty
        );
    }

    #[test]
    fn groups_past_the_budget_are_left_out_whole() {
        let p = point();
        let full = p.encode(1 << 20).0.len();
        // The second group takes 2 + 19 + 4 + 18 bytes.
        let (b, left_out) = p.encode(full - 1);
        assert_eq!(left_out, 1);
        assert!(b.len() < full);
        let back = ResumePoint::decode(&b, 256).unwrap();
        assert_eq!(back.groups, p.groups[..1]);
    }

    #[test]
    fn the_node_table_counts_against_the_budget() {
        // 400 senders with 64-byte names, each heard in its own group: the
        // table alone would be 26 KB, past a 4 KiB budget.
        let name = |i: usize| format!("{i:0>64}");
        let p = ResumePoint {
            saved_at_ms: 1,
            stream_seq: 2,
            groups: (0..400)
                .map(|i| GroupMarks {
                    group: format!("job_events-{i}"),
                    runs: vec![(name(i), 1, 10), (name(0), 1, 3)],
                    stream: vec![],
                })
                .collect(),
        };
        let budget = 4096;
        let (b, left_out) = p.encode(budget);
        assert!(b.len() <= budget, "{} bytes", b.len());
        let back = ResumePoint::decode(&b, 256).unwrap();
        assert!(!back.groups.is_empty());
        assert_eq!(back.groups.len() + left_out, 400);
        // The kept groups are the first ones, whole, and nothing else.
        assert_eq!(back.groups, p.groups[..back.groups.len()]);
        // A group after one that did not fit is kept if it fits.
        let mut q = p.clone();
        q.groups.truncate(back.groups.len());
        let big = GroupMarks {
            group: "x".repeat(5000),
            runs: vec![],
            stream: vec![],
        };
        q.groups.insert(0, big);
        let (b, left_out) = q.encode(budget);
        assert_eq!(left_out, 1);
        assert_eq!(
            ResumePoint::decode(&b, 8192).unwrap().groups,
            p.groups[..back.groups.len()]
        );
        // Too small for anything but the empty point.
        let (b, left_out) = p.encode(HEAD);
        assert_eq!((b.len(), left_out), (HEAD, 400));
    }

    #[test]
    fn a_damaged_point_is_refused_not_trusted() {
        let b = point().encode(1 << 20).0;
        for cut in 0..b.len() {
            assert!(ResumePoint::decode(&b[..cut], 256).is_err(), "cut at {cut}");
        }
        let mut longer = b.to_vec();
        longer.push(0);
        assert_eq!(
            ResumePoint::decode(&longer, 256),
            Err(ResumeError::Trailing(1))
        );
        let mut v2 = b.to_vec();
        v2[4] = 2;
        assert_eq!(ResumePoint::decode(&v2, 256), Err(ResumeError::Version));
        assert_eq!(
            ResumePoint::decode(&b, 5),
            Err(ResumeError::BadGroup),
            "a group longer than allowed"
        );
        // A count of four billion groups in a few bytes: refused as
        // truncated, without reserving room for them.
        let mut lie = BytesMut::new();
        lie.put_slice(MAGIC);
        lie.put_u8(VERSION);
        lie.put_u64(0);
        lie.put_u64(0);
        lie.put_u16(0);
        lie.put_u32(u32::MAX);
        assert_eq!(ResumePoint::decode(&lie, 256), Err(ResumeError::Truncated));
        // A node index past the table.
        let mut bad = BytesMut::new();
        bad.put_slice(MAGIC);
        bad.put_u8(VERSION);
        bad.put_u64(0);
        bad.put_u64(0);
        bad.put_u16(0);
        bad.put_u32(1);
        bad.put_u16(1);
        bad.put_slice(b"g");
        bad.put_u16(1);
        bad.put_u16(0);
        bad.put_u64(1);
        bad.put_u64(1);
        bad.put_u16(0);
        assert_eq!(ResumePoint::decode(&bad, 256), Err(ResumeError::BadIndex));
    }

    #[test]
    fn keys_and_buckets_are_valid_and_distinct() {
        assert_eq!(key("awx-1.example"), "n.awx-1.example");
        assert_eq!(key(".a"), "h.2e61");
        assert_eq!(key("a..b"), "h.612e2e62");
        assert_ne!(key("h.2e61"), key(".a"));
        assert_eq!(bucket("WSRELAY"), "WSRELAY_resume");
        assert_eq!(bucket("my.stream"), "my_stream_resume");
    }
}
