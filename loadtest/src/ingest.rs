//! `ingest`: how fast a node moves events from Redis into the fan-out, per
//! path (AWX's channels_redis format, the native stream) and per batch size
//! (`--redis-batch`). The backlog is written while the node holds it after
//! start (`--backlog-hold-ms`), then the node drains it; the rate is events
//! over the time from the first to the last event one subscriber receives.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use deadpool_redis::redis;
use wsrelay::client::Client;

use wsrelay::payload as stamp;

use crate::node::{self, RedisServer};

#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Events in the backlog
    #[arg(long, default_value_t = 100_000)]
    pub events: u64,
    /// Event size in bytes
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
    /// Batch sizes to sweep (--redis-batch of the node)
    #[arg(long, value_delimiter = ',', default_value = "1,16,128,512")]
    pub batches: Vec<usize>,
    /// Paths to measure: channels_redis, stream
    #[arg(long, value_delimiter = ',', default_value = "channels_redis,stream")]
    pub paths: Vec<String>,
    /// The node's backlog hold, ms: the backlog must be written within it
    #[arg(long, default_value_t = 6000)]
    pub hold_ms: u64,
    /// Write the JSON report here as well
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

const NODE_ID: &str = "loadtest";

pub fn run(opts: &Options) -> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut rows = Vec::new();
    for path in &opts.paths {
        if path != "channels_redis" && path != "stream" {
            bail!("--paths {path}: want channels_redis or stream");
        }
        for &batch in &opts.batches {
            let row = rt.block_on(one(opts, &redis.url(), path, batch))?;
            eprintln!("{row}");
            rows.push(row);
        }
    }
    println!(
        "\ningest: {} events of {} B into one subscriber, node with 1 worker",
        opts.events, opts.size
    );
    println!(
        "{:<15} {:>6} {:>12} {:>10}",
        "path", "batch", "events/s", "node cpu%"
    );
    for r in &rows {
        println!(
            "{:<15} {:>6} {:>12.0} {:>10.0}",
            r["path"].as_str().unwrap_or(""),
            r["batch"],
            r["events_per_sec"].as_f64().unwrap_or(0.0),
            r["node_cpu_percent"].as_f64().unwrap_or(0.0)
        );
    }
    let json = serde_json::Value::Array(rows);
    println!("{json}");
    if let Some(p) = &opts.json {
        std::fs::write(p, serde_json::to_string_pretty(&json)?)?;
    }
    Ok(())
}

async fn one(
    opts: &Options,
    url: &str,
    path: &str,
    batch: usize,
) -> anyhow::Result<serde_json::Value> {
    let mut conn = redis::Client::open(url)?
        .get_multiplexed_async_connection()
        .await?;
    redis::cmd("FLUSHALL").query_async::<()>(&mut conn).await?;
    let node = node::start(
        "auto",
        1,
        &[
            "--redis",
            url,
            "--node-id",
            NODE_ID,
            "--redis-batch",
            &batch.to_string(),
            "--backlog-hold-ms",
            &opts.hold_ms.to_string(),
        ],
    )
    .await?;
    let started = Instant::now();
    let token = wsrelay::auth::mint_hs256(
        node::SECRET.as_bytes(),
        &serde_json::json!({"sub": "1", "exp": stamp::now_ns() / 1_000_000_000 + 3600}),
    );
    let mut client = Client::connect(node.addr, &format!("/websocket/?token={token}")).await?;
    client.next_text().await?;
    client
        .send_text(r#"{"groups": {"job_events": [1]}}"#)
        .await?;
    client.next_text().await?;
    fill(&mut conn, path, opts.events, opts.size).await?;
    if started.elapsed() > Duration::from_millis(opts.hold_ms.saturating_sub(300)) {
        bail!("filling the backlog took longer than the hold; use fewer --events");
    }
    let cpu0 = node::cpu_seconds(node.pid);
    let mut first = None;
    for n in 0..opts.events {
        let text = tokio::time::timeout(Duration::from_secs(60), client.next_text())
            .await
            .context("the node stopped delivering")??;
        first.get_or_insert_with(Instant::now);
        let (seq, _) = stamp::read(&text).context("unstamped event")?;
        if seq != n {
            bail!("{path}: expected event {n}, got {seq}");
        }
    }
    let secs = first.map_or(0.0, |t| t.elapsed().as_secs_f64());
    let cpu = match (cpu0, node::cpu_seconds(node.pid)) {
        (Some(a), Some(b)) if secs > 0.0 => (b - a) / secs * 100.0,
        _ => f64::NAN,
    };
    Ok(serde_json::json!({
        "scenario": "ingest",
        "path": path,
        "batch": batch,
        "events": opts.events,
        "size": opts.size,
        "seconds": secs,
        "events_per_sec": opts.events as f64 / secs.max(1e-9),
        "node_cpu_percent": cpu,
    }))
}

/// Writes the backlog as the producers would: pipelined `ZADD`s of
/// channels_redis messages into the node's channel key (what `group_send`'s
/// Lua does), or pipelined `XADD`s to the stream.
async fn fill(
    conn: &mut redis::aio::MultiplexedConnection,
    path: &str,
    events: u64,
    size: usize,
) -> anyhow::Result<()> {
    let channel_base = format!("specific.wsrelay_{NODE_ID}!");
    let key = format!("asgi{channel_base}");
    let now = stamp::now_ns() as f64 / 1e9;
    for chunk_start in (0..events).step_by(1000) {
        let mut pipe = redis::pipe();
        for seq in chunk_start..(chunk_start + 1000).min(events) {
            let payload = stamp::payload(seq, 0, size);
            if path == "stream" {
                pipe.cmd("XADD")
                    .arg("wsrelay:events")
                    .arg("*")
                    .arg("group")
                    .arg("job_events-1")
                    .arg("payload")
                    .arg(payload);
            } else {
                let mut member = vec![0u8; 12];
                let map = rmpv::Value::Map(vec![
                    ("type".into(), "internal.message".into()),
                    ("text".into(), payload.into()),
                    ("needs_relay".into(), true.into()),
                    (
                        "__asgi_channel__".into(),
                        rmpv::Value::Array(vec![format!("{channel_base}job_events-1").into()]),
                    ),
                ]);
                rmpv::encode::write_value(&mut member, &map)?;
                // Rising scores keep the order, as send times do.
                pipe.cmd("ZADD")
                    .arg(&key)
                    .arg(now + seq as f64 * 1e-6)
                    .arg(member);
            }
            pipe.ignore();
        }
        pipe.query_async::<()>(conn).await?;
    }
    Ok(())
}
