//! AWX's web-node heartbeat over PostgreSQL (SPEC 2b): announcing this node
//! the way `awx-manage run_ws_heartbeat` does, and discovering the nodes
//! announced there the way `awx-manage run_wsrelay` does.
//!
//! The first half of this file is I/O-free (the payload both ways, and the
//! directory of announced nodes with its expiry); the second half runs on
//! the backplane thread with tokio-postgres: one connection that NOTIFYs
//! every interval and says `offline` when the node stops, one that LISTENs
//! and hands the directory's nodes to the links. Both reconnect with
//! backoff after a database outage and LISTEN again.

use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::link::backoff;
use super::peer::{PeerProtocol, PeerSpec};
use super::secret::python_json_str;
use crate::metrics::HeartbeatMetrics;

/// Nodes the directory holds at most; announcements past it are ignored
/// and counted (a cluster of AWX web nodes is tens, not thousands).
pub const MAX_NODES: usize = 1024;
/// Longest host name or address accepted from an announcement.
const MAX_NAME: usize = 253;

/// `online` or `offline`, AWX's two actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Online,
    Offline,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Action::Online => "online",
            Action::Offline => "offline",
        }
    }
}

/// What `run_ws_heartbeat` sends: exactly Python's
/// `json.dumps({"hostname": h, "ip": ip, "action": a})` (`ip` is `null`
/// when the node has no `MY_POD_IP`).
pub fn payload(hostname: &str, ip: Option<&str>, action: Action) -> String {
    format!(
        r#"{{"hostname": {}, "ip": {}, "action": "{}"}}"#,
        python_json_str(hostname),
        ip.map_or_else(|| "null".to_owned(), python_json_str),
        action.as_str()
    )
}

/// One announcement, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Beat {
    pub hostname: String,
    pub ip: Option<String>,
    pub action: Action,
}

/// Why an announcement was skipped (counted, never fatal).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BeatError {
    #[error("not a JSON object with hostname, ip and action")]
    Shape,
    #[error("action is neither online nor offline")]
    Action,
    #[error("hostname or ip is not a plausible host")]
    Host,
}

/// Reads an announcement. Names become dial targets and metric labels, so
/// only host-name characters are accepted.
pub fn parse(text: &str) -> Result<Beat, BeatError> {
    #[derive(serde::Deserialize)]
    struct Raw {
        hostname: String,
        ip: Option<String>,
        action: String,
    }
    let raw: Raw = serde_json::from_str(text).map_err(|_| BeatError::Shape)?;
    let action = match raw.action.as_str() {
        "online" => Action::Online,
        "offline" => Action::Offline,
        _ => return Err(BeatError::Action),
    };
    let ip = raw.ip.filter(|ip| !ip.is_empty());
    if !is_host(&raw.hostname) || ip.as_deref().is_some_and(|ip| !is_host(ip)) {
        return Err(BeatError::Host);
    }
    Ok(Beat {
        hostname: raw.hostname,
        ip,
        action,
    })
}

/// A DNS name or an IPv4/IPv6 address: letters, digits, `.`, `-`, `_`,
/// `:`; nothing that could change a URL or a label.
fn is_host(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':'))
}

/// How announced nodes are dialled: AWX's
/// `BROADCAST_WEBSOCKET_PROTOCOL` and `_PORT`.
#[derive(Debug, Clone, Copy)]
pub struct DialAs {
    pub tls: bool,
    pub port: u16,
}

/// What happened to the directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Changed,
    Unchanged,
    /// Our own announcement (AWX skips it too).
    OwnBeat,
    /// A new node past `MAX_NODES`.
    Full,
}

/// The nodes announced as online and not silent for too long.
#[derive(Debug)]
pub struct Directory {
    own_hostname: String,
    dial: DialAs,
    /// A node silent this long is dropped: three heartbeat intervals.
    silence: Duration,
    nodes: BTreeMap<String, (String, Instant)>,
}

