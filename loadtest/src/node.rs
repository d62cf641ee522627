//! A `wsrelay serve` child process on a loopback port, and what /proc and
//! perf say about it.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use std::time::Instant;

use anyhow::{bail, Context};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub const SECRET: &str = "loadtest-secret-0123456789abcdef";
pub const EMIT_KEY: &str = "loadtest-emit-key";

pub struct NodeProcess {
    /// Held so the node is killed when this is dropped (`kill_on_drop`).
    pub _child: Child,
    pub addr: std::net::SocketAddr,
    pub pid: u32,
}

/// The `wsrelay` binary: `$WSRELAY_BIN`, or the one built beside us.
pub fn binary() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("WSRELAY_BIN") {
        return Ok(p.into());
    }
    let me = std::env::current_exe()?;
    let beside = me.with_file_name("wsrelay");
    if beside.exists() {
        return Ok(beside);
    }
    bail!(
        "no wsrelay binary beside {}; build it (cargo build --release) or set WSRELAY_BIN",
        me.display()
    )
}

pub async fn start(io: &str, workers: usize, extra: &[&str]) -> anyhow::Result<NodeProcess> {
    let mut child = Command::new(binary()?)
        .args(["serve", "--listen", "127.0.0.1:0", "--io", io])
        .args(["--workers", &workers.to_string()])
        .args(["--jwt-secret", SECRET, "--emit-key", EMIT_KEY])
        .args(extra)
        .env("RUST_LOG", "warn,wsrelay::server=info")
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting wsrelay")?;
    let pid = child.id().context("child pid")?;
    let mut lines = BufReader::new(child.stderr.take().context("stderr")?).lines();
    let addr = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = lines.next_line().await? {
            if let Some(rest) = line.split("addr=").nth(1) {
                return Ok(rest.split_whitespace().next().unwrap_or("").parse()?);
            }
        }
        bail!("wsrelay exited before listening")
    })
    .await
    .context("waiting for wsrelay to listen")??;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(NodeProcess {
        _child: child,
        addr,
        pid,
    })
}

/// CPU seconds (user + system) the process has used, from /proc.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// Resident memory in bytes, from /proc.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// Starts `perf stat` counting syscalls and io_uring submissions of `pid`
/// for `secs`; `None` when perf is not usable here.
pub fn perf_counters(pid: u32, secs: u64) -> Option<std::process::Child> {
    std::process::Command::new("perf")
        .args([
            "stat",
            "-x,",
            "-e",
            "raw_syscalls:sys_enter,io_uring:io_uring_submit_req",
        ])
        .args(["-p", &pid.to_string(), "--", "sleep", &secs.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .ok()
}

/// `(syscalls, io_uring submissions)` from a finished `perf stat -x,`.
pub fn perf_result(child: std::process::Child) -> Option<(u64, u64)> {
    let out = child.wait_with_output().ok()?;
    let text = String::from_utf8_lossy(&out.stderr);
    let count = |event: &str| {
        text.lines()
            .find(|l| l.contains(event))?
            .split(',')
            .next()?
            .trim()
            .parse()
            .ok()
    };
    Some((
        count("raw_syscalls:sys_enter")?,
        count("io_uring_submit_req").unwrap_or(0),
    ))
}

/// A private redis-server on a free loopback port, stopped on drop.
pub struct RedisServer {
    child: std::process::Child,
    port: u16,
}

impl RedisServer {
    pub fn start() -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .context("starting redis-server (apt-get install redis-server)")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!("redis-server did not start");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Self { child, port })
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The AWX reference reproduction (`loadtest/awx_reference`): daphne with
/// a consumer that behaves as SPEC section 2 describes AWX's, on
/// channels_redis. One process, as AWX runs it.
pub async fn start_awx_reference(redis_url: &str) -> anyhow::Result<NodeProcess> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let setup = std::process::Command::new(root.join("awx_reference/setup.sh"))
        .output()
        .context("running awx_reference/setup.sh")?;
    if !setup.status.success() {
        bail!(
            "awx_reference/setup.sh failed: {}",
            String::from_utf8_lossy(&setup.stderr)
        );
    }
    let venv = String::from_utf8_lossy(&setup.stdout).trim().to_owned();
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let child = Command::new(format!("{venv}/bin/daphne"))
        .args([
            "-b",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "awx_reference:application",
        ])
        .env("AWX_REF_REDIS", redis_url)
        .env("PYTHONPATH", root.join("awx_reference"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting daphne")?;
    let pid = child.id().context("daphne pid")?;
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        if Instant::now() > deadline {
            bail!("daphne did not listen on {addr}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(NodeProcess {
        _child: child,
        addr,
        pid,
    })
}

/// A node inside this process (for the in-process producer). Its CPU and
/// RSS readings are this whole process's.
pub fn start_inproc(io: &str, workers: usize) -> anyhow::Result<(wsrelay::Node, NodeProcess)> {
    let io = match io {
        "epoll" => wsrelay::config::IoMode::Epoll,
        "uring" => wsrelay::config::IoMode::Uring,
        _ => wsrelay::config::IoMode::Auto,
    };
    let node = wsrelay::Node::start(wsrelay::Config {
        listen: "127.0.0.1:0".parse()?,
        workers,
        io,
        jwt_secret: Some(SECRET.into()),
        emit_key: Some(EMIT_KEY.into()),
        ..wsrelay::Config::default()
    })?;
    let addr = node.local_addr();
    // No child: a placeholder that kill_on_drop cannot harm.
    let child = Command::new("true").kill_on_drop(true).spawn()?;
    Ok((
        node,
        NodeProcess {
            _child: child,
            addr,
            pid: std::process::id(),
        },
    ))
}
