//! A channels_redis producer for load generation: `group_send` as SPEC
//! section 4 describes it, so the same storm can drive AWX's own stack
//! (the reference reproduction) and wsrelay's Redis ingest. For each event
//! and each Redis key its group's member channels live on, one message
//! (random prefix + msgpack with `__asgi_channel__`) is added to the key
//! unless the key already holds `capacity` messages: then channels_redis
//! drops it, and so does this.
//!
//! Group membership is read once, when the producer starts (the clients
//! have all subscribed by then and do not change in these scenarios),
//! instead of a `ZRANGE` per send.

use std::collections::HashMap;

use anyhow::Context;
use deadpool_redis::redis;

/// AWX's channel layer settings.
const PREFIX: &str = "asgi";
const CAPACITY: u64 = 10_000;
const EXPIRY_SECS: u64 = 60;

/// Adds each message to its key unless the key is at capacity, as
/// channels_redis's group_send does; returns how many were dropped.
const SEND: &str = r"
local dropped = 0
local n = #KEYS
for i = 1, n do
  if redis.call('ZCOUNT', KEYS[i], '-inf', '+inf') < tonumber(ARGV[n + 1]) then
    redis.call('ZADD', KEYS[i], ARGV[n + 2], ARGV[i])
    redis.call('EXPIRE', KEYS[i], ARGV[n + 3])
  else
    dropped = dropped + 1
  end
end
return dropped
";

pub struct GroupSender {
    conn: redis::aio::MultiplexedConnection,
    /// group -> [(channel key, member channels on it)]
    members: HashMap<String, Vec<(String, Vec<String>)>>,
    /// Messages the layer refused for capacity.
    pub dropped: u64,
}

impl GroupSender {
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        let mut conn = redis::Client::open(url)?
            .get_multiplexed_async_connection()
            .await
            .context("connecting to the channel layer's redis")?;
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{PREFIX}:group:*"))
            .query_async(&mut conn)
            .await?;
        let mut members = HashMap::new();
        for key in keys {
            let channels: Vec<String> = redis::cmd("ZRANGE")
                .arg(&key)
                .arg(0)
                .arg(-1)
                .query_async(&mut conn)
                .await?;
            let mut by_key: HashMap<String, Vec<String>> = HashMap::new();
            for channel in channels {
                // Process-specific channels share the key of their prefix.
                let non_local = match channel.find('!') {
                    Some(i) => channel[..=i].to_owned(),
                    None => channel.clone(),
                };
                by_key
                    .entry(format!("{PREFIX}{non_local}"))
                    .or_default()
                    .push(channel);
            }
            let group = key
                .trim_start_matches(&format!("{PREFIX}:group:"))
                .to_owned();
            members.insert(group, by_key.into_iter().collect());
        }
        Ok(Self {
            conn,
            members,
            dropped: 0,
        })
    }

    /// `group_send`s each `(group, payload text)` in order, one pipelined
    /// round trip for the batch.
    pub async fn send(&mut self, batch: &[(String, String)]) -> anyhow::Result<()> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs_f64();
        let mut pipe = redis::pipe();
        let mut sends = 0;
        for (i, (group, text)) in batch.iter().enumerate() {
            let Some(keys) = self.members.get(group) else {
                continue;
            };
            // Sends within one batch get rising scores: ordered like
            // successive time.time() readings.
            let score = now + i as f64 * 1e-6;
            for (key, channels) in keys {
                let mut member: Vec<u8> = (0..12).map(|_| rand::random::<u8>()).collect();
                let map = rmpv::Value::Map(vec![
                    ("type".into(), "internal.message".into()),
                    ("text".into(), text.as_str().into()),
                    ("needs_relay".into(), true.into()),
                    (
                        "__asgi_channel__".into(),
                        rmpv::Value::Array(channels.iter().map(|c| c.as_str().into()).collect()),
                    ),
                ]);
                rmpv::encode::write_value(&mut member, &map)?;
                pipe.cmd("EVAL")
                    .arg(SEND)
                    .arg(1)
                    .arg(key)
                    .arg(member)
                    .arg(CAPACITY)
                    .arg(score)
                    .arg(EXPIRY_SECS);
                sends += 1;
            }
        }
        if sends > 0 {
            let dropped: Vec<u64> = pipe.query_async(&mut self.conn).await?;
            self.dropped += dropped.iter().sum::<u64>();
        }
        Ok(())
    }
}
