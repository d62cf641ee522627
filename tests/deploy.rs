//! The deployment files in `deploy/`, each run by the real program it is
//! for: the nginx snippet by nginx (`nginx -t`, then a websocket session
//! through it), the systemd unit by `systemd-analyze verify`, the
//! supervisord block by supervisord (it starts, serves and stops the
//! node), the example config by `wsrelay check-config`, and the Grafana
//! dashboard against the metrics a node exports.

mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::awx_api::TempDir;
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_wsrelay");

fn deploy(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(deploy(path)).unwrap()
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nginx_snippet_passes_nginx_t_and_carries_a_websocket_session() {
    let n = start(|_| {});
    let listen = free_addr();
    let (dir, conf, _) = support::nginx::config(listen, n.addr, false);
    let t = Command::new("nginx")
        .args(["-t", "-p", &dir.0.display().to_string(), "-c"])
        .arg(&conf)
        .output()
        .expect("nginx runs (./scripts/test installs it)");
    let said = String::from_utf8_lossy(&t.stderr);
    assert!(t.status.success(), "nginx -t: {said}");
    assert!(
        said.contains("syntax is ok") && said.contains("test is successful"),
        "{said}"
    );
    drop(dir);

    let _nginx = support::nginx::Nginx::plain(listen, n.addr);
    // A client through nginx, the way the AWX UI reaches daphne.
    let mut ws = connect(listen, &token(1)).await;
    let reply = subscribe(&mut ws, json!({"jobs": ["status_changed"]})).await;
    assert_eq!(reply["groups_current"], json!(["jobs-status_changed"]));
    for i in 0..100 {
        emit_one(n.addr, "jobs-status_changed", &format!(r#"{{"i": {i}}}"#)).await;
    }
    for i in 0..100 {
        assert_eq!(
            next_json(&mut ws).await,
            json!({"i": i}),
            "unbuffered, in order"
        );
    }
    // Everything but /websocket is not ours.
    let (code, _) = http(
        listen,
        b"GET /websocket/ HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(code, 426, "nginx passed the plain request on to the node");
}

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() {
    let unit = read("systemd/wsrelay.service");
    for line in [
        "LimitNOFILE=",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "Restart=on-failure",
        "KillSignal=SIGTERM",
        "ExecReload=/bin/kill -HUP $MAINPID",
    ] {
        assert!(unit.contains(line), "the unit lacks {line}");
    }
    // Verified as shipped, with ExecStart pointing at this build (verify
    // checks that the program exists).
    let dir = TempDir::new("systemd");
    assert!(unit.contains("ExecStart=/usr/local/bin/wsrelay "));
    let path = dir.0.join("wsrelay.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/wsrelay", BIN)).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze runs");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "systemd-analyze verify: {said}");
    let ours: Vec<&str> = said
        .lines()
        .filter(|l| l.contains("wsrelay.service"))
        .collect();
    assert!(
        ours.is_empty(),
        "systemd-analyze has remarks about the unit: {said}"
    );
}

#[test]
fn supervisord_starts_serves_and_stops_the_program_block() {
    let python = support::redis::python();
    let bin_dir = python.parent().unwrap().to_owned();
    let dir = TempDir::new("supervisord");
    let d = dir.0.display();
    let node = free_addr();
    let config = dir.0.join("wsrelay.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"{node}\"\nadmin_listen = \"off\"\njwt_secret = \"{SECRET}\"\nworkers = 1\n"
        ),
    )
    .unwrap();
    let block = read("supervisord/wsrelay.conf");
    let shipped = "command = /usr/bin/wsrelay serve --config /etc/tower/wsrelay.toml";
    assert!(block.contains(shipped), "the command line moved");
    let block = block.replace(
        shipped,
        &format!("command = {BIN} serve --config {}", config.display()),
    );
    std::fs::write(dir.0.join("wsrelay.conf"), block).unwrap();
    // A supervisord like AWX's container runs, with this block included.
    let conf = dir.0.join("supervisord.conf");
    std::fs::write(
        &conf,
        format!(
            "[supervisord]\nnodaemon = true\nlogfile = {d}/supervisord.log\npidfile = {d}/supervisord.pid\n\
             [unix_http_server]\nfile = {d}/supervisor.sock\n\
             [rpcinterface:supervisor]\nsupervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n\
             [supervisorctl]\nserverurl = unix://{d}/supervisor.sock\n\
             [include]\nfiles = {d}/wsrelay.conf\n"
        ),
    )
    .unwrap();
    let mut supervisord = Command::new(bin_dir.join("supervisord"))
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("supervisord runs (./scripts/test installs it in the venv)");
    let ctl = |args: &[&str]| -> String {
        let out = Command::new(bin_dir.join("supervisorctl"))
            .arg("-c")
            .arg(&conf)
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let wait_for = |want: &str| {
        // Generous: a cold machine starts Python and the node slowly.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let status = ctl(&["status", "wsrelay"]);
            if status.contains(want) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "wsrelay never {want}: {status}\n{}",
                std::fs::read_to_string(dir.0.join("supervisord.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait_for("RUNNING");
    let health = std::net::TcpStream::connect(node).map(|mut s| {
        use std::io::{Read, Write};
        s.write_all(b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    });
    assert!(
        health
            .as_deref()
            .is_ok_and(|h| h.contains("\"status\":\"ok\"")),
        "the node under supervisord: {health:?}"
    );
    // A stop is SIGTERM: the node drains and exits by itself in time.
    ctl(&["stop", "wsrelay"]);
    wait_for("STOPPED");
    let log = std::fs::read_to_string(dir.0.join("supervisord.log")).unwrap_or_default();
    assert!(
        log.contains("stopped: wsrelay (exit status 0)"),
        "stopped cleanly, not killed: {log}"
    );
    let _ = supervisord.kill();
    let _ = supervisord.wait();
}

#[test]
fn the_example_config_passes_check_config() {
    let dir = TempDir::new("example-config");
    let secret = dir.0.join("backplane_secret");
    std::fs::write(&secret, "a-backplane-secret-of-awx-0123456789").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = Command::new(BIN)
        .arg("check-config")
        .arg(deploy("wsrelay.toml"))
        // The secret lives elsewhere here than on a node.
        .env("WSRELAY_BACKPLANE_SECRET_FILE", &secret)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "listen = \"127.0.0.1:8051\"",
        "admin_listen = \"127.0.0.1:9851\"",
        "auth_url = \"http://127.0.0.1:8052/api/v2/me/\"",
        "group_expiry_secs = 157784760",
        "backplane_secret = \"********\"",
        "discover_peers = \"postgres\"",
    ] {
        assert!(stdout.contains(line), "want {line} in\n{stdout}");
    }
    assert!(!stdout.contains("a-backplane-secret-of-awx"));
}

/// Metric names in an expression: `wsrelay_...` tokens.
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("wsrelay_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.push(tail[..end].to_owned());
        rest = &tail[end..];
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_grafana_dashboard_reads_is_one_a_node_exports() {
    let dash: Value = serde_json::from_str(&read("grafana/wsrelay-dashboard.json")).unwrap();
    let panels = dash["panels"].as_array().unwrap();
    assert!(panels.len() >= 10, "a dashboard of the parts that matter");
    let n = start(|_| {});
    let (_, body) = http(
        n.addr,
        b"GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n",
    )
    .await;
    let families: BTreeSet<&str> = body
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    let mut read_names = BTreeSet::new();
    for p in panels {
        for t in p["targets"].as_array().unwrap() {
            for name in metric_names(t["expr"].as_str().unwrap()) {
                let family = ["_total", "_bucket", "_count", "_sum"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s))
                    .unwrap_or(&name)
                    .to_owned();
                read_names.insert((name, family));
            }
        }
    }
    let missing: Vec<_> = read_names
        .iter()
        .filter(|(_, f)| !families.contains(f.as_str()))
        .map(|(n, _)| n)
        .collect();
    assert!(
        missing.is_empty(),
        "the dashboard reads metrics no node exports: {missing:?}"
    );
    assert!(read_names.len() >= 20, "{read_names:?}");
    // The template's node list reads a series every node has.
    assert!(families.contains("wsrelay_info"));
}
