//! AWX's producers through the real channels_redis package into a node,
//! against a real redis-server per test.

mod support;

use std::time::Duration;

use serde_json::json;
use support::redis::{awx_emit, RedisServer};
use support::*;

const NODE: &str = "test-node";

fn start_with_redis(urls: Vec<String>) -> TestNode {
    start(|c| {
        c.redis = urls;
        c.node_id = NODE.into();
        c.group_expiry_secs = 157_784_760; // AWX's
    })
}

/// Polls until `f` holds (Redis state changes asynchronously).
async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !f() {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn our_channel(group: &str) -> String {
    format!("specific.wsrelay_{NODE}!{group}")
}

#[tokio::test]
async fn awx_producers_of_both_eras_reach_clients_once_verbatim_in_order() {
    let redis = RedisServer::start();
    let n = start_with_redis(vec![redis.url()]);
    let mut ws = connect(n.addr, &token(1)).await;
    subscribe(
        &mut ws,
        json!({"jobs": ["status_changed"], "job_events": [42]}),
    )
    .await;
    // Another client on another group must see none of these.
    let mut other = connect(n.addr, &token(2)).await;
    subscribe(&mut other, json!({"job_events": [7]})).await;

    for era in ["2022", "2020"] {
        let events: Vec<serde_json::Value> = (0..40)
            .map(|i| {
                if i % 4 == 0 {
                    json!(["jobs-status_changed", {"unified_job_id": 42, "status": "running", "n": i, "era": era}])
                } else {
                    json!(["job_events-42", {"counter": i, "stdout": "\u{1b}[0;32mok: [web-01]\u{1b}[0m caf\u{e9}", "era": era}])
                }
            })
            .collect();
        let sent = awx_emit(era, &[redis.url()], &json!(events));
        for text in &sent {
            assert_eq!(&next_text(&mut ws).await, text, "era {era}");
        }
    }
    // Exactly once: the 2020 broadcast-group_send copies never arrive; the
    // next thing either client sees is a fresh marker.
    let sent = awx_emit(
        "2022",
        &[redis.url()],
        &json!([["job_events-42", {"marker": 1}], ["job_events-7", {"marker": 2}]]),
    );
    assert_eq!(next_text(&mut ws).await, sent[0]);
    assert_eq!(next_text(&mut other).await, sent[1]);
    wait_metric(n.addr, "wsrelay_events_in_total{source=\"redis\"} 82").await;
}

#[tokio::test]
async fn memberships_follow_subscriptions() {
    let redis = RedisServer::start();
    let n = start_with_redis(vec![redis.url()]);
    let key = "asgi:group:job_events-42";
    let mut ws = connect(n.addr, &token(1)).await;
    // The reply waits for the membership (as AWX's awaited group_add), so
    // it is already there when the reply arrives.
    subscribe(&mut ws, json!({"job_events": [42]})).await;
    assert_eq!(
        redis.query(&["ZRANGE", key, "0", "-1"]),
        vec![our_channel("job_events-42")]
    );
    let ttl: i64 = redis.query(&["TTL", key])[0].parse().unwrap();
    assert!(ttl > 157_000_000, "EXPIRE is group_expiry, got {ttl}");
    // A second client on the same group adds nothing.
    let mut ws2 = connect(n.addr, &token(2)).await;
    subscribe(&mut ws2, json!({"job_events": [42]})).await;
    assert_eq!(redis.query(&["ZCARD", key]), vec!["1"]);
    subscribe(&mut ws, json!({})).await;
    assert_eq!(
        redis.query(&["ZCARD", key]),
        vec!["1"],
        "ws2 still holds it"
    );
    subscribe(&mut ws2, json!({"jobs": ["status_changed"]})).await;
    eventually("left job_events-42", || {
        redis.query(&["ZCARD", key]) == ["0"]
    })
    .await;
    assert_eq!(
        redis.query(&["ZRANGE", "asgi:group:jobs-status_changed", "0", "-1"]),
        vec![our_channel("jobs-status_changed")]
    );
    // A client that disconnects takes its memberships with it.
    drop(ws2);
    eventually("left on disconnect", || {
        redis.query(&["ZCARD", "asgi:group:jobs-status_changed"]) == ["0"]
    })
    .await;
}

#[tokio::test]
async fn several_redis_hosts_follow_channels_redis_consistent_hash() {
    let (a, b) = (RedisServer::start(), RedisServer::start());
    let urls = vec![a.url(), b.url()];
    let n = start_with_redis(urls.clone());
    // Groups whose keys land on each of the two hosts (crc32 ring).
    let groups: Vec<String> = (1..40).map(|i| format!("job_events-{i}")).collect();
    let host = |g: &str| wsrelay::ingest::channels_redis::consistent_hash(g, 2);
    let g0 = groups.iter().find(|g| host(g) == 0).unwrap().clone();
    let g1 = groups.iter().find(|g| host(g) == 1).unwrap().clone();
    let mut ws = connect(n.addr, &token(1)).await;
    let ids: Vec<&str> = [&g0, &g1]
        .iter()
        .map(|g| g.strip_prefix("job_events-").unwrap())
        .collect();
    let ids: Vec<u32> = ids.iter().map(|i| i.parse().unwrap()).collect();
    subscribe(&mut ws, json!({"job_events": ids})).await;
    assert_eq!(a.query(&["ZCARD", &format!("asgi:group:{g0}")]), vec!["1"]);
    assert_eq!(b.query(&["ZCARD", &format!("asgi:group:{g1}")]), vec!["1"]);
    let sent = awx_emit("2022", &urls, &json!([[g0, {"to": 0}], [g1, {"to": 1}]]));
    assert_eq!(next_text(&mut ws).await, sent[0]);
    assert_eq!(next_text(&mut ws).await, sent[1]);
}

/// A channels_redis member: 12 prefix bytes, then msgpack of `map`.
fn member(map: Vec<(&str, rmpv::Value)>) -> Vec<u8> {
    let mut out = vec![7u8; 12];
    let map = map
        .into_iter()
        .map(|(k, v)| (rmpv::Value::from(k), v))
        .collect();
    rmpv::encode::write_value(&mut out, &rmpv::Value::Map(map)).unwrap();
    out
}

#[tokio::test]
async fn malformed_entries_are_skipped_counted_and_good_ones_delivered() {
    let redis = RedisServer::start();
    let n = start_with_redis(vec![redis.url()]);
    let mut ws = connect(n.addr, &token(1)).await;
    subscribe(&mut ws, json!({"job_events": [1]})).await;
    let chan = || rmpv::Value::Array(vec![rmpv::Value::from(our_channel("job_events-1"))]);
    let good = |n: u32| {
        member(vec![
            ("type", "internal.message".into()),
            ("text", format!("{{\"n\": {n}}}").into()),
            ("__asgi_channel__", chan()),
        ])
    };
    // A msgpack str (fixstr of 2) whose bytes are not UTF-8, spliced by hand.
    let bad_utf8 = {
        let mut out = vec![7u8; 12];
        out.push(0x83);
        for v in ["type", "internal.message", "text"] {
            rmpv::encode::write_value(&mut out, &rmpv::Value::from(v)).unwrap();
        }
        out.extend_from_slice(&[0xa2, 0xff, 0xfe]);
        rmpv::encode::write_value(&mut out, &rmpv::Value::from("__asgi_channel__")).unwrap();
        rmpv::encode::write_value(&mut out, &chan()).unwrap();
        out
    };
    let entries: Vec<Vec<u8>> = vec![
        good(1),
        vec![1, 2, 3],
        [vec![0u8; 12], vec![0x85, 0xa4]].concat(), // a map of 5 cut short
        [vec![0u8; 12], vec![0x93, 1, 2, 3]].concat(),
        member(vec![
            ("type", "websocket.send".into()),
            ("text", "{}".into()),
            ("__asgi_channel__", chan()),
        ]),
        member(vec![
            ("type", "internal.message".into()),
            ("__asgi_channel__", chan()),
        ]),
        bad_utf8,
        member(vec![
            ("type", "internal.message".into()),
            ("text", "{}".into()),
        ]),
        good(2),
    ];
    // Written straight into this node's channel key, in order (rising
    // scores), as a producer's Lua script would.
    let key = format!("asgispecific.wsrelay_{NODE}!");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    for (i, e) in entries.into_iter().enumerate() {
        let score = format!("{:.6}", now + i as f64 * 0.001);
        redis.query_bytes(&[
            b"ZADD".to_vec(),
            key.clone().into_bytes(),
            score.into_bytes(),
            e,
        ]);
    }
    // One that is already past the 60 s message expiry.
    let old = format!("{:.6}", now - 120.0);
    redis.query_bytes(&[
        b"ZADD".to_vec(),
        key.clone().into_bytes(),
        old.into_bytes(),
        good(0),
    ]);
    assert_eq!(next_text(&mut ws).await, r#"{"n": 1}"#);
    assert_eq!(next_text(&mut ws).await, r#"{"n": 2}"#);
    for reason in [
        "short",
        "bad_msgpack",
        "not_a_map",
        "unknown_type",
        "bad_text",
        "text_not_utf8",
        "bad_channels",
        "expired",
    ] {
        wait_metric(
            n.addr,
            &format!("wsrelay_redis_skipped_total{{reason=\"{reason}\"}} 1"),
        )
        .await;
    }
}

#[tokio::test]
async fn a_redis_restart_is_survived_without_losing_clients() {
    let mut redis = RedisServer::start();
    let port = redis.port;
    let n = start_with_redis(vec![redis.url()]);
    let mut ws = connect(n.addr, &token(1)).await;
    subscribe(&mut ws, json!({"job_events": [5]})).await;
    let sent = awx_emit(
        "2022",
        &[redis.url()],
        &json!([["job_events-5", {"before": 1}]]),
    );
    assert_eq!(next_text(&mut ws).await, sent[0]);

    // Redis goes away and comes back empty (it keeps nothing on disk).
    redis.stop();
    wait_metric(n.addr, "wsrelay_redis_up 0").await;
    let redis = RedisServer::start_on(port);
    // The node re-registers on its own; the client never noticed.
    eventually("membership re-registered", || {
        redis.query(&["ZRANGE", "asgi:group:job_events-5", "0", "-1"])
            == [our_channel("job_events-5")]
    })
    .await;
    let sent = awx_emit(
        "2022",
        &[redis.url()],
        &json!([["job_events-5", {"after": 1}], ["job_events-5", {"after": 2}]]),
    );
    assert_eq!(next_text(&mut ws).await, sent[0]);
    assert_eq!(next_text(&mut ws).await, sent[1]);
    assert!(metric(n.addr, "wsrelay_redis_errors_total").await > 0);
    wait_metric(n.addr, "wsrelay_redis_up 1").await;
}
