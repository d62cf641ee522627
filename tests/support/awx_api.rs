//! A real Django + DRF app shaped like AWX's API (`tests/python/awx_api.py`),
//! on a free loopback port, killed on drop; and a websocket client that
//! presents AWX's credentials (session cookie, CSRF cookie, bearer token).

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use serde_json::Value;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use super::redis::python;
use super::{next_json, Ws, WAIT};

/// One fixture user: id, DRF token, and a session from a real HTTP login.
#[derive(Debug, Clone)]
pub struct User {
    pub id: u64,
    pub token: String,
    pub sessionid: String,
    pub csrftoken: String,
}

pub struct AwxApi {
    child: Child,
    pub url: String,
    pub addr: SocketAddr,
    users: HashMap<String, User>,
    _dir: TempDir,
}

impl AwxApi {
    pub fn start() -> Self {
        let dir = TempDir::new("awx-api");
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/awx_api.py");
        let mut child = Command::new(python())
            .arg(script)
            .arg(&dir.0)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python runs (./scripts/test makes the venv with Django)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let v: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("awx_api.py did not start ({e}): {line:?}"));
        let url = v["url"].as_str().unwrap().to_owned();
        let addr = url.trim_start_matches("http://").parse().unwrap();
        let users = v["users"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(name, u)| {
                let s = |k: &str| u[k].as_str().unwrap().to_owned();
                let user = User {
                    id: u["id"].as_u64().unwrap(),
                    token: s("token"),
                    sessionid: s("sessionid"),
                    csrftoken: s("csrftoken"),
                };
                (name.clone(), user)
            })
            .collect();
        AwxApi {
            child,
            url,
            addr,
            users,
            _dir: dir,
        }
    }

    /// AWX's `/api/v2/me/` on this app.
    pub fn me_url(&self) -> String {
        format!("{}/api/v2/me/", self.url)
    }

    pub fn user(&self, name: &str) -> User {
        self.users[name].clone()
    }

    async fn get(&self, path_and_query: &str) -> Value {
        let req = format!("GET {path_and_query} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
        let (status, body) = super::http(self.addr, req.as_bytes()).await;
        assert_eq!(status, 200, "{path_and_query}: {body}");
        serde_json::from_str(&body).unwrap()
    }

    /// API requests per path since the last reset; resets the counts.
    pub async fn take_calls(&self) -> HashMap<String, u64> {
        let v = self.get("/_test/calls/?reset=1").await;
        v.as_object()
            .unwrap()
            .iter()
            .map(|(k, n)| (k.clone(), n.as_u64().unwrap()))
            .collect()
    }

    /// `n` fresh sessions of `user`.
    pub async fn sessions(&self, user: &str, n: usize) -> Vec<String> {
        let v = self
            .get(&format!("/_test/sessions/?user={user}&n={n}"))
            .await;
        v["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_owned())
            .collect()
    }

    /// Ends a session server-side, as its expiry would.
    pub async fn expire(&self, session: &str) {
        self.get(&format!("/_test/expire/?session={session}")).await;
    }

    /// Makes every API answer wait `ms` first.
    pub async fn set_delay(&self, ms: u64) {
        self.get(&format!("/_test/delay/?ms={ms}")).await;
    }

    /// Kills the app: the API is down.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for AwxApi {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!(
            "wsrelay-{tag}-{}-{}",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    );
    h.finish()
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Upgrades at `/websocket/{query}` with extra `headers` and returns the
/// socket with its first message unread.
pub async fn upgrade(addr: SocketAddr, query: &str, headers: &[(&str, &str)]) -> Ws {
    let mut req = format!("ws://{addr}/websocket/{query}")
        .into_client_request()
        .unwrap();
    for (k, v) in headers {
        let name =
            tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap();
        req.headers_mut()
            .insert(name, HeaderValue::from_str(v).unwrap());
    }
    let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req))
        .await
        .expect("connect in time")
        .expect("upgrade succeeds");
    ws
}

/// Connects with `headers` and returns the socket and its first message.
pub async fn connect_as(addr: SocketAddr, query: &str, headers: &[(&str, &str)]) -> (Ws, Value) {
    let mut ws = upgrade(addr, query, headers).await;
    let first = next_json(&mut ws).await;
    (ws, first)
}

/// The `Cookie` header of `user`'s browser session.
pub fn session_cookie(user: &User) -> String {
    format!("sessionid={}; csrftoken={}", user.sessionid, user.csrftoken)
}
