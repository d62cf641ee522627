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
