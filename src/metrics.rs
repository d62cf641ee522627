//! Prometheus metrics, registered once at start and handed down. Every
//! label value comes from a small closed set (never a group or a user id),
//! and every handle is created here so the hot path only adds to atomics.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::ingest::channels_redis::Malformed;
use crate::ingest::stream::BadEntry;

type Labels = Vec<(&'static str, String)>;

/// Why a client's connection attempt or message was refused; label values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    AuthFailed,
    /// AWX's API could not say who the client is.
    AuthUnavailable,
    ConnectionLimit,
    BadUpgrade,
}

impl Refusal {
    const ALL: [Refusal; 4] = [
        Refusal::AuthFailed,
        Refusal::AuthUnavailable,
        Refusal::ConnectionLimit,
        Refusal::BadUpgrade,
    ];

    fn label(self) -> &'static str {
        match self {
            Refusal::AuthFailed => "auth_failed",
            Refusal::AuthUnavailable => "auth_unavailable",
            Refusal::ConnectionLimit => "connection_limit",
            Refusal::BadUpgrade => "bad_upgrade",
        }
    }
}

/// Kinds of client close the server initiated, as label values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerClose {
    ProtocolError,
    TooBig,
    InvalidUtf8,
    Binary,
    PingTimeout,
    SlowConsumer,
    Shutdown,
}

impl ServerClose {
    const ALL: [ServerClose; 7] = [
        ServerClose::ProtocolError,
        ServerClose::TooBig,
        ServerClose::InvalidUtf8,
        ServerClose::Binary,
        ServerClose::PingTimeout,
        ServerClose::SlowConsumer,
        ServerClose::Shutdown,
    ];

    fn label(self) -> &'static str {
        match self {
            ServerClose::ProtocolError => "protocol_error",
            ServerClose::TooBig => "message_too_big",
            ServerClose::InvalidUtf8 => "invalid_utf8",
            ServerClose::Binary => "binary_frame",
            ServerClose::PingTimeout => "ping_timeout",
            ServerClose::SlowConsumer => "slow_consumer",
            ServerClose::Shutdown => "shutdown",
        }
    }
}

/// All of a node's metrics.
pub struct Metrics {
    registry: Registry,
    /// Websocket clients connected now, per worker.
    pub connections: Vec<Gauge>,
    /// Clients accepted (authenticated) since start.
    pub accepted: Counter,
    refused: [Counter; 4],
    closes: [Counter; 7],
    /// `{"error": ...}` replies sent to clients.
    pub client_errors: Counter,
    /// Client messages that waited for the connection's message rate.
    pub messages_paced: Counter,
    /// Events accepted from producers, by source.
    pub events_in_http: Counter,
    pub events_in_inproc: Counter,
    /// Accepted events no local subscriber wanted.
    pub events_unrouted: Counter,
    /// Frames queued to subscribers.
    pub deliveries: Counter,
    /// Events lost to slow consumers (dropped or discarded on close).
    pub dropped: Counter,
    /// Emit requests by status class.
    emit_requests: [Counter; 4],
    /// Groups held, per worker.
    pub groups: Vec<Gauge>,
    /// Vectored socket writes to clients, per worker: frames per write is
    /// how much the writers batch.
    pub socket_writes: Vec<Counter>,
    /// Rounds of the worker's delivery loop (inbox drains), per worker:
    /// deliveries per round is how much a wake-up carries.
    pub delivery_rounds: Vec<Counter>,
    /// From the router taking an event to the socket write that carried
    /// it, per worker; one observation per write (its oldest event).
    pub delivery_latency: Vec<Histogram>,
    /// Frames and bytes waiting in a worker's client queues, and its
    /// deepest queue in frames (sampled once a second).
    pub queued_frames: Vec<Gauge>,
    pub queued_bytes: Vec<Gauge>,
    pub deepest_queue: Vec<Gauge>,
    /// Events the status page's tail missed (its browser fell behind):
    /// not clients' losses.
    pub tail_dropped: Counter,
    /// How long the oldest event of the last batch read from each Redis
    /// source had waited (`redis`: since its channels_redis send time;
    /// `stream`: since its entry id's time). Kept until the next batch.
    pub ingest_lag_redis: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub ingest_lag_stream: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// Events accepted from the channels_redis layer.
    pub events_in_redis: Counter,
    /// 1 while the Redis membership loop last succeeded.
    pub redis_up: Gauge,
    /// Failed Redis operations (each outage counts its retries).
    pub redis_errors: Counter,
    /// Redis entries skipped, by reason (`Malformed::ALL` order).
    redis_skipped: Vec<Counter>,
    /// Events accepted from the native Redis Stream.
    pub events_in_stream: Counter,
    /// Stream entries skipped, by reason (`BadEntry::ALL` order).
    stream_skipped: Vec<Counter>,
    /// Stream entries removed unread because the stream passed its cap.
    pub stream_trimmed_unread: Counter,
    /// Stream entries delivered here whose peers do not all have them yet
    /// (kept in the stream, and replayed to the peers after a crash).
    pub stream_unconfirmed: Gauge,
    /// Stream entries replayed to the peers at start: delivered here by an
    /// earlier run, not confirmed by every peer before it ended.
    pub stream_replayed: Counter,
    /// The backplane's families, per peer.
    pub peers: PeerFamilies,
    /// AWX's API as authenticator.
    pub auth: AuthMetrics,
    /// AWX's PostgreSQL heartbeat and discovery.
    pub heartbeat: HeartbeatMetrics,
    /// The NATS broker backplane.
    pub broker: BrokerMetrics,
}

