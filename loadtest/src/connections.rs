//! `connections`: many idle, subscribed clients; what each costs the node
//! in resident memory. Clients connect from 127.0.0.2 upwards (one address
//! has about 28k ephemeral ports) with bounded concurrency; afterwards one
//! event per group proves every client is live.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use wsrelay::client::Client;

use wsrelay::payload as stamp;

use crate::node;

#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Subscribed idle clients
    #[arg(long, default_value_t = 50_000)]
    pub clients: usize,
    /// Distinct groups (client i holds job_events-<i % groups>)
    #[arg(long, default_value_t = 1000)]
    pub groups: usize,
    /// I/O driver of the node: epoll or uring
    #[arg(long, default_value = "uring")]
    pub io: String,
    /// Worker threads of the node
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Clients connecting at once
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    /// Write the JSON report here as well
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
    /// What to load: wsrelay, or the AWX reference reproduction (daphne +
    /// channels + channels_redis; probe events then go through
    /// channels_redis as AWX's producers send them)
    #[arg(long, default_value = "wsrelay", value_parser = ["wsrelay", "awx-reference"])]
    pub target: String,
}

/// Clients per source address (under the ~28k ephemeral ports of one).
const PER_SOURCE: usize = 20_000;

/// Source addresses 127.<run>.<n>.2: a fresh block per run, since the ports
/// of the previous run's clients linger in TIME_WAIT for a minute.
fn source(run: u8, i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, run, (i / PER_SOURCE) as u8, 2))
}

pub fn run(opts: &Options) -> anyhow::Result<()> {
    if opts.groups == 0 || opts.clients == 0 {
        bail!("--clients and --groups must be at least 1");
    }
    // This process and the node (its child, inheriting the limit) each
    // hold one descriptor per client.
    raise_fd_limit(opts.clients as u64 + 512)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    let report = local.block_on(&rt, measure(opts))?;
    println!(
        "\nconnections: {} clients over {} groups, {} ({} worker(s), {})",
        opts.clients, opts.groups, opts.target, opts.workers, report["io"]
    );
    println!(
        "connected in {:.1} s; node RSS {:.1} MiB idle -> {:.1} MiB; {:.0} bytes per connection; {} of {} probe events delivered",
        report["connect_secs"].as_f64().unwrap_or(0.0),
        report["rss_idle_bytes"].as_f64().unwrap_or(0.0) / 1048576.0,
        report["rss_connected_bytes"].as_f64().unwrap_or(0.0) / 1048576.0,
        report["rss_bytes_per_connection"].as_f64().unwrap_or(0.0),
        report["probe_received"],
        report["probe_expected"],
    );
    println!("{report}");
    if let Some(p) = &opts.json {
        std::fs::write(p, serde_json::to_string_pretty(&report)?)?;
    }
    if report["probe_received"] != report["probe_expected"] {
        bail!("some clients did not get their probe event");
    }
    Ok(())
}

/// Raises this process's open-files limit (the hard one too when
/// privileged); the node, started as a child, inherits it.
fn raise_fd_limit(want: u64) -> anyhow::Result<()> {
    let (soft, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE)?;
    if soft >= want {
        return Ok(());
    }
    if rlimit::setrlimit(rlimit::Resource::NOFILE, want, want.max(hard)).is_err() {
        rlimit::setrlimit(rlimit::Resource::NOFILE, hard, hard)?;
        if hard < want {
            bail!("need {want} open files, the hard limit is {hard} (raise it, or run as root)");
        }
    }
    Ok(())
}

async fn measure(opts: &Options) -> anyhow::Result<serde_json::Value> {
    let reference = opts.target == "awx-reference";
    let redis = if reference {
        Some(node::RedisServer::start()?)
    } else {
        None
    };
    let node = match &redis {
        Some(r) => node::start_awx_reference(&r.url()).await?,
        None => {
            node::start(
                &opts.io,
                opts.workers,
                &["--max-connections", &(opts.clients + 1000).to_string()],
            )
            .await?
        }
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_idle = node::rss_bytes(node.pid).context("node RSS")?;
    let exp = stamp::now_ns() / 1_000_000_000 + 86_400;
    let token = wsrelay::auth::mint_hs256(
        node::SECRET.as_bytes(),
        &serde_json::json!({"sub": "1", "exp": exp}),
    );
    let run: u8 = rand::random_range(1..=254);
    let start = Instant::now();
    let mut clients: Vec<Client> = Vec::with_capacity(opts.clients);
    let mut next = 0usize;
    while next < opts.clients {
        let batch: Vec<_> = (next..(next + opts.concurrency).min(opts.clients))
            .map(|i| {
                let source = source(run, i);
                let token = token.clone();
                let groups = format!(r#"{{"groups": {{"job_events": [{}]}}}}"#, i % opts.groups);
                let addr = node.addr;
                tokio::task::spawn_local(async move {
                    let mut c =
                        Client::connect_from(source, addr, &format!("/websocket/?token={token}"))
                            .await?;
                    c.next_text().await?;
                    c.send_text(&groups).await?;
                    c.next_text().await?;
                    anyhow::Ok(c)
                })
            })
            .collect();
        for handle in batch {
            clients.push(handle.await.context("client task")??);
        }
        next = clients.len();
    }
    let connect_secs = start.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_connected = node::rss_bytes(node.pid).context("node RSS")?;

    // Probe: one event per group; every client must get exactly its own.
    let events: Vec<(String, String)> = (0..opts.groups)
        .map(|g| {
            (
                format!("job_events-{g}"),
                stamp::status_event(g, 0, stamp::now_ns()),
            )
        })
        .collect();
    let emitted = match &redis {
        Some(r) => {
            let mut sender = crate::layer::GroupSender::connect(&r.url()).await?;
            sender.send(&events).await?;
            events.len() as u64
        }
        None => {
            let url = format!("http://{}", node.addr);
            tokio::task::spawn_blocking(move || {
                wsrelay::producer::http(&url, node::EMIT_KEY, &events)
            })
            .await??
        }
    };
    anyhow::ensure!(
        emitted == opts.groups as u64,
        "emit accepted {emitted} of {}",
        opts.groups
    );
    let mut received = 0u64;
    for (i, c) in clients.iter_mut().enumerate() {
        let text = tokio::time::timeout(Duration::from_secs(30), c.next_text())
            .await
            .context("a client got no probe event")??;
        let v: serde_json::Value = serde_json::from_slice(&text)?;
        if v["unified_job_id"].as_u64() == Some((i % opts.groups) as u64) {
            received += 1;
        }
    }
    Ok(serde_json::json!({
        "scenario": "connections",
        "target": opts.target,
        "io": if reference { "daphne" } else { opts.io.as_str() },
        "workers": opts.workers,
        "clients": opts.clients,
        "groups": opts.groups,
        "connect_secs": connect_secs,
        "rss_idle_bytes": rss_idle,
        "rss_connected_bytes": rss_connected,
        "rss_bytes_per_connection": (rss_connected.saturating_sub(rss_idle)) as f64 / opts.clients as f64,
        "probe_expected": opts.clients,
        "probe_received": received,
    }))
}
