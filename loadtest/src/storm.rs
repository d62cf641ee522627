//! The scenario engine: a playbook event storm against a real node. J jobs
//! each emit job events to `job_events-<id>`, watched by V viewers each;
//! W clients watch `jobs-status_changed`, which gets a status change every
//! N job events. An open-loop producer (its schedule never waits for the
//! relay) emits over HTTP at R job events per second. Every client checks
//! each event's per-group counter: gaps are loss, repeats are duplicates.
//!
//! `fanout` is the storm with one job and no watchers. `--find-max` raises
//! the rate step by step until loss appears or p99 passes a bound.
//!
//! The generator must never be what is measured: clients run on
//! `--client-threads` threads (by default every core the nodes and a
//! broker do not get), the producer on its own, and every report gives the generator's
//! CPU per thread and says which side saturated first. `--find-max` does
//! not call a ceiling that the generator set, and `--workers 1,2,4,8`
//! sweeps the node's workers and prints a scaling table.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wsrelay::client::Client;

use wsrelay::payload as stamp;

use crate::node;

#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Jobs emitting playbook events
    #[arg(long, default_value_t = 200)]
    pub jobs: usize,
    /// Viewers per job (on job_events-<id>)
    #[arg(long, default_value_t = 2)]
    pub viewers: usize,
    /// Clients on jobs-status_changed
    #[arg(long, default_value_t = 100)]
    pub watchers: usize,
    /// A status change every this many job events (0: none)
    #[arg(long, default_value_t = 100)]
    pub status_every: u64,
    #[command(flatten)]
    pub run: RunOptions,
}

/// What every scenario run takes.
#[derive(Debug, Clone, clap::Args)]
pub struct RunOptions {
    /// Job events per second emitted (open loop); the start rate with
    /// --find-max [default: storm 10000, fanout 1000]
    #[arg(long)]
    pub rate: Option<u64>,
    /// Event size in bytes (AWX job-event keys, padded)
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
    /// Measured seconds (after the warm-up)
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Warm-up seconds, not measured
    #[arg(long, default_value_t = 1)]
    pub warmup: u64,
    /// I/O driver of the node: epoll, uring or both (one after the other)
    #[arg(long, default_value = "both")]
    pub io: String,
    /// What to load: wsrelay, or the AWX reference reproduction (daphne +
    /// channels + channels_redis, loadtest/awx_reference)
    #[arg(long, default_value = "wsrelay", value_parser = ["wsrelay", "awx-reference"])]
    pub target: String,
    /// How events enter: http (wsrelay's emit endpoint), channels-redis
    /// (AWX's producers' format, group_send semantics; required for the AWX
    /// reference), stream (wsrelay's native Redis Stream, pipelined XADD),
    /// or inproc (the node runs inside the harness; its CPU and RSS then
    /// include the harness's)
    #[arg(long, default_value = "http", value_parser = ["http", "channels-redis", "stream", "inproc"])]
    pub producer: String,
    /// Worker threads of the node; a list (1,2,4,8) runs each in turn and
    /// prints a scaling table
    #[arg(long, value_delimiter = ',', default_value = "1")]
    pub workers: Vec<usize>,
    /// Threads of the load generator's clients; 0: every core not given to
    /// the nodes' workers (and, with a broker, one for it; at least 1)
    #[arg(long, default_value_t = 0)]
    pub client_threads: usize,
    /// Extra flags for every node started, e.g. --node-arg=--client-write-interval-us=0
    #[arg(long = "node-arg", allow_hyphen_values = true)]
    pub node_args: Vec<String>,
    /// Raise the rate x1.5 per step until loss appears or p99 passes --p99-bound-ms
    #[arg(long)]
    pub find_max: bool,
    /// The p99 bound for --find-max, ms
    #[arg(long, default_value_t = 50)]
    pub p99_bound_ms: u64,
    /// Most steps of --find-max
    #[arg(long, default_value_t = 12)]
    pub max_steps: u32,
    /// Write the JSON report here as well
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
    /// Write an SVG chart of throughput and latency over time here
    #[arg(long)]
    pub svg: Option<std::path::PathBuf>,
    /// Set by the `cluster` scenario: several nodes over the backplane.
    #[arg(skip)]
    pub cluster: Option<ClusterSpec>,
}

/// A cluster run: `nodes` wsrelay processes in a full mesh; events are
/// emitted on the first, clients spread over the others, so every event
/// crosses the backplane.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    pub nodes: usize,
    /// `native`, or `awx-2022` (AWX's form: one JSON frame per event).
    pub protocol: String,
    /// `mesh` (links between every two nodes) or `nats` (a broker).
    pub backplane: String,
    /// `nats` only: the broker is SIGKILLed this many seconds into the
    /// measured window (0: never) and started again on its port, with its
    /// store, after `broker_down_ms`.
    pub broker_restart_at: u64,
    pub broker_down_ms: u64,
    /// Clients on every node, the emitting one included (otherwise on the
    /// others only, so every delivery crosses the backplane).
    pub viewers_on_every_node: bool,
}

/// The storm's shape.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub jobs: usize,
    pub viewers: usize,
    pub watchers: usize,
    pub status_every: u64,
}