/// The NATS broker backplane (`backplane::broker`).
#[derive(Clone)]
pub struct BrokerMetrics {
    /// 1 while the connection to the broker works.
    pub up: Gauge,
    /// 1 when the broker keeps a replay stream (JetStream) for this node.
    pub jetstream: Gauge,
    /// The configured replay window in seconds (0: core NATS, no replay):
    /// what `jetstream` is expected to become.
    pub replay_window: Gauge,
    pub events_published: Counter,
    pub messages_published: Counter,
    pub bytes_published: Counter,
    pub events_received: Counter,
    pub bytes_received: Counter,
    /// Events seen before (a resend, or a replay's overlap): not delivered.
    pub duplicates: Counter,
    /// Events owed to the broker and not yet acknowledged by it.
    pub lag: Gauge,
    /// Owed events dropped from a full buffer, or refused as too big.
    pub lost: Counter,
    pub reconnects: Counter,
    /// Resumes after a lost connection or a restart: replayed from the
    /// stream.
    pub resumes: Counter,
    pub replayed: Counter,
    /// Resumes that could not reach back to their start (the stream had
    /// dropped older messages): events in between may be lost here.
    pub resume_truncated: Counter,
    /// Resume points saved for a restart.
    pub resume_points_saved: Counter,
    /// Groups held here that the latest resume point had no room for.
    pub resume_left_out: Gauge,
    /// Native links found to join two nodes that share the broker (they
    /// carry no events).
    pub redundant_links: Counter,
    /// Times the client dropped messages this node did not take in time.
    pub slow_consumer: Counter,
    /// From a batch taken from the outbox to the broker having all of it
    /// (the stream's acknowledgements, or a flush without JetStream).
    pub publish_seconds: Histogram,
    skipped: Family<Labels, Counter>,
    retries: Family<Labels, Counter>,
}

