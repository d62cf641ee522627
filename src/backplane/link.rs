//! The links this node dials: one task per configured peer on the
//! backplane thread (a current-thread tokio runtime; a handful of links
//! need no io_uring). Each task dials, authenticates with AWX's `secret`
//! header, speaks the peer's protocol, and on any failure waits with
//! exponential backoff and jitter and dials again, forever, until the peer
//! is removed or the node stops.
//!
//! This file holds what every form shares (dialling, TLS, the upgrade,
//! backoff, framing, the read loop); each form's own conversation is a
//! file under `link/`: `native.rs`, `awx_form.rs` (AWX's two forms and its
//! stats key).

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{timeout, Instant};

use super::awx::Era;
use super::heartbeat::{self, HeartbeatSettings};
use super::outbox::{Interest, Sink, SinkLimits};
use super::peer::{PeerProtocol, PeerSpec};
use super::wire;
use super::{handshake, secret, Backplane};
use crate::config::{Config, ConfigError};
use crate::fanout::Router;
use crate::metrics::LinkMetrics;
use crate::protocol::frame::{self, opcode, Decoder, Message, Role};
use crate::protocol::http;

mod awx_form;
mod native;

use awx_form::{awx_broadcast, awx_relay, write_awx_stats};
use native::native;

/// Why a link attempt or a running link ended. Logged; the link retries.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("connect: {0}")]
    Connect(io::Error),
    #[error("timed out connecting, TLS or upgrading")]
    ConnectTimeout,
    #[error("tls: {0}")]
    Tls(io::Error),
    #[error("upgrade refused: {0}")]
    Refused(String),
    #[error(
        "the peer does not speak {} (is it an AWX node? configure it as awx-2020+ or awx-2022+)",
        wire::SUBPROTOCOL
    )]
    NotNative,
    #[error("io: {0}")]
    Io(#[from] io::Error),
    #[error("bad frame: {0}")]
    Frame(#[from] frame::FrameError),
    #[error("bad peer message: {0}")]
    Wire(#[from] wire::WireError),
    #[error("protocol: {0}")]
    Protocol(&'static str),
    #[error("closed by the peer ({0}: {1})")]
    Closed(u16, String),
    #[error("no traffic for {0:?}: link presumed dead")]
    Dead(Duration),
    #[error("the node is stopping")]
    Stopping,
}

/// What every link task needs, cloned from the config once.
#[derive(Clone)]
pub struct LinkSettings {
    pub connect_timeout: Duration,
    pub backoff_max: Duration,
    pub ping_interval: Duration,
    pub batch_events: usize,
    pub batch_bytes: usize,
    pub flush_delay: Duration,
    pub limits: SinkLimits,
    pub max_message: usize,
    pub tls: Arc<rustls::ClientConfig>,
    /// How long an interest acknowledgement waits for Redis memberships.
    pub ack_timeout: Duration,
    /// Longest group name taken from a peer.
    pub max_group_name: usize,
}

impl LinkSettings {
    pub fn from_config(c: &Config) -> Result<Self, ConfigError> {
        Ok(Self {
            connect_timeout: c.peer_connect_timeout,
            backoff_max: c.peer_backoff_max,
            ping_interval: c.peer_ping_interval,
            batch_events: c.peer_batch_events,
            batch_bytes: c.peer_batch_bytes,
            flush_delay: c.peer_flush_delay,
            limits: SinkLimits {
                max_events: c.peer_buffer_events,
                max_bytes: c.peer_buffer_bytes,
            },
            max_message: c.peer_max_message,
            ack_timeout: c.subscribe_ack_timeout,
            max_group_name: c.max_group_name,
            tls: Arc::new(
                crate::tls::client_config(c.peer_tls_verify, c.peer_ca_file.as_deref()).map_err(
                    |why| ConfigError::PeerCa {
                        path: c.peer_ca_file.clone().unwrap_or_default(),
                        why,
                    },
                )?,
            ),
        })
    }
}

/// The peers to keep links to: those configured (`--peer`, SIGHUP) and
/// those discovered through AWX's heartbeats.
#[derive(Debug, Clone, Default)]
struct PeerSets {
    configured: Vec<PeerSpec>,
    discovered: Vec<PeerSpec>,
}

impl PeerSets {
    /// Both lists; a discovered node that is also configured (same host
    /// and port) is dialled as configured.
    fn all(&self) -> Vec<PeerSpec> {
        let mut out = self.configured.clone();
        for d in &self.discovered {
            if !out.iter().any(|c| c.host == d.host && c.port == d.port) {
                out.push(d.clone());
            }
        }
        out
    }
}

/// The running link set. Dropping it stops every link.
pub struct Links {
    peers: Arc<watch::Sender<PeerSets>>,
    stop: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Links {
    /// Starts the backplane thread with `peers`, the AWX stats writer
    /// when `redis` is set, and AWX's heartbeat (announcing, discovering)
    /// when `heartbeat` is; `redis_ack` follows the Redis ingest's
    /// memberships.
    pub fn spawn(
        bp: Arc<Backplane>,
        router: Arc<Router>,
        settings: LinkSettings,
        peers: Vec<PeerSpec>,
        redis: Option<String>,
        redis_ack: Option<watch::Receiver<u64>>,
        heartbeat: Option<HeartbeatSettings>,
    ) -> io::Result<Links> {
        let (peers_tx, peers_rx) = watch::channel(PeerSets {
            configured: peers,
            discovered: Vec::new(),
        });
        let peers_tx = Arc::new(peers_tx);
        let discovered = peers_tx.clone();
        // The configured peers' sinks exist before this returns: whatever
        // the node routes from then on (a Redis backlog read at start, a
        // replay) is kept for them until their links are up.
        let premade: HashMap<PeerSpec, Arc<Sink>> = peers_tx
            .borrow()
            .all()
            .into_iter()
            .filter_map(|spec| Some((spec.clone(), new_sink(&bp, &spec, settings.limits)?)))
            .collect();
        let (stop, stop_rx) = watch::channel(false);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let thread = std::thread::Builder::new()
            .name("wsrelay-backplane".into())
            .spawn(move || {
                // Links share non-Send state between a link's reader and
                // writer; one thread runs them all.
                tokio::task::LocalSet::new().block_on(&rt, async move {
                    let ctx = Arc::new(LinkCtx {
                        bp,
                        router,
                        settings,
                        redis_ack,
                    });
                    if let Some(url) = redis {
                        tokio::task::spawn_local(write_awx_stats(
                            ctx.bp.clone(),
                            url,
                            stop_rx.clone(),
                        ));
                    }
                    let announcing = heartbeat.map(|hb| {
                        let hb = std::rc::Rc::new(hb);
                        let m = ctx.bp.metrics.heartbeat.clone();
                        if let Some(dial) = hb.discover {
                            let found = move |peers: Vec<PeerSpec>| {
                                discovered.send_modify(|s| s.discovered = peers);
                            };
                            let stop = stop_rx.clone();
                            let task =
                                heartbeat::discover(hb.clone(), dial, m.clone(), found, stop);
                            tokio::task::spawn_local(task);
                        }
                        hb.announce.then(|| {
                            let stop = stop_rx.clone();
                            tokio::task::spawn_local(heartbeat::announce(hb, m, stop))
                        })
                    });
                    manage(ctx, peers_rx, stop_rx, premade).await;
                    // The `offline` announcement goes out before the thread
                    // ends (bounded by its own timeout).
                    if let Some(Some(task)) = announcing {
                        let _ = task.await;
                    }
                });
            })?;
        Ok(Links {
            peers: peers_tx,
            stop,
            thread: Some(thread),
        })
    }

    /// Replaces the peer list: new peers are dialled, removed ones dropped;
    /// links to peers in both lists are not touched.
    pub fn set_peers(&self, peers: Vec<PeerSpec>) {
        self.peers.send_modify(|s| s.configured = peers);
    }

    pub fn stop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Links {
    fn drop(&mut self) {
        self.stop();
    }
}

struct LinkCtx {
    bp: Arc<Backplane>,
    router: Arc<Router>,
    settings: LinkSettings,
    /// The routes epoch the Redis ingest has recorded; `None` without Redis.
    redis_ack: Option<watch::Receiver<u64>>,
}

/// Keeps one task per configured peer, following the list; `premade`
/// holds the sinks made at start for the first list.
async fn manage(
    ctx: Arc<LinkCtx>,
    mut peers: watch::Receiver<PeerSets>,
    mut stop: watch::Receiver<bool>,
    mut premade: HashMap<PeerSpec, Arc<Sink>>,
) {
    let mut running: HashMap<PeerSpec, (watch::Sender<bool>, tokio::task::JoinHandle<()>)> =
        HashMap::new();
    loop {
        let want: Vec<PeerSpec> = peers.borrow_and_update().all();
        running.retain(|spec, (cancel, _)| {
            let keep = want.contains(spec);
            if !keep {
                tracing::info!(peer = %spec, "peer removed; dropping its link");
                let _ = cancel.send(true);
            }
            keep
        });
        for spec in want {
            if let std::collections::hash_map::Entry::Vacant(slot) = running.entry(spec) {
                let spec = slot.key().clone();
                tracing::info!(peer = %spec, "dialing peer");
                let (cancel, cancel_rx) = watch::channel(false);
                let sink = premade
                    .remove(&spec)
                    .or_else(|| new_sink(&ctx.bp, &spec, ctx.settings.limits));
                // Every line of the link carries which peer it is.
                let span = tracing::info_span!("peer", peer = %spec.label());
                let link = tracing::Instrument::instrument(
                    run_link(ctx.clone(), spec, sink, cancel_rx),
                    span,
                );
                let task = tokio::task::spawn_local(link);
                slot.insert((cancel, task));
            }
        }
        // A peer removed before its link started.
        for (_, sink) in premade.drain() {
            ctx.bp.drop_sink(&sink);
        }
        tokio::select! {
            r = peers.changed() => if r.is_err() { break },
            _ = stop.wait_for(|s| *s) => break,
        }
    }
    for (_, (cancel, task)) in running {
        let _ = cancel.send(true);
        let _ = task.await;
    }
}

/// Delay before dial attempt `n` (0 is the first retry): doubling from
/// 1 s up to `max`, each drawn uniformly from its upper half so a cluster
/// that lost a node does not redial in lockstep.
pub fn backoff(n: u32, max: Duration) -> Duration {
    let ceiling = Duration::from_secs(1)
        .saturating_mul(1u32 << n.min(16))
        .min(max.max(Duration::from_millis(1)));
    ceiling.mul_f64(0.5 + rand::random::<f64>() * 0.5)
}

/// The sink a link to `spec` sends from, registered in the outbox (none
/// for AWX 2020 peers, which send to us). It exists for the link's whole
/// life, across reconnects: events for the peer's last known interest wait
/// in it while the link is down.
fn new_sink(bp: &Backplane, spec: &PeerSpec, limits: SinkLimits) -> Option<Arc<Sink>> {
    // A native peer's interest is unknown until its link is up: until then
    // the sink keeps everything routed (bounded), so a backlog read at
    // start reaches the peer's clients. AWX's form resubscribes on every
    // connect and starts empty.
    let interest = match spec.protocol {
        PeerProtocol::Awx(Era::Y2020) => return None,
        PeerProtocol::Awx(Era::Y2022) => Interest::Groups(Default::default()),
        PeerProtocol::Native | PeerProtocol::Auto => Interest::Unknown,
    };
    let sink = Arc::new(Sink::new(spec.label(), interest, limits));
    bp.outbox.add(sink.clone());
    Some(sink)
}

async fn run_link(
    ctx: Arc<LinkCtx>,
    spec: PeerSpec,
    sink: Option<Arc<Sink>>,
    mut cancel: watch::Receiver<bool>,
) {
    let label = spec.label();
    let m = ctx.bp.metrics.peers.link(&label, "out");
    // The sink leaves the outbox (and its groups the node's interest)
    // however the task ends, a panic included.
    let _owned = sink.clone().map(|sink| OwnedSink {
        bp: ctx.bp.clone(),
        sink,
        depth: m.resend_depth.clone(),
    });
    let mut attempt = 0u32;
    let mut was_up = false;
    loop {
        let session = async {
            let (conn, native_version) = timeout(ctx.settings.connect_timeout, dial(&ctx, &spec))
                .await
                .map_err(|_| LinkError::ConnectTimeout)??;
            if was_up {
                m.reconnects.inc();
            }
            was_up = true;
            attempt = 0;
            m.up.set(1);
            m.connected_since.set(unix_now() as i64);
            tracing::info!(peer = %spec, native = native_version.is_some(), "link up");
            let r = match (spec.protocol, &sink) {
                (PeerProtocol::Native | PeerProtocol::Auto, Some(sink)) => match native_version {
                    Some(version) => native(&ctx, conn, version, sink, &m).await,
                    None => awx_relay(&ctx, conn, sink, &m).await,
                },
                (PeerProtocol::Awx(Era::Y2022), Some(sink)) => {
                    awx_relay(&ctx, conn, sink, &m).await
                }
                _ => awx_broadcast(&ctx, conn, &spec, &m).await,
            };
            m.up.set(0);
            r
        };
        let result = tokio::select! {
            r = session => r,
            _ = cancel.wait_for(|c| *c) => Err(LinkError::Stopping),
        };
        m.up.set(0);
        if spec.protocol == PeerProtocol::Awx(Era::Y2020) {
            ctx.bp.stats.disconnected(&spec.host);
        }
        match result {
            Err(LinkError::Stopping) => break,
            Err(e) => {
                m.link_failures.inc();
                if attempt == 0 {
                    tracing::warn!(peer = %spec, error = %e, "link down; redialing");
                } else {
                    tracing::debug!(peer = %spec, error = %e, attempt, "dial failed");
                }
            }
            Ok(()) => {}
        }
        let wait = backoff(attempt, ctx.settings.backoff_max);
        attempt = attempt.saturating_add(1);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = cancel.wait_for(|c| *c) => break,
        }
    }
}

/// A dialled link's sink, registered in the outbox for the task's life.
struct OwnedSink {
    bp: Arc<Backplane>,
    sink: Arc<Sink>,
    depth: prometheus_client::metrics::gauge::Gauge,
}

impl Drop for OwnedSink {
    fn drop(&mut self) {
        self.bp.drop_sink(&self.sink);
        self.depth.set(0);
    }
}

// === dialing ===

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// An upgraded link's receiving side: the read half, what was read past
/// the response head, and the frame decoder.
struct Reader {
    rd: ReadHalf<Box<dyn Io>>,
    buf: BytesMut,
    decoder: Decoder,
}

/// An upgraded link's sending side: client frames are masked, each with a
/// fresh key.
struct Writer {
    wr: WriteHalf<Box<dyn Io>>,
    mask_seed: u32,
}

impl Writer {
    fn key(&mut self) -> [u8; 4] {
        // xorshift: masking keys need to vary, not to be secret from us.
        self.mask_seed ^= self.mask_seed << 13;
        self.mask_seed ^= self.mask_seed >> 17;
        self.mask_seed ^= self.mask_seed << 5;
        self.mask_seed.to_ne_bytes()
    }

    /// Frames, masks and writes one message.
    async fn send(&mut self, op: u8, payload: &[u8]) -> io::Result<usize> {
        let key = self.key();
        let f = frame::client::frame(op, true, payload, key);
        self.wr.write_all(&f).await?;
        Ok(f.len())
    }
}

/// Dials and upgrades; returns the native protocol version agreed, if one
/// was (required for `Native`, a choice the peer makes for `Auto`).
async fn dial(ctx: &LinkCtx, spec: &PeerSpec) -> Result<((Reader, Writer), Option<u8>), LinkError> {
    let tcp = TcpStream::connect((spec.host.as_str(), spec.port))
        .await
        .map_err(LinkError::Connect)?;
    tcp.set_nodelay(true).map_err(LinkError::Connect)?;
    let mut io: Box<dyn Io> = if spec.tls {
        let name = rustls_pki_types::ServerName::try_from(spec.host.clone())
            .map_err(|e| LinkError::Tls(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
        let tls = tokio_rustls::TlsConnector::from(ctx.settings.tls.clone())
            .connect(name, tcp)
            .await
            .map_err(LinkError::Tls)?;
        Box::new(tls)
    } else {
        Box::new(tcp)
    };
    let key = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        rand::random::<[u8; 16]>(),
    );
    let secret = ctx.bp.secret.as_deref().unwrap_or_default();
    let header = secret::header_value(secret, unix_now());
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\nsecret: {header}\r\n\
         User-Agent: wsrelay/{version} ({node})\r\n",
        path = spec.path(),
        host = spec.label(),
        version = env!("CARGO_PKG_VERSION"),
        node = ctx.bp.node_id,
    );
    let offer_native = matches!(spec.protocol, PeerProtocol::Native | PeerProtocol::Auto);
    let nonce: [u8; 16] = rand::random();
    if offer_native {
        // Newest first; a node that knows only the first version picks it.
        req.push_str(&format!(
            "Sec-WebSocket-Protocol: {}, {}\r\n{}: {}\r\n",
            wire::SUBPROTOCOL,
            wire::SUBPROTOCOL_V1,
            handshake::AUTH_HEADER,
            handshake::dial_header(secret, &ctx.bp.node_id, unix_now(), nonce),
        ));
    }
    req.push_str("\r\n");
    io.write_all(req.as_bytes()).await?;
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 16 * 1024 {
            return Err(LinkError::Refused("response head too large".into()));
        }
        if io.read_buf(&mut buf).await? == 0 {
            return Err(LinkError::Refused(
                "connection closed during upgrade".into(),
            ));
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let status = head.lines().next().unwrap_or("").to_owned();
    if !status.starts_with("HTTP/1.1 101") {
        // The body of a refusal says why (our 403s carry the reason).
        let mut body = buf.split_off(end);
        let _ = timeout(Duration::from_millis(200), io.read_buf(&mut body)).await;
        let body = String::from_utf8_lossy(&body);
        return Err(LinkError::Refused(format!("{status} {}", body.trim())));
    }
    let header_of = |name: &str| {
        head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    };
    if header_of("sec-websocket-accept").as_deref() != Some(http::accept_key(&key).as_str()) {
        return Err(LinkError::Refused("bad Sec-WebSocket-Accept".into()));
    }
    let native = match header_of("sec-websocket-protocol") {
        None => None,
        Some(p) if offer_native && wire::version_of(&p).is_some() => wire::version_of(&p),
        // RFC 6455 4.1: a subprotocol we did not offer fails the connection.
        Some(_) => return Err(LinkError::Refused("unrequested subprotocol".into())),
    };
    if spec.protocol == PeerProtocol::Native && native.is_none() {
        return Err(LinkError::NotNative);
    }
    // The node we reached must know the secret too (it answers our nonce).
    if native.is_some() {
        let nonce_hex: String = nonce.iter().map(|b| format!("{b:02x}")).collect();
        let proved = header_of(handshake::PROOF_HEADER)
            .is_some_and(|p| handshake::verify_proof(&p, secret, &nonce_hex));
        if !proved {
            return Err(LinkError::Refused(
                "the node did not prove it knows the backplane secret".into(),
            ));
        }
    }
    let _ = buf.split_to(end);
    let (rd, wr) = tokio::io::split(io);
    Ok((
        (
            Reader {
                rd,
                buf,
                decoder: Decoder::new(Role::Client, ctx.settings.max_message),
            },
            Writer {
                wr,
                mask_seed: rand::random::<u32>() | 1,
            },
        ),
        native,
    ))
}

/// Reads the next message, answering nothing itself.
async fn next_message(r: &mut Reader) -> Result<Message, LinkError> {
    loop {
        if let Some(m) = r.decoder.decode(&mut r.buf)? {
            return Ok(m);
        }
        if r.buf.capacity() - r.buf.len() < 16 * 1024 {
            r.buf.reserve(64 * 1024);
        }
        if r.rd.read_buf(&mut r.buf).await? == 0 {
            return Err(LinkError::Closed(1006, "connection lost".into()));
        }
    }
}

/// Control frames the reader wants written, taken by the writer.
#[derive(Default)]
struct Outgoing {
    pong: Option<Bytes>,
    ping: bool,
    interest_ack: Option<u64>,
    texts: Vec<String>,
}

type Shared = std::cell::RefCell<Outgoing>;

/// Reads frames until the link fails, handing data messages to `on_data`.
/// Pings are answered via the writer; silence past three ping intervals
/// ends the link.
async fn read_loop<F, Fut>(
    r: &mut Reader,
    out: &Shared,
    wake: &dyn Fn(),
    ping_interval: Duration,
    mut on_data: F,
) -> Result<(), LinkError>
where
    F: FnMut(Message) -> Fut,
    Fut: Future<Output = Result<(), LinkError>>,
{
    let dead_after = ping_interval * 3;
    let mut ping_at = Instant::now() + ping_interval;
    loop {
        let msg = match timeout(
            ping_at.saturating_duration_since(Instant::now()),
            next_message(r),
        )
        .await
        {
            Ok(m) => m?,
            Err(_) => {
                // Quiet for a ping interval: ping, and give up after three.
                out.borrow_mut().ping = true;
                wake();
                match timeout(dead_after, next_message(r)).await {
                    Ok(m) => m?,
                    Err(_) => return Err(LinkError::Dead(dead_after)),
                }
            }
        };
        ping_at = Instant::now() + ping_interval;
        match msg {
            Message::Ping(p) => {
                out.borrow_mut().pong = Some(p);
                wake();
            }
            Message::Pong(_) => {}
            Message::Close(code, reason) => return Err(LinkError::Closed(code, reason)),
            m => on_data(m).await?,
        }
    }
}

/// Writes the control frames waiting in `out`.
async fn write_control(w: &mut Writer, out: &Shared) -> Result<(), LinkError> {
    let (pong, ping, ack, texts) = {
        let mut o = out.borrow_mut();
        (
            o.pong.take(),
            std::mem::take(&mut o.ping),
            o.interest_ack.take(),
            std::mem::take(&mut o.texts),
        )
    };
    if let Some(p) = pong {
        w.send(opcode::PONG, &p).await?;
    }
    if ping {
        w.send(opcode::PING, b"").await?;
    }
    if let Some(epoch) = ack {
        w.send(opcode::BINARY, &wire::interest_ack(epoch)).await?;
    }
    for t in texts {
        w.send(opcode::TEXT, t.as_bytes()).await?;
    }
    Ok(())
}

// === native ===

fn count_sink(sink: &Sink, m: &LinkMetrics) {
    let c = sink.take_counts();
    m.evicted.inc_by(c.evicted);
    m.discarded.inc_by(c.discarded);
    m.resend_depth.set(sink.depth() as i64);
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_starts_within_a_second_and_is_capped() {
        for _ in 0..100 {
            let first = backoff(0, Duration::from_secs(30));
            assert!(first <= Duration::from_secs(1) && first >= Duration::from_millis(500));
            let late = backoff(20, Duration::from_secs(30));
            assert!(late <= Duration::from_secs(30) && late >= Duration::from_secs(15));
        }
    }
}
