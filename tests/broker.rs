//! The broker backplane: real nodes and a real `nats-server` (with
//! JetStream) on loopback, checked through real websocket clients and each
//! node's `/metrics`.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::nats::NatsServer;
use support::*;

const BACKPLANE: &str = "backplane-secret-for-tests";

/// A node named `name` on the broker `nats`.
fn broker_node(name: &str, nats: &NatsServer) -> TestNode {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let url = nats.url();
    start(|c| {
        c.node_id = name.into();
        c.backplane_secret = Some(BACKPLANE.into());
        c.broker = vec![url];
    })
}

/// Waits until the node's broker connection is up, with the stream when
/// `jetstream`.
async fn broker_ready(n: &TestNode, jetstream: bool) {
    wait_metric(n.addr, "wsrelay_broker_up 1").await;
    // The configured window is on the metrics page too (the load harness
    // reads it to know which of the two to wait for).
    let window = metric(n.addr, "wsrelay_broker_replay_window_seconds").await;
    assert_eq!(window > 0, jetstream, "replay window {window} s");
    if jetstream {
        wait_metric(n.addr, "wsrelay_broker_jetstream 1").await;
    }
}

/// One emit request carrying `events` as `(group, payload)`.
async fn emit_batch(addr: std::net::SocketAddr, events: &[(String, Value)]) {
    let body: Vec<Value> = events
        .iter()
        .map(|(g, p)| json!({"group": g, "payload": p}))
        .collect();
    let (status, reply) = emit(addr, &Value::Array(body).to_string()).await;
    assert_eq!(status, 200, "{reply}");
}

/// Emits `{"n": from..to}` to `job_events-1`, `per` events a request.
async fn emit_range(addr: std::net::SocketAddr, from: u64, to: u64, per: usize) {
    for start in (from..to).step_by(per) {
        let chunk: Vec<_> = (start..(start + per as u64).min(to))
            .map(|n| ("job_events-1".to_owned(), json!({"n": n})))
            .collect();
        emit_batch(addr, &chunk).await;
    }
}

