//! AWX's channels_redis layer as an event source: on its own thread, one
//! loop keeps this node's channels registered in exactly the groups its
//! clients hold, and another drains the channel key with pipelined pops and
//! hands the events to the router.
//!
//! Redis going away is a normal event: each loop logs once per outage,
//! counts the error, backs off with jitter (100 ms doubling to 5 s), and on
//! return re-registers every membership. Clients stay connected throughout.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use deadpool_redis::redis::{self, Value};
use deadpool_redis::{Pool, Runtime};
use tokio::sync::watch;
use tokio::time::Instant;

use super::channels_redis::{consistent_hash, decode, Malformed, Naming};
use super::stream::{self, BadEntry, Fields};
use crate::config::Config;

use crate::fanout::{Changes, Router, Routes};
use crate::metrics::Metrics;

/// Why the Redis ingest could not start.
#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    #[error("--redis {url}: {reason}")]
    Url { url: String, reason: String },
    #[error("cannot start the redis ingest thread: {0}")]
    Thread(std::io::Error),
}

/// Groups registered per pipelined round trip.
const MEMBERSHIP_CHUNK: usize = 500;

struct Ingest {
    naming: Naming,
    pools: Vec<Pool>,
    routes: Arc<Routes>,
    router: Arc<Router>,
    metrics: Arc<Metrics>,
    group_expiry_secs: u64,
    message_expiry_secs: f64,
    prefix_len: usize,
    batch: usize,
    /// The routes epoch whose memberships are recorded in Redis (or known
    /// unrecordable while Redis is down).
    acked: watch::Sender<u64>,
    /// Raised by the drain loop when Redis failed: a restarted Redis has
    /// lost every membership, so the membership loop re-adds them all.
    resync: tokio::sync::Notify,
    stream_key: String,
    stream_group: String,
    stream_consumer: String,
    stream_maxlen: u64,
    max_group_name: usize,
    backlog_hold: Duration,
}

