//! AWX's PostgreSQL heartbeat, against a private PostgreSQL: a node
//! announces itself as AWX's web nodes do (read with LISTEN from Python's
//! psycopg, as AWX's relay reads it), and a node discovers the others
//! through the heartbeats alone, delivers across them, and drops the ones
//! that go offline or silent.

mod support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::json;
use support::postgres::Postgres;
use support::redis::python;
use support::*;

const CHANNEL: &str = "web_ws_heartbeat";
const BACKPLANE: &str = "backplane-secret-for-tests";

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/awx_heartbeat.py")
}

/// AWX's relay side: LISTENs and yields each payload.
struct Listener {
    child: Child,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
}

impl Listener {
    fn start(pg: &Postgres) -> Self {
        let mut child = Command::new(python())
            .arg(script())
            .args(["listen", &pg.url(), CHANNEL])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        assert_eq!(lines.next().unwrap().unwrap(), "ready");
        Listener { child, lines }
    }

    fn next(&mut self) -> String {
        self.lines.next().expect("a notification").unwrap()
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One heartbeat sent from Python exactly as `run_ws_heartbeat` sends it.
fn python_beat(pg: &Postgres, host: &str, ip: &str, action: &str) {
    let ok = Command::new(python())
        .arg(script())
        .args(["beat", &pg.url(), CHANNEL, host, ip, action])
        .status()
        .unwrap();
    assert!(ok.success());
}

#[tokio::test]
async fn a_node_announces_itself_as_awx_web_nodes_do() {
    let pg = Postgres::start();
    let mut listener = Listener::start(&pg);
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_wsrelay"));
    cmd.args([
        "serve",
        "--admin-listen",
        "off",
        "--listen",
        "127.0.0.1:0",
        "--workers",
        "1",
    ])
    .args(["--jwt-secret", SECRET, "--node-id", "awx-web-1"])
    .args(["--awx-database", &pg.url(), "--advertise-ip", "10.1.2.3"])
    .args(["--heartbeat-interval-secs", "1"]);
    let (mut child, _addr) = spawn_serve(&mut cmd).await;
    let online = r#"{"hostname": "awx-web-1", "ip": "10.1.2.3", "action": "online"}"#;
    let beats = tokio::task::spawn_blocking(move || {
        let b = [listener.next(), listener.next()];
        (listener, b)
    });
    let (mut listener, beats) = tokio::time::timeout(WAIT, beats).await.unwrap().unwrap();
    assert_eq!(beats, [online, online]);
    // SIGTERM: one `offline` before the process ends.
    let pid = child.id().unwrap().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");
    let rest = tokio::task::spawn_blocking(move || {
        // Heartbeats sent before the signal may still be queued.
        loop {
            let l = listener.next();
            if l != online {
                return l;
            }
        }
    });
    let offline = tokio::time::timeout(WAIT, rest).await.unwrap().unwrap();
    assert_eq!(
        offline,
        r#"{"hostname": "awx-web-1", "ip": "10.1.2.3", "action": "offline"}"#
    );
}

/// A web node on `ip`:`port` that announces itself every second.
fn web_node(pg: &Postgres, name: &str, ip: &str, port: u16) -> TestNode {
    let url = pg.url();
    let (name, ip) = (name.to_owned(), ip.to_owned());
    start(move |c| {
        c.listen = SocketAddr::new(ip.parse().unwrap(), port);
        c.node_id = name;
        c.advertise_ip = Some(ip);
        c.awx_database = Some(url);
        c.heartbeat_interval = Duration::from_secs(1);
        c.backplane_secret = Some(BACKPLANE.into());
    })
}

fn free_port_on(ips: &[&str]) -> u16 {
    loop {
        let port = std::net::TcpListener::bind("127.0.0.2:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if ips
            .iter()
            .all(|ip| std::net::TcpListener::bind((*ip, port)).is_ok())
        {
            return port;
        }
    }
}

#[tokio::test]
async fn a_relay_discovers_nodes_by_heartbeat_alone() {
    let mut pg = Postgres::start();
    // AWX announces addresses, not ports: every web node listens on one port.
    let port = free_port_on(&["127.0.0.2", "127.0.0.3"]);
    let a = web_node(&pg, "web-a", "127.0.0.2", port);
    let b = web_node(&pg, "web-b", "127.0.0.3", port);
    let url = pg.url();
    let relay = start(move |c| {
        c.node_id = "relay".into();
        c.awx_database = Some(url);
        c.announce = false;
        c.discover_peers = Some(wsrelay::config::Discovery::Postgres);
        c.discover_scheme = wsrelay::config::DialScheme::Ws;
        c.discover_port = port;
        c.heartbeat_interval = Duration::from_secs(1);
        c.backplane_secret = Some(BACKPLANE.into());
    });
    let link =
        |ip: &str| format!("wsrelay_backplane_link_up{{peer=\"{ip}:{port}\",direction=\"out\"}} 1");
    wait_metric(relay.addr, &link("127.0.0.2")).await;
    wait_metric(relay.addr, &link("127.0.0.3")).await;
    wait_metric(relay.addr, "wsrelay_discovered_nodes 2").await;

    // Clients on both web nodes get what is emitted on the relay.
    let mut on_a = connect(a.addr, &token(1)).await;
    let mut on_b = connect(b.addr, &token(2)).await;
    subscribe(&mut on_a, json!({"jobs": ["status_changed"]})).await;
    subscribe(&mut on_b, json!({"jobs": ["status_changed"]})).await;
    for i in 0..50 {
        emit_one(
            relay.addr,
            "jobs-status_changed",
            &format!(r#"{{"i": {i}}}"#),
        )
        .await;
    }
    for i in 0..50 {
        let want = format!(r#"{{"i": {i}}}"#);
        assert_eq!(next_text(&mut on_a).await, want);
        assert_eq!(next_text(&mut on_b).await, want);
    }

    // web-b stops: its `offline` drops it from the relay at once.
    b.node.shutdown();
    wait_metric(
        relay.addr,
        "wsrelay_heartbeat_notifications_total{outcome=\"offline\"} 1",
    )
    .await;
    wait_metric(relay.addr, "wsrelay_discovered_nodes 1").await;
    emit_one(relay.addr, "jobs-status_changed", r#"{"after": "b"}"#).await;
    assert_eq!(next_text(&mut on_a).await, r#"{"after": "b"}"#);

    // A node announced once and then silent (no offline) goes after three
    // intervals; announcements from Python's json.dumps are read as ours.
    python_beat(&pg, "ghost", "127.0.0.9", "online");
    wait_metric(relay.addr, "wsrelay_discovered_nodes 2").await;
    wait_metric(relay.addr, "wsrelay_discovered_nodes 1").await;
    // Malformed announcements are skipped and counted.
    python_beat(&pg, "bad/name", "-", "online");
    wait_metric(
        relay.addr,
        "wsrelay_heartbeat_notifications_total{outcome=\"bad\"} 1",
    )
    .await;

    // The database goes away and comes back: the relay LISTENs again and
    // keeps web-a (its silence during our outage is not held against it).
    pg.stop();
    wait_metric(relay.addr, "wsrelay_awx_database_up{role=\"discover\"} 0").await;
    pg.resume();
    wait_metric(relay.addr, "wsrelay_awx_database_up{role=\"discover\"} 1").await;
    let online_before = metric(
        relay.addr,
        "wsrelay_heartbeat_notifications_total{outcome=\"online\"}",
    )
    .await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while metric(
        relay.addr,
        "wsrelay_heartbeat_notifications_total{outcome=\"online\"}",
    )
    .await
        <= online_before
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no heartbeat after the outage"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_metric(relay.addr, "wsrelay_discovered_nodes 1").await;
    wait_metric(relay.addr, &link("127.0.0.2")).await;
    emit_one(relay.addr, "jobs-status_changed", r#"{"after": "outage"}"#).await;
    assert_eq!(next_text(&mut on_a).await, r#"{"after": "outage"}"#);
}

/// AWX dials `https://<ip>:443/websocket/relay/`: the TLS is nginx's, in
/// front of the node, exactly as in AWX's own deployment (SPEC 7). A relay
/// discovers the node by its heartbeat and reaches it through nginx, with
/// the certificate verified.
#[tokio::test]
async fn discovered_nodes_are_reached_over_tls_through_nginx() {
    let pg = Postgres::start();
    let port = free_port_on(&["127.0.0.5"]);
    let url = pg.url();
    let web = start(move |c| {
        c.node_id = "web-tls".into();
        c.advertise_ip = Some("127.0.0.5".into());
        c.awx_database = Some(url);
        c.heartbeat_interval = Duration::from_secs(1);
        c.backplane_secret = Some(BACKPLANE.into());
    });
    let front = SocketAddr::new("127.0.0.5".parse().unwrap(), port);
    let nginx = support::nginx::Nginx::start(front, web.addr);
    let (url, ca) = (pg.url(), nginx.ca_file.clone());
    let relay = start(move |c| {
        c.node_id = "relay".into();
        c.awx_database = Some(url);
        c.announce = false;
        c.discover_peers = Some(wsrelay::config::Discovery::Postgres);
        c.discover_port = port;
        c.peer_ca_file = Some(ca);
        c.heartbeat_interval = Duration::from_secs(1);
        c.backplane_secret = Some(BACKPLANE.into());
    });
    wait_metric(
        relay.addr,
        &format!("wsrelay_backplane_link_up{{peer=\"127.0.0.5:{port}\",direction=\"out\"}} 1"),
    )
    .await;
    let mut client = connect(web.addr, &token(1)).await;
    subscribe(&mut client, json!({"jobs": ["status_changed"]})).await;
    for i in 0..20 {
        emit_one(
            relay.addr,
            "jobs-status_changed",
            &format!(r#"{{"i": {i}}}"#),
        )
        .await;
    }
    for i in 0..20 {
        assert_eq!(next_text(&mut client).await, format!(r#"{{"i": {i}}}"#));
    }
}
