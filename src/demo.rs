//! `wsrelay demo`: a node plus a simulated playbook storm in one process.
//! Real websocket clients connect over loopback, subscribe the way the AWX
//! UI does, and measure what they receive; the figures print every second.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::auth::mint_hs256;
use crate::client::Client;
use crate::config::Config;
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
    /// Worker threads of the node (0: one per core)
    #[arg(long, default_value_t = 0)]
    pub workers: usize,
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
    let secret: [u8; 32] = rand::random();
    let secret: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    let node = Node::start(Config {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        workers: opts.workers,
        jwt_secret: Some(secret.clone()),
        ..Config::default()
    })?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    let summary = local.block_on(&rt, storm(&node, opts, secret.as_bytes()));
    node.shutdown();
    summary
}

struct Tally {
    received: Cell<u64>,
    out_of_order: Cell<u64>,
    window: RefCell<Histogram<u64>>,
    total: RefCell<Histogram<u64>>,
}

async fn storm(node: &Node, opts: &DemoOptions, secret: &[u8]) -> anyhow::Result<Summary> {
    let addr = node.local_addr();
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
        tokio::task::spawn_local(viewer(addr, token, groups, tally.clone(), start, tx));
    }
    for rx in ready {
        rx.await??;
    }

    let emitter = node.emitter();
    let metrics = node.metrics().clone();
    let deadline = opts.duration.map(|s| start + Duration::from_secs(s));
    let mut ctrl_c = std::pin::pin!(tokio::signal::ctrl_c());
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let emit_start = Instant::now();
    let (mut sent, mut status_sent, mut expected) = (0u64, 0u64, 0u64);
    let mut counters = vec![0u64; opts.jobs];
    let mut last_report = (Instant::now(), 0u64, 0u64);
    if !opts.quiet {
        println!(
            "wsrelay demo: node on {addr}, {} jobs x {} viewers + {} status watchers, {} events/s",
            opts.jobs, opts.viewers, opts.watchers, opts.rate
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
            let ns = start.elapsed().as_nanos() as u64;
            batch.push((
                format!("job_events-{}", job + 1),
                job_event(job + 1, counters[job], ns),
            ));
            expected += opts.viewers as u64;
            sent += 1;
            if opts.status_every > 0 && sent % opts.status_every == 0 {
                status_sent += 1;
                let ns = start.elapsed().as_nanos() as u64;
                batch.push((
                    "jobs-status_changed".to_owned(),
                    status_event(job + 1, status_sent, ns),
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
                metrics.dropped.get(),
                metrics.total_connections(),
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
        server_dropped: metrics.dropped.get(),
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
    start: Instant,
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
        let Some((seq, ns)) = stamp(&text) else {
            continue;
        };
        let latency_us = (start.elapsed().as_nanos() as u64).saturating_sub(ns) / 1000;
        tally.received.set(tally.received.get() + 1);
        if seq <= last_seq {
            tally.out_of_order.set(tally.out_of_order.get() + 1);
        }
        last_seq = seq;
        let _ = tally.window.borrow_mut().record(latency_us.max(1));
        let _ = tally.total.borrow_mut().record(latency_us.max(1));
    }
}

/// Reads the `"emitted_ns"` and `"counter"` fields that open every demo
/// payload, without parsing the rest.
fn stamp(text: &[u8]) -> Option<(u64, u64)> {
    let digits = |s: &[u8]| -> Option<(u64, usize)> {
        let n = s.iter().take_while(|b| b.is_ascii_digit()).count();
        std::str::from_utf8(&s[..n])
            .ok()?
            .parse()
            .ok()
            .map(|v| (v, n))
    };
    let rest = text.strip_prefix(b"{\"emitted_ns\": ")?;
    let (ns, n) = digits(rest)?;
    let rest = rest[n..].strip_prefix(b", \"counter\": ")?;
    let (seq, _) = digits(rest)?;
    Some((seq, ns))
}

/// A playbook event shaped like AWX's `job_events-<id>` payloads (about
/// 1 KiB, ANSI-coloured stdout).
fn job_event(job: usize, counter: u64, ns: u64) -> String {
    format!(
        concat!(
            r#"{{"emitted_ns": {ns}, "counter": {c}, "id": {id}, "job": {job}, "group_name": "job_events", "#,
            r#""type": "job_event", "event": "runner_on_ok", "event_level": 3, "failed": false, "changed": true, "#,
            r#""uuid": "6c9c3c0e-2f9a-4c7b-9a1e-{c:012}", "parent_uuid": "0242ac12-0002-1c3b-6a1c-{job:012}", "#,
            r#""created": "2026-11-25T10:00:00.000000Z", "modified": "2026-11-25T10:00:00.000000Z", "#,
            r#""url": "/api/v2/job_events/{id}/", "play": "Configure web tier", "role": "nginx", "#,
            r#""task": "Render nginx site configuration", "start_line": {c}, "end_line": {c1}, "#,
            r#""stdout": "\u001b[0;33mchanged: [web-{h:03}.example.internal] => (item=site-{c})\u001b[0m", "#,
            r#""event_data": {{"host": "web-{h:03}.example.internal", "remote_addr": "10.20.{h}.7", "#,
            r#""task_action": "ansible.builtin.template", "resolved_action": "ansible.builtin.template", "#,
            r#""task_path": "/runner/project/roles/nginx/tasks/main.yml:42", "play_pattern": "webservers", "#,
            r#""res": {{"changed": true, "checksum": "a3f1c2d4e5b6978877665544332211ffeeddccbb", "#,
            r#""dest": "/etc/nginx/sites-enabled/site-{c}.conf", "gid": 0, "group": "root", "mode": "0644", "#,
            r#""owner": "root", "size": 1873, "state": "file", "uid": 0}}, "duration": 0.412}}}}"#
        ),
        ns = ns,
        c = counter,
        c1 = counter + 1,
        id = job as u64 * 1_000_000 + counter,
        job = job,
        h = counter % 250,
    )
}

fn status_event(job: usize, seq: u64, ns: u64) -> String {
    format!(
        r#"{{"emitted_ns": {ns}, "counter": {seq}, "unified_job_id": {job}, "status": "running", "type": "job", "group_name": "jobs", "instance_group_name": "default"}}"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_are_json_and_stamped() {
        let e = job_event(7, 42, 123_456);
        let v: serde_json::Value = serde_json::from_str(&e).expect("valid json");
        assert_eq!(v["job"], 7);
        assert_eq!(v["group_name"], "job_events");
        assert!(
            (900..1500).contains(&e.len()),
            "about 1 KiB, got {}",
            e.len()
        );
        assert_eq!(stamp(e.as_bytes()), Some((42, 123_456)));
        let s = status_event(3, 9, 77);
        serde_json::from_str::<serde_json::Value>(&s).expect("valid json");
        assert_eq!(stamp(s.as_bytes()), Some((9, 77)));
        assert_eq!(stamp(b"{\"accept\": true}"), None);
    }
}