/// One run's figures.
#[derive(Debug, Clone)]
pub struct Report {
    pub io: String,
    pub workers: usize,
    pub client_threads: usize,
    /// The generator's CPU over the measured window: all its threads
    /// together, the busiest client thread, and the producer thread (each
    /// as a percentage of one core).
    pub generator_cpu_percent: f64,
    pub busiest_client_thread_percent: f64,
    pub producer_cpu_percent: f64,
    /// Which side ran out first: "node", "generator" (a thread of it near a
    /// whole core, or the producer behind its schedule), both, "host" (the
    /// two together filled every core, or the machine was 85% busy), or
    /// neither.
    pub saturated: String,
    /// The node's CPU by thread kind: its workers, io_uring's kernel
    /// workers, the rest.
    pub node_threads: serde_json::Value,
    /// How much each socket write and each delivery round carried.
    pub batching: serde_json::Value,
    pub rate: u64,
    /// Job events per second the producer actually emitted: below the
    /// target, the load generator (not the node) set the pace.
    pub achieved_rate: f64,
    pub deliveries_per_sec: f64,
    pub events_per_sec: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub expected: u64,
    pub received: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub server_cpu_percent: f64,
    /// The whole machine over the measured window, from /proc/stat: busy
    /// (steal included) and steal alone, as percentages of every core
    /// together (100 = all busy).
    pub host_cpu_percent: Option<f64>,
    pub host_steal_percent: Option<f64>,
    pub server_rss_bytes: u64,
    pub syscalls_per_delivery: Option<f64>,
    pub uring_submissions_per_delivery: Option<f64>,
    /// Cluster runs: events and bytes per second the emitting node sent
    /// over its links (from its own metrics).
    pub backplane_events_per_sec: Option<f64>,
    pub backplane_bytes_per_sec: Option<f64>,
    /// Events per message the emitting node sent: per batch frame over
    /// its links, per broker message through NATS.
    pub backplane_events_per_message: Option<f64>,
    /// The nodes' loss counters at the end (slow-consumer closes, events
    /// dropped, backplane evictions), summed over nodes; in a cluster also
    /// `slow_consumer_closes_by_node`, the emitting node first.
    pub node_losses: serde_json::Value,
    /// Broker runs: the nodes' resume and de-duplication counters at the
    /// end, summed over nodes.
    pub broker_counters: serde_json::Value,
    /// Broker runs: how long the emitting node's batches took to be held
    /// by the broker (acknowledged by JetStream, or flushed), p50 and p99
    /// in milliseconds, as the upper bound of their histogram bucket.
    pub broker_publish_ms: Option<(f64, f64)>,
    /// Whether the broker was killed and started again during the run
    /// (the cluster's CPU is then not measured: the broker's pid changed).
    pub broker_restarted: bool,
    /// One sample per measured second.
    pub timeline: Vec<Sample>,
}

/// One second of a run.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub t: u64,
    pub deliveries_per_sec: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub rss_bytes: u64,
}

impl Report {
    /// How the last tenth of the run compares with the first: memory growth
    /// and p99 change (the soak scenario's point).
    fn drift(&self) -> serde_json::Value {
        let n = self.timeline.len();
        if n < 2 {
            return serde_json::Value::Null;
        }
        let k = (n / 10).max(1);
        let avg =
            |s: &[Sample], f: fn(&Sample) -> f64| s.iter().map(f).sum::<f64>() / s.len() as f64;
        let (first, last) = (&self.timeline[..k], &self.timeline[n - k..]);
        serde_json::json!({
            "rss_first_bytes": avg(first, |s| s.rss_bytes as f64),
            "rss_last_bytes": avg(last, |s| s.rss_bytes as f64),
            "rss_growth_bytes": avg(last, |s| s.rss_bytes as f64) - avg(first, |s| s.rss_bytes as f64),
            "p99_first_us": avg(first, |s| s.p99_us as f64),
            "p99_last_us": avg(last, |s| s.p99_us as f64),
            "deliveries_per_sec_first": avg(first, |s| s.deliveries_per_sec),
            "deliveries_per_sec_last": avg(last, |s| s.deliveries_per_sec),
        })
    }
    /// No loss, no duplicates, p99 within the bound, and the offered rate
    /// really offered (a lagging generator proves nothing about the node).
    pub fn clean(&self, p99_bound_ms: u64) -> bool {
        self.lost == 0
            && self.duplicates == 0
            && self.p99_us <= p99_bound_ms * 1000
            && self.achieved_rate >= 0.95 * self.rate as f64
    }

    /// Whether the generator, not the node, may have set this run's limit.
    pub fn generator_saturated(&self) -> bool {
        self.saturated.contains("generator")
    }

    /// The machine's share of the window, for the console: "87% busy,
    /// 11% stolen", or "not read" off Linux.
    fn host_summary(&self) -> String {
        match (self.host_cpu_percent, self.host_steal_percent) {
            (Some(busy), Some(steal)) => format!("{busy:.0}% busy, {steal:.0}% stolen"),
            _ => "not read".to_owned(),
        }
    }

    /// CPU seconds the node spent per million deliveries.
    pub fn cpu_per_million(&self) -> f64 {
        self.server_cpu_percent / 100.0 / (self.deliveries_per_sec / 1e6).max(1e-9)
    }

    fn json(&self, scenario: &str, shape: Shape, opts: &RunOptions) -> serde_json::Value {
        serde_json::json!({
            "scenario": scenario,
            "io": self.io,
            "jobs": shape.jobs,
            "viewers": shape.viewers,
            "watchers": shape.watchers,
            "status_every": shape.status_every,
            "subscribers": shape.jobs * shape.viewers + shape.watchers,
            "size": opts.size,
            "rate": self.rate,
            "achieved_rate": self.achieved_rate,
            "duration": opts.duration,
            "workers": self.workers,
            "client_threads": self.client_threads,
            "generator_cpu_percent": self.generator_cpu_percent,
            "busiest_client_thread_percent": self.busiest_client_thread_percent,
            "producer_cpu_percent": self.producer_cpu_percent,
            "saturated": self.saturated,
            "node_threads": self.node_threads,
            "batching": self.batching,
            "node_cpu_seconds_per_million_deliveries": self.cpu_per_million(),
            "deliveries_per_sec": self.deliveries_per_sec,
            "events_per_sec": self.events_per_sec,
            "latency_us": {"p50": self.p50_us, "p90": self.p90_us, "p99": self.p99_us, "p999": self.p999_us, "max": self.max_us},
            "expected": self.expected,
            "received": self.received,
            "lost": self.lost,
            "duplicates": self.duplicates,
            "server_cpu_percent": self.server_cpu_percent,
            "host_cpu_percent": self.host_cpu_percent,
            "host_steal_percent": self.host_steal_percent,
            "server_rss_bytes": self.server_rss_bytes,
            "syscalls_per_delivery": self.syscalls_per_delivery,
            "uring_submissions_per_delivery": self.uring_submissions_per_delivery,
            "nodes": opts.cluster.as_ref().map_or(1, |c| c.nodes),
            "viewers_on_every_node": opts.cluster.as_ref().map(|c| c.viewers_on_every_node),
            "peer_protocol": opts.cluster.as_ref().map(|c| c.protocol.clone()),
            "backplane": opts.cluster.as_ref().map(|c| c.backplane.clone()),
            "backplane_events_per_sec": self.backplane_events_per_sec,
            "backplane_bytes_per_sec": self.backplane_bytes_per_sec,
            "backplane_events_per_message": self.backplane_events_per_message,
            "node_losses": self.node_losses,
            "broker_counters": self.broker_counters,
            "broker_restarted": self.broker_restarted,
            "broker_publish_ms": self.broker_publish_ms.map(|(p50, p99)| serde_json::json!({
                "p50_at_most": p50,
                "p99_at_most": p99,
            })),
            "drift": self.drift(),
            "timeline": self.timeline.iter().map(|s| serde_json::json!({
                "t": s.t,
                "deliveries_per_sec": s.deliveries_per_sec,
                "p50_us": s.p50_us,
                "p99_us": s.p99_us,
                "rss_bytes": s.rss_bytes,
            })).collect::<Vec<_>>(),
        })
    }
}

