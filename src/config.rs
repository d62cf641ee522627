//! Node configuration: plain data with documented defaults, loaded from
//! flags, `WSRELAY_*` environment variables and a TOML file (in that order
//! of precedence), and validated before anything binds.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::auth::api::ApiSettings;
use crate::auth::policy::Policy;
use crate::auth::Jwt;
use crate::fanout::{QueueLimits, SlowPolicy, MAX_WORKERS};

/// Why a configuration was refused. Printed as is before the process exits.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error(
        "refusing to start without client authentication: pass --jwt-secret S \
         (HS256 tokens) and/or --auth-url URL (AWX's /api/v2/me/), or --dev-insecure \
         for local development only"
    )]
    NoAuthenticator,
    #[error(
        "--jwt-secret is {0} bytes: HS256 needs at least 16, and 32 or more is recommended \
         (RFC 7518 3.2); make one with `openssl rand -hex 32`"
    )]
    ShortJwtSecret(usize),
    #[error("--dev-insecure excludes --jwt-secret and --auth-url; choose one")]
    TwoAuthenticators,
    #[error("--node-id {0:?}: want 1 to 64 letters, digits, '.', '-' or '_' (a host name)")]
    NodeId(String),
    #[error("--auth-url {0}: want an http:// or https:// URL (AWX's /api/v2/me/)")]
    AuthUrl(String),
    #[error("--auth-ca-file {path}: {why}")]
    AuthCa { path: PathBuf, why: String },
    #[error("{0}")]
    Access(String),
    #[error("--awx-database: {0}")]
    Database(String),
    #[error("--discover-peers postgres needs --awx-database (AWX's PostgreSQL) to LISTEN on")]
    DiscoveryWithoutDatabase,
    #[error(
        "--heartbeat-channel {0:?}: want a PostgreSQL identifier (letters, digits, _; at most 63)"
    )]
    HeartbeatChannel(String),
    #[error("--awx-database-ca-file {path}: {why}")]
    DatabaseCa { path: PathBuf, why: String },
    #[error("{0} must be at least 1")]
    Zero(&'static str),
    #[error("--workers must be at most {MAX_WORKERS}, got {0}")]
    TooManyWorkers(usize),
    #[error("{0} must not be empty")]
    Empty(&'static str),
    #[error("--redis {0}: want a redis:// or unix:// URL")]
    RedisUrl(String),
    #[error(
        "refusing to start a cluster without a backplane secret: --peer, --broker or \
         --discover-peers is set, so pass --backplane-secret S (the same on every node; \
         AWX's BROADCAST_WEBSOCKET_SECRET)"
    )]
    NoBackplaneSecret,
    #[error(transparent)]
    Peer(#[from] crate::backplane::peer::PeerUrlError),
    #[error("--peer-ca-file {path}: {why}")]
    PeerCa { path: PathBuf, why: String },
    #[error("{0}")]
    Broker(String),
    #[error("--{0} and --{0}-file are both set; choose one")]
    SecretTwice(&'static str),
    #[error("--{name}-file {path}: {why}")]
    SecretFile {
        name: &'static str,
        path: PathBuf,
        why: String,
    },
    #[error(
        "--admin-listen {0} is the client listener's address; give the admin listener its own"
    )]
    AdminSameAsListen(SocketAddr),
}

/// A secret value (a key or a shared secret): its `Debug` never shows it,
/// and it serializes as a mask, so no configuration dump reveals it. Read
/// it with `expose`.
#[derive(Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Largest secret file read (`*_file`), bytes.
pub const MAX_SECRET_FILE: u64 = 64 * 1024;

/// What a configuration dump shows in place of a secret.
pub const MASK: &str = "********";

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(MASK)
    }
}

impl serde::Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(MASK)
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Secret(s.to_owned())
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Secret(s)
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_owned()))
    }
}

/// A URL with its password (if any) masked, for dumps and logs.
pub fn mask_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, tail) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            if userinfo.contains(':') {
                format!("{scheme}://{user}:{MASK}@{host}{tail}")
            } else {
                format!("{scheme}://{MASK}@{host}{tail}")
            }
        }
        None => url.to_owned(),
    }
}

/// A PostgreSQL connection string (URL or key=value) with its password masked.
fn mask_database(db: &str) -> String {
    if db.contains("://") {
        return mask_url(db);
    }
    db.split_whitespace()
        .map(|kv| match kv.split_once('=') {
            Some(("password", _)) => format!("password={MASK}"),
            _ => kv.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// An address to listen on, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listen {
    Off,
    At(SocketAddr),
}

impl std::str::FromStr for Listen {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.eq_ignore_ascii_case("off") {
            return Ok(Listen::Off);
        }
        s.parse()
            .map(Listen::At)
            .map_err(|_| format!("{s:?}: want host:port (an IP address) or off"))
    }
}

impl<'de> serde::Deserialize<'de> for Listen {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl serde::Serialize for Listen {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Listen::Off => s.serialize_str("off"),
            Listen::At(a) => s.serialize_str(&a.to_string()),
        }
    }
}

/// How log lines are written.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    serde::Deserialize,
    serde::Serialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines (the default).
    #[default]
    Text,
    /// One JSON object per line, fields and span context as keys.
    Json,
}

/// Which I/O driver the workers use.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    serde::Deserialize,
    serde::Serialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum IoMode {
    /// io_uring when the kernel allows it, else epoll (one log line says so).
    #[default]
    Auto,
    /// io_uring or refuse to start, with the reason.
    Uring,
    /// epoll through tokio.
    Epoll,
}

/// Where a node learns of its peers besides `--peer`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Discovery {
    /// AWX's web-node heartbeats: LISTEN on `--heartbeat-channel`.
    Postgres,
}

/// How discovered nodes are dialled (AWX's `BROADCAST_WEBSOCKET_PROTOCOL`).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    serde::Deserialize,
    serde::Serialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum DialScheme {
    /// TLS (AWX's `https`, the default).
    #[default]
    #[value(alias = "https")]
    #[serde(alias = "https")]
    Wss,
    /// Plain TCP (AWX's `http`).
    #[value(alias = "http")]
    #[serde(alias = "http")]
    Ws,
}

