//! The I/O drivers: each can be forced, `auto` falls back to epoll when
//! io_uring cannot be set up, and connections spread over all workers.

mod support;

use std::process::Stdio;

use serde_json::json;
use support::*;
use tokio::io::{AsyncBufReadExt, BufReader};
use wsrelay::config::IoMode;
use wsrelay::{Config, Node, StartError};

async fn health(addr: std::net::SocketAddr) -> serde_json::Value {
    let (_, body) = http(addr, b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n").await;
    serde_json::from_str(&body).unwrap()
}

fn config(io: IoMode) -> Config {
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        admin_listen: None,
        workers: 2,
        io,
        jwt_secret: Some(SECRET.into()),
        emit_key: Some(EMIT_KEY.into()),
        ..Config::default()
    }
}

/// Serves one subscribe-and-deliver round trip.
async fn serves(addr: std::net::SocketAddr) {
    let mut ws = connect(addr, &token(1)).await;
    subscribe(&mut ws, json!({"jobs": ["status_changed"]})).await;
    emit_one(addr, "jobs-status_changed", r#"{"ok": 1}"#).await;
    assert_eq!(next_text(&mut ws).await, r#"{"ok": 1}"#);
}

#[tokio::test]
async fn each_driver_can_be_forced() {
    let node = Node::start(config(IoMode::Epoll)).unwrap();
    assert_eq!(health(node.local_addr()).await["io"], "epoll");
    serves(node.local_addr()).await;
    let metrics = http(
        node.local_addr(),
        b"GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n",
    )
    .await
    .1;
    assert!(
        metrics.contains("wsrelay_info{io=\"epoll\"} 1"),
        "{metrics}"
    );
    drop(node);

    match wsrelay::probe_uring() {
        Ok(()) => {
            let node = Node::start(config(IoMode::Uring)).unwrap();
            assert_eq!(health(node.local_addr()).await["io"], "uring");
            serves(node.local_addr()).await;
        }
        // Where the kernel refuses io_uring, forcing it fails with the reason.
        Err(reason) => match Node::start(config(IoMode::Uring)) {
            Err(StartError::Uring(e)) => assert_eq!(e.kind(), reason.kind()),
            Err(other) => panic!("wrong error: {other}"),
            Ok(_) => panic!("started on uring although the probe failed"),
        },
    }
}

#[tokio::test]
async fn auto_falls_back_to_epoll_when_io_uring_is_unavailable() {
    let bin = env!("CARGO_BIN_EXE_wsrelay");
    // `--io uring` refuses to start and says why.
    let out = tokio::process::Command::new(bin)
        .args([
            "serve",
            "--admin-listen",
            "off",
            "--io",
            "uring",
            "--jwt-secret",
            SECRET,
            "--listen",
            "127.0.0.1:0",
        ])
        .env(wsrelay::DISABLE_URING_ENV, "1")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("io_uring is unavailable here"), "{stderr}");

    // `--io auto` says so in one line and serves on epoll.
    let mut child = tokio::process::Command::new(bin)
        .args([
            "serve",
            "--admin-listen",
            "off",
            "--io",
            "auto",
            "--jwt-secret",
            SECRET,
            "--emit-key",
            EMIT_KEY,
        ])
        .args(["--listen", "127.0.0.1:0"])
        .env(wsrelay::DISABLE_URING_ENV, "1")
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut saw_fallback = false;
    let addr: std::net::SocketAddr = loop {
        let line = tokio::time::timeout(WAIT, lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        saw_fallback |= line.contains("io_uring is unavailable; using epoll");
        if let Some(rest) = line.split("addr=").nth(1) {
            assert!(line.contains("io=\"epoll\""), "{line}");
            break rest.split_whitespace().next().unwrap().parse().unwrap();
        }
    };
    assert!(saw_fallback, "the fallback is logged before listening");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    assert_eq!(health(addr).await["io"], "epoll");
    serves(addr).await;
    child.kill().await.unwrap();
}

#[tokio::test]
async fn connections_spread_over_all_workers() {
    let n = start(|_| {});
    let mut clients = Vec::new();
    for i in 0..40 {
        clients.push(connect(n.addr, &token(i)).await);
    }
    let (_, metrics) = http(
        n.addr,
        b"GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n",
    )
    .await;
    let per_worker: Vec<u64> = (0..2)
        .map(|w| {
            let prefix = format!("wsrelay_connections{{worker=\"{w}\"}} ");
            metrics
                .lines()
                .find_map(|l| l.strip_prefix(&prefix)?.parse().ok())
                .unwrap_or_else(|| panic!("no gauge for worker {w}:\n{metrics}"))
        })
        .collect();
    assert_eq!(per_worker.iter().sum::<u64>(), 40, "{per_worker:?}");
    assert!(
        per_worker.iter().all(|&c| c > 0),
        "every worker has clients: {per_worker:?}"
    );
}
