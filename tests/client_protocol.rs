//! The AWX client protocol (SPEC section 2) against a real node.

mod support;

use serde_json::json;
use support::*;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

#[tokio::test]
async fn valid_token_gets_accept_with_user_id() {
    let n = start(|_| {});
    let mut ws = connect_raw(n.addr, &format!("/websocket/?token={}", token(42))).await;
    assert_eq!(
        next_json(&mut ws).await,
        json!({"accept": true, "user": 42})
    );
    // The header form and the /api/ path work too.
    let req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        format!("ws://{}/api/websocket/", n.addr),
    )
    .map(|mut r| {
        let v = format!("Bearer {}", token(7)).parse().unwrap();
        r.headers_mut().insert("authorization", v);
        r
    })
    .unwrap();
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(next_json(&mut ws).await, json!({"accept": true, "user": 7}));
}

#[tokio::test]
async fn refused_tokens_get_close_message_and_1008() {
    let n = start(|_| {});
    let expired = jwt(SECRET, json!({"sub": "1", "exp": now() - 3600}));
    let wrong_key = jwt("not-the-secret", json!({"sub": "1", "exp": now() + 3600}));
    for (path, reason) in [
        (
            "/websocket/".to_owned(),
            "authentication failed: missing token",
        ),
        (
            format!("/websocket/?token={expired}"),
            "authentication failed: token expired",
        ),
        (
            format!("/websocket/?token={wrong_key}"),
            "authentication failed: bad token signature",
        ),
        (
            "/websocket/?token=garbage".to_owned(),
            "authentication failed: malformed token: want three dot-separated parts",
        ),
    ] {
        let mut ws = connect_raw(n.addr, &path).await;
        assert_eq!(next_json(&mut ws).await, json!({"close": true}), "{path}");
        assert_eq!(
            next_close(&mut ws).await,
            (CloseCode::Policy, reason.to_owned())
        );
    }
    wait_metric(
        n.addr,
        "wsrelay_clients_refused_total{reason=\"auth_failed\"} 4",
    )
    .await;
}