/// Everything a node needs to run. `Default` gives a node on
/// 127.0.0.1:8051 with no authenticator, which `validate` refuses. Its
/// `Debug` shows every setting as the file would spell it, with secrets
/// and the passwords in URLs masked.
#[derive(Clone)]
pub struct Config {
    /// Address of the client, emit, health and metrics listener.
    /// Default 127.0.0.1:8051, daphne's port in AWX.
    pub listen: SocketAddr,
    /// Address of the admin listener: `/status` (the live status page and
    /// its tail), `/metrics`, `/readyz` and `/healthz`, for operators only.
    /// Default 127.0.0.1:9851 (loopback; not AWX's 8052, where its nginx
    /// listens); `None` (`off`) serves none of it apart, and `/status`
    /// then only with the admin key.
    pub admin_listen: Option<SocketAddr>,
    /// Bearer key for `/status` (and its tail): required wherever it is
    /// set, the admin listener included; without it `/status` is served on
    /// the admin listener only. Default none.
    pub admin_key: Option<Secret>,
    /// Log line format. Default `text`.
    pub log_format: LogFormat,
    /// Worker threads, each with its own event loop and connections.
    /// Default 0: one per available core.
    pub workers: usize,
    /// I/O driver. Default `auto`.
    pub io: IoMode,
    /// HS256 secret for client tokens. No default.
    pub jwt_secret: Option<Secret>,
    /// Clock skew allowed on `exp` and `nbf`, seconds. Default 30.
    pub jwt_leeway_secs: u64,
    /// Accept any non-empty token as user 0. Default off; loud when on.
    pub dev_insecure: bool,
    /// Bearer key of `POST /api/v1/emit`; without it the endpoint is 404.
    pub emit_key: Option<Secret>,
    /// Largest client message, bytes, after fragments are joined.
    /// Default 64 KiB: a subscribe message with 1024 groups fits easily.
    pub max_message_bytes: usize,
    /// Groups one connection may hold. Default 1024.
    pub max_groups: usize,
    /// Distinct groups the node holds at most, for its clients and for any
    /// one peer's interest (each is also a membership in AWX's Redis).
    /// Default 100,000.
    pub max_node_groups: usize,
    /// Text messages (subscribes) one connection may send per second, with
    /// a burst of twice as many; past it the connection's reader pauses.
    /// Default 10: the AWX UI sends one when a page changes.
    pub subscribe_rate: u32,
    /// Longest group name, bytes. Default 256.
    pub max_group_name: usize,
    /// Websocket clients per node. Default 100,000.
    pub max_connections: usize,
    /// Per-connection outbound queue bound, bytes. Default 4 MiB: about
    /// 2,000 typical 2 KiB job events, a few seconds of a busy job.
    pub queue_bytes: usize,
    /// Per-connection outbound queue bound, frames. Default 16,384.
    pub queue_frames: usize,
    /// What happens to a client whose queue is full. Default `disconnect`.
    pub slow_policy: SlowPolicy,
    /// Largest emit request body, bytes. Default 16 MiB.
    pub max_emit_bytes: usize,
    /// Most events in one emit request. Default 100,000.
    pub max_emit_events: usize,
    /// Largest HTTP request head, bytes. Default 16 KiB.
    pub max_head_bytes: usize,
    /// Event batches a worker's inbox holds before producers wait.
    /// Default 1,024.
    pub worker_inbox: usize,
    /// Least time between two writes to one client. A write after a quiet
    /// spell goes at once; one that follows within the interval waits for
    /// its end and carries everything that arrived meanwhile, so under a
    /// flood each client costs one system call per interval instead of one
    /// per event. Default 1 ms (tokio's timer rounds the wait up to whole
    /// milliseconds); 0 writes whenever there is something to write.
    /// PERF.md has the measurement behind the default.
    pub client_write_interval: Duration,
    /// Interval between server pings; a client that sends nothing for a
    /// whole interval after a ping is closed. Default 20 s (AWX's
    /// heartbeat).
    pub ping_interval: Duration,
    /// Time to receive a request head (and an emit body). Default 10 s.
    pub request_timeout: Duration,
    /// Time given to a close frame to reach a client before the socket
    /// is dropped. Default 2 s.
    pub close_timeout: Duration,
    /// Time connections get to close on shutdown. Default 5 s.
    pub shutdown_grace: Duration,
    /// This node's name: in Redis channel names now, on the backplane later.
    /// Default: the host name.
    pub node_id: String,
    /// Redis URLs of the channels_redis layer AWX's producers write to
    /// (several: channels_redis's consistent hash spreads keys over them).
    /// Default none: no Redis ingest.
    pub redis: Vec<String>,
    /// The layer's key prefix. Default `asgi` (AWX's).
    pub channel_prefix: String,
    /// The layer's `group_expiry`, seconds: memberships older than this are
    /// dropped by producers, so wsrelay refreshes its own well before.
    /// Default 86,400 (channels_redis's; AWX configures 157,784,760).
    pub group_expiry_secs: u64,
    /// The layer's `expiry`, seconds: older messages are skipped.
    /// Default 60 (channels_redis's, and AWX's).
    pub message_expiry_secs: u64,
    /// The layer's `random_prefix_length`. Default 12.
    pub random_prefix_length: usize,
    /// Messages popped per Redis round trip at most. Default 512.
    pub redis_batch: usize,
    /// How long a subscribe reply waits for Redis to record the new
    /// memberships, so that events emitted after the reply reach the
    /// client (AWX's `group_add` is awaited the same way). Default 1 s.
    pub subscribe_ack_timeout: Duration,
    /// The native Redis Stream producers `XADD` to (fields `group`,
    /// `payload`); empty disables it. Default `wsrelay:events`.
    pub stream_key: String,
    /// Consumed entries are trimmed as they are acknowledged; this caps the
    /// stream's length when wsrelay falls behind (entries removed unread
    /// are counted). Default 1,000,000.
    pub stream_maxlen: u64,
    /// After start, Redis backlogs are held this long before draining, so
    /// clients reconnecting after a restart subscribe first and miss
    /// nothing Redis kept. Default 2 s.
    pub backlog_hold: Duration,
    /// Peers to dial: `[native+|awx-2020+|awx-2022+]ws[s]://host[:port]`.
    /// Default none: a single node. Re-read from the config file on SIGHUP.
    pub peers: Vec<String>,
    /// NATS servers of the broker backplane (`nats://host:4222`, or
    /// `tls://`; one cluster, any of its servers). Default none: no broker.
    /// Needs `backplane_secret`, which signs every broker message.
    pub broker: Vec<String>,
    /// The subjects' first tokens: a group's events travel on
    /// `<prefix>.g.<group>`. Default `wsrelay`; clusters sharing a broker
    /// keep apart with different prefixes.
    pub broker_subject_prefix: String,
    /// How long the broker's JetStream stream keeps messages, so that a
    /// node back from a lost connection replays what it missed. Default
    /// 120 s; 0 turns JetStream off (losses while away are then counted
    /// by the sender only).
    pub broker_replay_window: Duration,
    /// The JetStream stream's name. Default `WSRELAY`.
    pub broker_stream: String,
    /// The stream's bound in bytes (oldest dropped first). Default 1 GiB.
    pub broker_stream_max_bytes: u64,
    /// The backplane's shared secret (AWX's `BROADCAST_WEBSOCKET_SECRET`).
    /// No default; without it every peer upgrade is refused with 403, and
    /// a node with peers refuses to start.
    pub backplane_secret: Option<Secret>,
    /// Verify peers' TLS certificates on `wss://`. Default on; AWX nodes
    /// with self-signed certificates need it off (AWX's own default).
    pub peer_tls_verify: bool,
    /// Extra PEM certificate authorities for `wss://` peers. Default none
    /// (the Mozilla roots only).
    pub peer_ca_file: Option<PathBuf>,
    /// Time to connect, TLS and upgrade to a peer. Default 5 s.
    pub peer_connect_timeout: Duration,
    /// Longest wait between dial attempts; the first retry comes within
    /// 1 s and doubles from there, with jitter. Default 30 s.
    pub peer_backoff_max: Duration,
    /// Ping interval on peer links; a link silent for three intervals is
    /// dead and redialled. Default 5 s.
    pub peer_ping_interval: Duration,
    /// Most events in one backplane batch. Default 1,024.
    pub peer_batch_events: usize,
    /// About the most payload bytes in one backplane batch. Default 256 KiB.
    pub peer_batch_bytes: usize,
    /// How long a link waits for a batch to fill once an event is ready.
    /// Default 0: send as soon as the link is free; batches still form from
    /// whatever arrives while the previous write is in flight. A delay
    /// saves CPU under moderate load at the price of latency (tokio's timer
    /// rounds it up to whole milliseconds); PERF.md has the measurement.
    pub peer_flush_delay: Duration,
    /// Events held per peer until acknowledged (the resend buffer); past
    /// it the oldest are evicted and counted. Default 100,000.
    pub peer_buffer_events: usize,
    /// The resend buffer's bound in payload bytes. Default 64 MiB.
    pub peer_buffer_bytes: usize,
    /// Links other nodes may have dialled to this one at once; past it an
    /// upgrade gets 503. Default 64 (a cluster's size, with room).
    pub max_peer_links: usize,
    /// Largest message a peer link accepts, bytes (a native batch, or one
    /// AWX event). Default 32 MiB: above the largest event an emit takes
    /// (16 MiB) with its framing.
    pub peer_max_message: usize,
    /// AWX's `/api/v2/me/` (or just AWX's address, to which that path is
    /// added): clients are authenticated by asking it with their session
    /// cookie or token (after the JWT check, when both are on). Default
    /// none.
    pub auth_url: Option<String>,
    /// How long an accepted credential's user id (and an allowed object)
    /// is cached, seconds. Default 60.
    pub auth_cache_ttl_secs: u64,
    /// How long a refused credential (and a denied object) is cached,
    /// seconds. Default 5: short, so a fresh login is seen quickly.
    pub auth_refusal_ttl_secs: u64,
    /// Entries in each cache (credentials; user-and-group answers).
    /// Default 100,000.
    pub auth_cache_entries: u64,
    /// Time one API lookup may take, queueing included. Default 5 s.
    pub auth_timeout: Duration,
    /// API requests in flight at most. Default 32.
    pub auth_max_inflight: usize,
    /// Verify the API's TLS certificate. Default on.
    pub auth_tls_verify: bool,
    /// Extra PEM CAs for the API. Default none (the Mozilla roots only).
    pub auth_ca_file: Option<PathBuf>,
    /// Access rules (prefix, rule) laid over AWX's defaults
    /// (`auth::policy::AWX_DEFAULTS`). Default none.
    pub access: Vec<(String, String)>,
    /// Groups in one subscribe message that may need an API access check.
    /// Default 100.
    pub max_access_checks: usize,
    /// AWX's PostgreSQL (`postgresql://...`): this node announces itself on
    /// `heartbeat_channel` as AWX's web nodes do. Default none.
    pub awx_database: Option<String>,
    /// Extra PEM CAs for the database's TLS (with `sslmode=require` or
    /// `prefer`). Default none (the Mozilla roots only).
    pub awx_database_ca_file: Option<PathBuf>,
    /// Send heartbeats when `awx_database` is set. Default on; off for a
    /// node that only discovers (AWX's task-side relay).
    pub announce: bool,
    /// The NOTIFY channel of AWX's web-node heartbeat. Default
    /// `web_ws_heartbeat`.
    pub heartbeat_channel: String,
    /// Heartbeat interval (AWX's
    /// `BROADCAST_WEBSOCKET_BEACON_FROM_WEB_RATE_SECONDS`). Default 15 s.
    pub heartbeat_interval: Duration,
    /// The address announced in heartbeats (AWX's `MY_POD_IP`). Default
    /// none: `null`, and dialers use the host name.
    pub advertise_ip: Option<String>,
    /// Dial every node announced on the heartbeat channel. Default off.
    pub discover_peers: Option<Discovery>,
    /// Scheme for discovered nodes. Default `wss` (AWX's `https`).
    pub discover_scheme: DialScheme,
    /// Port for discovered nodes (AWX's `BROADCAST_WEBSOCKET_PORT`).
    /// Default 443.
    pub discover_port: u16,
    /// Fault injection for tests only (no flag, environment variable or
    /// file key sets it): a client text message, or a native peer's node
    /// name, equal to this makes that connection's task panic, so tests
    /// can prove that cleanup does not depend on a task ending normally.
    /// Default none.
    pub test_panic_on: Option<String>,
    /// Conformance testing only (no flag, environment variable or file key
    /// sets it): every websocket session echoes each text and binary
    /// message back instead of speaking AWX's protocol, with no
    /// authentication. The same decoder, control-frame, close and UTF-8
    /// handling serve it as serve clients; the Autobahn cases run against
    /// it. Default off.
    pub test_echo: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8051)),
            admin_listen: Some(SocketAddr::from(([127, 0, 0, 1], 9851))),
            admin_key: None,
            log_format: LogFormat::Text,
            workers: 0,
            io: IoMode::Auto,
            jwt_secret: None,
            jwt_leeway_secs: 30,
            dev_insecure: false,
            emit_key: None,
            max_message_bytes: 64 * 1024,
            max_groups: 1024,
            max_node_groups: 100_000,
            subscribe_rate: 10,
            max_group_name: 256,
            max_connections: 100_000,
            queue_bytes: 4 * 1024 * 1024,
            queue_frames: 16 * 1024,
            slow_policy: SlowPolicy::Disconnect,
            max_emit_bytes: 16 * 1024 * 1024,
            max_emit_events: 100_000,
            max_head_bytes: 16 * 1024,
            worker_inbox: 1024,
            client_write_interval: Duration::from_millis(1),
            ping_interval: Duration::from_secs(20),
            request_timeout: Duration::from_secs(10),
            close_timeout: Duration::from_secs(2),
            shutdown_grace: Duration::from_secs(5),
            node_id: default_node_id(),
            redis: Vec::new(),
            channel_prefix: "asgi".to_owned(),
            group_expiry_secs: 86_400,
            message_expiry_secs: 60,
            random_prefix_length: 12,
            redis_batch: 512,
            subscribe_ack_timeout: Duration::from_secs(1),
            stream_key: "wsrelay:events".to_owned(),
            stream_maxlen: 1_000_000,
            backlog_hold: Duration::from_secs(2),
            peers: Vec::new(),
            backplane_secret: None,
            peer_tls_verify: true,
            peer_ca_file: None,
            broker: Vec::new(),
            broker_subject_prefix: "wsrelay".into(),
            broker_replay_window: Duration::from_secs(120),
            broker_stream: "WSRELAY".into(),
            broker_stream_max_bytes: 1 << 30,
            peer_connect_timeout: Duration::from_secs(5),
            peer_backoff_max: Duration::from_secs(30),
            peer_ping_interval: Duration::from_secs(5),
            peer_batch_events: 1024,
            peer_batch_bytes: 256 * 1024,
            peer_flush_delay: Duration::ZERO,
            peer_buffer_events: 100_000,
            peer_buffer_bytes: 64 * 1024 * 1024,
            max_peer_links: 64,
            peer_max_message: 32 * 1024 * 1024,
            auth_url: None,
            auth_cache_ttl_secs: 60,
            auth_refusal_ttl_secs: 5,
            auth_cache_entries: 100_000,
            auth_timeout: Duration::from_secs(5),
            auth_max_inflight: 32,
            auth_tls_verify: true,
            auth_ca_file: None,
            access: Vec::new(),
            max_access_checks: 100,
            awx_database: None,
            awx_database_ca_file: None,
            announce: true,
            heartbeat_channel: "web_ws_heartbeat".to_owned(),
            heartbeat_interval: Duration::from_secs(15),
            advertise_ip: None,
            discover_peers: None,
            discover_scheme: DialScheme::Wss,
            discover_port: 443,
            test_panic_on: None,
            test_echo: false,
        }
    }
}

