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
    let listen = if extra.contains(&"--listen") {
        &[][..]
    } else {
        &["--listen", "127.0.0.1:0"][..]
    };
    let mut child = Command::new(binary()?)
        .arg("serve")
        .args(listen)
        .args(["--io", io])
        .args(["--workers", &workers.to_string()])
        .args(["--jwt-secret", SECRET, "--emit-key", EMIT_KEY])
        // Several nodes run on one machine: none takes the admin port.
        .args(["--admin-listen", "off"])
        .args(extra)
        .env(
            "RUST_LOG",
            std::env::var("LOADTEST_NODE_LOG")
                .unwrap_or_else(|_| "warn,wsrelay::server=info".into()),
        )
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
    // `LOADTEST_NODE_STDERR=1` passes the nodes' log lines on (after the
    // address line), each with its node's address in front.
    let echo = std::env::var_os("LOADTEST_NODE_STDERR").is_some();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            if echo {
                eprintln!("[{addr}] {line}");
            }
        }
    });
    Ok(NodeProcess {
        _child: child,
        addr,
        pid,
    })
}

/// The backplane's shared secret in cluster runs.
pub const BACKPLANE_SECRET: &str = "loadtest-backplane-secret";

/// A private `nats-server` with JetStream (store in a temporary folder) on
/// a free loopback port, killed on drop; restartable in place with its
/// store.
pub struct NatsServer {
    pub process: NodeProcess,
    store: PathBuf,
}

impl NatsServer {
    pub async fn start() -> anyhow::Result<NatsServer> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let store =
            std::env::temp_dir().join(format!("loadtest-nats-{}-{port}", std::process::id()));
        let process = spawn_nats(port, &store).await?;
        Ok(NatsServer { process, store })
    }

    /// SIGKILL (nothing flushed on its way out), `down` without a broker,
    /// then the server again on its port with its store.
    pub async fn restart(&mut self, down: Duration) -> anyhow::Result<()> {
        let _ = self.process._child.kill().await;
        tokio::time::sleep(down).await;
        self.process = spawn_nats(self.process.addr.port(), &self.store).await?;
        Ok(())
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.process._child.start_kill();
        let _ = std::fs::remove_dir_all(&self.store);
    }
}