impl BrokerMetrics {
    const RETRIES: [&'static str; 3] = ["lost_connection", "timeout", "error"];

    const SKIPS: [&'static str; 6] = [
        "bad_signature",
        "malformed",
        "bad_node",
        "subject_mismatch",
        "own",
        "long_group",
    ];

    fn register(registry: &mut Registry) -> Self {
        let c = |registry: &mut Registry, name: &str, help: &str| {
            let c = Counter::default();
            registry.register(name, help, c.clone());
            c
        };
        let g = |registry: &mut Registry, name: &str, help: &str| {
            let g = Gauge::default();
            registry.register(name, help, g.clone());
            g
        };
        let skipped = Family::<Labels, Counter>::default();
        registry.register(
            "broker_skipped",
            "Broker messages skipped, by reason (bad_signature, malformed, bad_node, subject_mismatch, own, long_group)",
            skipped.clone(),
        );
        for r in Self::SKIPS {
            let _ = skipped.get_or_create(&vec![("reason", r.to_owned())]);
        }
        let retries = Family::<Labels, Counter>::default();
        registry.register(
            "broker_publish_retries",
            "Publishes sent again from the last acknowledged event, by why: lost_connection (the acknowledgements went with it), timeout (none in time), error",
            retries.clone(),
        );
        for r in Self::RETRIES {
            let _ = retries.get_or_create(&vec![("reason", r.to_owned())]);
        }
        let publish_seconds = latency_histogram();
        registry.register(
            "broker_publish_seconds",
            "From a batch taken for the broker to the broker holding all of it (JetStream's acknowledgements, or a flush without JetStream)",
            publish_seconds.clone(),
        );
        Self {
            publish_seconds,
            up: g(registry, "broker_up", "1 while the connection to the NATS broker works"),
            jetstream: g(
                registry,
                "broker_jetstream",
                "1 when the broker keeps the replay stream (JetStream) that resumes use",
            ),
            replay_window: g(
                registry,
                "broker_replay_window_seconds",
                "The configured replay window (--broker-replay-window-s); 0: core NATS, nothing is replayed",
            ),
            events_published: c(registry, "broker_events_published", "Events published to the broker"),
            messages_published: c(
                registry,
                "broker_messages_published",
                "Broker messages published (each a run of one group's events)",
            ),
            bytes_published: c(registry, "broker_bytes_published", "Bytes published to the broker"),
            events_received: c(
                registry,
                "broker_events_received",
                "Events received from the broker and delivered here",
            ),
            bytes_received: c(registry, "broker_bytes_received", "Bytes received from the broker"),
            duplicates: c(
                registry,
                "broker_duplicates",
                "Events received again (a resend or a replay's overlap) and not delivered",
            ),
            lag: g(
                registry,
                "broker_lag_events",
                "Events this node owes the broker: published but not acknowledged, or not yet published",
            ),
            lost: c(
                registry,
                "broker_events_lost",
                "Events never published: dropped from the full outbox while the broker was away, or too big for it",
            ),
            reconnects: c(registry, "broker_reconnects", "Connections to the broker lost and made again"),
            resumes: c(
                registry,
                "broker_resumes",
                "Resumes after a lost connection or a restart, replayed from the broker's stream",
            ),
            resume_truncated: c(
                registry,
                "broker_resume_truncated",
                "Resumes whose start the stream no longer held (older than its window or past its size): events in between may be lost here",
            ),
            resume_points_saved: c(
                registry,
                "broker_resume_points_saved",
                "Resume points saved to the broker's bucket, where a restarted node picks up",
            ),
            resume_left_out: g(
                registry,
                "broker_resume_groups_left_out",
                "Groups held here that the latest resume point could not hold (the broker's max_payload): they start fresh after a restart",
            ),
            replayed: c(
                registry,
                "broker_replayed_events",
                "Events a resume delivered that the live subscription had missed",
            ),
            redundant_links: c(
                registry,
                "broker_redundant_links",
                "Native links to nodes on the same broker: they carry no events (the broker does)",
            ),
            slow_consumer: c(
                registry,
                "broker_slow_consumer",
                "Times the NATS client dropped messages this node did not take in time (events lost here)",
            ),
            skipped,
            retries,
        }
    }

    /// A publish sent again; `reason` is one of `RETRIES`.
    pub fn retry(&self, reason: &'static str) {
        debug_assert!(Self::RETRIES.contains(&reason));
        self.retries
            .get_or_create(&vec![("reason", reason.to_owned())])
            .inc();
    }

    /// A skipped message; `reason` is one of `SKIPS`.
    pub fn skipped(&self, reason: &'static str) {
        debug_assert!(Self::SKIPS.contains(&reason));
        self.skipped
            .get_or_create(&vec![("reason", reason.to_owned())])
            .inc();
    }
}

/// AWX's web-node heartbeat (`backplane::heartbeat`).
#[derive(Clone)]
pub struct HeartbeatMetrics {
    /// 1 while the announcing connection works.
    pub up_announce: Gauge,
    /// 1 while the LISTEN connection works.
    pub up_discover: Gauge,
    /// Heartbeats sent.
    pub heartbeats: Counter,
    /// Nodes discovered and not gone.
    pub nodes: Gauge,
    /// Failed connections and statements.
    pub errors: Counter,
    notifications: Family<Labels, Counter>,
}

impl HeartbeatMetrics {
    const OUTCOMES: [&'static str; 5] = ["online", "offline", "own", "bad", "ignored"];

    fn register(registry: &mut Registry) -> Self {
        let up = Family::<Labels, Gauge>::default();
        registry.register(
            "awx_database_up",
            "1 while the connection to AWX's PostgreSQL works, by role (announce, discover)",
            up.clone(),
        );
        let role = |r: &str| up.get_or_create(&vec![("role", r.to_owned())]).clone();
        let heartbeats = Counter::default();
        registry.register(
            "heartbeats_sent",
            "Web-node heartbeats this node sent (NOTIFY)",
            heartbeats.clone(),
        );
        let nodes = Gauge::default();
        registry.register(
            "discovered_nodes",
            "Nodes announced online on the heartbeat channel and not gone",
            nodes.clone(),
        );
        let errors = Counter::default();
        registry.register(
            "awx_database_errors",
            "Failed connections or statements on AWX's PostgreSQL",
            errors.clone(),
        );
        let notifications = Family::<Labels, Counter>::default();
        registry.register(
            "heartbeat_notifications",
            "Heartbeats read: online, offline, own (this node's), bad (skipped), ignored (directory full)",
            notifications.clone(),
        );
        for o in Self::OUTCOMES {
            let _ = notifications.get_or_create(&vec![("outcome", o.to_owned())]);
        }
        Self {
            up_announce: role("announce"),
            up_discover: role("discover"),
            heartbeats,
            nodes,
            errors,
            notifications,
        }
    }

    /// The counter of one outcome (from `OUTCOMES`).
    pub fn notification(&self, outcome: &'static str) -> Counter {
        debug_assert!(Self::OUTCOMES.contains(&outcome));
        self.notifications
            .get_or_create(&vec![("outcome", outcome.to_owned())])
            .clone()
    }
}

/// The API authenticator's handles (`auth::api`): lookups answered from the
/// cache or by a request, requests by outcome and duration, why the API
/// was unavailable, requests in flight. Labels `kind` (`identity`,
/// `access`), `result`, `outcome`, `reason` come from closed sets.
#[derive(Clone)]
pub struct AuthMetrics {
    /// [kind][hit, miss]
    lookups: [[Counter; 2]; 2],
    /// [kind][ok, refused, unavailable]
    requests: [[Counter; 3]; 2],
    /// `Unavailable::ALL` order.
    unavailable: Vec<Counter>,
    in_flight: Gauge,
    duration: Histogram,
}

impl AuthMetrics {
    fn register(registry: &mut Registry) -> Self {
        use crate::auth::api::{Kind, Unavailable};
        let kinds = [Kind::Identity, Kind::Access];
        let lookups = Family::<Labels, Counter>::default();
        registry.register(
            "auth_lookups",
            "Identity and access lookups: hit (answered from the cache or by a request already in flight) or miss (made a request to the API)",
            lookups.clone(),
        );
        let requests = Family::<Labels, Counter>::default();
        registry.register(
            "auth_requests",
            "Requests to AWX's API by outcome: ok (200), refused (401/403, or 404 for access), unavailable",
            requests.clone(),
        );
        let unavailable = Family::<Labels, Counter>::default();
        registry.register(
            "auth_unavailable",
            "Lookups the API could not answer, by reason",
            unavailable.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "auth_requests_in_flight",
            "Requests to AWX's API in flight now",
            in_flight.clone(),
        );
        let duration = Histogram::new([
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
        ]);
        registry.register(
            "auth_request_duration_seconds",
            "Time AWX's API took to answer, queueing included",
            duration.clone(),
        );
        let get = |fam: &Family<Labels, Counter>, kind: Kind, key: &'static str, v: &str| {
            fam.get_or_create(&vec![
                ("kind", kind.label().to_owned()),
                (key, v.to_owned()),
            ])
            .clone()
        };
        Self {
            lookups: kinds.map(|k| ["hit", "miss"].map(|r| get(&lookups, k, "result", r))),
            requests: kinds
                .map(|k| ["ok", "refused", "unavailable"].map(|o| get(&requests, k, "outcome", o))),
            unavailable: Unavailable::ALL
                .iter()
                .map(|u| {
                    unavailable
                        .get_or_create(&vec![("reason", u.label().to_owned())])
                        .clone()
                })
                .collect(),
            in_flight,
            duration,
        }
    }