/// Shortest `--jwt-secret` accepted, bytes; below `GOOD_SECRET` a warning.
pub const MIN_JWT_SECRET: usize = 16;
/// Secrets shorter than this (256 bits as hex would be 64) are warned
/// about: RFC 7518 3.2 asks for a key at least as long as the hash.
pub const GOOD_SECRET: usize = 32;

/// How clients are authenticated and authorized, as checked by
/// `Config::validate`; the server starts the API thread from `api`.
pub struct AuthSetup {
    pub jwt: Option<Jwt>,
    pub dev_insecure: bool,
    pub api: Option<ApiSettings>,
    pub policy: Policy,
}

/// The host name, as AWX names its nodes; `wsrelay` if it cannot be read.
fn default_node_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "wsrelay".to_owned())
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // What `check-config` prints, on one line: nothing secret.
        let shown = Settings::for_display(self);
        let text = toml::to_string(&shown).map_err(|_| std::fmt::Error)?;
        write!(f, "Config {{ {} }}", text.trim().replace('\n', ", "))
    }
}

impl Config {
    /// The effective configuration as TOML, as `wsrelay check-config`
    /// prints it: every key with its value, secrets masked.
    pub fn to_toml(&self) -> String {
        toml::to_string(&Settings::for_display(self)).unwrap_or_default()
    }

    /// Checks the values; returns how clients are to be authenticated.
    pub fn validate(&self) -> Result<AuthSetup, ConfigError> {
        let nonzero = [
            (self.max_message_bytes, "max-message-bytes"),
            (self.max_groups, "max-groups"),
            (self.max_node_groups, "max-node-groups"),
            (self.subscribe_rate as usize, "subscribe-rate"),
            (self.max_group_name, "max-group-name"),
            (self.max_connections, "max-connections"),
            (self.queue_bytes, "queue-bytes"),
            (self.queue_frames, "queue-frames"),
            (self.max_emit_bytes, "max-emit-bytes"),
            (self.max_emit_events, "max-emit-events"),
            (self.max_head_bytes, "max-head-bytes"),
            (self.worker_inbox, "worker-inbox"),
            (self.redis_batch, "redis-batch"),
            (self.group_expiry_secs as usize, "group-expiry-secs"),
            (self.message_expiry_secs as usize, "message-expiry-secs"),
            (self.peer_batch_events, "peer-batch-events"),
            (self.peer_batch_bytes, "peer-batch-bytes"),
            (self.peer_buffer_events, "peer-buffer-events"),
            (self.peer_buffer_bytes, "peer-buffer-bytes"),
            (self.max_peer_links, "max-peer-links"),
            (self.peer_max_message, "peer-max-message"),
            (self.max_access_checks, "max-access-checks"),
        ];
        if let Some((_, name)) = nonzero.iter().find(|(v, _)| *v == 0) {
            return Err(ConfigError::Zero(name));
        }
        if self.ping_interval.is_zero() {
            return Err(ConfigError::Zero("ping-interval-ms"));
        }
        if self.peer_ping_interval.is_zero() {
            return Err(ConfigError::Zero("peer-ping-interval-ms"));
        }
        if self.peer_connect_timeout.is_zero() {
            return Err(ConfigError::Zero("peer-connect-timeout-ms"));
        }
        self.peer_specs()?;
        match &self.backplane_secret {
            Some(s) if s.is_empty() => return Err(ConfigError::Empty("backplane-secret")),
            None if !self.peers.is_empty() || !self.broker.is_empty() => {
                return Err(ConfigError::NoBackplaneSecret)
            }
            _ => {}
        }
        crate::backplane::broker::BrokerSettings::from_config(self)?;
        if self.worker_count() > MAX_WORKERS {
            return Err(ConfigError::TooManyWorkers(self.workers));
        }
        if matches!(&self.emit_key, Some(k) if k.is_empty()) {
            return Err(ConfigError::Empty("emit-key"));
        }
        if matches!(&self.admin_key, Some(k) if k.is_empty()) {
            return Err(ConfigError::Empty("admin-key"));
        }
        if self.admin_listen == Some(self.listen) && self.listen.port() != 0 {
            return Err(ConfigError::AdminSameAsListen(self.listen));
        }
        if !crate::backplane::is_node_name(&self.node_id) {
            return Err(ConfigError::NodeId(self.node_id.clone()));
        }
        if let Some(url) = self
            .redis
            .iter()
            .find(|u| !u.starts_with("redis://") && !u.starts_with("unix://"))
        {
            return Err(ConfigError::RedisUrl(url.clone()));
        }
        let api = self.api_settings()?;
        let policy = Policy::with(&self.access).map_err(ConfigError::Access)?;
        if self.awx_database.is_some() || self.discover_peers.is_some() {
            self.heartbeat()?;
            self.database()?;
        }
        if self.heartbeat_interval.is_zero() {
            return Err(ConfigError::Zero("heartbeat-interval-secs"));
        }
        let ident = |s: &str| {
            s.len() <= 63
                && s.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        };
        if !ident(&self.heartbeat_channel) {
            return Err(ConfigError::HeartbeatChannel(
                self.heartbeat_channel.clone(),
            ));
        }
        if self.discover_peers.is_some() && self.backplane_secret.is_none() {
            return Err(ConfigError::NoBackplaneSecret);
        }
        let jwt = match &self.jwt_secret {
            Some(s) if s.is_empty() => return Err(ConfigError::Empty("jwt-secret")),
            // Anyone who guesses the secret mints tokens for any user.
            Some(s) if s.len() < MIN_JWT_SECRET => {
                return Err(ConfigError::ShortJwtSecret(s.len()))
            }
            Some(s) => Some(Jwt {
                secret: s.expose().as_bytes().to_vec(),
                leeway_secs: self.jwt_leeway_secs,
            }),
            None => None,
        };
        match (jwt.is_some() || api.is_some(), self.dev_insecure) {
            (true, true) => Err(ConfigError::TwoAuthenticators),
            (false, false) => Err(ConfigError::NoAuthenticator),
            _ => Ok(AuthSetup {
                jwt,
                dev_insecure: self.dev_insecure,
                api,
                policy,
            }),
        }
    }