async fn spawn_nats(port: u16, store: &std::path::Path) -> anyhow::Result<NodeProcess> {
    let child = Command::new("nats-server")
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(store)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting nats-server (apt-get install nats-server)")?;
    let pid = child.id().context("nats-server pid")?;
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        if Instant::now() > deadline {
            bail!("nats-server did not start");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(NodeProcess {
        _child: child,
        addr,
        pid,
    })
}

/// `n` nodes joined by `backplane`: a full mesh speaking `protocol`
/// (`native` or `awx-2022`), each linked to every other, or a private NATS
/// broker (returned, to live as long as the run), every node's stream
/// ready, before this returns. The first node is the one events are
/// emitted on.
pub async fn start_cluster(
    io: &str,
    workers: usize,
    n: usize,
    protocol: &str,
    backplane: &str,
    extra: &[&str],
) -> anyhow::Result<(NodeProcess, Vec<NodeProcess>, Option<NatsServer>)> {
    if n < 2 {
        bail!("a cluster needs at least 2 nodes");
    }
    let ports: Vec<u16> = (0..n)
        .map(|_| {
            std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
        })
        .collect::<Result<_, _>>()?;
    let prefix = if protocol == "native" {
        ""
    } else {
        "awx-2022+"
    };
    let nats = if backplane == "nats" {
        Some(NatsServer::start().await?)
    } else {
        None
    };
    let mut nodes = Vec::with_capacity(n);
    for (i, port) in ports.iter().enumerate() {
        let listen = format!("127.0.0.1:{port}");
        let name = format!("n{i}");
        let mut args: Vec<String> = vec![
            "--listen".into(),
            listen,
            "--node-id".into(),
            name,
            "--backplane-secret".into(),
            BACKPLANE_SECRET.into(),
        ];
        if let Some(nats) = &nats {
            args.push("--broker".into());
            args.push(format!("nats://{}", nats.process.addr));
        } else {
            for (j, p) in ports.iter().enumerate() {
                if j != i {
                    args.push("--peer".into());
                    args.push(format!("{prefix}ws://127.0.0.1:{p}"));
                }
            }
        }
        let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
        args.extend_from_slice(extra);
        nodes.push(start(io, workers, &args).await?);
    }
    if nats.is_some() {
        // Ready once on the stream; with JetStream off (the node reports a
        // replay window of 0), once connected.
        let deadline = Instant::now() + Duration::from_secs(20);
        for n in &nodes {
            loop {
                let text = metrics(n.addr).await?;
                let window = text
                    .lines()
                    .find_map(|l| l.strip_prefix("wsrelay_broker_replay_window_seconds "));
                let ready = match window {
                    Some("0") => "wsrelay_broker_up 1",
                    _ => "wsrelay_broker_jetstream 1",
                };
                if text.lines().any(|l| l == ready) {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("node {} never reached the broker ({ready})", n.addr);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let first = nodes.remove(0);
        return Ok((first, nodes, nats));
    }
    // Every other node has the emitting node's link up.
    let line = if protocol == "native" {
        "wsrelay_backplane_link_up{peer=\"n0\",direction=\"in\"} 1".to_owned()
    } else {
        "wsrelay_backplane_link_up{peer=\"awx-2022\",direction=\"in\"} 1".to_owned()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    for n in &nodes[1..] {
        while !metrics(n.addr).await?.lines().any(|l| l == line) {
            if Instant::now() > deadline {
                bail!("node {} never linked to n0", n.addr);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let first = nodes.remove(0);
    Ok((first, nodes, None))
}

/// Clients a node closed as slow consumers: report key, metric prefix.
pub const SLOW_CONSUMER_CLOSES: (&str, &str) = (
    "slow_consumer_closes",
    "wsrelay_server_closes_total{reason=\"slow_consumer\"}",
);

/// Counters that say where a run lost events: report key, metric prefix.
pub const LOSS_COUNTERS: [(&str, &str); 6] = [
    SLOW_CONSUMER_CLOSES,
    ("events_dropped", "wsrelay_events_dropped_total"),
    ("backplane_evicted", "wsrelay_backplane_evicted_total{"),
    (
        "backplane_gap_events",
        "wsrelay_backplane_gap_events_total{",
    ),
    ("broker_events_lost", "wsrelay_broker_events_lost_total "),
    (
        "broker_slow_consumer",
        "wsrelay_broker_slow_consumer_total ",
    ),
];

/// What a broker node did to lose nothing: resumes, replays, and events
/// seen twice and dropped.
pub const BROKER_COUNTERS: [(&str, &str); 4] = [
    ("reconnects", "wsrelay_broker_reconnects_total "),
    ("resumes", "wsrelay_broker_resumes_total "),
    ("replayed_events", "wsrelay_broker_replayed_events_total "),
    ("duplicates_dropped", "wsrelay_broker_duplicates_total "),
];

/// A node's `/metrics` text.
pub async fn metrics(addr: std::net::SocketAddr) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n")
        .await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    Ok(out)
}

/// The sum of every series of `prefix` in a node's metrics.
pub async fn metric_sum(addr: std::net::SocketAddr, prefix: &str) -> Option<u64> {
    let text = metrics(addr).await.ok()?;
    Some(
        text.lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum(),
    )
}

/// Events, bytes and messages (a link's batch frames, or broker messages)
/// a node has sent to the rest of the cluster so far: over all its links,
/// and to the broker.
pub async fn backplane_sent(addr: std::net::SocketAddr) -> Option<(u64, u64, u64)> {
    let text = metrics(addr).await.ok()?;
    let sum = |name: &str| -> u64 {
        text.lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    Some((
        sum("wsrelay_backplane_events_sent_total{") + sum("wsrelay_broker_events_published_total "),
        sum("wsrelay_backplane_bytes_sent_total{") + sum("wsrelay_broker_bytes_published_total "),
        sum("wsrelay_backplane_batch_events_count{")
            + sum("wsrelay_broker_messages_published_total "),
    ))
}

/// A histogram's cumulative buckets `(le, count)` from a node's metrics,
/// summed over its series (`+Inf` last).
pub async fn histogram(addr: std::net::SocketAddr, name: &str) -> Option<Vec<(f64, u64)>> {
    let text = metrics(addr).await.ok()?;
    let prefix = format!("{name}_bucket{{");
    let mut buckets: Vec<(f64, u64)> = Vec::new();
    for l in text.lines().filter(|l| l.starts_with(&prefix)) {
        let le = l.split("le=\"").nth(1)?.split('"').next()?;
        let le = if le == "+Inf" {
            f64::INFINITY
        } else {
            le.parse().ok()?
        };
        let n: u64 = l.rsplit(' ').next()?.parse().ok()?;
        match buckets.iter_mut().find(|b| b.0 == le) {
            Some(b) => b.1 += n,
            None => buckets.push((le, n)),
        }
    }
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    (!buckets.is_empty()).then_some(buckets)
}

/// The bucket bound at or under which `q` of what was observed between
/// two readings of one histogram lies: an upper bound of the quantile.
/// None when nothing was observed.
pub fn bucket_quantile(before: &[(f64, u64)], after: &[(f64, u64)], q: f64) -> Option<f64> {
    let count = |h: &[(f64, u64)], le: f64| h.iter().find(|b| b.0 == le).map_or(0, |b| b.1);
    let total = after
        .last()?
        .1
        .saturating_sub(before.last().map_or(0, |b| b.1));
    if total == 0 {
        return None;
    }
    let want = (q * total as f64).ceil() as u64;
    after
        .iter()
        .find(|(le, n)| n.saturating_sub(count(before, *le)) >= want)
        .map(|b| b.0)
}

/// CPU seconds (user + system) the process has used, from /proc.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// The whole machine's CPU clock ticks so far, from the `cpu` line of
/// /proc/stat: (busy, steal, all). Busy counts steal (time the hypervisor
/// gave to other guests is time this run did not get); guest time is
/// already inside user and is not added twice.
pub fn host_ticks() -> Option<(u64, u64, u64)> {
    host_ticks_of(&std::fs::read_to_string("/proc/stat").ok()?)
}

fn host_ticks_of(stat: &str) -> Option<(u64, u64, u64)> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|v| v.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal
    let [user, nice, system, idle, iowait, irq, softirq, steal] = f[..] else {
        return None;
    };
    let busy = user + nice + system + irq + softirq + steal;
    Some((busy, steal, busy + idle + iowait))
}

/// Between two host readings: (busy, steal) as percentages of the whole
/// machine (100 = every core busy).
pub fn host_percent(a: (u64, u64, u64), b: (u64, u64, u64)) -> Option<(f64, f64)> {
    let all = b.2.checked_sub(a.2).filter(|&t| t > 0)? as f64;
    let busy = b.0.saturating_sub(a.0) as f64;
    let steal = b.1.saturating_sub(a.1) as f64;
    Some((busy / all * 100.0, steal / all * 100.0))
}

/// CPU seconds a process's threads have used, by kind: the node's workers
/// (`wsrelay-worker-*`), io_uring's kernel workers (`iou-wrk-*`,
/// `iou-sqp-*`, counted in the process), and everything else.
pub fn cpu_by_thread_kind(pid: u32) -> Option<[f64; 3]> {
    let mut out = [0.0; 3];
    for entry in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let Ok(entry) = entry else { continue };
        let path = entry.path();
        let Ok(stat) = std::fs::read_to_string(path.join("stat")) else {
            continue;
        };
        let Some((head, after)) = stat.rsplit_once(')') else {
            continue;
        };
        let name = head.split_once('(').map_or("", |(_, n)| n);
        let f: Vec<&str> = after.split_whitespace().collect();
        let ticks: f64 = f.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
            + f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        let kind = if name.starts_with("wsrelay-worker") {
            0
        } else if name.starts_with("iou-") {
            1
        } else {
            2
        };
        out[kind] += ticks / 100.0;
    }
    Some(out)
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
        // LOADTEST_REF_STDERR=1 shows daphne's log (its errors included).
        .stderr(if std::env::var_os("LOADTEST_REF_STDERR").is_some() {
            Stdio::inherit()
        } else {
            Stdio::null()
        })
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
        admin_listen: None,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_ticks_count_steal_as_busy_and_guest_once() {
        // A /proc/stat head as Linux 6.18 writes it (two vCPUs, some steal,
        // guest columns present).
        let stat = "cpu  60987 5 13295 52943 693 7 1307 2446 100 0\n\
                    cpu0 29589 0 6367 27985 75 0 598 1191 0 0\n";
        let (busy, steal, all) = host_ticks_of(stat).expect("parsed");
        assert_eq!(busy, 60987 + 5 + 13295 + 7 + 1307 + 2446);
        assert_eq!(steal, 2446);
        assert_eq!(all, busy + 52943 + 693);
        let later = (busy + 150, steal + 30, all + 200);
        let (b, s) = host_percent((busy, steal, all), later).expect("window");
        assert!(
            (b - 75.0).abs() < 1e-9 && (s - 15.0).abs() < 1e-9,
            "{b} {s}"
        );
        // No time passed, or a line that is not /proc/stat's: no figure.
        assert_eq!(host_percent(later, later), None);
        assert_eq!(host_ticks_of("intr 1 2 3\n"), None);
        assert_eq!(host_ticks_of("cpu  1 2 x 4 5 6 7 8\n"), None);
    }

    #[test]
    fn host_ticks_read_this_machine() {
        let (busy, steal, all) = host_ticks().expect("/proc/stat readable");
        assert!(busy <= all && steal <= busy, "{busy} {steal} {all}");
    }
}
