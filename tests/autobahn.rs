//! RFC 6455 conformance with the Autobahn|TestSuite case files, run by
//! kosoku (PyPI; it drives Autobahn's own cases under Python 3):
//! `fuzzingclient` against the node's websocket session in its test-only
//! echo mode, `fuzzingserver` against the client codec the backplane dials
//! with. Cases 1 to 10 must all be OK, NON-STRICT or INFORMATIONAL;
//! permessage-deflate (12, 13) is not offered. The summaries are written
//! to `docs/autobahn/` so the repository keeps the last run's.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use support::*;

fn kosoku() -> PathBuf {
    let py = support::redis::python();
    py.with_file_name("kosoku")
}

/// Writes this run's verdicts to `target/autobahn/<side>.json` and checks
/// that every case of the summary kept in `docs/autobahn/<side>.json` ran
/// (a case that silently stopped running is a regression too).
fn summarize(side: &str, all: &[(String, String, String)]) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let cases: serde_json::Map<String, Value> = all
        .iter()
        .map(|(case, b, c)| {
            let id = case.rsplit(' ').next().unwrap().to_owned();
            (id, Value::String(format!("{b}/{c}")))
        })
        .collect();
    let mut counts = std::collections::BTreeMap::<String, u64>::new();
    for v in cases.values() {
        *counts.entry(v.as_str().unwrap().to_owned()).or_default() += 1;
    }
    let summary = serde_json::json!({"side": side, "counts": counts, "cases": cases});
    let out = root.join("target/autobahn");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(
        out.join(format!("{side}.json")),
        serde_json::to_string_pretty(&summary).unwrap(),
    )
    .unwrap();
    let kept = root.join(format!("docs/autobahn/{side}.json"));
    if let Ok(text) = std::fs::read_to_string(&kept) {
        let kept: Value = serde_json::from_str(&text).unwrap();
        let missing: Vec<&String> = kept["cases"]
            .as_object()
            .unwrap()
            .keys()
            .filter(|k| !summary["cases"].as_object().unwrap().contains_key(*k))
            .collect();
        assert!(missing.is_empty(), "cases no longer run: {missing:?}");
    }
}

/// Checks every case of a kosoku report and returns the summary lines.
fn verdicts(report: &Path) -> Vec<(String, String, String)> {
    let index: Value = serde_json::from_str(&std::fs::read_to_string(report).unwrap()).unwrap();
    let mut out = Vec::new();
    for (agent, cases) in index.as_object().unwrap() {
        for (case, r) in cases.as_object().unwrap() {
            let behavior = r["behavior"].as_str().unwrap_or("?").to_owned();
            let close = r["behaviorClose"].as_str().unwrap_or("?").to_owned();
            out.push((format!("{agent} {case}"), behavior, close));
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_side_passes_autobahn() {
    let n = start(|c| {
        c.test_echo = true;
        c.workers = 1;
        // Case 9 sends messages of up to 16 MiB, some in 64-byte frames.
        c.max_message_bytes = 64 << 20;
        c.queue_bytes = 256 << 20;
        c.queue_frames = 1 << 22;
    });
    let dir = std::env::temp_dir().join(format!("autobahn-server-{}", std::process::id()));
    let out = tokio::time::timeout(
        Duration::from_secs(300),
        tokio::process::Command::new(kosoku())
            .args([
                "-m",
                "fuzzingclient",
                "-x",
                "12.*",
                "-x",
                "13.*",
                "-p",
                "4",
                "-o",
            ])
            .arg(&dir)
            .arg(n.addr.to_string())
            .output(),
    )
    .await
    .expect("kosoku finishes")
    .expect("kosoku runs (./scripts/test installs it)");
    eprintln!("{}", String::from_utf8_lossy(&out.stdout));
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    let all = verdicts(&dir.join("index.json"));
    let bad: Vec<_> = all
        .iter()
        .filter(|(_, b, c)| {
            !matches!(b.as_str(), "OK" | "NON-STRICT" | "INFORMATIONAL")
                || !matches!(c.as_str(), "OK" | "INFORMATIONAL")
        })
        .collect();
    assert!(all.len() >= 300, "too few cases ran: {}", all.len());
    assert!(bad.is_empty(), "{bad:#?}");
    summarize("server", &all);
}

/// The client codec (what the backplane dials with: `frame::Decoder` in the
/// client role and masked client frames) as an Autobahn echo client.
async fn echo_client(addr: std::net::SocketAddr, path: &str) {
    use wsrelay::client::{Client, ClientError};
    use wsrelay::protocol::frame::{opcode, Message};
    let Ok(mut c) = Client::connect(addr, path).await else {
        return;
    };
    loop {
        let reply = match c.next_message().await {
            Ok(Message::Text(t)) => c.send(opcode::TEXT, &t).await,
            Ok(Message::Binary(b)) => c.send(opcode::BINARY, &b).await,
            Ok(Message::Ping(p)) => c.send(opcode::PONG, &p).await,
            Ok(Message::Pong(_)) => Ok(()),
            Ok(Message::Close(code, _)) => {
                let code = if code == 1005 { 1000 } else { code };
                let _ = c.close_with(code, "").await;
                break;
            }
            Err(ClientError::Frame(e)) => {
                let _ = c.close_with(e.code, e.reason).await;
                break;
            }
            Err(_) => return,
        };
        if reply.is_err() {
            return;
        }
    }
    c.finish(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_side_passes_autobahn() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let dir = std::env::temp_dir().join(format!("autobahn-client-{}", std::process::id()));
    let mut server = tokio::process::Command::new(kosoku())
        .args(["-m", "fuzzingserver", "-x", "12.*", "-x", "13.*", "-o"])
        .arg(&dir)
        .arg(addr.to_string())
        .kill_on_drop(true)
        .spawn()
        .expect("kosoku runs (./scripts/test installs it)");
    // Wait for the server, then ask how many cases there are.
    let count = tokio::time::timeout(WAIT, async {
        loop {
            if let Ok(mut c) = wsrelay::client::Client::connect(addr, "/getCaseCount").await {
                if let Ok(n) = c.next_text().await {
                    return String::from_utf8_lossy(&n).trim().parse::<usize>().unwrap();
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the fuzzing server answers");
    assert!(count >= 300, "{count} cases");
    for case in 1..=count {
        tokio::time::timeout(
            Duration::from_secs(60),
            echo_client(addr, &format!("/runCase?case={case}&agent=wsrelay")),
        )
        .await
        .unwrap_or_else(|_| panic!("case {case} hung"));
    }
    if let Ok(mut c) = wsrelay::client::Client::connect(addr, "/updateReports?agent=wsrelay").await
    {
        c.finish(Duration::from_secs(30)).await;
    }
    // The server writes its reports once it has every result, and exits.
    let _ = tokio::time::timeout(Duration::from_secs(120), server.wait()).await;
    let all = verdicts(&dir.join("index.json"));
    let bad: Vec<_> = all
        .iter()
        .filter(|(_, b, c)| {
            !matches!(b.as_str(), "OK" | "NON-STRICT" | "INFORMATIONAL")
                || !matches!(c.as_str(), "OK" | "INFORMATIONAL")
        })
        .collect();
    assert_eq!(all.len(), count, "every case reported");
    assert!(bad.is_empty(), "{bad:#?}");
    summarize("client", &all);
}
