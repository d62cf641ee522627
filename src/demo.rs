//! `wsrelay demo`: a local cluster (three nodes by default, linked by the
//! backplane) plus a simulated playbook storm, in one process. Events are
//! emitted on the first node; real websocket clients spread over all nodes
//! connect over loopback, subscribe the way the AWX UI does, and measure
//! what they receive; the figures print every second.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::auth::mint_hs256;
use crate::backplane::PeerSpec;
use crate::client::Client;
use crate::config::Config;
use crate::payload;
use crate::server::Node;

/// The storm's shape.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoOptions {
    /// Concurrent jobs emitting playbook events
    #[arg(long, default_value_t = 20)]
    pub jobs: usize,
    /// Websocket viewers per job (subscribed to job_events-<id>)
    #[arg(long, default_value_t = 5)]
    pub viewers: usize,
    /// Clients watching jobs-status_changed
    #[arg(long, default_value_t = 20)]
    pub watchers: usize,
    /// Job events per second over all jobs
    #[arg(long, default_value_t = 20_000)]
    pub rate: u64,
    /// A status change is emitted every this many job events
    #[arg(long, default_value_t = 100)]
    pub status_every: u64,
    /// Stop after this many seconds (default: run until Ctrl-C)
    #[arg(long)]
    pub duration: Option<u64>,
    /// Worker threads per node (0: one per core)
    #[arg(long, default_value_t = 0)]
    pub workers: usize,
    /// Nodes in the local cluster (1: a single node, no backplane)
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// Print nothing while running (for tests)
    #[arg(long)]
    pub quiet: bool,
}

impl Default for DemoOptions {
    fn default() -> Self {
        Self {
            jobs: 20,
            viewers: 5,
            watchers: 20,
            rate: 20_000,
            status_every: 100,
            duration: None,
            workers: 0,
            nodes: 3,
            quiet: false,
        }
    }
}

/// What a demo run measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub events: u64,
    pub expected_deliveries: u64,
    pub received: u64,
    pub out_of_order: u64,
    pub server_dropped: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub seconds: f64,
}

impl Summary {
    pub fn lost(&self) -> u64 {
        self.expected_deliveries.saturating_sub(self.received)
    }
}

