//! `fanout`: one group, S subscribers, an open-loop producer over HTTP emit
//! at a fixed event rate. Per I/O driver: deliveries/s, latency, loss,
//! duplicates, the server's CPU, and its syscalls (and io_uring
//! submissions) per delivered frame when perf can count them.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wsrelay::client::Client;

use crate::{node, stamp};

#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Subscribers of the one group
    #[arg(long, default_value_t = 1000)]
    pub subscribers: usize,
    /// Event size in bytes
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
    /// Events per second emitted (open loop)
    #[arg(long, default_value_t = 1000)]
    pub rate: u64,
    /// Measured seconds (after the warm-up)
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Warm-up seconds, not measured
    #[arg(long, default_value_t = 1)]
    pub warmup: u64,
    /// I/O driver of the node: epoll, uring or both (one after the other)
    #[arg(long, default_value = "both")]
    pub io: String,
    /// Worker threads of the node
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Write the JSON report here as well
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

/// One driver's figures.
#[derive(Debug, Clone)]
pub struct Report {
    pub io: String,
    pub deliveries_per_sec: f64,
    pub events_per_sec: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub expected: u64,
    pub received: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub server_cpu_percent: f64,
    pub server_rss_bytes: u64,
    pub syscalls_per_delivery: Option<f64>,
    pub uring_submissions_per_delivery: Option<f64>,
}

impl Report {
    fn json(&self, opts: &Options) -> serde_json::Value {
        serde_json::json!({
            "scenario": "fanout",
            "io": self.io,
            "subscribers": opts.subscribers,
            "size": opts.size,
            "rate": opts.rate,
            "duration": opts.duration,
            "workers": opts.workers,
            "deliveries_per_sec": self.deliveries_per_sec,
            "events_per_sec": self.events_per_sec,
            "latency_us": {"p50": self.p50_us, "p99": self.p99_us, "p999": self.p999_us, "max": self.max_us},
            "expected": self.expected,
            "received": self.received,
            "lost": self.lost,
            "duplicates": self.duplicates,
            "server_cpu_percent": self.server_cpu_percent,
            "server_rss_bytes": self.server_rss_bytes,
            "syscalls_per_delivery": self.syscalls_per_delivery,
            "uring_submissions_per_delivery": self.uring_submissions_per_delivery,
        })
    }
}

pub fn run(opts: &Options) -> anyhow::Result<()> {
    let drivers: Vec<&str> = match opts.io.as_str() {
        "both" => vec!["epoll", "uring"],
        "epoll" | "uring" => vec![opts.io.as_str()],
        other => bail!("--io {other}: want epoll, uring or both"),
    };
    let mut reports = Vec::new();
    for io in drivers {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let local = tokio::task::LocalSet::new();
        let report = local.block_on(&rt, one(opts, io))?;
        reports.push(report);
    }
    println!(
        "\nfanout: {} subscribers, {} B events at {} ev/s, {} s measured, {} worker(s)",
        opts.subscribers, opts.size, opts.rate, opts.duration, opts.workers
    );
    println!(
        "{:<6} {:>13} {:>9} {:>9} {:>9} {:>9} {:>8} {:>6} {:>9} {:>12} {:>14}",
        "io",
        "deliveries/s",
        "p50 ms",
        "p99 ms",
        "p999 ms",
        "max ms",
        "lost",
        "dups",
        "srv cpu%",
        "syscalls/dlv",
        "uring subm/dlv"
    );
    for r in &reports {
        let opt = |v: Option<f64>| v.map_or("n/a".to_owned(), |v| format!("{v:.4}"));
        println!(
            "{:<6} {:>13.0} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>8} {:>6} {:>9.0} {:>12} {:>14}",
            r.io,
            r.deliveries_per_sec,
            r.p50_us as f64 / 1000.0,
            r.p99_us as f64 / 1000.0,
            r.p999_us as f64 / 1000.0,
            r.max_us as f64 / 1000.0,
            r.lost,
            r.duplicates,
            r.server_cpu_percent,
            opt(r.syscalls_per_delivery),
            opt(r.uring_submissions_per_delivery),
        );
    }
    let json = serde_json::Value::Array(reports.iter().map(|r| r.json(opts)).collect());
    println!("{json}");
    if let Some(path) = &opts.json {
        std::fs::write(path, serde_json::to_string_pretty(&json)?)?;
    }
    if reports.iter().any(|r| r.lost > 0 || r.duplicates > 0) {
        bail!("loss or duplicates seen");
    }
    Ok(())
}

struct Tally {
    received: Cell<u64>,
    duplicates: Cell<u64>,
    gaps: Cell<u64>,
    latency: RefCell<Histogram<u64>>,
    measuring: Cell<bool>,
}

