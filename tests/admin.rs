//! The operators' side of a node: the admin listener and its status page
//! (the page, its data, its tail of one group over a real websocket), the
//! admin key on either listener, `/readyz` following Redis, and the
//! metrics an operator watches during a storm (delivery latency, queue
//! depth, ingest lag). The page in a real browser is `tests/browser.rs`.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{json, Value};
use support::redis::RedisServer;
use support::*;
use tokio_tungstenite::tungstenite::Message;

const ADMIN_KEY: &str = "admin-key-for-tests-0123456789";

fn admin_node(tune: impl FnOnce(&mut wsrelay::Config)) -> (TestNode, SocketAddr) {
    let n = start(|c| {
        c.admin_listen = Some("127.0.0.1:0".parse().unwrap());
        tune(c);
    });
    let admin = n.node.admin_addr().expect("an admin listener");
    (n, admin)
}

async fn get(addr: SocketAddr, path: &str, headers: &str) -> (u16, String) {
    let req = format!("GET {path} HTTP/1.1\r\nHost: t\r\n{headers}Connection: close\r\n\r\n");
    http(addr, req.as_bytes()).await
}

/// The whole response head and body, for header checks.
async fn raw(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

/// Polls `/status.json` until `ok` holds (the sampler runs once a second).
async fn status_until(addr: SocketAddr, key: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (code, body) = get(addr, &format!("/status.json{key}"), "").await;
        assert_eq!(code, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        if ok(&v) {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "status never got there: {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_serves_the_status_page_its_data_and_nothing_for_clients() {
    let (n, admin) = admin_node(|_| {});
    // The page and its own files, with a policy that loads nothing else.
    let page = raw(admin, "/status").await;
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(page.contains("Content-Security-Policy: default-src 'none'; script-src 'self'"));
    assert!(page.contains("<script src=\"/status.js\""));
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "nothing from elsewhere"
    );
    assert_eq!(get(admin, "/status.js", "").await.0, 200);
    assert_eq!(get(admin, "/status.css", "").await.0, 200);
    // Data: the node's own figures, and seconds of history as they pass.
    let mut ws = connect(n.addr, &token(1)).await;
    subscribe(&mut ws, json!({"jobs": ["status_changed"]})).await;
    for i in 0..50 {
        emit_one(n.addr, "jobs-status_changed", &format!(r#"{{"i": {i}}}"#)).await;
    }
    let s = status_until(admin, "", |s| {
        s["totals"]["deliveries"].as_f64() == Some(50.0)
            && s["history"].as_array().unwrap().len() >= 2
    })
    .await;
    assert_eq!(s["io"], io_name());
    assert_eq!(s["workers"], 2);
    assert_eq!(s["connections"], 1.0);
    assert_eq!(s["groups"], 1);
    assert_eq!(s["totals"]["events_in"], 50.0);
    assert_eq!(s["redis"], "off");
    assert_eq!(s["ready"], true);
    let rates: f64 = s["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["deliveries"].as_f64().unwrap())
        .sum();
    assert!(rates > 0.0, "the history shows the deliveries: {s}");
    // Operators only: no client endpoint on the admin listener, and no
    // status page on the client listener without a key.
    assert_eq!(get(admin, "/websocket/", "").await.0, 404);
    assert_eq!(get(admin, "/api/v1/emit", "").await.0, 404);
    assert_eq!(get(n.addr, "/status", "").await.0, 404);
    assert_eq!(get(n.addr, "/status.json", "").await.0, 404);
    // Health, readiness and metrics on both.
    for addr in [admin, n.addr] {
        assert_eq!(get(addr, "/healthz", "").await.0, 200);
        assert_eq!(get(addr, "/readyz", "").await.0, 200);
        assert_eq!(get(addr, "/metrics", "").await.0, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_key_is_required_wherever_it_is_set() {
    let (n, admin) = admin_node(|c| c.admin_key = Some(ADMIN_KEY.into()));
    let bearer = format!("Authorization: Bearer {ADMIN_KEY}\r\n");
    for addr in [n.addr, admin] {
        for path in ["/status", "/status.json"] {
            let (code, body) = get(addr, path, "").await;
            assert_eq!(code, 401, "{path} without the key");
            assert!(body.contains("the admin key is required"), "{body}");
            assert_eq!(
                get(addr, path, "Authorization: Bearer wrong\r\n").await.0,
                401
            );
            assert_eq!(get(addr, &format!("{path}?key=wrong"), "").await.0, 401);
            assert_eq!(get(addr, path, &bearer).await.0, 200, "{path} with the key");
            assert_eq!(
                get(addr, &format!("{path}?key={ADMIN_KEY}"), "").await.0,
                200
            );
        }
        // The tail too, before any upgrade.
        let url = format!("ws://{addr}/status/tail?group=g");
        match tokio_tungstenite::connect_async(url).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 401),
            other => panic!("the tail opened without the key: {other:?}"),
        }
    }
    let page = raw(n.addr, &format!("/status?key={ADMIN_KEY}")).await;
    assert!(page.contains("WWW-Authenticate") || page.starts_with("HTTP/1.1 200"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tail_follows_one_group_as_an_observer_that_drops_its_oldest() {
    let (n, admin) = admin_node(|_| {});
    let mut tail = connect_raw(admin, "/status/tail?group=job_events-7").await;
    assert_eq!(next_json(&mut tail).await, json!({"tail": "job_events-7"}));
    emit_one(n.addr, "job_events-7", r#"{"counter": 1}"#).await;
    emit_one(n.addr, "job_events-8", r#"{"counter": 2}"#).await;
    emit_one(n.addr, "job_events-7", r#"{"counter": 3}"#).await;
    assert_eq!(next_json(&mut tail).await, json!({"counter": 1}));
    assert_eq!(next_json(&mut tail).await, json!({"counter": 3}));
    // Its messages are ignored: it cannot subscribe to anything else.
    send(&mut tail, r#"{"groups": {"job_events": [8]}}"#).await;
    emit_one(n.addr, "job_events-8", r#"{"counter": 4}"#).await;
    emit_one(n.addr, "job_events-7", r#"{"counter": 5}"#).await;
    assert_eq!(next_json(&mut tail).await, json!({"counter": 5}));
    // Not a client: the connection gauge does not count it.
    assert_eq!(metric(n.addr, "wsrelay_connections{worker=\"0\"}").await, 0);
    // A page that stops reading during a storm: the tail drops its oldest
    // within its small bound and says so, counted apart from clients'.
    let batch: Vec<Value> = (0..2_000)
        .map(|i| json!({"group": "job_events-7", "payload": {"n": i, "pad": "x".repeat(2000)}}))
        .collect();
    for _ in 0..5 {
        let (code, _) = emit(n.addr, &Value::Array(batch.clone()).to_string()).await;
        assert_eq!(code, 200);
    }
    let mut dropped = 0u64;
    let mut got = 0u64;
    while let Ok(Some(Ok(Message::Text(t)))) =
        tokio::time::timeout(Duration::from_secs(2), tail.next()).await
    {
        let v: Value = serde_json::from_str(&t).unwrap();
        match v.get("dropped").and_then(Value::as_u64) {
            Some(d) => dropped += d,
            None => got += 1,
        }
    }
    assert_eq!(got + dropped, 10_000, "every event delivered or counted");
    assert!(dropped > 0, "a tail that did not read dropped nothing");
    assert_eq!(
        metric(n.addr, "wsrelay_status_tail_dropped_total").await,
        dropped
    );
    assert_eq!(metric(n.addr, "wsrelay_events_dropped_total").await, 0);
    // Bad requests: no group, or not an upgrade.
    assert_eq!(get(admin, "/status/tail", "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n").await.0, 400);
    assert_eq!(get(admin, "/status/tail?group=g", "").await.0, 426);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_flips_when_redis_stops_and_back_when_it_returns() {
    let mut redis = RedisServer::start();
    let port = redis.port;
    let n = start(|c| c.redis = vec![redis.url()]);
    let ready = |addr| async move {
        let (code, body) = get(addr, "/readyz", "").await;
        (code, serde_json::from_str::<Value>(&body).unwrap())
    };
    let until = |want: u16| async move {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let (code, body) = ready(n.addr).await;
            if code == want {
                return body;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "/readyz stayed {code}: {body}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let up = until(200).await;
    assert_eq!(
        up,
        json!({"ready": true, "accepting": true, "redis": "up", "broker": "off", "links": []})
    );
    redis.stop();
    let down = until(503).await;
    assert_eq!(
        (down["ready"].clone(), down["redis"].clone()),
        (json!(false), json!("down"))
    );
    // A client already connected keeps its connection meanwhile.
    let _redis = RedisServer::start_on(port);
    let back = until(200).await;
    assert_eq!(back["redis"], "up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_see_delivery_latency_queue_depth_and_ingest_lag() {
    let redis = RedisServer::start();
    let n = start(|c| {
        c.redis = vec![redis.url()];
        c.backlog_hold = Duration::ZERO;
    });
    let mut ws = connect(n.addr, &token(1)).await;
    subscribe(&mut ws, json!({"job_events": [1]})).await;
    for i in 0..20 {
        emit_one(n.addr, "job_events-1", &format!(r#"{{"i": {i}}}"#)).await;
        next_text(&mut ws).await;
    }
    let (_, body) = http(
        n.addr,
        b"GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n",
    )
    .await;
    let count: f64 = body
        .lines()
        .filter(|l| l.starts_with("wsrelay_delivery_latency_seconds_count{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    assert!(count >= 1.0, "writes observed: {count}\n{body}");
    let slow: f64 = body
        .lines()
        .filter(|l| l.starts_with("wsrelay_delivery_latency_seconds_bucket{le=\"+Inf\""))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    assert_eq!(slow, count, "every observation is in the histogram");
    assert!(body.contains("wsrelay_queued_frames{worker=\"0\"}"));
    assert!(body.contains("wsrelay_deepest_queue_frames{worker=\"1\"}"));
    // An entry written with an id from 1970: read 56 years late.
    redis.query(&[
        "XADD",
        "wsrelay:events",
        "1000-1",
        "group",
        "job_events-1",
        "payload",
        "{\"old\": 1}",
    ]);
    assert_eq!(next_json(&mut ws).await, json!({"old": 1}));
    let lag = body_metric(n.addr, "wsrelay_ingest_lag_seconds{source=\"stream\"}").await;
    assert!(lag > 1.7e9, "an entry from 1970 waited {lag} s");
    // A fresh one: read at once.
    redis.query(&[
        "XADD",
        "wsrelay:events",
        "*",
        "group",
        "job_events-1",
        "payload",
        "{\"new\": 1}",
    ]);
    assert_eq!(next_json(&mut ws).await, json!({"new": 1}));
    let lag = body_metric(n.addr, "wsrelay_ingest_lag_seconds{source=\"stream\"}").await;
    assert!(lag < 5.0, "a fresh entry waited {lag} s");
}

async fn body_metric(addr: SocketAddr, series: &str) -> f64 {
    let (_, body) = http(addr, b"GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n").await;
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series}"))
}
