//! AWX's channels_redis layer as an event source: on its own thread, one
//! loop keeps this node's channels registered in exactly the groups its
//! clients hold, and another drains the channel key with pipelined pops and
//! hands the events to the router.
//!
//! Redis going away is a normal event: each loop logs once per outage,
//! counts the error, backs off with jitter (100 ms doubling to 5 s), and on
//! return re-registers every membership. Clients stay connected throughout.

use std::collections::{HashMap, HashSet, VecDeque};
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

use crate::backplane::outbox::Held;
use crate::backplane::wire::{Origin, StreamId};
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
    /// Where the stream reader records the last entry every peer has
    /// confirmed (`<stream key>:relayed:<node>`).
    relayed_key: String,
    /// Entries replayed to peers at start at most (their buffer's size).
    replay_max: usize,
    max_group_name: usize,
    backlog_hold: Duration,
    /// True once the backplane's sinks exist (`Node::start`): nothing is
    /// read before, so a backlog or a replay reaches the peers too.
    backplane_ready: watch::Receiver<bool>,
}

/// Starts the ingest thread. Returns its handle and the receiver of the
/// acknowledged routes epoch (subscribe replies wait on it).
pub(crate) fn spawn(
    config: &Config,
    routes: Arc<Routes>,
    router: Arc<Router>,
    metrics: Arc<Metrics>,
    shutdown: watch::Receiver<bool>,
    backplane_ready: watch::Receiver<bool>,
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
        relayed_key: format!("{}:relayed:{}", config.stream_key, config.node_id),
        replay_max: config.peer_buffer_events.max(1),
        max_group_name: config.max_group_name,
        backlog_hold: config.backlog_hold,
        backplane_ready,
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
            // Whether this round reached Redis at all (nothing to register
            // says nothing about whether it answers).
            let talked;
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
                        talked = !(add.is_empty() && remove.is_empty());
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
                        talked = !(add.is_empty() && remove.is_empty());
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
                    if talked {
                        self.metrics.redis_up.set(1);
                    }
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
        if !self.backplane(&shutdown).await || !self.hold(&shutdown).await {
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
                        // The drain asks at least once a second: Redis
                        // answers.
                        self.metrics.redis_up.set(1);
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

    /// Waits until the backplane can take what is read (bounded: a node
    /// that failed to start drops the sender); `false` if shutdown came
    /// first.
    async fn backplane(&self, shutdown: &watch::Receiver<bool>) -> bool {
        let mut ready = self.backplane_ready.clone();
        tokio::select! {
            _ = ready.wait_for(|r| *r) => true,
            () = stopped(shutdown.clone()) => false,
        }
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
    /// ones; routes each batch in order, then acknowledges it. The stream
    /// is trimmed only behind what every peer has confirmed, and that mark
    /// is kept in Redis too, so a node that crashed replays to its peers
    /// what they may not have (ARCHITECTURE.md, "Stream events across a
    /// crash").
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
        if !self.backplane(&shutdown).await {
            return;
        }
        let mut relayed = Relayed::default();
        // The replay goes to the peers only, and their sinks keep it until
        // the links are up: it need not wait for the hold.
        let mut replayed = false;
        let mut held_back = false;
        let mut backoff = Backoff::new();
        let mut down = false;
        // The last entry routed by this process: after a lost connection
        // the pending entries read again are acknowledged, not routed twice.
        let mut last_routed: Option<StreamId> = None;
        while !*shutdown.borrow() {
            let result = async {
                let mut conn = self.pools[host].get().await.map_err(pool_error)?;
                conn.set_response_timeout(Duration::from_secs(10));
                self.ensure_group(&mut conn).await?;
                if !replayed {
                    self.replay_to_peers(&mut conn, &mut relayed).await?;
                    replayed = true;
                }
                if !held_back {
                    if !self.hold(&shutdown).await {
                        return Ok(());
                    }
                    held_back = true;
                }
                let mut cursor = "0".to_owned();
                while !*shutdown.borrow() {
                    // While peers owe confirmations, come back soon to
                    // record them even if nothing new arrives.
                    let block = if relayed.waiting.is_empty() { 1000 } else { 20 };
                    let reply: Value = redis::cmd("XREADGROUP")
                        .arg("GROUP")
                        .arg(&self.stream_group)
                        .arg(&self.stream_consumer)
                        .arg("COUNT")
                        .arg(self.batch)
                        .arg("BLOCK")
                        .arg(block)
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
                    let rereading = cursor != ">";
                    // An entry id is its arrival time: the first one's age
                    // is how far behind the producers this read is.
                    if let Some(id) = entries.first().and_then(|(id, _)| StreamId::parse(id)) {
                        let lag = (now_secs() - id.ms as f64 / 1000.0).max(0.0);
                        self.metrics.ingest_lag_stream.set(lag);
                    }
                    if rereading {
                        // Done with this node's pending entries: go on to new ones.
                        match entries.last() {
                            Some((id, _)) => cursor = id.clone(),
                            None => {
                                cursor = ">".to_owned();
                                continue;
                            }
                        }
                    }
                    let fresh: Vec<&(String, Fields)> = entries
                        .iter()
                        .filter(|(id, _)| {
                            let id = StreamId::parse(id);
                            last_routed.is_none() || id.is_none_or(|id| Some(id) > last_routed)
                        })
                        .collect();
                    if let Some((last, _)) = fresh.last() {
                        // Entries read again after a crash may have reached
                        // the peers already: they go as replays, which a
                        // peer drops if it has them.
                        let held = self.deliver_stream(&fresh, rereading).await;
                        relayed.push(last, held, fresh.len() as u64);
                    }
                    if let Some(id) = entries.last().and_then(|(id, _)| StreamId::parse(id)) {
                        last_routed = Some(last_routed.map_or(id, |l| l.max(id)));
                    }
                    self.settle(&mut conn, &entries, &mut relayed).await?;
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
        // Stopping: the peers get a moment to confirm what is on its way
        // (the links stop after this thread), so a restart replays little.
        let deadline = Instant::now() + Duration::from_secs(1);
        while !relayed.settled() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if let Ok(mut conn) = self.pools[host].get().await {
            let _ = self.settle(&mut conn, &[], &mut relayed).await;
        }
    }

    /// Acknowledges `entries` (routed), records how far every peer has
    /// confirmed and trims the stream behind that; applies the cap.
    async fn settle(
        &self,
        conn: &mut deadpool_redis::Connection,
        entries: &[(String, Fields)],
        relayed: &mut Relayed,
    ) -> redis::RedisResult<()> {
        let confirmed = relayed.release();
        self.metrics.stream_unconfirmed.set(relayed.entries as i64);
        if entries.is_empty() && confirmed.is_none() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        if !entries.is_empty() {
            pipe.cmd("XACK")
                .arg(&self.stream_key)
                .arg(&self.stream_group);
            for (id, _) in entries {
                pipe.arg(id);
            }
            pipe.ignore();
        }
        if let Some(upto) = &confirmed {
            pipe.cmd("SET").arg(&self.relayed_key).arg(upto).ignore();
            // Exact, not `~`: what is left is then exactly the unread and
            // the unconfirmed entries, so the cap below counts its losses
            // exactly.
            pipe.cmd("XTRIM")
                .arg(&self.stream_key)
                .arg("MINID")
                .arg(id_after(upto))
                .ignore();
        }
        pipe.cmd("XLEN").arg(&self.stream_key);
        let (len,): (u64,) = pipe.query_async(&mut **conn).await?;
        // The cap is on what is unread; what peers have not confirmed is
        // bounded by their buffers and stays for a replay.
        let cap = self.stream_maxlen.saturating_add(relayed.entries);
        if len > cap {
            // Far behind: the cap protects Redis's memory, and what it
            // removes unread is counted, not silent.
            let trimmed: u64 = redis::cmd("XTRIM")
                .arg(&self.stream_key)
                .arg("MAXLEN")
                .arg(cap)
                .query_async(&mut **conn)
                .await?;
            self.metrics.stream_trimmed_unread.inc_by(trimmed);
            tracing::warn!(
                trimmed,
                maxlen = self.stream_maxlen,
                "stream over its cap: oldest unread entries trimmed"
            );
        }
        Ok(())
    }

    /// At start: what an earlier run delivered but its peers had not all
    /// confirmed (after the recorded mark, up to the group's last delivered
    /// entry) goes to the peers again, as replays. At most the peers'
    /// buffer size, newest kept; nothing without a mark (a first start,
    /// which sets it).
    async fn replay_to_peers(
        &self,
        conn: &mut deadpool_redis::Connection,
        relayed: &mut Relayed,
    ) -> redis::RedisResult<()> {
        let mark: Option<String> = redis::cmd("GET")
            .arg(&self.relayed_key)
            .query_async(&mut **conn)
            .await?;
        let groups: Value = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(&self.stream_key)
            .query_async(&mut **conn)
            .await?;
        let Some(last) = last_delivered(groups, &self.stream_group) else {
            return Ok(());
        };
        let Some(mark) = mark else {
            // A first start: everything read so far is history; from here
            // on the mark follows the peers.
            let _: () = redis::cmd("SET")
                .arg(&self.relayed_key)
                .arg(&last)
                .query_async(&mut **conn)
                .await?;
            return Ok(());
        };
        let (Some(from), Some(to)) = (StreamId::parse(&mark), StreamId::parse(&last)) else {
            return Ok(());
        };
        if to <= from {
            return Ok(());
        }
        // Where to start: the newest `replay_max` entries of the range.
        let newest: Value = redis::cmd("XREVRANGE")
            .arg(&self.stream_key)
            .arg(&last)
            .arg(format!("({mark}"))
            .arg("COUNT")
            .arg(self.replay_max)
            .query_async(&mut **conn)
            .await?;
        let newest = entries_of(newest);
        let Some((first, _)) = newest.last() else {
            return Ok(());
        };
        let mut start = first.clone();
        let mut total = 0u64;
        loop {
            let reply: Value = redis::cmd("XRANGE")
                .arg(&self.stream_key)
                .arg(&start)
                .arg(&last)
                .arg("COUNT")
                .arg(self.batch)
                .query_async(&mut **conn)
                .await?;
            let entries = entries_of(reply);
            let Some((end, _)) = entries.last() else {
                break;
            };
            let end = end.clone();
            let mut events: Vec<(String, Bytes)> = Vec::with_capacity(entries.len());
            let mut origins = Vec::with_capacity(entries.len());
            for (id, fields) in &entries {
                if let (Ok(e), Some(id)) = (
                    stream::event(fields, self.max_group_name),
                    StreamId::parse(id),
                ) {
                    events.push(e);
                    origins.push(Origin::Replay(id));
                }
            }
            let refs: Vec<(&str, &[u8])> =
                events.iter().map(|(g, p)| (g.as_str(), &p[..])).collect();
            let held = self.router.offer_to_peers(&refs, &origins);
            relayed.push(&end, held, entries.len() as u64);
            total += entries.len() as u64;
            if end == last || entries.len() < self.batch {
                break;
            }
            start = format!("({end}");
        }
        self.metrics.stream_replayed.inc_by(total);
        tracing::info!(
            entries = total,
            from = %mark,
            to = %last,
            "stream: replaying to peers what an earlier run delivered but they had not confirmed"
        );
        Ok(())
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

    /// Routes stream entries in order, each with its id for the peers
    /// (`replay`: read again after a crash); returns what peers hold.
    async fn deliver_stream(&self, entries: &[&(String, Fields)], replay: bool) -> Held {
        let mut events: Vec<(String, Bytes)> = Vec::with_capacity(entries.len());
        let mut origins = Vec::with_capacity(entries.len());
        for (id, fields) in entries {
            match stream::event(fields, self.max_group_name) {
                Ok(e) => {
                    events.push(e);
                    origins.push(match StreamId::parse(id) {
                        Some(id) if replay => Origin::Replay(id),
                        Some(id) => Origin::Live(id),
                        None => Origin::None,
                    });
                }
                Err(why) => self.skip_stream(why),
            }
        }
        if events.is_empty() {
            return Held::default();
        }
        let refs: Vec<(&str, &[u8])> = events.iter().map(|(g, p)| (g.as_str(), &p[..])).collect();
        match self.router.route_stream(&refs, &origins).await {
            Ok((routed, held)) => {
                self.metrics.events_in_stream.inc_by(routed.accepted);
                self.metrics.events_unrouted.inc_by(routed.unrouted);
                held
            }
            Err(_) => Held::default(),
        }
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
        // The oldest is first (score order): its age is how far behind the
        // producers this read is.
        let oldest = members
            .first()
            .map_or(0.0, |(_, score)| (now - score).max(0.0));
        if !members.is_empty() {
            self.metrics.ingest_lag_redis.set(oldest);
        }
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

/// What the stream reader routed that the peers have not all confirmed,
/// oldest first: one record per run of batches the same sinks took (each
/// sink releases in order, so a run is released at once). Bounded by the
/// peers' buffers: a sink that fills evicts, which releases.
#[derive(Default)]
struct Relayed {
    /// (last entry id of the run, who holds it, entries in it)
    waiting: VecDeque<(String, Held, u64)>,
    entries: u64,
}

impl Relayed {
    fn push(&mut self, last: &str, held: Held, entries: u64) {
        self.entries += entries;
        if let Some(back) = self.waiting.back_mut() {
            if back.1.absorb(&held) {
                back.0 = last.to_owned();
                back.2 += entries;
                return;
            }
        }
        self.waiting.push_back((last.to_owned(), held, entries));
    }

    /// Whether every peer has everything.
    fn settled(&self) -> bool {
        self.waiting.iter().all(|(_, held, _)| held.released())
    }

    /// Forgets what every peer now has; returns the last entry of it.
    fn release(&mut self) -> Option<String> {
        let mut upto = None;
        while self
            .waiting
            .front()
            .is_some_and(|(_, held, _)| held.released())
        {
            let (last, _, n) = self.waiting.pop_front().expect("checked");
            self.entries -= n;
            upto = Some(last);
        }
        upto
    }
}

/// `XINFO GROUPS`' `last-delivered-id` of `group` (arrays of field/value
/// pairs in RESP2, maps in RESP3).
fn last_delivered(v: Value, group: &str) -> Option<String> {
    let Value::Array(groups) = v else { return None };
    let text = |v: &Value| match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    };
    groups.into_iter().find_map(|g| {
        let pairs: Vec<(Value, Value)> = match g {
            Value::Array(kv) => kv
                .chunks(2)
                .filter_map(|c| match c {
                    [k, v] => Some((k.clone(), v.clone())),
                    _ => None,
                })
                .collect(),
            Value::Map(m) => m,
            _ => return None,
        };
        let field = |name: &str| {
            pairs
                .iter()
                .find(|(k, _)| text(k).as_deref() == Some(name))
                .and_then(|(_, v)| text(v))
        };
        (field("name").as_deref() == Some(group))
            .then(|| field("last-delivered-id"))
            .flatten()
    })
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
        let Some(entries) = kv.pop() else {
            continue;
        };
        out.extend(entries_of(entries));
    }
    out
}

/// Entries as `XRANGE` returns them: `[[id, [field, value, ...]], ...]`.
fn entries_of(v: Value) -> Vec<(String, Fields)> {
    let Value::Array(entries) = v else {
        return Vec::new();
    };
    let mut out = Vec::new();
    {
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
