//! A websocket client session, from the upgrade to the last byte.
//!
//! Phases: (1) check the upgrade and the connection limit, answer 101;
//! (2) authenticate; a refused client gets `{"close": true}` and close 1008
//! (AWX's behaviour); (3) run the writer alongside the reader, the pinger
//! and the close signal; (4) once a close is queued, give the writer
//! `close_timeout` to get it out; (5) leave the hub, counting what was
//! never written.

use std::cell::Cell;
use std::future::poll_fn;
use std::rc::Rc;
use std::task::Poll;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use tokio::time::{timeout, Instant};

use super::conn;
use super::stream::{Stream, IOVECS, READ_CHUNK};
use super::worker::Worker;
use crate::auth::{AuthError, Identity};
use crate::fanout::{RouteDelta, SubId};
use crate::metrics::{Refusal, ServerClose};
use crate::protocol::client::{self as msg, GroupLimits};
use crate::protocol::frame::{self, close_code, Decoder, Message, Role};
use crate::protocol::http::{self, RequestHead};

pub(super) async fn run<S: Stream>(
    worker: Rc<Worker>,
    stream: &S,
    head: RequestHead,
    buf: BytesMut,
) {
    let ctx = worker.ctx.clone();
    let m = &ctx.metrics;
    let Some(_slot) = upgrade(&ctx, stream, &head, |r| {
        m.refused(r).inc();
    })
    .await
    else {
        return;
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if ctx.config.test_echo {
        return echo(&worker, stream, buf).await;
    }
    // Boxed: an API lookup's state is large and lives only until the
    // accept; inline, it would size every connection's task for life.
    let identity = match Box::pin(ctx.auth.authenticate(&head, now)).await {
        Ok(identity) => identity,
        Err(e) => {
            let why = match e {
                AuthError::Unavailable(_) => Refusal::AuthUnavailable,
                _ => Refusal::AuthFailed,
            };
            m.refused(why).inc();
            // A reconnect storm with stale credentials repeats this by
            // the thousand: one line per interval, with the count.
            if let Some(held) = ctx.throttle.client_refused.check() {
                tracing::warn!(reason = %e, held_back = held, "client refused");
            }
            refuse(stream, &e.close_reason(), &worker, buf).await;
            return;
        }
    };
    if ctx.auth.is_insecure() {
        tracing::warn!("DEV-INSECURE mode: accepted a client without verifying its token");
    }
    m.accepted.inc();
    m.connections[worker.index].inc();
    let id = worker.hub.borrow_mut().insert();
    // Leaves the hub however the session ends, a panic included: a
    // subscription must never outlive its connection.
    let _member = Member {
        worker: &worker,
        id,
        observer: false,
    };
    let rate = ctx.config.subscribe_rate as f64;
    let session = Session {
        worker: &worker,
        id,
        identity,
        csrf_cookie: head.cookie("csrftoken").map(str::to_owned),
        observer: false,
        write_started: Cell::new(None),
        message_budget: Cell::new((rate * 2.0, Instant::now())),
    };
    session.control(frame::text_frame(
        msg::accept_message(session.identity.user_id).as_bytes(),
    ));
    session.drive(stream, buf).await;
}

/// Answers the upgrade: 400 for a bad one, 503 past `--max-connections`
/// (each told to `refused`), else 101. `Some(slot)` (the connection's place
/// under the limit) once the socket is a websocket.
async fn upgrade<'c, S: Stream>(
    ctx: &'c super::NodeContext,
    stream: &S,
    head: &RequestHead,
    refused: impl Fn(Refusal),
) -> Option<super::Slot<'c>> {
    let accept_key = match http::upgrade_accept_key(head) {
        Ok(k) => k,
        Err(e) => {
            refused(Refusal::BadUpgrade);
            let reply = http::error_response(400, &e.to_string(), false);
            conn::answer_and_close(stream, reply).await;
            return None;
        }
    };
    let Some(slot) = super::Slot::acquire(&ctx.ws_connections, ctx.config.max_connections) else {
        refused(Refusal::ConnectionLimit);
        let reply = http::error_response(503, "connection limit reached", false);
        conn::answer_and_close(stream, reply).await;
        return None;
    };
    stream
        .write_all(http::switching_protocols(&accept_key))
        .await
        .ok()
        .map(|_| slot)
}

