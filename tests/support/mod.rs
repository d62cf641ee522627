//! Shared test helpers: a real node on 127.0.0.1:0, tokens minted with the
//! HS256 primitives directly, a tokio-tungstenite client, raw HTTP.
#![allow(dead_code)]

pub mod awx_api;
pub mod cut;
pub mod nats;
pub mod nginx;
pub mod postgres;
pub mod raw;
pub mod redis;

use std::net::SocketAddr;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use wsrelay::config::IoMode;
use wsrelay::{Config, Node};

pub const SECRET: &str = "test-secret-0123456789";
pub const EMIT_KEY: &str = "test-emit-key";
/// Long enough for a loaded CI machine, short enough to fail fast.
pub const WAIT: Duration = Duration::from_secs(20);

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub struct TestNode {
    pub node: Node,
    pub addr: SocketAddr,
}

/// The driver under test: `WSRELAY_TEST_IO=epoll|uring|auto` (default
/// auto). The README's test command runs the suite once per driver.
pub fn io_under_test() -> IoMode {
    match std::env::var("WSRELAY_TEST_IO").as_deref() {
        Ok("epoll") => IoMode::Epoll,
        Ok("uring") => IoMode::Uring,
        Ok("auto") | Err(_) => IoMode::Auto,
        Ok(other) => panic!("WSRELAY_TEST_IO={other}: want epoll, uring or auto"),
    }
}

/// The name `/healthz` reports for the driver under test.
pub fn io_name() -> &'static str {
    match io_under_test() {
        IoMode::Epoll => "epoll",
        IoMode::Uring => "uring",
        IoMode::Auto if wsrelay::probe_uring().is_ok() => "uring",
        IoMode::Auto => "epoll",
    }
}

/// A node with JWT auth and the emit endpoint, on two workers (so routing
/// between workers is exercised), on the driver under test, adjusted by
/// `tune`.
pub fn start(tune: impl FnOnce(&mut Config)) -> TestNode {
    let mut config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        // Tests run many nodes at once: none takes the admin port.
        admin_listen: None,
        workers: 2,
        io: io_under_test(),
        jwt_secret: Some(SECRET.into()),
        emit_key: Some(EMIT_KEY.into()),
        ..Config::default()
    };
    tune(&mut config);
    let node = Node::start(config).expect("node starts");
    let addr = node.local_addr();
    TestNode { node, addr }
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// An HS256 JWT signed with `secret`, built from the primitives (not with
/// the server's own minting code).
pub fn jwt(secret: &str, claims: Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let body = URL_SAFE_NO_PAD.encode(claims.to_string());
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{header}.{body}").as_bytes());
    let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{header}.{body}.{sig}")
}

/// A valid token for user `sub`.
pub fn token(sub: u64) -> String {
    jwt(
        SECRET,
        serde_json::json!({"sub": sub.to_string(), "exp": now() + 3600}),
    )
}

pub async fn connect_raw(addr: SocketAddr, path: &str) -> Ws {
    let url = format!("ws://{addr}{path}");
    let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
        .await
        .expect("connect in time")
        .expect("upgrade succeeds");
    ws
}

/// Connects with `token` and checks the accept message.
pub async fn connect(addr: SocketAddr, token: &str) -> Ws {
    let mut ws = connect_raw(addr, &format!("/websocket/?token={token}")).await;
    let accept = next_json(&mut ws).await;
    assert_eq!(accept["accept"], true, "{accept}");
    ws
}

/// The next message, answering nothing on its own (tungstenite queues pongs).
pub async fn next(ws: &mut Ws) -> Message {
    loop {
        let m = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a message in time")
            .expect("stream not ended")
            .expect("no websocket error");
        if !matches!(m, Message::Ping(_) | Message::Pong(_)) {
            return m;
        }
    }
}

pub async fn next_text(ws: &mut Ws) -> String {
    match next(ws).await {
        Message::Text(t) => t,
        other => panic!("expected text, got {other:?}"),
    }
}

pub async fn next_json(ws: &mut Ws) -> Value {
    serde_json::from_str(&next_text(ws).await).expect("server sends JSON")
}

/// Waits for a close frame (skipping text) and returns its code and reason.
pub async fn next_close(ws: &mut Ws) -> (CloseCode, String) {
    loop {
        match next(ws).await {
            Message::Close(Some(f)) => return (f.code, f.reason.to_string()),
            Message::Close(None) => panic!("close without a code"),
            Message::Text(_) => continue,
            other => panic!("expected close, got {other:?}"),
        }
    }
}

pub async fn send(ws: &mut Ws, text: &str) {
    ws.send(Message::Text(text.to_owned())).await.expect("send");
}

/// Sends a groups message and returns the reply, with its lists sorted.
pub async fn subscribe(ws: &mut Ws, groups: Value) -> Value {
    send(ws, &serde_json::json!({ "groups": groups }).to_string()).await;
    sorted(next_json(ws).await)
}

pub fn sorted(mut v: Value) -> Value {
    for key in ["groups_current", "groups_left", "groups_joined"] {
        if let Some(list) = v.get_mut(key).and_then(Value::as_array_mut) {
            list.sort_by_key(|x| x.as_str().unwrap_or("").to_owned());
        }
    }
    v
}

/// A raw HTTP/1.1 request; returns status and body.
pub async fn http(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut out))
        .await
        .expect("response in time")
        .unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    (status, body)
}

/// POSTs an emit body with the test key.
pub async fn emit(addr: SocketAddr, body: &str) -> (u16, String) {
    emit_with_key(addr, EMIT_KEY, body).await
}

pub async fn emit_with_key(addr: SocketAddr, key: &str, body: &str) -> (u16, String) {
    let req = format!(
        "POST /api/v1/emit HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    http(addr, req.as_bytes()).await
}

/// Emits one event and checks it was accepted.
pub async fn emit_one(addr: SocketAddr, group: &str, payload: &str) {
    let body = format!(r#"{{"group": "{group}", "payload": {payload}}}"#);
    let (status, reply) = emit(addr, &body).await;
    assert_eq!((status, reply.as_str()), (200, r#"{"accepted": 1}"#));
}

/// Polls `/metrics` until `line` appears.
pub async fn wait_metric(addr: SocketAddr, line: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, body) = http(addr, b"GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n").await;
        if body.lines().any(|l| l == line) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "metric {line:?} never appeared:\n{body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The value of an unlabelled metric.
pub async fn metric(addr: SocketAddr, name: &str) -> u64 {
    let (_, body) = http(addr, b"GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n").await;
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no metric {name} in\n{body}"))
}

/// Starts `wsrelay serve` from `cmd` and returns the child (killed on drop)
/// and the address it logged.
pub async fn spawn_serve(cmd: &mut tokio::process::Command) -> (tokio::process::Child, SocketAddr) {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let mut child = cmd
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = tokio::time::timeout(WAIT, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(rest) = line.split("addr=").nth(1) {
                return rest.split_whitespace().next().unwrap().parse().unwrap();
            }
        }
        panic!("serve exited before listening");
    })
    .await
    .expect("serve logs its address");
    // Keep draining stderr so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, addr)
}