    /// The API authenticator's settings, when `auth_url` is set.
    fn api_settings(&self) -> Result<Option<ApiSettings>, ConfigError> {
        let Some(url) = &self.auth_url else {
            return Ok(None);
        };
        let mut me = reqwest::Url::parse(url)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
            .ok_or_else(|| ConfigError::AuthUrl(url.clone()))?;
        // Given only AWX's address, ask its `/api/v2/me/`.
        if me.path() == "/" {
            me.set_path("/api/v2/me/");
        }
        let nonzero = [
            (self.auth_cache_entries as usize, "auth-cache-entries"),
            (self.auth_max_inflight, "auth-max-inflight"),
            (self.auth_timeout.as_millis() as usize, "auth-timeout-ms"),
        ];
        if let Some((_, name)) = nonzero.iter().find(|(v, _)| *v == 0) {
            return Err(ConfigError::Zero(name));
        }
        let tls = crate::tls::client_config(self.auth_tls_verify, self.auth_ca_file.as_deref())
            .map_err(|why| ConfigError::AuthCa {
                path: self.auth_ca_file.clone().unwrap_or_default(),
                why,
            })?;
        Ok(Some(ApiSettings {
            me,
            ttl: Duration::from_secs(self.auth_cache_ttl_secs),
            refusal_ttl: Duration::from_secs(self.auth_refusal_ttl_secs),
            entries: self.auth_cache_entries,
            timeout: self.auth_timeout,
            max_inflight: self.auth_max_inflight,
            tls,
        }))
    }

    /// The heartbeat and discovery settings, when `awx_database` is set.
    pub fn heartbeat(
        &self,
    ) -> Result<Option<crate::backplane::heartbeat::HeartbeatSettings>, ConfigError> {
        use crate::backplane::heartbeat::{DialAs, HeartbeatSettings};
        if self.awx_database.is_none() {
            return Ok(None);
        }
        let tls = crate::tls::client_config(true, self.awx_database_ca_file.as_deref()).map_err(
            |why| ConfigError::DatabaseCa {
                path: self.awx_database_ca_file.clone().unwrap_or_default(),
                why,
            },
        )?;
        Ok(Some(HeartbeatSettings {
            db: self.database()?,
            tls,
            channel: self.heartbeat_channel.clone(),
            interval: self.heartbeat_interval,
            hostname: self.node_id.clone(),
            ip: self.advertise_ip.clone(),
            announce: self.announce,
            discover: self.discover_peers.map(|Discovery::Postgres| DialAs {
                tls: self.discover_scheme == DialScheme::Wss,
                port: self.discover_port,
            }),
            backoff_max: self.peer_backoff_max,
        }))
    }

    /// AWX's PostgreSQL connection settings.
    pub fn database(&self) -> Result<tokio_postgres::Config, ConfigError> {
        let url = self
            .awx_database
            .as_deref()
            .ok_or(ConfigError::DiscoveryWithoutDatabase)?;
        url.parse::<tokio_postgres::Config>().map_err(|e| {
            ConfigError::Database(format!("not a PostgreSQL URL or key=value string: {e}"))
        })
    }

    /// The configured peers, parsed; duplicates collapse to one.
    pub fn peer_specs(&self) -> Result<Vec<crate::backplane::PeerSpec>, ConfigError> {
        let mut out: Vec<crate::backplane::PeerSpec> = Vec::new();
        for url in &self.peers {
            let p = crate::backplane::PeerSpec::parse(url.trim())?;
            if !out.contains(&p) {
                out.push(p);
            }
        }
        Ok(out)
    }

    /// The number of workers after resolving 0 to the core count.
    pub fn worker_count(&self) -> usize {
        if self.workers == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            self.workers
        }
    }

    pub fn queue_limits(&self) -> QueueLimits {
        QueueLimits {
            max_bytes: self.queue_bytes,
            max_frames: self.queue_frames,
        }
    }
}