impl Directory {
    pub fn new(own_hostname: String, dial: DialAs, interval: Duration) -> Self {
        Directory {
            own_hostname,
            dial,
            silence: interval * 3,
            nodes: BTreeMap::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn apply(&mut self, beat: Beat, now: Instant) -> Change {
        if beat.hostname == self.own_hostname {
            return Change::OwnBeat;
        }
        match beat.action {
            Action::Offline => {
                if self.nodes.remove(&beat.hostname).is_some() {
                    Change::Changed
                } else {
                    Change::Unchanged
                }
            }
            Action::Online => {
                // AWX dials the host name when no address is announced.
                let address = beat.ip.unwrap_or_else(|| beat.hostname.clone());
                let full = self.nodes.len() >= MAX_NODES;
                match self.nodes.get_mut(&beat.hostname) {
                    Some((a, seen)) => {
                        *seen = now;
                        if *a == address {
                            Change::Unchanged
                        } else {
                            *a = address;
                            Change::Changed
                        }
                    }
                    None if full => Change::Full,
                    None => {
                        self.nodes.insert(beat.hostname, (address, now));
                        Change::Changed
                    }
                }
            }
        }
    }

    /// Drops nodes silent for three intervals; whether any went.
    pub fn expire(&mut self, now: Instant) -> bool {
        let before = self.nodes.len();
        let silence = self.silence;
        self.nodes
            .retain(|_, (_, seen)| now.saturating_duration_since(*seen) < silence);
        self.nodes.len() != before
    }

    /// After a database outage: the silence was ours, so every node gets a
    /// full three intervals from now to be heard again.
    pub fn reconnected(&mut self, now: Instant) {
        for (_, seen) in self.nodes.values_mut() {
            *seen = now;
        }
    }

    /// The links to keep: one per node, in AWX's relay form or native,
    /// whichever the node answers (`PeerProtocol::Auto`).
    pub fn peers(&self) -> Vec<PeerSpec> {
        self.nodes
            .values()
            .map(|(address, _)| PeerSpec {
                protocol: PeerProtocol::Auto,
                tls: self.dial.tls,
                host: address.clone(),
                port: self.dial.port,
            })
            .collect()
    }
}

// === I/O: the two database tasks ===

/// What both tasks need, from the config.
pub struct HeartbeatSettings {
    pub db: tokio_postgres::Config,
    pub tls: rustls::ClientConfig,
    pub channel: String,
    pub interval: Duration,
    pub hostname: String,
    pub ip: Option<String>,
    /// Send heartbeats (a web node); off for a relay that only discovers.
    pub announce: bool,
    /// Discover and dial announced nodes.
    pub discover: Option<DialAs>,
    pub backoff_max: Duration,
}

/// How long the `offline` announcement may take at shutdown.
const OFFLINE_TIMEOUT: Duration = Duration::from_secs(2);

type Notes = mpsc::Receiver<tokio_postgres::Notification>;

/// Connects and drives the connection on a local task; notifications come
/// out of the receiver, which ends when the connection does.
async fn connect(s: &HeartbeatSettings) -> Result<(tokio_postgres::Client, Notes), String> {
    let tls = tokio_postgres_rustls::MakeRustlsConnect::new(s.tls.clone());
    let (client, mut conn) = s.db.connect(tls).await.map_err(|e| e.to_string())?;
    // Bounded: a NOTIFY flood waits in PostgreSQL, not in our memory.
    let (tx, rx) = mpsc::channel(1024);
    tokio::task::spawn_local(async move {
        use tokio_postgres::AsyncMessage;
        loop {
            match std::future::poll_fn(|cx| conn.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    if tx.send(n).await.is_err() {
                        return;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "awx database connection ended");
                    return;
                }
                None => return,
            }
        }
    });
    Ok((client, rx))
}

async fn notify(
    client: &tokio_postgres::Client,
    s: &HeartbeatSettings,
    a: Action,
) -> Result<(), String> {
    let body = payload(&s.hostname, s.ip.as_deref(), a);
    client
        .execute("SELECT pg_notify($1, $2)", &[&s.channel, &body])
        .await
        .map(drop)
        .map_err(|e| e.to_string())
}

/// Announces this node every interval until `stop`, then says `offline`.
pub async fn announce(
    s: Rc<HeartbeatSettings>,
    m: HeartbeatMetrics,
    mut stop: watch::Receiver<bool>,
) {
    let mut attempt = 0u32;
    let mut client = None;
    while !*stop.borrow() {
        if client.is_none() {
            match connect(&s).await {
                Ok((c, _notes)) => {
                    tracing::info!(
                        channel = s.channel,
                        "announcing this node on AWX's heartbeat channel"
                    );
                    client = Some(c);
                }
                Err(e) => fail(
                    &m,
                    &mut attempt,
                    "cannot connect to AWX's database to announce",
                    &e,
                ),
            }
        }
        if let Some(c) = &client {
            match notify(c, &s, Action::Online).await {
                Ok(()) => {
                    attempt = 0;
                    m.up_announce.set(1);
                    m.heartbeats.inc();
                }
                Err(e) => {
                    fail(&m, &mut attempt, "heartbeat failed", &e);
                    m.up_announce.set(0);
                    client = None;
                }
            }
        }
        let wait = if client.is_some() {
            s.interval
        } else {
            backoff(attempt.saturating_sub(1), s.backoff_max)
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.wait_for(|s| *s) => {}
        }
    }
    // AWX's SIGTERM handler: one `offline`, so relays drop us at once.
    let offline = async {
        let c = match client {
            Some(c) => c,
            None => connect(&s).await?.0,
        };
        notify(&c, &s, Action::Offline).await
    };
    match tokio::time::timeout(OFFLINE_TIMEOUT, offline).await {
        Ok(Ok(())) => tracing::info!("announced offline"),
        Ok(Err(e)) => tracing::warn!(error = %e, "could not announce offline"),
        Err(_) => tracing::warn!("could not announce offline in time"),
    }
    m.up_announce.set(0);
}

/// LISTENs for announcements and hands the directory's nodes to `found`
/// whenever they change, until `stop`.
pub async fn discover(
    s: Rc<HeartbeatSettings>,
    dial: DialAs,
    m: HeartbeatMetrics,
    found: impl Fn(Vec<PeerSpec>),
    mut stop: watch::Receiver<bool>,
) {
    let mut dir = Directory::new(s.hostname.clone(), dial, s.interval);
    let mut attempt = 0u32;
    let listen = format!("LISTEN \"{}\"", s.channel);
    while !*stop.borrow() {
        match connect(&s).await {
            Ok((client, mut notes)) => match client.batch_execute(&listen).await {
                Ok(()) => {
                    attempt = 0;
                    m.up_discover.set(1);
                    tracing::info!(
                        channel = s.channel,
                        "listening for AWX's web-node heartbeats"
                    );
                    dir.reconnected(Instant::now());
                    let mut tick = tokio::time::interval(s.interval);
                    loop {
                        let changed = tokio::select! {
                            note = notes.recv() => match note {
                                Some(n) => on_note(&mut dir, n.payload(), &m),
                                None => break,
                            },
                            _ = tick.tick() => dir.expire(Instant::now()),
                            _ = stop.wait_for(|s| *s) => return,
                        };
                        if changed {
                            m.nodes.set(dir.len() as i64);
                            found(dir.peers());
                        }
                    }
                    m.up_discover.set(0);
                    fail(
                        &m,
                        &mut attempt,
                        "lost AWX's database; listening again",
                        "connection closed",
                    );
                }
                Err(e) => fail(
                    &m,
                    &mut attempt,
                    "cannot LISTEN on AWX's database",
                    &e.to_string(),
                ),
            },
            Err(e) => fail(
                &m,
                &mut attempt,
                "cannot connect to AWX's database to discover peers",
                &e,
            ),
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff(attempt.saturating_sub(1), s.backoff_max)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

fn on_note(dir: &mut Directory, text: &str, m: &HeartbeatMetrics) -> bool {
    let beat = match parse(text) {
        Ok(b) => b,
        Err(e) => {
            m.notification("bad").inc();
            tracing::debug!(error = %e, "heartbeat skipped");
            return false;
        }
    };
    let action = beat.action;
    match dir.apply(beat, Instant::now()) {
        Change::OwnBeat => {
            m.notification("own").inc();
            false
        }
        Change::Full => {
            m.notification("ignored").inc();
            false
        }
        c => {
            m.notification(action.as_str()).inc();
            c == Change::Changed
        }
    }
}

/// Counts a failure, logs the first of a run at warn and the rest at debug.
fn fail(m: &HeartbeatMetrics, attempt: &mut u32, what: &str, e: &str) {
    m.errors.inc();
    if *attempt == 0 {
        tracing::warn!(error = %e, "{what}");
    } else {
        tracing::debug!(error = %e, attempt = *attempt, "{what}");
    }
    *attempt = attempt.saturating_add(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_is_what_python_json_dumps_prints() {
        // python3 -c 'import json; print(json.dumps({"hostname": "awx-web-1", "ip": "10.0.0.7", "action": "online"}))'
        assert_eq!(
            payload("awx-web-1", Some("10.0.0.7"), Action::Online),
            r#"{"hostname": "awx-web-1", "ip": "10.0.0.7", "action": "online"}"#
        );
        assert_eq!(
            payload("n\u{e9}", None, Action::Offline),
            r#"{"hostname": "n\u00e9", "ip": null, "action": "offline"}"#
        );
    }

    #[test]
    fn announcements_are_checked() {
        let ok = parse(r#"{"hostname": "awx-1", "ip": "10.0.0.1", "action": "online"}"#);
        assert_eq!(
            ok,
            Ok(Beat {
                hostname: "awx-1".into(),
                ip: Some("10.0.0.1".into()),
                action: Action::Online
            })
        );
        assert_eq!(
            parse(r#"{"hostname": "awx-1", "ip": null, "action": "offline"}"#).map(|b| b.ip),
            Ok(None)
        );
        for (text, err) in [
            ("nope", BeatError::Shape),
            (r#"{"ip": null, "action": "online"}"#, BeatError::Shape),
            (
                r#"{"hostname": 7, "ip": null, "action": "online"}"#,
                BeatError::Shape,
            ),
            (
                r#"{"hostname": "a", "ip": null, "action": "away"}"#,
                BeatError::Action,
            ),
            (
                r#"{"hostname": "a/b", "ip": null, "action": "online"}"#,
                BeatError::Host,
            ),
            (
                r#"{"hostname": "a", "ip": "1.2.3.4\"} x", "action": "online"}"#,
                BeatError::Host,
            ),
            (
                r#"{"hostname": "", "ip": null, "action": "online"}"#,
                BeatError::Host,
            ),
        ] {
            assert_eq!(parse(text), Err(err), "{text}");
        }
    }

    fn beat(host: &str, ip: Option<&str>, action: Action) -> Beat {
        Beat {
            hostname: host.into(),
            ip: ip.map(str::to_owned),
            action,
        }
    }

    #[test]
    fn directory_follows_online_offline_and_silence() {
        let t0 = Instant::now();
        let dial = DialAs {
            tls: true,
            port: 443,
        };
        let mut d = Directory::new("me".into(), dial, Duration::from_secs(15));
        use Action::*;
        assert_eq!(
            d.apply(beat("me", Some("10.0.0.9"), Online), t0),
            Change::OwnBeat
        );
        assert_eq!(
            d.apply(beat("a", Some("10.0.0.1"), Online), t0),
            Change::Changed
        );
        assert_eq!(
            d.apply(beat("a", Some("10.0.0.1"), Online), t0),
            Change::Unchanged
        );
        assert_eq!(d.apply(beat("b", None, Online), t0), Change::Changed);
        let hosts: Vec<_> = d.peers().into_iter().map(|p| p.to_string()).collect();
        assert_eq!(hosts, ["auto+wss://10.0.0.1:443", "auto+wss://b:443"]);
        // A new address for a known node replaces its link.
        assert_eq!(
            d.apply(beat("a", Some("10.0.0.2"), Online), t0),
            Change::Changed
        );
        assert_eq!(d.apply(beat("b", None, Offline), t0), Change::Changed);
        assert_eq!(d.apply(beat("b", None, Offline), t0), Change::Unchanged);
        // Silent for three intervals: gone; heard within them: kept.
        let t1 = t0 + Duration::from_secs(44);
        assert!(!d.expire(t1));
        assert!(d.expire(t0 + Duration::from_secs(45)));
        assert!(d.is_empty());
        // Our own outage does not count as their silence.
        d.apply(beat("c", Some("10.0.0.3"), Online), t0);
        d.reconnected(t0 + Duration::from_secs(40));
        assert!(!d.expire(t0 + Duration::from_secs(60)));
        assert_eq!(d.len(), 1);
    }

    #[test]
    fn directory_is_bounded() {
        let t0 = Instant::now();
        let dial = DialAs {
            tls: false,
            port: 80,
        };
        let mut d = Directory::new("me".into(), dial, Duration::from_secs(15));
        for i in 0..MAX_NODES {
            assert_eq!(
                d.apply(beat(&format!("n{i}"), None, Action::Online), t0),
                Change::Changed
            );
        }
        assert_eq!(
            d.apply(beat("one-more", None, Action::Online), t0),
            Change::Full
        );
        assert_eq!(d.len(), MAX_NODES);
    }
}