/// Starts the ingest thread. Returns its handle and the receiver of the
/// acknowledged routes epoch (subscribe replies wait on it).
pub(crate) fn spawn(
    config: &Config,
    routes: Arc<Routes>,
    router: Arc<Router>,
    metrics: Arc<Metrics>,
    shutdown: watch::Receiver<bool>,
) -> Result<(std::thread::JoinHandle<()>, watch::Receiver<u64>), RedisError> {
    let pools = config
        .redis
        .iter()
        .map(|url| {
            deadpool_redis::Config::from_url(url.clone())
                .create_pool(Some(Runtime::Tokio1))
                .map_err(|e| RedisError::Url {
                    url: url.clone(),
                    reason: e.to_string(),
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let (acked, ack_rx) = watch::channel(0);
    let ingest = Arc::new(Ingest {
        naming: Naming::new(&config.channel_prefix, &config.node_id),
        pools,
        routes,
        router,
        metrics,
        group_expiry_secs: config.group_expiry_secs,
        message_expiry_secs: config.message_expiry_secs as f64,
        prefix_len: config.random_prefix_length,
        batch: config.redis_batch,
        acked,
        resync: tokio::sync::Notify::new(),
        stream_key: config.stream_key.clone(),
        stream_group: format!("wsrelay:{}", config.node_id),
        stream_consumer: config.node_id.clone(),
        stream_maxlen: config.stream_maxlen,
        max_group_name: config.max_group_name,
        backlog_hold: config.backlog_hold,
    });
    tracing::info!(
        hosts = ingest.pools.len(),
        channel_key = %ingest.naming.channel_key(),
        "redis ingest (channels_redis format) starting"
    );
    let handle = std::thread::Builder::new()
        .name("wsrelay-redis".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => return tracing::error!(error = %e, "cannot build the redis runtime"),
            };
            rt.block_on(async {
                let registered = tokio::sync::Mutex::new(HashSet::new());
                // Membership work is idempotent and may be cut anywhere; the
                // two readers stop only between rounds, so nothing read
                // from Redis is left unrouted or unacknowledged.
                let membership = async {
                    tokio::select! {
                        () = ingest.membership(&registered) => {}
                        () = stopped(shutdown.clone()) => {}
                    }
                };
                tokio::join!(
                    membership,
                    ingest.drain(shutdown.clone()),
                    ingest.stream(shutdown.clone()),
                );
                ingest.unregister(&registered).await;
            });
        })
        .map_err(RedisError::Thread)?;
    Ok((handle, ack_rx))
}

/// Resolves once shutdown is signalled (or its sender is gone).
async fn stopped(mut shutdown: watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Exponential backoff with jitter: 100 ms doubling to 5 s.
struct Backoff(Duration);

impl Backoff {
    fn new() -> Self {
        Backoff(Duration::from_millis(100))
    }
    fn reset(&mut self) {
        self.0 = Duration::from_millis(100);
    }
    async fn wait(&mut self) {
        let jitter = rand::random_range(0.5..1.5);
        tokio::time::sleep(self.0.mul_f64(jitter)).await;
        self.0 = (self.0 * 2).min(Duration::from_secs(5));
    }
}

// === impl Ingest ===

impl Ingest {
    fn host_of(&self, name: &str) -> usize {
        consistent_hash(name, self.pools.len())
    }

    /// Keeps Redis memberships equal to the groups held on this node, and
    /// refreshes them well before `group_expiry` drops them. Between
    /// refreshes it follows the routes' transition log, so a subscribe
    /// costs the groups it changed, not a diff of every group held.
    async fn membership(&self, registered: &tokio::sync::Mutex<HashSet<Arc<str>>>) {
        let refresh_every = Duration::from_secs((self.group_expiry_secs / 4).clamp(1, 300));
        let mut next_refresh = Instant::now() + refresh_every;
        let mut backoff = Backoff::new();
        let mut down = false;
        // At start and after an error, re-add everything: Redis may have
        // restarted empty.
        let mut add_all = true;
        let mut synced: u64 = 0;
        loop {
            let refresh = add_all || Instant::now() >= next_refresh;
            let (changes, epoch) = if refresh {
                (Changes::Resync, 0)
            } else {
                self.routes.since(synced)
            };
            let result = {
                let mut registered = registered.lock().await;
                match changes {
                    Changes::Transitions(ts) => {
                        // The last word per group wins; only what differs
                        // from Redis is sent.
                        let mut net: HashMap<Arc<str>, bool> = HashMap::new();
                        for t in ts {
                            if let Some(held) = t.any {
                                net.insert(t.group, held);
                            }
                        }
                        let add: Vec<&Arc<str>> = net
                            .iter()
                            .filter(|(g, held)| **held && !registered.contains(*g))
                            .map(|(g, _)| g)
                            .collect();
                        let remove: Vec<&Arc<str>> = net
                            .iter()
                            .filter(|(g, held)| !**held && registered.contains(*g))
                            .map(|(g, _)| g)
                            .collect();
                        let r = self.sync(&add, &remove).await;
                        if r.is_ok() {
                            for (g, held) in net {
                                if held {
                                    registered.insert(g);
                                } else {
                                    registered.remove(&g);
                                }
                            }
                        }
                        r.map(|()| epoch)
                    }
                    Changes::Resync => {
                        let snap = self.routes.load_full();
                        let add: Vec<&Arc<str>> = snap
                            .groups
                            .keys()
                            .filter(|g| refresh || !registered.contains(*g))
                            .collect();
                        let remove: Vec<&Arc<str>> = registered
                            .iter()
                            .filter(|g| !snap.groups.contains_key(*g))
                            .collect();
                        let r = self.sync(&add, &remove).await;
                        if r.is_ok() {
                            *registered = snap.groups.keys().cloned().collect();
                        }
                        r.map(|()| snap.epoch)
                    }
                }
            };
            let reached = match result {
                Ok(reached) => {
                    synced = reached;
                    if down {
                        tracing::info!("redis is back; memberships re-registered");
                        down = false;
                    }
                    self.metrics.redis_up.set(1);
                    backoff.reset();
                    add_all = false;
                    if refresh {
                        next_refresh = Instant::now() + refresh_every;
                    }
                    reached
                }
                Err(e) => {
                    if !down {
                        tracing::warn!(error = %e, "redis membership update failed; retrying with backoff");
                        down = true;
                    }
                    self.metrics.redis_up.set(0);
                    self.metrics.redis_errors.inc();
                    add_all = true;
                    // Subscribers wait for this, not for Redis to come back.
                    self.routes.load().epoch
                }
            };
            self.acked.send_replace(reached);
            if down {
                backoff.wait().await;
                continue;
            }
            // Changes that came in during the round are read next round;
            // the notify's stored permit makes sure we look.
            if self.routes.load().epoch > synced {
                continue;
            }
            tokio::select! {
                () = self.routes.changed() => {}
                () = tokio::time::sleep_until(next_refresh) => {}
                () = self.resync.notified() => add_all = true,
            }
        }
    }

    /// Adds (with a fresh score) and removes this node's channel in groups,
    /// pipelined per host in chunks.
    async fn sync(&self, add: &[&Arc<str>], remove: &[&Arc<str>]) -> redis::RedisResult<()> {
        let now = now_secs();
        for host in 0..self.pools.len() {
            let adds: Vec<&str> = add
                .iter()
                .map(|g| &***g)
                .filter(|g| self.host_of(g) == host)
                .collect();
            let removes: Vec<&str> = remove
                .iter()
                .map(|g| &***g)
                .filter(|g| self.host_of(g) == host)
                .collect();
            if adds.is_empty() && removes.is_empty() {
                continue;
            }
            let mut conn = self.pools[host].get().await.map_err(pool_error)?;
            for chunk in adds.chunks(MEMBERSHIP_CHUNK) {
                let mut pipe = redis::pipe();
                for g in chunk {
                    let key = self.naming.group_key(g);
                    pipe.cmd("ZADD")
                        .arg(&key)
                        .arg(now)
                        .arg(self.naming.channel(g))
                        .ignore();
                    pipe.cmd("EXPIRE")
                        .arg(&key)
                        .arg(self.group_expiry_secs)
                        .ignore();
                }
                pipe.query_async::<()>(&mut *conn).await?;
            }
            for chunk in removes.chunks(MEMBERSHIP_CHUNK) {
                let mut pipe = redis::pipe();
                for g in chunk {
                    pipe.cmd("ZREM")
                        .arg(self.naming.group_key(g))
                        .arg(self.naming.channel(g))
                        .ignore();
                }
                pipe.query_async::<()>(&mut *conn).await?;
            }
        }
        Ok(())
    }

    /// On shutdown: leave every group, best effort within a second.
    async fn unregister(&self, registered: &tokio::sync::Mutex<HashSet<Arc<str>>>) {
        let groups: Vec<Arc<str>> = registered.lock().await.iter().cloned().collect();
        let refs: Vec<&Arc<str>> = groups.iter().collect();
        match tokio::time::timeout(Duration::from_secs(1), self.sync(&[], &refs)).await {
            Ok(Ok(())) => tracing::info!(groups = groups.len(), "left every redis group"),
            _ => tracing::warn!(
                "could not leave the redis groups on shutdown; they expire by group_expiry"
            ),
        }
    }

    /// Drains the channel key: a blocking pop and a counted pop of the
    /// backlog, in one round trip, then routes the batch in score order.
    async fn drain(&self, shutdown: watch::Receiver<bool>) {
        let key = self.naming.channel_key();
        let host = self.host_of(&self.naming.channel_base);
        let mut backoff = Backoff::new();
        let mut down = false;
        if !self.hold(&shutdown).await {
            return;
        }
        while !*shutdown.borrow() {
            let mut conn = match self.pools[host].get().await {
                Ok(c) => c,
                Err(e) => {
                    self.drain_failed(&mut down, &pool_error(e));
                    backoff.wait().await;
                    continue;
                }
            };
            // redis-rs times replies out after 500 ms by default; the
            // blocking pop waits up to 1 s on purpose.
            conn.set_response_timeout(Duration::from_secs(10));
            while !*shutdown.borrow() {
                let reply = redis::pipe()
                    .cmd("BZPOPMIN")
                    .arg(&key)
                    .arg(1)
                    .cmd("ZPOPMIN")
                    .arg(&key)
                    .arg(self.batch.saturating_sub(1).max(1))
                    .query_async::<(Value, Value)>(&mut *conn)
                    .await;
                match reply {
                    Ok((first, rest)) => {
                        if down {
                            tracing::info!("redis drain reconnected");
                            down = false;
                        }
                        backoff.reset();
                        let mut members = blocking_pop_member(first);
                        members.extend(pairs(rest));
                        if !members.is_empty() {
                            self.deliver_channels_redis(members).await;
                        }
                    }
                    Err(e) => {
                        self.drain_failed(&mut down, &e);
                        break;
                    }
                }
            }
            backoff.wait().await;
        }
    }

    fn drain_failed(&self, down: &mut bool, e: &redis::RedisError) {
        if !*down {
            tracing::warn!(error = %e, "redis drain failed; retrying with backoff");
            *down = true;
        }
        self.metrics.redis_errors.inc();
        self.metrics.redis_up.set(0);
        self.resync.notify_one();
    }

    /// Waits out the backlog hold; `false` if shutdown came first.
    async fn hold(&self, shutdown: &watch::Receiver<bool>) -> bool {
        tokio::select! {
            () = tokio::time::sleep(self.backlog_hold) => true,
            () = stopped(shutdown.clone()) => false,
        }
    }

    /// Reads the native stream with a consumer group: first this node's own
    /// pending entries (read before a crash, never acknowledged), then new
    /// ones; routes each batch in order, then acknowledges and trims.
    async fn stream(&self, shutdown: watch::Receiver<bool>) {
        if self.stream_key.is_empty() {
            return;
        }
        let host = self.host_of(&self.stream_key);
        // The group is created at start, before the hold: its `$` is "from
        // now", and entries added during the hold must be read after it.
        if let Ok(mut conn) = self.pools[host].get().await {
            let _ = self.ensure_group(&mut conn).await;
        }
        if !self.hold(&shutdown).await {
            return;
        }
        let mut backoff = Backoff::new();
        let mut down = false;
        while !*shutdown.borrow() {
            let result = async {
                let mut conn = self.pools[host].get().await.map_err(pool_error)?;
                conn.set_response_timeout(Duration::from_secs(10));
                self.ensure_group(&mut conn).await?;
                let mut cursor = "0".to_owned();
                while !*shutdown.borrow() {
                    let reply: Value = redis::cmd("XREADGROUP")
                        .arg("GROUP")
                        .arg(&self.stream_group)
                        .arg(&self.stream_consumer)
                        .arg("COUNT")
                        .arg(self.batch)
                        .arg("BLOCK")
                        .arg(1000)
                        .arg("STREAMS")
                        .arg(&self.stream_key)
                        .arg(&cursor)
                        .query_async(&mut *conn)
                        .await?;
                    if down {
                        tracing::info!("redis stream reader reconnected");
                        down = false;
                    }
                    backoff.reset();
                    let entries = stream_entries(reply);
                    if cursor != ">" {
                        // Done with this node's pending entries: go on to new ones.
                        match entries.last() {
                            Some((id, _)) => cursor = id.clone(),
                            None => {
                                cursor = ">".to_owned();
                                continue;
                            }
                        }
                    }
                    if entries.is_empty() {
                        continue;
                    }
                    self.deliver_stream(&entries).await;
                    // Acknowledge, then trim what this group has consumed
                    // (MINID just past the last acknowledged entry).
                    let last = &entries[entries.len() - 1].0;
                    let mut pipe = redis::pipe();
                    pipe.cmd("XACK")
                        .arg(&self.stream_key)
                        .arg(&self.stream_group);
                    for (id, _) in &entries {
                        pipe.arg(id);
                    }
                    pipe.ignore();
                    // Exact, not `~`: what is left is then exactly the unread
                    // entries, so the cap below counts its losses exactly.
                    pipe.cmd("XTRIM")
                        .arg(&self.stream_key)
                        .arg("MINID")
                        .arg(id_after(last))
                        .ignore();
                    pipe.cmd("XLEN").arg(&self.stream_key);
                    let (len,): (u64,) = pipe.query_async(&mut *conn).await?;
                    if len > self.stream_maxlen {
                        // Far behind: the cap protects Redis's memory, and
                        // what it removes unread is counted, not silent.
                        let trimmed: u64 = redis::cmd("XTRIM")
                            .arg(&self.stream_key)
                            .arg("MAXLEN")
                            .arg(self.stream_maxlen)
                            .query_async(&mut *conn)
                            .await?;
                        self.metrics.stream_trimmed_unread.inc_by(trimmed);
                        tracing::warn!(
                            trimmed,
                            maxlen = self.stream_maxlen,
                            "stream over its cap: oldest unread entries trimmed"
                        );
                    }
                }
                Ok(())
            }
            .await;
            if let Err(e) = result {
                // Includes NOGROUP after Redis restarted empty: the group is
                // created again on the next round.
                self.drain_failed(&mut down, &e);
                backoff.wait().await;
            }
        }
    }

    /// Creates this node's consumer group (and the stream) unless it exists.
    async fn ensure_group(&self, conn: &mut deadpool_redis::Connection) -> redis::RedisResult<()> {
        let created = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.stream_key)
            .arg(&self.stream_group)
            .arg("$")
            .arg("MKSTREAM")
            .query_async::<()>(&mut **conn)
            .await;
        match created {
            Err(e) if e.code() != Some("BUSYGROUP") => Err(e),
            _ => Ok(()),
        }
    }

    async fn deliver_stream(&self, entries: &[(String, Fields)]) {
        let mut events: Vec<(String, Bytes)> = Vec::with_capacity(entries.len());
        for (_, fields) in entries {
            match stream::event(fields, self.max_group_name) {
                Ok(e) => events.push(e),
                Err(why) => self.skip_stream(why),
            }
        }
        self.route(&events, &self.metrics.events_in_stream).await;
    }

    fn skip_stream(&self, why: BadEntry) {
        let counter = self.metrics.stream_skipped(why);
        counter.inc();
        let n = counter.get();
        if n == 1 || n.is_multiple_of(1000) {
            tracing::warn!(reason = %why, count = n, "skipped a redis stream entry");
        }
    }

    async fn route(
        &self,
        events: &[(String, Bytes)],
        source: &prometheus_client::metrics::counter::Counter,
    ) {
        if events.is_empty() {
            return;
        }
        let routed = self
            .router
            .route(events.iter().map(|(g, t)| (g.as_str(), &t[..])))
            .await;
        if let Ok(routed) = routed {
            source.inc_by(routed.accepted);
            self.metrics.events_unrouted.inc_by(routed.unrouted);
        }
    }

    async fn deliver_channels_redis(&self, members: Vec<(Vec<u8>, f64)>) {
        let now = now_secs();
        let mut events: Vec<(String, Bytes)> = Vec::with_capacity(members.len());
        for (member, score) in members {
            match decode(
                &member,
                self.prefix_len,
                now - score,
                self.message_expiry_secs,
            ) {
                Ok(msg) => {
                    for channel in &msg.channels {
                        match self.naming.group_of(channel) {
                            Some(group) => events.push((group.to_owned(), msg.text.clone())),
                            None => self.skip(Malformed::BadChannels, &member),
                        }
                    }
                }
                Err(why) => self.skip(why, &member),
            }
        }
        self.route(&events, &self.metrics.events_in_redis).await;
    }

    fn skip(&self, why: Malformed, member: &[u8]) {
        let counter = self.metrics.redis_skipped(why);
        counter.inc();
        // A rate limit without state: the first of each reason, then every
        // thousandth.
        let n = counter.get();
        if n == 1 || n.is_multiple_of(1000) {
            tracing::warn!(reason = %why, count = n, bytes = member.len(), "skipped a redis entry");
        }
    }
}

fn pool_error(e: deadpool_redis::PoolError) -> redis::RedisError {
    match e {
        deadpool_redis::PoolError::Backend(e) => e,
        other => redis::RedisError::from((redis::ErrorKind::Io, "redis pool", other.to_string())),
    }
}

fn score(v: &Value) -> Option<f64> {
    match v {
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::Double(d) => Some(*d),
        Value::SimpleString(s) => s.parse().ok(),
        Value::Int(i) => Some(*i as f64),
        _ => None,
    }
}

/// The smallest stream id after `id` (`ms-seq` -> `ms-(seq+1)`), so that
/// `XTRIM MINID` removes `id` itself too.
fn id_after(id: &str) -> String {
    match id
        .split_once('-')
        .and_then(|(ms, seq)| Some((ms, seq.parse::<u64>().ok()?)))
    {
        Some((ms, seq)) => format!("{ms}-{}", seq.saturating_add(1)),
        None => id.to_owned(),
    }
}

/// `XREADGROUP`'s reply for one stream: nil, or
/// `[[key, [[id, [field, value, ...]], ...]]]` (a map in RESP3).
fn stream_entries(v: Value) -> Vec<(String, Fields)> {
    let streams = match v {
        Value::Array(s) => s,
        Value::Map(m) => m
            .into_iter()
            .map(|(k, v)| Value::Array(vec![k, v]))
            .collect(),
        _ => return Vec::new(),
    };
    let mut out = Vec::new();
    for s in streams {
        let Value::Array(mut kv) = s else { continue };
        let Some(Value::Array(entries)) = kv.pop() else {
            continue;
        };
        for e in entries {
            let Value::Array(mut parts) = e else { continue };
            if parts.len() != 2 {
                continue;
            }
            let fields = parts.pop();
            let id = match parts.pop() {
                Some(Value::BulkString(b)) => String::from_utf8_lossy(&b).into_owned(),
                Some(Value::SimpleString(s)) => s,
                _ => continue,
            };
            let fields = match fields {
                Some(Value::Array(f)) => f
                    .chunks(2)
                    .filter_map(|kv| match kv {
                        [Value::BulkString(k), Value::BulkString(v)] => {
                            Some((k.clone(), v.clone()))
                        }
                        _ => None,
                    })
                    .collect(),
                Some(Value::Map(m)) => m
                    .into_iter()
                    .filter_map(|kv| match kv {
                        (Value::BulkString(k), Value::BulkString(v)) => Some((k, v)),
                        _ => None,
                    })
                    .collect(),
                // A deleted entry still pending: nothing to deliver, but its
                // id must be acknowledged.
                _ => Vec::new(),
            };
            out.push((id, fields));
        }
    }
    out
}

/// `BZPOPMIN`'s reply: nil, or `[key, member, score]`.
fn blocking_pop_member(v: Value) -> Vec<(Vec<u8>, f64)> {
    match v {
        Value::Array(items) if items.len() == 3 => match (&items[1], score(&items[2])) {
            (Value::BulkString(m), Some(s)) => vec![(m.clone(), s)],
            _ => Vec::new(),
        },
        _ => Vec::new(),
    }
}

/// `ZPOPMIN key n`'s reply: a flat `[member, score, ...]` (RESP2) or
/// `[[member, score], ...]` (RESP3).
fn pairs(v: Value) -> Vec<(Vec<u8>, f64)> {
    let Value::Array(items) = v else {
        return Vec::new();
    };
    if items.iter().all(|i| matches!(i, Value::Array(_))) {
        return items
            .into_iter()
            .filter_map(|i| match i {
                Value::Array(pair) if pair.len() == 2 => match (&pair[0], score(&pair[1])) {
                    (Value::BulkString(m), Some(s)) => Some((m.clone(), s)),
                    _ => None,
                },
                _ => None,
            })
            .collect();
    }
    items
        .chunks(2)
        .filter_map(|pair| match (pair.first(), pair.get(1).and_then(score)) {
            (Some(Value::BulkString(m)), Some(s)) => Some((m.clone(), s)),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_parse_in_both_protocol_versions() {
        let b = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        assert_eq!(id_after("1700000000000-7"), "1700000000000-8");
        assert_eq!(id_after("weird"), "weird");
        let resp2 = Value::Array(vec![b("m1"), b("1.5"), b("m2"), b("2")]);
        let resp3 = Value::Array(vec![
            Value::Array(vec![b("m1"), Value::Double(1.5)]),
            Value::Array(vec![b("m2"), Value::Double(2.0)]),
        ]);
        let want = vec![(b"m1".to_vec(), 1.5), (b"m2".to_vec(), 2.0)];
        assert_eq!(pairs(resp2), want);
        assert_eq!(pairs(resp3), want);
        assert_eq!(
            blocking_pop_member(Value::Array(vec![b("k"), b("m"), b("3.25")])),
            vec![(b"m".to_vec(), 3.25)]
        );
        assert!(blocking_pop_member(Value::Nil).is_empty());
        let xread = Value::Array(vec![Value::Array(vec![
            b("wsrelay:events"),
            Value::Array(vec![
                Value::Array(vec![
                    b("1-0"),
                    Value::Array(vec![b("group"), b("g"), b("payload"), b("1")]),
                ]),
                Value::Array(vec![b("1-1"), Value::Nil]),
            ]),
        ])]);
        assert_eq!(
            stream_entries(xread),
            vec![
                (
                    "1-0".to_owned(),
                    vec![
                        (b"group".to_vec(), b"g".to_vec()),
                        (b"payload".to_vec(), b"1".to_vec())
                    ]
                ),
                ("1-1".to_owned(), vec![]),
            ]
        );
    }
}
