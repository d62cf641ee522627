//! Node-to-node links (the backplane).
//!
//! Every node dials every configured peer (`link`, on one backplane thread)
//! and serves the links other nodes dial (`transport::peer`, on the
//! workers). A native link carries events one way, dialer to dialed, in
//! batched binary frames (`wire`); the dialed node answers with its
//! interest and acknowledgements. AWX's two JSON forms (`awx`) are spoken
//! to AWX nodes. This module holds what both sides share: the outbox of
//! owed events, what each sending peer has delivered here (for resume and
//! de-duplication), and who has acknowledged which interest epoch.

pub mod awx;
pub mod broker;
pub mod handshake;
pub mod heartbeat;
pub mod interest;
pub mod link;
pub mod outbox;
pub mod peer;
pub mod resume;
pub mod secret;
pub mod seen;
pub mod stats;
pub mod wire;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;

pub use outbox::{Interest, Outbox, Sink, SinkLimits};
pub use peer::{PeerProtocol, PeerSpec};

use crate::fanout::{RouteDelta, RouteError, Router, Routes, PEERS};
use crate::metrics::{LinkMetrics, Metrics};

/// Sending nodes whose resume point is remembered at most; past it the
/// longest silent is forgotten (it starts afresh if it ever comes back).
pub const MAX_SENDERS: usize = 256;

/// Whether `s` is acceptable as a node's name: 1 to 64 letters, digits,
/// `.`, `-` or `_` (a host name). Names travel in peer messages and become
/// metric labels and AWX stats keys, so nothing else is let through.
pub fn is_node_name(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

/// What one sending node has delivered here.
#[derive(Debug, Clone, Copy)]
struct FromPeer {
    incarnation: u64,
    last_seq: u64,
    /// The latest entry of the node's Redis stream delivered here, whatever
    /// the run: a restarted node replays what its peers may have missed,
    /// and what this node already has of it is dropped.
    stream_upto: Option<wire::StreamId>,
    /// Bumped by each new link from the node; an older link still running
    /// sees the change and stops, so two links never interleave.
    generation: u64,
    /// The last hello, to choose whom to forget past `MAX_SENDERS`.
    seen: u64,
}

/// What to do with a received batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admit {
    /// Leading events already delivered (a resend overlap): skip them.
    pub skip: u64,
    /// Events the sequence numbers show were never received.
    pub gap: u64,
}

/// Why a peer's interest was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InterestError {
    #[error("empty or too long group name in a peer's interest")]
    BadName,
    #[error(transparent)]
    TooMany(#[from] outbox::TooManyGroups),
}

/// Bounds on what peers may ask of this node.
#[derive(Debug, Clone, Copy)]
pub struct InterestLimits {
    pub max_group_name: usize,
    /// Groups one link's interest may hold (the node's group limit).
    pub max_node_groups: usize,
}

/// A newer link from the same node replaced this one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("superseded by a newer link from the same node")]
pub struct Superseded;

/// The backplane state a node's workers and links share.
pub struct Backplane {
    pub node_id: String,
    /// Random per process start: peers tell a restart from a reconnect.
    pub incarnation: u64,
    /// The shared secret; `None` refuses every peer (no open backplane).
    pub secret: Option<String>,
    pub outbox: Arc<Outbox>,
    pub metrics: Arc<Metrics>,
    pub stats: stats::RemoteStats,
    from_peers: Mutex<HashMap<String, FromPeer>>,
    /// Interest epoch each native inbound link has had acknowledged.
    interest_acks: Mutex<HashMap<u64, u64>>,
    next_link: AtomicU64,
    /// Bumped on every acknowledgement, to wake subscribe waits.
    acks_changed: watch::Sender<u64>,
    routes: Arc<Routes>,
    /// How many links carry each group; the union is published in the
    /// routes under the peers' bit (the Redis ingest registers it).
    wanted: Mutex<HashMap<Arc<str>, usize>>,
    pub limits: InterestLimits,
    /// Native dial nonces seen within the window: each is accepted once.
    pub replays: Mutex<handshake::Replays>,
    /// Set once the broker backplane runs: asks whether a peer is on the
    /// broker too (then a native link to it carries no events).
    pub presence: std::sync::OnceLock<broker::Presence>,
}

impl Backplane {
    pub fn new(
        node_id: String,
        secret: Option<String>,
        metrics: Arc<Metrics>,
        routes: Arc<Routes>,
        limits: InterestLimits,
    ) -> Self {
        Self {
            limits,
            replays: Mutex::new(handshake::Replays::default()),
            presence: std::sync::OnceLock::new(),
            node_id,
            incarnation: rand::random::<u64>() | 1,
            secret,
            outbox: Arc::new(Outbox::default()),
            metrics,
            stats: stats::RemoteStats::default(),
            from_peers: Mutex::new(HashMap::new()),
            interest_acks: Mutex::new(HashMap::new()),
            next_link: AtomicU64::new(1),
            acks_changed: watch::channel(0).0,
            routes,
            wanted: Mutex::new(HashMap::new()),
        }
    }