/// `soak`: a storm for a long fixed time, reporting drift (memory growth,
/// p99 and throughput at the end against the start) and a timeline.
#[derive(Debug, Clone, clap::Args)]
pub struct SoakOptions {
    /// Measured seconds
    #[arg(long, default_value_t = 600)]
    pub seconds: u64,
    #[command(flatten)]
    pub storm: Options,
}

pub fn soak(opts: &SoakOptions) -> anyhow::Result<()> {
    let mut run = opts.storm.run.clone();
    run.duration = opts.seconds;
    run_scenario("soak", opts.storm.shape(), &run, 10_000)
}

pub fn run(opts: &Options) -> anyhow::Result<()> {
    run_scenario("storm", opts.shape(), &opts.run, 10_000)
}

impl Options {
    fn shape(&self) -> Shape {
        Shape {
            jobs: self.jobs,
            viewers: self.viewers,
            watchers: self.watchers,
            status_every: self.status_every,
        }
    }
}

/// Runs `shape` per driver (and per rate with `--find-max`), prints the
/// table and the JSON, and fails on loss or duplicates (outside find-max,
/// where they end the search instead).
pub fn run_scenario(
    scenario: &str,
    shape: Shape,
    opts: &RunOptions,
    default_rate: u64,
) -> anyhow::Result<()> {
    if shape.jobs == 0 || shape.viewers + shape.watchers == 0 {
        bail!("a storm needs at least one job and one client");
    }
    let drivers: Vec<&str> = match (opts.target.as_str(), opts.io.as_str()) {
        ("awx-reference", _) => vec!["daphne"],
        (_, "both") => vec!["epoll", "uring"],
        (_, "epoll" | "uring") => vec![opts.io.as_str()],
        (_, other) => bail!("--io {other}: want epoll, uring or both"),
    };
    let mut reports = Vec::new();
    let mut max_clean: Vec<serde_json::Value> = Vec::new();
    for io in drivers {
        for &workers in &opts.workers {
            let mut rate = opts.rate.unwrap_or(default_rate);
            let mut best: Option<u64> = None;
            let mut stopped_by = "max steps";
            for step in 0..if opts.find_max { opts.max_steps } else { 1 } {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                let report = match rt.block_on(once(shape, opts, io, rate, workers)) {
                    Ok(r) => r,
                    // With --find-max a failed step (the generator or the node
                    // gave out) ends the search; the report keeps what was found.
                    Err(e) if opts.find_max => {
                        eprintln!(
                            "{scenario} {io} w{workers} step {step}: {rate} ev/s failed: {e:#}"
                        );
                        stopped_by = "a failed step";
                        break;
                    }
                    Err(e) => return Err(e),
                };
                eprintln!(
                "{scenario} {io} w{workers} step {step}: {rate} ev/s (achieved {:.0}) -> {:.0} deliveries/s, p99 {:.2} ms, lost {}, dups {}, saturated: {} (host {})",
                report.achieved_rate,
                report.deliveries_per_sec,
                report.p99_us as f64 / 1000.0,
                report.lost,
                report.duplicates,
                report.saturated,
                report.host_summary(),
            );
                let clean = report.clean(opts.p99_bound_ms);
                let generator = report.generator_saturated();
                reports.push(report);
                if !opts.find_max {
                    break;
                }
                if !clean {
                    stopped_by = if generator {
                        "the generator"
                    } else {
                        "the node"
                    };
                    break;
                }
                if generator {
                    // Clean, but the generator is at its limit: a higher step
                    // would measure the generator, not the node.
                    stopped_by = "the generator";
                    break;
                }
                best = Some(rate);
                rate = rate * 3 / 2;
            }
            if opts.find_max {
                // A rate the generator stopped at says nothing about the node:
                // no `max_clean_rate` then. Otherwise it is the highest clean
                // step, and `node_ceiling` says whether the node itself failed
                // the next one (else the search ended before finding out).
                let by_generator = stopped_by == "the generator";
                let max_clean_rate = if by_generator { None } else { best };
                if by_generator {
                    eprintln!(
                    "{scenario} {io} w{workers}: no node ceiling found; the generator saturated first (clean up to {best:?} ev/s)"
                );
                }
                max_clean.push(serde_json::json!({
                    "io": io,
                    "workers": workers,
                    "max_clean_rate": max_clean_rate,
                    "node_ceiling": stopped_by == "the node",
                    "clean_up_to": best,
                    "stopped_by": stopped_by,
                    "p99_bound_ms": opts.p99_bound_ms,
                }));
            }
        }
    }
    print_table(scenario, shape, opts, &reports);
    let mut json = serde_json::json!({
        "runs": reports.iter().map(|r| r.json(scenario, shape, opts)).collect::<Vec<_>>(),
    });
    if opts.find_max {
        json["find_max"] = serde_json::Value::Array(max_clean);
    }
    println!("{json}");
    if let Some(path) = &opts.json {
        std::fs::write(path, serde_json::to_string_pretty(&json)?)?;
    }
    if let Some(path) = &opts.svg {
        let title = format!(
            "{scenario}: {} jobs x {} viewers + {} watchers, {} B",
            shape.jobs, shape.viewers, shape.watchers, opts.size
        );
        std::fs::write(path, crate::chart::svg(&title, &reports))?;
    }
    if !opts.find_max && reports.iter().any(|r| r.lost > 0 || r.duplicates > 0) {
        bail!("loss or duplicates seen");
    }
    Ok(())
}