/// Conformance testing (`Config::test_echo`): the session machinery with
/// every message echoed back, unauthenticated, so the Autobahn cases
/// exercise the decoder, control frames, closes and UTF-8 checks that
/// serve clients.
async fn echo<S: Stream>(worker: &Worker, stream: &S, buf: BytesMut) {
    let id = worker.hub.borrow_mut().insert();
    worker.ctx.metrics.connections[worker.index].inc();
    let _member = Member {
        worker,
        id,
        observer: false,
    };
    let session = Session {
        worker,
        id,
        identity: Identity::anyone(0),
        csrf_cookie: None,
        observer: false,
        write_started: Cell::new(None),
        message_budget: Cell::new((f64::MAX, Instant::now())),
    };
    session.drive(stream, buf).await;
}

/// The status page's tail of one group (`/status/tail?group=G`, already
/// admitted by `admin::check`): a websocket that receives the group's
/// events as a client would. It is an observer: not a client in the
/// metrics, its messages are ignored, and it drops its oldest (telling the
/// page `{"dropped": N}`) when the browser falls behind, so an operator
/// watching a storm costs the node a bounded queue.
pub(super) async fn tail<S: Stream>(
    worker: Rc<Worker>,
    stream: &S,
    head: RequestHead,
    buf: BytesMut,
) {
    let ctx = worker.ctx.clone();
    let group = head.query_param("group").unwrap_or_default();
    if group.is_empty() || group.len() > ctx.config.max_group_name {
        let reply = http::error_response(
            400,
            "give the group to tail: /status/tail?group=NAME",
            false,
        );
        return conn::answer_and_close(stream, reply).await;
    }
    // Counted against the connection limit like any websocket (but not
    // among the clients refused).
    let Some(_slot) = upgrade(&ctx, stream, &head, |_| {}).await else {
        return;
    };
    let id = worker.hub.borrow_mut().insert_observer();
    let _member = Member {
        worker: &worker,
        id,
        observer: true,
    };
    let session = Session {
        worker: &worker,
        id,
        identity: Identity::anyone(0),
        csrf_cookie: None,
        observer: true,
        write_started: Cell::new(None),
        message_budget: Cell::new((f64::MAX, Instant::now())),
    };
    let mut delta = RouteDelta::default();
    worker.hub.borrow_mut().set_groups(
        id,
        std::collections::BTreeSet::from([group.clone()]),
        &mut delta,
    );
    // Held on this node, then by its peers and in Redis, as a client's
    // subscription is, before the page is told.
    if let Some(epoch) = worker.publish(&delta) {
        Box::pin(followers_caught_up(&ctx, epoch)).await;
    }
    tracing::info!(group, "status page tail opened");
    session.control(frame::text_frame(
        serde_json::json!({ "tail": group }).to_string().as_bytes(),
    ));
    session.drive(stream, buf).await;
}

/// A client's place in its worker's hub, given up on drop.
struct Member<'w> {
    worker: &'w Worker,
    id: SubId,
    /// The status page's tail: not counted as a connection.
    observer: bool,
}

impl Drop for Member<'_> {
    fn drop(&mut self) {
        let mut delta = RouteDelta::default();
        // During a panic's unwinding every borrow made below this frame is
        // already released; `try_` keeps even a broken invariant from
        // turning into a second panic.
        let Ok(mut hub) = self.worker.hub.try_borrow_mut() else {
            return;
        };
        let unsent = hub.remove(self.id, &mut delta);
        drop(hub);
        self.worker.publish(&delta);
        let m = &self.worker.ctx.metrics;
        // Accepted for this client and never written: counted, not silent.
        m.dropped.inc_by(unsent);
        if !self.observer {
            m.connections[self.worker.index].dec();
        }
    }
}