    /// Changes a link's interest, and the node's union of peer interest.
    /// Returns the routes epoch when the node's union of peer interest
    /// changed (the Redis ingest follows that epoch). Refused whole when
    /// a name is empty or too long, or the link would pass the node's
    /// group limit.
    pub fn set_interest(
        &self,
        sink: &Sink,
        full: bool,
        added: &[&str],
        removed: &[&str],
    ) -> Result<Option<u64>, InterestError> {
        let max_name = self.limits.max_group_name;
        if added.iter().any(|g| g.is_empty() || g.len() > max_name) {
            return Err(InterestError::BadName);
        }
        let (plus, minus) = sink.set_interest(full, added, removed, self.limits.max_node_groups)?;
        Ok(self.peers_want(plus, minus))
    }

    /// A link is gone for good: its sink leaves the outbox and its groups
    /// the union.
    pub fn drop_sink(&self, sink: &Arc<Sink>) {
        self.outbox.remove(sink);
        let (_, minus) = sink
            .set_interest(true, &[], &[], usize::MAX)
            .expect("an empty set fits any bound");
        let _ = self.peers_want(Vec::new(), minus);
    }

    fn peers_want(&self, plus: Vec<Arc<str>>, minus: Vec<Arc<str>>) -> Option<u64> {
        if plus.is_empty() && minus.is_empty() {
            return None;
        }
        let mut delta = RouteDelta::default();
        {
            let mut wanted = self.wanted.lock().unwrap_or_else(|e| e.into_inner());
            for g in plus {
                let n = wanted.entry(g.clone()).or_insert(0);
                *n += 1;
                if *n == 1 {
                    delta.held.push(g);
                }
            }
            for g in minus {
                if let Some(n) = wanted.get_mut(&g) {
                    *n -= 1;
                    if *n == 0 {
                        wanted.remove(&g);
                        delta.freed.push(g);
                    }
                }
            }
        }
        self.routes.apply(PEERS, &delta)
    }

    fn senders(&self) -> MutexGuard<'_, HashMap<String, FromPeer>> {
        self.from_peers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A sending node said hello. Returns this link's generation and where
    /// it should resume (`None`: start fresh, we never heard of that run).
    pub fn hello(&self, node: &str, incarnation: u64) -> (u64, Option<u64>) {
        let mut peers = self.senders();
        let seen = self.next_link.fetch_add(1, Ordering::Relaxed);
        if !peers.contains_key(node) && peers.len() >= MAX_SENDERS {
            // Bounded whatever names authenticated peers use: the longest
            // silent sender is forgotten, and its metric series with it.
            if let Some(oldest) = peers
                .iter()
                .min_by_key(|(_, p)| p.seen)
                .map(|(n, _)| n.clone())
            {
                peers.remove(&oldest);
                self.metrics.peers.forget(&oldest);
                self.stats.forget(&oldest);
            }
        }
        let entry = peers.entry(node.to_owned()).or_insert(FromPeer {
            incarnation,
            last_seq: 0,
            stream_upto: None,
            generation: 0,
            seen,
        });
        entry.seen = seen;
        entry.generation += 1;
        let resume = if entry.incarnation == incarnation && entry.last_seq > 0 {
            Some(entry.last_seq)
        } else {
            entry.incarnation = incarnation;
            entry.last_seq = 0;
            None
        };
        (entry.generation, resume)
    }

    /// Records a batch `first_seq ..` of `count` events from `node` and says
    /// how many leading events were already delivered, and how many are
    /// missing before it. A fresh run's first batch sets the baseline.
    pub fn admit(
        &self,
        node: &str,
        generation: u64,
        first_seq: u64,
        count: u64,
    ) -> Result<Admit, Superseded> {
        let mut peers = self.senders();
        let p = peers.get_mut(node).ok_or(Superseded)?;
        if p.generation != generation {
            return Err(Superseded);
        }
        // `wire::decode` refused batches whose last sequence would wrap.
        let last = first_seq.saturating_add(count.saturating_sub(1));
        let admit = if p.last_seq == 0 {
            Admit { skip: 0, gap: 0 }
        } else {
            Admit {
                skip: (p.last_seq + 1).saturating_sub(first_seq).min(count),
                gap: first_seq.saturating_sub(p.last_seq + 1),
            }
        };
        if count > 0 {
            p.last_seq = p.last_seq.max(last);
        }
        Ok(admit)
    }

