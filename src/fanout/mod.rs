//! The fan-out core: groups -> workers -> subscribers, with each event's
//! frame built once and shared. No sockets here: drivers own the I/O.
//!
//! Flow of one event: `Router::route` builds the server text frame once
//! (`bytes::Bytes`), looks the group up in the `Routes` snapshot and hands
//! the same bytes to each worker that holds subscribers of the group; that
//! worker's `Hub::deliver` appends a clone (a reference count) to each
//! local subscriber's `OutQueue`.

mod hub;
mod queue;
mod router;
mod routes;

pub use hub::{DeliveryStats, GroupChange, Hub, QueueDepth, RouteDelta, SubId};
pub use queue::{OutQueue, Push, QueueLimits, SlowPolicy};
pub use router::{Event, RouteError, Router};
pub use routes::{Changes, RouteTable, Routes, Transition, MAX_WORKERS, PEERS};