fn print_table(scenario: &str, shape: Shape, opts: &RunOptions, reports: &[Report]) {
    println!(
        "\n{scenario}: {} jobs x {} viewers + {} status watchers, {} B events, {} s measured",
        shape.jobs, shape.viewers, shape.watchers, opts.size, opts.duration
    );
    println!(
        "{:<6} {:>3} {:>9} {:>13} {:>8} {:>8} {:>8} {:>8} {:>6} {:>8} {:>9} {:>10} {:>12} {:>14}",
        "io",
        "wkr",
        "ev/s in",
        "deliveries/s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "lost",
        "dups",
        "srv cpu%",
        "gen cpu%",
        "saturated",
        "syscalls/dlv",
        "uring subm/dlv"
    );
    for r in reports {
        let opt = |v: Option<f64>| v.map_or("n/a".to_owned(), |v| format!("{v:.4}"));
        println!(
            "{:<6} {:>3} {:>9} {:>13.0} {:>8.2} {:>8.2} {:>8.2} {:>8} {:>6} {:>8.0} {:>9.0} {:>10} {:>12} {:>14}",
            r.io,
            r.workers,
            r.rate,
            r.deliveries_per_sec,
            r.p50_us as f64 / 1000.0,
            r.p99_us as f64 / 1000.0,
            r.max_us as f64 / 1000.0,
            r.lost,
            r.duplicates,
            r.server_cpu_percent,
            r.generator_cpu_percent,
            r.saturated,
            opt(r.syscalls_per_delivery),
            opt(r.uring_submissions_per_delivery),
        );
        if let (Some(e), Some(b)) = (r.backplane_events_per_sec, r.backplane_bytes_per_sec) {
            println!(
                "       backplane out of the emitting node: {e:.0} events/s, {:.1} MB/s, {:.1} events/message",
                b / 1e6,
                r.backplane_events_per_message.unwrap_or(0.0)
            );
        }
        if let Some(by_node) = r.node_losses["slow_consumer_closes_by_node"]
            .as_array()
            .filter(|_| r.node_losses["slow_consumer_closes"].as_u64() > Some(0))
        {
            let list: Vec<String> = by_node.iter().map(|v| v.to_string()).collect();
            println!(
                "       slow-consumer closes by node (the emitting node first): {}",
                list.join(", ")
            );
        }
        if let Some((p50, p99)) = r.broker_publish_ms {
            println!(
                "       broker publish (taken to acknowledged): p50 <= {p50} ms, p99 <= {p99} ms (histogram bucket bounds)"
            );
        }
        if r.broker_restarted {
            println!(
                "       the broker was killed and restarted mid-run (cluster CPU not measured); nodes' broker counters: {}",
                r.broker_counters
            );
        }
    }
    if opts.workers.len() > 1 {
        println!(
            "\nscaling ({} client threads unless noted):",
            reports.first().map_or(0, |r| r.client_threads)
        );
        println!(
            "{:<6} {:>7} {:>13} {:>10} {:>9} {:>16} {:>8} {:>8} {:>11} {:>10} {:>9} {:>11}",
            "io",
            "workers",
            "deliveries/s",
            "node cpu%",
            "iou cpu%",
            "cpu-s/M deliv",
            "p50 ms",
            "p99 ms",
            "gen busiest",
            "saturated",
            "frm/write",
            "dlv/round"
        );
        for r in reports {
            let iou = r.node_threads["io_uring_kernel_workers_cpu_percent"]
                .as_f64()
                .unwrap_or(0.0);
            println!(
                "{:<6} {:>7} {:>13.0} {:>10.0} {:>9.0} {:>16.3} {:>8.2} {:>8.2} {:>10.0}% {:>10} {:>9.1} {:>11.0}",
                r.io,
                r.workers,
                r.deliveries_per_sec,
                r.server_cpu_percent,
                iou,
                r.cpu_per_million(),
                r.p50_us as f64 / 1000.0,
                r.p99_us as f64 / 1000.0,
                r.busiest_client_thread_percent,
                r.saturated,
                r.batching["frames_per_write"].as_f64().unwrap_or(0.0),
                r.batching["deliveries_per_round"].as_f64().unwrap_or(0.0),
            );
        }
    }
}

/// One client thread's counts, written by its subscribers only.
struct Tally {
    received: AtomicU64,
    duplicates: AtomicU64,
    gaps: AtomicU64,
    latency: Mutex<Histogram<u64>>,
    /// The current one-second window, for the timeline.
    window: Mutex<Histogram<u64>>,
    measuring: AtomicBool,
}

impl Tally {
    fn new() -> anyhow::Result<Tally> {
        Ok(Tally {
            received: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            gaps: AtomicU64::new(0),
            latency: Mutex::new(Histogram::new_with_bounds(1, 120_000_000, 3)?),
            window: Mutex::new(Histogram::new_with_bounds(1, 120_000_000, 3)?),
            measuring: AtomicBool::new(false),
        })
    }
}

const STATUS_GROUP: &str = "jobs-status_changed";

