//! The backplane: clusters of real nodes on loopback, linked over real
//! sockets, checked through real websocket clients and each node's
//! `/metrics`.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use support::*;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use wsrelay::backplane::PeerSpec;

const BACKPLANE: &str = "backplane-secret-for-tests";

/// A node named `name` in a cluster sharing `BACKPLANE`.
fn cluster_node(name: &str, tune: impl FnOnce(&mut wsrelay::Config)) -> TestNode {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    start(|c| {
        c.node_id = name.into();
        c.backplane_secret = Some(BACKPLANE.into());
        c.peer_ping_interval = Duration::from_millis(500);
        tune(c);
    })
}

/// AWX's subscribe form for group names: `{"job_events": [1], ...}`.
fn groups(names: &[&str]) -> Value {
    let mut out = serde_json::Map::new();
    for name in names {
        let (prefix, item) = name.split_once('-').unwrap();
        let list = out
            .entry(prefix.to_owned())
            .or_insert_with(|| json!([]))
            .as_array_mut()
            .unwrap();
        list.push(match item.parse::<u64>() {
            Ok(n) => json!(n),
            Err(_) => json!(item),
        });
    }
    Value::Object(out)
}

fn peer(addr: SocketAddr) -> PeerSpec {
    PeerSpec::parse(&format!("ws://{addr}")).unwrap()
}

/// Links every node to every other and waits until each node has an
/// outbound link up to, and an inbound link from, every other.
async fn mesh(nodes: &[(&str, &TestNode)]) {
    for (_, n) in nodes {
        let peers = nodes
            .iter()
            .filter(|(_, o)| o.addr != n.addr)
            .map(|(_, o)| peer(o.addr))
            .collect();
        n.node.set_peers(peers);
    }
    for (_, n) in nodes {
        for (other, o) in nodes {
            if o.addr == n.addr {
                continue;
            }
            wait_metric(
                n.addr,
                &format!(
                    "wsrelay_backplane_link_up{{peer=\"{}\",direction=\"out\"}} 1",
                    o.addr
                ),
            )
            .await;
            wait_metric(
                n.addr,
                &format!("wsrelay_backplane_link_up{{peer=\"{other}\",direction=\"in\"}} 1"),
            )
            .await;
        }
    }
}

async fn labelled(addr: SocketAddr, line_prefix: &str) -> u64 {
    let (_, body) = http(addr, b"GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n").await;
    body.lines()
        .find_map(|l| l.strip_prefix(line_prefix)?.trim().parse().ok())
        .unwrap_or(0)
}

/// Receives `n` events and returns their payloads in arrival order.
async fn collect(ws: &mut Ws, n: usize) -> Vec<Value> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        out.push(next_json(ws).await);
    }
    out
}

/// Checks exactly-once, in-order delivery per (origin, group): each
/// origin's sequence numbers arrive as 0..per_origin with no gap, repeat
/// or reordering.
fn assert_exactly_once_in_order(got: &[Value], origins: &[&str], per_origin: u64) {
    let mut next: HashMap<(String, String), u64> = HashMap::new();
    for v in got {
        let key = (
            v["origin"].as_str().unwrap().to_owned(),
            v["group"].as_str().unwrap().to_owned(),
        );
        let seq = v["seq"].as_u64().unwrap();
        let expect = next.entry(key.clone()).or_insert(0);
        assert_eq!(seq, *expect, "out of order or repeated for {key:?}");
        *expect += 1;
    }
    for o in origins {
        let total: u64 = next
            .iter()
            .filter(|((origin, _), _)| origin == o)
            .map(|(_, n)| n)
            .sum();
        assert_eq!(total, per_origin, "events from {o}");
    }
}

