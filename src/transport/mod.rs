//! Drivers: sockets, event loops and the per-connection state machines that
//! feed bytes to `protocol` and drain `fanout` queues into sockets.
//!
//! Today there is one driver, epoll through a current-thread tokio runtime
//! per worker. Everything a connection does to the socket goes through the
//! functions in `conn` and `websocket`, the seam the io_uring driver will
//! sit behind.

mod conn;
mod websocket;
mod worker;

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

pub(crate) use worker::spawn_worker;

use crate::auth::Authenticator;
use crate::config::Config;
use crate::fanout::{Router, Routes};
use crate::metrics::Metrics;

/// What every worker of a node shares. Read-only after start, except the
/// atomics.
pub(crate) struct NodeContext {
    pub config: Config,
    pub auth: Authenticator,
    pub metrics: Arc<Metrics>,
    pub routes: Arc<Routes>,
    pub router: Arc<Router>,
    /// Websocket clients connected now, for the connection limit.
    pub ws_connections: AtomicUsize,
    pub io: &'static str,
    pub workers: usize,
}