async fn once(
    shape: Shape,
    opts: &RunOptions,
    io: &str,
    rate: u64,
    workers: usize,
) -> anyhow::Result<Report> {
    let via_redis = matches!(opts.producer.as_str(), "channels-redis" | "stream")
        || opts.target == "awx-reference";
    if opts.producer == "inproc" && opts.target != "wsrelay" {
        bail!("--producer inproc needs --target wsrelay");
    }
    let redis = if via_redis {
        Some(node::RedisServer::start()?)
    } else {
        None
    };
    let mut inproc = None;
    let mut others: Vec<node::NodeProcess> = Vec::new();
    let mut broker: Option<node::NatsServer> = None;
    let extra: Vec<&str> = opts.node_args.iter().map(String::as_str).collect();
    let node = match (&redis, opts.target.as_str()) {
        (Some(r), "awx-reference") => node::start_awx_reference(&r.url()).await?,
        (Some(r), _) => {
            let url = r.url();
            let mut args = vec!["--redis", url.as_str(), "--backlog-hold-ms", "0"];
            args.extend(extra.iter().copied());
            node::start(io, workers, &args).await?
        }
        (None, _) if opts.producer == "inproc" => {
            let (n, process) = node::start_inproc(io, workers)?;
            inproc = Some(n);
            process
        }
        (None, _) if opts.cluster.is_some() => {
            let cl = opts.cluster.as_ref().expect("checked");
            if opts.producer != "http" || opts.target != "wsrelay" {
                bail!("the cluster scenario emits over HTTP to wsrelay nodes");
            }
            let (first, rest, nats) =
                node::start_cluster(io, workers, cl.nodes, &cl.protocol, &cl.backplane, &extra)
                    .await?;
            others = rest;
            broker = nats;
            first
        }
        (None, _) => node::start(io, workers, &extra).await?,
    };
    let addr = node.addr;
    // Clients go to the nodes that do not emit, when there are any.
    let every_node = opts
        .cluster
        .as_ref()
        .is_some_and(|c| c.viewers_on_every_node);
    let client_addrs: Vec<SocketAddr> = if others.is_empty() {
        vec![addr]
    } else if every_node {
        std::iter::once(addr)
            .chain(others.iter().map(|n| n.addr))
            .collect()
    } else {
        others.iter().map(|n| n.addr).collect()
    };
    // The broker's CPU is the cluster's too.
    let pids: Vec<u32> = std::iter::once(node.pid)
        .chain(others.iter().map(|n| n.pid))
        .chain(broker.iter().map(|n| n.process.pid))
        .collect();
    // Each node apart: one of them at its workers' limit saturates the run
    // even when the cluster's sum does not show it.
    let node_pids: Vec<u32> = std::iter::once(node.pid)
        .chain(others.iter().map(|n| n.pid))
        .collect();
    let per_node =
        || -> Vec<Option<f64>> { node_pids.iter().map(|&p| node::cpu_seconds(p)).collect() };
    let cpu_all = || -> Option<f64> { pids.iter().map(|&p| node::cpu_seconds(p)).sum() };
    let rss_all = || -> Option<u64> { pids.iter().map(|&p| node::rss_bytes(p)).sum() };
    let threads = client_threads(opts, workers);
    let exp = stamp::now_ns() / 1_000_000_000 + 86_400;
    let clients = shape.jobs * shape.viewers + shape.watchers;
    let specs: Vec<(SocketAddr, String, String)> = (0..clients)
        .map(|i| {
            let token = wsrelay::auth::mint_hs256(
                node::SECRET.as_bytes(),
                &serde_json::json!({"sub": (i + 1).to_string(), "exp": exp}),
            );
            let groups = if i < shape.jobs * shape.viewers {
                format!(
                    r#"{{"groups": {{"job_events": [{}]}}}}"#,
                    i / shape.viewers + 1
                )
            } else {
                r#"{"groups": {"jobs": ["status_changed"]}}"#.to_owned()
            };
            (client_addrs[i % client_addrs.len()], token, groups)
        })
        .collect();
    let mut pool = ClientPool::start(threads, specs)?;
    pool.ready().await?;
    if opts
        .cluster
        .as_ref()
        .is_some_and(|c| c.protocol != "native")
    {
        // AWX's consumer.subscribe is not acknowledged: give it a moment
        // to reach the emitting node.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    // The producer runs on its own thread so that reading clients cannot
    // delay its schedule (no coordinated omission).
    let total = rate * (opts.warmup + opts.duration);
    let size = opts.size;
    let sink = match (&redis, &inproc) {
        (Some(r), _) if opts.producer == "stream" => Sink::Stream(r.url()),
        (Some(r), _) => Sink::ChannelsRedis(r.url()),
        (None, Some(n)) => Sink::InProc(n.emitter()),
        (None, None) => Sink::Http(addr),
    };
    // The producer reports its own CPU over its whole run (its thread is
    // gone by the time the run's figures are taken).
    let producer = std::thread::spawn(move || {
        let tid = thread_id();
        let before = tid.and_then(thread_cpu);
        let r = produce(sink, shape, total, rate, size);
        let after = tid.and_then(thread_cpu);
        r.map(|(j, s, secs)| {
            (
                j,
                s,
                secs,
                before
                    .zip(after)
                    .map(|(a, b)| (b - a) / secs.max(1e-9) * 100.0),
            )
        })
    });

    tokio::time::sleep(Duration::from_secs(opts.warmup)).await;
    pool.measuring(true);
    let perf = if others.is_empty() {
        node::perf_counters(node.pid, opts.duration)
    } else {
        None
    };
    let backplane0 = if others.is_empty() {
        None
    } else {
        node::backplane_sent(addr).await
    };
    const PUBLISH: &str = "wsrelay_broker_publish_seconds";
    let publish0 = if broker.is_some() {
        node::histogram(addr, PUBLISH).await
    } else {
        None
    };
    let gen_threads = pool.thread_ids();
    let gen0 = (
        own_cpu(),
        gen_threads
            .iter()
            .map(|t| thread_cpu(*t))
            .collect::<Vec<_>>(),
    );
    let kinds = || node::cpu_by_thread_kind(node.pid);
    let kinds0 = kinds();
    // Writes and delivery rounds on the nodes the clients are on.
    let batching = || async {
        let (mut w, mut r, mut d) = (0u64, 0u64, 0u64);
        for a in &client_addrs {
            w += node::metric_sum(*a, "wsrelay_socket_writes_total")
                .await
                .unwrap_or(0);
            r += node::metric_sum(*a, "wsrelay_delivery_rounds_total")
                .await
                .unwrap_or(0);
            d += node::metric_sum(*a, "wsrelay_deliveries_total")
                .await
                .unwrap_or(0);
        }
        (w, r, d)
    };
    let batch0 = batching().await;
    let (t0, r0, cpu0, each0) = (Instant::now(), pool.received(), cpu_all(), per_node());
    let host0 = node::host_ticks();
    let restart = opts
        .cluster
        .as_ref()
        .filter(|c| c.backplane == "nats" && c.broker_restart_at > 0)
        .map(|c| (c.broker_restart_at, Duration::from_millis(c.broker_down_ms)));
    let mut restarting = None;
    let mut timeline = Vec::with_capacity(opts.duration as usize);
    pool.take_window();
    let mut last = (t0, r0);
    for second in 1..=opts.duration {
        tokio::time::sleep_until((t0 + Duration::from_secs(second)).into()).await;
        let now = Instant::now();
        let received = pool.received();
        let window = pool.take_window();
        timeline.push(Sample {
            t: second,
            deliveries_per_sec: (received - last.1) as f64 / (now - last.0).as_secs_f64(),
            p50_us: window.value_at_quantile(0.5),
            p99_us: window.value_at_quantile(0.99),
            rss_bytes: rss_all().unwrap_or(0),
        });
        if let Some(s) = timeline.last() {
            eprint!(
                "\r  {io} t={:>4}s  {:>9.0} deliveries/s  p50 {:>7.2} ms  p99 {:>7.2} ms  lost {}   ",
                s.t,
                s.deliveries_per_sec,
                s.p50_us as f64 / 1000.0,
                s.p99_us as f64 / 1000.0,
                pool.gaps()
            );
        }
        last = (now, received);
        if let (Some((at, down)), true) = (restart, restarting.is_none()) {
            if second == at {
                if let Some(mut b) = broker.take() {
                    eprintln!(
                        "\n  broker: SIGKILL at t={second}s, back after {} ms",
                        down.as_millis()
                    );
                    restarting = Some(tokio::spawn(
                        async move { b.restart(down).await.map(|()| b) },
                    ));
                }
            }
        }
    }
    eprintln!();
    let (t1, r1, cpu1, each1) = (Instant::now(), pool.received(), cpu_all(), per_node());
    let host = host0
        .zip(node::host_ticks())
        .and_then(|(a, b)| node::host_percent(a, b));
    let broker_restarted = restarting.is_some();
    if let Some(r) = restarting {
        broker = Some(r.await??);
    }
    let kinds1 = kinds();
    let batch1 = batching().await;
    let node_deliveries = batch1.2.saturating_sub(batch0.2) as f64;
    let batching = serde_json::json!({
        "frames_per_write": node_deliveries / (batch1.0.saturating_sub(batch0.0).max(1)) as f64,
        "deliveries_per_round": node_deliveries / (batch1.1.saturating_sub(batch0.1).max(1)) as f64,
    });
    let gen1 = (
        own_cpu(),
        gen_threads
            .iter()
            .map(|t| thread_cpu(*t))
            .collect::<Vec<_>>(),
    );
    let backplane1 = if backplane0.is_some() {
        node::backplane_sent(addr).await
    } else {
        None
    };
    let publish1 = if publish0.is_some() {
        node::histogram(addr, PUBLISH).await
    } else {
        None
    };
    let broker_publish_ms = publish0.zip(publish1).and_then(|(a, b)| {
        let q = |q| node::bucket_quantile(&a, &b, q).map(|s| s * 1e3);
        q(0.5).zip(q(0.99))
    });
    pool.measuring(false);
    let rss = rss_all().unwrap_or(0);
    let (job_events, status_events, produce_secs, producer_cpu) = producer
        .join()
        .map_err(|_| anyhow::anyhow!("producer panicked"))??;
    let expected = job_events * shape.viewers as u64 + status_events * shape.watchers as u64;
    let settle = Instant::now();
    while pool.received() < expected && settle.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let counters = perf.and_then(node::perf_result);
    // Where loss happened, in the nodes' own words (wsrelay targets only).
    let mut node_losses = serde_json::Map::new();
    let mut broker_counters = serde_json::Map::new();
    if opts.target == "wsrelay" {
        // In a cluster, which node closed its clients too: one node behind
        // (its viewers starved, or its backplane input late) reads apart
        // from all of them behind.
        let mut closes_by_node = Vec::new();
        for a in std::iter::once(addr).chain(others.iter().map(|n| n.addr)) {
            let mut own = serde_json::Map::new();
            if let Ok(text) = node::metrics(a).await {
                if broker.is_some() {
                    add_counters(&mut broker_counters, &text, &node::BROKER_COUNTERS);
                }
                add_counters(&mut node_losses, &text, &node::LOSS_COUNTERS);
                add_counters(&mut own, &text, &[node::SLOW_CONSUMER_CLOSES]);
            }
            let key = node::SLOW_CONSUMER_CLOSES.0;
            closes_by_node.push(own.get(key).cloned().unwrap_or(0.into()));
        }
        if !others.is_empty() {
            node_losses.insert(
                "slow_consumer_closes_by_node".to_owned(),
                serde_json::Value::Array(closes_by_node),
            );
        }
    }
    let secs = (t1 - t0).as_secs_f64();
    let delivered = (r1 - r0) as f64;
    let lat = pool.latency();
    let (received, duplicates, gaps) = (pool.received(), pool.duplicates(), pool.gaps());
    pool.stop();
    // The generator's CPU, per thread: a thread near a whole core, or a
    // producer behind its schedule, means the generator may have set the
    // pace; the node's workers near a whole core each means the node did.
    let pct = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) => (b - a) / secs * 100.0,
        _ => 0.0,
    };
    let generator_cpu = pct(gen0.0, gen1.0);
    let busiest = gen0
        .1
        .iter()
        .zip(&gen1.1)
        .map(|(a, b)| pct(*a, *b))
        .fold(0.0, f64::max);
    let producer_cpu = producer_cpu.unwrap_or(0.0);
    let achieved_rate = job_events as f64 / produce_secs.max(1e-9);
    let node_cpu = match (cpu0, cpu1) {
        (Some(a), Some(b)) => (b - a) / secs * 100.0,
        _ => f64::NAN,
    };
    let node_threads = match (kinds0, kinds1) {
        (Some(a), Some(b)) => serde_json::json!({
            "workers_cpu_percent": (b[0] - a[0]) / secs * 100.0,
            "io_uring_kernel_workers_cpu_percent": (b[1] - a[1]) / secs * 100.0,
            "other_threads_cpu_percent": (b[2] - a[2]) / secs * 100.0,
        }),
        _ => serde_json::Value::Null,
    };
    let nodes = 1 + others.len();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let mut sat = Vec::new();
    let busiest_node = each0
        .iter()
        .zip(&each1)
        .map(|(a, b)| pct(*a, *b))
        .fold(0.0, f64::max);
    if node_cpu >= 85.0 * (workers * nodes) as f64 || busiest_node >= 85.0 * workers as f64 {
        sat.push("node");
    }
    if busiest >= 85.0 || producer_cpu >= 85.0 || achieved_rate < 0.95 * rate as f64 {
        sat.push("generator");
    }
    // Clients closed as slow consumers: the readers or the node fell
    // behind, and what the counters show after that is no steady state
    // (CPU falls once the clients are gone).
    let closed = node_losses
        .get("slow_consumer_closes")
        .and_then(|v| v.as_u64())
        .unwrap_or(0);
    if closed > 0 {
        sat.push("clients-closed");
    }
    // Node and generator together near every core, or the machine as a
    // whole (other processes, the hypervisor's steal) near full: neither
    // side had room, and the figures are the machine's, not either side's.
    let host_full = host.is_some_and(|(busy, _)| busy >= 85.0);
    if sat.is_empty() && (node_cpu + generator_cpu >= 85.0 * cores || host_full) {
        sat.push("host");
    }
    let saturated = if sat.is_empty() {
        "neither".to_owned()
    } else {
        sat.join("+")
    };
    Ok(Report {
        io: io.to_owned(),
        workers,
        client_threads: threads,
        generator_cpu_percent: generator_cpu,
        busiest_client_thread_percent: busiest,
        producer_cpu_percent: producer_cpu,
        saturated,
        node_threads,
        batching,
        rate,
        achieved_rate,
        deliveries_per_sec: delivered / secs,
        events_per_sec: rate as f64,
        p50_us: lat.value_at_quantile(0.5),
        p90_us: lat.value_at_quantile(0.9),
        p99_us: lat.value_at_quantile(0.99),
        p999_us: lat.value_at_quantile(0.999),
        max_us: lat.max(),
        expected,
        received,
        lost: expected.saturating_sub(received) + gaps,
        duplicates,
        server_cpu_percent: node_cpu,
        host_cpu_percent: host.map(|h| h.0),
        host_steal_percent: host.map(|h| h.1),
        server_rss_bytes: rss,
        syscalls_per_delivery: counters.map(|(s, _)| s as f64 / delivered.max(1.0)),
        uring_submissions_per_delivery: counters.map(|(_, u)| u as f64 / delivered.max(1.0)),
        node_losses: serde_json::Value::Object(node_losses),
        broker_counters: serde_json::Value::Object(broker_counters),
        broker_restarted,
        broker_publish_ms,
        backplane_events_per_sec: backplane0
            .zip(backplane1)
            .map(|(a, b)| (b.0 - a.0) as f64 / secs),
        backplane_bytes_per_sec: backplane0
            .zip(backplane1)
            .map(|(a, b)| (b.1 - a.1) as f64 / secs),
        backplane_events_per_message: backplane0
            .zip(backplane1)
            .map(|(a, b)| (b.0 - a.0) as f64 / (b.2 - a.2).max(1) as f64),
        timeline,
    })
}