#[tokio::test]
async fn groups_replace_semantics() {
    let n = start(|_| {});
    let mut ws = connect(n.addr, &token(1)).await;
    let r = subscribe(
        &mut ws,
        json!({"jobs": ["status_changed"], "job_events": [42, 43]}),
    )
    .await;
    assert_eq!(
        r,
        json!({
            "groups_current": ["job_events-42", "job_events-43", "jobs-status_changed"],
            "groups_left": [],
            "groups_joined": ["job_events-42", "job_events-43", "jobs-status_changed"],
        })
    );
    let r = subscribe(&mut ws, json!({"job_events": [43, 44]})).await;
    assert_eq!(
        r,
        json!({
            "groups_current": ["job_events-43", "job_events-44"],
            "groups_left": ["job_events-42", "jobs-status_changed"],
            "groups_joined": ["job_events-44"],
        })
    );
    let r = subscribe(
        &mut ws,
        json!({"job_events": [44], "schedules": ["changed"]}),
    )
    .await;
    assert_eq!(
        r,
        json!({
            "groups_current": ["job_events-44", "schedules-changed"],
            "groups_left": ["job_events-43"],
            "groups_joined": ["schedules-changed"],
        })
    );
    // Delivery follows the replacement: 43 no longer reaches this client.
    emit_one(n.addr, "job_events-43", r#"{"n": 1}"#).await;
    emit_one(n.addr, "job_events-44", r#"{"n": 2}"#).await;
    assert_eq!(next_text(&mut ws).await, r#"{"n": 2}"#);
    let r = subscribe(&mut ws, json!({})).await;
    assert_eq!(
        r,
        json!({
            "groups_current": [],
            "groups_left": ["job_events-44", "schedules-changed"],
            "groups_joined": [],
        })
    );
}

#[tokio::test]
async fn non_list_value_is_refused_and_keeps_earlier_subscriptions() {
    let n = start(|_| {});
    let mut ws = connect(n.addr, &token(1)).await;
    subscribe(&mut ws, json!({"jobs": ["status_changed"]})).await;
    send(
        &mut ws,
        r#"{"groups": {"job_events": 42, "jobs": ["summary"]}}"#,
    )
    .await;
    assert_eq!(
        next_json(&mut ws).await,
        json!({"error": "access denied to channel"})
    );
    emit_one(n.addr, "jobs-summary", r#"{"n": "not subscribed"}"#).await;
    emit_one(
        n.addr,
        "jobs-status_changed",
        r#"{"n": "still subscribed"}"#,
    )
    .await;
    assert_eq!(next_text(&mut ws).await, r#"{"n": "still subscribed"}"#);
}

#[tokio::test]
async fn groups_claim_denies_per_resource() {
    let n = start(|_| {});
    let limited = jwt(
        SECRET,
        json!({"sub": "5", "exp": now() + 60, "groups": ["job_events-4*", "jobs-status_changed"]}),
    );
    let mut ws = connect(n.addr, &limited).await;
    send(
        &mut ws,
        r#"{"groups": {"job_events": [42, 7, 43], "jobs": ["status_changed", "summary"]}}"#,
    )
    .await;
    // One reply for the message's errors, AWX's texts listed in it.
    assert_eq!(
        next_json(&mut ws).await,
        json!({
            "error": "access denied to channel job_events for resource id 7",
            "errors": [
                "access denied to channel job_events for resource id 7",
                "access denied to channel jobs for resource id summary",
            ],
        })
    );
    assert_eq!(
        sorted(next_json(&mut ws).await),
        json!({
            "groups_current": ["job_events-42", "job_events-43", "jobs-status_changed"],
            "groups_left": [],
            "groups_joined": ["job_events-42", "job_events-43", "jobs-status_changed"],
        })
    );
}

#[tokio::test]
async fn xrftoken_is_required_when_the_upgrade_carried_a_csrf_cookie() {
    let n = start(|_| {});
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        format!("ws://{}/websocket/?token={}", n.addr, token(3)),
    )
    .unwrap();
    req.headers_mut()
        .insert("cookie", "sessionid=x; csrftoken=abc123".parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    next_json(&mut ws).await;
    send(&mut ws, r#"{"groups": {"jobs": ["status_changed"]}}"#).await;
    assert_eq!(
        next_json(&mut ws).await,
        json!({"error": "access denied to channel"})
    );
    send(
        &mut ws,
        r#"{"groups": {"jobs": ["status_changed"]}, "xrftoken": "wrong"}"#,
    )
    .await;
    assert_eq!(
        next_json(&mut ws).await,
        json!({"error": "access denied to channel"})
    );
    send(
        &mut ws,
        r#"{"groups": {"jobs": ["status_changed"]}, "xrftoken": "abc123"}"#,
    )
    .await;
    assert_eq!(
        next_json(&mut ws).await["groups_joined"],
        json!(["jobs-status_changed"])
    );
}

#[tokio::test]
async fn silent_clients_are_pinged_then_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let n = start(|c| c.ping_interval = std::time::Duration::from_millis(200));
    // A raw client that completes the upgrade and then never answers.
    let mut s = tokio::net::TcpStream::connect(n.addr).await.unwrap();
    let req = format!(
        "GET /websocket/?token={} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        token(9)
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut got))
        .await
        .expect("the server ends the connection")
        .unwrap();
    let ping = [0x89u8, 0x00];
    let close = wsrelay::protocol::frame::close_frame(1001, "ping timeout");
    assert!(got.windows(2).any(|w| w == ping), "a ping was sent");
    assert!(got.ends_with(&close), "ends with close 1001 ping timeout");
    wait_metric(
        n.addr,
        "wsrelay_server_closes_total{reason=\"ping_timeout\"} 1",
    )
    .await;
}
