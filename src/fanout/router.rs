//! Hands events to the workers that hold their group: each frame is built
//! once here and shared by reference from then on.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::routes::{RouteTable, Routes};
use crate::backplane::outbox::Held;
use crate::backplane::wire::Origin;
use crate::backplane::Outbox;
use crate::protocol::frame;

/// One event as a worker receives it: the group and the complete server
/// frame, shared with every other worker and subscriber that gets it.
#[derive(Debug, Clone)]
pub struct Event {
    pub group: Arc<str>,
    pub frame: Bytes,
    /// When the router took it (`Router::with_clock`'s units; 0 without a
    /// clock): the writer measures delivery latency from it.
    pub at: u32,
}

/// What the router stamps events with: a clock the wiring layer gives it
/// (this module reads none itself).
pub type Clock = Box<dyn Fn() -> u32 + Send + Sync>;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("the relay is shutting down")]
    ShuttingDown,
}

/// What `route` did, for metrics and the emit answer.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Routed {
    /// Events accepted (all of them, including those no one subscribed to).
    pub accepted: u64,
    /// Events that no worker held a subscriber for.
    pub unrouted: u64,
}

/// The emit side of the fan-out core, shared by every producer.
pub struct Router {
    routes: Arc<Routes>,
    workers: Vec<mpsc::Sender<Vec<Event>>>,
    /// Where locally produced events also go: the backplane's links.
    peers: Option<Arc<Outbox>>,
    clock: Option<Clock>,
}

impl Router {
    pub fn new(routes: Arc<Routes>, workers: Vec<mpsc::Sender<Vec<Event>>>) -> Self {
        Self {
            routes,
            workers,
            peers: None,
            clock: None,
        }
    }

    /// A router that stamps each batch it routes with `clock` (non-zero
    /// values; the node's is 10 µs units since start, wrapping).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = Some(clock);
        self
    }

    /// A router whose local events are also offered to the backplane.
    pub fn with_peers(mut self, outbox: Arc<Outbox>) -> Self {
        self.peers = Some(outbox);
        self
    }

    /// Whether worker `index`'s inbox is empty (nothing routed to it waits).
    pub fn inbox_is_empty(&self, index: usize) -> bool {
        self.workers
            .get(index)
            .is_none_or(|tx| tx.capacity() == tx.max_capacity())
    }

    /// Routes a batch of locally produced `(group, payload)` events in
    /// order, to this node's workers and to every peer that wants them.
    /// Waits when a worker's inbox is full: producers feel back-pressure
    /// instead of the relay buffering without bound. Peers never make it
    /// wait: their links buffer (bounded, counted).
    pub async fn route<'a>(
        &self,
        events: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    ) -> Result<Routed, RouteError> {
        match &self.peers {
            Some(outbox) if outbox.has_sinks() => {
                let events: Vec<(&str, &[u8])> = events.into_iter().collect();
                outbox.offer(&events);
                self.route_here(events).await
            }
            _ => self.route_here(events).await,
        }
    }

    /// Routes a batch read from this node's Redis stream: as `route`, with
    /// each event's entry id (`origins`, one per event) handed to the
    /// peers' sinks; returns what the peers hold of the batch, so the
    /// reader learns when they all have it.
    pub async fn route_stream(
        &self,
        events: &[(&str, &[u8])],
        origins: &[Origin],
    ) -> Result<(Routed, Held), RouteError> {
        let held = self.offer_to_peers(events, origins);
        let routed = self.route_here(events.iter().copied()).await?;
        Ok((routed, held))
    }

    /// Hands events to the peers only, never to this node's clients: a
    /// restarted node's replay of stream entries its peers may have missed.
    pub fn offer_to_peers(&self, events: &[(&str, &[u8])], origins: &[Origin]) -> Held {
        match &self.peers {
            Some(outbox) => outbox.offer_from(events, origins),
            None => Held::default(),
        }
    }

    /// Routes events that came from a peer: to this node's workers only,
    /// never to another peer, so an event crosses the backplane once and
    /// no loop can form.
    pub async fn route_from_peer<'a>(
        &self,
        events: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    ) -> Result<Routed, RouteError> {
        self.route_here(events).await
    }

    async fn route_here<'a>(
        &self,
        events: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    ) -> Result<Routed, RouteError> {
        let mut per_worker: Vec<Vec<Event>> = vec![Vec::new(); self.workers.len()];
        let mut routed = Routed::default();
        let at = self.clock.as_ref().map_or(0, |c| c().max(1));
        {
            let table = self.routes.load();
            for (group, payload) in events {
                routed.accepted += 1;
                let Some((group, &mask)) = table
                    .groups
                    .get_key_value(group)
                    .filter(|(_, m)| RouteTable::local_mask(**m) != 0)
                else {
                    routed.unrouted += 1;
                    continue;
                };
                let mask = RouteTable::local_mask(mask);
                let frame = frame::text_frame(payload);
                let mut mask = mask;
                while mask != 0 {
                    let w = mask.trailing_zeros() as usize;
                    mask &= mask - 1;
                    if let Some(batch) = per_worker.get_mut(w) {
                        batch.push(Event {
                            group: group.clone(),
                            frame: frame.clone(),
                            at,
                        });
                    }
                }
            }
        }
        for (tx, batch) in self.workers.iter().zip(per_worker) {
            if !batch.is_empty() {
                tx.send(batch).await.map_err(|_| RouteError::ShuttingDown)?;
            }
        }
        Ok(routed)
    }
}
