//! Links other nodes dial to this one, served on the workers like any
//! connection: on either path the native protocol when the upgrade offers
//! `wsrelay.peer.v2` (or `v1`); otherwise AWX's 2020 form on `/websocket/broadcast/`
//! and AWX's 2022 form on `/websocket/relay/`.
//!
//! The `secret` header is checked before the upgrade: a refused dialer
//! gets HTTP 403 with the reason, and the reason is logged and counted.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::sync::Notify;
use tokio::time::{timeout, Instant};

use super::conn;
use super::stream::{Stream, IOVECS, READ_CHUNK};
use super::worker::Worker;
use crate::backplane::awx;
use crate::backplane::interest::LocalInterest;
use crate::backplane::link::unix_now;
use crate::backplane::wire::{self, PeerMessage};
use crate::backplane::{handshake, secret, Backplane, Interest, Sink};
use crate::protocol::frame::{self, close_code, Decoder, Message, Role};
use crate::protocol::http::{self, RequestHead};

/// What the dialer asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// wsrelay's batched protocol; the dialer sends, we receive.
    Native,
    /// AWX 2020: we send the dialer every local event.
    Broadcast,
    /// AWX 2022: we tell the dialer our groups; it pushes events.
    Relay,
}

pub(super) async fn run<S: Stream>(
    worker: Rc<Worker>,
    stream: &S,
    head: RequestHead,
    buf: BytesMut,
) {
    let ctx = worker.ctx.clone();
    let bp = ctx.backplane.clone();
    let refuse = |reason: &str, why: &str| {
        bp.metrics.peers.auth_failure(reason).inc();
        if let Some(held) = ctx.throttle.peer_refused.check() {
            tracing::warn!(
                path = head.path,
                reason = why,
                held_back = held,
                "peer refused"
            );
        }
        http::error_response(403, &format!("backplane: {why}"), false)
    };
    let Some(shared) = bp.secret.as_deref() else {
        let reply = refuse(
            "disabled",
            "this node has no --backplane-secret, so it accepts no peers",
        );
        return conn::answer_and_close(stream, reply).await;
    };
    let Some(header) = head.header("secret") else {
        let reply = refuse("missing", "no secret header");
        return conn::answer_and_close(stream, reply).await;
    };
    if let Err(e) = secret::verify(header.trim(), shared, unix_now()) {
        let reply = refuse(e.label(), &e.to_string());
        return conn::answer_and_close(stream, reply).await;
    }
    // Counted like clients: each link holds buffers, a task and a decoder
    // of up to `--peer-max-message`.
    let Some(_slot) = super::Slot::acquire(&ctx.peer_links, ctx.config.max_peer_links) else {
        bp.metrics.peers.auth_failure("link_limit").inc();
        tracing::warn!(path = head.path, "peer refused: --max-peer-links reached");
        let reply = http::error_response(503, "backplane: peer link limit reached", false);
        return conn::answer_and_close(stream, reply).await;
    };
    let accept = match http::upgrade_accept_key(&head) {
        Ok(k) => k,
        Err(e) => {
            let reply = http::error_response(400, &e.to_string(), false);
            return conn::answer_and_close(stream, reply).await;
        }
    };
    // The highest native version offered: a node that offers both gets
    // origins with its events, one that knows only the first does not.
    let native_version = head.header("sec-websocket-protocol").and_then(|v| {
        v.split(',')
            .filter_map(|p| wire::version_of(p.trim()))
            .max()
    });
    let native_offered = native_version.is_some();
    // Native links also prove freshness (a nonce accepted once) and get a
    // proof back; AWX's forms keep AWX's rule (README: residual risk).
    let dial = if native_offered {
        let checked = head
            .header(handshake::AUTH_HEADER)
            .ok_or(handshake::HandshakeError::Missing)
            .and_then(|h| handshake::verify_dial(h.trim(), shared, unix_now()))
            .and_then(|d| {
                let mut replays = bp.replays.lock().unwrap_or_else(|e| e.into_inner());
                replays.admit(&d, unix_now()).map(|()| d)
            });
        match checked {
            Ok(d) => Some(d),
            Err(e) => {
                let reply = refuse(e.label(), &e.to_string());
                return conn::answer_and_close(stream, reply).await;
            }
        }
    } else {
        None
    };
    let mode = match head.path.trim_end_matches('/') {
        // Native wherever it is offered: discovered nodes are dialled at
        // AWX's relay path, offering it (`PeerProtocol::Auto`).
        _ if native_offered => Mode::Native,
        "/websocket/relay" => Mode::Relay,
        _ => Mode::Broadcast,
    };
    let mut reply = String::from_utf8(http::switching_protocols(&accept)).expect("ascii");
    if let (Mode::Native, Some(d)) = (mode, &dial) {
        reply.truncate(reply.len() - 2);
        reply.push_str(&format!(
            "Sec-WebSocket-Protocol: {}\r\n{}: {}\r\n\r\n",
            wire::token_of(native_version.unwrap_or(wire::VERSION)),
            handshake::PROOF_HEADER,
            handshake::proof(shared, &d.nonce),
        ));
    }
    if stream.write_all(reply.into_bytes()).await.is_err() {
        return;
    }
    let link = Link {
        worker: &worker,
        bp: &bp,
        stream,
        out: RefCell::new(Vec::new()),
        pong: RefCell::new(None),
        wake: Notify::new(),
        last_heard: Cell::new(Instant::now()),
        write_started: Cell::new(None),
    };
    let result = match mode {
        Mode::Native => {
            let node = dial.map(|d| d.node).unwrap_or_default();
            link.native(buf, &node, native_version.unwrap_or(wire::VERSION))
                .await
        }
        Mode::Broadcast => link.broadcast(buf).await,
        Mode::Relay => link.relay(buf).await,
    };
    if let Err(Close { code, reason }) = result {
        tracing::info!(?mode, code, reason, "peer link ended");
        // Bounded: a peer that stopped reading does not get to hold the
        // link open through our close frame.
        let close = stream.write_all(frame::close_frame(code, reason).to_vec());
        let _ = timeout(ctx.config.close_timeout, close).await;
    }
}