/// AWX's answer to a client it will not serve: `{"close": true}`, then a
/// close frame with code 1008 and the reason. The socket closes as soon as
/// the client's close frame arrives (or anything unusable does), and at
/// the latest after `close_timeout`: a reconnect storm of refused clients
/// must not hold descriptors for the whole timeout.
async fn refuse<S: Stream>(stream: &S, reason: &str, worker: &Worker, mut buf: BytesMut) {
    let mut out = frame::text_frame(msg::CLOSE_MESSAGE.as_bytes()).to_vec();
    out.extend_from_slice(&frame::close_frame(close_code::POLICY_VIOLATION, reason));
    if stream.write_all(out).await.is_err() {
        return;
    }
    let mut decoder = Decoder::new(Role::Server, 1024);
    let _ = timeout(worker.ctx.config.close_timeout, async {
        loop {
            match decoder.decode(&mut buf) {
                // The client's close (or garbage): the handshake is over.
                Ok(Some(Message::Close(..))) | Err(_) => return,
                Ok(Some(_)) => continue,
                Ok(None) => {}
            }
            // Bounded: a client that streams data instead of closing is
            // cut off here rather than buffered.
            if buf.len() > 64 * 1024 {
                return;
            }
            buf.reserve(READ_CHUNK);
            if !matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {
                return;
            }
        }
    })
    .await;
}

/// Waits (bounded by `--subscribe-ack-timeout-ms`) until the Redis ingest
/// and every connected native peer have applied routes epoch `epoch`.
async fn followers_caught_up(ctx: &super::NodeContext, epoch: u64) {
    let redis = async {
        if let Some(ack) = &ctx.redis_ack {
            let _ = ack.clone().wait_for(|e| *e >= epoch).await;
        }
    };
    let peers = ctx.backplane.interest_applied(epoch);
    let _ = timeout(ctx.config.subscribe_ack_timeout, async {
        tokio::join!(redis, peers)
    })
    .await;
}

struct Session<'w> {
    worker: &'w Worker,
    id: SubId,
    identity: Identity,
    csrf_cookie: Option<String>,
    /// The status page's tail: its messages are ignored.
    observer: bool,
    /// When the write in progress started: a write that the client has not
    /// let finish for a whole ping interval marks a client that stopped
    /// reading (it may still answer pings).
    write_started: Cell<Option<Instant>>,
    /// Messages this connection may still send now (a token bucket refilled
    /// at `--subscribe-rate`, holding twice that).
    message_budget: Cell<(f64, Instant)>,
}

// === impl Session ===

