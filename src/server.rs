//! The one place that wires a node together: config -> authenticator,
//! metrics, routes, router, listeners and worker threads.

use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::thread::JoinHandle;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::{mpsc, watch};

use crate::auth::api::AwxApi;
use crate::auth::Authenticator;
use crate::backplane::broker::{Broker, BrokerSettings};
use crate::backplane::link::{LinkSettings, Links};
use crate::backplane::{Backplane, PeerSpec};
use crate::config::{Config, ConfigError, GOOD_SECRET};
use crate::fanout::{Router, Routes};
use crate::ingest::Emitter;
use crate::metrics::Metrics;
use crate::transport::{self, spawn_worker, NodeContext};

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start a worker: {0}")]
    Thread(std::io::Error),
    #[error("--io uring: io_uring is unavailable here: {0}")]
    Uring(std::io::Error),
    #[error(transparent)]
    Redis(#[from] crate::ingest::RedisError),
    #[error("cannot start the backplane thread: {0}")]
    Backplane(std::io::Error),
    #[error("cannot start the API authenticator: {0}")]
    Auth(std::io::Error),
    #[error(
        "cannot listen on --admin-listen {addr}: {source} (give it another address, or `off`)"
    )]
    AdminBind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start the status sampler: {0}")]
    Status(std::io::Error),
}

/// A running node. Dropping it shuts the node down.
pub struct Node {
    addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    io: transport::Io,
    /// Samples the metrics for the status page, when it is served.
    sampler: Option<crate::status::Sampler>,
    emitter: Emitter,
    metrics: Arc<Metrics>,
    /// Stops the Redis ingest; signalled and joined before the workers, so
    /// everything it read and acknowledged is delivered.
    stop_ingest: watch::Sender<bool>,
    ingest: Option<JoinHandle<()>>,
    shutdown: watch::Sender<bool>,
    threads: Vec<JoinHandle<()>>,
    /// The links this node dials; always running, so peers can be added
    /// at run time.
    links: Option<Links>,
    /// The NATS broker backplane, when `--broker` is set.
    broker: Option<Broker>,
    backplane: Arc<Backplane>,
}

