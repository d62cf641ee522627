//! `subscribe`: what one small subscribe costs while the node holds many
//! groups, alone and while other connections keep switching group sets.
//!
//! `--held` groups are spread over connections of `--per-connection`
//! groups each; with `--peer` a second node is linked, so every subscribe
//! also waits for the peer to apply the interest (as in a cluster). Then
//! one client subscribes to a one-group set and back `--samples` times,
//! timed from send to reply, while `--churn` connections each keep
//! replacing their whole set.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use wsrelay::client::Client;

use crate::node;

#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Distinct groups held on the node
    #[arg(long, default_value_t = 100_000)]
    pub held: usize,
    /// Groups per holding connection (at most the node's --max-groups)
    #[arg(long, default_value_t = 1000)]
    pub per_connection: usize,
    /// Timed subscribes
    #[arg(long, default_value_t = 200)]
    pub samples: usize,
    /// Connections replacing their whole group set in a loop meanwhile
    #[arg(long, default_value_t = 0)]
    pub churn: usize,
    /// Link a second node, so each subscribe waits for its interest ack
    #[arg(long)]
    pub peer: bool,
    /// I/O driver of the node: epoll or uring
    #[arg(long, default_value = "uring")]
    pub io: String,
    /// Worker threads of the node
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Write the JSON report here as well
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

pub fn run(opts: &Options) -> anyhow::Result<()> {
    if opts.per_connection == 0 || opts.per_connection > 1024 || opts.samples == 0 {
        bail!("--per-connection must be 1 to 1024 and --samples at least 1");
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    let report = local.block_on(&rt, measure(opts))?;
    println!(
        "\nsubscribe: {} groups held, churn {}, peer {} ({} worker(s), {})",
        opts.held, opts.churn, opts.peer, opts.workers, opts.io
    );
    println!(
        "one-group subscribe: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; node RSS {:.0} MiB; churn replaced {} sets",
        report["p50_ms"].as_f64().unwrap_or(0.0),
        report["p99_ms"].as_f64().unwrap_or(0.0),
        report["max_ms"].as_f64().unwrap_or(0.0),
        report["node_rss_bytes"].as_f64().unwrap_or(0.0) / 1048576.0,
        report["churn_sets"],
    );
    println!("{report}");
    if let Some(p) = &opts.json {
        std::fs::write(p, serde_json::to_string_pretty(&report)?)?;
    }
    Ok(())
}

fn groups_message(prefix: &str, from: usize, n: usize) -> String {
    let ids: Vec<String> = (from..from + n).map(|i| i.to_string()).collect();
    format!(r#"{{"groups": {{"{prefix}": [{}]}}}}"#, ids.join(","))
}

async fn measure(opts: &Options) -> anyhow::Result<serde_json::Value> {
    let token = |sub: usize| {
        let exp = wsrelay::payload::now_ns() / 1_000_000_000 + 86_400;
        wsrelay::auth::mint_hs256(
            node::SECRET.as_bytes(),
            &serde_json::json!({"sub": sub.to_string(), "exp": exp}),
        )
    };
    // Paced subscribes would time the pacing, not the node.
    let extra = [
        "--max-groups",
        "1024",
        "--subscribe-rate",
        "100000",
        "--max-node-groups",
        "10000000",
    ];
    let (node, _others) = if opts.peer {
        let (first, mut rest, _) =
            node::start_cluster(&opts.io, opts.workers, 2, "native", "mesh", &extra).await?;
        // Clients on the second node: its subscribes wait for the first.
        (rest.remove(0), vec![first])
    } else {
        (
            node::start(&opts.io, opts.workers, &extra).await?,
            Vec::new(),
        )
    };
    let holders = opts.held.div_ceil(opts.per_connection);
    let mut held = Vec::with_capacity(holders);
    for h in 0..holders {
        let n = opts.per_connection.min(opts.held - h * opts.per_connection);
        let msg = groups_message("held", h * opts.per_connection, n);
        let c = Client::join(node.addr, &token(h + 1), &msg)
            .await
            .with_context(|| format!("holder {h}"))?;
        held.push(c);
    }
    let stop = std::rc::Rc::new(std::cell::Cell::new(false));
    let churned = std::rc::Rc::new(std::cell::Cell::new(0u64));
    let mut churners = Vec::new();
    for k in 0..opts.churn {
        let addr = node.addr;
        let t = token(1_000_000 + k);
        let (stop, churned) = (stop.clone(), churned.clone());
        let per = opts.per_connection;
        churners.push(tokio::task::spawn_local(async move {
            let mut c = Client::join(addr, &t, r#"{"groups": {}}"#).await?;
            let mut round = 0usize;
            while !stop.get() {
                round += 1;
                let prefix = format!("churn{k}_{}", round % 2);
                c.send_text(&groups_message(&prefix, 0, per)).await?;
                c.next_text().await?;
                churned.set(churned.get() + 1);
            }
            anyhow::Ok(())
        }));
    }
    let mut probe = Client::join(node.addr, &token(999_999), r#"{"groups": {}}"#).await?;
    let mut latency = Histogram::<u64>::new(3)?;
    for i in 0..opts.samples {
        let msg = if i % 2 == 0 {
            r#"{"groups": {"probe": ["x"]}}"#
        } else {
            r#"{"groups": {}}"#
        };
        let t0 = Instant::now();
        probe.send_text(msg).await?;
        let reply = tokio::time::timeout(Duration::from_secs(30), probe.next_text())
            .await
            .context("a subscribe reply in time")??;
        latency.record(t0.elapsed().as_micros() as u64)?;
        if !reply.starts_with(b"{\"groups_current\"") {
            bail!("unexpected reply {}", String::from_utf8_lossy(&reply));
        }
    }
    stop.set(true);
    for c in churners {
        c.await.context("churner")??;
    }
    let ms = |q: f64| latency.value_at_quantile(q) as f64 / 1000.0;
    Ok(serde_json::json!({
        "scenario": "subscribe",
        "io": opts.io,
        "workers": opts.workers,
        "held": opts.held,
        "per_connection": opts.per_connection,
        "churn": opts.churn,
        "peer": opts.peer,
        "samples": opts.samples,
        "p50_ms": ms(0.5),
        "p99_ms": ms(0.99),
        "max_ms": latency.max() as f64 / 1000.0,
        "churn_sets": churned.get(),
        "node_rss_bytes": node::rss_bytes(node.pid).unwrap_or(0),
    }))
}
