//! The cluster backplane on a NATS broker (`--broker nats://...`), beside
//! or instead of the mesh of links.
//!
//! Each node publishes the events produced here once, to one subject per
//! group (`<prefix>.g.<group>`), and subscribes only to the groups its
//! clients hold: the broker does the fan-out between nodes, so what a node
//! sends does not grow with the number of nodes. A message carries a run
//! of one group's events, each with the sender's sequence number; the
//! sender takes them from the same outbox the mesh links use (a `Sink` that
//! wants everything), so a message is acknowledged, resent after a lost
//! connection, or counted as lost exactly as on a link.
//!
//! With JetStream (`--broker-replay-window-s`, default 120) the broker also
//! keeps every message for that long in one stream: publishing waits for
//! the stream's acknowledgement, and a node that lost its connection
//! replays, once back, what its groups missed meanwhile. Receivers drop
//! what they have seen (per group and sending run, by sequence), so a
//! resend or a replay's overlap is never delivered twice. Without
//! JetStream, events published while a node was away are lost for it; the
//! sender counts what it could not publish.
//!
//! Events received from the broker are delivered here only, never passed
//! to a peer or back to the broker: each event crosses the cluster once.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::io;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use async_nats::{Client, HeaderMap};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio::task::AbortHandle;

use super::outbox::{Interest, Pending, Sink, SinkLimits};
use super::seen::Seen;
use super::{interest::LocalInterest, is_node_name, resume, wire, Backplane};
use crate::config::{Config, ConfigError};
use crate::fanout::{Router, Routes};
use crate::metrics::BrokerMetrics;

/// How far before a lost connection a resume starts replaying: messages
/// the broker had stored but not yet handed to this node when the
/// connection went are covered if they were stored no earlier than this.
const REPLAY_MARGIN: Duration = Duration::from_secs(5);
/// How often the stream's last sequence is sampled (where a replay starts).
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);
/// Checkpoints kept (at one a second: the margin and then some).
const CHECKPOINTS: usize = 64;
/// How often a resume point is saved while something changed.
const SAVE_EVERY: Duration = Duration::from_secs(1);
/// How often it is saved when nothing did (its age tells a restarted node
/// whether it is still of use).
const SAVE_ANYWAY: Duration = Duration::from_secs(10);
/// Messages waiting between the subscriptions and the delivery loop.
const INBOX: usize = 4096;
/// Messages the client buffers per subscription before the delivery loop
/// takes them (async-nats's default is 65,536): past it the client drops
/// and reports a slow consumer, counted. Each message is at most the
/// server's `max_payload`.
const PER_SUBSCRIPTION: usize = 1024;
/// What a broker message may carry besides the events (names, counts).
const MESSAGE_OVERHEAD: usize = 1024;
/// Room for the `Nats-Msg-Id` header, which counts against the server's
/// `max_payload` with the body: `NATS/1.0`, the key and an id of at most
/// 64 + 3 * 20 + 3 bytes, the line ends: 154 bytes at most.
const HEADER_ROOM: usize = 256;

/// The largest body `messages` may build for a server whose `max_payload`
/// is `server_max`: what is left once the signature and the header have
/// their room. Events that cannot fit it are counted as lost, never sent
/// to be refused (a refused publish is retried, and would be forever).
pub fn message_budget(server_max: usize) -> usize {
    server_max.saturating_sub(TAG + HEADER_ROOM)
}

/// The broker's settings, from `Config`.
#[derive(Debug, Clone)]
pub struct BrokerSettings {
    /// The servers, without credentials (they travel apart, below, so that
    /// no address the client logs carries them).
    pub urls: Vec<String>,
    pub credentials: Option<Credentials>,
    pub prefix: String,
    /// How long the stream keeps messages; zero: no JetStream, no resume.
    pub replay_window: Duration,
    pub stream: String,
    pub stream_max_bytes: i64,
    pub batch_events: usize,
    pub batch_bytes: usize,
    pub limits: SinkLimits,
    pub connect_timeout: Duration,
    pub ack_timeout: Duration,
    pub max_group_name: usize,
    /// After a restart, how long the node waits for its clients to
    /// subscribe again before it replays what they missed
    /// (`--backlog-hold-ms`).
    pub resume_hold: Duration,
}

/// A NATS login taken from the URLs' user part: `user:password@`, or a
/// token alone (`token@`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    User(String, crate::config::Secret),
    Token(crate::config::Secret),
}

/// Splits `url`'s user part off: the URL without it, and the login.
fn split_credentials(url: &str) -> Result<(String, Option<Credentials>), ConfigError> {
    let bad = || {
        ConfigError::Broker(format!(
            "--broker {}: not a URL",
            crate::config::mask_url(url)
        ))
    };
    let mut u = reqwest::Url::parse(url).map_err(|_| bad())?;
    if u.host_str().is_none() {
        return Err(bad());
    }
    let user = percent_decode(u.username());
    let pass = u.password().map(percent_decode);
    let creds = match (user.is_empty(), pass) {
        (true, None) => None,
        (false, None) => Some(Credentials::Token(user.into())),
        (_, Some(p)) => Some(Credentials::User(user, p.into())),
    };
    u.set_username("").map_err(|_| bad())?;
    u.set_password(None).map_err(|_| bad())?;
    Ok((u.to_string().trim_end_matches('/').to_owned(), creds))
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            if let Some(b) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl BrokerSettings {
    /// `None` when no broker is configured.
    pub fn from_config(c: &Config) -> Result<Option<Self>, ConfigError> {
        if c.broker.is_empty() {
            return Ok(None);
        }
        let mut urls = Vec::with_capacity(c.broker.len());
        let mut credentials = None;
        for (i, url) in c.broker.iter().enumerate() {
            if !(url.starts_with("nats://") || url.starts_with("tls://")) {
                return Err(ConfigError::Broker(format!(
                    "--broker {}: want nats://host:port or tls://host:port",
                    crate::config::mask_url(url)
                )));
            }
            let (bare, creds) = split_credentials(url)?;
            // One login for the cluster: the client presents it to
            // whichever server it reaches.
            if i > 0 && creds != credentials {
                return Err(ConfigError::Broker(
                    "--broker: the servers' URLs carry different logins; one cluster takes one"
                        .into(),
                ));
            }
            credentials = creds;
            urls.push(bare);
        }
        let prefix = &c.broker_subject_prefix;
        if prefix.is_empty()
            || !prefix.split('.').all(|t| {
                !t.is_empty()
                    && t.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            })
        {
            return Err(ConfigError::Broker(format!(
                "--broker-subject-prefix {prefix:?}: want dot-separated tokens of letters, digits, '-' or '_'"
            )));
        }
        Ok(Some(Self {
            urls,
            credentials,
            prefix: prefix.clone(),
            replay_window: c.broker_replay_window,
            stream: c.broker_stream.clone(),
            stream_max_bytes: i64::try_from(c.broker_stream_max_bytes).unwrap_or(i64::MAX),
            batch_events: c.peer_batch_events,
            batch_bytes: c.peer_batch_bytes,
            limits: SinkLimits {
                max_events: c.peer_buffer_events,
                max_bytes: c.peer_buffer_bytes,
            },
            connect_timeout: c.peer_connect_timeout,
            ack_timeout: c.subscribe_ack_timeout.max(Duration::from_secs(5)),
            max_group_name: c.max_group_name,
            resume_hold: c.backlog_hold,
        }))
    }
}

type HmacSha256 = hmac::Hmac<sha2::Sha256>;
/// The signature's length at the end of every broker message.
const TAG: usize = 32;

fn mac(secret: &[u8], subject: &str, body: &[u8]) -> HmacSha256 {
    use hmac::Mac;
    let mut m = HmacSha256::new_from_slice(secret).expect("HMAC takes any key length");
    m.update(b"wsrelay.broker.v1\n");
    m.update(subject.as_bytes());
    m.update(b"\n");
    m.update(body);
    m
}

/// Signs a message for `subject` with the backplane secret: anyone who
/// may publish on the broker but lacks the secret cannot inject events,
/// nor move a signed message to another group.
pub fn seal(secret: &[u8], subject: &str, body: &[u8]) -> Bytes {
    use hmac::Mac;
    let tag = mac(secret, subject, body).finalize().into_bytes();
    let mut out = Vec::with_capacity(body.len() + TAG);
    out.extend_from_slice(body);
    out.extend_from_slice(&tag);
    Bytes::from(out)
}

/// The body of a message signed for `subject`, or `None` (compared in
/// constant time).
pub fn open<'a>(secret: &[u8], subject: &str, msg: &'a [u8]) -> Option<&'a [u8]> {
    use hmac::Mac;
    let (body, tag) = msg.split_at_checked(msg.len().checked_sub(TAG)?)?;
    mac(secret, subject, body).verify_slice(tag).ok()?;
    Some(body)
}