    fn kind(kind: crate::auth::api::Kind) -> usize {
        match kind {
            crate::auth::api::Kind::Identity => 0,
            crate::auth::api::Kind::Access => 1,
        }
    }

    /// One lookup; `miss` when it made the request itself.
    pub fn lookup(&self, kind: crate::auth::api::Kind, miss: bool) {
        self.lookups[Self::kind(kind)][usize::from(miss)].inc();
    }

    /// One request's end: 200 (`Ok(Some)`), a refusal (`Ok(None)`), or the
    /// API unavailable.
    pub fn answered<T>(
        &self,
        kind: crate::auth::api::Kind,
        verdict: &Result<Option<T>, crate::auth::api::Unavailable>,
        took: std::time::Duration,
    ) {
        self.duration.observe(took.as_secs_f64());
        let k = Self::kind(kind);
        match verdict {
            Ok(Some(_)) => {
                self.requests[k][0].inc();
            }
            Ok(None) => {
                self.requests[k][1].inc();
            }
            Err(why) => {
                self.requests[k][2].inc();
                self.unavailable_reason(*why);
            }
        }
    }

    /// A lookup that could not even be sent (the queue was full).
    pub fn unavailable(&self, kind: crate::auth::api::Kind, why: crate::auth::api::Unavailable) {
        self.requests[Self::kind(kind)][2].inc();
        self.unavailable_reason(why);
    }