/// The settable part of `Config`, every field optional, as flags (with an
/// env fallback) and as TOML keys of the same names in snake case.
#[derive(Debug, Clone, Default, clap::Args, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Listen address [default: 127.0.0.1:8051]
    #[arg(long, env = "WSRELAY_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Admin listener (/status, /metrics, /readyz, /healthz), or off [default: 127.0.0.1:9851]
    #[arg(long, env = "WSRELAY_ADMIN_LISTEN")]
    pub admin_listen: Option<Listen>,
    /// Bearer key (or ?key=) for /status; required wherever set, else /status is on the admin listener only
    #[arg(long, env = "WSRELAY_ADMIN_KEY", hide_env_values = true)]
    pub admin_key: Option<Secret>,
    /// File holding the admin key (instead of --admin-key)
    #[arg(long, env = "WSRELAY_ADMIN_KEY_FILE")]
    pub admin_key_file: Option<PathBuf>,
    /// Log format: text or json [default: text]
    #[arg(long, env = "WSRELAY_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Worker threads; 0 means one per core [default: 0]
    #[arg(long, env = "WSRELAY_WORKERS")]
    pub workers: Option<usize>,
    /// I/O driver: auto (io_uring if available, else epoll), uring, epoll [default: auto]
    #[arg(long, env = "WSRELAY_IO", value_enum)]
    pub io: Option<IoMode>,
    /// HS256 secret that client tokens are signed with
    #[arg(long, env = "WSRELAY_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<Secret>,
    /// File holding the JWT secret (instead of --jwt-secret: kept out of process listings)
    #[arg(long, env = "WSRELAY_JWT_SECRET_FILE")]
    pub jwt_secret_file: Option<PathBuf>,
    /// Allowed clock skew on token exp/nbf, seconds [default: 30]
    #[arg(long, env = "WSRELAY_JWT_LEEWAY_SECS")]
    pub jwt_leeway_secs: Option<u64>,
    /// DEVELOPMENT ONLY: accept any non-empty token as user 0
    #[arg(long, env = "WSRELAY_DEV_INSECURE", num_args = 0..=1, default_missing_value = "true")]
    pub dev_insecure: Option<bool>,
    /// Bearer key for POST /api/v1/emit (the endpoint is 404 without it)
    #[arg(long, env = "WSRELAY_EMIT_KEY", hide_env_values = true)]
    pub emit_key: Option<Secret>,
    /// File holding the emit key (instead of --emit-key)
    #[arg(long, env = "WSRELAY_EMIT_KEY_FILE")]
    pub emit_key_file: Option<PathBuf>,
    /// Largest client message in bytes [default: 65536]
    #[arg(long, env = "WSRELAY_MAX_MESSAGE_BYTES")]
    pub max_message_bytes: Option<usize>,
    /// Groups per connection [default: 1024]
    #[arg(long, env = "WSRELAY_MAX_GROUPS")]
    pub max_groups: Option<usize>,
    /// Distinct groups held on the node at most [default: 100000]
    #[arg(long, env = "WSRELAY_MAX_NODE_GROUPS")]
    pub max_node_groups: Option<usize>,
    /// Messages (subscribes) per second per connection, burst twice that [default: 10]
    #[arg(long, env = "WSRELAY_SUBSCRIBE_RATE")]
    pub subscribe_rate: Option<u32>,
    /// Longest group name in bytes [default: 256]
    #[arg(long, env = "WSRELAY_MAX_GROUP_NAME")]
    pub max_group_name: Option<usize>,
    /// Websocket clients per node [default: 100000]
    #[arg(long, env = "WSRELAY_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Per-connection queue bound in bytes [default: 4194304]
    #[arg(long, env = "WSRELAY_QUEUE_BYTES")]
    pub queue_bytes: Option<usize>,
    /// Per-connection queue bound in frames [default: 16384]
    #[arg(long, env = "WSRELAY_QUEUE_FRAMES")]
    pub queue_frames: Option<usize>,
    /// Slow-consumer policy [default: disconnect]
    #[arg(long, env = "WSRELAY_SLOW_POLICY", value_enum)]
    pub slow_policy: Option<SlowPolicy>,
    /// Largest emit body in bytes [default: 16777216]
    #[arg(long, env = "WSRELAY_MAX_EMIT_BYTES")]
    pub max_emit_bytes: Option<usize>,
    /// Most events per emit request [default: 100000]
    #[arg(long, env = "WSRELAY_MAX_EMIT_EVENTS")]
    pub max_emit_events: Option<usize>,
    /// Largest HTTP request head in bytes [default: 16384]
    #[arg(long, env = "WSRELAY_MAX_HEAD_BYTES")]
    pub max_head_bytes: Option<usize>,
    /// Event batches a worker inbox holds [default: 1024]
    #[arg(long, env = "WSRELAY_WORKER_INBOX")]
    pub worker_inbox: Option<usize>,
    /// Least time between two writes to one client, microseconds; 0 writes at once [default: 1000]
    #[arg(long, env = "WSRELAY_CLIENT_WRITE_INTERVAL_US")]
    pub client_write_interval_us: Option<u64>,
    /// Server ping interval in milliseconds [default: 20000]
    #[arg(long, env = "WSRELAY_PING_INTERVAL_MS")]
    pub ping_interval_ms: Option<u64>,
    /// Request head/body timeout in milliseconds [default: 10000]
    #[arg(long, env = "WSRELAY_REQUEST_TIMEOUT_MS")]
    pub request_timeout_ms: Option<u64>,
    /// Close handshake timeout in milliseconds [default: 2000]
    #[arg(long, env = "WSRELAY_CLOSE_TIMEOUT_MS")]
    pub close_timeout_ms: Option<u64>,
    /// Shutdown grace period in milliseconds [default: 5000]
    #[arg(long, env = "WSRELAY_SHUTDOWN_GRACE_MS")]
    pub shutdown_grace_ms: Option<u64>,
    /// This node's name [default: the host name]
    #[arg(long, env = "WSRELAY_NODE_ID")]
    pub node_id: Option<String>,
    /// Redis URL of AWX's channel layer; repeat (or comma-separate) for several hosts
    #[arg(long, env = "WSRELAY_REDIS", value_delimiter = ',')]
    pub redis: Option<Vec<String>>,
    /// channels_redis key prefix [default: asgi]
    #[arg(long, env = "WSRELAY_CHANNEL_PREFIX")]
    pub channel_prefix: Option<String>,
    /// channels_redis group_expiry in seconds [default: 86400]
    #[arg(long, env = "WSRELAY_GROUP_EXPIRY_SECS")]
    pub group_expiry_secs: Option<u64>,
    /// channels_redis message expiry in seconds [default: 60]
    #[arg(long, env = "WSRELAY_MESSAGE_EXPIRY_SECS")]
    pub message_expiry_secs: Option<u64>,
    /// channels_redis random_prefix_length [default: 12]
    #[arg(long, env = "WSRELAY_RANDOM_PREFIX_LENGTH")]
    pub random_prefix_length: Option<usize>,
    /// Messages popped per Redis round trip [default: 512]
    #[arg(long, env = "WSRELAY_REDIS_BATCH")]
    pub redis_batch: Option<usize>,
    /// Subscribe replies wait this long for Redis membership, ms [default: 1000]
    #[arg(long, env = "WSRELAY_SUBSCRIBE_ACK_TIMEOUT_MS")]
    pub subscribe_ack_timeout_ms: Option<u64>,
    /// Redis Stream of native producers; empty disables [default: wsrelay:events]
    #[arg(long, env = "WSRELAY_STREAM_KEY")]
    pub stream_key: Option<String>,
    /// Cap on the stream's length when behind; unread entries past it are trimmed and counted [default: 1000000]
    #[arg(long, env = "WSRELAY_STREAM_MAXLEN")]
    pub stream_maxlen: Option<u64>,
    /// Hold Redis backlogs this long after start, ms [default: 2000]
    #[arg(long, env = "WSRELAY_BACKLOG_HOLD_MS")]
    pub backlog_hold_ms: Option<u64>,
    /// Peer to dial, [native+|awx-2020+|awx-2022+]ws[s]://host[:port]; repeat (or comma-separate)
    #[arg(long = "peer", env = "WSRELAY_PEERS", value_delimiter = ',')]
    pub peers: Option<Vec<String>>,
    /// NATS server of the broker backplane, nats://host:4222; repeat (or comma-separate) for a cluster's servers
    #[arg(long = "broker", env = "WSRELAY_BROKERS", value_delimiter = ',')]
    pub broker: Option<Vec<String>>,
    /// Broker subject prefix: events travel on <prefix>.g.<group> [default: wsrelay]
    #[arg(long, env = "WSRELAY_BROKER_SUBJECT_PREFIX")]
    pub broker_subject_prefix: Option<String>,
    /// Seconds the broker's JetStream stream keeps events for resumes; 0: no JetStream [default: 120]
    #[arg(long, env = "WSRELAY_BROKER_REPLAY_WINDOW_S")]
    pub broker_replay_window_s: Option<u64>,
    /// The broker's JetStream stream name [default: WSRELAY]
    #[arg(long, env = "WSRELAY_BROKER_STREAM")]
    pub broker_stream: Option<String>,
    /// The JetStream stream's bound in bytes [default: 1073741824]
    #[arg(long, env = "WSRELAY_BROKER_STREAM_MAX_BYTES")]
    pub broker_stream_max_bytes: Option<u64>,
    /// Backplane shared secret (AWX's BROADCAST_WEBSOCKET_SECRET); required with --peer
    #[arg(long, env = "WSRELAY_BACKPLANE_SECRET", hide_env_values = true)]
    pub backplane_secret: Option<Secret>,
    /// File holding the backplane secret (instead of --backplane-secret)
    #[arg(long, env = "WSRELAY_BACKPLANE_SECRET_FILE")]
    pub backplane_secret_file: Option<PathBuf>,
    /// Verify wss:// peer certificates [default: true]
    #[arg(long, env = "WSRELAY_PEER_TLS_VERIFY", num_args = 0..=1, default_missing_value = "true")]
    pub peer_tls_verify: Option<bool>,
    /// Extra PEM CA certificates for wss:// peers
    #[arg(long, env = "WSRELAY_PEER_CA_FILE")]
    pub peer_ca_file: Option<PathBuf>,
    /// Peer connect + TLS + upgrade timeout, ms [default: 5000]
    #[arg(long, env = "WSRELAY_PEER_CONNECT_TIMEOUT_MS")]
    pub peer_connect_timeout_ms: Option<u64>,
    /// Longest wait between peer dial attempts, ms [default: 30000]
    #[arg(long, env = "WSRELAY_PEER_BACKOFF_MAX_MS")]
    pub peer_backoff_max_ms: Option<u64>,
    /// Peer link ping interval, ms; three silent intervals end a link [default: 5000]
    #[arg(long, env = "WSRELAY_PEER_PING_INTERVAL_MS")]
    pub peer_ping_interval_ms: Option<u64>,
    /// Events per backplane batch at most [default: 1024]
    #[arg(long, env = "WSRELAY_PEER_BATCH_EVENTS")]
    pub peer_batch_events: Option<usize>,
    /// Payload bytes per backplane batch, about [default: 262144]
    #[arg(long, env = "WSRELAY_PEER_BATCH_BYTES")]
    pub peer_batch_bytes: Option<usize>,
    /// Wait to fill a backplane batch, microseconds; 0 sends when the link is free [default: 0]
    #[arg(long, env = "WSRELAY_PEER_FLUSH_DELAY_US")]
    pub peer_flush_delay_us: Option<u64>,
    /// Events held per peer until acknowledged [default: 100000]
    #[arg(long, env = "WSRELAY_PEER_BUFFER_EVENTS")]
    pub peer_buffer_events: Option<usize>,
    /// Payload bytes held per peer until acknowledged [default: 67108864]
    #[arg(long, env = "WSRELAY_PEER_BUFFER_BYTES")]
    pub peer_buffer_bytes: Option<usize>,
    /// Links other nodes may have dialled here at once [default: 64]
    #[arg(long, env = "WSRELAY_MAX_PEER_LINKS")]
    pub max_peer_links: Option<usize>,
    /// Largest message on a peer link, bytes [default: 33554432]
    #[arg(long, env = "WSRELAY_PEER_MAX_MESSAGE")]
    pub peer_max_message: Option<usize>,
    /// AWX's /api/v2/me/ URL: authenticate clients by their AWX session cookie or token
    #[arg(long, env = "WSRELAY_AUTH_URL")]
    pub auth_url: Option<String>,
    /// Seconds an accepted credential (or allowed object) is cached [default: 60]
    #[arg(long, env = "WSRELAY_AUTH_CACHE_TTL_SECS")]
    pub auth_cache_ttl_secs: Option<u64>,
    /// Seconds a refused credential (or denied object) is cached [default: 5]
    #[arg(long, env = "WSRELAY_AUTH_REFUSAL_TTL_SECS")]
    pub auth_refusal_ttl_secs: Option<u64>,
    /// Entries per auth cache [default: 100000]
    #[arg(long, env = "WSRELAY_AUTH_CACHE_ENTRIES")]
    pub auth_cache_entries: Option<u64>,
    /// Time one API lookup may take, ms [default: 5000]
    #[arg(long, env = "WSRELAY_AUTH_TIMEOUT_MS")]
    pub auth_timeout_ms: Option<u64>,
    /// API requests in flight at most [default: 32]
    #[arg(long, env = "WSRELAY_AUTH_MAX_INFLIGHT")]
    pub auth_max_inflight: Option<usize>,
    /// Verify the API's TLS certificate [default: true]
    #[arg(long, env = "WSRELAY_AUTH_TLS_VERIFY", num_args = 0..=1, default_missing_value = "true")]
    pub auth_tls_verify: Option<bool>,
    /// Extra PEM CA certificates for the API
    #[arg(long, env = "WSRELAY_AUTH_CA_FILE")]
    pub auth_ca_file: Option<PathBuf>,
    /// Access rule PREFIX=allow|deny|user|/api/path/{id}/ for groups starting with PREFIX; repeat [default: AWX's]
    #[arg(long = "access", env = "WSRELAY_ACCESS", value_delimiter = ',')]
    #[serde(deserialize_with = "access_table", serialize_with = "access_table_out")]
    pub access: Option<Vec<AccessEntry>>,
    /// Groups in one subscribe message that may need an API check [default: 100]
    #[arg(long, env = "WSRELAY_MAX_ACCESS_CHECKS")]
    pub max_access_checks: Option<usize>,
    /// AWX's PostgreSQL URL: announce this node with AWX's web-node heartbeat
    #[arg(long, env = "WSRELAY_AWX_DATABASE", hide_env_values = true)]
    pub awx_database: Option<String>,
    /// Extra PEM CA certificates for the database's TLS
    #[arg(long, env = "WSRELAY_AWX_DATABASE_CA_FILE")]
    pub awx_database_ca_file: Option<PathBuf>,
    /// Send heartbeats when --awx-database is set [default: true]
    #[arg(long, env = "WSRELAY_ANNOUNCE", num_args = 0..=1, default_missing_value = "true")]
    pub announce: Option<bool>,
    /// NOTIFY channel of the heartbeat [default: web_ws_heartbeat]
    #[arg(long, env = "WSRELAY_HEARTBEAT_CHANNEL")]
    pub heartbeat_channel: Option<String>,
    /// Heartbeat interval, seconds [default: 15]
    #[arg(long, env = "WSRELAY_HEARTBEAT_INTERVAL_SECS")]
    pub heartbeat_interval_secs: Option<u64>,
    /// Address announced in heartbeats (AWX's MY_POD_IP) [default: null, dialers use the host name]
    #[arg(long, env = "WSRELAY_ADVERTISE_IP")]
    pub advertise_ip: Option<String>,
    /// Dial every node announced on the heartbeat channel
    #[arg(long, env = "WSRELAY_DISCOVER_PEERS", value_enum)]
    pub discover_peers: Option<Discovery>,
    /// Scheme for discovered nodes: wss (https) or ws (http) [default: wss]
    #[arg(long, env = "WSRELAY_DISCOVER_SCHEME", value_enum)]
    pub discover_scheme: Option<DialScheme>,
    /// Port for discovered nodes (AWX's BROADCAST_WEBSOCKET_PORT) [default: 443]
    #[arg(long, env = "WSRELAY_DISCOVER_PORT")]
    pub discover_port: Option<u16>,
}