/// Asks the broker whether a node is on it too: such a node gets this
/// node's events from the broker, so a native link to it must not carry
/// them as well. The answer is signed over a fresh nonce: a publisher
/// without the secret cannot claim to be a node (and so mute a link).
#[derive(Clone)]
pub struct Presence {
    client: Client,
    prefix: String,
    secret: String,
}

impl Presence {
    fn subject(prefix: &str, node: &str) -> String {
        format!("{prefix}.node.{node}")
    }

    fn proof(secret: &str, node: &str, nonce: &[u8]) -> HmacSha256 {
        use hmac::Mac;
        let mut m =
            HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
        m.update(b"wsrelay.presence.v1\n");
        m.update(node.as_bytes());
        m.update(b"\n");
        m.update(nonce);
        m
    }

    /// Whether `node` answers on the broker within a second.
    pub async fn is_member(&self, node: &str) -> bool {
        use hmac::Mac;
        if !is_node_name(node) {
            return false;
        }
        let nonce: [u8; 16] = rand::random();
        let ask = self.client.request(
            Self::subject(&self.prefix, node),
            Bytes::copy_from_slice(&nonce),
        );
        match tokio::time::timeout(Duration::from_secs(1), ask).await {
            Ok(Ok(reply)) => Self::proof(&self.secret, node, &nonce)
                .verify_slice(&reply.payload)
                .is_ok(),
            _ => false,
        }
    }
}

/// Answers presence questions about this node.
async fn answer_presence(client: Client, prefix: String, node: String, secret: String) {
    use hmac::Mac;
    let Ok(mut sub) = client.subscribe(Presence::subject(&prefix, &node)).await else {
        return;
    };
    while let Some(msg) = sub.next().await {
        if let Some(reply) = msg.reply {
            let proof = Presence::proof(&secret, &node, &msg.payload)
                .finalize()
                .into_bytes();
            let _ = client.publish(reply, Bytes::copy_from_slice(&proof)).await;
        }
    }
}

/// The subject a group's events travel on. Group names made only of
/// letters, digits, `-` and `_` (all of AWX's) are used as they are;
/// anything else is hex after a `~`, which no plain name starts with.
pub fn subject(prefix: &str, group: &str) -> String {
    if !group.is_empty()
        && group
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        format!("{prefix}.g.{group}")
    } else {
        let mut s = format!("{prefix}.g.~");
        for b in group.bytes() {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }
}

/// The group a subject names, if it is one of ours.
pub fn group_of(prefix: &str, subject: &str) -> Option<String> {
    let token = subject.strip_prefix(prefix)?.strip_prefix(".g.")?;
    match token.strip_prefix('~') {
        None if !token.is_empty() => Some(token.to_owned()),
        None => None,
        Some(hex) => {
            if hex.len() % 2 != 0 {
                return None;
            }
            let bytes = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
                .collect::<Option<Vec<u8>>>()?;
            String::from_utf8(bytes).ok()
        }
    }
}

/// One broker message ready to publish.
#[derive(Debug)]
pub struct Outgoing {
    pub group: Arc<str>,
    pub body: Bytes,
    pub events: usize,
    /// The sequences of its first and last events: with node and
    /// incarnation, the message's identity (`msg_id`).
    pub first_seq: u64,
    pub last_seq: u64,
}

/// The identity JetStream de-duplicates a message by (`Nats-Msg-Id`): its
/// sender's run and the span of sequences it carries. The span, not the
/// first sequence alone: a resend after a lost connection may take a
/// longer batch from the same start while the first attempt, still
/// buffered in the client, reaches the stream too; by its start alone the
/// stream would drop the longer one as a duplicate, and what only it
/// carried would be lost. Within a span a group's events are the same
/// whatever the batch (the outbox keeps them in order), so equal
/// identities carry equal events.
pub fn msg_id(node: &str, incarnation: u64, m: &Outgoing) -> String {
    format!("{node}.{incarnation:x}.{}-{}", m.first_seq, m.last_seq)
}

/// Splits events taken from the outbox into broker messages: one per run
/// of a group within the batch, events in their order, each message under
/// `max_bytes` (an event too big for any message is counted apart).
pub fn messages(
    node: &str,
    incarnation: u64,
    batch: &[Pending],
    max_bytes: usize,
) -> (Vec<Outgoing>, usize) {
    struct Open {
        group: Arc<str>,
        w: wire::BrokerWriter,
        events: usize,
        first_seq: u64,
        last_seq: u64,
    }
    impl Open {
        fn done(self) -> Outgoing {
            Outgoing {
                group: self.group,
                body: self.w.finish(),
                events: self.events,
                first_seq: self.first_seq,
                last_seq: self.last_seq,
            }
        }
    }
    let mut open: Vec<Open> = Vec::new();
    let mut done = Vec::new();
    let mut too_big = 0;
    for p in batch {
        if p.payload.len() + MESSAGE_OVERHEAD + p.group.len() > max_bytes {
            too_big += 1;
            continue;
        }
        let fits = |o: &Open| {
            o.w.len() + p.payload.len() + wire::BrokerWriter::EVENT_OVERHEAD <= max_bytes
        };
        let at = match open.iter().position(|o| o.group == p.group) {
            Some(i) if fits(&open[i]) => i,
            found => {
                // A full message of this group goes first: order kept.
                if let Some(i) = found {
                    done.push(open.swap_remove(i).done());
                }
                open.push(Open {
                    group: p.group.clone(),
                    w: wire::BrokerWriter::start(node, incarnation, &p.group),
                    events: 0,
                    first_seq: p.seq,
                    last_seq: p.seq,
                });
                open.len() - 1
            }
        };
        open[at].w.push(p.seq, p.origin, &p.payload);
        open[at].events += 1;
        open[at].last_seq = p.seq;
    }
    done.extend(open.into_iter().map(Open::done));
    (done, too_big)
}