async fn subscriber(
    addr: SocketAddr,
    token: String,
    groups: String,
    tally: Arc<Tally>,
    setup: std::rc::Rc<tokio::sync::Semaphore>,
    ready: tokio::sync::oneshot::Sender<anyhow::Result<()>>,
) {
    let joined = {
        let _permit = setup.acquire().await;
        Client::join(addr, &token, &groups).await
    };
    let mut client = match joined {
        Ok(c) => {
            let _ = ready.send(Ok(()));
            c
        }
        Err(e) => {
            let _ = ready.send(Err(e.into()));
            return;
        }
    };
    // Each client holds one group, so one counter to follow.
    let mut next = 0u64;
    while let Ok(text) = client.next_text().await {
        let Some((seq, ns)) = stamp::read(&text) else {
            continue;
        };
        if seq < next {
            tally.duplicates.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        if seq > next {
            tally.gaps.fetch_add(seq - next, Ordering::Relaxed);
        }
        next = seq + 1;
        tally.received.fetch_add(1, Ordering::Relaxed);
        if tally.measuring.load(Ordering::Relaxed) {
            let us = stamp::now_ns().saturating_sub(ns) / 1000;
            let _ = tally.latency.lock().unwrap().record(us.max(1));
            let _ = tally.window.lock().unwrap().record(us.max(1));
        }
    }
}

/// How many client threads a run gets: as asked, or every core the node's
/// Adds each `(key, prefix)` counter from a node's metrics text (every
/// series whose line starts with the prefix) to `into`.
fn add_counters(
    into: &mut serde_json::Map<String, serde_json::Value>,
    text: &str,
    counters: &[(&str, &str)],
) {
    for (key, prefix) in counters {
        let v: u64 = text
            .lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum();
        let e = into.entry((*key).to_owned()).or_insert(0.into());
        *e = (e.as_u64().unwrap_or(0) + v).into();
    }
}

/// workers do not take (at least one).
fn client_threads(opts: &RunOptions, workers: usize) -> usize {
    if opts.client_threads > 0 {
        return opts.client_threads;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    // Every node of a cluster runs `workers` workers, and a broker wants a
    // core of its own: the clients get what is left, or one cluster run on
    // a many-core machine oversubscribes it and reports the clients' wait.
    let taken = match &opts.cluster {
        Some(c) => c.nodes * workers + usize::from(c.backplane == "nats"),
        None => workers,
    };
    cores.saturating_sub(taken).max(1)
}

/// The subscribing clients, spread over threads, each thread with its own
/// current-thread runtime and its own tally (counters and histograms that
/// only it writes to, read by the main thread once a second).
struct ClientPool {
    tallies: Vec<Arc<Tally>>,
    ready: Vec<tokio::sync::oneshot::Receiver<anyhow::Result<Option<u32>>>>,
    tids: Mutex<Vec<u32>>,
    stop: Arc<tokio::sync::Notify>,
    stopped: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl ClientPool {
    fn start(
        threads: usize,
        specs: Vec<(SocketAddr, String, String)>,
    ) -> anyhow::Result<ClientPool> {
        let mut per: Vec<Vec<(SocketAddr, String, String)>> = vec![Vec::new(); threads];
        for (i, s) in specs.into_iter().enumerate() {
            per[i % threads].push(s);
        }
        let stop = Arc::new(tokio::sync::Notify::new());
        let stopped = Arc::new(AtomicBool::new(false));
        let mut pool = ClientPool {
            tallies: Vec::new(),
            ready: Vec::new(),
            tids: Mutex::new(Vec::new()),
            stop: stop.clone(),
            stopped: stopped.clone(),
            threads: Vec::new(),
        };
        for (t, mine) in per.into_iter().enumerate() {
            let tally = Arc::new(Tally::new()?);
            let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
            let (stop, stopped, tally2) = (stop.clone(), stopped.clone(), tally.clone());
            let handle = std::thread::Builder::new()
                .name(format!("loadtest-clients-{t}"))
                .spawn(move || {
                    let rt = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => rt,
                        Err(e) => return drop(ready_tx.send(Err(e.into()))),
                    };
                    let local = tokio::task::LocalSet::new();
                    local.block_on(&rt, async move {
                        // Connections are set up 64 at a time per thread:
                        // daphne's accept backlog refuses a burst of
                        // hundreds, and setup is not what is measured.
                        let setup = std::rc::Rc::new(tokio::sync::Semaphore::new(64));
                        let mut readies = Vec::new();
                        for (addr, token, groups) in mine {
                            let (tx, rx) = tokio::sync::oneshot::channel();
                            readies.push(rx);
                            tokio::task::spawn_local(subscriber(
                                addr,
                                token,
                                groups,
                                tally2.clone(),
                                setup.clone(),
                                tx,
                            ));
                        }
                        for rx in readies {
                            match rx.await {
                                Ok(Ok(())) => {}
                                Ok(Err(e)) => return drop(ready_tx.send(Err(e))),
                                Err(_) => {
                                    return drop(
                                        ready_tx
                                            .send(Err(anyhow::anyhow!("subscriber task ended"))),
                                    )
                                }
                            }
                        }
                        let _ = ready_tx.send(Ok(thread_id()));
                        while !stopped.load(Ordering::Relaxed) {
                            stop.notified().await;
                        }
                    });
                })?;
            pool.tallies.push(tally);
            pool.ready.push(ready_rx);
            pool.threads.push(handle);
        }
        Ok(pool)
    }

    /// Waits until every client is subscribed.
    async fn ready(&mut self) -> anyhow::Result<()> {
        for rx in self.ready.drain(..) {
            let tid = rx.await.context("client thread")??;
            self.tids.lock().unwrap().extend(tid);
        }
        Ok(())
    }

    fn thread_ids(&self) -> Vec<u32> {
        self.tids.lock().unwrap().clone()
    }

    fn measuring(&self, on: bool) {
        for t in &self.tallies {
            t.measuring.store(on, Ordering::Relaxed);
        }
    }

    fn sum(&self, f: impl Fn(&Tally) -> &AtomicU64) -> u64 {
        self.tallies
            .iter()
            .map(|t| f(t).load(Ordering::Relaxed))
            .sum()
    }

    fn received(&self) -> u64 {
        self.sum(|t| &t.received)
    }

    fn duplicates(&self) -> u64 {
        self.sum(|t| &t.duplicates)
    }

    fn gaps(&self) -> u64 {
        self.sum(|t| &t.gaps)
    }

    /// The latencies of the last window, merged, and a fresh window.
    fn take_window(&self) -> Histogram<u64> {
        let mut out = Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid bounds");
        for t in &self.tallies {
            let mut w = t.window.lock().unwrap();
            let _ = out.add(&*w);
            w.reset();
        }
        out
    }

    fn latency(&self) -> Histogram<u64> {
        let mut out = Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid bounds");
        for t in &self.tallies {
            let _ = out.add(&*t.latency.lock().unwrap());
        }
        out
    }

    fn stop(&mut self) {
        self.stopped.store(true, Ordering::Relaxed);
        self.stop.notify_waiters();
        for h in self.threads.drain(..) {
            let _ = h.join();
        }
    }
}

impl Drop for ClientPool {
    fn drop(&mut self) {
        self.stop();
    }
}

/// This thread's kernel id, from /proc (for its CPU time).
fn thread_id() -> Option<u32> {
    let link = std::fs::read_link("/proc/thread-self").ok()?;
    link.file_name()?.to_str()?.parse().ok()
}

/// CPU seconds a thread of this process has used.
fn thread_cpu(tid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// CPU seconds this whole process has used.
fn own_cpu() -> Option<f64> {
    node::cpu_seconds(std::process::id())
}

/// Where the producer writes.
enum Sink {
    /// wsrelay's `POST /api/v1/emit`, one keep-alive connection.
    Http(SocketAddr),
    /// AWX's producers' format: `group_send` into channels_redis.
    ChannelsRedis(String),
    /// wsrelay's native Redis Stream.
    Stream(String),
    /// The in-process `Emitter` of a node inside the harness.
    InProc(wsrelay::Emitter),
}

/// Emits `total` job events (and the status changes among them) at `rate`
/// job events per second on an open-loop schedule; returns `(job events,
/// status events, seconds it took)`.
fn produce(
    sink: Sink,
    shape: Shape,
    total: u64,
    rate: u64,
    size: usize,
) -> anyhow::Result<(u64, u64, f64)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let mut out = match sink {
            Sink::Http(addr) => {
                let conn = TcpStream::connect(addr).await?;
                conn.set_nodelay(true)?;
                Out::Http(conn)
            }
            Sink::ChannelsRedis(url) => Out::Layer(crate::layer::GroupSender::connect(&url).await?),
            Sink::Stream(url) => Out::Stream(
                deadpool_redis::redis::Client::open(url.as_str())?
                    .get_multiplexed_async_connection()
                    .await?,
            ),
            Sink::InProc(emitter) => Out::InProc(emitter),
        };
        let start = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let (mut sent, mut status) = (0u64, 0u64);
        let mut counters = vec![0u64; shape.jobs];
        let mut body = String::new();
        let mut batch: Vec<(String, String)> = Vec::new();
        while sent < total {
            tick.tick().await;
            // At most 5,000 events a request (about 5 MiB at 1 KiB, under the
            // node's 16 MiB body limit); a producer behind its schedule sends
            // more requests, not bigger ones.
            let due = ((start.elapsed().as_secs_f64() * rate as f64) as u64)
                .min(total)
                .min(sent + 5000);
            if due <= sent {
                continue;
            }
            batch.clear();
            for k in sent..due {
                let job = (k % shape.jobs as u64) as usize;
                let payload = stamp::job_event(job + 1, counters[job], stamp::now_ns(), size);
                batch.push((format!("job_events-{}", job + 1), payload));
                counters[job] += 1;
                if shape.status_every > 0 && (k + 1) % shape.status_every == 0 {
                    let payload = stamp::status_event(job + 1, status, stamp::now_ns());
                    batch.push((STATUS_GROUP.to_owned(), payload));
                    status += 1;
                }
            }
            match &mut out {
                Out::Http(conn) => {
                    body.clear();
                    body.push('[');
                    for (i, (group, payload)) in batch.iter().enumerate() {
                        if i > 0 {
                            body.push(',');
                        }
                        body.push_str(&format!(r#"{{"group":"{group}","payload":"#));
                        body.push_str(payload);
                        body.push('}');
                    }
                    body.push(']');
                    let accepted = post(conn, &body).await?;
                    if accepted != batch.len() as u64 {
                        bail!("the node accepted {accepted} of {}", batch.len());
                    }
                }
                Out::Layer(sender) => sender.send(&batch).await?,
                Out::Stream(conn) => {
                    wsrelay::producer::xadd(conn, "wsrelay:events", &batch).await?;
                }
                Out::InProc(emitter) => {
                    emitter
                        .emit_many(batch.iter().map(|(g, p)| (g.as_str(), p.as_str())))
                        .await?;
                }
            }
            sent = due;
        }
        anyhow::Ok((sent, status, start.elapsed().as_secs_f64()))
    })
}

enum Out {
    Http(TcpStream),
    Layer(crate::layer::GroupSender),
    Stream(deadpool_redis::redis::aio::MultiplexedConnection),
    InProc(wsrelay::Emitter),
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