/// Runs the demo until `duration` or Ctrl-C.
pub fn run(opts: &DemoOptions) -> anyhow::Result<Summary> {
    let hex = |b: [u8; 32]| -> String { b.iter().map(|b| format!("{b:02x}")).collect() };
    let secret = hex(rand::random());
    let backplane = hex(rand::random());
    let clients = opts.jobs * opts.viewers + opts.watchers;
    let config = |i: usize, admin: Option<SocketAddr>| Config {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        // The first node's status page, for watching the storm in a
        // browser; the others serve none.
        admin_listen: admin.filter(|_| i == 0),
        workers: opts.workers,
        jwt_secret: Some(secret.as_str().into()),
        node_id: format!("demo-{i}"),
        backplane_secret: Some(backplane.as_str().into()),
        // Room for the demo's clients: no open-files warning for a limit
        // the demo never comes near.
        max_connections: (clients + 64).max(256),
        ..Config::default()
    };
    let default_admin = Config::default().admin_listen;
    let mut nodes = Vec::with_capacity(opts.nodes.max(1));
    for i in 0..opts.nodes.max(1) {
        let node = match Node::start(config(i, default_admin)) {
            // The usual status port is taken (another node runs here): any
            // free port will do for the demo.
            Err(crate::server::StartError::AdminBind { .. }) => {
                Node::start(config(i, Some(SocketAddr::from(([127, 0, 0, 1], 0)))))?
            }
            other => other?,
        };
        nodes.push(node);
    }
    // A full mesh: every node dials every other.
    for n in &nodes {
        let peers = nodes
            .iter()
            .filter(|o| o.local_addr() != n.local_addr())
            .map(|o| PeerSpec::parse(&format!("ws://{}", o.local_addr())))
            .collect::<Result<Vec<_>, _>>()?;
        n.set_peers(peers);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    let summary = local.block_on(&rt, async {
        linked(&nodes).await?;
        storm(&nodes, opts, secret.as_bytes()).await
    });
    // Unlink first, so no node sees its peers vanish and redials them:
    // every outbound link is down before any node stops (bounded).
    for n in &nodes {
        n.set_peers(Vec::new());
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline
        && nodes.iter().any(|n| {
            n.metrics().render().lines().any(|l| {
                l.starts_with("wsrelay_backplane_link_up{")
                    && l.contains("direction=\"out\"")
                    && l.ends_with(" 1")
            })
        })
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    for n in nodes {
        n.shutdown();
    }
    summary
}

/// Waits until every node has a link from every other (bounded).
async fn linked(nodes: &[Node]) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    for n in nodes {
        loop {
            let up = n
                .metrics()
                .render()
                .lines()
                .filter(|l| {
                    l.starts_with("wsrelay_backplane_link_up{")
                        && l.contains("direction=\"in\"")
                        && l.ends_with(" 1")
                })
                .count();
            if up + 1 >= nodes.len() {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the demo's nodes did not link up"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(())
}

struct Tally {
    received: Cell<u64>,
    out_of_order: Cell<u64>,
    window: RefCell<Histogram<u64>>,
    total: RefCell<Histogram<u64>>,
}

async fn storm(nodes: &[Node], opts: &DemoOptions, secret: &[u8]) -> anyhow::Result<Summary> {
    let node = &nodes[0];
    let addrs: Vec<SocketAddr> = nodes.iter().map(Node::local_addr).collect();
    let start = Instant::now();
    let tally = Rc::new(Tally {
        received: Cell::new(0),
        out_of_order: Cell::new(0),
        window: RefCell::new(Histogram::new_with_bounds(1, 60_000_000, 3)?),
        total: RefCell::new(Histogram::new_with_bounds(1, 60_000_000, 3)?),
    });
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs()
        + 86_400;
    let mut ready = Vec::new();
    for i in 0..opts.jobs * opts.viewers + opts.watchers {
        let token = mint_hs256(
            secret,
            &serde_json::json!({"sub": (i + 1).to_string(), "exp": exp}),
        );
        let groups = if i < opts.jobs * opts.viewers {
            format!(
                r#"{{"groups": {{"job_events": [{}]}}}}"#,
                i / opts.viewers + 1
            )
        } else {
            r#"{"groups": {"jobs": ["status_changed"]}}"#.to_owned()
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        ready.push(rx);
        let addr = addrs[i % addrs.len()];
        tokio::task::spawn_local(viewer(addr, token, groups, tally.clone(), tx));
    }
    for rx in ready {
        rx.await??;
    }

    let emitter = node.emitter();
    let dropped = || nodes.iter().map(|n| n.metrics().dropped.get()).sum::<u64>();
    let clients = || {
        nodes
            .iter()
            .map(|n| n.metrics().total_connections())
            .sum::<i64>()
    };
    let deadline = opts.duration.map(|s| start + Duration::from_secs(s));
    let mut ctrl_c = std::pin::pin!(tokio::signal::ctrl_c());
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let emit_start = Instant::now();
    let (mut sent, mut status_sent, mut expected) = (0u64, 0u64, 0u64);
    let mut counters = vec![0u64; opts.jobs];
    let mut last_report = (Instant::now(), 0u64, 0u64);
    if !opts.quiet {
        let status = nodes[0].admin_addr().map_or(String::new(), |a| {
            format!("; watch it at http://{a}/status")
        });
        println!(
            "wsrelay demo: {} linked node(s) on {} ({} workers each, io {}); events emitted on the first, \
             {} jobs x {} viewers + {} status watchers spread over all, {} events/s{status}",
            nodes.len(),
            addrs
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            node.workers(),
            node.io_name(),
            opts.jobs,
            opts.viewers,
            opts.watchers,
            opts.rate
        );
    }
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = &mut ctrl_c => break,
        }
        let now = Instant::now();
        if deadline.is_some_and(|d| now >= d) {
            break;
        }
        // Open loop: the schedule says how many events are due by now,
        // whatever the relay did with the earlier ones.
        let due = (now - emit_start).as_secs_f64() * opts.rate as f64;
        let mut batch = Vec::new();
        while (sent as f64) < due && batch.len() < 10_000 {
            let job = (sent as usize) % opts.jobs;
            counters[job] += 1;
            let ns = payload::now_ns();
            batch.push((
                format!("job_events-{}", job + 1),
                payload::job_event(job + 1, counters[job], ns, 1024),
            ));
            expected += opts.viewers as u64;
            sent += 1;
            if opts.status_every > 0 && sent % opts.status_every == 0 {
                status_sent += 1;
                let ns = payload::now_ns();
                batch.push((
                    "jobs-status_changed".to_owned(),
                    payload::status_event(job + 1, status_sent, ns),
                ));
                expected += opts.watchers as u64;
            }
        }
        if !batch.is_empty() {
            emitter
                .emit_many(batch.iter().map(|(g, p)| (g.as_str(), p.as_str())))
                .await?;
        }
        if now - last_report.0 >= Duration::from_secs(1) && !opts.quiet {
            let secs = (now - last_report.0).as_secs_f64();
            let received = tally.received.get();
            let mut window = tally.window.borrow_mut();
            println!(
                "t={:>4.0}s  in {:>8.0} ev/s  out {:>9.0} deliveries/s  p50 {:>7.2} ms  p99 {:>7.2} ms  dropped {}  clients {}",
                start.elapsed().as_secs_f64(),
                (sent - last_report.1) as f64 / secs,
                (received - last_report.2) as f64 / secs,
                window.value_at_quantile(0.5) as f64 / 1000.0,
                window.value_at_quantile(0.99) as f64 / 1000.0,
                dropped(),
                clients(),
            );
            window.reset();
            last_report = (now, sent, received);
        }
    }
    // Let in-flight events land, bounded.
    let settle = Instant::now();
    while tally.received.get() < expected && settle.elapsed() < Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let total = tally.total.borrow();
    let summary = Summary {
        events: sent + status_sent,
        expected_deliveries: expected,
        received: tally.received.get(),
        out_of_order: tally.out_of_order.get(),
        server_dropped: dropped(),
        p50_us: total.value_at_quantile(0.5),
        p99_us: total.value_at_quantile(0.99),
        seconds: emit_start.elapsed().as_secs_f64(),
    };
    if !opts.quiet {
        println!(
            "done: {} events, {} of {} deliveries received ({} lost, {} out of order, {} dropped by the server), \
             {:.0} deliveries/s, p50 {:.2} ms, p99 {:.2} ms",
            summary.events,
            summary.received,
            summary.expected_deliveries,
            summary.lost(),
            summary.out_of_order,
            summary.server_dropped,
            summary.received as f64 / summary.seconds,
            summary.p50_us as f64 / 1000.0,
            summary.p99_us as f64 / 1000.0,
        );
    }
    Ok(summary)
}

async fn viewer(
    addr: SocketAddr,
    token: String,
    groups: String,
    tally: Rc<Tally>,
    ready: tokio::sync::oneshot::Sender<anyhow::Result<()>>,
) {
    let mut client = match Client::join(addr, &token, &groups).await {
        Ok(c) => {
            let _ = ready.send(Ok(()));
            c
        }
        Err(e) => {
            let _ = ready.send(Err(e.into()));
            return;
        }
    };
    let mut last_seq = 0u64;
    while let Ok(text) = client.next_text().await {
        let Some((seq, ns)) = payload::read(&text) else {
            continue;
        };
        let latency_us = payload::now_ns().saturating_sub(ns) / 1000;
        tally.received.set(tally.received.get() + 1);
        if seq <= last_seq {
            tally.out_of_order.set(tally.out_of_order.get() + 1);
        }
        last_seq = seq;
        let _ = tally.window.borrow_mut().record(latency_us.max(1));
        let _ = tally.total.borrow_mut().record(latency_us.max(1));
    }
}
