//! `wsrelay check-config`: a table of good and bad files with the exact
//! messages; secrets read from files and never printed (not by
//! check-config, not in the node's logs); JSON logs with connection context.

mod support;

use std::path::{Path, PathBuf};
use std::process::Stdio;

use support::*;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_wsrelay");
const JWT: &str = "jwt-secret-in-a-file-0123456789abcdef";
const BACKPLANE_SECRET: &str = "backplane-secret-in-a-file-0123456789";
const EMIT: &str = "emit-key-in-a-file-0123456789";
const ADMIN: &str = "admin-key-in-a-file-0123456789";
const REDIS_PASSWORD: &str = "redis-password-0123456789";

fn command() -> Command {
    let mut c = Command::new(BIN);
    for (k, _) in std::env::vars() {
        if k.starts_with("WSRELAY_") {
            c.env_remove(k);
        }
    }
    c.env("RUST_LOG", "info").kill_on_drop(true);
    c
}

/// A directory of its own for one test's files.
fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("wsrelay-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Writes a secret file, owner-only unless `mode` says otherwise.
fn secret_file(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    p
}

async fn check(file: &Path) -> (Option<i32>, String, String) {
    let out = command()
        .arg("check-config")
        .arg(file)
        .output()
        .await
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn check_config_accepts_good_files_and_names_the_problem_in_bad_ones() {
    let d = dir("check-config");
    let jwt = secret_file(&d, "jwt", &format!("{JWT}\n"), 0o600);
    let short = secret_file(&d, "short", "abc\n", 0o600);
    let empty = secret_file(&d, "empty", "\n", 0o600);
    let huge = secret_file(&d, "huge", &"x".repeat(70_000), 0o600);
    let j = jwt.display();
    let missing = d.join("nope");
    let m = missing.display();
    // (file text, exit code, what stdout or stderr must say)
    let table: Vec<(String, i32, String)> = vec![
        (
            format!("jwt_secret_file = \"{j}\"\n"),
            0,
            "jwt_secret = \"********\"".into(),
        ),
        (
            format!("jwt_secret_file = \"{j}\"\nlisten = \"0.0.0.0:8051\"\nadmin_listen = \"off\"\nworkers = 4\nlog_format = \"json\"\n[access]\n\"project_update_events-\" = \"/api/v2/project_updates/{{id}}/\"\n"),
            0,
            "admin_listen = \"off\"".into(),
        ),
        (
            "listen = \"0.0.0.0:8051\"\n".into(),
            2,
            "wsrelay: refusing to start without client authentication".into(),
        ),
        (
            format!("jwt_secret_file = \"{}\"\n", short.display()),
            2,
            "wsrelay: --jwt-secret is 3 bytes: HS256 needs at least 16".into(),
        ),
        (
            format!("jwt_secret_file = \"{}\"\n", empty.display()),
            2,
            format!("wsrelay: --jwt-secret-file {}: the file is empty", empty.display()),
        ),
        (
            format!("jwt_secret_file = \"{}\"\n", huge.display()),
            2,
            format!(
                "wsrelay: --jwt-secret-file {}: 70000 bytes: a secret file holds one line, at most 65536 bytes",
                huge.display()
            ),
        ),
        (
            format!("jwt_secret_file = \"{m}\"\n"),
            2,
            format!("wsrelay: --jwt-secret-file {m}: No such file or directory (os error 2)"),
        ),
        (
            format!("jwt_secret = \"{JWT}\"\njwt_secret_file = \"{j}\"\n"),
            2,
            "wsrelay: --jwt-secret and --jwt-secret-file are both set; choose one".into(),
        ),
        (
            format!("jwt_secret_file = \"{j}\"\nworkers = \"four\"\n"),
            2,
            "invalid type: string \"four\", expected usize".into(),
        ),
        (
            format!("jwt_secret_file = \"{j}\"\nlisten_on = \"0.0.0.0:1\"\n"),
            2,
            "unknown field `listen_on`".into(),
        ),
        (
            format!("jwt_secret_file = \"{j}\"\nadmin_listen = \"everywhere\"\n"),
            2,
            "\"everywhere\": want host:port (an IP address) or off".into(),
        ),
        (
            format!("jwt_secret_file = \"{j}\"\nlisten = \"127.0.0.1:9000\"\nadmin_listen = \"127.0.0.1:9000\"\n"),
            2,
            "wsrelay: --admin-listen 127.0.0.1:9000 is the client listener's address; give the admin listener its own".into(),
        ),
        (
            format!("jwt_secret_file = \"{j}\"\npeers = [\"ws://node2:8051\"]\n"),
            2,
            "wsrelay: refusing to start a cluster without a backplane secret".into(),
        ),
        (
            format!("jwt_secret_file = \"{j}\"\nredis = [\"http://localhost\"]\n"),
            2,
            "wsrelay: --redis http://localhost: want a redis:// or unix:// URL".into(),
        ),
        (
            format!("jwt_secret_file = \"{j}\"\nlog_format = \"xml\"\n"),
            2,
            "unknown variant `xml`, expected `text` or `json`".into(),
        ),
    ];
    for (i, (text, code, says)) in table.iter().enumerate() {
        let file = d.join(format!("{i}.toml"));
        std::fs::write(&file, text).unwrap();
        let (got, out, err) = check(&file).await;
        assert_eq!(
            got,
            Some(*code),
            "case {i}: {text}\nstdout: {out}\nstderr: {err}"
        );
        let shown = if *code == 0 { &out } else { &err };
        assert!(
            shown.contains(says.as_str()),
            "case {i}: want {says:?} in\n{shown}"
        );
        if *code == 0 {
            assert!(
                out.starts_with(&format!("# {}: valid", file.display())),
                "{out}"
            );
            // What it prints is a file `serve` would read.
            let printed = d.join(format!("{i}.printed.toml"));
            std::fs::write(&printed, out.replace("\"********\"", &format!("\"{JWT}\""))).unwrap();
            let (again, _, err) = check(&printed).await;
            assert_eq!(
                again,
                Some(0),
                "case {i}: the printed config is refused: {err}"
            );
        }
        assert!(
            !out.contains(JWT) && !err.contains(JWT),
            "case {i} printed the secret"
        );
    }
}

#[tokio::test]
async fn secrets_are_masked_in_every_dump_and_read_from_files_with_a_warning_when_others_may_read_them(
) {
    let d = dir("secrets");
    let files = [
        ("jwt_secret_file", secret_file(&d, "jwt", JWT, 0o600)),
        (
            "backplane_secret_file",
            secret_file(&d, "bp", BACKPLANE_SECRET, 0o600),
        ),
        (
            "emit_key_file",
            secret_file(&d, "emit", &format!("{EMIT}\r\n"), 0o644),
        ),
        ("admin_key_file", secret_file(&d, "admin", ADMIN, 0o600)),
    ];
    let mut text: String = files
        .iter()
        .map(|(k, p)| format!("{k} = \"{}\"\n", p.display()))
        .collect();
    text.push_str(&format!(
        "redis = [\"redis://:{REDIS_PASSWORD}@127.0.0.1:6399/\"]\n\
         awx_database = \"postgresql://awx:{REDIS_PASSWORD}@db/awx\"\n\
         broker = [\"nats://relay:{REDIS_PASSWORD}@127.0.0.1:4299\"]\n\
         peers = [\"ws://127.0.0.1:1\"]\n"
    ));
    let file = d.join("node.toml");
    std::fs::write(&file, &text).unwrap();
    let (code, out, err) = check(&file).await;
    assert_eq!(code, Some(0), "{err}");
    for secret in [JWT, BACKPLANE_SECRET, EMIT, ADMIN, REDIS_PASSWORD] {
        assert!(
            !out.contains(secret) && !err.contains(secret),
            "{secret} shown:\n{out}\n{err}"
        );
    }
    for line in [
        "jwt_secret = \"********\"",
        "backplane_secret = \"********\"",
        "emit_key = \"********\"",
        "admin_key = \"********\"",
        "redis = [\"redis://:********@127.0.0.1:6399/\"]",
        "awx_database = \"postgresql://awx:********@db/awx\"",
    ] {
        assert!(out.contains(line), "want {line} in\n{out}");
    }
    assert!(
        err.contains("--emit-key-file")
            && err.contains("readable by others than its owner (mode 644)"),
        "{err}"
    );
    // The secrets are the files' (one line end dropped): the node takes
    // the emit key it read, and the admin key.
    let mut node = command()
        .args(["serve", "--config"])
        .arg(&file)
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        // The Redis, broker and database URLs with their passwords are
        // dialled (nothing answers there) and their failures logged.
        .env("RUST_LOG", "debug")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(node.stderr.take().unwrap()).lines();
    let mut log = String::new();
    let addr = tokio::time::timeout(WAIT, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            log.push_str(&line);
            log.push('\n');
            if let Some(rest) = line.split("addr=").nth(1) {
                return rest
                    .split_whitespace()
                    .next()
                    .unwrap()
                    .parse::<std::net::SocketAddr>()
                    .unwrap();
            }
        }
        panic!("serve exited:\n{log}");
    })
    .await
    .expect("listening");
    let (code, _) = emit_with_key(addr, EMIT, r#"{"group": "g", "payload": 1}"#).await;
    assert_eq!(
        code, 200,
        "the emit key is the file's, without its line end"
    );
    let (code, _) =
        emit_with_key(addr, &format!("{EMIT}x"), r#"{"group": "g", "payload": 1}"#).await;
    assert_eq!(code, 401);
    // Two seconds of debug logs (dialling, failing, retrying): no secret.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
        while let Ok(Some(line)) = lines.next_line().await {
            log.push_str(&line);
            log.push('\n');
        }
    })
    .await;
    let _ = node.kill().await;
    for secret in [JWT, BACKPLANE_SECRET, EMIT, ADMIN, REDIS_PASSWORD] {
        assert!(!log.contains(secret), "{secret} logged:\n{log}");
    }
}

#[tokio::test]
async fn json_logs_carry_the_connection_on_each_line() {
    let mut node = command()
        .args(["serve", "--admin-listen", "off", "--listen", "127.0.0.1:0"])
        .args(["--jwt-secret", SECRET, "--log-format", "json"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(node.stderr.take().unwrap()).lines();
    let first: serde_json::Value = loop {
        let line = tokio::time::timeout(WAIT, lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
        if v["fields"]["addr"].is_string() {
            break v;
        }
    };
    assert_eq!(first["level"], "INFO");
    let addr: std::net::SocketAddr = first["fields"]["addr"].as_str().unwrap().parse().unwrap();
    // A refused client: its line names the connection it came on.
    let _ = tokio_tungstenite::connect_async(format!("ws://{addr}/websocket/?token=bad")).await;
    let refused: serde_json::Value = loop {
        let line = tokio::time::timeout(WAIT, lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        if v["fields"]["message"] == "client refused" {
            break v;
        }
    };
    assert_eq!(refused["level"], "WARN");
    assert_eq!(refused["span"]["name"], "conn");
    assert!(
        refused["span"]["peer"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:"),
        "{refused}"
    );
    assert!(refused["fields"]["reason"].is_string(), "{refused}");
    let _ = node.kill().await;
}