/// The publish round of each message (`msgs` as `messages` builds them):
/// a group's n-th message of the batch goes in round n. Each round is
/// acknowledged before the next starts, so a group's later message is
/// never stored while an earlier one is refused: a node replaying the
/// stream would drop the earlier one's resend as seen (its per-group mark
/// has passed it). Batches under the server's `max_payload` make one
/// message per group, and so one round.
pub fn rounds(msgs: &[Outgoing]) -> Vec<usize> {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    msgs.iter()
        .map(|m| {
            let n = seen.entry(&m.group).or_insert(0);
            *n += 1;
            *n - 1
        })
        .collect()
}

/// The largest body the broker will store, as `message_budget` reckons
/// it: the server's `max_payload`, or the stream's own `max_msg_size`
/// where the stream (one an operator made beforehand, say) sets a smaller
/// one. Over it, the stream refuses every attempt, and the publisher
/// would retry the same batch forever.
fn budget(client: &Client, stream: Option<&jetstream::stream::Stream>) -> usize {
    let server = client.server_info().max_payload;
    let limit = stream
        .map(|s| s.cached_info().config.max_message_size)
        .and_then(|m| usize::try_from(m).ok())
        .filter(|m| *m > 0)
        .map_or(server, |m| m.min(server));
    message_budget(limit)
}

/// The running broker backplane: a thread of its own, stopped on drop.
pub struct Broker {
    stop: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Broker {
    pub fn spawn(
        bp: Arc<Backplane>,
        router: Arc<Router>,
        routes: Arc<Routes>,
        settings: BrokerSettings,
    ) -> io::Result<Broker> {
        let (stop, stop_rx) = watch::channel(false);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        // Registered before this returns: what the node routes from then
        // on is kept for the broker, even before its connection is up.
        let sink = Arc::new(Sink::new("broker".into(), Interest::All, settings.limits));
        bp.outbox.add(sink.clone());
        let thread = std::thread::Builder::new()
            .name("wsrelay-broker".into())
            .spawn(move || {
                tokio::task::LocalSet::new().block_on(&rt, async move {
                    bp.metrics
                        .broker
                        .replay_window
                        .set(settings.replay_window.as_secs() as i64);
                    let ctx = Rc::new(Ctx {
                        m: bp.metrics.broker.clone(),
                        secret: bp.secret.clone().unwrap_or_default(),
                        bp,
                        router,
                        routes,
                        settings,
                        seen: RefCell::new(Seen::default()),
                        floor: std::cell::Cell::new(None),
                    });
                    run(ctx, stop_rx, sink).await;
                });
            })?;
        Ok(Broker {
            stop,
            thread: Some(thread),
        })
    }

    pub fn stop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Ctx {
    bp: Arc<Backplane>,
    router: Arc<Router>,
    routes: Arc<Routes>,
    settings: BrokerSettings,
    m: BrokerMetrics,
    seen: RefCell<Seen>,
    /// The backplane secret, which signs every message.
    secret: String,
    /// The stream sequence of the point this run resumed from: where a
    /// replay would start while this run is too young for a checkpoint of
    /// its own to be safe.
    floor: std::cell::Cell<Option<u64>>,
}

/// What reaches the delivery loop, in the order it happened.
enum Incoming {
    Message(async_nats::Message),
    /// The connection went (at that instant).
    Lost(Instant),
    /// The connection is back.
    Back,
}

/// The broker's sink leaves the outbox however `run` ends.
struct SinkGuard(Arc<Backplane>, Arc<Sink>);

impl Drop for SinkGuard {
    fn drop(&mut self) {
        self.0.outbox.remove(&self.1);
    }
}

async fn run(ctx: Rc<Ctx>, mut stop: watch::Receiver<bool>, sink: Arc<Sink>) {
    let _registered = SinkGuard(ctx.bp.clone(), sink.clone());
    let (tx, rx) = mpsc::channel::<Incoming>(INBOX);
    let (connected_tx, connected) = watch::channel(false);
    // Bumped by every lost connection: a publish waiting for its
    // acknowledgements gives up at once (they went with the connection)
    // rather than after the timeout, even when the connection came back
    // meanwhile.
    let (losses_tx, losses) = watch::channel(0u64);
    let events_tx = tx.clone();
    let m = ctx.m.clone();
    let was_connected = Rc::new(std::cell::Cell::new(false));
    // Connection events arrive on the client's own task; they are handed
    // over in order through a channel.
    let (ev_tx, mut ev_rx) = mpsc::unbounded_channel::<async_nats::Event>();
    let options = async_nats::ConnectOptions::new()
        .name(format!("wsrelay {}", ctx.bp.node_id))
        .no_echo()
        .retry_on_initial_connect()
        .subscription_capacity(PER_SUBSCRIPTION)
        .connection_timeout(ctx.settings.connect_timeout)
        .event_callback(move |e| {
            let ev_tx = ev_tx.clone();
            async move {
                let _ = ev_tx.send(e);
            }
        });
    let options = match &ctx.settings.credentials {
        Some(Credentials::User(user, pass)) => {
            options.user_and_password(user.clone(), pass.expose().to_owned())
        }
        Some(Credentials::Token(token)) => options.token(token.expose().to_owned()),
        None => options,
    };
    let urls: Vec<async_nats::ServerAddr> = match ctx
        .settings
        .urls
        .iter()
        .map(|u| u.parse())
        .collect::<Result<_, _>>()
    {
        Ok(u) => u,
        Err(e) => {
            tracing::error!(error = %e, "broker address unreadable; the broker backplane is off");
            return;
        }
    };
    let client = match options.connect(urls).await {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "broker connection failed; the broker backplane is off");
            return;
        }
    };
    {
        let was = was_connected.clone();
        tokio::task::spawn_local(async move {
            while let Some(e) = ev_rx.recv().await {
                match e {
                    async_nats::Event::Connected => {
                        m.up.set(1);
                        if was.replace(true) {
                            continue;
                        }
                        let _ = connected_tx.send(true);
                        let _ = events_tx.send(Incoming::Back).await;
                    }
                    async_nats::Event::Disconnected => {
                        m.up.set(0);
                        if !was.replace(false) {
                            continue;
                        }
                        m.reconnects.inc();
                        losses_tx.send_modify(|n| *n += 1);
                        let _ = connected_tx.send(false);
                        let _ = events_tx.send(Incoming::Lost(Instant::now())).await;
                    }
                    async_nats::Event::SlowConsumer(_) => {
                        m.slow_consumer.inc();
                        tracing::warn!("broker: this node fell behind a subscription; the broker dropped messages for it");
                    }
                    other => tracing::debug!(event = %other, "broker event"),
                }
            }
        });
    }
    // The connect above may have returned before the connection is up
    // (it retries in the background); the events say when it is.
    let stream = Rc::new(RefCell::new(None::<jetstream::stream::Stream>));
    let js = jetstream::new(client.clone());
    let checkpoints = Rc::new(RefCell::new(VecDeque::<(Instant, u64)>::new()));
    let bucket = Rc::new(RefCell::new(None::<jetstream::stream::Stream>));
    // What the previous run of this node left (once JetStream is known to
    // be there or not); the delivery loop acts on it before anything else.
    let (decided, decision) = tokio::sync::oneshot::channel::<Option<resume::ResumePoint>>();
    // Points are saved only once the previous one was acted on.
    let (saving_tx, saving) = watch::channel(false);
    tracing::info!(brokers = ?ctx.settings.urls, prefix = %ctx.settings.prefix, "broker backplane starting");

