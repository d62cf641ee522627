//! The `wsrelay` binary: its refusal to run open, config precedence, the
//! `emit` subcommand, and graceful shutdown on SIGTERM.

mod support;

use std::process::Stdio;

use serde_json::json;
use support::*;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

const BIN: &str = env!("CARGO_BIN_EXE_wsrelay");

fn clean_command() -> Command {
    let mut c = Command::new(BIN);
    for (k, _) in std::env::vars() {
        if k.starts_with("WSRELAY_") {
            c.env_remove(k);
        }
    }
    c.env("RUST_LOG", "info").kill_on_drop(true);
    c
}

#[tokio::test]
async fn serve_refuses_to_run_without_an_authenticator() {
    let out = clean_command()
        .args(["serve", "--admin-listen", "off", "--listen", "127.0.0.1:0"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("refusing to start without client authentication"),
        "{stderr}"
    );
    // Regression (issue 10, finding 12): a guessable JWT secret is refused.
    let out = clean_command()
        .args([
            "serve",
            "--admin-listen",
            "off",
            "--listen",
            "127.0.0.1:0",
            "--jwt-secret",
            "x",
        ])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--jwt-secret is 1 bytes: HS256 needs at least 16"),
        "{stderr}"
    );
    // A bad config file is refused with its path and the problem.
    let dir = std::env::temp_dir().join(format!("wsrelay-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bad.toml");
    std::fs::write(&file, "listen = \"127.0.0.1:0\"\nwokers = 2\n").unwrap();
    let out = clean_command()
        .args([
            "serve",
            "--admin-listen",
            "off",
            "--dev-insecure",
            "--config",
        ])
        .arg(&file)
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("invalid config file") && stderr.contains("wokers"),
        "{stderr}"
    );
}

#[tokio::test]
async fn flags_beat_env_beat_file_and_emit_and_sigterm_work() {
    let dir = std::env::temp_dir().join(format!("wsrelay-cli-ok-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("node.toml");
    std::fs::write(
        &file,
        "listen = \"127.0.0.1:0\"\nworkers = 1\nemit_key = \"from-file\"\njwt_secret = \"file-secret-0123456789\"\n",
    )
    .unwrap();
    let (mut child, addr) = spawn_serve(
        clean_command()
            .args([
                "serve",
                "--admin-listen",
                "off",
                "--workers",
                "2",
                "--config",
            ])
            .arg(&file)
            .env("WSRELAY_WORKERS", "3")
            .env("WSRELAY_JWT_SECRET", SECRET),
    )
    .await;
    // workers: the flag (2) beat env (3) and file (1).
    let (_, body) = http(addr, b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n").await;
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["workers"], 2);
    // jwt_secret: env beat the file (our token is signed with SECRET).
    let mut ws = connect(addr, &token(5)).await;
    subscribe(&mut ws, json!({"jobs": ["status_changed"]})).await;
    // emit_key: from the file, through the emit subcommand.
    let out = clean_command()
        .args([
            "emit",
            "--url",
            &format!("http://{addr}"),
            "--key",
            "from-file",
        ])
        .args([
            "--group",
            "jobs-status_changed",
            "--data",
            r#"{"status": "running"}"#,
        ])
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
        r#"{"accepted": 1}"#
    );
    assert_eq!(next_text(&mut ws).await, r#"{"status": "running"}"#);
    // A wrong key is reported with the status and reason, exit 1.
    let out = clean_command()
        .args(["emit", "--url", &format!("http://{addr}"), "--key", "nope"])
        .args(["--group", "g", "--data", "1"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"));

    // SIGTERM: clients get 1001 and the process exits cleanly.
    let pid = child.id().unwrap().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    assert_eq!(
        next_close(&mut ws).await,
        (CloseCode::Away, "server shutting down".to_owned())
    );
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn dev_insecure_says_so_loudly() {
    let mut child = clean_command()
        .args([
            "serve",
            "--admin-listen",
            "off",
            "--dev-insecure",
            "--listen",
            "127.0.0.1:0",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let first = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        first.contains("WARN") && first.contains("DEV-INSECURE"),
        "{first}"
    );
    child.kill().await.unwrap();
}

/// The demo starts quietly: its first line summarises the cluster's start
/// and gives the first node's status page, then the live table; no
/// warning or link line comes before them (RUST_LOG unset).
#[tokio::test]
async fn the_demo_starts_with_one_summary_line_and_its_status_address() {
    let out = clean_command()
        .args(["demo", "--duration", "2", "--rate", "2000", "--jobs", "4"])
        .env_remove("RUST_LOG")
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr, "", "nothing on stderr before or during the table");
    let mut lines = stdout.lines();
    let first = lines.next().unwrap();
    assert!(
        first.starts_with("wsrelay demo: 3 linked node(s) on 127.0.0.1:"),
        "{first}"
    );
    let status = first
        .split("watch it at ")
        .nth(1)
        .unwrap_or_else(|| panic!("no status address in {first}"));
    assert!(
        status.starts_with("http://127.0.0.1:") && status.ends_with("/status"),
        "{status}"
    );
    let second = lines.next().unwrap();
    assert!(
        second.starts_with("t=   1s  in "),
        "the live table next: {second}"
    );
    assert!(
        stdout.contains("done: ") && stdout.contains("(0 lost,"),
        "{stdout}"
    );
}