/// One inbound link's shared parts: its reader and writer run together
/// on the worker, and only the writer touches the socket's write side.
struct Link<'a, S> {
    worker: &'a Worker,
    bp: &'a Arc<Backplane>,
    stream: &'a S,
    /// Control frames the reader or pinger wants written.
    out: RefCell<Vec<Bytes>>,
    /// The pong owed for the latest ping: only the latest is answered
    /// (RFC 6455 5.5.3), so a peer that pings and never reads queues one.
    pong: RefCell<Option<Bytes>>,
    wake: Notify,
    last_heard: Cell<Instant>,
    /// When the write in progress started; a peer that lets one hang for
    /// three ping intervals has stopped reading.
    write_started: Cell<Option<Instant>>,
}

/// Why a link ended: the close code it ends with and the reason.
#[derive(Debug, Clone, Copy)]
struct Close {
    code: u16,
    reason: &'static str,
}

impl Close {
    /// The peer sent something the protocol does not allow.
    fn protocol(reason: &'static str) -> Self {
        Self {
            code: close_code::PROTOCOL_ERROR,
            reason,
        }
    }

    /// This node is going, or the link went quiet.
    fn going(reason: &'static str) -> Self {
        Self {
            code: close_code::GOING_AWAY,
            reason,
        }
    }

    /// The connection is gone or replaced; the close is a courtesy.
    fn normal(reason: &'static str) -> Self {
        Self {
            code: close_code::NORMAL,
            reason,
        }
    }
}

type Ended = Result<(), Close>;