    let setup = {
        let ctx = ctx.clone();
        let js = js.clone();
        let stream = stream.clone();
        let checkpoints = checkpoints.clone();
        let bucket = bucket.clone();
        let mut decided = Some(decided);
        let mut connected = connected.clone();
        async move {
            if ctx.settings.replay_window.is_zero() {
                tracing::warn!("broker without a replay window: events published while a node is away are lost for it");
                return;
            }
            // The stream is made (or found) once the broker is reachable,
            // then sampled for resume points while connected.
            loop {
                if connected.wait_for(|c| *c).await.is_err() {
                    return;
                }
                if stream.borrow().is_none() {
                    match ensure_stream(&js, &ctx.settings).await {
                        Ok(s) => {
                            ctx.m.jetstream.set(1);
                            *stream.borrow_mut() = Some(s);
                        }
                        Err(e) => {
                            ctx.m.jetstream.set(0);
                            tracing::warn!(error = %e, "broker: no JetStream stream; resumes are off until it can be made");
                            // No point to resume from: the node starts fresh.
                            decided.take();
                            tokio::time::sleep(Duration::from_secs(5)).await;
                            continue;
                        }
                    }
                }
                if bucket.borrow().is_none() {
                    match open_bucket(&js, &ctx.settings).await {
                        Ok(b) => {
                            if let Some(tx) = decided.take() {
                                let _ = tx.send(read_point(&ctx, &b).await);
                            }
                            *bucket.borrow_mut() = Some(b);
                        }
                        Err(e) => {
                            decided.take();
                            tracing::warn!(error = %e, "broker: no resume bucket; a restarted node starts fresh until it can be made");
                        }
                    }
                }
                let s = stream.borrow().clone();
                if let Some(s) = s {
                    if let Ok(Ok(info)) =
                        tokio::time::timeout(ctx.settings.ack_timeout, s.get_info()).await
                    {
                        let mut c = checkpoints.borrow_mut();
                        if c.len() >= CHECKPOINTS {
                            c.pop_front();
                        }
                        c.push_back((Instant::now(), info.state.last_sequence));
                    }
                }
                tokio::time::sleep(CHECKPOINT_EVERY).await;
            }
        }
    };
    let _ = ctx.bp.presence.set(Presence {
        client: client.clone(),
        prefix: ctx.settings.prefix.clone(),
        secret: ctx.secret.clone(),
    });
    let tasks = [
        tokio::task::spawn_local(answer_presence(
            client.clone(),
            ctx.settings.prefix.clone(),
            ctx.bp.node_id.clone(),
            ctx.secret.clone(),
        ))
        .abort_handle(),
        tokio::task::spawn_local(setup).abort_handle(),
        tokio::task::spawn_local(publish(
            ctx.clone(),
            client.clone(),
            js.clone(),
            stream.clone(),
            sink.clone(),
            connected.clone(),
            losses,
        ))
        .abort_handle(),
        tokio::task::spawn_local(follow_interest(
            ctx.clone(),
            client.clone(),
            tx,
            connected.clone(),
        ))
        .abort_handle(),
        tokio::task::spawn_local(deliver(
            ctx.clone(),
            client.clone(),
            stream.clone(),
            checkpoints.clone(),
            rx,
            decision,
            saving_tx,
        ))
        .abort_handle(),
        tokio::task::spawn_local(keep_point(
            ctx.clone(),
            client.clone(),
            js.clone(),
            bucket.clone(),
            checkpoints.clone(),
            saving.clone(),
        ))
        .abort_handle(),
    ];
    let _ = stop.wait_for(|s| *s).await;
    for t in tasks {
        t.abort();
    }
    // Nothing more is delivered: the point saved now is exact, so a
    // restart repeats nothing (bounded: a broker away is not waited for).
    if bucket.borrow().is_some() && *saving.borrow() {
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            save_point(&ctx, &js, &checkpoints, &client),
        )
        .await;
    }
    // What was published is flushed before the thread ends (bounded).
    let _ = tokio::time::timeout(Duration::from_secs(2), client.flush()).await;
}

async fn ensure_stream(
    js: &jetstream::Context,
    s: &BrokerSettings,
) -> Result<jetstream::stream::Stream, async_nats::Error> {
    let config = jetstream::stream::Config {
        name: s.stream.clone(),
        subjects: vec![format!("{}.g.>", s.prefix)],
        max_age: s.replay_window,
        max_bytes: s.stream_max_bytes,
        storage: jetstream::stream::StorageType::File,
        discard: jetstream::stream::DiscardPolicy::Old,
        duplicate_window: s.replay_window.min(Duration::from_secs(120)),
        ..Default::default()
    };
    Ok(tokio::time::timeout(s.ack_timeout, js.get_or_create_stream(config)).await??)
}