impl Session<'_> {
    /// The writer runs until the close frame is out (or the socket fails);
    /// it is never cancelled mid-write while the connection is to go on.
    /// Alongside it, the reader, the pinger and the close signal run until
    /// a close is queued by anyone; then the writer gets `close_timeout` to
    /// deliver it. Without a close (the client vanished) the session ends
    /// at once.
    async fn drive<S: Stream>(&self, stream: &S, buf: BytesMut) {
        let last_heard = Cell::new(Instant::now());
        let until_done = async {
            tokio::select! {
                () = self.read_loop(stream, buf, &last_heard) => {}
                () = self.ping_loop(&last_heard) => {}
                () = poll_fn(|cx| self.worker.hub.borrow_mut().poll_closing(self.id, cx)) => {}
            }
            if self.is_closing() {
                let cfg = &self.worker.ctx.config;
                let shutting_down = self
                    .worker
                    .ctx
                    .shutting_down
                    .load(std::sync::atomic::Ordering::Acquire);
                // On shutdown the queue is flushed before the close frame.
                let wait = if shutting_down {
                    cfg.shutdown_grace
                } else {
                    cfg.close_timeout
                };
                tokio::time::sleep(wait).await;
            }
        };
        tokio::select! {
            _ = self.write_loop(stream) => {}
            () = until_done => {}
        }
    }

    fn is_closing(&self) -> bool {
        self.worker.hub.borrow_mut().queue_mut(self.id).is_closing()
    }

    /// Queues a reply or control frame; one that does not fit the queue's
    /// bound (the same bound as events) closes the client as a slow
    /// consumer.
    fn control(&self, frame: bytes::Bytes) {
        let ok = self.worker.hub.borrow_mut().push_control(self.id, frame);
        if !ok {
            self.close(
                close_code::TRY_AGAIN_LATER,
                "slow consumer",
                ServerClose::SlowConsumer,
            );
        }
    }

    fn close(&self, code: u16, reason: &str, why: ServerClose) {
        let mut delta = RouteDelta::default();
        let discarded = self
            .worker
            .hub
            .borrow_mut()
            .close(self.id, code, reason, &mut delta);
        self.worker.publish(&delta);
        let m = &self.worker.ctx.metrics;
        m.dropped.inc_by(discarded);
        m.server_close(why).inc();
    }

    async fn read_loop<S: Stream>(
        &self,
        stream: &S,
        mut buf: BytesMut,
        last_heard: &Cell<Instant>,
    ) {
        let mut decoder = Decoder::new(Role::Server, self.worker.ctx.config.max_message_bytes);
        loop {
            loop {
                match decoder.decode(&mut buf) {
                    Ok(Some(message)) => {
                        last_heard.set(Instant::now());
                        if !self.on_message(message).await {
                            return;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        let why = match e.code {
                            close_code::MESSAGE_TOO_BIG => ServerClose::TooBig,
                            close_code::INVALID_PAYLOAD => ServerClose::InvalidUtf8,
                            _ => ServerClose::ProtocolError,
                        };
                        self.close(e.code, e.reason, why);
                        return;
                    }
                }
            }
            if self.is_closing() {
                return;
            }
            if buf.capacity() - buf.len() < READ_CHUNK / 4 {
                buf.reserve(READ_CHUNK);
            }
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    }

    /// Handles one message; `false` ends the reading side.
    async fn on_message(&self, message: Message) -> bool {
        match message {
            Message::Text(text) if self.worker.ctx.config.test_echo => {
                self.control(frame::text_frame(&text));
                true
            }
            Message::Binary(b) if self.worker.ctx.config.test_echo => {
                self.control(frame::binary_frame(&b));
                true
            }
            Message::Text(_) if self.observer => true,
            Message::Text(mut text) => {
                self.pace().await;
                self.on_text(&mut text).await;
                true
            }
            Message::Binary(_) => {
                self.close(
                    close_code::UNSUPPORTED_DATA,
                    "binary frames are not supported",
                    ServerClose::Binary,
                );
                false
            }
            Message::Ping(payload) => {
                self.control(frame::pong_frame(&payload));
                true
            }
            Message::Pong(_) => true,
            Message::Close(code, _) => {
                // Echo a valid code back (RFC 6455 section 5.5.1).
                let reply = match code {
                    1005 => close_code::NORMAL,
                    1000..=1003 | 1007..=1014 | 3000..=4999 => code,
                    _ => close_code::PROTOCOL_ERROR,
                };
                let mut delta = RouteDelta::default();
                self.worker
                    .hub
                    .borrow_mut()
                    .close(self.id, reply, "", &mut delta);
                self.worker.publish(&delta);
                false
            }
        }
    }

    /// Waits until this connection may send another message: past
    /// `--subscribe-rate` per second (with a burst of twice that) the
    /// reader pauses, so the client's own socket buffers back up and the
    /// node does a bounded amount of work per connection.
    async fn pace(&self) {
        let rate = self.worker.ctx.config.subscribe_rate as f64;
        let (tokens, at) = self.message_budget.get();
        let now = Instant::now();
        let tokens = (tokens + now.duration_since(at).as_secs_f64() * rate).min(rate * 2.0);
        if tokens >= 1.0 {
            self.message_budget.set((tokens - 1.0, now));
            return;
        }
        self.worker.ctx.metrics.messages_paced.inc();
        let wait = std::time::Duration::from_secs_f64((1.0 - tokens) / rate);
        tokio::time::sleep(wait).await;
        self.message_budget.set((0.0, Instant::now()));
    }

    async fn on_text(&self, text: &mut [u8]) {
        let cfg = &self.worker.ctx.config;
        if cfg
            .test_panic_on
            .as_deref()
            .is_some_and(|p| p.as_bytes() == text)
        {
            panic!("test_panic_on: a client asked for it");
        }
        let limits = GroupLimits {
            max_groups: cfg.max_groups,
            max_group_name: cfg.max_group_name,
            max_access_checks: cfg.max_access_checks,
        };
        let session = msg::Session {
            identity: &self.identity,
            csrf_cookie: self.csrf_cookie.as_deref(),
        };
        let mut plan = msg::plan(text, session, limits, &self.worker.ctx.policy);
        if !plan.checks.is_empty() {
            // Boxed for the same reason as the subscribe wait below.
            Box::pin(self.check_access(&mut plan)).await;
        }
        let m = &self.worker.ctx.metrics;
        m.client_errors.inc_by(plan.errors.len() as u64);
        // One reply for all of a message's errors: a message naming a
        // thousand bad ids must not make a thousand frames.
        if !plan.errors.is_empty() {
            self.control(frame::text_frame(
                msg::errors_message(&plan.errors).as_bytes(),
            ));
        }
        let Some(target) = plan.subscribe else {
            return;
        };
        // The node's group limit: each group is a routes entry here, and a
        // membership in AWX's Redis. Counted against what the node holds
        // now (several workers may pass it at once by a few subscribes).
        let max = cfg.max_node_groups;
        let (held, new) = {
            let table = self.worker.ctx.routes.load();
            let new = target
                .iter()
                .filter(|g| !table.groups.contains_key(g.as_str()))
                .count();
            (table.groups.len(), new)
        };
        if new > 0 && held + new > max {
            m.client_errors.inc();
            let e = format!("node group limit reached: {held} groups held, limit {max}");
            self.control(frame::text_frame(msg::error_message(&e).as_bytes()));
            return;
        }
        let mut delta = RouteDelta::default();
        let reply = {
            let mut hub = self.worker.hub.borrow_mut();
            let change = hub.set_groups(self.id, target, &mut delta);
            msg::groups_reply(
                hub.groups_of(self.id),
                change.left.iter().map(|g| &**g),
                change.joined.iter().map(|g| &**g),
            )
        };
        // Routes first: once the client reads the reply, events emitted
        // anywhere afterwards must reach it. With Redis, that includes the
        // memberships there (AWX awaits its group_add the same way); the
        // wait is bounded, and the ingest acknowledges at once while Redis
        // is down.
        // The same holds for peers: each connected wsrelay peer applies the
        // new interest before the reply goes out. Boxed, in its own
        // function: subscribes are rare, and inline its state would grow
        // every connection's task (measured: +624 bytes each).
        if let Some(epoch) = self.worker.publish(&delta) {
            Box::pin(followers_caught_up(&self.worker.ctx, epoch)).await;
        }
        self.control(frame::text_frame(reply.as_bytes()));
    }

    /// Asks AWX's API about every object the plan needs (concurrently;
    /// cached and coalesced per user and group in `auth::api`) and drops
    /// the groups it does not allow, with AWX's denial text. When the API
    /// cannot answer, the group is left out with a reason: failing open
    /// would show a job's output to someone AWX never cleared.
    async fn check_access(&self, plan: &mut msg::Plan) {
        let (Some(api), Some(creds)) = (&self.worker.ctx.auth.api, &self.identity.api) else {
            return;
        };
        let uid = self.identity.user_id;
        let answers = futures_util::future::join_all(
            plan.checks
                .iter()
                .map(|c| api.may_see(uid, creds, &c.group, &c.path)),
        )
        .await;
        for (check, answer) in plan.checks.drain(..).zip(answers) {
            let error = match answer {
                Ok(true) => continue,
                Ok(false) => check.denial(),
                Err(why) => format!(
                    "access check unavailable for channel {} resource id {}: {why}",
                    check.kind, check.id
                ),
            };
            plan.errors.push(error);
            if let Some(target) = &mut plan.subscribe {
                target.remove(&check.group);
            }
        }
    }

    /// Writes queued frames until the queue's close frame is written. Each
    /// round moves up to `IOVECS` frames out of the queue into one vectored
    /// write and puts back what the socket did not take.
    async fn write_loop<S: Stream>(&self, stream: &S) -> std::io::Result<()> {
        // Grows with the batches it carries; an idle client's stays tiny.
        let mut frames = Vec::new();
        let mut last_write: Option<Instant> = None;
        loop {
            let more = poll_fn(|cx| {
                let mut hub = self.worker.hub.borrow_mut();
                if hub.queue_mut(self.id).is_closed_and_drained() {
                    return Poll::Ready(false);
                }
                hub.poll_pending(self.id, cx).map(|()| true)
            })
            .await;
            if !more {
                return Ok(());
            }
            // Pacing: a write soon after the last one waits out the
            // interval, so that under a flood one syscall (and one wake-up of
            // the reader) carries everything that arrived meanwhile, while a
            // write after a quiet spell goes at once. Cut short once a full
            // batch is waiting or the connection is closing: a burst queued
            // meanwhile could otherwise fill the queue of a client that
            // keeps up, and close it as a slow consumer.
            let interval = self.worker.ctx.config.client_write_interval;
            if let Some(due) = last_write.map(|t| t + interval) {
                if Instant::now() < due {
                    let batch =
                        poll_fn(|cx| self.worker.hub.borrow_mut().poll_batch(self.id, IOVECS, cx));
                    tokio::select! {
                        () = batch => {}
                        () = tokio::time::sleep_until(due) => {}
                    }
                }
            }
            self.worker
                .hub
                .borrow_mut()
                .queue_mut(self.id)
                .take_batch(&mut frames, IOVECS);
            let now = Instant::now();
            self.write_started.set(Some(now));
            last_write = Some(now);
            self.worker.ctx.metrics.socket_writes[self.worker.index].inc();
            let result = match stream.writev(&mut frames).await {
                Ok(0) => Err(std::io::ErrorKind::WriteZero.into()),
                other => other,
            };
            self.write_started.set(None);
            let mut hub = self.worker.hub.borrow_mut();
            let queue = hub.queue_mut(self.id);
            // On failure the batch goes back whole, so the frames are counted
            // when the session ends rather than vanishing.
            let oldest = queue.settle(&mut frames, *result.as_ref().unwrap_or(&0));
            drop(hub);
            result?;
            // One observation per write: the oldest event it carried, from
            // the router to the socket.
            if let Some(at) = oldest {
                let ctx = &self.worker.ctx;
                let waited = super::stamp(ctx.started).wrapping_sub(at);
                ctx.metrics.delivery_latency[self.worker.index]
                    .observe(f64::from(waited) * super::STAMP_SECS);
            }
        }
    }

    /// Pings every interval; closes a client that stayed silent for a whole
    /// interval after a ping.
    async fn ping_loop(&self, last_heard: &Cell<Instant>) {
        let interval = self.worker.ctx.config.ping_interval;
        let mut ping_sent: Option<Instant> = None;
        loop {
            tokio::time::sleep(interval).await;
            if matches!(ping_sent, Some(sent) if last_heard.get() < sent) {
                self.close(
                    close_code::GOING_AWAY,
                    "ping timeout",
                    ServerClose::PingTimeout,
                );
                return;
            }
            // Answering pings is not enough: a client whose socket took
            // nothing for a whole interval while we had frames for it has
            // stopped reading, and would hold its queue forever.
            if matches!(self.write_started.get(), Some(t) if t.elapsed() >= interval) {
                self.close(
                    close_code::TRY_AGAIN_LATER,
                    "slow consumer",
                    ServerClose::SlowConsumer,
                );
                return;
            }
            ping_sent = Some(Instant::now());
            self.control(frame::ping_frame(b""));
        }
    }
}