impl<S: Stream> Link<'_, S> {
    fn peer_ping_every(&self) -> Duration {
        self.worker.ctx.config.peer_ping_interval
    }

    fn send(&self, frame: Bytes) {
        self.out.borrow_mut().push(frame);
        self.wake.notify_one();
    }

    /// Writes frames, all of them, `IOVECS` at a time.
    async fn write_frames(&self, mut frames: Vec<Bytes>) -> Ended {
        while !frames.is_empty() {
            let rest = frames.split_off(frames.len().min(IOVECS));
            let mut chunk = std::mem::replace(&mut frames, rest);
            while !chunk.is_empty() {
                self.write_started.set(Some(Instant::now()));
                let written = self.stream.writev(&mut chunk).await;
                self.write_started.set(None);
                let mut n = match written {
                    Ok(0) | Err(_) => return Err(Close::normal("write failed")),
                    Ok(n) => n,
                };
                while n > 0 {
                    let f = &mut chunk[0];
                    if n >= f.len() {
                        n -= f.len();
                        chunk.remove(0);
                    } else {
                        let _ = f.split_to(n);
                        n = 0;
                    }
                }
            }
        }
        Ok(())
    }

    async fn flush_control(&self) -> Ended {
        let mut frames = std::mem::take(&mut *self.out.borrow_mut());
        frames.extend(self.pong.borrow_mut().take());
        self.write_frames(frames).await
    }

    /// Reads messages until the link ends, answering pings and handing
    /// data messages to `on_data`.
    async fn read_loop<F, Fut>(&self, mut buf: BytesMut, mut on_data: F) -> Ended
    where
        F: FnMut(Message) -> Fut,
        Fut: std::future::Future<Output = Ended>,
    {
        let mut decoder = Decoder::new(Role::Server, self.worker.ctx.config.peer_max_message);
        loop {
            loop {
                match decoder.decode(&mut buf) {
                    Ok(Some(m)) => {
                        self.last_heard.set(Instant::now());
                        match m {
                            Message::Ping(p) => {
                                *self.pong.borrow_mut() = Some(frame::pong_frame(&p));
                                self.wake.notify_one();
                            }
                            Message::Pong(_) => {}
                            Message::Close(..) => return Err(Close::normal("closed by the peer")),
                            m => on_data(m).await?,
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        return Err(Close {
                            code: e.code,
                            reason: e.reason,
                        })
                    }
                }
            }
            if buf.capacity() - buf.len() < READ_CHUNK {
                buf.reserve(64 * 1024);
            }
            match self.stream.read(&mut buf).await {
                Ok(0) | Err(_) => return Err(Close::normal("connection lost")),
                Ok(_) => {}
            }
        }
    }

    /// Pings when quiet; gives up after three silent intervals.
    async fn ping_loop(&self) -> Ended {
        let every = self.peer_ping_every();
        loop {
            tokio::time::sleep(every).await;
            let quiet = self.last_heard.get().elapsed();
            if quiet >= every * 3 {
                return Err(Close::going("no traffic for three ping intervals"));
            }
            if matches!(self.write_started.get(), Some(t) if t.elapsed() >= every * 3) {
                return Err(Close::going("the peer stopped reading"));
            }
            if quiet >= every {
                self.send(frame::ping_frame(b""));
            }
        }
    }

    /// The native interest messages for a change: one, or several when
    /// the groups would not fit one message (a full set of a hundred
    /// thousand names must not pass `--peer-max-message` and break the
    /// link). The first carries `full`; only the last carries `epoch`
    /// (the others one less), so its acknowledgement, and no earlier one,
    /// says the whole change is applied.
    fn interest_frames(
        epoch: u64,
        full: bool,
        added: &[Arc<str>],
        removed: &[Arc<str>],
    ) -> Vec<Bytes> {
        let chunks: Vec<&[Arc<str>]> = chunk_by_bytes(added, INTEREST_CHUNK_BYTES).collect();
        let n = chunks.len().max(1);
        (0..n)
            .map(|i| {
                let names = chunks.get(i).copied().unwrap_or(&[]);
                let e = if i + 1 == n {
                    epoch
                } else {
                    epoch.saturating_sub(1)
                };
                let gone: &[Arc<str>] = if i == 0 { removed } else { &[] };
                let m = wire::interest(
                    e,
                    full && i == 0,
                    names.iter().map(|g| &**g),
                    gone.iter().map(|g| &**g),
                );
                frame::binary_frame(&m)
            })
            .collect()
    }

    /// Runs a link's reader and writer with the pinger until one ends.
    async fn alongside_pings(
        &self,
        reader: impl std::future::Future<Output = Ended>,
        writer: impl std::future::Future<Output = Ended>,
    ) -> Ended {
        tokio::select! {
            r = reader => r,
            r = writer => r,
            r = self.ping_loop() => r,
        }
    }

    // === native: we receive ===

    /// `dialer` is the node the handshake authenticated; its hello must
    /// name the same node.
    async fn native(&self, mut buf: BytesMut, dialer: &str, version: u8) -> Ended {
        let ctx = &self.worker.ctx;
        // The dialer speaks first: who it is and which run.
        let hello = timeout(ctx.config.request_timeout, async {
            let mut decoder = Decoder::new(Role::Server, 64 * 1024);
            loop {
                if let Some(m) = decoder.decode(&mut buf).map_err(|e| Close {
                    code: e.code,
                    reason: e.reason,
                })? {
                    return Ok::<_, Close>(m);
                }
                buf.reserve(READ_CHUNK);
                if !matches!(self.stream.read(&mut buf).await, Ok(n) if n > 0) {
                    return Err(Close::normal("connection lost before hello"));
                }
            }
        })
        .await
        .map_err(|_| Close::protocol("no hello"))??;
        let Message::Binary(hello) = hello else {
            return Err(Close::protocol("expected hello"));
        };
        let (node, incarnation) = match wire::decode_version(&hello, version) {
            Ok(PeerMessage::Hello { node, incarnation }) => (node.to_owned(), incarnation),
            _ => return Err(Close::protocol("expected hello")),
        };
        // The name becomes a metric label and an AWX stats key.
        if !crate::backplane::is_node_name(&node) {
            return Err(Close::protocol("bad node name in hello"));
        }
        if node != dialer {
            return Err(Close::protocol(
                "hello names another node than the handshake",
            ));
        }
        let (generation, resume) = self.bp.hello(&node, incarnation);
        // Registered before the link shows as up: from then on, subscribe
        // replies wait for this link to apply their interest.
        let link_id = self.bp.link_id();
        self.bp.interest_pending(link_id);
        let m = self.bp.metrics.peers.link(&node, "in");
        m.up.set(1);
        m.connected_since.set(unix_now() as i64);
        self.bp.stats.connected(&node, unix_now());
        // However this link ends, a panic included, subscribes stop
        // waiting for it and it stops showing as up.
        let _up = Registered {
            bp: self.bp,
            interest_link: Some(link_id),
            up: m.up.clone(),
            remote: Some(node.clone()),
            sink: None,
        };
        if ctx.config.test_panic_on.as_deref() == Some(node.as_str()) {
            panic!("test_panic_on: a peer asked for it");
        }
        tracing::info!(node, ?resume, "peer link up (native, inbound)");

        let mut routes = ctx.routes.watch();
        routes.borrow_and_update();
        let (mut told, all) = LocalInterest::start(&ctx.routes);
        let mut first = vec![frame::binary_frame(&wire::welcome(
            &self.bp.node_id,
            self.bp.incarnation,
            resume,
        ))];
        first.extend(Self::interest_frames(told.epoch, true, &all, &[]));
        drop(all);
        // The epoch of the last interest sent, and the newest epoch that
        // changed nothing the peer knows of: acknowledged with it.
        let last_sent = Cell::new(told.epoch);
        let quiet_upto = Cell::new(0u64);
        let result = async {
            self.write_frames(first).await?;
            let delivered = Cell::new(resume.unwrap_or(0));
            let acked = Cell::new(resume.unwrap_or(0));
            let reader = self.read_loop(buf, |msg| {
                let m = &m;
                let node = &node;
                let delivered = &delivered;
                let (last_sent, quiet_upto) = (&last_sent, &quiet_upto);
                async move {
                    let Message::Binary(b) = msg else {
                        return Err(Close::protocol("text frame on a native link"));
                    };
                    let decoded = wire::decode_version(&b, version)
                        .map_err(|_| Close::protocol("malformed peer message"))?;
                    match decoded {
                        PeerMessage::Events { first_seq, events } => {
                            let max = ctx.config.max_group_name;
                            if events.clone().into_iter().any(|(g, _, _)| g.len() > max) {
                                return Err(Close::protocol("group name too long"));
                            }
                            let n = events.len() as u64;
                            let admit = self
                                .bp
                                .admit(node, generation, first_seq, n)
                                .map_err(|_| Close::normal("superseded by a newer link"))?;
                            m.gaps.inc_by(admit.gap);
                            // What a restarted sender replays of its stream
                            // and this node already delivered goes no further.
                            let fresh_events = self
                                .bp
                                .not_replayed(node, events.into_iter().skip(admit.skip as usize));
                            let fresh = fresh_events.len() as u64;
                            m.duplicates.inc_by(n - fresh);
                            m.events_received.inc_by(fresh);
                            m.bytes_received.inc_by(b.len() as u64);
                            self.bp.stats.received(node, fresh, unix_now());
                            ctx.router
                                .route_from_peer(fresh_events)
                                .await
                                .map_err(|_| Close::going("node shutting down"))?;
                            if n > 0 {
                                delivered.set(first_seq + n - 1);
                            }
                            self.wake.notify_one();
                            Ok(())
                        }
                        PeerMessage::InterestAck { epoch } => {
                            // The last interest applied covers every epoch
                            // after it that told the peer nothing new.
                            let upto = if epoch >= last_sent.get() {
                                epoch.max(quiet_upto.get())
                            } else {
                                epoch
                            };
                            self.bp.interest_acked(link_id, Some(upto));
                            Ok(())
                        }
                        _ => Err(Close::protocol("unexpected message from sender")),
                    }
                }
            });
            let writer = async {
                loop {
                    tokio::select! {
                        _ = self.wake.notified() => {}
                        r = routes.changed() => {
                            if r.is_err() {
                                return Err(Close::going("routes gone"));
                            }
                            let (added, removed) = told.catch_up(&ctx.routes);
                            if added.is_empty() && removed.is_empty() {
                                // Nothing for the peer: applied as soon as
                                // what was sent before is.
                                quiet_upto.set(told.epoch);
                                if self.bp.interest_acked_upto(link_id) >= last_sent.get() {
                                    self.bp.interest_acked(link_id, Some(told.epoch));
                                }
                            } else {
                                last_sent.set(told.epoch);
                                let frames = Self::interest_frames(told.epoch, false, &added, &removed);
                                self.out.borrow_mut().extend(frames);
                            }
                        }
                    }
                    if delivered.get() > acked.get() {
                        acked.set(delivered.get());
                        self.out
                            .borrow_mut()
                            .push(frame::binary_frame(&wire::ack(acked.get())));
                    }
                    self.flush_control().await?;
                }
            };
            self.alongside_pings(reader, writer).await
        }
        .await;
        result
    }

    // === AWX 2020: we send every local event ===

    async fn broadcast(&self, buf: BytesMut) -> Ended {
        let ctx = &self.worker.ctx;
        let m = self.bp.metrics.peers.link("awx-2020", "in");
        let limits = crate::backplane::SinkLimits {
            max_events: ctx.config.peer_buffer_events,
            max_bytes: ctx.config.peer_buffer_bytes,
        };
        let sink = Arc::new(Sink::new("awx-2020".into(), Interest::All, limits));
        self.bp.outbox.add(sink.clone());
        let _up = Registered {
            bp: self.bp,
            interest_link: None,
            up: m.up.clone(),
            remote: None,
            sink: Some(sink.clone()),
        };
        m.up.set(1);
        m.connected_since.set(unix_now() as i64);
        tracing::info!("peer link up (AWX 2020 broadcast, inbound)");
        let writer = async {
            let mut batch = Vec::new();
            loop {
                tokio::select! {
                    _ = sink.ready() => {}
                    _ = self.wake.notified() => {}
                }
                self.flush_control().await?;
                while sink.has_unsent() {
                    batch.clear();
                    sink.take(&mut batch, IOVECS, ctx.config.peer_batch_bytes);
                    let frames: Vec<Bytes> = batch
                        .iter()
                        .map(|p| frame::text_frame(&awx::broadcast_envelope(&p.group, &p.payload)))
                        .collect();
                    let bytes: usize = frames.iter().map(Bytes::len).sum();
                    self.write_frames(frames).await?;
                    sink.ack_sent();
                    m.events_sent.inc_by(batch.len() as u64);
                    m.bytes_sent.inc_by(bytes as u64);
                    let c = sink.take_counts();
                    m.evicted.inc_by(c.evicted);
                }
            }
        };
        let reader = self.read_loop(buf, |_| std::future::ready(Ok(())));
        let r = self.alongside_pings(reader, writer).await;
        // Evicted while full, and queued but never written: both lost to
        // this dialer, so both counted.
        m.evicted
            .inc_by(sink.take_counts().evicted + sink.depth() as u64);
        r
    }

    // === AWX 2022: we say what we want; the dialer pushes it ===

    async fn relay(&self, buf: BytesMut) -> Ended {
        let ctx = &self.worker.ctx;
        let m = self.bp.metrics.peers.link("awx-2022", "in");
        m.up.set(1);
        m.connected_since.set(unix_now() as i64);
        self.bp.stats.connected("awx-2022", unix_now());
        let _up = Registered {
            bp: self.bp,
            interest_link: None,
            up: m.up.clone(),
            remote: Some("awx-2022".into()),
            sink: None,
        };
        tracing::info!("peer link up (AWX 2022 relay, inbound)");
        let origin = format!("wsrelay_{}", self.bp.node_id);
        let mut routes = ctx.routes.watch();
        routes.borrow_and_update();
        let (mut told, all) = LocalInterest::start(&ctx.routes);
        let consumer = |added: Vec<Arc<str>>, removed: Vec<Arc<str>>| {
            [(true, added), (false, removed)]
                .into_iter()
                .filter(|(_, groups)| !groups.is_empty())
                .map(|(subscribe, groups)| {
                    let t = awx::consumer_message(subscribe, groups.iter().map(|g| &**g), &origin);
                    frame::text_frame(t.as_bytes())
                })
                .collect::<Vec<_>>()
        };
        let first = consumer(all, Vec::new());
        let r = async {
            self.write_frames(first).await?;
            let reader = self.read_loop(buf, |msg| {
                let m = &m;
                async move {
                    let Message::Text(t) = msg else {
                        return Ok(());
                    };
                    let max = ctx.config.max_group_name;
                    crate::backplane::receive_awx_event(
                        self.bp,
                        &ctx.router,
                        m,
                        "awx-2022",
                        &t,
                        max,
                    )
                    .await
                    .map_err(|_| Close::going("node shutting down"))?;
                    Ok(())
                }
            });
            let writer = async {
                loop {
                    tokio::select! {
                        _ = self.wake.notified() => {}
                        r = routes.changed() => {
                            if r.is_err() {
                                return Err(Close::going("routes gone"));
                            }
                            let (added, removed) = told.catch_up(&ctx.routes);
                            let frames = consumer(added, removed);
                            self.out.borrow_mut().extend(frames);
                        }
                    }
                    self.flush_control().await?;
                }
            };
            self.alongside_pings(reader, writer).await
        }
        .await;
        r
    }
}

