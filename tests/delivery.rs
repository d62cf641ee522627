//! Fan-out through a real node: who receives what, in which order, and what
//! happens to clients that stop reading.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use support::*;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use wsrelay::fanout::SlowPolicy;

#[tokio::test]
async fn http_events_reach_exactly_their_subscribers_verbatim_and_in_order() {
    let n = start(|_| {});
    // Several clients per group so both workers hold subscribers.
    let mut a = Vec::new();
    let mut b = Vec::new();
    for i in 0..4 {
        let mut ws = connect(n.addr, &token(i)).await;
        subscribe(&mut ws, json!({"job_events": [1]})).await;
        a.push(ws);
        let mut ws = connect(n.addr, &token(100 + i)).await;
        subscribe(&mut ws, json!({"job_events": [2]})).await;
        b.push(ws);
    }
    // Odd spacing, key order, escapes and unicode: all must arrive as sent.
    let payloads: Vec<String> = (0..50)
        .map(|i| {
            format!(
                r#"{{"z": {i},   "a": "caf\u00e9 é \"q\"", "stdout": "\u001b[0;32mok\u001b[0m" }}"#
            )
        })
        .collect();
    // One request with an array, then single requests: order must hold
    // across both.
    let batch: Vec<String> = payloads[..25]
        .iter()
        .map(|p| format!(r#"{{"group": "job_events-1", "payload": {p}}}"#))
        .collect();
    let (status, reply) = emit(n.addr, &format!("[{}]", batch.join(","))).await;
    assert_eq!((status, reply.as_str()), (200, r#"{"accepted": 25}"#));
    for p in &payloads[25..] {
        emit_one(n.addr, "job_events-1", p).await;
    }
    emit_one(n.addr, "job_events-2", r#"{"marker": true}"#).await;
    for ws in &mut a {
        for p in &payloads {
            assert_eq!(&next_text(ws).await, p);
        }
    }
    // The first thing group 2 sees is its own marker: nothing of group 1.
    for ws in &mut b {
        assert_eq!(next_text(ws).await, r#"{"marker": true}"#);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_clients_each_get_every_event_of_a_burst_in_order() {
    const CLIENTS: usize = 1000;
    const EVENTS: usize = 10_000;
    let n = start(|_| {});
    let mut clients = Vec::with_capacity(CLIENTS);
    for i in 0..CLIENTS {
        let mut ws = connect(n.addr, &token(i as u64)).await;
        subscribe(&mut ws, json!({"job_events": [7]})).await;
        clients.push(ws);
    }
    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut ws| {
            tokio::spawn(async move {
                for want in 0..EVENTS {
                    let text = next_text(&mut ws).await;
                    let want = format!(r#"{{"n":{want}}}"#);
                    if text != want {
                        return Err(format!("expected {want}, got {text}"));
                    }
                }
                Ok(())
            })
        })
        .collect();
    // The burst: 10 requests of 1,000 events.
    for chunk in 0..10 {
        let body: Vec<String> = (chunk * 1000..(chunk + 1) * 1000)
            .map(|i| format!(r#"{{"group":"job_events-7","payload":{{"n":{i}}}}}"#))
            .collect();
        let (status, _) = emit(n.addr, &format!("[{}]", body.join(","))).await;
        assert_eq!(status, 200);
    }
    for r in readers {
        r.await.unwrap().unwrap();
    }
    wait_metric(n.addr, "wsrelay_deliveries_total 10000000").await;
    wait_metric(n.addr, "wsrelay_events_dropped_total 0").await;
}

/// Emits `count` events of `size` bytes to `group` in requests of 40
/// (160 KiB, under the 256 KiB queue bound), each once the reading client
/// has `progress` up to the previous request: a client that keeps up must
/// never be treated as slow.
async fn flood(
    addr: std::net::SocketAddr,
    group: &str,
    count: usize,
    size: usize,
    progress: &AtomicUsize,
) {
    let pad = "x".repeat(size);
    for chunk in 0..count / 40 {
        while progress.load(Ordering::Acquire) < chunk * 40 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let body: Vec<String> = (chunk * 40..(chunk + 1) * 40)
            .map(|i| format!(r#"{{"group":"{group}","payload":{{"n":{i},"pad":"{pad}"}}}}"#))
            .collect();
        let (status, _) = emit(addr, &format!("[{}]", body.join(","))).await;
        assert_eq!(status, 200);
    }
}

fn seq(text: &str) -> usize {
    let v: serde_json::Value = serde_json::from_str(text).unwrap();
    v["n"].as_u64().unwrap() as usize
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_disconnected_and_others_get_everything() {
    const EVENTS: usize = 4000;
    let n = start(|c| {
        c.queue_bytes = 256 * 1024;
        c.close_timeout = Duration::from_secs(30);
    });
    let mut slow = connect(n.addr, &token(1)).await;
    subscribe(&mut slow, json!({"job_events": [9]})).await;
    let mut fast = connect(n.addr, &token(2)).await;
    subscribe(&mut fast, json!({"job_events": [9]})).await;
    let progress = Arc::new(AtomicUsize::new(0));
    let seen = progress.clone();
    let reader = tokio::spawn(async move {
        for want in 0..EVENTS {
            assert_eq!(seq(&next_text(&mut fast).await), want);
            seen.store(want + 1, Ordering::Release);
        }
    });
    // 4000 x 4 KiB = 16 MiB: more than the kernel's socket buffers plus the
    // 256 KiB queue can hold for a client that reads nothing.
    flood(n.addr, "job_events-9", EVENTS, 4096, &progress).await;
    reader.await.unwrap();
    wait_metric(
        n.addr,
        "wsrelay_server_closes_total{reason=\"slow_consumer\"} 1",
    )
    .await;
    // The slow client now reads: a prefix of the events, in order, then 1013.
    let mut want = 0;
    loop {
        match next(&mut slow).await {
            Message::Text(t) => {
                assert_eq!(seq(&t), want);
                want += 1;
            }
            Message::Close(Some(f)) => {
                assert_eq!(
                    (f.code, f.reason.as_ref()),
                    (CloseCode::Again, "slow consumer")
                );
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(want < EVENTS, "the slow client cannot have had everything");
    // Nothing accepted for it is lost silently: the frames queued for it,
    // plus the one that did not fit, minus what it read, were all counted.
    let queued_for_slow = metric(n.addr, "wsrelay_deliveries_total").await - EVENTS as u64;
    let dropped = metric(n.addr, "wsrelay_events_dropped_total").await;
    assert_eq!(dropped, queued_for_slow + 1 - want as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_oldest_tells_the_client_what_it_lost() {
    const EVENTS: usize = 4000;
    let n = start(|c| {
        c.queue_bytes = 256 * 1024;
        c.slow_policy = SlowPolicy::DropOldest;
    });
    let mut slow = connect(n.addr, &token(1)).await;
    subscribe(&mut slow, json!({"job_events": [9]})).await;
    let mut fast = connect(n.addr, &token(2)).await;
    subscribe(&mut fast, json!({"job_events": [9]})).await;
    let progress = Arc::new(AtomicUsize::new(0));
    let seen = progress.clone();
    let reader = tokio::spawn(async move {
        for want in 0..EVENTS {
            assert_eq!(seq(&next_text(&mut fast).await), want);
            seen.store(want + 1, Ordering::Release);
        }
    });
    flood(n.addr, "job_events-9", EVENTS, 4096, &progress).await;
    reader.await.unwrap();
    // Received events are in order; every gap is announced by a
    // {"dropped": N} just where it happened, and they add up.
    let (mut got, mut dropped, mut next_seq) = (0, 0, 0);
    while got + dropped < EVENTS {
        let text = next_text(&mut slow).await;
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        if let Some(d) = v.get("dropped") {
            let d = d.as_u64().unwrap() as usize;
            dropped += d;
            next_seq += d;
            continue;
        }
        assert_eq!(
            seq(&text),
            next_seq,
            "events after a notice resume right after the gap"
        );
        next_seq += 1;
        got += 1;
    }
    assert!(dropped > 0, "the slow client must have lost some");
    wait_metric(n.addr, &format!("wsrelay_events_dropped_total {dropped}")).await;
    // Still connected and served.
    emit_one(n.addr, "job_events-9", r#"{"n": 4000}"#).await;
    assert_eq!(next_text(&mut slow).await, r#"{"n": 4000}"#);
}

/// The sum of a metric's series across its labels.
async fn metric_sum(addr: std::net::SocketAddr, name: &str) -> u64 {
    let (_, body) = http(addr, b"GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n").await;
    body.lines()
        .filter_map(|l| l.strip_prefix(name)?.strip_prefix('{'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test]
async fn writes_soon_after_a_write_wait_for_the_interval_and_carry_everything_in_order() {
    // An interval longer than any two emits here take: the first event
    // waits out the interval begun by the subscribe reply and goes out
    // alone; the other nine arrive while the writer is paced again and go
    // out together, still in order. Nothing is timed, only counted.
    let n = start(|c| {
        c.workers = 1;
        c.client_write_interval = Duration::from_secs(2);
    });
    let mut ws = connect(n.addr, &token(1)).await;
    subscribe(&mut ws, json!({"job_events": [5]})).await;
    let before = metric_sum(n.addr, "wsrelay_socket_writes_total").await;
    emit_one(n.addr, "job_events-5", r#"{"n":0}"#).await;
    assert_eq!(next_text(&mut ws).await, r#"{"n":0}"#);
    for i in 1..10 {
        emit_one(n.addr, "job_events-5", &format!(r#"{{"n":{i}}}"#)).await;
    }
    for i in 1..10 {
        assert_eq!(next_text(&mut ws).await, format!(r#"{{"n":{i}}}"#));
    }
    let writes = metric_sum(n.addr, "wsrelay_socket_writes_total").await - before;
    assert_eq!(writes, 2, "one write for the first event, one for the rest");
}
