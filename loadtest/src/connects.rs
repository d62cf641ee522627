//! `connects`: how fast a node authenticates new clients, by JWT or through
//! AWX's API (the introspection authenticator) with its cache cold or warm,
//! and how many API calls a reconnect storm costs.
//!
//! The API is the real Django + DRF app of the test suite
//! (`tests/python/awx_api.py`, from the venv `./scripts/test` makes), with
//! `--sessions` real sessions of one user. Each client connects, reads its
//! accept message and closes; `--concurrency` connect at once. The report
//! gives connects per second, connect latency (TCP connect to accept
//! message), the API calls the run made, and the CPU of the node, the API
//! and this generator, so it says which of them saturated.

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use wsrelay::client::Client;

use crate::node;

#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// How clients authenticate: jwt (checked locally), or session (AWX
    /// session cookies asked of the API)
    #[arg(long, default_value = "session", value_parser = ["jwt", "session"])]
    pub auth: String,
    /// Connects in the measured run
    #[arg(long, default_value_t = 10_000)]
    pub clients: usize,
    /// Distinct sessions; client i presents session i % sessions
    #[arg(long, default_value_t = 1_000)]
    pub sessions: usize,
    /// Connect once with every session before the measured run, so every
    /// measured lookup is a cache hit
    #[arg(long)]
    pub warm: bool,
    /// Clients connecting at once
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    /// I/O driver of the node: epoll or uring
    #[arg(long, default_value = "uring")]
    pub io: String,
    /// Worker threads of the node
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Write the JSON report here as well
    #[arg(long)]
    pub json: Option<PathBuf>,
}

pub fn run(opts: &Options) -> anyhow::Result<()> {
    if opts.clients == 0 || opts.sessions == 0 || opts.concurrency == 0 {
        bail!("--clients, --sessions and --concurrency must be at least 1");
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    let report = local.block_on(&rt, measure(opts))?;
    println!(
        "\nconnects: {} clients, auth {}{}, {} session(s), concurrency {} ({} worker(s), {})",
        opts.clients,
        opts.auth,
        if opts.warm { " (warm cache)" } else { "" },
        opts.sessions,
        opts.concurrency,
        opts.workers,
        opts.io
    );
    println!(
        "{:.0} connects/s; connect p50 {:.2} ms, p99 {:.2} ms; {} API calls; CPU: node {:.0}%, API {:.0}%, generator {:.0}%; saturated: {}",
        report["connects_per_sec"].as_f64().unwrap_or(0.0),
        report["p50_ms"].as_f64().unwrap_or(0.0),
        report["p99_ms"].as_f64().unwrap_or(0.0),
        report["api_calls"],
        report["node_cpu_pct"].as_f64().unwrap_or(0.0),
        report["api_cpu_pct"].as_f64().unwrap_or(0.0),
        report["generator_cpu_pct"].as_f64().unwrap_or(0.0),
        report["saturated"].as_str().unwrap_or("?"),
    );
    println!("{report}");
    if let Some(p) = &opts.json {
        std::fs::write(p, serde_json::to_string_pretty(&report)?)?;
    }
    if report["refused"].as_u64() != Some(0) {
        bail!("some clients were refused");
    }
    Ok(())
}

/// The Django app standing in for AWX's API; killed on drop.
struct AwxApi {
    child: Child,
    url: String,
    _dir: TempDir,
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl AwxApi {
    fn start() -> anyhow::Result<Self> {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let python = std::env::var_os("WSRELAY_TEST_PYTHON")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target/pyvenv/bin/python"));
        if !python.exists() {
            bail!(
                "no Python with Django at {}: run ./scripts/test once (it makes the venv) or set WSRELAY_TEST_PYTHON",
                python.display()
            );
        }
        let dir =
            TempDir(std::env::temp_dir().join(format!("loadtest-awx-api-{}", std::process::id())));
        let mut child = Command::new(python)
            .arg(root.join("tests/python/awx_api.py"))
            .arg(&dir.0)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting the Django API")?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
        let v: serde_json::Value =
            serde_json::from_str(&line).with_context(|| format!("awx_api.py said {line:?}"))?;
        let url = v["url"].as_str().context("url")?.to_owned();
        Ok(AwxApi {
            child,
            url,
            _dir: dir,
        })
    }

    fn addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.url.trim_start_matches("http://").parse()?)
    }

    async fn get(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(self.addr()?).await?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await?;
        let text = String::from_utf8_lossy(&out);
        let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        Ok(serde_json::from_str(body)?)
    }
}

impl Drop for AwxApi {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Source addresses 127.<run>.<n>.3: a fresh block per run, as in
/// `connections` (closed clients' ports linger in TIME_WAIT).
fn source(run: u8, i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, run, (i / 20_000) as u8, 3))
}

/// This process's CPU seconds (user + system).
fn own_cpu() -> f64 {
    node::cpu_seconds(std::process::id()).unwrap_or(0.0)
}