    /// Keeps the events of a batch from `node` that are not a replay of
    /// stream entries already delivered here, and records the latest entry
    /// delivered (a sender reads its stream in order, so the latest is the
    /// highest). A live entry always goes through and moves the mark, even
    /// down: a stream that was recreated starts lower, and its entries
    /// must not be mistaken for a replay.
    pub fn not_replayed<'a>(
        &self,
        node: &str,
        events: impl Iterator<Item = (&'a str, wire::Origin, &'a [u8])>,
    ) -> Vec<(&'a str, &'a [u8])> {
        let mut peers = self.senders();
        let Some(p) = peers.get_mut(node) else {
            return events.map(|(g, _, b)| (g, b)).collect();
        };
        let mut out = Vec::new();
        for (group, origin, payload) in events {
            if let wire::Origin::Replay(id) = origin {
                if p.stream_upto.is_some_and(|upto| id <= upto) {
                    continue;
                }
            }
            if let Some(id) = origin.id() {
                p.stream_upto = Some(id);
            }
            out.push((group, payload));
        }
        out
    }

    /// A number for a new inbound link, for interest bookkeeping.
    pub fn link_id(&self) -> u64 {
        self.next_link.fetch_add(1, Ordering::Relaxed)
    }

    /// A native inbound link acknowledged interest up to `epoch`; `None`
    /// means it ended and no longer counts.
    pub fn interest_acked(&self, link: u64, epoch: Option<u64>) {
        {
            let mut acks = self.interest_acks.lock().unwrap_or_else(|e| e.into_inner());
            match epoch {
                Some(e) => {
                    let v = acks.entry(link).or_insert(0);
                    *v = (*v).max(e);
                }
                None => {
                    acks.remove(&link);
                }
            }
        }
        self.acks_changed.send_modify(|n| *n += 1);
    }

    /// Registers a link that has not acknowledged anything yet, so that
    /// subscribe replies wait for it too.
    pub fn interest_pending(&self, link: u64) {
        self.interest_acks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(link, 0);
    }

    /// The interest epoch a native inbound link has had acknowledged.
    pub fn interest_acked_upto(&self, link: u64) -> u64 {
        self.interest_acks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&link)
            .copied()
            .unwrap_or(0)
    }

    /// Waits until every connected native peer has applied interest up to
    /// `epoch`, so a subscribe reply means events emitted on those peers
    /// afterwards arrive. Bounded by the caller.
    pub async fn interest_applied(&self, epoch: u64) {
        let mut rx = self.acks_changed.subscribe();
        loop {
            let done = self
                .interest_acks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .values()
                .all(|&e| e >= epoch);
            if done || rx.changed().await.is_err() {
                return;
            }
        }
    }
}

/// One event an AWX peer pushed (either era's envelope): counted, recorded
/// for AWX's stats under `remote`, and delivered here only. An envelope
/// that cannot be read is counted and skipped; the link goes on, as AWX's
/// does.
pub async fn receive_awx_event(
    bp: &Backplane,
    router: &Router,
    m: &LinkMetrics,
    remote: &str,
    text: &[u8],
    max_group: usize,
) -> Result<(), RouteError> {
    match awx::decode_event(text) {
        Ok(e) if e.group.is_empty() || e.group.len() > max_group => {
            m.skipped.inc();
            tracing::debug!(peer = remote, "AWX event with an empty or too long group");
        }
        Ok(e) => {
            m.events_received.inc();
            m.bytes_received.inc_by(text.len() as u64);
            bp.stats.received(remote, 1, link::unix_now());
            router
                .route_from_peer([(e.group.as_str(), e.payload.as_bytes())])
                .await?;
        }
        Err(e) => {
            m.skipped.inc();
            tracing::debug!(peer = remote, error = %e, "unreadable AWX event");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bp() -> Backplane {
        Backplane::new(
            "me".into(),
            Some("s".into()),
            Arc::new(Metrics::new(1, "epoll")),
            Arc::new(Routes::default()),
            InterestLimits {
                max_group_name: 256,
                max_node_groups: 1000,
            },
        )
    }

    #[test]
    fn resume_and_dedup_follow_the_senders_run() {
        let b = bp();
        let (g1, resume) = b.hello("a", 7);
        assert_eq!(resume, None);
        assert_eq!(b.admit("a", g1, 1, 10), Ok(Admit { skip: 0, gap: 0 }));
        // Reconnect of the same run: resume after 10; an overlap is skipped.
        let (g2, resume) = b.hello("a", 7);
        assert_eq!(resume, Some(10));
        assert_eq!(b.admit("a", g1, 11, 1), Err(Superseded));
        assert_eq!(b.admit("a", g2, 9, 4), Ok(Admit { skip: 2, gap: 0 }));
        assert_eq!(b.admit("a", g2, 15, 1), Ok(Admit { skip: 0, gap: 2 }));
        // The sender restarted: a new run starts fresh.
        let (g3, resume) = b.hello("a", 8);
        assert_eq!(resume, None);
        assert_eq!(b.admit("a", g3, 500, 2), Ok(Admit { skip: 0, gap: 0 }));
    }

    #[tokio::test]
    async fn subscribe_waits_for_every_connected_link() {
        let b = Arc::new(bp());
        b.interest_pending(1);
        b.interest_acked(2, Some(3));
        let waiter = tokio::spawn({
            let b = b.clone();
            async move { b.interest_applied(3).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        b.interest_acked(1, Some(4));
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
        b.interest_acked(1, None);
        b.interest_acked(2, None);
        b.interest_applied(99).await;
    }
}