/// One access rule, `PREFIX=RULE` on the command line; in the file, a key
/// of the `[access]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessEntry {
    pub prefix: String,
    pub rule: String,
}

impl std::str::FromStr for AccessEntry {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (prefix, rule) = s
            .split_once('=')
            .ok_or_else(|| format!("{s:?}: want PREFIX=RULE"))?;
        Ok(AccessEntry {
            prefix: prefix.trim().to_owned(),
            rule: rule.trim().to_owned(),
        })
    }
}

/// `[access]` written back as a table of prefix = rule.
fn access_table_out<S: serde::Serializer>(
    v: &Option<Vec<AccessEntry>>,
    s: S,
) -> Result<S::Ok, S::Error> {
    let table: std::collections::BTreeMap<&str, &str> = v
        .iter()
        .flatten()
        .map(|e| (e.prefix.as_str(), e.rule.as_str()))
        .collect();
    serde::Serialize::serialize(&table, s)
}

/// `[access]` as a table of prefix = rule.
fn access_table<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Vec<AccessEntry>>, D::Error> {
    let table: std::collections::BTreeMap<String, String> = serde::Deserialize::deserialize(d)?;
    Ok(Some(
        table
            .into_iter()
            .map(|(prefix, rule)| AccessEntry { prefix, rule })
            .collect(),
    ))
}