impl Node {
    /// Validates `config`, binds, and starts the workers. Returns once the
    /// listeners are bound, so clients can connect right away.
    pub fn start(config: Config) -> Result<Node, StartError> {
        let setup = config.validate()?;
        let workers = config.worker_count();
        let io = transport::choose(config.io).map_err(StartError::Uring)?;
        if setup.dev_insecure {
            tracing::warn!(
                "DEV-INSECURE mode: every non-empty token is accepted as user 0. \
                 Never run this way where anyone else can connect."
            );
        }
        raise_fd_limit(config.max_connections);
        let listeners = bind_listeners(config.listen, workers)?;
        let addr = listeners[0]
            .local_addr()
            .map_err(|source| StartError::Bind {
                addr: config.listen,
                source,
            })?;
        let admin = match config.admin_listen {
            Some(a) => Some(bind_admin(a)?),
            None => None,
        };
        let admin_addr = admin.as_ref().and_then(|l| l.local_addr().ok());
        let peers = config.peer_specs()?;
        let link_settings = LinkSettings::from_config(&config)?;
        let heartbeat = config.heartbeat()?;
        if !config.peer_tls_verify {
            tracing::warn!(
                "--peer-tls-verify false: wss:// peers' certificates are NOT checked \
                 (AWX's default for self-signed nodes); the secret header still authenticates them"
            );
        }
        if config
            .jwt_secret
            .as_ref()
            .is_some_and(|s| s.len() < GOOD_SECRET)
        {
            tracing::warn!(
                "--jwt-secret is shorter than {GOOD_SECRET} bytes: a guessable secret lets anyone \
                 mint tokens for any user; use `openssl rand -hex 32`"
            );
        }
        if config
            .backplane_secret
            .as_ref()
            .is_some_and(|s| s.len() < GOOD_SECRET)
        {
            // AWX's own value must work as it is, so only a warning.
            tracing::warn!(
                "--backplane-secret is shorter than {GOOD_SECRET} bytes: whoever guesses it can \
                 join the backplane; set a longer BROADCAST_WEBSOCKET_SECRET"
            );
        }
        let metrics = Arc::new(Metrics::new(workers, io.name()));
        if !config.auth_tls_verify && config.auth_url.is_some() {
            tracing::warn!(
                "--auth-tls-verify false: the AWX API's certificate is NOT checked; \
                 session cookies and tokens are sent to whoever answers"
            );
        }
        let api = match setup.api {
            Some(s) => Some(Arc::new(
                AwxApi::start(s, metrics.auth.clone()).map_err(StartError::Auth)?,
            )),
            None => None,
        };
        let auth = Authenticator {
            jwt: setup.jwt,
            api,
            dev_insecure: setup.dev_insecure,
        };
        let routes = Arc::new(Routes::default());
        let backplane = Arc::new(Backplane::new(
            config.node_id.clone(),
            config
                .backplane_secret
                .as_ref()
                .map(|s| s.expose().to_owned()),
            metrics.clone(),
            routes.clone(),
            crate::backplane::InterestLimits {
                max_group_name: config.max_group_name,
                max_node_groups: config.max_node_groups,
            },
        ));
        let (senders, inboxes): (Vec<_>, Vec<_>) = (0..workers)
            .map(|_| mpsc::channel(config.worker_inbox))
            .unzip();
        let started = std::time::Instant::now();
        let router = Arc::new(
            Router::new(routes.clone(), senders)
                .with_peers(backplane.outbox.clone())
                .with_clock(Box::new(move || transport::stamp(started))),
        );
        // The status page reads the metrics once a second; only where it
        // can be served at all.
        let sampler = if config.admin_listen.is_some() || config.admin_key.is_some() {
            Some(
                crate::status::Sampler::spawn(metrics.clone(), started)
                    .map_err(StartError::Status)?,
            )
        } else {
            None
        };
        let emitter = Emitter::new(router.clone(), metrics.clone(), config.max_group_name);
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (stop_ingest, stop_ingest_rx) = watch::channel(false);
        // The Redis readers start once the backplane's sinks exist.
        let (backplane_ready, backplane_ready_rx) = watch::channel(false);
        let mut threads = Vec::with_capacity(workers);
        let (ingest, redis_ack) = if config.redis.is_empty() {
            (None, None)
        } else {
            let (handle, ack) = crate::ingest::redis::spawn(
                &config,
                routes.clone(),
                router.clone(),
                metrics.clone(),
                stop_ingest_rx,
                backplane_ready_rx,
            )?;
            (Some(handle), Some(ack))
        };
        let ctx = Arc::new(NodeContext {
            config,
            auth,
            policy: setup.policy,
            metrics: metrics.clone(),
            routes,
            router,
            ws_connections: AtomicUsize::new(0),
            peer_links: AtomicUsize::new(0),
            io,
            workers,
            redis_ack,
            shutting_down: std::sync::atomic::AtomicBool::new(false),
            backplane: backplane.clone(),
            started,
            status: sampler.as_ref().map(|s| s.history.clone()),
            throttle: Default::default(),
        });
        // Worker 0 serves the admin listener too.
        let mut admin = admin;
        for (index, (listener, inbox)) in listeners.into_iter().zip(inboxes).enumerate() {
            let handle = spawn_worker(
                index,
                listener,
                admin.take(),
                inbox,
                ctx.clone(),
                shutdown_rx.clone(),
            )
            .map_err(StartError::Thread)?;
            threads.push(handle);
        }
        let links = Links::spawn(
            backplane.clone(),
            ctx.router.clone(),
            link_settings,
            peers,
            ctx.config.redis.first().cloned(),
            ctx.redis_ack.clone(),
            heartbeat,
        )
        .map_err(StartError::Backplane)?;
        let broker = match BrokerSettings::from_config(&ctx.config)? {
            Some(settings) => Some(
                Broker::spawn(
                    backplane.clone(),
                    ctx.router.clone(),
                    ctx.routes.clone(),
                    settings,
                )
                .map_err(StartError::Backplane)?,
            ),
            None => None,
        };
        backplane_ready.send_replace(true);
        match admin_addr {
            Some(admin) => tracing::info!(
                %addr, %admin, workers, io = io.name(), node = ctx.config.node_id,
                "wsrelay listening; status page at http://{admin}/status"
            ),
            None => tracing::info!(
                %addr, workers, io = io.name(), node = ctx.config.node_id,
                "wsrelay listening"
            ),
        }
        Ok(Node {
            addr,
            io,
            admin_addr,
            sampler,
            emitter,
            metrics,
            stop_ingest,
            ingest,
            shutdown,
            threads,
            links: Some(links),
            broker,
            backplane,
        })
    }