async fn one(opts: &Options, io: &str) -> anyhow::Result<Report> {
    let node = node::start(io, opts.workers, &[]).await?;
    let addr = node.addr;
    let tally = Rc::new(Tally {
        received: Cell::new(0),
        duplicates: Cell::new(0),
        gaps: Cell::new(0),
        latency: RefCell::new(Histogram::new_with_bounds(1, 120_000_000, 3)?),
        measuring: Cell::new(false),
    });
    let exp = stamp::now_ns() / 1_000_000_000 + 86_400;
    let mut ready = Vec::new();
    for i in 0..opts.subscribers {
        let token = wsrelay::auth::mint_hs256(
            node::SECRET.as_bytes(),
            &serde_json::json!({"sub": (i + 1).to_string(), "exp": exp}),
        );
        let (tx, rx) = tokio::sync::oneshot::channel();
        ready.push(rx);
        tokio::task::spawn_local(subscriber(addr, token, tally.clone(), tx));
    }
    for rx in ready {
        rx.await.context("subscriber task")??;
    }

    // The producer runs on its own thread so that reading clients cannot
    // delay its schedule (no coordinated omission).
    let total = opts.rate * (opts.warmup + opts.duration);
    let (size, rate) = (opts.size, opts.rate);
    let producer = std::thread::spawn(move || produce(addr, total, rate, size));

    tokio::time::sleep(Duration::from_secs(opts.warmup)).await;
    tally.measuring.set(true);
    let perf = node::perf_counters(node.pid, opts.duration);
    let (t0, r0, cpu0) = (
        Instant::now(),
        tally.received.get(),
        node::cpu_seconds(node.pid),
    );
    tokio::time::sleep(Duration::from_secs(opts.duration)).await;
    let (t1, r1, cpu1) = (
        Instant::now(),
        tally.received.get(),
        node::cpu_seconds(node.pid),
    );
    tally.measuring.set(false);
    let rss = node::rss_bytes(node.pid).unwrap_or(0);
    let emitted = producer
        .join()
        .map_err(|_| anyhow::anyhow!("producer panicked"))??;
    let expected = emitted * opts.subscribers as u64;
    let settle = Instant::now();
    while tally.received.get() < expected && settle.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let counters = perf.and_then(node::perf_result);
    let secs = (t1 - t0).as_secs_f64();
    let delivered = (r1 - r0) as f64;
    let lat = tally.latency.borrow();
    Ok(Report {
        io: io.to_owned(),
        deliveries_per_sec: delivered / secs,
        events_per_sec: delivered / secs / opts.subscribers as f64,
        p50_us: lat.value_at_quantile(0.5),
        p99_us: lat.value_at_quantile(0.99),
        p999_us: lat.value_at_quantile(0.999),
        max_us: lat.max(),
        expected,
        received: tally.received.get(),
        lost: expected.saturating_sub(tally.received.get()) + tally.gaps.get(),
        duplicates: tally.duplicates.get(),
        server_cpu_percent: match (cpu0, cpu1) {
            (Some(a), Some(b)) => (b - a) / secs * 100.0,
            _ => f64::NAN,
        },
        server_rss_bytes: rss,
        syscalls_per_delivery: counters.map(|(s, _)| s as f64 / delivered.max(1.0)),
        uring_submissions_per_delivery: counters.map(|(_, u)| u as f64 / delivered.max(1.0)),
    })
}

async fn subscriber(
    addr: SocketAddr,
    token: String,
    tally: Rc<Tally>,
    ready: tokio::sync::oneshot::Sender<anyhow::Result<()>>,
) {
    let mut client = match Client::join(addr, &token, r#"{"groups": {"job_events": [1]}}"#).await {
        Ok(c) => {
            let _ = ready.send(Ok(()));
            c
        }
        Err(e) => {
            let _ = ready.send(Err(e.into()));
            return;
        }
    };
    let mut next = 0u64;
    while let Ok(text) = client.next_text().await {
        let Some((seq, ns)) = stamp::read(&text) else {
            continue;
        };
        if seq < next {
            tally.duplicates.set(tally.duplicates.get() + 1);
            continue;
        }
        if seq > next {
            tally.gaps.set(tally.gaps.get() + (seq - next));
        }
        next = seq + 1;
        tally.received.set(tally.received.get() + 1);
        if tally.measuring.get() {
            let us = stamp::now_ns().saturating_sub(ns) / 1000;
            let _ = tally.latency.borrow_mut().record(us.max(1));
        }
    }
}

/// Emits `total` events at `rate` per second on an open-loop schedule over
/// one keep-alive HTTP connection; returns how many were accepted.
fn produce(addr: SocketAddr, total: u64, rate: u64, size: usize) -> anyhow::Result<u64> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let mut conn = TcpStream::connect(addr).await?;
        conn.set_nodelay(true)?;
        let start = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let (mut sent, mut accepted) = (0u64, 0u64);
        let mut body = String::new();
        while sent < total {
            tick.tick().await;
            let due = ((start.elapsed().as_secs_f64() * rate as f64) as u64).min(total);
            if due <= sent {
                continue;
            }
            body.clear();
            body.push('[');
            for seq in sent..due {
                if seq > sent {
                    body.push(',');
                }
                body.push_str(r#"{"group":"job_events-1","payload":"#);
                body.push_str(&stamp::payload(seq, stamp::now_ns(), size));
                body.push('}');
            }
            body.push(']');
            accepted += post(&mut conn, &body).await?;
            sent = due;
        }
        anyhow::Ok(accepted)
    })
}

async fn post(conn: &mut TcpStream, body: &str) -> anyhow::Result<u64> {
    let head = format!(
        "POST /api/v1/emit HTTP/1.1\r\nHost: loadtest\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        node::EMIT_KEY,
        body.len()
    );
    conn.write_all(head.as_bytes()).await?;
    conn.write_all(body.as_bytes()).await?;
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    loop {
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            bail!("node closed the emit connection");
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        if let Some((head, reply)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .and_then(|v| v.trim().parse().ok())
                .context("emit response without content-length")?;
            if reply.len() < len {
                continue;
            }
            if !head.starts_with("HTTP/1.1 200") {
                bail!("emit refused: {head} {reply}");
            }
            let v: serde_json::Value = serde_json::from_str(&reply[..len])?;
            return v["accepted"].as_u64().context("no accepted count");
        }
    }
}