/// Takes what the outbox owes the broker, publishes it as per-group
/// messages and forgets it once the broker has it (the stream's
/// acknowledgement, or a flush without JetStream). After a failure the
/// unacknowledged rest is published again once the connection is back.
async fn publish(
    ctx: Rc<Ctx>,
    client: Client,
    js: jetstream::Context,
    stream: Rc<RefCell<Option<jetstream::stream::Stream>>>,
    sink: Arc<Sink>,
    mut connected: watch::Receiver<bool>,
    mut losses: watch::Receiver<u64>,
) {
    let s = &ctx.settings;
    let mut batch = Vec::new();
    let mut acked = 0u64;
    loop {
        let counts = sink.take_counts();
        ctx.m.lost.inc_by(counts.evicted + counts.discarded);
        ctx.m.lag.set(sink.depth() as i64);
        if !*connected.borrow() {
            if connected.wait_for(|c| *c).await.is_err() {
                return;
            }
            continue;
        }
        if !sink.has_unsent() {
            tokio::select! {
                () = sink.ready() => {}
                r = connected.changed() => if r.is_err() { return },
            }
            continue;
        }
        // One batch at a time, acknowledged before the next: a later batch
        // stored while an earlier one was refused would let a replaying
        // node drop the earlier one's resend as seen (ARCHITECTURE.md,
        // "Known costs").
        batch.clear();
        sink.take(&mut batch, s.batch_events, s.batch_bytes);
        let Some(last) = batch.last().map(|p| p.seq) else {
            continue;
        };
        let (max, use_js) = {
            let stream = stream.borrow();
            (budget(&client, stream.as_ref()), stream.is_some())
        };
        let (msgs, too_big) = messages(&ctx.bp.node_id, ctx.bp.incarnation, &batch, max);
        if too_big > 0 {
            ctx.m.lost.inc_by(too_big as u64);
            tracing::warn!(
                too_big,
                max,
                "broker: events bigger than the broker's largest message were not published"
            );
        }
        let round_of = rounds(&msgs);
        let last_round = round_of.iter().copied().max().unwrap_or(0);
        let losses_before = *losses.borrow_and_update();
        let started = Instant::now();
        let result = async {
            // Without a stream nothing is stored, so nothing can be stored
            // out of order: one pass, then a flush.
            for round in 0..=(if use_js { last_round } else { 0 }) {
                let mut acks = Vec::with_capacity(msgs.len());
                for (msg, _) in msgs
                    .iter()
                    .zip(&round_of)
                    .filter(|(_, r)| !use_js || **r == round)
                {
                    let subject = subject(&s.prefix, &msg.group);
                    let body = seal(ctx.secret.as_bytes(), &subject, &msg.body);
                    let len = body.len() as u64;
                    if use_js {
                        let mut headers = HeaderMap::new();
                        // The stream drops a resend it already holds.
                        headers.insert(
                            "Nats-Msg-Id",
                            msg_id(&ctx.bp.node_id, ctx.bp.incarnation, msg).as_str(),
                        );
                        acks.push(js.publish_with_headers(subject, headers, body).await?);
                    } else {
                        client.publish(subject, body).await?;
                    }
                    ctx.m.messages_published.inc();
                    ctx.m.events_published.inc_by(msg.events as u64);
                    ctx.m.bytes_published.inc_by(len);
                }
                for ack in acks {
                    ack.await?;
                }
            }
            if !use_js {
                client.flush().await?;
            }
            Ok::<(), async_nats::Error>(())
        };
        let outcome = tokio::select! {
            r = tokio::time::timeout(s.ack_timeout, result) => Some(r),
            _ = losses.wait_for(|n| *n != losses_before) => None,
        };
        let Some(outcome) = outcome else {
            tracing::info!("broker connection lost while publishing; resending from the last acknowledged event once back");
            ctx.m.retry("lost_connection");
            sink.connected(Some(acked));
            continue;
        };
        match outcome {
            Ok(Ok(())) => {
                ctx.m
                    .publish_seconds
                    .observe(started.elapsed().as_secs_f64());
                acked = last;
                sink.ack(acked);
            }
            Ok(Err(e)) if too_large(&*e) => {
                // The stream's limit may have been lowered since it was
                // found: read again, the next attempt is built to it.
                let found = stream.borrow().clone();
                if let Some(mut js_stream) = found {
                    if let Ok(Ok(_)) = tokio::time::timeout(s.ack_timeout, js_stream.info()).await {
                        *stream.borrow_mut() = Some(js_stream);
                    }
                }
                let now = budget(&client, stream.borrow().as_ref());
                if now != max {
                    tracing::warn!(error = %e, was = max, now, "broker: its largest message changed; resending in messages that fit");
                    ctx.m.retry("error");
                    sink.connected(Some(acked));
                    // As after any failed publish: a broker whose limit
                    // keeps changing gets no tight loop.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                // Not a passing fault: the same messages would be refused
                // again, forever, and hold up everything behind them. Cannot
                // happen while `budget` is right; counted if it does.
                tracing::error!(error = %e, events = batch.len(), max, "broker refused a message as too large for its max_payload or its stream's max_msg_size; its batch is counted as lost");
                ctx.m.lost.inc_by(batch.len() as u64);
                acked = last;
                sink.ack(acked);
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "broker publish failed; resending from the last acknowledged event");
                let timed_out = e
                    .downcast_ref::<jetstream::context::PublishError>()
                    .is_some_and(|p| p.kind() == jetstream::context::PublishErrorKind::TimedOut);
                ctx.m.retry(if timed_out { "timeout" } else { "error" });
                sink.connected(Some(acked));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(_) => {
                tracing::warn!("broker publish unacknowledged in time; resending from the last acknowledged event");
                ctx.m.retry("timeout");
                sink.connected(Some(acked));
            }
        }
    }
}

/// Whether a publish failed because the message passed the server's
/// `max_payload` (JetStream's and core NATS's errors both say so) or the
/// stream's `max_msg_size` (the stream's refusal, code 10054).
fn too_large(e: &(dyn std::error::Error + Send + Sync + 'static)) -> bool {
    let js = e.downcast_ref::<jetstream::context::PublishError>();
    js.is_some_and(|p| p.kind() == jetstream::context::PublishErrorKind::MaxPayloadExceeded)
        || e.downcast_ref::<async_nats::PublishError>()
            .is_some_and(|p| p.kind() == async_nats::PublishErrorKind::MaxPayloadExceeded)
        || js
            .and_then(|p| std::error::Error::source(p))
            .and_then(|s| s.downcast_ref::<jetstream::Error>())
            .is_some_and(|j| j.error_code() == jetstream::ErrorCode::STREAM_MESSAGE_EXCEEDS_MAXIMUM)
}

/// Subscribes to the groups this node's clients hold, and registers with
/// the backplane so that a subscribe reply waits until the broker has the
/// subscription (as it waits for native peers).
async fn follow_interest(
    ctx: Rc<Ctx>,
    client: Client,
    tx: mpsc::Sender<Incoming>,
    mut connected: watch::Receiver<bool>,
) {
    let link = ctx.bp.link_id();
    let mut routes = ctx.routes.watch();
    routes.borrow_and_update();
    let (mut told, all) = LocalInterest::start(&ctx.routes);
    let mut subs: HashMap<Arc<str>, AbortHandle> = HashMap::new();
    let mut added = all;
    let mut removed: Vec<Arc<str>> = Vec::new();
    let mut registered = false;
    loop {
        for g in removed.drain(..) {
            if let Some(h) = subs.remove(&g) {
                h.abort();
            }
            ctx.seen.borrow_mut().forget(&g);
        }
        let mut any = false;
        for g in added.drain(..) {
            match client.subscribe(subject(&ctx.settings.prefix, &g)).await {
                Ok(mut sub) => {
                    let tx = tx.clone();
                    let task = tokio::task::spawn_local(async move {
                        while let Some(msg) = sub.next().await {
                            if tx.send(Incoming::Message(msg)).await.is_err() {
                                break;
                            }
                        }
                    });
                    subs.insert(g, task.abort_handle());
                    any = true;
                }
                Err(e) => tracing::warn!(group = %g, error = %e, "broker subscribe failed"),
            }
        }
        let up = *connected.borrow_and_update();
        if up {
            if any {
                // A flush is a round trip: the broker has every SUB sent
                // before it.
                let _ = tokio::time::timeout(ctx.settings.ack_timeout, client.flush()).await;
            }
            if !registered {
                ctx.bp.interest_pending(link);
                registered = true;
            }
            ctx.bp.interest_acked(link, Some(told.epoch));
        } else if registered {
            // While the broker is away, subscribes do not wait for it; the
            // subscriptions are made again when it is back.
            ctx.bp.interest_acked(link, None);
            registered = false;
        }
        tokio::select! {
            r = routes.changed() => if r.is_err() { break },
            r = connected.changed() => if r.is_err() { break },
        }
        (added, removed) = told.catch_up(&ctx.routes);
    }
    if registered {
        ctx.bp.interest_acked(link, None);
    }
}

/// Delivers received messages in order, and after a lost connection
/// replays what the stream holds of the time away before going on.
async fn deliver(
    ctx: Rc<Ctx>,
    client: Client,
    stream: Rc<RefCell<Option<jetstream::stream::Stream>>>,
    checkpoints: Rc<RefCell<VecDeque<(Instant, u64)>>>,
    mut rx: mpsc::Receiver<Incoming>,
    decision: tokio::sync::oneshot::Receiver<Option<resume::ResumePoint>>,
    saving: watch::Sender<bool>,
) {
    // A restarted node first picks up where its previous run left off;
    // live messages wait in the channel meanwhile.
    if let Ok(Some(point)) = decision.await {
        resume_after_restart(&ctx, &client, &stream, point).await;
    }
    let _ = saving.send(true);
    let mut lost_at: Option<Instant> = None;
    while let Some(incoming) = rx.recv().await {
        match incoming {
            Incoming::Message(msg) => {
                if deliver_one(&ctx, &msg.subject, &msg.payload, false)
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Incoming::Lost(at) => {
                lost_at.get_or_insert(at);
            }
            Incoming::Back => {
                let Some(at) = lost_at.take() else { continue };
                let s = stream.borrow().clone();
                let Some(s) = s else {
                    tracing::warn!("broker connection back; without JetStream what was published meanwhile is lost here");
                    continue;
                };
                let start = {
                    let c = checkpoints.borrow();
                    let before = at.checked_sub(REPLAY_MARGIN).unwrap_or(at);
                    c.iter()
                        .rev()
                        .find(|(t, _)| *t <= before)
                        .or(c.front())
                        .map(|(_, seq)| seq + 1)
                };
                let Some(start) = start else { continue };
                resume(&ctx, &client, &s, start, None).await;
            }
        }
    }
}

/// A replay from `start`, counted and logged: after a lost connection
/// (`only` none) or a restart (the groups held then).
async fn resume(
    ctx: &Ctx,
    client: &Client,
    stream: &jetstream::stream::Stream,
    start: u64,
    only: Option<&std::collections::HashSet<String>>,
) {
    let after = if only.is_some() {
        "a restart"
    } else {
        "a lost connection"
    };
    match replay(ctx, client, stream, start, only).await {
        Ok(n) => {
            ctx.m.resumes.inc();
            tracing::info!(
                from = start,
                replayed = n,
                after,
                "broker: resumed from the stream"
            );
        }
        Err(e) => {
            tracing::warn!(error = %e, after, "broker resume failed; events published meanwhile may be lost here")
        }
    }
}

/// Reads the stream from `start` to its end as of now, delivering what
/// the live subscriptions missed, for the groups held here (and in `only`,
/// when given).
async fn replay(
    ctx: &Ctx,
    client: &Client,
    stream: &jetstream::stream::Stream,
    start: u64,
    only: Option<&std::collections::HashSet<String>>,
) -> Result<u64, async_nats::Error> {
    let state = tokio::time::timeout(ctx.settings.ack_timeout, stream.get_info())
        .await??
        .state;
    let end = state.last_sequence;
    if end < start {
        return Ok(0);
    }
    // A node that holds none of the groups has nothing to replay (the
    // emitting node of a storm, often): the stream is not read at all.
    let wanted = |g: &str| held_here(ctx, g) && only.is_none_or(|o| o.contains(g));
    if !ctx.routes.load().local_groups().any(|g| wanted(g)) {
        return Ok(0);
    }
    if state.first_sequence > start {
        // The stream dropped messages the replay needed (older than its
        // window, or past its size): what they carried is lost here.
        ctx.m.resume_truncated.inc();
        tracing::warn!(
            from = start,
            first = state.first_sequence,
            "broker: the stream no longer reaches back to this resume's start; events published in between may be lost here"
        );
    }
    let consumer = stream
        .create_consumer(jetstream::consumer::push::OrderedConfig {
            deliver_subject: client.new_inbox(),
            filter_subject: format!("{}.g.>", ctx.settings.prefix),
            deliver_policy: jetstream::consumer::DeliverPolicy::ByStartSequence {
                start_sequence: start,
            },
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    let mut replayed = 0;
    // Bounded: a replay that cannot finish in the window gives up.
    let limit = ctx.settings.replay_window.max(Duration::from_secs(10));
    let read = async {
        while let Some(m) = messages.next().await {
            let m = m?;
            let seq = m.info().map(|i| i.stream_sequence).unwrap_or(end);
            // Only groups held here now: what the live path would carry.
            let held = group_of(&ctx.settings.prefix, &m.subject).is_some_and(|g| wanted(&g));
            if held {
                replayed += deliver_one(ctx, &m.subject, &m.payload, true)
                    .await
                    .unwrap_or(0);
            }
            if seq >= end {
                break;
            }
        }
        Ok::<(), async_nats::Error>(())
    };
    tokio::time::timeout(limit, read).await??;
    Ok(replayed)
}

fn held_here(ctx: &Ctx, group: &str) -> bool {
    ctx.routes
        .load()
        .groups
        .get(group)
        .is_some_and(|w| crate::fanout::RouteTable::local_mask(*w) != 0)
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Opens (or makes) the stream that keeps each node's resume point (one
/// message per node: the latest), next to the events' stream and with its
/// window, so a point older than that expires. A plain stream rather than
/// a key-value bucket: it asks nothing of the server that the events'
/// stream does not.
async fn open_bucket(
    js: &jetstream::Context,
    s: &BrokerSettings,
) -> Result<jetstream::stream::Stream, async_nats::Error> {
    let config = jetstream::stream::Config {
        name: resume::bucket(&s.stream),
        description: Some("wsrelay: where each node resumes after a restart".into()),
        subjects: vec![format!("{}.resume.>", s.prefix)],
        max_messages_per_subject: 1,
        max_age: s.replay_window,
        storage: jetstream::stream::StorageType::File,
        discard: jetstream::stream::DiscardPolicy::Old,
        ..Default::default()
    };
    Ok(tokio::time::timeout(s.ack_timeout, js.get_or_create_stream(config)).await??)
}

/// The subject this node's point is saved on (and signed for, so that a
/// point cannot be moved to another node).
fn point_subject(s: &BrokerSettings, node: &str) -> String {
    format!("{}.resume.{}", s.prefix, resume::key(node))
}

/// This node's point as its previous run saved it, if any and readable.
async fn read_point(ctx: &Ctx, bucket: &jetstream::stream::Stream) -> Option<resume::ResumePoint> {
    let s = &ctx.settings;
    let node = &ctx.bp.node_id;
    let subject = point_subject(s, node);
    let got = tokio::time::timeout(
        s.ack_timeout,
        bucket.get_last_raw_message_by_subject(&subject),
    )
    .await;
    let raw = match got {
        Ok(Ok(m)) => m.payload,
        Ok(Err(e)) if e.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound => {
            return None
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "broker: this node's resume point could not be read; starting fresh");
            return None;
        }
        Err(_) => {
            tracing::warn!("broker: this node's resume point was not read in time; starting fresh");
            return None;
        }
    };
    let Some(body) = open(ctx.secret.as_bytes(), &subject, &raw) else {
        ctx.m.skipped("bad_signature");
        tracing::warn!("broker: this node's resume point is not signed with the backplane secret; ignored, starting fresh");
        return None;
    };
    match resume::ResumePoint::decode(body, s.max_group_name) {
        Ok(p) => Some(p),
        Err(e) => {
            ctx.m.skipped("malformed");
            tracing::warn!(error = %e, "broker: this node's resume point is unreadable; ignored, starting fresh");
            None
        }
    }
}

/// Saves where this node stands: the stream sequence a replay would start
/// after (the checkpoint taken at least the margin ago: what the live
/// subscriptions had not handed over yet is stored after it) and what was
/// delivered of each group held here. Whether it was saved.
async fn save_point(
    ctx: &Ctx,
    js: &jetstream::Context,
    checkpoints: &RefCell<VecDeque<(Instant, u64)>>,
    client: &Client,
) -> bool {
    let seq = {
        let c = checkpoints.borrow();
        let old = Instant::now()
            .checked_sub(REPLAY_MARGIN)
            .and_then(|before| c.iter().rev().find(|(t, _)| *t <= before))
            .map(|(_, seq)| *seq);
        let front = c.front().map(|(_, seq)| *seq);
        match (old, ctx.floor.get(), front) {
            (Some(seq), _, _) => seq,
            (None, Some(floor), front) => front.map_or(floor, |f| f.min(floor)),
            (None, None, Some(front)) => front,
            // Nothing to stand on yet.
            (None, None, None) => return false,
        }
    };
    let routes = ctx.routes.load();
    let point = resume::ResumePoint {
        saved_at_ms: unix_ms(),
        stream_seq: seq,
        groups: ctx.seen.borrow().marks(routes.local_groups().map(|g| &**g)),
    };
    // No header travels with a point; the overhead covers the signature.
    let budget = client
        .server_info()
        .max_payload
        .saturating_sub(MESSAGE_OVERHEAD);
    let (body, left_out) = point.encode(budget);
    // Said when it changes, not once a second.
    if ctx.m.resume_left_out.set(left_out as i64) != left_out as i64 && left_out > 0 {
        tracing::warn!(
            left_out,
            budget,
            "broker: the resume point is larger than the broker's largest message; groups left out start fresh after a restart"
        );
    }
    let subject = point_subject(&ctx.settings, &ctx.bp.node_id);
    let sealed = seal(ctx.secret.as_bytes(), &subject, &body);
    let put = async { js.publish(subject, sealed).await?.await };
    match tokio::time::timeout(ctx.settings.ack_timeout, put).await {
        Ok(Ok(_)) => {
            ctx.m.resume_points_saved.inc();
            true
        }
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "broker: resume point not saved");
            false
        }
        Err(_) => false,
    }
}

/// Saves this node's resume point once a second while what it delivered
/// or holds changed, and every `SAVE_ANYWAY` regardless.
async fn keep_point(
    ctx: Rc<Ctx>,
    client: Client,
    js: jetstream::Context,
    bucket: Rc<RefCell<Option<jetstream::stream::Stream>>>,
    checkpoints: Rc<RefCell<VecDeque<(Instant, u64)>>>,
    mut saving: watch::Receiver<bool>,
) {
    if saving.wait_for(|s| *s).await.is_err() {
        return;
    }
    let mut saved: Option<((u64, u64), Instant)> = None;
    loop {
        tokio::time::sleep(SAVE_EVERY).await;
        let now = (ctx.seen.borrow().changes(), ctx.routes.load().epoch);
        let due = saved.is_none_or(|(then, at)| then != now || at.elapsed() >= SAVE_ANYWAY);
        let ready = bucket.borrow().is_some();
        if due && ready && save_point(&ctx, &js, &checkpoints, &client).await {
            saved = Some((now, Instant::now()));
        }
    }
}

/// A restarted node's first act: it takes the marks its previous run
/// saved, waits for its clients to subscribe again, then replays the
/// stream from the point for the groups held then and now. The marks drop
/// what the previous run delivered; the rest is what the clients missed.
async fn resume_after_restart(
    ctx: &Ctx,
    client: &Client,
    stream: &Rc<RefCell<Option<jetstream::stream::Stream>>>,
    point: resume::ResumePoint,
) {
    let age = Duration::from_millis(unix_ms().saturating_sub(point.saved_at_ms));
    if age > ctx.settings.replay_window {
        tracing::warn!(
            age_s = age.as_secs(),
            "broker: this node's resume point is older than the replay window; starting fresh"
        );
        return;
    }
    let groups: std::collections::HashSet<String> =
        point.groups.iter().map(|g| g.group.clone()).collect();
    ctx.seen.borrow_mut().restore(point.groups);
    ctx.floor.set(Some(point.stream_seq));
    tracing::info!(
        groups = groups.len(),
        hold_ms = ctx.settings.resume_hold.as_millis() as u64,
        "broker: resuming after a restart; waiting for clients to subscribe again"
    );
    tokio::time::sleep(ctx.settings.resume_hold).await;
    let s = stream.borrow().clone();
    if let Some(s) = s {
        resume(ctx, client, &s, point.stream_seq + 1, Some(&groups)).await;
    }
    // Marks of groups no client took up again go.
    ctx.seen.borrow_mut().retain(|g| held_here(ctx, g));
}

/// Checks one message and delivers its new events here. Returns how many
/// were delivered; `Err` only when the node is shutting down.
async fn deliver_one(ctx: &Ctx, subject: &str, body: &[u8], replaying: bool) -> Result<u64, ()> {
    let m = &ctx.m;
    let Some(body) = open(ctx.secret.as_bytes(), subject, body) else {
        m.skipped("bad_signature");
        return Ok(0);
    };
    let batch = match wire::decode_broker(body) {
        Ok(b) => b,
        Err(e) => {
            m.skipped("malformed");
            tracing::debug!(subject, error = %e, "unreadable broker message");
            return Ok(0);
        }
    };
    if !is_node_name(batch.node) {
        m.skipped("bad_node");
        return Ok(0);
    }
    if batch.node == ctx.bp.node_id {
        // Our own (a replay reads everything): delivered here already.
        m.skipped("own");
        return Ok(0);
    }
    if batch.group.len() > ctx.settings.max_group_name {
        m.skipped("long_group");
        return Ok(0);
    }
    if group_of(&ctx.settings.prefix, subject).as_deref() != Some(batch.group) {
        m.skipped("subject_mismatch");
        return Ok(0);
    }
    let fresh: Vec<(&str, &[u8])> = {
        let mut seen = ctx.seen.borrow_mut();
        batch
            .events
            .clone()
            .into_iter()
            .filter(|(seq, origin, _)| {
                seen.admit(batch.group, batch.node, batch.incarnation, *seq, *origin)
            })
            .map(|(_, _, p)| (batch.group, p))
            .collect()
    };
    let n = fresh.len() as u64;
    m.duplicates.inc_by(batch.events.len() as u64 - n);
    m.bytes_received.inc_by(body.len() as u64);
    if n == 0 {
        return Ok(0);
    }
    m.events_received.inc_by(n);
    if replaying {
        m.replayed.inc_by(n);
    }
    ctx.bp
        .stats
        .received(batch.node, n, super::link::unix_now());
    ctx.router.route_from_peer(fresh).await.map_err(|_| ())?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logins_travel_apart_from_the_addresses() {
        assert_eq!(
            split_credentials("nats://127.0.0.1:4222").unwrap(),
            ("nats://127.0.0.1:4222".into(), None)
        );
        let (url, c) = split_credentials("nats://relay:p%40ss@nats.example:4222").unwrap();
        assert_eq!(url, "nats://nats.example:4222");
        assert_eq!(c, Some(Credentials::User("relay".into(), "p@ss".into())));
        let (url, c) = split_credentials("tls://s3cret@nats.example:4222").unwrap();
        assert_eq!(url, "tls://nats.example:4222");
        assert_eq!(c, Some(Credentials::Token("s3cret".into())));
        // Shown masked, in Debug as everywhere.
        assert!(!format!("{c:?}").contains("s3cret"));
        assert!(split_credentials("nats://").is_err());
    }

    #[test]
    fn subjects_carry_any_group_and_come_back() {
        for g in [
            "job_events-42",
            "jobs-status_changed",
            "a.b",
            "sp ace",
            "~x",
            "é",
            "*",
            ">",
        ] {
            let s = subject("wsrelay", g);
            assert!(!s[11..].contains(['.', ' ', '*', '>']), "{s}");
            assert_eq!(group_of("wsrelay", &s).as_deref(), Some(g), "{s}");
        }
        assert_eq!(
            subject("wsrelay", "job_events-42"),
            "wsrelay.g.job_events-42"
        );
        assert_eq!(group_of("wsrelay", "wsrelay.g.~4"), None);
        assert_eq!(group_of("wsrelay", "wsrelay.g.~zz"), None);
        assert_eq!(group_of("wsrelay", "wsrelay.g.~ff"), None, "not UTF-8");
        assert_eq!(group_of("wsrelay", "other.g.x"), None);
        assert_eq!(group_of("wsrelay", "wsrelay.g."), None);
    }

    fn pending(seq: u64, group: &str, payload: &str) -> Pending {
        Pending {
            seq,
            group: Arc::from(group),
            payload: Bytes::copy_from_slice(payload.as_bytes()),
            origin: wire::Origin::None,
        }
    }

    #[test]
    fn every_message_fits_the_servers_max_payload_with_its_signature_and_header() {
        // The longest node name, the widest numbers, events with a stream
        // origin (the largest per-event overhead), and a last event sized
        // to land on every byte near the budget's edge: a message
        // the server would refuse is retried forever and stalls the node.
        let node = "n".repeat(64);
        let inc = u64::MAX;
        let server_max = 1024 * 1024;
        let max = message_budget(server_max);
        let origin = wire::Origin::Live(wire::StreamId {
            ms: u64::MAX,
            seq: u64::MAX,
        });
        let event = |seq: u64, len: usize| Pending {
            seq: u64::MAX - 10 + seq,
            group: Arc::from("g"),
            payload: Bytes::from(vec![b'x'; len]),
            origin,
        };
        for second in (max - 3 * 250_000 - 400)..(max - 3 * 250_000 + 100) {
            let batch = [
                event(1, 250_000),
                event(2, 250_000),
                event(3, 250_000),
                event(4, second),
            ];
            let (msgs, too_big) = messages(&node, inc, &batch, max);
            assert_eq!(too_big, 0);
            let mut events = 0;
            for m in &msgs {
                events += m.events;
                let id = msg_id(&node, inc, m);
                let header = "NATS/1.0\r\n".len() + "Nats-Msg-Id: ".len() + id.len() + 4;
                let sealed = seal(b"secret", "wsrelay.g.g", &m.body).len();
                assert!(
                    sealed + header <= server_max,
                    "{} events: {sealed} + {header} > {server_max} (second event {second})",
                    m.events
                );
            }
            assert_eq!(events, 4);
        }
        // A server whose max_payload leaves no room at all: nothing is
        // built to be refused; everything is counted as too big.
        let (msgs, too_big) = messages(&node, inc, &[event(1, 10)], message_budget(100));
        assert_eq!((msgs.len(), too_big), (0, 1));
    }

    #[test]
    fn a_batch_becomes_one_message_per_group_in_order() {
        let batch = [
            pending(1, "a", "1"),
            pending(2, "b", "2"),
            pending(3, "a", "3"),
        ];
        let (msgs, too_big) = messages("n1", 7, &batch, 1 << 20);
        assert_eq!(too_big, 0);
        assert_eq!(msgs.len(), 2);
        assert_eq!((msgs[0].events, msgs[0].first_seq), (2, 1));
        assert_eq!((msgs[1].events, msgs[1].first_seq), (1, 2));
        let a = wire::decode_broker(&msgs[0].body).unwrap();
        assert_eq!((a.node, a.incarnation, a.group), ("n1", 7, "a"));
        let ev: Vec<_> = a.events.into_iter().map(|(s, _, p)| (s, p)).collect();
        assert_eq!(ev, vec![(1, &b"1"[..]), (3, &b"3"[..])]);
        // Bounded by size: a group's run splits, order kept.
        let big: Vec<_> = (1..=10)
            .map(|i| pending(i, "a", &"x".repeat(500)))
            .collect();
        let (msgs, too_big) = messages("n1", 7, &big, 1024 + 1200);
        assert_eq!(too_big, 0);
        assert!(msgs.len() > 1);
        // Each part has its own identity: the stream must store them all.
        let firsts: std::collections::HashSet<u64> = msgs.iter().map(|m| m.first_seq).collect();
        assert_eq!(firsts.len(), msgs.len());
        let seqs: Vec<u64> = msgs
            .iter()
            .flat_map(|m| {
                wire::decode_broker(&m.body)
                    .unwrap()
                    .events
                    .into_iter()
                    .map(|(s, _, _)| s)
                    .collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(seqs, (1..=10).collect::<Vec<_>>());
        // A resend from the same start with a longer span is another
        // message: the stream must not drop it as the first attempt.
        let short = &messages("n1", 7, &big[..3], 1 << 20).0[0];
        let long = &messages("n1", 7, &big, 1 << 20).0[0];
        assert_eq!((short.first_seq, short.last_seq), (1, 3));
        assert_eq!((long.first_seq, long.last_seq), (1, 10));
        assert_ne!(msg_id("n1", 7, short), msg_id("n1", 7, long));
        assert_eq!(
            msg_id("n1", 7, short),
            msg_id("n1", 7, &messages("n1", 7, &big[..3], 1 << 20).0[0])
        );
        let (msgs, too_big) = messages("n1", 7, &[pending(1, "a", &"x".repeat(5000))], 2048);
        assert_eq!((msgs.len(), too_big), (0, 1));
    }

    #[test]
    fn a_groups_later_messages_wait_for_its_earlier_ones() {
        // Three groups, "a" and "c" split by size: each message of a group
        // in a round after the group's previous one, the other groups'
        // first messages in the first round.
        let batch: Vec<_> = (1..=12)
            .map(|i| {
                let g = ["a", "b", "a", "c"][i as usize % 4];
                pending(i, g, &"x".repeat(500))
            })
            .collect();
        let (msgs, _) = messages("n1", 7, &batch, 1024 + 1200);
        let round_of = rounds(&msgs);
        let mut last: HashMap<&str, (usize, u64)> = HashMap::new();
        for (m, r) in msgs.iter().zip(&round_of) {
            if let Some((prev, prev_seq)) = last.insert(&m.group, (*r, m.last_seq)) {
                assert_eq!(*r, prev + 1, "group {}", m.group);
                assert!(m.first_seq > prev_seq);
            } else {
                assert_eq!(*r, 0, "group {}", m.group);
            }
        }
        assert!(round_of.iter().any(|r| *r > 0), "{round_of:?}");
        // Under the limit: one message per group, one round.
        let (msgs, _) = messages("n1", 7, &batch, 1 << 20);
        assert_eq!(rounds(&msgs), vec![0, 0, 0]);
    }
}