async fn measure(opts: &Options) -> anyhow::Result<serde_json::Value> {
    let session = opts.auth == "session";
    let api = if session {
        Some(AwxApi::start()?)
    } else {
        None
    };
    let me = api.as_ref().map(|a| format!("{}/api/v2/me/", a.url));
    let mut extra = vec![
        "--max-connections".to_owned(),
        (opts.concurrency * 4 + 1000).to_string(),
    ];
    if let Some(me) = &me {
        extra.extend(["--auth-url".to_owned(), me.clone()]);
    }
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let node = node::start(&opts.io, opts.workers, &extra).await?;
    // What each client presents: a Cookie line, or a JWT in the query.
    let credentials: Vec<(String, String)> = match &api {
        Some(api) => {
            let v = api
                .get(&format!("/_test/sessions/?user=alice&n={}", opts.sessions))
                .await?;
            v["sessions"]
                .as_array()
                .context("sessions")?
                .iter()
                .map(|s| {
                    let s = s.as_str().unwrap_or_default();
                    (
                        "/websocket/".to_owned(),
                        format!("Cookie: sessionid={s}\r\n"),
                    )
                })
                .collect()
        }
        None => (0..opts.sessions)
            .map(|i| {
                let exp = wsrelay::payload::now_ns() / 1_000_000_000 + 86_400;
                let t = wsrelay::auth::mint_hs256(
                    node::SECRET.as_bytes(),
                    &serde_json::json!({"sub": (i + 1).to_string(), "exp": exp}),
                );
                (format!("/websocket/?token={t}"), String::new())
            })
            .collect(),
    };
    let run: u8 = rand::random_range(1..=254);
    if opts.warm {
        connect_all(
            node.addr,
            &credentials,
            credentials.len(),
            opts.concurrency,
            run,
            0,
        )
        .await?;
    }
    if let Some(api) = &api {
        api.get("/_test/calls/?reset=1").await?;
    }
    let api_pid = api.as_ref().map(|a| a.child.id());
    let cpu = |pid: Option<u32>| pid.and_then(node::cpu_seconds).unwrap_or(0.0);
    let (node0, api0, gen0) = (cpu(Some(node.pid)), cpu(api_pid), own_cpu());
    let started = Instant::now();
    let offset = if opts.warm { credentials.len() } else { 0 };
    let (latency, refused) = connect_all(
        node.addr,
        &credentials,
        opts.clients,
        opts.concurrency,
        run,
        offset,
    )
    .await?;
    let secs = started.elapsed().as_secs_f64();
    let pct = |a: f64, b: f64| (b - a) / secs * 100.0;
    let node_cpu = pct(node0, cpu(Some(node.pid)));
    let api_cpu = pct(api0, cpu(api_pid));
    let gen_cpu = pct(gen0, own_cpu());
    let api_calls = match &api {
        Some(api) => api
            .get("/_test/calls/?reset=1")
            .await?
            .as_object()
            .map_or(0, |m| m.values().filter_map(|v| v.as_u64()).sum()),
        None => 0,
    };
    // A single-threaded generator or API near a whole core is the limit;
    // otherwise the node is (or nothing was).
    let saturated = [
        ("generator", gen_cpu),
        ("api", api_cpu),
        ("node", node_cpu / opts.workers as f64),
    ]
    .into_iter()
    .filter(|(_, c)| *c >= 85.0)
    .map(|(n, _)| n)
    .collect::<Vec<_>>()
    .join("+");
    let ms = |q: f64| latency.value_at_quantile(q) as f64 / 1000.0;
    Ok(serde_json::json!({
        "scenario": "connects",
        "auth": opts.auth,
        "warm": opts.warm,
        "io": opts.io,
        "workers": opts.workers,
        "clients": opts.clients,
        "sessions": opts.sessions,
        "concurrency": opts.concurrency,
        "secs": secs,
        "connects_per_sec": opts.clients as f64 / secs,
        "p50_ms": ms(0.5),
        "p99_ms": ms(0.99),
        "max_ms": latency.max() as f64 / 1000.0,
        "refused": refused,
        "api_calls": api_calls,
        "node_cpu_pct": node_cpu,
        "api_cpu_pct": api_cpu,
        "generator_cpu_pct": gen_cpu,
        "saturated": if saturated.is_empty() { "none".to_owned() } else { saturated },
    }))
}

/// Connects `n` clients, client i presenting `credentials[(offset + i) %
/// len]`, `concurrency` at a time; returns connect latencies (µs) and how
/// many were refused.
async fn connect_all(
    addr: SocketAddr,
    credentials: &[(String, String)],
    n: usize,
    concurrency: usize,
    run: u8,
    offset: usize,
) -> anyhow::Result<(Histogram<u64>, u64)> {
    let mut latency = Histogram::<u64>::new(3)?;
    let mut refused = 0u64;
    let mut next = 0usize;
    let mut inflight = tokio::task::JoinSet::new();
    while next < n || !inflight.is_empty() {
        while next < n && inflight.len() < concurrency {
            let (path, headers) = credentials[(offset + next) % credentials.len()].clone();
            let source = source(run, offset + next);
            inflight.spawn_local(async move {
                let t0 = Instant::now();
                let socket = tokio::net::TcpSocket::new_v4()?;
                socket.bind(SocketAddr::new(source, 0))?;
                let stream = socket.connect(addr).await?;
                stream.set_nodelay(true)?;
                let mut c = Client::upgrade_with(stream, addr, &path, &headers).await?;
                let first = tokio::time::timeout(Duration::from_secs(30), c.next_text())
                    .await
                    .context("no first message")??;
                let took = t0.elapsed();
                let _ = c.close().await;
                anyhow::Ok((first.starts_with(b"{\"accept\": true"), took))
            });
            next += 1;
        }
        if let Some(done) = inflight.join_next().await {
            let (accepted, took) = done.context("client task")??;
            latency.record(took.as_micros() as u64)?;
            if !accepted {
                refused += 1;
            }
        }
    }
    Ok((latency, refused))
}
