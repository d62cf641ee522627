//! Bad input gets its documented answer, and the node keeps serving others.

mod support;

use futures_util::SinkExt;
use serde_json::json;
use support::*;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message;

/// A client on `job_events-1` that must still get events after the abuse.
async fn bystander(addr: std::net::SocketAddr) -> Ws {
    let mut ws = connect(addr, &token(999)).await;
    subscribe(&mut ws, json!({"job_events": [1]})).await;
    ws
}

async fn still_served(addr: std::net::SocketAddr, ws: &mut Ws, n: u32) {
    let payload = format!(r#"{{"still": {n}}}"#);
    emit_one(addr, "job_events-1", &payload).await;
    assert_eq!(next_text(ws).await, payload);
}

#[tokio::test]
async fn bad_messages_get_an_error_and_the_connection_goes_on() {
    let n = start(|_| {});
    let mut by = bystander(n.addr).await;
    let mut ws = connect(n.addr, &token(1)).await;
    subscribe(&mut ws, json!({"job_events": [1]})).await;
    for (input, error) in [
        ("this is not json", "invalid json"),
        ("[1, 2, 3]", "message must be a json object"),
        (r#"{"groups": ["jobs"]}"#, "groups must be an object"),
    ] {
        send(&mut ws, input).await;
        assert_eq!(
            next_json(&mut ws).await,
            json!({ "error": error }),
            "{input}"
        );
    }
    // 2,000 groups: refused whole; the earlier subscription stays.
    let ids: Vec<u32> = (0..2000).collect();
    send(&mut ws, &json!({"groups": {"job_events": ids}}).to_string()).await;
    assert_eq!(
        next_json(&mut ws).await,
        json!({"error": "too many groups: 2000 requested, limit 1024"})
    );
    // A message without groups is ignored; the next reply proves the
    // connection and its subscription are intact.
    send(&mut ws, r#"{"hello": "there"}"#).await;
    still_served(n.addr, &mut ws, 1).await;
    assert_eq!(next_text(&mut by).await, r#"{"still": 1}"#);
    wait_metric(n.addr, "wsrelay_client_errors_total 4").await;
}

/// Regression (issue 10, finding 1): 16,000 nested brackets in a 32 KB
/// message overflowed a worker's stack inside simd-json and aborted the
/// node. Now the message gets an error and everyone stays connected.
#[tokio::test]
async fn deeply_nested_json_gets_an_error_not_a_crash() {
    let n = start(|_| {});
    let mut by = bystander(n.addr).await;
    let mut ws = connect(n.addr, &token(1)).await;
    subscribe(&mut ws, json!({"job_events": [1]})).await;
    for depth in [16_000, 32_000, 8_000, 33] {
        let deep = "[".repeat(depth) + &"]".repeat(depth);
        send(&mut ws, &deep).await;
        assert_eq!(
            next_json(&mut ws).await,
            json!({"error": "json nested deeper than 32 levels"}),
            "depth {depth}"
        );
        // Objects inside `groups`, behind a valid prefix (capped so the
        // message stays under the 64 KiB limit).
        let k = depth.min(8_000);
        let deep = format!(
            r#"{{"groups": {{"job_events": [1, {}1{}]}}}}"#,
            r#"{"a": "#.repeat(k),
            "}".repeat(k)
        );
        send(&mut ws, &deep).await;
        assert_eq!(
            next_json(&mut ws).await,
            json!({"error": "json nested deeper than 32 levels"}),
            "groups depth {depth}"
        );
    }
    // 32 levels still parse (and are refused for their shape, not depth).
    let ok = "[".repeat(32) + &"]".repeat(32);
    send(&mut ws, &ok).await;
    assert_eq!(
        next_json(&mut ws).await,
        json!({"error": "message must be a json object"})
    );
    // Payloads are validated without recursion and passed on verbatim:
    // a deep one is no danger to the node.
    let payload = "[".repeat(16_000) + &"]".repeat(16_000);
    emit_one(n.addr, "job_events-1", &payload).await;
    assert_eq!(next_text(&mut ws).await, payload);
    assert_eq!(next_text(&mut by).await, payload);
    still_served(n.addr, &mut ws, 1).await;
    assert_eq!(next_text(&mut by).await, r#"{"still": 1}"#);
}

#[tokio::test]
async fn unusable_frames_close_with_a_code_and_reason() {
    let n = start(|_| {});
    let mut by = bystander(n.addr).await;
    let cases: Vec<(Message, CloseCode, &str)> = vec![
        (
            Message::Binary(vec![1, 2, 3]),
            CloseCode::Unsupported,
            "binary frames are not supported",
        ),
        (
            Message::Text("x".repeat(64 * 1024 + 1)),
            CloseCode::Size,
            "message too big",
        ),
        (
            Message::Frame(Frame::message(
                vec![b'{', 0xC3, 0x28, b'}'],
                OpCode::Data(Data::Text),
                true,
            )),
            CloseCode::Invalid,
            "text frame is not valid utf-8",
        ),
    ];
    for (i, (message, code, reason)) in cases.into_iter().enumerate() {
        let mut ws = connect(n.addr, &token(i as u64)).await;
        ws.send(message).await.unwrap();
        assert_eq!(next_close(&mut ws).await, (code, reason.to_owned()));
        still_served(n.addr, &mut by, i as u32).await;
    }
    for reason in ["binary_frame", "message_too_big", "invalid_utf8"] {
        wait_metric(
            n.addr,
            &format!("wsrelay_server_closes_total{{reason=\"{reason}\"}} 1"),
        )
        .await;
    }
}

#[tokio::test]
async fn bad_emit_requests_get_a_status_and_a_reason() {
    let n = start(|c| c.max_emit_bytes = 4096);
    let mut by = bystander(n.addr).await;
    let cases: Vec<(String, u16, &str)> = vec![
        (emit_request("wrong-key", r#"{"group":"a","payload":1}"#), 401, "missing or wrong emit key"),
        (emit_request(EMIT_KEY, "{nope"), 400, "invalid json: key must be a string at line 1 column 2"),
        (emit_request(EMIT_KEY, r#"{"group":"a"}"#), 400, "invalid json: want {\"group\": string, \"payload\": json} or an array of them (missing field `payload` at line 1 column 13)"),
        (emit_request(EMIT_KEY, r#"[{"group":"job_events-1","payload":1},{"group":"","payload":2}]"#), 400, "event 1: group must be a non-empty string of at most 256 bytes"),
        (emit_request(EMIT_KEY, &format!(r#"{{"group":"a","payload":"{}"}}"#, "x".repeat(5000))), 413, "body of 5026 bytes exceeds the limit of 4096"),
        (
            format!("POST /api/v1/emit HTTP/1.1\r\nAuthorization: Bearer {EMIT_KEY}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\n"),
            411,
            "chunked bodies are not supported; send content-length",
        ),
        (
            format!("GET /api/v1/emit HTTP/1.1\r\nAuthorization: Bearer {EMIT_KEY}\r\nConnection: close\r\n\r\n"),
            405,
            "use POST",
        ),
    ];
    for (request, status, reason) in cases {
        let (got, body) = http(n.addr, request.as_bytes()).await;
        assert_eq!(
            (got, body),
            (status, json!({ "error": reason }).to_string()),
            "{request}"
        );
    }
    // Nothing of the refused batch was half-applied: the first event of the
    // bad array never arrived, the next good one does.
    still_served(n.addr, &mut by, 1).await;
}

fn emit_request(key: &str, body: &str) -> String {
    format!(
        "POST /api/v1/emit HTTP/1.1\r\nAuthorization: Bearer {key}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[tokio::test]
async fn bad_http_and_upgrades() {
    let n = start(|c| c.max_connections = 2);
    let cases: Vec<(&[u8], u16, &str)> = vec![
        (b"\x01\x02garbage\r\n\r\n", 400, "malformed request: invalid token"),
        (b"GET /nowhere HTTP/1.1\r\nConnection: close\r\n\r\n", 404, "not found"),
        (b"GET /websocket/ HTTP/1.1\r\nConnection: close\r\n\r\n", 426, "this endpoint expects a websocket upgrade"),
        (
            b"GET /websocket/ HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 8\r\nSec-WebSocket-Key: x\r\n\r\n",
            400,
            "malformed request: unsupported sec-websocket-version (want 13)",
        ),
    ];
    for (request, status, reason) in cases {
        let (got, body) = http(n.addr, request).await;
        assert_eq!(
            (got, body),
            (status, json!({ "error": reason }).to_string())
        );
    }
    let huge = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(20_000));
    assert_eq!(http(n.addr, huge.as_bytes()).await.0, 431);

    // The connection limit answers 503 before the upgrade.
    let _a = connect(n.addr, &token(1)).await;
    let _b = connect(n.addr, &token(2)).await;
    let url = format!("ws://{}/websocket/?token={}", n.addr, token(3));
    match tokio_tungstenite::connect_async(url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 503),
        other => panic!("expected 503, got {other:?}"),
    }
    wait_metric(
        n.addr,
        "wsrelay_clients_refused_total{reason=\"connection_limit\"} 1",
    )
    .await;
    // Health still answers, and reports the clients.
    let (status, body) = http(
        n.addr,
        b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200);
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        health,
        json!({"status": "ok", "io": io_name(), "workers": 2, "connections": 2})
    );
}

#[tokio::test]
async fn emit_endpoint_is_absent_without_a_key() {
    let n = start(|c| c.emit_key = None);
    let (status, body) = emit(n.addr, r#"{"group":"a","payload":1}"#).await;
    assert_eq!((status, body.as_str()), (404, r#"{"error":"not found"}"#));
}