impl Settings {
    /// Reads a TOML file of settings.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })
    }

    /// Field by field, `self` (flags and env) wins over `file`.
    pub fn or(self, file: Settings) -> Settings {
        macro_rules! merge {
            ($($f:ident),* $(,)?) => { Settings { $($f: self.$f.or(file.$f)),* } };
        }
        merge!(
            listen,
            admin_listen,
            admin_key,
            admin_key_file,
            log_format,
            workers,
            io,
            jwt_secret,
            jwt_secret_file,
            jwt_leeway_secs,
            dev_insecure,
            emit_key,
            emit_key_file,
            max_message_bytes,
            max_groups,
            max_node_groups,
            subscribe_rate,
            max_group_name,
            max_connections,
            queue_bytes,
            queue_frames,
            slow_policy,
            max_emit_bytes,
            max_emit_events,
            max_head_bytes,
            worker_inbox,
            client_write_interval_us,
            ping_interval_ms,
            request_timeout_ms,
            close_timeout_ms,
            shutdown_grace_ms,
            node_id,
            redis,
            channel_prefix,
            group_expiry_secs,
            message_expiry_secs,
            random_prefix_length,
            redis_batch,
            subscribe_ack_timeout_ms,
            stream_key,
            stream_maxlen,
            backlog_hold_ms,
            peers,
            broker,
            broker_subject_prefix,
            broker_replay_window_s,
            broker_stream,
            broker_stream_max_bytes,
            backplane_secret,
            backplane_secret_file,
            peer_tls_verify,
            peer_ca_file,
            peer_connect_timeout_ms,
            peer_backoff_max_ms,
            peer_ping_interval_ms,
            peer_batch_events,
            peer_batch_bytes,
            peer_flush_delay_us,
            peer_buffer_events,
            peer_buffer_bytes,
            max_peer_links,
            peer_max_message,
            auth_url,
            auth_cache_ttl_secs,
            auth_refusal_ttl_secs,
            auth_cache_entries,
            auth_timeout_ms,
            auth_max_inflight,
            auth_tls_verify,
            auth_ca_file,
            access,
            max_access_checks,
            awx_database,
            awx_database_ca_file,
            announce,
            heartbeat_channel,
            heartbeat_interval_secs,
            advertise_ip,
            discover_peers,
            discover_scheme,
            discover_port,
        )
    }

    /// Reads the secrets given as files (`*_file`), then applies the
    /// settings over the defaults. Returns warnings to log (a secret file
    /// others may read).
    pub fn load(self) -> Result<(Config, Vec<String>), ConfigError> {
        let (settings, warnings) = self.read_secret_files()?;
        Ok((settings.into_config(), warnings))
    }

    /// Replaces each `*_file` with the secret it holds (one trailing line
    /// end dropped). A secret given both ways, an unreadable or empty file
    /// are errors.
    pub fn read_secret_files(mut self) -> Result<(Settings, Vec<String>), ConfigError> {
        let mut warnings = Vec::new();
        let mut read = |name: &'static str,
                        value: &mut Option<Secret>,
                        file: &mut Option<PathBuf>|
         -> Result<(), ConfigError> {
            let Some(path) = file.take() else {
                return Ok(());
            };
            if value.is_some() {
                return Err(ConfigError::SecretTwice(name));
            }
            let bad = |why: String| ConfigError::SecretFile {
                name,
                path: path.clone(),
                why,
            };
            // A secret is a line, not a file's worth: bounded before reading.
            let len = std::fs::metadata(&path)
                .map_err(|e| bad(e.to_string()))?
                .len();
            if len > MAX_SECRET_FILE {
                return Err(bad(format!(
                    "{len} bytes: a secret file holds one line, at most {MAX_SECRET_FILE} bytes"
                )));
            }
            let text = std::fs::read_to_string(&path).map_err(|e| bad(e.to_string()))?;
            let secret = text.strip_suffix('\n').unwrap_or(&text);
            let secret = secret.strip_suffix('\r').unwrap_or(secret);
            if secret.is_empty() {
                return Err(bad("the file is empty".into()));
            }
            use std::os::unix::fs::PermissionsExt;
            if let Ok(meta) = std::fs::metadata(&path) {
                if meta.permissions().mode() & 0o077 != 0 {
                    warnings.push(format!(
                        "--{name}-file {}: readable by others than its owner (mode {:o}); chmod 600 it",
                        path.display(),
                        meta.permissions().mode() & 0o777
                    ));
                }
            }
            *value = Some(Secret(secret.to_owned()));
            Ok(())
        };
        read(
            "jwt-secret",
            &mut self.jwt_secret,
            &mut self.jwt_secret_file,
        )?;
        read("emit-key", &mut self.emit_key, &mut self.emit_key_file)?;
        read(
            "backplane-secret",
            &mut self.backplane_secret,
            &mut self.backplane_secret_file,
        )?;
        read("admin-key", &mut self.admin_key, &mut self.admin_key_file)?;
        Ok((self, warnings))
    }

    /// Every setting of `c` as the file spells it, for `check-config` and
    /// `Config`'s `Debug`: secrets masked (they serialize as a mask), and
    /// the passwords in Redis, broker and database URLs too.
    pub fn for_display(c: &Config) -> Settings {
        let ms = |d: Duration| Some(d.as_millis() as u64);
        Settings {
            listen: Some(c.listen),
            admin_listen: Some(c.admin_listen.map_or(Listen::Off, Listen::At)),
            admin_key: c.admin_key.clone(),
            admin_key_file: None,
            log_format: Some(c.log_format),
            workers: Some(c.workers),
            io: Some(c.io),
            jwt_secret: c.jwt_secret.clone(),
            jwt_secret_file: None,
            jwt_leeway_secs: Some(c.jwt_leeway_secs),
            dev_insecure: Some(c.dev_insecure),
            emit_key: c.emit_key.clone(),
            emit_key_file: None,
            max_message_bytes: Some(c.max_message_bytes),
            max_groups: Some(c.max_groups),
            max_node_groups: Some(c.max_node_groups),
            subscribe_rate: Some(c.subscribe_rate),
            max_group_name: Some(c.max_group_name),
            max_connections: Some(c.max_connections),
            queue_bytes: Some(c.queue_bytes),
            queue_frames: Some(c.queue_frames),
            slow_policy: Some(c.slow_policy),
            max_emit_bytes: Some(c.max_emit_bytes),
            max_emit_events: Some(c.max_emit_events),
            max_head_bytes: Some(c.max_head_bytes),
            worker_inbox: Some(c.worker_inbox),
            client_write_interval_us: Some(c.client_write_interval.as_micros() as u64),
            ping_interval_ms: ms(c.ping_interval),
            request_timeout_ms: ms(c.request_timeout),
            close_timeout_ms: ms(c.close_timeout),
            shutdown_grace_ms: ms(c.shutdown_grace),
            node_id: Some(c.node_id.clone()),
            redis: Some(c.redis.iter().map(|u| mask_url(u)).collect()),
            channel_prefix: Some(c.channel_prefix.clone()),
            group_expiry_secs: Some(c.group_expiry_secs),
            message_expiry_secs: Some(c.message_expiry_secs),
            random_prefix_length: Some(c.random_prefix_length),
            redis_batch: Some(c.redis_batch),
            subscribe_ack_timeout_ms: ms(c.subscribe_ack_timeout),
            stream_key: Some(c.stream_key.clone()),
            stream_maxlen: Some(c.stream_maxlen),
            backlog_hold_ms: ms(c.backlog_hold),
            peers: Some(c.peers.clone()),
            broker: Some(c.broker.iter().map(|u| mask_url(u)).collect()),
            broker_subject_prefix: Some(c.broker_subject_prefix.clone()),
            broker_replay_window_s: Some(c.broker_replay_window.as_secs()),
            broker_stream: Some(c.broker_stream.clone()),
            broker_stream_max_bytes: Some(c.broker_stream_max_bytes),
            backplane_secret: c.backplane_secret.clone(),
            backplane_secret_file: None,
            peer_tls_verify: Some(c.peer_tls_verify),
            peer_ca_file: c.peer_ca_file.clone(),
            peer_connect_timeout_ms: ms(c.peer_connect_timeout),
            peer_backoff_max_ms: ms(c.peer_backoff_max),
            peer_ping_interval_ms: ms(c.peer_ping_interval),
            peer_batch_events: Some(c.peer_batch_events),
            peer_batch_bytes: Some(c.peer_batch_bytes),
            peer_flush_delay_us: Some(c.peer_flush_delay.as_micros() as u64),
            peer_buffer_events: Some(c.peer_buffer_events),
            peer_buffer_bytes: Some(c.peer_buffer_bytes),
            max_peer_links: Some(c.max_peer_links),
            peer_max_message: Some(c.peer_max_message),
            auth_url: c.auth_url.as_deref().map(mask_url),
            auth_cache_ttl_secs: Some(c.auth_cache_ttl_secs),
            auth_refusal_ttl_secs: Some(c.auth_refusal_ttl_secs),
            auth_cache_entries: Some(c.auth_cache_entries),
            auth_timeout_ms: ms(c.auth_timeout),
            auth_max_inflight: Some(c.auth_max_inflight),
            auth_tls_verify: Some(c.auth_tls_verify),
            auth_ca_file: c.auth_ca_file.clone(),
            access: Some(
                c.access
                    .iter()
                    .map(|(prefix, rule)| AccessEntry {
                        prefix: prefix.clone(),
                        rule: rule.clone(),
                    })
                    .collect(),
            ),
            max_access_checks: Some(c.max_access_checks),
            awx_database: c.awx_database.as_deref().map(mask_database),
            awx_database_ca_file: c.awx_database_ca_file.clone(),
            announce: Some(c.announce),
            heartbeat_channel: Some(c.heartbeat_channel.clone()),
            heartbeat_interval_secs: Some(c.heartbeat_interval.as_secs()),
            advertise_ip: c.advertise_ip.clone(),
            discover_peers: c.discover_peers,
            discover_scheme: Some(c.discover_scheme),
            discover_port: Some(c.discover_port),
        }
    }

    /// Applies the settings over the defaults. Secret files must have been
    /// read (`load` does it).
    pub fn into_config(self) -> Config {
        debug_assert!(
            self.jwt_secret_file.is_none()
                && self.emit_key_file.is_none()
                && self.backplane_secret_file.is_none()
                && self.admin_key_file.is_none(),
            "secret files are read by Settings::load"
        );
        let d = Config::default();
        let ms = |v: Option<u64>, default: Duration| v.map_or(default, Duration::from_millis);
        Config {
            listen: self.listen.unwrap_or(d.listen),
            admin_listen: match self.admin_listen {
                None => d.admin_listen,
                Some(Listen::Off) => None,
                Some(Listen::At(a)) => Some(a),
            },
            admin_key: self.admin_key,
            log_format: self.log_format.unwrap_or(d.log_format),
            workers: self.workers.unwrap_or(d.workers),
            io: self.io.unwrap_or(d.io),
            jwt_secret: self.jwt_secret,
            jwt_leeway_secs: self.jwt_leeway_secs.unwrap_or(d.jwt_leeway_secs),
            dev_insecure: self.dev_insecure.unwrap_or(d.dev_insecure),
            emit_key: self.emit_key,
            max_message_bytes: self.max_message_bytes.unwrap_or(d.max_message_bytes),
            max_groups: self.max_groups.unwrap_or(d.max_groups),
            subscribe_rate: self.subscribe_rate.unwrap_or(d.subscribe_rate),
            max_node_groups: self.max_node_groups.unwrap_or(d.max_node_groups),
            max_group_name: self.max_group_name.unwrap_or(d.max_group_name),
            max_connections: self.max_connections.unwrap_or(d.max_connections),
            queue_bytes: self.queue_bytes.unwrap_or(d.queue_bytes),
            queue_frames: self.queue_frames.unwrap_or(d.queue_frames),
            slow_policy: self.slow_policy.unwrap_or(d.slow_policy),
            max_emit_bytes: self.max_emit_bytes.unwrap_or(d.max_emit_bytes),
            max_emit_events: self.max_emit_events.unwrap_or(d.max_emit_events),
            max_head_bytes: self.max_head_bytes.unwrap_or(d.max_head_bytes),
            worker_inbox: self.worker_inbox.unwrap_or(d.worker_inbox),
            client_write_interval: self
                .client_write_interval_us
                .map_or(d.client_write_interval, Duration::from_micros),
            ping_interval: ms(self.ping_interval_ms, d.ping_interval),
            request_timeout: ms(self.request_timeout_ms, d.request_timeout),
            close_timeout: ms(self.close_timeout_ms, d.close_timeout),
            shutdown_grace: ms(self.shutdown_grace_ms, d.shutdown_grace),
            node_id: self.node_id.unwrap_or(d.node_id),
            redis: self.redis.unwrap_or(d.redis),
            channel_prefix: self.channel_prefix.unwrap_or(d.channel_prefix),
            group_expiry_secs: self.group_expiry_secs.unwrap_or(d.group_expiry_secs),
            message_expiry_secs: self.message_expiry_secs.unwrap_or(d.message_expiry_secs),
            random_prefix_length: self.random_prefix_length.unwrap_or(d.random_prefix_length),
            redis_batch: self.redis_batch.unwrap_or(d.redis_batch),
            subscribe_ack_timeout: ms(self.subscribe_ack_timeout_ms, d.subscribe_ack_timeout),
            stream_key: self.stream_key.unwrap_or(d.stream_key),
            stream_maxlen: self.stream_maxlen.unwrap_or(d.stream_maxlen),
            backlog_hold: ms(self.backlog_hold_ms, d.backlog_hold),
            peers: self.peers.unwrap_or(d.peers),
            broker: self.broker.unwrap_or(d.broker),
            broker_subject_prefix: self
                .broker_subject_prefix
                .unwrap_or(d.broker_subject_prefix),
            broker_replay_window: self
                .broker_replay_window_s
                .map_or(d.broker_replay_window, Duration::from_secs),
            broker_stream: self.broker_stream.unwrap_or(d.broker_stream),
            broker_stream_max_bytes: self
                .broker_stream_max_bytes
                .unwrap_or(d.broker_stream_max_bytes),
            backplane_secret: self.backplane_secret,
            peer_tls_verify: self.peer_tls_verify.unwrap_or(d.peer_tls_verify),
            peer_ca_file: self.peer_ca_file,
            peer_connect_timeout: ms(self.peer_connect_timeout_ms, d.peer_connect_timeout),
            peer_backoff_max: ms(self.peer_backoff_max_ms, d.peer_backoff_max),
            peer_ping_interval: ms(self.peer_ping_interval_ms, d.peer_ping_interval),
            peer_batch_events: self.peer_batch_events.unwrap_or(d.peer_batch_events),
            peer_batch_bytes: self.peer_batch_bytes.unwrap_or(d.peer_batch_bytes),
            peer_flush_delay: self
                .peer_flush_delay_us
                .map_or(d.peer_flush_delay, Duration::from_micros),
            peer_buffer_events: self.peer_buffer_events.unwrap_or(d.peer_buffer_events),
            peer_buffer_bytes: self.peer_buffer_bytes.unwrap_or(d.peer_buffer_bytes),
            max_peer_links: self.max_peer_links.unwrap_or(d.max_peer_links),
            peer_max_message: self.peer_max_message.unwrap_or(d.peer_max_message),
            auth_url: self.auth_url,
            auth_cache_ttl_secs: self.auth_cache_ttl_secs.unwrap_or(d.auth_cache_ttl_secs),
            auth_refusal_ttl_secs: self
                .auth_refusal_ttl_secs
                .unwrap_or(d.auth_refusal_ttl_secs),
            auth_cache_entries: self.auth_cache_entries.unwrap_or(d.auth_cache_entries),
            auth_timeout: ms(self.auth_timeout_ms, d.auth_timeout),
            auth_max_inflight: self.auth_max_inflight.unwrap_or(d.auth_max_inflight),
            auth_tls_verify: self.auth_tls_verify.unwrap_or(d.auth_tls_verify),
            auth_ca_file: self.auth_ca_file,
            access: self
                .access
                .unwrap_or_default()
                .into_iter()
                .map(|e| (e.prefix, e.rule))
                .collect(),
            max_access_checks: self.max_access_checks.unwrap_or(d.max_access_checks),
            awx_database: self.awx_database,
            awx_database_ca_file: self.awx_database_ca_file,
            announce: self.announce.unwrap_or(d.announce),
            heartbeat_channel: self.heartbeat_channel.unwrap_or(d.heartbeat_channel),
            heartbeat_interval: self
                .heartbeat_interval_secs
                .map_or(d.heartbeat_interval, Duration::from_secs),
            advertise_ip: self.advertise_ip,
            discover_peers: self.discover_peers,
            discover_scheme: self.discover_scheme.unwrap_or(d.discover_scheme),
            discover_port: self.discover_port.unwrap_or(d.discover_port),
            test_panic_on: None,
            test_echo: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Debug` and `check-config`'s form show no secret, and the form is a
    /// file that reads back to the same configuration.
    #[test]
    fn dumps_mask_secrets_and_the_display_form_reads_back() {
        let c = Config {
            jwt_secret: Some("jwt-s3cret-0123456789abcdef".into()),
            emit_key: Some("emit-s3cret".into()),
            backplane_secret: Some("bp-s3cret".into()),
            admin_key: Some("admin-s3cret".into()),
            redis: vec!["redis://:pw-s3cret@127.0.0.1:6379/".into()],
            broker: vec!["nats://relay:pw-s3cret@127.0.0.1:4222".into()],
            awx_database: Some("host=db user=awx password=pw-s3cret".into()),
            auth_url: Some("https://u:pw-s3cret@awx.example/api/v2/me/".into()),
            ..Config::default()
        };
        for dump in [format!("{c:?}"), c.to_toml()] {
            assert!(!dump.contains("s3cret"), "{dump}");
            assert!(dump.contains(MASK), "{dump}");
        }
        assert!(c.to_toml().contains("password=********"));
        let plain = Config {
            workers: 3,
            admin_listen: None,
            peers: vec!["ws://a:1".into(), "awx-2022+wss://b:443".into()],
            access: vec![(
                "inventory_update_events-".into(),
                "/api/v2/inventory_updates/{id}/".into(),
            )],
            discover_peers: Some(Discovery::Postgres),
            awx_database: Some("postgresql://awx@db/awx".into()),
            slow_policy: SlowPolicy::DropOldest,
            log_format: LogFormat::Json,
            ping_interval: Duration::from_millis(1500),
            ..Config::default()
        };
        let text = plain.to_toml();
        let back: Settings = toml::from_str(&text).unwrap();
        assert_eq!(back.into_config().to_toml(), text);
    }

    #[test]
    fn flags_win_over_file_and_defaults_fill_the_rest() {
        let file: Settings = toml::from_str(
            "listen = \"0.0.0.0:9000\"\nworkers = 3\nslow_policy = \"drop-oldest\"\n",
        )
        .unwrap();
        let flags = Settings {
            workers: Some(2),
            ..Settings::default()
        };
        let c = flags.or(file).into_config();
        assert_eq!(c.listen, "0.0.0.0:9000".parse().unwrap());
        assert_eq!(c.workers, 2);
        assert_eq!(c.slow_policy, SlowPolicy::DropOldest);
        assert_eq!(c.max_groups, 1024);
    }

    #[test]
    fn unknown_file_keys_are_refused() {
        let err = toml::from_str::<Settings>("listn = \"x\"").unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
    }

    #[test]
    fn validation() {
        let base = Config::default();
        assert!(matches!(base.validate(), Err(ConfigError::NoAuthenticator)));
        let both = Config {
            jwt_secret: Some("s".repeat(32).into()),
            dev_insecure: true,
            ..Config::default()
        };
        // Regression (issue 10, finding 12): a one-byte secret was accepted.
        for (len, ok) in [(1, false), (15, false), (16, true), (64, true)] {
            let c = Config {
                jwt_secret: Some("k".repeat(len).into()),
                ..Config::default()
            };
            match c.validate() {
                Ok(_) => assert!(ok, "{len}"),
                Err(e) => {
                    assert!(!ok, "{len}: {e}");
                    assert!(matches!(e, ConfigError::ShortJwtSecret(n) if n == len));
                }
            }
        }
        assert!(matches!(
            both.validate(),
            Err(ConfigError::TwoAuthenticators)
        ));
        let zero = Config {
            dev_insecure: true,
            max_groups: 0,
            ..Config::default()
        };
        assert!(matches!(
            zero.validate(),
            Err(ConfigError::Zero("max-groups"))
        ));
        let many = Config {
            dev_insecure: true,
            workers: 65,
            ..Config::default()
        };
        assert!(matches!(
            many.validate(),
            Err(ConfigError::TooManyWorkers(65))
        ));
        let cluster = Config {
            dev_insecure: true,
            peers: vec!["ws://node2:8051".into()],
            ..Config::default()
        };
        assert!(matches!(
            cluster.validate(),
            Err(ConfigError::NoBackplaneSecret)
        ));
        let bad_peer = Config {
            dev_insecure: true,
            backplane_secret: Some("s".into()),
            peers: vec!["http://node2".into()],
            ..Config::default()
        };
        assert!(matches!(bad_peer.validate(), Err(ConfigError::Peer(_))));
        let ok = Config {
            jwt_secret: Some("s".repeat(32).into()),
            ..Config::default()
        };
        assert!(matches!(
            ok.validate(),
            Ok(AuthSetup {
                jwt: Some(_),
                api: None,
                ..
            })
        ));
        let both = Config {
            jwt_secret: Some("s".repeat(32).into()),
            auth_url: Some("https://awx.example.com/api/v2/me/".into()),
            ..Config::default()
        };
        assert!(matches!(
            both.validate(),
            Ok(AuthSetup {
                jwt: Some(_),
                api: Some(_),
                ..
            })
        ));
        for (c, want) in [
            (
                Config {
                    auth_url: Some("ftp://x/".into()),
                    ..Config::default()
                },
                "--auth-url ftp://x/: want an http:// or https:// URL",
            ),
            (
                Config {
                    auth_url: Some("http://awx/api/v2/me/".into()),
                    dev_insecure: true,
                    ..Config::default()
                },
                "--dev-insecure excludes --jwt-secret and --auth-url",
            ),
            (
                Config {
                    dev_insecure: true,
                    access: vec![("job_events-".into(), "/api/v2/jobs/".into())],
                    ..Config::default()
                },
                "access \"job_events-\": \"/api/v2/jobs/\": want allow, deny, user",
            ),
            (
                Config {
                    dev_insecure: true,
                    awx_database: Some("mysql://x".into()),
                    ..Config::default()
                },
                "--awx-database: not a PostgreSQL URL",
            ),
            (
                Config {
                    dev_insecure: true,
                    discover_peers: Some(Discovery::Postgres),
                    ..Config::default()
                },
                "--discover-peers postgres needs --awx-database",
            ),
            (
                Config {
                    dev_insecure: true,
                    discover_peers: Some(Discovery::Postgres),
                    awx_database: Some("postgresql://localhost/awx".into()),
                    ..Config::default()
                },
                "refusing to start a cluster without a backplane secret",
            ),
        ] {
            let err = c.validate().err().expect(want).to_string();
            assert!(err.starts_with(want), "{err}\nwant: {want}");
        }
    }

    #[test]
    fn access_rules_from_flags_and_file() {
        let file: Settings = toml::from_str(
            "[access]\n\"project_update_events-\" = \"/api/v2/project_updates/{id}/\"\n\"*\" = \"deny\"\n",
        )
        .unwrap();
        let c = Settings::default().or(file).into_config();
        assert_eq!(
            c.access,
            vec![
                ("*".to_owned(), "deny".to_owned()),
                (
                    "project_update_events-".to_owned(),
                    "/api/v2/project_updates/{id}/".to_owned()
                ),
            ]
        );
        let flag: AccessEntry = "jobs-=allow".parse().unwrap();
        assert_eq!(
            (flag.prefix.as_str(), flag.rule.as_str()),
            ("jobs-", "allow")
        );
        assert!("nope".parse::<AccessEntry>().is_err());
    }
}