async fn next_n(ws: &mut Ws) -> u64 {
    let v = next_json(ws).await;
    v["n"]
        .as_u64()
        .unwrap_or_else(|| panic!("not an event: {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_receives_only_the_groups_its_clients_hold_in_order() {
    let nats = NatsServer::start(true);
    let a = broker_node("a", &nats);
    let b = broker_node("b", &nats);
    broker_ready(&a, true).await;
    broker_ready(&b, true).await;
    let mut ws = connect(b.addr, &token(1)).await;
    // The reply comes once the broker holds b's subscription.
    subscribe(&mut ws, json!({"job_events": [1]})).await;
    let mut events = Vec::new();
    for n in 0..200u64 {
        events.push(("job_events-1".to_owned(), json!({"n": n})));
        events.push(("job_events-2".to_owned(), json!({"n": n})));
    }
    for chunk in events.chunks(50) {
        emit_batch(a.addr, chunk).await;
    }
    for want in 0..200 {
        assert_eq!(next_n(&mut ws).await, want);
    }
    // a published every event once; b received only its group's.
    wait_metric(a.addr, "wsrelay_broker_events_published_total 400").await;
    wait_metric(b.addr, "wsrelay_broker_events_received_total 200").await;
    assert_eq!(metric(b.addr, "wsrelay_broker_duplicates_total").await, 0);
    // b's own clients' events reach a's clients the same way, and a's
    // unsubscribed group stays on a.
    let mut wa = connect(a.addr, &token(2)).await;
    subscribe(&mut wa, json!({"job_events": [3]})).await;
    emit_one(b.addr, "job_events-3", r#"{"n": 7}"#).await;
    assert_eq!(next_n(&mut wa).await, 7);
    wait_metric(a.addr, "wsrelay_broker_events_received_total 1").await;
    // Leaving the group ends the subscription: nothing more reaches b.
    subscribe(&mut ws, json!({})).await;
    emit_one(a.addr, "job_events-1", r#"{"n": 999}"#).await;
    emit_one(a.addr, "job_events-3", r#"{"n": 8}"#).await;
    wait_metric(a.addr, "wsrelay_broker_events_published_total 402").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        metric(b.addr, "wsrelay_broker_events_received_total").await,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_mid_stream_loses_and_repeats_nothing() {
    let mut nats = NatsServer::start(true);
    let a = broker_node("a", &nats);
    let b = broker_node("b", &nats);
    broker_ready(&a, true).await;
    broker_ready(&b, true).await;
    let mut ws = connect(b.addr, &token(1)).await;
    subscribe(&mut ws, json!({"job_events": [1]})).await;
    let total = 3000u64;
    let reader = tokio::spawn(async move {
        for want in 0..total {
            assert_eq!(next_n(&mut ws).await, want, "order and exactly once");
        }
        ws
    });
    emit_range(a.addr, 0, 1000, 50).await;
    // The broker dies mid-storm (SIGKILL) and comes back on its port with
    // its store; a goes on accepting events meanwhile.
    nats.stop();
    emit_range(a.addr, 1000, 2000, 50).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    nats.resume();
    emit_range(a.addr, 2000, total, 50).await;
    let mut ws = tokio::time::timeout(Duration::from_secs(60), reader)
        .await
        .expect("every event arrives")
        .unwrap();
    assert!(metric(b.addr, "wsrelay_broker_reconnects_total").await >= 1);
    assert!(metric(a.addr, "wsrelay_broker_reconnects_total").await >= 1);
    assert_eq!(metric(a.addr, "wsrelay_broker_events_lost_total").await, 0);
    // Nothing more than the stream: one more event is the next one.
    emit_one(a.addr, "job_events-1", &format!(r#"{{"n": {total}}}"#)).await;
    assert_eq!(next_n(&mut ws).await, total);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_messages_on_the_brokers_subjects_are_skipped_and_counted() {
    let nats = NatsServer::start(false);
    let b = start(|c| {
        c.node_id = "b".into();
        c.backplane_secret = Some(BACKPLANE.into());
        c.broker = vec![nats.url()];
        c.broker_replay_window = Duration::ZERO;
    });
    broker_ready(&b, false).await;
    let mut ws = connect(b.addr, &token(1)).await;
    subscribe(&mut ws, json!({"job_events": [1]})).await;
    let client = async_nats::connect(nats.url()).await.unwrap();
    let subject = "wsrelay.g.job_events-1";
    let good = |node: &str, seq: u64, group: &str, subject: &str, secret: &str| {
        let mut w = wsrelay::backplane::wire::BrokerWriter::start(node, 9, group);
        w.push(
            seq,
            wsrelay::backplane::wire::Origin::None,
            format!(r#"{{"n": {seq}}}"#).as_bytes(),
        );
        wsrelay::backplane::broker::seal(secret.as_bytes(), subject, &w.finish())
    };
    let bad: Vec<(&str, bytes::Bytes)> = vec![
        // No signature at all, and garbage.
        ("bad_signature", bytes::Bytes::from_static(b"hello")),
        // Signed with another secret: an outsider on the broker.
        (
            "bad_signature",
            good("x", 1, "job_events-1", subject, "not-the-secret"),
        ),
        // Signed for another subject, moved here.
        (
            "bad_signature",
            good("x", 2, "job_events-1", "wsrelay.g.job_events-2", BACKPLANE),
        ),
        // Signed, but its group is not the subject's.
        (
            "subject_mismatch",
            good("x", 3, "job_events-2", subject, BACKPLANE),
        ),
        // Signed, but not a broker message.
        (
            "malformed",
            wsrelay::backplane::broker::seal(BACKPLANE.as_bytes(), subject, b"\x10\x01junk"),
        ),
        // Signed, but a node name that would become a label.
        (
            "bad_node",
            good("a b\n", 4, "job_events-1", subject, BACKPLANE),
        ),
        // This node's own name: never delivered twice.
        ("own", good("b", 5, "job_events-1", subject, BACKPLANE)),
    ];
    for (_, msg) in &bad {
        client.publish(subject, msg.clone()).await.unwrap();
    }
    // A good one after them all is delivered: the node skipped, not died.
    client
        .publish(subject, good("x", 6, "job_events-1", subject, BACKPLANE))
        .await
        .unwrap();
    // ... and the same again is a duplicate.
    client
        .publish(subject, good("x", 6, "job_events-1", subject, BACKPLANE))
        .await
        .unwrap();
    client.flush().await.unwrap();
    assert_eq!(next_n(&mut ws).await, 6);
    for reason in [
        "bad_signature",
        "subject_mismatch",
        "malformed",
        "bad_node",
        "own",
    ] {
        let n = bad.iter().filter(|(r, _)| *r == reason).count();
        wait_metric(
            b.addr,
            &format!("wsrelay_broker_skipped_total{{reason=\"{reason}\"}} {n}"),
        )
        .await;
    }
    wait_metric(b.addr, "wsrelay_broker_duplicates_total 1").await;
    assert_eq!(
        metric(b.addr, "wsrelay_broker_events_received_total").await,
        1
    );
}

#[test]
fn a_broker_without_a_backplane_secret_refuses_to_start() {
    let err = wsrelay::Node::start(wsrelay::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        dev_insecure: true,
        broker: vec!["nats://127.0.0.1:4222".into()],
        ..wsrelay::Config::default()
    })
    .err()
    .expect("refused");
    assert!(err.to_string().contains("--broker"), "{err}");
    let err = wsrelay::Node::start(wsrelay::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        dev_insecure: true,
        backplane_secret: Some(BACKPLANE.into()),
        broker: vec!["http://127.0.0.1:4222".into()],
        ..wsrelay::Config::default()
    })
    .err()
    .expect("refused");
    assert!(err.to_string().contains("want nats://"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_the_broker_replays_what_it_missed() {
    // a keeps its connection and publishes (the stream acknowledges);
    // b's connection is cut for a while, so only a resume from the stream
    // can bring b what was published meanwhile.
    let nats = NatsServer::start(true);
    let relay = support::cut::Cuttable::start(([127, 0, 0, 1], nats.port).into()).await;
    let a = broker_node("a", &nats);
    let b = start(|c| {
        c.node_id = "b".into();
        c.backplane_secret = Some(BACKPLANE.into());
        c.broker = vec![format!("nats://{}", relay.addr)];
    });
    broker_ready(&a, true).await;
    broker_ready(&b, true).await;
    let mut ws = connect(b.addr, &token(1)).await;
    subscribe(&mut ws, json!({"job_events": [1]})).await;
    // b samples where the stream stands (once a second) before the cut.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    emit_range(a.addr, 0, 500, 25).await;
    for want in 0..500 {
        assert_eq!(next_n(&mut ws).await, want);
    }
    relay.cut();
    wait_metric(b.addr, "wsrelay_broker_up 0").await;
    emit_range(a.addr, 500, 1000, 25).await;
    // Acknowledged by the stream while b is away.
    wait_metric(a.addr, "wsrelay_broker_lag_events 0").await;
    relay.heal();
    emit_range(a.addr, 1000, 1500, 25).await;
    for want in 500..1500 {
        assert_eq!(next_n(&mut ws).await, want, "order and exactly once");
    }
    assert_eq!(metric(b.addr, "wsrelay_broker_resumes_total").await, 1);
    let replayed = metric(b.addr, "wsrelay_broker_replayed_events_total").await;
    assert!(
        replayed >= 500,
        "the 500 published while away came from the stream: {replayed}"
    );
    // The replay overlapped what b had (the margin): skipped, not repeated.
    assert!(metric(b.addr, "wsrelay_broker_duplicates_total").await > 0);
    emit_one(a.addr, "job_events-1", r#"{"n": 1500}"#).await;
    assert_eq!(next_n(&mut ws).await, 1500);
}

/// Gives each node its native peers and waits until every link is up in
/// both directions on both ends.
async fn links(nodes: &[(&str, &TestNode, &[&TestNode])]) {
    let spec =
        |n: &TestNode| wsrelay::backplane::PeerSpec::parse(&format!("ws://{}", n.addr)).unwrap();
    for (_, n, peers) in nodes {
        n.node.set_peers(peers.iter().map(|p| spec(p)).collect());
    }
    for (_, n, peers) in nodes {
        for o in peers.iter() {
            let name = nodes.iter().find(|(_, x, _)| x.addr == n.addr).unwrap().0;
            wait_metric(
                n.addr,
                &format!(
                    "wsrelay_backplane_link_up{{peer=\"{}\",direction=\"out\"}} 1",
                    o.addr
                ),
            )
            .await;
            wait_metric(
                o.addr,
                &format!("wsrelay_backplane_link_up{{peer=\"{name}\",direction=\"in\"}} 1"),
            )
            .await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_cluster_delivers_each_event_exactly_once() {
    // a and b share the broker; c is on no broker and is linked natively
    // with a only (as an AWX node would be with the wsrelay node next to
    // it). a and b are linked natively as well, by mistake: that link
    // must carry no events, or b would get a's twice. Events from any
    // node reach every client once: c's through a's link (a passes
    // nothing on), a's both ways, b's through the broker only (b has no
    // link to c, so c's clients do not get b's events: that is the
    // configuration's, not a loss).
    let nats = NatsServer::start(true);
    let a = broker_node("a", &nats);
    let b = broker_node("b", &nats);
    let c = start(|cfg| {
        cfg.node_id = "c".into();
        cfg.backplane_secret = Some(BACKPLANE.into());
    });
    broker_ready(&a, true).await;
    broker_ready(&b, true).await;
    links(&[("a", &a, &[&b, &c]), ("b", &b, &[&a]), ("c", &c, &[&a])]).await;
    // Each of a and b found the other on the broker.
    wait_metric(a.addr, "wsrelay_broker_redundant_links_total 1").await;
    wait_metric(b.addr, "wsrelay_broker_redundant_links_total 1").await;
    let mut clients = Vec::new();
    for n in [&a, &b, &c] {
        let mut ws = connect(n.addr, &token(1)).await;
        subscribe(&mut ws, json!({"job_events": [1]})).await;
        clients.push(ws);
    }
    for n in 0..100u64 {
        emit_one(a.addr, "job_events-1", &format!(r#"{{"n": {n}}}"#)).await;
    }
    for n in 100..200u64 {
        emit_one(c.addr, "job_events-1", &format!(r#"{{"n": {n}}}"#)).await;
    }
    for n in 200..300u64 {
        emit_one(b.addr, "job_events-1", &format!(r#"{{"n": {n}}}"#)).await;
    }
    // Each source's events in its order; sources interleave as their
    // paths' latencies have it (no order across nodes is promised).
    // a's client: a, c (link) and b (broker); b's: a and b (no link to
    // c); c's: a (link) and c.
    let sources: [&[u64]; 3] = [&[0, 1, 2], &[0, 2], &[0, 1]];
    for (ws, sources) in clients.iter_mut().zip(sources) {
        let mut got = Vec::new();
        for _ in 0..sources.len() * 100 {
            got.push(next_n(ws).await);
        }
        for &source in sources {
            let mine: Vec<u64> = got.iter().copied().filter(|n| n / 100 == source).collect();
            assert_eq!(mine, (source * 100..source * 100 + 100).collect::<Vec<_>>());
        }
    }
    // And nothing more anywhere: a marker emitted last on each node is the
    // next thing each client sees.
    emit_one(a.addr, "job_events-1", r#"{"n": 1000}"#).await;
    for ws in clients.iter_mut() {
        assert_eq!(next_n(ws).await, 1000);
    }
    // c's events never went to the broker: a published its own 100 + 1.
    assert_eq!(
        metric(a.addr, "wsrelay_broker_events_published_total").await,
        101
    );
}

/// Node `b` on the broker, resuming after a restart within `hold`.
fn restartable_b(nats: &NatsServer) -> TestNode {
    let url = nats.url();
    start(|c| {
        c.node_id = "b".into();
        c.backplane_secret = Some(BACKPLANE.into());
        c.broker = vec![url];
        // Long enough for a loaded machine's client to subscribe again.
        c.backlog_hold = Duration::from_secs(3);
    })
}

/// Emits `{"n": n}` to `job_events-2` for `ns`, one request.
async fn emit_other(addr: std::net::SocketAddr, ns: std::ops::Range<u64>) {
    let events: Vec<_> = ns
        .map(|n| ("job_events-2".to_owned(), json!({"n": n})))
        .collect();
    emit_batch(addr, &events).await;
}

/// A node stopped and started again while its group's events go on:
/// once its client is back, it gets what was published while the node
/// was down, then the live events, each once and in order. A group the
/// previous run did not hold is not replayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_resumes_its_groups_with_nothing_lost_or_repeated() {
    let nats = NatsServer::start(true);
    let a = broker_node("a", &nats);
    let b = restartable_b(&nats);
    broker_ready(&a, true).await;
    broker_ready(&b, true).await;
    let mut ws = connect(b.addr, &token(1)).await;
    subscribe(&mut ws, json!({"job_events": [1]})).await;
    emit_range(a.addr, 0, 500, 25).await;
    for want in 0..500 {
        assert_eq!(next_n(&mut ws).await, want);
    }
    // A clean stop (the node saves its point after its last delivery).
    drop(b);
    emit_range(a.addr, 500, 1000, 25).await;
    emit_other(a.addr, 10_000..10_050).await;
    wait_metric(a.addr, "wsrelay_broker_lag_events 0").await;
    let b = restartable_b(&nats);
    broker_ready(&b, true).await;
    let mut ws = connect(b.addr, &token(1)).await;
    subscribe(&mut ws, json!({"job_events": [1, 2]})).await;
    emit_range(a.addr, 1000, 1500, 25).await;
    for want in 500..1500 {
        assert_eq!(next_n(&mut ws).await, want, "order and exactly once");
    }
    assert_eq!(metric(b.addr, "wsrelay_broker_resumes_total").await, 1);
    let replayed = metric(b.addr, "wsrelay_broker_replayed_events_total").await;
    assert!(
        replayed >= 500,
        "the 500 published while b was down came from the stream: {replayed}"
    );
    // The replay started before what the first run delivered: dropped.
    assert!(metric(b.addr, "wsrelay_broker_duplicates_total").await >= 500);
    assert_eq!(
        metric(b.addr, "wsrelay_broker_resume_truncated_total").await,
        0
    );
    // Nothing of job_events-2 from before; its live events flow.
    emit_other(a.addr, 20_000..20_001).await;
    assert_eq!(next_n(&mut ws).await, 20_000);
}

/// The same across a SIGKILL: the point saved a second after the last
/// delivery is enough for nothing to be lost or repeated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_and_started_again_resumes_its_groups() {
    let nats = NatsServer::start(true);
    let a = broker_node("a", &nats);
    broker_ready(&a, true).await;
    let url = nats.url();
    let command = || {
        let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_wsrelay"));
        c.args(["serve", "--admin-listen", "off", "--listen", "127.0.0.1:0"])
            .args(["--jwt-secret", SECRET, "--node-id", "b", "--broker", &url])
            .args(["--backplane-secret", BACKPLANE, "--backlog-hold-ms", "3000"])
            .args(["--io", io_name()])
            .env("RUST_LOG", "info");
        c
    };
    let (mut b, b_addr) = spawn_serve(&mut command()).await;
    wait_metric(b_addr, "wsrelay_broker_jetstream 1").await;
    let mut ws = connect(b_addr, &token(1)).await;
    subscribe(&mut ws, json!({"job_events": [1]})).await;
    emit_range(a.addr, 0, 500, 25).await;
    for want in 0..500 {
        assert_eq!(next_n(&mut ws).await, want);
    }
    // Two saving intervals pass quietly, then the kill.
    let saved = metric(b_addr, "wsrelay_broker_resume_points_saved_total").await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(metric(b_addr, "wsrelay_broker_resume_points_saved_total").await > saved);
    b.kill().await.unwrap();
    emit_range(a.addr, 500, 1000, 25).await;
    wait_metric(a.addr, "wsrelay_broker_lag_events 0").await;
    let (_b, b_addr) = spawn_serve(&mut command()).await;
    wait_metric(b_addr, "wsrelay_broker_jetstream 1").await;
    let mut ws = connect(b_addr, &token(1)).await;
    subscribe(&mut ws, json!({"job_events": [1]})).await;
    emit_range(a.addr, 1000, 1500, 25).await;
    for want in 500..1500 {
        assert_eq!(next_n(&mut ws).await, want, "order and exactly once");
    }
    assert_eq!(metric(b_addr, "wsrelay_broker_resumes_total").await, 1);
}

/// A publish whose acknowledgement is on its way back when the connection
/// goes is sent again as soon as the connection is back, not after its
/// timeout (the acknowledgement went with the connection; waiting it out
/// stalled a storm's publisher for five seconds and overflowed its buffer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_cut_off_before_its_acknowledgement_is_sent_again_at_once() {
    let nats = NatsServer::start(true);
    let relay = support::cut::Cuttable::start(([127, 0, 0, 1], nats.port).into()).await;
    let a = start(|c| {
        c.node_id = "a".into();
        c.backplane_secret = Some(BACKPLANE.into());
        c.broker = vec![format!("nats://{}", relay.addr)];
    });
    let b = broker_node("b", &nats);
    broker_ready(&a, true).await;
    broker_ready(&b, true).await;
    let mut ws = connect(b.addr, &token(1)).await;
    subscribe(&mut ws, json!({"job_events": [1]})).await;
    emit_range(a.addr, 0, 100, 25).await;
    for want in 0..100 {
        assert_eq!(next_n(&mut ws).await, want);
    }
    // The stream's acknowledgements stop on their way back to a, so a's
    // publisher waits with events unacknowledged; then the connection goes.
    relay.hold(support::cut::Hold::Back);
    emit_range(a.addr, 100, 200, 25).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while metric(a.addr, "wsrelay_broker_lag_events").await == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a never waited for an acknowledgement"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    relay.cut();
    relay.hold(support::cut::Hold::Nothing);
    relay.heal();
    emit_range(a.addr, 200, 300, 25).await;
    for want in 100..300 {
        assert_eq!(next_n(&mut ws).await, want, "order and exactly once");
    }
    let retries =
        |reason: &str| format!("wsrelay_broker_publish_retries_total{{reason=\"{reason}\"}}");
    assert!(metric(a.addr, &retries("lost_connection")).await >= 1);
    assert_eq!(metric(a.addr, &retries("timeout")).await, 0);
    assert_eq!(metric(a.addr, "wsrelay_broker_events_lost_total").await, 0);
}

/// Emits `{"n": 0..total, "pad": ...}` to `job_events-1` on `a`, `per` a
/// request, each event padded by `pad(n)` bytes; checks that a client on
/// `b` gets every one in order and that `a` lost none; returns the broker
/// messages `a` published.
async fn padded_storm(
    a: &TestNode,
    b: &TestNode,
    total: u64,
    per: u64,
    pad: impl Fn(u64) -> usize,
) -> u64 {
    let mut ws = connect(b.addr, &token(1)).await;
    subscribe(&mut ws, json!({"job_events": [1]})).await;
    for start in (0..total).step_by(per as usize) {
        let chunk: Vec<_> = (start..(start + per).min(total))
            .map(|n| {
                let pad = "x".repeat(pad(n));
                ("job_events-1".to_owned(), json!({"n": n, "pad": pad}))
            })
            .collect();
        emit_batch(a.addr, &chunk).await;
    }
    for want in 0..total {
        assert_eq!(next_n(&mut ws).await, want);
    }
    assert_eq!(metric(a.addr, "wsrelay_broker_events_lost_total").await, 0);
    metric(a.addr, "wsrelay_broker_messages_published_total").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_filled_to_the_brokers_max_payload_are_all_published() {
    // A small max_payload and events of many sizes: the publisher fills
    // messages to every byte near the limit. One built a little over it
    // (the Nats-Msg-Id header counts against max_payload) was refused,
    // retried, refused again, and stopped everything behind it.
    let nats = NatsServer::start_with(true, Some(8192));
    let (a, b) = (broker_node("a", &nats), broker_node("b", &nats));
    broker_ready(&a, true).await;
    broker_ready(&b, true).await;
    let total = 1500u64;
    let messages = padded_storm(&a, &b, total, 50, |n| 100 + (n as usize * 37) % 400).await;
    assert!(
        messages > 20,
        "{messages} messages for {total} events of up to 500 B"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_made_beforehand_with_a_smaller_message_limit_is_published_to_within_it() {
    // An operator made the stream first and capped its messages at 4 KiB,
    // far under the server's max_payload. The stream refuses to store a
    // message over its cap on every attempt (live subscribers still get
    // it: core NATS carries it before the stream looks): built to the
    // server's limit alone, the first batch was retried forever and
    // nothing after it got through.
    let nats = NatsServer::start(true);
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "WSRELAY".into(),
        subjects: vec!["wsrelay.g.>".into()],
        max_message_size: 4096,
        ..Default::default()
    })
    .await
    .unwrap();
    let (a, b) = (broker_node("a", &nats), broker_node("b", &nats));
    broker_ready(&a, true).await;
    broker_ready(&b, true).await;
    let total = 600u64;
    let messages = padded_storm(&a, &b, total, 100, |n| 200 + (n as usize * 53) % 300).await;
    // At least one message per 4 KiB of the events' bytes (about 250 KB).
    assert!(
        messages >= 60,
        "{messages} messages for {total} events of up to 550 B"
    );
    // And the stream holds every one of them: what a replay would read.
    let stream = js.get_stream("WSRELAY").await.unwrap();
    let info = stream.cached_info();
    assert_eq!(info.config.max_message_size, 4096);
    assert_eq!(info.state.messages, messages);
}
