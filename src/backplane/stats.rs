//! AWX's per-remote backplane statistics (SPEC section 6): what AWX's
//! relay writes to the Redis key `broadcast_websocket_stats` every 5 s and
//! its `/api/v2/metrics` reads back. Kept per remote node for the events
//! received from it, rendered the way Python's `prometheus_client` does.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

/// The Redis key AWX reads.
pub const REDIS_KEY: &str = "broadcast_websocket_stats";
/// AWX's `BROADCAST_WEBSOCKET_STATS_POLL_RATE_SECONDS`.
pub const INTERVAL_SECS: u64 = 5;

#[derive(Debug, Default, Clone)]
struct Remote {
    total: u64,
    current_conn: u64,
    connected: bool,
    connection_start: u64,
    /// Events per second over the last minute: (unix second, count).
    window: Vec<(u64, u64)>,
}

/// Statistics of every remote node events came from.
#[derive(Debug, Default)]
pub struct RemoteStats {
    remotes: Mutex<BTreeMap<String, Remote>>,
}

impl RemoteStats {
    fn with(&self, remote: &str, f: impl FnOnce(&mut Remote)) {
        let mut m = self.remotes.lock().unwrap_or_else(|e| e.into_inner());
        f(m.entry(remote.to_owned()).or_default());
    }

    pub fn connected(&self, remote: &str, now: u64) {
        self.with(remote, |r| {
            r.connected = true;
            r.connection_start = now;
            r.current_conn = 0;
        });
    }

    /// Drops a remote no longer remembered (see `Backplane::hello`).
    pub fn forget(&self, remote: &str) {
        self.remotes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(remote);
    }

    pub fn disconnected(&self, remote: &str) {
        self.with(remote, |r| r.connected = false);
    }

    /// Records `n` events received from `remote` at unix second `now`.
    pub fn received(&self, remote: &str, n: u64, now: u64) {
        self.with(remote, |r| {
            r.total += n;
            r.current_conn += n;
            match r.window.last_mut() {
                Some((t, c)) if *t == now => *c += n,
                _ => r.window.push((now, n)),
            }
            r.window.retain(|(t, _)| t + 60 > now);
        });
    }

    /// The Prometheus text AWX's relay writes: one block per remote, in the
    /// shape of `prometheus_client.generate_latest`.
    pub fn render(&self, now: u64) -> String {
        let m = self.remotes.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = String::new();
        for (name, r) in m.iter() {
            let n = safe_name(name);
            let per_minute: u64 = r
                .window
                .iter()
                .filter(|(t, _)| t + 60 > now)
                .map(|(_, c)| c)
                .sum();
            let _ = write!(
                out,
                "# HELP awx_{n}_messages_received_total Number of messages received, to be forwarded, by the broadcast websocket system\n\
                 # TYPE awx_{n}_messages_received_total counter\n\
                 awx_{n}_messages_received_total {total:.1}\n\
                 # HELP awx_{n}_messages_received_currrent_conn Number forwarded messages received by the broadcast websocket system, for the duration of the current connection\n\
                 # TYPE awx_{n}_messages_received_currrent_conn gauge\n\
                 awx_{n}_messages_received_currrent_conn {cur:.1}\n\
                 # HELP awx_{n}_connection Websocket broadcast connection\n\
                 # TYPE awx_{n}_connection gauge\n\
                 awx_{n}_connection{{awx_{n}_connection=\"disconnected\"}} {down:.1}\n\
                 awx_{n}_connection{{awx_{n}_connection=\"connected\"}} {up:.1}\n\
                 # HELP awx_{n}_connection_start Time the connection was established\n\
                 # TYPE awx_{n}_connection_start gauge\n\
                 awx_{n}_connection_start {start:.1}\n\
                 # HELP awx_{n}_messages_received_per_minute Messages received per minute\n\
                 # TYPE awx_{n}_messages_received_per_minute gauge\n\
                 awx_{n}_messages_received_per_minute {per_minute:.1}\n",
                total = r.total as f64,
                cur = r.current_conn as f64,
                down = if r.connected { 0.0 } else { 1.0 },
                up = if r.connected { 1.0 } else { 0.0 },
                start = r.connection_start as f64,
                per_minute = per_minute as f64,
            );
        }
        out
    }
}

/// AWX's `safe_name`: every run of non-alphanumerics becomes `_`.
pub fn safe_name(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut in_run = false;
    for c in s.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c);
            in_run = false;
        } else if !in_run {
            out.push('_');
            in_run = true;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_awx_names_and_values() {
        assert_eq!(
            safe_name("awx-node-2.example.com"),
            "awx_node_2_example_com"
        );
        assert_eq!(safe_name("a--b"), "a_b");
        let s = RemoteStats::default();
        s.connected("node-2", 1_000);
        s.received("node-2", 3, 1_000);
        s.received("node-2", 2, 1_030);
        let text = s.render(1_070);
        for line in [
            "awx_node_2_messages_received_total 5.0",
            "awx_node_2_messages_received_currrent_conn 5.0",
            "awx_node_2_connection{awx_node_2_connection=\"connected\"} 1.0",
            "awx_node_2_connection_start 1000.0",
            "awx_node_2_messages_received_per_minute 2.0",
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
        s.disconnected("node-2");
        assert!(s
            .render(1_070)
            .contains("awx_node_2_connection{awx_node_2_connection=\"disconnected\"} 1.0"));
    }
}
