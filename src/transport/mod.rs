//! Drivers: sockets, event loops and the per-connection state machines that
//! feed bytes to `protocol` and drain `fanout` queues into sockets.
//!
//! Two drivers sit behind one seam (`stream::Stream`, a listener's
//! `Acceptor`): epoll through a current-thread tokio runtime per worker,
//! and io_uring through tokio-uring. Everything above the seam (`conn`,
//! `websocket`) is the same code for both.

mod admin;
mod conn;
mod peer;
mod stream;
mod websocket;
mod worker;

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

pub(crate) use worker::spawn_worker;

use crate::auth::Authenticator;
use crate::config::{Config, IoMode};
use crate::fanout::{Router, Routes};
use crate::metrics::Metrics;

/// Seconds in one unit of an event's stamp (`Event::at`): 10 µs, so a
/// `u32` wraps after about 11.9 hours; latencies are differences.
pub(crate) const STAMP_SECS: f64 = 1e-5;

/// Now, in stamp units since `started` (never 0: 0 means "no stamp").
pub(crate) fn stamp(started: std::time::Instant) -> u32 {
    ((started.elapsed().as_micros() / 10) as u32).max(1)
}

/// Which listener a connection arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Listener {
    /// `--listen`: clients, producers, peers (and health, metrics).
    Clients,
    /// `--admin-listen`: operators only (status page, metrics, readiness).
    Admin,
}

/// The driver a node runs, after probing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Io {
    Epoll,
    Uring,
}

impl Io {
    pub fn name(self) -> &'static str {
        match self {
            Io::Epoll => "epoll",
            Io::Uring => "uring",
        }
    }
}

/// Set (to anything) to make the io_uring probe fail, as it does on old
/// kernels, with `io_uring_disabled`, or under a seccomp profile that
/// blocks it. For tests of the fallback; documented in the README.
pub const DISABLE_URING_ENV: &str = "WSRELAY_TEST_DISABLE_IO_URING";

/// Whether an io_uring instance can be set up here.
pub fn probe_uring() -> std::io::Result<()> {
    if std::env::var_os(DISABLE_URING_ENV).is_some() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            format!("io_uring disabled by {DISABLE_URING_ENV}"),
        ));
    }
    tokio_uring::uring_builder().build(8).map(drop)
}

/// Resolves the configured mode to a driver: `auto` falls back to epoll
/// with one log line; `uring` fails with the reason.
pub fn choose(mode: IoMode) -> std::io::Result<Io> {
    match mode {
        IoMode::Epoll => Ok(Io::Epoll),
        IoMode::Uring => probe_uring().map(|()| Io::Uring),
        IoMode::Auto => Ok(match probe_uring() {
            Ok(()) => Io::Uring,
            Err(e) => {
                tracing::warn!(reason = %e, "io_uring is unavailable; using epoll");
                Io::Epoll
            }
        }),
    }
}

/// A reserved place under a limit (clients, peer links), given back on
/// drop.
pub(crate) struct Slot<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> Slot<'a> {
    pub fn acquire(count: &'a std::sync::atomic::AtomicUsize, max: usize) -> Option<Self> {
        use std::sync::atomic::Ordering;
        count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(count))
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// What every worker of a node shares. Read-only after start, except the
/// atomics.
pub(crate) struct NodeContext {
    pub config: Config,
    pub auth: Authenticator,
    /// Which groups a client may join.
    pub policy: crate::auth::policy::Policy,
    pub metrics: Arc<Metrics>,
    pub routes: Arc<Routes>,
    pub router: Arc<Router>,
    /// Websocket clients connected now, for the connection limit.
    pub ws_connections: AtomicUsize,
    /// Links other nodes dialled to us, for `--max-peer-links`.
    pub peer_links: AtomicUsize,
    pub io: Io,
    pub workers: usize,
    /// The routes epoch the Redis ingest has recorded; `None` without Redis.
    pub redis_ack: Option<tokio::sync::watch::Receiver<u64>>,
    /// Set once shutdown starts: closing sessions then get the whole grace
    /// period to flush their queues, not just `close_timeout`.
    pub shutting_down: std::sync::atomic::AtomicBool,
    /// Backplane state shared with the peer links.
    pub backplane: Arc<crate::backplane::Backplane>,
    /// When the node started: uptime, and the epoch of event timestamps
    /// (delivery latency).
    pub started: std::time::Instant,
    /// The status page's history, when the page is served at all.
    pub status: Option<Arc<std::sync::Mutex<crate::status::History>>>,
    /// Log lines an outsider can repeat, rate-limited.
    pub throttle: crate::throttle::Throttles,
}
