//! wsrelay: a websocket group-fanout relay built for event floods, and a
//! drop-in for AWX's websocket layer (daphne + channels + the relay).
//!
//! # Layout
//! - [`protocol`]: wire formats (frames, HTTP heads, AWX client messages,
//!   emit bodies). No I/O.
//! - [`fanout`]: groups -> workers -> subscribers; frames built once and
//!   shared; bounded queues. No I/O.
//! - `transport`: worker threads, sockets, the per-connection state
//!   machines.
//! - [`ingest`]: producers (in-process, HTTP, channels_redis, Redis Stream).
//! - [`backplane`]: node-to-node links: the native peer protocol and
//!   AWX's forms (I/O-free parts), the thread that dials peers, and AWX's
//!   PostgreSQL heartbeat (announcing this node, discovering others).
//! - [`auth`]: who a client is (HS256 JWTs; AWX's API asked with the
//!   client's session cookie or token, cached and coalesced on its own
//!   thread) and which groups it may join (rules by prefix, AWX's
//!   per-object checks).
//! - [`config`], [`metrics`], [`tls`]: plain data, the metrics registered
//!   once, the outbound TLS settings.
//! - [`status`]: the live status page's model (the node's own metrics,
//!   sampled into minutes of history) and readiness. No I/O but its
//!   sampler thread. [`throttle`]: rate limits for repeated log lines.
//! - [`server`]: the one place that wires the parts together.
//! - [`client`], [`demo`], [`producer`], [`payload`]: a light websocket
//!   client, the storm demo, the producers behind `wsrelay emit`, and the
//!   AWX-shaped test payloads the demo and the load tester send.

pub mod auth;
pub mod backplane;
pub mod client;
pub mod config;
pub mod demo;
pub mod fanout;
#[doc(hidden)]
pub mod fuzzing;
pub mod ingest;
pub mod metrics;
pub mod payload;
pub mod producer;
pub mod protocol;
pub mod server;
pub mod status;
pub mod throttle;
pub mod tls;
mod transport;

pub use config::Config;
pub use ingest::Emitter;
pub use server::{Node, StartError};
pub use transport::{probe_uring, Io, DISABLE_URING_ENV};