async fn emit_batch(addr: SocketAddr, origin: &str, group: &str, range: std::ops::Range<u64>) {
    let events: Vec<Value> = range
        .map(|seq| json!({"group": group, "payload": {"origin": origin, "group": group, "seq": seq}}))
        .collect();
    let (status, body) = emit(addr, &Value::Array(events).to_string()).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_reaches_every_subscriber_on_every_node_once_and_in_order() {
    let a = cluster_node("a", |_| {});
    let b = cluster_node("b", |_| {});
    let c = cluster_node("c", |_| {});
    mesh(&[("a", &a), ("b", &b), ("c", &c)]).await;
    let wanted = groups(&["job_events-1", "jobs-status_changed"]);
    let mut clients = Vec::new();
    for n in [&a, &b, &c] {
        for _ in 0..2 {
            let mut ws = connect(n.addr, &token(1)).await;
            subscribe(&mut ws, wanted.clone()).await;
            clients.push(ws);
        }
    }
    const PER: u64 = 300;
    let emitters = [("a", a.addr), ("b", b.addr), ("c", c.addr)];
    let sends = emitters.iter().map(|&(origin, addr)| async move {
        for chunk in 0..3 {
            let from = chunk * 50;
            emit_batch(addr, origin, "job_events-1", from..from + 50).await;
            emit_batch(addr, origin, "jobs-status_changed", from..from + 50).await;
        }
    });
    futures_util::future::join_all(sends).await;
    for ws in &mut clients {
        let got = collect(ws, (PER * 3) as usize).await;
        assert_exactly_once_in_order(&got, &["a", "b", "c"], PER);
    }
    // Nothing more arrives: no event was delivered twice.
    for ws in &mut clients {
        let extra = tokio::time::timeout(Duration::from_millis(300), ws.next()).await;
        assert!(extra.is_err(), "unexpected extra message {extra:?}");
    }
    for n in [&a, &b, &c] {
        assert_eq!(
            labelled(n.addr, "wsrelay_backplane_duplicates_total{peer=\"a\"}").await
                + labelled(n.addr, "wsrelay_backplane_gap_events_total{peer=\"a\"}").await,
            0
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_redis_events_cross_the_backplane() {
    let redis = support::redis::RedisServer::start();
    let a = cluster_node("a", |c| {
        c.redis = vec![redis.url()];
        c.backlog_hold = Duration::ZERO;
    });
    let b = cluster_node("b", |_| {});
    let c = cluster_node("c", |_| {});
    mesh(&[("a", &a), ("b", &b), ("c", &c)]).await;
    let producer = support::redis::AwxEmitter::start("2022", &[redis.url()]);
    let mut on_b = connect(b.addr, &token(1)).await;
    subscribe(&mut on_b, groups(&["job_events-7"])).await;
    let mut on_c = connect(c.addr, &token(1)).await;
    subscribe(&mut on_c, groups(&["job_events-7"])).await;
    // No client on A holds the group: A registers it in Redis for its
    // peers' clients, before their subscribe replies (the interest
    // acknowledgement waits for that membership).
    let events: Vec<Value> = (0..50)
        .map(|i| json!(["job_events-7", {"origin": "a", "group": "job_events-7", "seq": i}]))
        .collect();
    // At once after the replies (the producer is already running): their
    // wait covers A's Redis membership for the group.
    producer.send(&Value::Array(events));
    for ws in [&mut on_b, &mut on_c] {
        let got = collect(ws, 50).await;
        assert_exactly_once_in_order(&got, &["a"], 50);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_subscribers_of_a_group_receives_none_of_it() {
    let a = cluster_node("a", |_| {});
    let b = cluster_node("b", |_| {});
    let c = cluster_node("c", |_| {});
    mesh(&[("a", &a), ("b", &b), ("c", &c)]).await;
    let mut on_b = connect(b.addr, &token(1)).await;
    subscribe(&mut on_b, groups(&["job_events-1"])).await;
    let mut on_c = connect(c.addr, &token(1)).await;
    subscribe(&mut on_c, groups(&["job_events-2"])).await;
    emit_batch(a.addr, "a", "job_events-1", 0..100).await;
    let got = collect(&mut on_b, 100).await;
    assert_exactly_once_in_order(&got, &["a"], 100);
    assert_eq!(
        labelled(
            b.addr,
            "wsrelay_backplane_events_received_total{peer=\"a\"}"
        )
        .await,
        100
    );
    assert_eq!(
        labelled(
            c.addr,
            "wsrelay_backplane_events_received_total{peer=\"a\"}"
        )
        .await,
        0
    );
    let to_c = format!("wsrelay_backplane_events_sent_total{{peer=\"{}\"}}", c.addr);
    let to_b = format!("wsrelay_backplane_events_sent_total{{peer=\"{}\"}}", b.addr);
    assert_eq!(labelled(a.addr, &to_c).await, 0);
    // The sender counts after its write returns: wait for it.
    wait_metric(a.addr, &format!("{to_b} 100")).await;
    // And once C's client wants the group, C gets it.
    subscribe(&mut on_c, groups(&["job_events-1"])).await;
    emit_batch(a.addr, "a", "job_events-1", 100..110).await;
    let got = collect(&mut on_c, 10).await;
    assert_eq!(got[0]["seq"], 100);
}

/// A TCP proxy the test can cut: while cut, open connections are closed
/// and new ones are refused by closing them at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_link_resumes_with_nothing_lost_or_duplicated() {
    let a = cluster_node("a", |_| {});
    let b = cluster_node("b", |_| {});
    let proxy = cut::Cuttable::start(b.addr).await;
    a.node.set_peers(vec![peer(proxy.addr)]);
    let up = format!(
        "wsrelay_backplane_link_up{{peer=\"{}\",direction=\"out\"}}",
        proxy.addr
    );
    wait_metric(a.addr, &format!("{up} 1")).await;
    wait_metric(
        b.addr,
        "wsrelay_backplane_link_up{peer=\"a\",direction=\"in\"} 1",
    )
    .await;
    let mut on_b = connect(b.addr, &token(1)).await;
    subscribe(&mut on_b, groups(&["job_events-1"])).await;
    emit_batch(a.addr, "a", "job_events-1", 0..200).await;
    let mut got = collect(&mut on_b, 200).await;

    proxy.cut();
    wait_metric(a.addr, &format!("{up} 0")).await;
    // Emitted while the link is down: held in A's resend buffer.
    for from in (200..1200).step_by(100) {
        emit_batch(a.addr, "a", "job_events-1", from..from + 100).await;
    }
    proxy.heal();
    wait_metric(a.addr, &format!("{up} 1")).await;
    got.extend(collect(&mut on_b, 1000).await);
    assert_exactly_once_in_order(&got, &["a"], 1200);
    let extra = tokio::time::timeout(Duration::from_millis(300), on_b.next()).await;
    assert!(extra.is_err(), "unexpected extra message {extra:?}");
    assert!(
        labelled(
            a.addr,
            &format!(
                "wsrelay_backplane_reconnects_total{{peer=\"{}\"}}",
                proxy.addr
            )
        )
        .await
            >= 1
    );
    assert_eq!(
        labelled(b.addr, "wsrelay_backplane_gap_events_total{peer=\"a\"}").await,
        0
    );
}

/// Consecutive runs in a list of sequence numbers, for failure messages.
fn runs(seqs: &[u64]) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &s in seqs {
        match out.last_mut() {
            Some((_, end)) if *end + 1 == s => *end = s,
            _ => out.push((s, s)),
        }
    }
    out
}

/// Polls `name` on `addr` until `ok` holds of its value.
async fn metric_until(addr: SocketAddr, name: &str, ok: impl Fn(u64) -> bool) -> u64 {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let v = metric(addr, name).await;
        if ok(v) {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} stayed at {v} on {addr}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A node that reads the stream is SIGKILLed while its only peer has not
/// confirmed what it routed: first the peer's acknowledgements are held
/// (it delivered 300 entries the node never heard it deliver), then the
/// whole link (300 more the node routed and acknowledged in Redis, stuck
/// on their way). After the restart the node replays both runs to the
/// peer, which drops the first as replays of what it has: its client gets
/// every entry exactly once and in order, the 300 written while the node
/// was down included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_node_replays_to_its_peers_what_they_had_not_confirmed() {
    let redis = support::redis::RedisServer::start();
    let b = cluster_node("b", |_| {});
    let link = cut::Cuttable::start(b.addr).await;
    let (bin, url) = (env!("CARGO_BIN_EXE_wsrelay"), redis.url());
    let peer_url = format!("ws://{}", link.addr);
    let command = || {
        let mut c = tokio::process::Command::new(bin);
        c.args([
            "serve",
            "--admin-listen",
            "off",
            "--listen",
            "127.0.0.1:0",
            "--jwt-secret",
            SECRET,
        ])
        .args(["--redis", &url, "--node-id", "a", "--backlog-hold-ms", "0"])
        .args(["--backplane-secret", BACKPLANE, "--peer", &peer_url])
        // The stalled link must not be given up while the test holds it.
        .args(["--peer-ping-interval-ms", "60000", "--io", io_name()])
        .env("RUST_LOG", "info");
        c
    };
    let (mut a, a_addr) = spawn_serve(&mut command()).await;
    let link_in = "wsrelay_backplane_link_up{peer=\"a\",direction=\"in\"} 1";
    wait_metric(b.addr, link_in).await;
    let mut on_b = connect(b.addr, &token(1)).await;
    // The reply waits until a has applied b's new interest.
    subscribe(&mut on_b, groups(&["job_events-1"])).await;
    let mut writer = wsrelay::producer::StreamWriter::connect(&url, "wsrelay:events")
        .await
        .unwrap();
    let events = |r: std::ops::Range<u64>| -> Vec<(String, String)> {
        r.map(|i| ("job_events-1".to_owned(), format!(r#"{{"seq": {i}}}"#)))
            .collect()
    };
    let seq = |v: &Value| v["seq"].as_u64().unwrap();

    link.hold(cut::Hold::Back);
    writer.send(&events(0..300)).await.unwrap();
    for i in 0..300 {
        assert_eq!(seq(&next_json(&mut on_b).await), i);
    }
    let unconfirmed = "wsrelay_stream_unconfirmed";
    metric_until(a_addr, unconfirmed, |n| n == 300).await;
    link.hold(cut::Hold::Both);
    writer.send(&events(300..600)).await.unwrap();
    metric_until(a_addr, "wsrelay_events_in_total{source=\"stream\"}", |n| {
        n == 600
    })
    .await;
    metric_until(a_addr, unconfirmed, |n| n == 600).await;

    a.kill().await.unwrap();
    link.cut();
    link.hold(cut::Hold::Nothing);
    link.heal();
    writer.send(&events(600..900)).await.unwrap();
    let (_a, a_addr) = spawn_serve(&mut command()).await;
    // Everything from 300 on, once each, in order; then nothing more.
    let mut got = Vec::new();
    while got.len() < 600 {
        let quiet = if got.is_empty() {
            WAIT
        } else {
            Duration::from_secs(5)
        };
        match tokio::time::timeout(quiet, on_b.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => got.push(seq(&serde_json::from_str(&t).unwrap())),
            _ => break,
        }
    }
    let extra = tokio::time::timeout(Duration::from_millis(500), on_b.next()).await;
    assert!(extra.is_err(), "unexpected extra message {extra:?}");
    assert!(
        got.iter().copied().eq(300..900),
        "b's client got {} events, runs {:?}",
        got.len(),
        runs(&got)
    );
    assert_eq!(metric(a_addr, "wsrelay_stream_replayed_total").await, 600);
    assert_eq!(
        labelled(b.addr, "wsrelay_backplane_duplicates_total{peer=\"a\"}").await,
        300,
        "the replay of what b had delivered was dropped there"
    );
    metric_until(a_addr, unconfirmed, |n| n == 0).await;
}

/// A dialer that knows only the first native version (no event origins)
/// is answered in it and its events delivered: nodes of both versions
/// link during a rolling upgrade.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dialer_offering_only_the_first_native_version_is_served_in_it() {
    use wsrelay::backplane::wire;
    let a = cluster_node("a", |_| {});
    let mut on_a = connect(a.addr, &token(1)).await;
    subscribe(&mut on_a, groups(&["job_events-3"])).await;
    let mut req = format!("ws://{}/websocket/broadcast/", a.addr)
        .into_client_request()
        .unwrap();
    let h = req.headers_mut();
    h.insert("secret", python_header(BACKPLANE, None).parse().unwrap());
    h.insert(
        "sec-websocket-protocol",
        wire::SUBPROTOCOL_V1.parse().unwrap(),
    );
    let auth = wsrelay::backplane::handshake::dial_header(BACKPLANE, "old", now(), rand::random());
    h.insert("wsrelay-auth", auth.parse().unwrap());
    let (mut ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(
        resp.headers()["sec-websocket-protocol"],
        wire::SUBPROTOCOL_V1
    );
    ws.send(Message::Binary(wire::hello_version("old", 7, 1).to_vec()))
        .await
        .unwrap();
    let mut w = wire::EventsWriter::start_version(bytes::BytesMut::new(), 0, 1, 1);
    w.push("job_events-3", wire::Origin::None, br#"{"v": 1}"#);
    ws.send(Message::Binary(w.finish().0.to_vec()))
        .await
        .unwrap();
    assert_eq!(next_json(&mut on_a).await, json!({"v": 1}));
    // Its welcome came in the first version's form.
    let Some(Ok(Message::Binary(welcome))) = ws.next().await else {
        panic!("no welcome");
    };
    assert!(matches!(
        wire::decode_version(&welcome, 1),
        Ok(wire::PeerMessage::Welcome { node: "a", .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_is_linked_again_without_intervention() {
    let a = cluster_node("a", |_| {});
    let b = cluster_node("b", |_| {});
    let c = cluster_node("c", |_| {});
    mesh(&[("a", &a), ("b", &b), ("c", &c)]).await;
    let c_addr = c.addr;
    c.node.shutdown();
    let up_a = format!("wsrelay_backplane_link_up{{peer=\"{c_addr}\",direction=\"out\"}}");
    wait_metric(a.addr, &format!("{up_a} 0")).await;
    // Start C again on the same port, knowing its peers.
    let c = cluster_node("c", |cfg| {
        cfg.listen = c_addr;
        cfg.peers = vec![format!("ws://{}", a.addr), format!("ws://{}", b.addr)];
    });
    wait_metric(a.addr, &format!("{up_a} 1")).await;
    wait_metric(
        b.addr,
        &format!("wsrelay_backplane_link_up{{peer=\"{c_addr}\",direction=\"out\"}} 1"),
    )
    .await;
    wait_metric(
        c.addr,
        "wsrelay_backplane_link_up{peer=\"a\",direction=\"in\"} 1",
    )
    .await;
    wait_metric(
        c.addr,
        "wsrelay_backplane_link_up{peer=\"b\",direction=\"in\"} 1",
    )
    .await;
    wait_metric(
        a.addr,
        "wsrelay_backplane_link_up{peer=\"c\",direction=\"in\"} 1",
    )
    .await;
    let mut on_c = connect(c.addr, &token(1)).await;
    subscribe(&mut on_c, groups(&["job_events-5"])).await;
    let mut on_a = connect(a.addr, &token(1)).await;
    subscribe(&mut on_a, groups(&["job_events-5"])).await;
    emit_batch(a.addr, "a", "job_events-5", 0..20).await;
    emit_batch(c.addr, "c", "job_events-5", 0..20).await;
    let got = collect(&mut on_c, 40).await;
    assert_exactly_once_in_order(&got, &["a", "c"], 20);
    let got = collect(&mut on_a, 40).await;
    assert_exactly_once_in_order(&got, &["a", "c"], 20);
}

// === AWX's secret header and its 2020 envelope ===

/// The header built the way AWX builds it, by Python's own json.dumps and
/// hmac, for `nonce` (default: now).
fn python_header(secret: &str, nonce: Option<u64>) -> String {
    let code = r#"
import hmac, hashlib, json, sys, time
secret = sys.argv[1]
nonce = sys.argv[2] if len(sys.argv) > 2 else str(int(time.time()))
secret_payload = json.dumps({"secret": secret, "nonce": nonce})
digest = hmac.new(secret.encode("utf-8"), msg=secret_payload.encode("utf-8"), digestmod="sha256").hexdigest()
print(f"HMAC-SHA256 {nonce}:{digest}")
"#;
    let mut cmd = std::process::Command::new(support::redis::python());
    cmd.arg("-c").arg(code).arg(secret);
    if let Some(n) = nonce {
        cmd.arg(n.to_string());
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// The next text message on a peer link (pings skipped), as JSON.
async fn next_peer_json(ws: &mut Ws) -> Value {
    loop {
        let m = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a message in time")
            .expect("link open")
            .expect("a frame");
        if let Message::Text(t) = m {
            return serde_json::from_str(&t).unwrap();
        }
    }
}

/// Waits, if needed, until early in a second, and returns that second.
async fn start_of_a_second() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    if t.subsec_millis() > 300 {
        tokio::time::sleep(Duration::from_millis(1010 - t.subsec_millis() as u64)).await;
    }
    now()
}

async fn dial_with_header(addr: SocketAddr, path: &str, header: &str) -> Result<Ws, (u16, String)> {
    let mut req = format!("ws://{addr}{path}").into_client_request().unwrap();
    req.headers_mut().insert("secret", header.parse().unwrap());
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err((
            resp.status().as_u16(),
            String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default()).into_owned(),
        )),
        Err(e) => panic!("dial: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn awx_header_from_python_is_accepted_and_bad_ones_get_403() {
    let a = cluster_node("a", |_| {});
    let mut awx = dial_with_header(
        a.addr,
        "/websocket/broadcast/",
        &python_header(BACKPLANE, None),
    )
    .await
    .expect("Python-built header accepted");
    wait_metric(
        a.addr,
        "wsrelay_backplane_link_up{peer=\"awx-2020\",direction=\"in\"} 1",
    )
    .await;
    let payload = r#"{"stdout":"\u001b[0;32mok: [host]\u001b[0m","counter":1}"#;
    emit_one(a.addr, "job_events-3", payload).await;
    let v = next_peer_json(&mut awx).await;
    assert_eq!(v["group"], "job_events-3");
    let inner: Value = serde_json::from_str(v["message"].as_str().unwrap()).unwrap();
    assert_eq!(inner, serde_json::from_str::<Value>(payload).unwrap());
    awx.close(None).await.unwrap();

    type HeaderAt = fn(u64) -> String;
    let refusals: [(HeaderAt, &str); 5] = [
        (|_| python_header("another-secret", None), "bad_digest"),
        (
            |_| "HMAC-SHA256 not-a-valid-header".to_owned(),
            "bad_format",
        ),
        (|_| "HMAC-MD5 1:abcd".to_owned(), "bad_prefix"),
        (
            |now| python_header(BACKPLANE, Some(now - 301)),
            "stale_nonce",
        ),
        (
            |now| python_header(BACKPLANE, Some(now + 301)),
            "future_nonce",
        ),
    ];
    for (make, reason) in &refusals {
        // Exactly 301 s off the node's clock: start early in a second, so
        // the header is built and checked within the same second.
        let header = make(start_of_a_second().await);
        for path in ["/websocket/broadcast/", "/websocket/relay/"] {
            let (status, body) = dial_with_header(a.addr, path, &header)
                .await
                .map(|_| ())
                .expect_err("refused");
            assert_eq!(status, 403, "{reason}: {body}");
        }
        wait_metric(
            a.addr,
            &format!("wsrelay_backplane_auth_failures_total{{reason=\"{reason}\"}} 2"),
        )
        .await;
    }
    // Within the window is fine.
    let now = start_of_a_second().await;
    dial_with_header(
        a.addr,
        "/websocket/broadcast/",
        &python_header(BACKPLANE, Some(now - 290)),
    )
    .await
    .expect("290 s old is within the window");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_a_backplane_secret_refuses_every_peer() {
    let lone = start(|_| {});
    let (status, body) = dial_with_header(
        lone.addr,
        "/websocket/broadcast/",
        &python_header(BACKPLANE, None),
    )
    .await
    .map(|_| ())
    .expect_err("refused");
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("no --backplane-secret"), "{body}");
    // And a node with the wrong secret never joins a cluster.
    let a = cluster_node("a", |_| {});
    let intruder = start(|c| {
        c.node_id = "intruder".into();
        c.backplane_secret = Some("wrong".into());
        c.peer_ping_interval = Duration::from_millis(500);
    });
    intruder.node.set_peers(vec![peer(a.addr)]);
    let deadline = tokio::time::Instant::now() + WAIT;
    while labelled(
        a.addr,
        "wsrelay_backplane_auth_failures_total{reason=\"bad_digest\"}",
    )
    .await
        == 0
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the intruder never dialled"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let up = format!(
        "wsrelay_backplane_link_up{{peer=\"{}\",direction=\"out\"}}",
        a.addr
    );
    assert_eq!(labelled(intruder.addr, &up).await, 0);
}

// === AWX's forms between wsrelay nodes (mixed clusters) ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn awx_2020_and_2022_peers_are_dialled_the_way_awx_does() {
    // A dials B as an AWX 2020 node: B sends A its every local event.
    // A dials C as an AWX 2022 node: C subscribes, A pushes its events.
    let a = cluster_node("a", |_| {});
    let b = cluster_node("b", |_| {});
    let c = cluster_node("c", |_| {});
    a.node.set_peers(vec![
        PeerSpec::parse(&format!("awx-2020+ws://{}", b.addr)).unwrap(),
        PeerSpec::parse(&format!("awx-2022+ws://{}", c.addr)).unwrap(),
    ]);
    wait_metric(
        b.addr,
        "wsrelay_backplane_link_up{peer=\"awx-2020\",direction=\"in\"} 1",
    )
    .await;
    wait_metric(
        c.addr,
        "wsrelay_backplane_link_up{peer=\"awx-2022\",direction=\"in\"} 1",
    )
    .await;
    let mut on_a = connect(a.addr, &token(1)).await;
    subscribe(&mut on_a, groups(&["job_events-5"])).await;
    let mut on_c = connect(c.addr, &token(1)).await;
    subscribe(&mut on_c, groups(&["job_events-5"])).await;
    // C's consumer.subscribe reaches A asynchronously (AWX's form has no
    // acknowledgement): wait until A's link carries the group.
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut seq = 0;
    loop {
        emit_batch(a.addr, "a", "job_events-5", seq..seq + 1).await;
        seq += 1;
        let first = collect(&mut on_a, 1).await;
        assert_eq!(first[0]["seq"], seq - 1);
        if let Ok(Some(Ok(Message::Text(t)))) =
            tokio::time::timeout(Duration::from_millis(200), on_c.next()).await
        {
            let v: Value = serde_json::from_str(&t).unwrap();
            assert_eq!(v["origin"], "a");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "C never subscribed on A"
        );
    }
    let from = seq;
    emit_batch(a.addr, "a", "job_events-5", from..from + 30).await;
    let got = collect(&mut on_c, 30).await;
    assert_eq!(got[0]["seq"], from);
    assert_eq!(got[29]["seq"], from + 29);
    // B's local events reach A's client over the 2020 form.
    emit_batch(b.addr, "b", "job_events-5", 0..30).await;
    let got = collect(&mut on_a, 30 + 30).await;
    let from_b: Vec<_> = got.iter().filter(|v| v["origin"] == "b").collect();
    assert_eq!(from_b.len(), 30);
    assert_eq!(from_b[29]["seq"], 29);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_endpoint_speaks_awx_2022() {
    let a = cluster_node("a", |_| {});
    let mut on_a = connect(a.addr, &token(1)).await;
    subscribe(&mut on_a, groups(&["job_events-9"])).await;
    let mut awx = dial_with_header(a.addr, "/websocket/relay/", &python_header(BACKPLANE, None))
        .await
        .expect("accepted");
    let sub = next_peer_json(&mut awx).await;
    assert_eq!(sub["type"], "consumer.subscribe");
    assert_eq!(sub["groups"], json!(["job_events-9"]));
    let text = json!({"group": "job_events-9", "message": {"type": "internal.message", "text": "{\"counter\": 5}"}});
    awx.send(Message::Text(text.to_string())).await.unwrap();
    assert_eq!(next_json(&mut on_a).await, json!({"counter": 5}));
    subscribe(&mut on_a, groups(&[])).await;
    let unsub = next_peer_json(&mut awx).await;
    assert_eq!(unsub["type"], "consumer.unsubscribe");
    assert_eq!(unsub["groups"], json!(["job_events-9"]));
}

// === AWX's stats key ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_websocket_stats_are_written_in_awx_format() {
    let redis = support::redis::RedisServer::start();
    let a = cluster_node("a", |_| {});
    let b = cluster_node("b-node.example", |c| {
        c.redis = vec![redis.url()];
        c.stream_key = String::new();
    });
    a.node.set_peers(vec![peer(b.addr)]);
    wait_metric(
        b.addr,
        "wsrelay_backplane_link_up{peer=\"a\",direction=\"in\"} 1",
    )
    .await;
    let mut on_b = connect(b.addr, &token(1)).await;
    subscribe(&mut on_b, groups(&["job_events-5"])).await;
    emit_batch(a.addr, "a", "job_events-5", 0..7).await;
    collect(&mut on_b, 7).await;
    // AWX's own reader: prometheus_client's parser over the key's text.
    let code = r#"
import sys, time, redis
from prometheus_client import parser
r = redis.Redis.from_url(sys.argv[1])
deadline = time.time() + 20
while time.time() < deadline:
    text = (r.get("broadcast_websocket_stats") or b"").decode("utf-8")
    fams = {f.name: f for f in parser.text_string_to_metric_families(text)}
    total = fams.get("awx_a_messages_received")
    if total and total.samples[0].value == 7.0:
        conn = fams["awx_a_connection"]
        states = {s.labels["awx_a_connection"]: s.value for s in conn.samples}
        assert states == {"connected": 1.0, "disconnected": 0.0}, states
        assert "awx_a_messages_received_per_minute" in fams
        print("ok")
        sys.exit(0)
    time.sleep(0.5)
print("stats never showed 7 messages from a:", text)
sys.exit(1)
"#;
    let out = tokio::process::Command::new(support::redis::python())
        .arg("-c")
        .arg(code)
        .arg(redis.url())
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

// === run-time peer changes ===

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_adds_and_removes_peers_and_clients_stay() {
    let dir = std::env::temp_dir().join(format!("wsrelay-sighup-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ports = [free_port(), free_port(), free_port()];
    let names = ["a", "b", "c"];
    let write = |i: usize, peers: &[usize]| {
        let peers: Vec<String> = peers
            .iter()
            .map(|&p| format!("\"ws://127.0.0.1:{}\"", ports[p]))
            .collect();
        std::fs::write(
            dir.join(format!("{}.toml", names[i])),
            format!(
                "listen = \"127.0.0.1:{}\"\nnode_id = \"{}\"\npeers = [{}]\nbackplane_secret = \"{BACKPLANE}\"\n\
                 jwt_secret = \"{SECRET}\"\nemit_key = \"{EMIT_KEY}\"\nworkers = 1\npeer_ping_interval_ms = 500\n",
                ports[i],
                names[i],
                peers.join(", ")
            ),
        )
        .unwrap();
    };
    // A knows B; B knows A; C is alone.
    write(0, &[1]);
    write(1, &[0]);
    write(2, &[]);
    let mut children = Vec::new();
    let mut addrs = Vec::new();
    for n in names {
        let (child, addr) = spawn_serve(
            tokio::process::Command::new(env!("CARGO_BIN_EXE_wsrelay"))
                .args(["serve", "--admin-listen", "off"])
                .arg("--config")
                .arg(dir.join(format!("{n}.toml"))),
        )
        .await;
        children.push(child);
        addrs.push(addr);
    }
    let out_up = |to: usize, v: u8| {
        format!(
            "wsrelay_backplane_link_up{{peer=\"127.0.0.1:{}\",direction=\"out\"}} {v}",
            ports[to]
        )
    };
    wait_metric(addrs[0], &out_up(1, 1)).await;
    let mut on_b = connect(addrs[1], &token(1)).await;
    subscribe(&mut on_b, groups(&["job_events-5"])).await;
    let mut on_c = connect(addrs[2], &token(1)).await;
    subscribe(&mut on_c, groups(&["job_events-5"])).await;

    // A now knows C instead of B: dial C, drop B.
    write(0, &[2]);
    let hup = |child: &tokio::process::Child| {
        let pid = child.id().unwrap() as i32;
        let r = std::process::Command::new("kill")
            .arg("-HUP")
            .arg(pid.to_string())
            .status()
            .unwrap();
        assert!(r.success());
    };
    hup(&children[0]);
    wait_metric(addrs[0], &out_up(2, 1)).await;
    wait_metric(addrs[0], &out_up(1, 0)).await;
    wait_metric(
        addrs[2],
        "wsrelay_backplane_link_up{peer=\"a\",direction=\"in\"} 1",
    )
    .await;
    // A change of C's groups: the reply waits until A applied C's interest.
    subscribe(&mut on_c, groups(&["job_events-5", "job_events-8"])).await;
    emit_batch(addrs[0], "a", "job_events-5", 0..10).await;
    let got = collect(&mut on_c, 10).await;
    assert_exactly_once_in_order(&got, &["a"], 10);
    // B's client was never disturbed: it is still connected and served.
    let reply = subscribe(&mut on_b, groups(&["job_events-5", "job_events-6"])).await;
    assert_eq!(
        sorted(reply["groups_current"].clone()),
        json!(["job_events-5", "job_events-6"])
    );
    emit_batch(addrs[1], "b", "job_events-5", 0..3).await;
    let got = collect(&mut on_b, 3).await;
    assert_exactly_once_in_order(&got, &["b"], 3);
    let _ = std::fs::remove_dir_all(&dir);
}

// === wss:// peers ===

/// A TLS terminator in front of `to` (as nginx fronts AWX nodes), with a
/// fresh self-signed certificate for `localhost`; returns its address and
/// the certificate in PEM.
async fn tls_terminator(to: SocketAddr) -> (SocketAddr, String) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let key = rustls_pki_types::PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
    let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![ck.cert.der().clone()], key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut plain) = TcpStream::connect(to).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    (addr, ck.cert.pem())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_peers_verify_certificates_unless_told_not_to() {
    let b = cluster_node("b", |_| {});
    let (tls, pem) = tls_terminator(b.addr).await;
    let url = PeerSpec::parse(&format!("wss://localhost:{}", tls.port())).unwrap();
    let label = format!("localhost:{}", tls.port());
    let mut on_b = connect(b.addr, &token(1)).await;
    subscribe(&mut on_b, groups(&["job_events-5"])).await;

    // AWX's default for self-signed nodes: no verification.
    let lax = cluster_node("lax", |c| c.peer_tls_verify = false);
    lax.node.set_peers(vec![url.clone()]);
    wait_metric(
        b.addr,
        "wsrelay_backplane_link_up{peer=\"lax\",direction=\"in\"} 1",
    )
    .await;
    // Resubscribing to a changed set waits for lax to apply it.
    subscribe(&mut on_b, groups(&["job_events-5", "job_events-6"])).await;
    emit_batch(lax.addr, "lax", "job_events-5", 0..5).await;
    let got = collect(&mut on_b, 5).await;
    assert_exactly_once_in_order(&got, &["lax"], 5);

    // The default verifies, so a self-signed certificate keeps it out...
    let strict = cluster_node("strict", |_| {});
    strict.node.set_peers(vec![url.clone()]);
    let failures = format!("wsrelay_backplane_link_failures_total{{peer=\"{label}\"}}");
    let deadline = tokio::time::Instant::now() + WAIT;
    while labelled(strict.addr, &failures).await == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "strict never failed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let up = format!("wsrelay_backplane_link_up{{peer=\"{label}\",direction=\"out\"}}");
    assert_eq!(labelled(strict.addr, &up).await, 0);

    // ...until the certificate's CA is given.
    let ca = std::env::temp_dir().join(format!("wsrelay-ca-{}.pem", std::process::id()));
    std::fs::write(&ca, pem).unwrap();
    let trusting = cluster_node("trusting", |c| c.peer_ca_file = Some(ca.clone()));
    trusting.node.set_peers(vec![url]);
    wait_metric(
        b.addr,
        "wsrelay_backplane_link_up{peer=\"trusting\",direction=\"in\"} 1",
    )
    .await;
    let _ = std::fs::remove_file(&ca);
}

// === the demo: the README's first command ===

#[test]
fn the_demo_runs_a_local_cluster_without_loss() {
    let opts = wsrelay::demo::DemoOptions {
        jobs: 4,
        viewers: 3,
        watchers: 3,
        rate: 2_000,
        duration: Some(2),
        workers: 1,
        nodes: 3,
        quiet: true,
        ..Default::default()
    };
    let s = wsrelay::demo::run(&opts).expect("demo runs");
    assert!(s.events > 0 && s.received > 0, "{s:?}");
    assert_eq!(s.lost(), 0, "{s:?}");
    assert_eq!(s.out_of_order, 0, "{s:?}");
    assert_eq!(s.server_dropped, 0, "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_breaking_the_native_protocol_is_closed_with_1002_and_the_reason() {
    let a = cluster_node("a", |_| {});
    let hello = wsrelay::backplane::wire::hello("intruder-free", 7).to_vec();
    for (messages, reason) in [
        (vec![Message::Binary(vec![0x55, 1, 2])], "expected hello"),
        (vec![Message::Text("hello".to_owned())], "expected hello"),
        (
            vec![
                Message::Binary(hello.clone()),
                Message::Binary(vec![0x02, 0, 0]),
            ],
            "malformed peer message",
        ),
        (
            vec![Message::Binary(hello), Message::Text("{}".to_owned())],
            "text frame on a native link",
        ),
    ] {
        let mut req = format!("ws://{}/websocket/broadcast/", a.addr)
            .into_client_request()
            .unwrap();
        let h = req.headers_mut();
        h.insert("secret", python_header(BACKPLANE, None).parse().unwrap());
        h.insert("sec-websocket-protocol", "wsrelay.peer.v2".parse().unwrap());
        let auth = wsrelay::backplane::handshake::dial_header(
            BACKPLANE,
            "intruder-free",
            now(),
            rand::random(),
        );
        h.insert("wsrelay-auth", auth.parse().unwrap());
        let (mut ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
        assert_eq!(
            resp.headers()["sec-websocket-protocol"],
            "wsrelay.peer.v2",
            "the native protocol was selected"
        );
        for m in messages {
            ws.send(m).await.unwrap();
        }
        // After a hello the node first sends its welcome and interest.
        let close = loop {
            match tokio::time::timeout(WAIT, ws.next()).await.unwrap() {
                Some(Ok(Message::Close(Some(f)))) => break f,
                Some(Ok(Message::Binary(_))) => continue,
                other => panic!("expected a close, got {other:?}"),
            }
        };
        assert_eq!(
            (u16::from(close.code), close.reason.as_ref()),
            (1002, reason)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_keeps_up_is_not_closed_for_a_burst_its_node_takes_in_at_once() {
    // Small batches on the sender: one read of the link brings dozens of
    // them, and the receiving worker's inbox holds several times what a
    // client's queue may (256 frames here) at once, through no fault of the
    // client. Queued in one round, they filled the queue before its writer
    // ran once, and a client reading as fast as it could was closed 1013
    // "slow consumer".
    let a = cluster_node("a", |c| c.peer_batch_bytes = 2048);
    let b = cluster_node("b", |c| {
        c.workers = 1;
        c.queue_frames = 256;
    });
    mesh(&[("a", &a), ("b", &b)]).await;
    let mut ws = connect(b.addr, &token(1)).await;
    subscribe(&mut ws, groups(&["job_events-1"])).await;
    const EVENTS: u64 = 2000;
    emit_batch(a.addr, "a", "job_events-1", 0..EVENTS).await;
    let got = collect(&mut ws, EVENTS as usize).await;
    assert_exactly_once_in_order(&got, &["a"], EVENTS);
    assert_eq!(
        labelled(
            b.addr,
            "wsrelay_server_closes_total{reason=\"slow_consumer\"}"
        )
        .await,
        0
    );
}
