//! Regression tests for the adversarial review of 598ca46 (issue 10): each
//! test names the finding it covers and fails on that commit.

mod support;

use std::time::Duration;

use serde_json::json;
use support::raw::{client_frame, RawWs};
use support::*;

/// Finding 2: one reply for all of a message's errors, whatever it names.
#[tokio::test]
async fn a_thousand_bad_ids_get_one_error_reply() {
    let n = start(|_| {});
    let mut ws = RawWs::connect(n.addr, &format!("/websocket/?token={}", token(1))).await;
    assert_eq!(ws.next_text().await, r#"{"accept": true, "user": 1}"#);
    let bad: Vec<f64> = (0..1000).map(|i| i as f64 + 0.5).collect();
    ws.send_text(&json!({"groups": {"jobs": bad, "job_events": [1]}}).to_string())
        .await;
    let reply: serde_json::Value = serde_json::from_str(&ws.next_text().await).unwrap();
    assert_eq!(
        reply["error"],
        "invalid resource id for channel jobs: want an integer or a string"
    );
    assert_eq!(reply["errors"].as_array().unwrap().len(), 16);
    assert_eq!(reply["errors_omitted"], 984);
    // The next frame is the subscribe reply: no other error frames came.
    let next: serde_json::Value = serde_json::from_str(&ws.next_text().await).unwrap();
    assert_eq!(next["groups_current"], json!(["job_events-1"]));
    wait_metric(n.addr, "wsrelay_client_errors_total 1000").await;
}

/// Finding 2: a client that answers pings but stops reading no longer
/// holds its queue forever: after a ping interval with a write stuck, it is
/// closed as a slow consumer.
#[tokio::test]
async fn a_client_that_stops_reading_is_closed_even_if_it_answers_pings() {
    let n = start(|c| {
        c.ping_interval = Duration::from_millis(300);
        // Far above what is emitted, so only the stall can close it.
        c.queue_bytes = 256 << 20;
        c.queue_frames = 1 << 20;
    });
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(n.addr).await.unwrap();
    let mut ws = RawWs::upgrade_on(stream, &format!("/websocket/?token={}", token(1))).await;
    assert!(ws.next_text().await.starts_with(r#"{"accept": true"#));
    ws.send_text(r#"{"groups": {"jobs": ["big"]}}"#).await;
    assert!(ws.next_text().await.starts_with(r#"{"groups_current""#));
    // Far more than the socket buffers hold, none of it read.
    let payload = format!(r#"{{"pad": "{}"}}"#, "x".repeat(60_000));
    let body = format!(
        "[{}]",
        vec![format!(r#"{{"group":"jobs-big","payload":{payload}}}"#); 200].join(",")
    );
    let (status, _) = emit(n.addr, &body).await;
    assert_eq!(status, 200);
    // Pongs keep it "alive" as far as pings go; it reads nothing.
    for _ in 0..15 {
        ws.send(&client_frame(true, 0xA, b"")).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_metric(
        n.addr,
        "wsrelay_server_closes_total{reason=\"slow_consumer\"} 1",
    )
    .await;
    // What was never written is counted as dropped, not lost silently.
    assert!(metric(n.addr, "wsrelay_events_dropped_total").await > 0);
}

/// Finding 10: a refused client's socket closes as soon as its close frame
/// arrives, not after `--close-timeout-ms`.
#[tokio::test]
async fn a_refused_clients_socket_closes_when_its_close_arrives() {
    let n = start(|c| c.close_timeout = Duration::from_secs(120));
    let mut ws = RawWs::connect(n.addr, "/websocket/?token=expired.or.bad").await;
    assert_eq!(ws.next_text().await, r#"{"close": true}"#);
    let (code, reason) = ws.next_close().await;
    assert_eq!(code, 1008);
    assert!(reason.starts_with("authentication failed"), "{reason}");
    ws.send(&client_frame(true, 0x8, &1000u16.to_be_bytes()))
        .await;
    // Within the test's wait, far below the 120 s close timeout.
    ws.expect_eof().await;
}

/// Finding 11: no client joins AWX's relay group (it would read every
/// group's events, and make the node read every 2020 event twice).
#[tokio::test]
async fn no_client_joins_the_broadcast_group() {
    let n = start(|_| {});
    let mut ws = connect(n.addr, &token(1)).await;
    send(
        &mut ws,
        r#"{"groups": {"broadcast": ["group_send"], "jobs": ["status_changed"]}}"#,
    )
    .await;
    assert_eq!(
        next_json(&mut ws).await,
        json!({"error": "access denied to channel broadcast for resource id group_send"})
    );
    assert_eq!(
        next_json(&mut ws).await["groups_current"],
        json!(["jobs-status_changed"])
    );
}

/// Finding 13: protocol details over a real socket.
#[tokio::test]
async fn protocol_details() {
    let n = start(|c| c.max_message_bytes = 1000);
    let path = format!("/websocket/?token={}", token(1));
    let fresh = || async {
        let mut ws = RawWs::connect(n.addr, &path).await;
        assert!(ws.next_text().await.starts_with(r#"{"accept": true"#));
        ws
    };
    // A close frame carrying 1005 (which may never be sent) is a protocol
    // error, not a normal close.
    let mut ws = fresh().await;
    ws.send(&client_frame(true, 0x8, &1005u16.to_be_bytes()))
        .await;
    assert_eq!(ws.next_close().await, (1002, "invalid close code".into()));
    // A length in a longer form than needed.
    let mut ws = fresh().await;
    ws.send(&[0x81, 0xFE, 0x00, 0x02, 0, 0, 0, 0, b'{', b'}'])
        .await;
    assert_eq!(
        ws.next_close().await,
        (1002, "non-minimal length encoding".into())
    );
    // A ping between the fragments of a message just under the limit.
    let mut ws = fresh().await;
    ws.send(&client_frame(false, 0x1, &[b' '; 990])).await;
    ws.send(&client_frame(true, 0x9, &[b'p'; 100])).await;
    ws.send(&client_frame(true, 0x0, b"{\"x\":1}")).await;
    assert_eq!(ws.next_frame().await, Some((0xA, vec![b'p'; 100])));
    // The 997-byte message was ignored (no groups); the connection goes on.
    ws.send_text(r#"{"groups": {"jobs": ["x"]}}"#).await;
    assert!(ws.next_text().await.starts_with(r#"{"groups_current""#));
    // An empty close is a normal close, answered 1000.
    ws.send(&client_frame(true, 0x8, b"")).await;
    assert_eq!(ws.next_close().await.0, 1000);
    // A Sec-WebSocket-Key that is not 16 bytes of base64.
    for key in ["x", "dGhlIHNhbXBsZQ==", "not base64 at all!!!!!!"] {
        let req = format!(
            "GET {path} HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\r\n"
        );
        let (status, body) = http(n.addr, req.as_bytes()).await;
        assert_eq!(
            (status, body),
            (
                400,
                json!({"error": "malformed request: sec-websocket-key must be 16 bytes in base64"})
                    .to_string()
            ),
            "{key}"
        );
    }
}

/// Sends `request` on one connection and returns every response status
/// line the server wrote before closing it.
async fn statuses(addr: std::net::SocketAddr, request: &str) -> Vec<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut out))
        .await
        .expect("the server answers and closes in time")
        .unwrap();
    // Bodies end without a line break, so find the status lines by their
    // start rather than by lines.
    let text = String::from_utf8_lossy(&out).into_owned();
    text.match_indices("HTTP/1.1 ")
        .map(|(i, _)| text[i..].split("\r\n").next().unwrap().to_owned())
        .collect()
}

/// Finding 4: a request's end is never judged differently from a proxy's:
/// a body on a route that reads none, conflicting or signed lengths, and
/// transfer codings each get one answer and the connection closes.
#[tokio::test]
async fn http_requests_cannot_be_smuggled() {
    let n = start(|_| {});
    let cases = [
        // A body on a keep-alive route: its bytes are not a next request.
        (
            "GET /healthz HTTP/1.1\r\nContent-Length: 23\r\n\r\nGET /metrics HTTP/1.1\r\n\r\n",
            "HTTP/1.1 200 OK",
        ),
        (
            "GET /nowhere HTTP/1.1\r\nContent-Length: 23\r\n\r\nGET /metrics HTTP/1.1\r\n\r\n",
            "HTTP/1.1 404 Not Found",
        ),
        (
            "GET /healthz HTTP/1.1\r\nContent-Length: 0\r\nContent-Length: 23\r\n\r\nGET /metrics HTTP/1.1\r\n\r\n",
            "HTTP/1.1 400 Bad Request",
        ),
        (
            "GET /healthz HTTP/1.1\r\nContent-Length: +23\r\n\r\nGET /metrics HTTP/1.1\r\n\r\n",
            "HTTP/1.1 400 Bad Request",
        ),
        (
            "GET /healthz HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\nGET /metrics HTTP/1.1\r\n\r\n",
            "HTTP/1.1 501 Not Implemented",
        ),
        (
            "GET /healthz HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\nGET /metrics HTTP/1.1\r\n\r\n",
            "HTTP/1.1 411 Length Required",
        ),
    ];
    for (request, status) in cases {
        assert_eq!(statuses(n.addr, request).await, [status], "{request:?}");
    }
    // Emit bodies are read, so an emit connection stays reusable.
    let body = r#"{"group":"jobs-x","payload":1}"#;
    let one = format!(
        "POST /api/v1/emit HTTP/1.1\r\nAuthorization: Bearer {EMIT_KEY}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let two = format!(
        "{one}{}",
        one.replace("HTTP/1.1\r\n", "HTTP/1.1\r\nConnection: close\r\n")
    );
    assert_eq!(
        statuses(n.addr, &two).await,
        ["HTTP/1.1 200 OK", "HTTP/1.1 200 OK"]
    );
}

const BACKPLANE: &str = "hardening-backplane-secret-0123456789";

fn peer_node(tune: impl FnOnce(&mut wsrelay::Config)) -> TestNode {
    start(|c| {
        c.backplane_secret = Some(BACKPLANE.into());
        tune(c);
    })
}

/// The headers of a native dial as node `node`: AWX's secret header and
/// the native handshake's (a fresh nonce each time).
fn native_headers(node: &str) -> String {
    let secret = wsrelay::backplane::secret::header_value(BACKPLANE, now());
    let auth = wsrelay::backplane::handshake::dial_header(BACKPLANE, node, now(), rand_nonce());
    format!(
        "secret: {secret}\r\nwsrelay-auth: {auth}\r\nSec-WebSocket-Protocol: {}\r\n",
        wsrelay::backplane::wire::SUBPROTOCOL
    )
}

fn rand_nonce() -> [u8; 16] {
    rand_incarnation()
        .to_be_bytes()
        .repeat(2)
        .try_into()
        .unwrap()
}

/// Dials `addr` as native peer `node` over `stream` (by default a fresh
/// connection), with valid headers.
async fn native_peer(
    addr: std::net::SocketAddr,
    stream: Option<tokio::net::TcpStream>,
    node: &str,
) -> RawWs {
    let stream = match stream {
        Some(s) => s,
        None => tokio::net::TcpStream::connect(addr).await.unwrap(),
    };
    RawWs::upgrade_with(stream, "/websocket/broadcast/", &native_headers(node)).await
}

fn binary(payload: &[u8]) -> Vec<u8> {
    client_frame(true, 0x2, payload)
}

/// Finding 7: a peer's node name becomes a metric label; a crafted one is
/// refused, and nothing it carried reaches `/metrics`.
#[tokio::test]
async fn a_crafted_node_name_is_refused() {
    let n = peer_node(|_| {});
    let evil = "x\"} 1\nwsrelay_injected_total 1337\n# ";
    let mut p = native_peer(n.addr, None, "legit").await;
    p.send(&binary(&wsrelay::backplane::wire::hello(evil, 7)))
        .await;
    assert_eq!(
        p.next_close().await,
        (1002, "bad node name in hello".into())
    );
    let (_, metrics) = http(
        n.addr,
        b"GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(!metrics.contains("injected"), "{metrics}");
}

/// Finding 8: events from a peer are checked before any client sees them.
#[tokio::test]
async fn malformed_peer_events_close_the_link() {
    use wsrelay::backplane::wire::{hello, EventsWriter};
    let n = peer_node(|c| c.max_group_name = 32);
    let mut client = connect(n.addr, &token(1)).await;
    subscribe(&mut client, json!({"g": ["1"]})).await;
    let batch = |first_seq: u64, group: &str, payload: &[u8]| {
        let mut w = EventsWriter::start(bytes::BytesMut::new(), 0, first_seq);
        w.push(group, wsrelay::backplane::wire::Origin::None, payload);
        w.finish().0.to_vec()
    };
    for (events, reason) in [
        (
            batch(1, "g-1", &[b'"', 0xC3, 0x28, b'"']),
            "malformed peer message",
        ),
        (batch(0, "g-1", b"1"), "malformed peer message"),
        (batch(u64::MAX, "g-1", b"1"), ""),
        (batch(1, &"g".repeat(33), b"1"), "group name too long"),
    ] {
        let mut p = native_peer(n.addr, None, "peer-x").await;
        p.send(&binary(&hello("peer-x", rand_incarnation()))).await;
        p.send(&binary(&events)).await;
        if reason.is_empty() {
            // The last representable sequence is valid: delivered.
            continue;
        }
        assert_eq!(p.next_close().await, (1002, reason.to_owned()));
    }
    // Nothing malformed reached the client; the valid one did.
    assert_eq!(next_text(&mut client).await, "1");
}

fn rand_incarnation() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1
}

/// Finding 5: inbound links are bounded like clients: a cap on their
/// number, a frame limit, one pong owed at a time, and a peer that stops
/// reading is cut off.
#[tokio::test]
async fn inbound_peer_links_are_bounded() {
    let n = peer_node(|c| {
        c.max_peer_links = 2;
        c.peer_max_message = 64 * 1024;
        c.peer_ping_interval = Duration::from_millis(200);
    });
    let _a = native_peer(n.addr, None, "a").await;
    let _b = native_peer(n.addr, None, "b").await;
    let header = wsrelay::backplane::secret::header_value(BACKPLANE, now());
    let req = format!(
        "GET /websocket/broadcast/ HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nsecret: {header}\r\n\r\n"
    );
    let (status, body) = http(n.addr, req.as_bytes()).await;
    assert_eq!(
        (status, body),
        (
            503,
            json!({"error": "backplane: peer link limit reached"}).to_string()
        )
    );
    drop((_a, _b));
    wait_metric(
        n.addr,
        "wsrelay_backplane_auth_failures_total{reason=\"link_limit\"} 1",
    )
    .await;

    // A frame past --peer-max-message (once the dropped links' places
    // are free again).
    let mut p = loop {
        let s = tokio::net::TcpStream::connect(n.addr).await.unwrap();
        match RawWs::try_upgrade_with(s, "/websocket/broadcast/", &native_headers("big")).await {
            Ok(ws) => break ws,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    p.send(&binary(&vec![0u8; 65 * 1024])).await;
    assert_eq!(p.next_close().await, (1009, "message too big".into()));

    // Pings from a peer that never reads: one pong owed at a time, and the
    // link ends when its writes stall for three ping intervals.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(n.addr).await.unwrap();
    let mut p = native_peer(n.addr, Some(stream), "pinger").await;
    p.send(&binary(&wsrelay::backplane::wire::hello("pinger", 9)))
        .await;
    let pings = 40_000;
    let ping = client_frame(true, 0x9, &[b'p'; 125]);
    let mut all = Vec::with_capacity(ping.len() * 1000);
    for _ in 0..1000 {
        all.extend_from_slice(&ping);
    }
    for _ in 0..pings / 1000 {
        p.send(&all).await;
    }
    wait_metric(
        n.addr,
        "wsrelay_backplane_link_up{peer=\"pinger\",direction=\"in\"} 0",
    )
    .await;
    let mut pongs = 0;
    while let Some((op, _)) = p.next_frame().await {
        match op {
            0xA => pongs += 1,
            0x8 => break,
            _ => {}
        }
    }
    assert!(pongs < pings, "{pongs} pongs for {pings} pings");
}

/// Finding 9: cleanup does not depend on a task ending normally. A client
/// session that panics leaves the hub (its groups are freed, the
/// connection gauge drops), and the node goes on serving.
#[tokio::test]
async fn a_panicking_session_leaves_the_hub() {
    let n = start(|c| c.test_panic_on = Some("boom".into()));
    let mut stays = connect(n.addr, &token(1)).await;
    subscribe(&mut stays, json!({"g": ["kept"]})).await;
    let mut goes = connect(n.addr, &token(2)).await;
    subscribe(&mut goes, json!({"g": ["only-mine"]})).await;
    let groups = |body: &str| -> i64 {
        body.lines()
            .filter(|l| l.starts_with("wsrelay_groups{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<i64>().ok())
            .sum()
    };
    let (_, before) = http(
        n.addr,
        b"GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(groups(&before), 2, "{before}");
    send(&mut goes, "boom").await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, body) = http(
            n.addr,
            b"GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n",
        )
        .await;
        let conns: i64 = body
            .lines()
            .filter(|l| l.starts_with("wsrelay_connections{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<i64>().ok())
            .sum();
        if conns == 1 && groups(&body) == 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not cleaned up:\n{body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    emit_one(n.addr, "g-kept", r#"{"after": "panic"}"#).await;
    assert_eq!(next_text(&mut stays).await, r#"{"after": "panic"}"#);
}

/// Finding 9: a native peer link whose task panics no longer makes every
/// later subscribe wait the whole acknowledgement timeout for it.
#[tokio::test]
async fn a_panicking_peer_link_does_not_hold_subscribes() {
    let n = peer_node(|c| {
        c.test_panic_on = Some("panicking-peer".into());
        // Far longer than the test waits: only the cleanup can answer.
        c.subscribe_ack_timeout = Duration::from_secs(120);
    });
    let mut p = native_peer(n.addr, None, "panicking-peer").await;
    p.send(&binary(&wsrelay::backplane::wire::hello(
        "panicking-peer",
        3,
    )))
    .await;
    p.expect_eof().await;
    let mut ws = connect(n.addr, &token(1)).await;
    let reply = subscribe(&mut ws, json!({"jobs": ["status_changed"]})).await;
    assert_eq!(reply["groups_current"], json!(["jobs-status_changed"]));
}

/// Finding 3: the node holds a bounded number of groups; past it a
/// subscribe that needs new ones is refused (and the subscription stays).
#[tokio::test]
async fn the_node_group_limit_holds() {
    let n = start(|c| c.max_node_groups = 50);
    let ids = |from: u32, to: u32| (from..to).collect::<Vec<u32>>();
    let mut a = connect(n.addr, &token(1)).await;
    let r = subscribe(&mut a, json!({"g": ids(0, 40)})).await;
    assert_eq!(r["groups_current"].as_array().unwrap().len(), 40);
    let mut b = connect(n.addr, &token(2)).await;
    subscribe(&mut b, json!({"g": ids(0, 5)})).await;
    send(&mut b, &json!({"groups": {"g": ids(40, 60)}}).to_string()).await;
    assert_eq!(
        next_json(&mut b).await,
        json!({"error": "node group limit reached: 40 groups held, limit 50"})
    );
    // Groups already held cost nothing; what fits still goes.
    let r = subscribe(&mut b, json!({"g": ids(0, 48)})).await;
    assert_eq!(r["groups_current"].as_array().unwrap().len(), 48);
    emit_one(n.addr, "g-4", r#"{"still": "held"}"#).await;
    assert_eq!(next_text(&mut b).await, r#"{"still": "held"}"#);
}

/// Finding 3: a peer's interest is bounded by the node's group limit, and
/// an interest too big for one message travels in several instead of
/// breaking the link.
#[tokio::test]
async fn peer_interest_is_chunked_and_bounded() {
    let receiver = peer_node(|c| {
        c.node_id = "receiver".into();
        c.max_groups = 1024;
        c.max_group_name = 256;
        c.max_message_bytes = 1 << 20;
        c.subscribe_rate = 1000;
    });
    // 4,000 groups of ~200-byte names: about 800 KB, several messages.
    let long = "x".repeat(190);
    let mut clients = Vec::new();
    for k in 0..4 {
        let mut c = connect(receiver.addr, &token(k)).await;
        let names: Vec<String> = (0..1000).map(|i| format!("{long}-{k}-{i}")).collect();
        subscribe(&mut c, json!({ "big": names })).await;
        clients.push(c);
    }
    let peer = format!("ws://{}", receiver.addr);
    let generous = start(|c| {
        c.node_id = "generous".into();
        c.backplane_secret = Some(BACKPLANE.into());
        c.peers = vec![peer.clone()];
        // Below the whole interest (~800 KB), above one chunk.
        c.peer_max_message = 300 * 1024;
    });
    wait_metric(
        receiver.addr,
        "wsrelay_backplane_link_up{peer=\"generous\",direction=\"in\"} 1",
    )
    .await;
    // A subscribe's reply waits until the link applied its change, and the
    // link is ordered: after it, the whole first interest is applied too.
    let mut probe = connect(receiver.addr, &token(9)).await;
    subscribe(&mut probe, json!({"probe": ["x"]})).await;
    // The last group of the last chunk reached the generous sender: an
    // event for it crosses.
    let last = format!("big-{long}-3-999");
    emit_one(generous.addr, &last, r#"{"crossed": true}"#).await;
    assert_eq!(next_text(&mut clients[3]).await, r#"{"crossed": true}"#);
    let tight = start(|c| {
        c.node_id = "tight".into();
        c.backplane_secret = Some(BACKPLANE.into());
        c.peers = vec![peer.clone()];
        c.max_node_groups = 1000;
    });
    // The tight sender refuses an interest past its limit: the link fails
    // (and is redialled) rather than growing without bound.
    let failures = format!(
        "wsrelay_backplane_link_failures_total{{peer=\"{}\"}}",
        receiver.addr
    );
    let deadline = tokio::time::Instant::now() + WAIT;
    let failed = || async {
        let (_, body) = http(
            tight.addr,
            b"GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n",
        )
        .await;
        body.lines()
            .find_map(|l| {
                l.strip_prefix(failures.as_str())?
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .unwrap_or(0)
    };
    while failed().await == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the tight link never failed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Finding 6: a captured native upgrade request cannot be replayed, and a
/// dialer checks that the node it reached knows the secret too.
#[tokio::test]
async fn native_upgrades_cannot_be_replayed_and_prove_both_ways() {
    let n = peer_node(|_| {});
    let captured = native_headers("dialer");
    let first = RawWs::try_upgrade_with(
        tokio::net::TcpStream::connect(n.addr).await.unwrap(),
        "/websocket/broadcast/",
        &captured,
    )
    .await;
    assert!(first.is_ok());
    for (headers, reason) in [
        (
            captured.clone(),
            "backplane: wsrelay-auth nonce was already used (a replayed request)",
        ),
        (
            captured
                .lines()
                .filter(|l| !l.starts_with("wsrelay-auth"))
                .map(|l| format!("{l}\n"))
                .collect(),
            "backplane: native links need a wsrelay-auth header (is the dialing node older?)",
        ),
    ] {
        let refused = RawWs::try_upgrade_with(
            tokio::net::TcpStream::connect(n.addr).await.unwrap(),
            "/websocket/broadcast/",
            &headers,
        )
        .await;
        let head = refused.err().expect("refused");
        assert!(head.starts_with("HTTP/1.1 403"), "{head}");
        let req = format!(
            "GET /websocket/broadcast/ HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{}\r\n",
            headers.replace('\n', "\r\n").replace("\r\r\n", "\r\n")
        );
        let (status, body) = http(n.addr, req.as_bytes()).await;
        assert_eq!(
            (status, body),
            (403, json!({ "error": reason }).to_string())
        );
    }
    wait_metric(
        n.addr,
        "wsrelay_backplane_auth_failures_total{reason=\"replayed\"} 2",
    )
    .await;

    // A "node" that accepts the native protocol without knowing the secret
    // (it cannot answer the nonce): the dialer refuses the link.
    let fake = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let fake_addr = fake.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut s, _)) = fake.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                while !head.ends_with(b"\r\n\r\n") {
                    match s.read_u8().await {
                        Ok(b) => head.push(b),
                        Err(_) => return,
                    }
                }
                let head = String::from_utf8_lossy(&head);
                let key = head
                    .lines()
                    .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
                    .unwrap_or("")
                    .trim()
                    .to_owned();
                let accept = wsrelay::protocol::http::accept_key(&key);
                let reply = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                     Sec-WebSocket-Accept: {accept}\r\nSec-WebSocket-Protocol: wsrelay.peer.v1\r\n\r\n"
                );
                let _ = s.write_all(reply.as_bytes()).await;
                let mut sink = [0u8; 1024];
                while matches!(s.read(&mut sink).await, Ok(n) if n > 0) {}
            });
        }
    });
    let dialer = peer_node(|c| c.peers = vec![format!("ws://{fake_addr}")]);
    let failures = format!("wsrelay_backplane_link_failures_total{{peer=\"{fake_addr}\"}}");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, body) = http(
            dialer.addr,
            b"GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n",
        )
        .await;
        // Never up, not even for a moment: the proof is checked first.
        assert!(
            !body.contains(&format!(
                "wsrelay_backplane_link_up{{peer=\"{fake_addr}\",direction=\"out\"}} 1"
            )),
            "{body}"
        );
        let failed = body
            .lines()
            .find_map(|l| {
                l.strip_prefix(failures.as_str())?
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .unwrap_or(0);
        if failed > 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the link to the fake node never failed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
