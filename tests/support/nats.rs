//! A real `nats-server` per test (Debian's package; `./scripts/test`
//! installs it), on a free loopback port, with JetStream in a temporary
//! store when asked; stopped on drop. Restartable in place, store kept.

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::awx_api::TempDir;

pub struct NatsServer {
    child: Option<Child>,
    pub port: u16,
    jetstream: bool,
    store: TempDir,
    /// A `max_payload` other than NATS's 1 MiB default, through a config
    /// file in the store.
    max_payload: Option<usize>,
}

impl NatsServer {
    /// Starts a server on a free port; `jetstream` turns JetStream on.
    pub fn start(jetstream: bool) -> Self {
        Self::start_with(jetstream, None)
    }

    /// As `start`, with the server's `max_payload` set to `max_payload`.
    pub fn start_with(jetstream: bool, max_payload: Option<usize>) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut s = NatsServer {
            child: None,
            port,
            jetstream,
            store: TempDir::new("nats"),
            max_payload,
        };
        s.resume();
        s
    }

    /// Starts the server again on its port with its store (after `stop`).
    pub fn resume(&mut self) {
        let mut cmd = Command::new("nats-server");
        cmd.args(["-a", "127.0.0.1", "-p", &self.port.to_string()]);
        if self.jetstream {
            cmd.arg("-js").arg("-sd").arg(&self.store.0);
        }
        if let Some(n) = self.max_payload {
            let conf = self.store.0.join("limits.conf");
            std::fs::write(&conf, format!("max_payload: {n}\n")).unwrap();
            cmd.arg("-c").arg(conf);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server runs (./scripts/test installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nats-server did not start on {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server (SIGKILL: nothing is flushed on its way out).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}
