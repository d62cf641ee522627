//! AWX's producers through the real channels_redis package into a node,
//! against a real redis-server per test.

mod support;

use std::time::Duration;

use serde_json::json;
use support::redis::{awx_emit, RedisServer};
use support::*;

const NODE: &str = "test-node";

fn start_with_redis(urls: Vec<String>) -> TestNode {
    start_with_redis_and(urls, |_| {})
}

fn start_with_redis_and(urls: Vec<String>, tune: impl FnOnce(&mut wsrelay::Config)) -> TestNode {
    start(|c| {
        c.redis = urls;
        c.node_id = NODE.into();
        c.group_expiry_secs = 157_784_760; // AWX's
        c.backlog_hold = Duration::ZERO;
        tune(c);
    })
}

fn stream_events(range: std::ops::Range<u32>, group: &str) -> Vec<(String, String)> {
    range
        .map(|i| {
            (
                group.to_owned(),
                format!(r#"{{"n": {i}, "stdout": "line {i}"}}"#),
            )
        })
        .collect()
}

fn seq_of(text: &str) -> u32 {
    serde_json::from_str::<serde_json::Value>(text).unwrap()["n"]
        .as_u64()
        .unwrap() as u32
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
    // The stream reader recovers too: its consumer group is created again.
    let events = stream_events(0..1, "job_events-5");
    let mut delivered = false;
    for _ in 0..100 {
        wsrelay::producer::redis_stream(&redis.url(), "wsrelay:events", &events)
            .await
            .unwrap();
        if let Ok(text) = tokio::time::timeout(Duration::from_millis(200), next_text(&mut ws)).await
        {
            assert_eq!(seq_of(&text), 0);
            delivered = true;
            break;
        }
    }
    assert!(delivered, "stream ingest resumed after the restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_stream_events_arrive_in_order_and_are_acknowledged() {
    const N: u32 = 100_000;
    let redis = RedisServer::start();
    let n = start_with_redis(vec![redis.url()]);
    let mut ws = connect(n.addr, &token(1)).await;
    subscribe(&mut ws, json!({"job_events": [3]})).await;
    let reader = tokio::spawn(async move {
        for want in 0..N {
            assert_eq!(seq_of(&next_text(&mut ws).await), want);
        }
    });
    let events = stream_events(0..N, "job_events-3");
    let added = wsrelay::producer::redis_stream(&redis.url(), "wsrelay:events", &events)
        .await
        .unwrap();
    assert_eq!(added, u64::from(N));
    reader.await.unwrap();
    wait_metric(
        n.addr,
        &format!("wsrelay_events_in_total{{source=\"stream\"}} {N}"),
    )
    .await;
    let group = format!("wsrelay:{NODE}");
    eventually("all acknowledged", || {
        redis.query(&["XPENDING", "wsrelay:events", &group])[0] == "0"
    })
    .await;
    // Consumed entries are trimmed (MINID ~ leaves at most a partial node).
    let len: u64 = redis.query(&["XLEN", "wsrelay:events"])[0].parse().unwrap();
    assert!(len < 1_000, "consumed entries trimmed, {len} left");
    wait_metric(n.addr, "wsrelay_stream_trimmed_unread_total 0").await;
}

#[tokio::test]
async fn bad_stream_entries_are_skipped_counted_and_good_ones_delivered() {
    let redis = RedisServer::start();
    let n = start_with_redis(vec![redis.url()]);
    let mut ws = connect(n.addr, &token(1)).await;
    subscribe(&mut ws, json!({"job_events": [1]})).await;
    // Let the reader create its group before the entries go in.
    eventually("consumer group exists", || {
        redis
            .try_query_public(&["XINFO", "GROUPS", "wsrelay:events"])
            .is_ok_and(|r| !r.is_empty())
    })
    .await;
    let xadd = |fields: &[&[u8]]| {
        let mut args = vec![b"XADD".to_vec(), b"wsrelay:events".to_vec(), b"*".to_vec()];
        args.extend(fields.iter().map(|f| f.to_vec()));
        redis.query_bytes(&args);
    };
    xadd(&[b"group", b"job_events-1", b"payload", b"{\"n\": 1}"]);
    xadd(&[b"payload", b"{}"]);
    xadd(&[b"group", b"", b"payload", b"{}"]);
    xadd(&[b"group", b"job_events-1"]);
    xadd(&[b"group", b"job_events-1", b"payload", b"{not json"]);
    xadd(&[b"group", b"job_events-1", b"payload", b"{\"n\": 2}"]);
    assert_eq!(next_text(&mut ws).await, r#"{"n": 1}"#);
    assert_eq!(next_text(&mut ws).await, r#"{"n": 2}"#);
    for reason in [
        "missing_group",
        "bad_group",
        "missing_payload",
        "bad_payload",
    ] {
        wait_metric(
            n.addr,
            &format!("wsrelay_stream_skipped_total{{reason=\"{reason}\"}} 1"),
        )
        .await;
    }
}

#[tokio::test]
async fn a_stream_past_its_cap_loses_the_oldest_unread_and_counts_them() {
    let redis = RedisServer::start();
    // The reader holds for a second: 2,000 entries pile up meanwhile.
    let n = start_with_redis_and(vec![redis.url()], |c| {
        c.stream_maxlen = 100;
        c.backlog_hold = Duration::from_millis(1500);
    });
    let mut ws = connect(n.addr, &token(1)).await;
    subscribe(&mut ws, json!({"job_events": [1]})).await;
    let events = stream_events(0..2000, "job_events-1");
    wsrelay::producer::redis_stream(&redis.url(), "wsrelay:events", &events)
        .await
        .unwrap();
    // The first read takes 512 (the default batch); the cap then leaves the
    // newest 100 unread entries and counts the 1,388 it removed.
    let mut got = Vec::new();
    for _ in 0..612 {
        got.push(seq_of(&next_text(&mut ws).await));
    }
    let want: Vec<u32> = (0..512).chain(1900..2000).collect();
    assert_eq!(got, want);
    wait_metric(n.addr, "wsrelay_stream_trimmed_unread_total 1388").await;
}

#[tokio::test]
async fn a_restarted_node_resumes_the_stream_with_nothing_lost() {
    const N: u32 = 100_000;
    let redis = RedisServer::start();
    let bin = env!("CARGO_BIN_EXE_wsrelay");
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
        .args(["--redis", &redis.url(), "--node-id", "restart-node"])
        .args(["--backlog-hold-ms", "2000", "--io", "epoll"])
        .env("RUST_LOG", "info");
        c
    };
    let (child, addr) = spawn_serve(&mut command()).await;
    let mut ws = connect(addr, &token(1)).await;
    subscribe(&mut ws, json!({"job_events": [9]})).await;
    // The first half, produced while the node runs, in the background.
    let url = redis.url();
    let first_half = tokio::spawn(async move {
        let events = stream_events(0..N / 2, "job_events-9");
        wsrelay::producer::redis_stream(&url, "wsrelay:events", &events)
            .await
            .unwrap()
    });
    let mut want = 0u32;
    while want < 20_000 {
        assert_eq!(seq_of(&next_text(&mut ws).await), want);
        want += 1;
    }
    // Mid-stream: SIGTERM. The node stops reading, delivers what it read,
    // flushes this client's queue, and closes it with 1001.
    let pid = child.id().unwrap().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    loop {
        match next(&mut ws).await {
            tokio_tungstenite::tungstenite::Message::Text(t) => {
                assert_eq!(seq_of(&t), want, "in order, no gap, before the close");
                want += 1;
            }
            tokio_tungstenite::tungstenite::Message::Close(Some(f)) => {
                assert_eq!(f.reason.as_ref(), "server shutting down");
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    first_half.await.unwrap();
    drop(child);

    // Restart; the client reconnects within the backlog hold and gets the
    // rest of the first half, then the second half (through the CLI).
    let (_child, addr) = spawn_serve(&mut command()).await;
    let mut ws = connect(addr, &token(1)).await;
    subscribe(&mut ws, json!({"job_events": [9]})).await;
    let dir = std::env::temp_dir().join(format!("wsrelay-resume-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("second.jsonl");
    let lines: Vec<String> = stream_events(N / 2..N, "job_events-9")
        .into_iter()
        .map(|(g, p)| format!(r#"{{"group": "{g}", "payload": {p}}}"#))
        .collect();
    std::fs::write(&file, lines.join("\n")).unwrap();
    let out = tokio::process::Command::new(bin)
        .args(["emit", "--redis", &redis.url(), "--jsonl"])
        .arg(&file)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        r#"{"accepted": 50000}"#
    );
    while want < N {
        assert_eq!(
            seq_of(&next_text(&mut ws).await),
            want,
            "resumed where it stopped"
        );
        want += 1;
    }
}

#[tokio::test]
async fn memberships_are_refreshed_before_group_expiry() {
    let redis = RedisServer::start();
    // group_expiry 4 s: refreshed every second (a quarter of it).
    let n = start_with_redis_and(vec![redis.url()], |c| c.group_expiry_secs = 4);
    let mut ws = connect(n.addr, &token(1)).await;
    subscribe(&mut ws, json!({"jobs": ["status_changed"]})).await;
    let key = "asgi:group:jobs-status_changed";
    let member = our_channel("jobs-status_changed");
    let score = || -> f64 { redis.query(&["ZSCORE", key, &member])[0].parse().unwrap() };
    let first = score();
    // channels_redis's group_send drops members scored before now - expiry;
    // the node keeps its score fresh instead.
    eventually("score refreshed", || score() > first + 0.5).await;
    let ttl: i64 = redis.query(&["TTL", key])[0].parse().unwrap();
    assert!(
        (1..=4).contains(&ttl),
        "EXPIRE renewed to group_expiry, got {ttl}"
    );
}
