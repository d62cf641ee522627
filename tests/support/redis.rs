//! A real `redis-server` per test, on a free loopback port, stopped on drop;
//! a minimal RESP client to inspect it; the real channels_redis producer.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    child: Child,
    pub port: u16,
}

impl RedisServer {
    /// Starts a server on a free port.
    pub fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Self::start_on(port)
    }

    /// Starts a server on `port` (to restart one in place).
    pub fn start_on(port: u16) -> Self {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                &std::env::temp_dir().to_string_lossy(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs (./scripts/test installs it)");
        let server = RedisServer { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while server.try_query(&["PING"]).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not start on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Runs one command; the reply flattened to strings (nil is "(nil)").
    pub fn query(&self, args: &[&str]) -> Vec<String> {
        self.try_query(args).expect("redis answers")
    }

    /// Like `query`, but an error reply is returned, not a panic.
    pub fn try_query_public(&self, args: &[&str]) -> std::io::Result<Vec<String>> {
        self.try_query(args)
    }

    fn try_query(&self, args: &[&str]) -> std::io::Result<Vec<String>> {
        self.try_query_bytes(
            &args
                .iter()
                .map(|a| a.as_bytes().to_vec())
                .collect::<Vec<_>>(),
        )
    }

    /// Like `query`, with binary arguments.
    pub fn query_bytes(&self, args: &[Vec<u8>]) -> Vec<String> {
        self.try_query_bytes(args).expect("redis answers")
    }

    fn try_query_bytes(&self, args: &[Vec<u8>]) -> std::io::Result<Vec<String>> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut req = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            req.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            req.extend_from_slice(a);
            req.extend_from_slice(b"\r\n");
        }
        s.write_all(&req)?;
        let mut r = BufReader::new(s);
        let mut out = Vec::new();
        read_reply(&mut r, &mut out)?;
        Ok(out)
    }
}

fn read_reply(r: &mut impl BufRead, out: &mut Vec<String>) -> std::io::Result<()> {
    let mut line = String::new();
    r.read_line(&mut line)?;
    let line = line.trim_end();
    let (kind, rest) = line.split_at(1);
    match kind {
        "+" | ":" => out.push(rest.to_owned()),
        "-" => return Err(std::io::Error::other(rest.to_owned())),
        "$" => {
            let n: i64 = rest.parse().unwrap();
            if n < 0 {
                out.push("(nil)".into());
            } else {
                let mut buf = vec![0u8; n as usize + 2];
                r.read_exact(&mut buf)?;
                out.push(String::from_utf8_lossy(&buf[..n as usize]).into_owned());
            }
        }
        "*" => {
            let n: i64 = rest.parse().unwrap();
            for _ in 0..n.max(0) {
                read_reply(r, out)?;
            }
        }
        other => panic!("unexpected RESP type {other:?}"),
    }
    Ok(())
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The Python with channels_redis installed: `WSRELAY_TEST_PYTHON`, or the
/// venv `./scripts/test` makes under `target/pyvenv`.
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("WSRELAY_TEST_PYTHON") {
        return p.into();
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/pyvenv/bin/python");
    assert!(
        venv.exists(),
        "no Python with channels_redis at {}: run ./scripts/test (it creates the venv) or set WSRELAY_TEST_PYTHON",
        venv.display()
    );
    venv
}

/// AWX's producer in Python (`tests/python/awx_emit.py`), run through the
/// real channels_redis. Started ahead of time with `start`, it waits with
/// its imports done, so that `send` emits within milliseconds (a test can
/// emit right after a subscribe reply).
pub struct AwxEmitter {
    child: Child,
    stdout: BufReader<std::process::ChildStdout>,
}

impl AwxEmitter {
    fn spawn(era: &str, urls: &[String], signal_ready: bool) -> Self {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/awx_emit.py");
        let mut cmd = Command::new(python());
        if signal_ready {
            cmd.env("AWX_EMIT_SIGNAL_READY", "1");
        }
        let mut child = cmd
            .arg(script)
            .arg(era)
            .args(urls)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        AwxEmitter { child, stdout }
    }

    /// Starts the producer and returns once it says it is ready.
    pub fn start(era: &str, urls: &[String]) -> Self {
        let mut e = Self::spawn(era, urls, true);
        let mut line = String::new();
        e.stdout.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready", "awx_emit.py did not start");
        e
    }

    /// Emits `events` ([group, payload] pairs) AWX-style; returns the
    /// texts sent.
    pub fn send(mut self, events: &serde_json::Value) -> Vec<String> {
        use std::io::Read;
        let mut stdin = self.child.stdin.take().unwrap();
        stdin.write_all(events.to_string().as_bytes()).unwrap();
        drop(stdin);
        let mut sent = String::new();
        self.stdout.read_to_string(&mut sent).unwrap();
        let out = self.child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "python: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_str(&sent).unwrap()
    }
}

/// Emits `events` ([group, payload] pairs) through the real channels_redis,
/// AWX-style, in `era` ("2020" or "2022"); returns the texts sent.
pub fn awx_emit(era: &str, urls: &[String], events: &serde_json::Value) -> Vec<String> {
    AwxEmitter::spawn(era, urls, false).send(events)
}