    fn unavailable_reason(&self, why: crate::auth::api::Unavailable) {
        let i = crate::auth::api::Unavailable::ALL
            .iter()
            .position(|u| *u == why)
            .expect("every reason has a counter");
        self.unavailable[i].inc();
    }

    /// Counts a request in flight until the guard drops.
    pub fn in_flight(&self) -> InFlight {
        self.in_flight.inc();
        InFlight(self.in_flight.clone())
    }
}

/// Decrements the in-flight gauge on drop.
pub struct InFlight(Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Per-peer backplane metrics. The `peer` label is a configured peer
/// (`host:port`) or the node name an authenticated peer announced: bounded
/// by the cluster's size, never by client input.
#[derive(Clone)]
pub struct PeerFamilies {
    link_up: Family<Labels, Gauge>,
    connected_since: Family<Labels, Gauge>,
    events_sent: Family<Labels, Counter>,
    bytes_sent: Family<Labels, Counter>,
    events_received: Family<Labels, Counter>,
    bytes_received: Family<Labels, Counter>,
    batch_events: Family<Labels, Histogram, fn() -> Histogram>,
    resend_depth: Family<Labels, Gauge>,
    reconnects: Family<Labels, Counter>,
    link_failures: Family<Labels, Counter>,
    evicted: Family<Labels, Counter>,
    discarded: Family<Labels, Counter>,
    gaps: Family<Labels, Counter>,
    duplicates: Family<Labels, Counter>,
    skipped: Family<Labels, Counter>,
    auth_failures: Family<Labels, Counter>,
}

fn latency_histogram() -> Histogram {
    Histogram::new([
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        5.0, 10.0,
    ])
}

fn batch_histogram() -> Histogram {
    Histogram::new([1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0])
}

impl Default for PeerFamilies {
    fn default() -> Self {
        Self {
            link_up: Family::default(),
            connected_since: Family::default(),
            events_sent: Family::default(),
            bytes_sent: Family::default(),
            events_received: Family::default(),
            bytes_received: Family::default(),
            batch_events: Family::new_with_constructor(batch_histogram),
            resend_depth: Family::default(),
            reconnects: Family::default(),
            link_failures: Family::default(),
            evicted: Family::default(),
            discarded: Family::default(),
            gaps: Family::default(),
            duplicates: Family::default(),
            skipped: Family::default(),
            auth_failures: Family::default(),
        }
    }
}

/// One link's handles, made once per connection.
#[derive(Clone)]
pub struct LinkMetrics {
    pub up: Gauge,
    pub connected_since: Gauge,
    pub events_sent: Counter,
    pub bytes_sent: Counter,
    pub events_received: Counter,
    pub bytes_received: Counter,
    pub batch_events: Histogram,
    pub resend_depth: Gauge,
    pub reconnects: Counter,
    pub link_failures: Counter,
    pub evicted: Counter,
    pub discarded: Counter,
    pub gaps: Counter,
    pub duplicates: Counter,
    pub skipped: Counter,
}

impl PeerFamilies {
    fn register(&self, registry: &mut Registry) {
        let r = registry;
        r.register(
            "backplane_link_up",
            "1 while the link to or from a peer is up",
            self.link_up.clone(),
        );
        r.register(
            "backplane_link_connected_since_seconds",
            "Unix time the current link came up",
            self.connected_since.clone(),
        );
        r.register(
            "backplane_events_sent",
            "Events sent to a peer",
            self.events_sent.clone(),
        );
        r.register(
            "backplane_bytes_sent",
            "Bytes of event frames sent to a peer",
            self.bytes_sent.clone(),
        );
        r.register(
            "backplane_events_received",
            "Events received from a peer",
            self.events_received.clone(),
        );
        r.register(
            "backplane_bytes_received",
            "Bytes of event frames received from a peer",
            self.bytes_received.clone(),
        );
        r.register(
            "backplane_batch_events",
            "Events per frame sent to a peer",
            self.batch_events.clone(),
        );
        r.register(
            "backplane_resend_buffer_events",
            "Events held for a peer until it acknowledges them",
            self.resend_depth.clone(),
        );
        r.register(
            "backplane_reconnects",
            "Times a link to a peer came up again",
            self.reconnects.clone(),
        );
        r.register(
            "backplane_link_failures",
            "Failed attempts to dial a peer, or links that broke",
            self.link_failures.clone(),
        );
        r.register(
            "backplane_evicted",
            "Events evicted unacknowledged from a full resend buffer (lost to that peer)",
            self.evicted.clone(),
        );
        r.register(
            "backplane_discarded",
            "Buffered events dropped because the peer restarted (its clients are new)",
            self.discarded.clone(),
        );
        r.register(
            "backplane_gap_events",
            "Events a peer's sequence numbers show were never received",
            self.gaps.clone(),
        );
        r.register(
            "backplane_duplicates",
            "Events received twice from a peer and not delivered again",
            self.duplicates.clone(),
        );
        r.register(
            "backplane_skipped",
            "Messages from an AWX peer that were not understood",
            self.skipped.clone(),
        );
        r.register(
            "backplane_auth_failures",
            "Peer upgrades refused with 403, by reason",
            self.auth_failures.clone(),
        );
    }

    /// The handles of one peer's link; `direction` is `out` (we dialed)
    /// or `in` (it dialed us).
    pub fn link(&self, peer: &str, direction: &'static str) -> LinkMetrics {
        let p = || vec![("peer", peer.to_owned())];
        let pd = vec![
            ("peer", peer.to_owned()),
            ("direction", direction.to_owned()),
        ];
        LinkMetrics {
            up: self.link_up.get_or_create(&pd).clone(),
            connected_since: self.connected_since.get_or_create(&pd).clone(),
            events_sent: self.events_sent.get_or_create(&p()).clone(),
            bytes_sent: self.bytes_sent.get_or_create(&p()).clone(),
            events_received: self.events_received.get_or_create(&p()).clone(),
            bytes_received: self.bytes_received.get_or_create(&p()).clone(),
            batch_events: self.batch_events.get_or_create(&p()).clone(),
            resend_depth: self.resend_depth.get_or_create(&p()).clone(),
            reconnects: self.reconnects.get_or_create(&p()).clone(),
            link_failures: self.link_failures.get_or_create(&p()).clone(),
            evicted: self.evicted.get_or_create(&p()).clone(),
            discarded: self.discarded.get_or_create(&p()).clone(),
            gaps: self.gaps.get_or_create(&p()).clone(),
            duplicates: self.duplicates.get_or_create(&p()).clone(),
            skipped: self.skipped.get_or_create(&p()).clone(),
        }
    }

    /// Removes every series of `peer` (a sending node no longer
    /// remembered), so names cannot add series without bound.
    pub fn forget(&self, peer: &str) {
        let p = vec![("peer", peer.to_owned())];
        for d in ["in", "out"] {
            let pd = vec![("peer", peer.to_owned()), ("direction", d.to_owned())];
            self.link_up.remove(&pd);
            self.connected_since.remove(&pd);
        }
        self.events_sent.remove(&p);
        self.bytes_sent.remove(&p);
        self.events_received.remove(&p);
        self.bytes_received.remove(&p);
        self.batch_events.remove(&p);
        self.resend_depth.remove(&p);
        self.reconnects.remove(&p);
        self.link_failures.remove(&p);
        self.evicted.remove(&p);
        self.discarded.remove(&p);
        self.gaps.remove(&p);
        self.duplicates.remove(&p);
        self.skipped.remove(&p);
    }

    pub fn auth_failure(&self, reason: &str) -> Counter {
        self.auth_failures
            .get_or_create(&vec![("reason", reason.to_owned())])
            .clone()
    }
}

impl Metrics {
    /// Registers every metric for a node of `workers` workers using `io`.
    pub fn new(workers: usize, io: &'static str) -> Self {
        let mut registry = Registry::with_prefix("wsrelay");
        let per_worker = |registry: &mut Registry, name: &str, help: &str| {
            let fam = Family::<Labels, Gauge>::default();
            registry.register(name, help, fam.clone());
            (0..workers)
                .map(|w| fam.get_or_create(&vec![("worker", w.to_string())]).clone())
                .collect::<Vec<_>>()
        };
        let connections = per_worker(
            &mut registry,
            "connections",
            "Websocket clients connected now",
        );
        let groups = per_worker(
            &mut registry,
            "groups",
            "Distinct groups held by a worker's clients",
        );
        let per_worker_counter = |registry: &mut Registry, name: &str, help: &str| {
            let fam = Family::<Labels, Counter>::default();
            registry.register(name, help, fam.clone());
            (0..workers)
                .map(|w| fam.get_or_create(&vec![("worker", w.to_string())]).clone())
                .collect::<Vec<_>>()
        };
        let socket_writes = per_worker_counter(
            &mut registry,
            "socket_writes",
            "Vectored writes to client sockets (frames per write shows the batching)",
        );
        let delivery_rounds = per_worker_counter(
            &mut registry,
            "delivery_rounds",
            "Rounds of a worker's delivery loop (one per inbox drain, or per slice of a backlog)",
        );
        let latency =
            Family::<Labels, Histogram, fn() -> Histogram>::new_with_constructor(latency_histogram);
        registry.register(
            "delivery_latency_seconds",
            "From the router taking an event to the socket write carrying it (the oldest event of each write)",
            latency.clone(),
        );
        let delivery_latency = (0..workers)
            .map(|w| {
                latency
                    .get_or_create(&vec![("worker", w.to_string())])
                    .clone()
            })
            .collect();
        let queued_frames = per_worker(
            &mut registry,
            "queued_frames",
            "Frames waiting in a worker's client queues (sampled each second)",
        );
        let queued_bytes = per_worker(
            &mut registry,
            "queued_bytes",
            "Bytes waiting in a worker's client queues (sampled each second)",
        );
        let deepest_queue = per_worker(
            &mut registry,
            "deepest_queue_frames",
            "The deepest client queue of a worker, frames (sampled each second)",
        );
        let ingest_lag = Family::<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        registry.register(
            "ingest_lag_seconds",
            "How long the oldest event of the last batch read from a Redis source had waited (kept until the next batch)",
            ingest_lag.clone(),
        );
        let lag = |source: &str| {
            ingest_lag
                .get_or_create(&vec![("source", source.to_owned())])
                .clone()
        };
        let (ingest_lag_redis, ingest_lag_stream) = (lag("redis"), lag("stream"));

        let info = Family::<Labels, Gauge>::default();
        registry.register("info", "Node facts: the io driver", info.clone());
        info.get_or_create(&vec![("io", io.to_owned())]).set(1);

        let counter = |registry: &mut Registry, name: &str, help: &str| {
            let c = Counter::default();
            registry.register(name, help, c.clone());
            c
        };
        let accepted = counter(
            &mut registry,
            "clients_accepted",
            "Clients authenticated and accepted",
        );
        let client_errors = counter(
            &mut registry,
            "client_errors",
            "Error messages sent to clients",
        );
        let messages_paced = counter(
            &mut registry,
            "client_messages_paced",
            "Client messages that waited because their connection passed --subscribe-rate",
        );
        let events_unrouted = counter(
            &mut registry,
            "events_unrouted",
            "Accepted events that no client on this node subscribed to",
        );
        let deliveries = counter(
            &mut registry,
            "deliveries",
            "Event frames queued to clients",
        );
        let dropped = counter(
            &mut registry,
            "events_dropped",
            "Event frames lost to slow consumers (dropped oldest, or discarded when disconnected)",
        );

        let labelled = |registry: &mut Registry,
                        name: &str,
                        help: &str,
                        key: &'static str,
                        values: &[&str]| {
            let fam = Family::<Labels, Counter>::default();
            registry.register(name, help, fam.clone());
            values
                .iter()
                .map(|v| fam.get_or_create(&vec![(key, (*v).to_owned())]).clone())
                .collect::<Vec<_>>()
        };
        let refused = labelled(
            &mut registry,
            "clients_refused",
            "Connection attempts refused",
            "reason",
            &Refusal::ALL.map(Refusal::label),
        );
        let closes = labelled(
            &mut registry,
            "server_closes",
            "Client connections the server closed",
            "reason",
            &ServerClose::ALL.map(ServerClose::label),
        );
        let events_in = labelled(
            &mut registry,
            "events_in",
            "Events accepted from producers",
            "source",
            &["http", "inproc", "redis", "stream"],
        );
        let stream_skipped = labelled(
            &mut registry,
            "stream_skipped",
            "Redis Stream entries skipped, by reason",
            "reason",
            &BadEntry::ALL.map(BadEntry::label),
        );
        let redis_skipped = labelled(
            &mut registry,
            "redis_skipped",
            "Redis entries skipped, by reason",
            "reason",
            &Malformed::ALL.map(Malformed::label),
        );
        let redis_errors = counter(&mut registry, "redis_errors", "Failed Redis operations");
        let tail_dropped = counter(
            &mut registry,
            "status_tail_dropped",
            "Events the status page's tail missed because its browser fell behind (not clients' losses)",
        );
        let stream_trimmed_unread = counter(
            &mut registry,
            "stream_trimmed_unread",
            "Stream entries trimmed unread because the stream passed --stream-maxlen",
        );
        let stream_unconfirmed = Gauge::default();
        registry.register(
            "stream_unconfirmed",
            "Stream entries delivered here that not every peer has acknowledged yet",
            stream_unconfirmed.clone(),
        );
        let stream_replayed = counter(
            &mut registry,
            "stream_replayed",
            "Stream entries replayed to peers at start (an earlier run ended before they confirmed them)",
        );
        let redis_up = Gauge::default();
        registry.register(
            "redis_up",
            "1 while Redis answers (the drain asks every second) and memberships are written, 0 during an outage",
            redis_up.clone(),
        );
        let emit_requests = labelled(
            &mut registry,
            "emit_requests",
            "POST /api/v1/emit requests by status class",
            "status",
            &["2xx", "4xx", "5xx", "other"],
        );

        let peers = PeerFamilies::default();
        peers.register(&mut registry);
        let auth = AuthMetrics::register(&mut registry);
        let heartbeat = HeartbeatMetrics::register(&mut registry);
        let broker = BrokerMetrics::register(&mut registry);
        Self {
            registry,
            auth,
            heartbeat,
            broker,
            peers,
            connections,
            accepted,
            refused: refused.try_into().expect("one per reason"),
            closes: closes.try_into().expect("one per close kind"),
            client_errors,
            messages_paced,
            events_in_http: events_in[0].clone(),
            events_in_inproc: events_in[1].clone(),
            events_unrouted,
            deliveries,
            dropped,
            emit_requests: emit_requests.try_into().expect("four classes"),
            groups,
            socket_writes,
            delivery_rounds,
            delivery_latency,
            queued_frames,
            queued_bytes,
            deepest_queue,
            tail_dropped,
            ingest_lag_redis,
            ingest_lag_stream,
            events_in_redis: events_in[2].clone(),
            redis_up,
            redis_errors,
            redis_skipped,
            events_in_stream: events_in[3].clone(),
            stream_skipped,
            stream_trimmed_unread,
            stream_unconfirmed,
            stream_replayed,
        }
    }

    /// The skip counter for `why`.
    pub fn stream_skipped(&self, why: BadEntry) -> &Counter {
        let i = BadEntry::ALL
            .iter()
            .position(|b| *b == why)
            .expect("every reason has a counter");
        &self.stream_skipped[i]
    }

    /// The skip counter for `why`.
    pub fn redis_skipped(&self, why: Malformed) -> &Counter {
        let i = Malformed::ALL
            .iter()
            .position(|m| *m == why)
            .expect("every reason has a counter");
        &self.redis_skipped[i]
    }

    pub fn refused(&self, why: Refusal) -> &Counter {
        let i = Refusal::ALL
            .iter()
            .position(|r| *r == why)
            .expect("every refusal has a counter");
        &self.refused[i]
    }

    pub fn server_close(&self, why: ServerClose) -> &Counter {
        let i = ServerClose::ALL
            .iter()
            .position(|c| *c == why)
            .expect("every close kind has a counter");
        &self.closes[i]
    }

    pub fn emit_request(&self, status: u16) -> &Counter {
        &self.emit_requests[match status {
            200..=299 => 0,
            400..=499 => 1,
            500..=599 => 2,
            _ => 3,
        }]
    }

    /// Websocket clients connected now, over all workers.
    pub fn total_connections(&self) -> i64 {
        self.connections.iter().map(Gauge::get).sum()
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family_with_fixed_labels() {
        let m = Metrics::new(2, "epoll");
        m.deliveries.inc_by(5);
        m.server_close(ServerClose::SlowConsumer).inc();
        m.refused(Refusal::AuthFailed).inc();
        m.connections[1].inc();
        let text = m.render();
        for line in [
            "wsrelay_deliveries_total 5",
            "wsrelay_server_closes_total{reason=\"slow_consumer\"} 1",
            "wsrelay_clients_refused_total{reason=\"auth_failed\"} 1",
            "wsrelay_connections{worker=\"1\"} 1",
            "wsrelay_info{io=\"epoll\"} 1",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        assert_eq!(m.total_connections(), 1);
    }
}