/// Bytes of group names in one interest message at most.
const INTEREST_CHUNK_BYTES: usize = 256 * 1024;

/// Consecutive runs of `groups` of about `max` bytes of names each.
fn chunk_by_bytes(groups: &[Arc<str>], max: usize) -> impl Iterator<Item = &[Arc<str>]> {
    let mut rest = groups;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut bytes = 0;
        let n = rest
            .iter()
            .take_while(|g| {
                bytes += g.len() + 2;
                bytes <= max
            })
            .count()
            .max(1);
        let (head, tail) = rest.split_at(n);
        rest = tail;
        Some(head)
    })
}

/// What an inbound link registered with the node, undone on drop, however
/// the link ends.
struct Registered<'a> {
    bp: &'a Backplane,
    /// The native link subscribe replies wait for.
    interest_link: Option<u64>,
    up: prometheus_client::metrics::gauge::Gauge,
    /// The remote in AWX's stats.
    remote: Option<String>,
    /// The AWX 2020 dialer's sink in the outbox.
    sink: Option<Arc<Sink>>,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        if let Some(link) = self.interest_link {
            self.bp.interest_acked(link, None);
        }
        self.up.set(0);
        if let Some(remote) = &self.remote {
            self.bp.stats.disconnected(remote);
        }
        if let Some(sink) = &self.sink {
            self.bp.outbox.remove(sink);
        }
    }
}