    /// Replaces the peer list (SIGHUP): new peers are dialled, removed
    /// ones dropped, links to the rest and every client left alone.
    pub fn set_peers(&self, peers: Vec<PeerSpec>) {
        if let Some(links) = &self.links {
            links.set_peers(peers);
        }
    }

    /// This node's backplane state (for tests and the demo).
    pub fn backplane(&self) -> &Arc<Backplane> {
        &self.backplane
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Worker threads.
    pub fn workers(&self) -> usize {
        self.threads.len()
    }

    /// The I/O driver the workers run.
    pub fn io_name(&self) -> &'static str {
        self.io.name()
    }

    /// The admin listener's bound address, when there is one.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The in-process producer handle.
    pub fn emitter(&self) -> Emitter {
        self.emitter.clone()
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Stops reading Redis, delivers what was read, flushes every client's
    /// queue and closes it with 1001 (within the grace period), and stops
    /// the workers.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        // Links first: nothing new arrives from peers while the workers
        // flush their clients.
        if let Some(mut links) = self.links.take() {
            links.stop();
        }
        if let Some(mut broker) = self.broker.take() {
            broker.stop();
        }
        let _ = self.stop_ingest.send(true);
        if let Some(t) = self.ingest.take() {
            let _ = t.join();
        }
        let _ = self.shutdown.send(true);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        if let Some(mut s) = self.sampler.take() {
            s.stop();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Each client costs a file descriptor; the common soft limit of 1024 would
/// cap a node far below `max_connections`, so raise it to the hard limit.
fn raise_fd_limit(max_connections: usize) {
    let want = (max_connections as u64).saturating_add(1024);
    match rlimit::increase_nofile_limit(want) {
        Ok(got) if got < want => tracing::warn!(
            limit = got,
            max_connections,
            "the open-files limit is below max-connections; raise it (ulimit -n)"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-files limit"),
    }
}

/// The admin listener: one socket, served by worker 0.
fn bind_admin(addr: SocketAddr) -> Result<std::net::TcpListener, StartError> {
    let bind = || -> std::io::Result<std::net::TcpListener> {
        let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        s.set_reuse_address(true)?;
        s.set_nonblocking(true)?;
        s.bind(&addr.into())?;
        s.listen(128)?;
        Ok(s.into())
    };
    bind().map_err(|source| StartError::AdminBind { addr, source })
}

/// One listener per worker on the same address with SO_REUSEPORT, so the
/// kernel spreads connections over workers. With port 0 the first bind
/// picks the port and the others join it.
fn bind_listeners(addr: SocketAddr, n: usize) -> Result<Vec<std::net::TcpListener>, StartError> {
    let mut out = Vec::with_capacity(n);
    let mut addr_now = addr;
    for _ in 0..n {
        let bind = |a: SocketAddr| -> std::io::Result<std::net::TcpListener> {
            let s = Socket::new(Domain::for_address(a), Type::STREAM, Some(Protocol::TCP))?;
            s.set_reuse_address(true)?;
            s.set_reuse_port(true)?;
            s.set_nonblocking(true)?;
            s.bind(&a.into())?;
            s.listen(4096)?;
            Ok(s.into())
        };
        let l = bind(addr_now).map_err(|source| StartError::Bind { addr, source })?;
        if addr_now.port() == 0 {
            addr_now = l
                .local_addr()
                .map_err(|source| StartError::Bind { addr, source })?;
        }
        out.push(l);
    }
    Ok(out)
}
