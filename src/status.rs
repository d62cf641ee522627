//! What the live status page shows: the node's own metrics, sampled once
//! a second into a few minutes of history, and the readiness answer.
//!
//! The model (`Snapshot`, `History`, `Readiness`) is I/O-free: it reads the
//! metrics' text exposition, so the page says exactly what `/metrics` says.
//! `Sampler` is the one thread that feeds it.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::fanout::{RouteTable, Routes};
use crate::metrics::Metrics;

/// Seconds of history kept (and drawn).
pub const HISTORY_SECS: usize = 300;

/// One rendering of the metrics: series (name with labels) to value.
#[derive(Debug, Default, Clone)]
pub struct Snapshot(BTreeMap<String, f64>);

impl Snapshot {
    /// Reads OpenMetrics text; comments and anything unreadable are skipped.
    pub fn parse(text: &str) -> Snapshot {
        let mut m = BTreeMap::new();
        for line in text.lines() {
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            // The value is the last field; label values never hold a space
            // followed by a number at the end, and ours are closed sets.
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            if let Ok(v) = value.parse::<f64>() {
                m.insert(series.to_owned(), v);
            }
        }
        Snapshot(m)
    }

    /// The value of one series, e.g. `wsrelay_redis_up`.
    pub fn get(&self, series: &str) -> Option<f64> {
        self.0.get(series).copied()
    }

    /// The sum over every series of metric `name` (all label sets).
    pub fn sum(&self, name: &str) -> f64 {
        self.0
            .range(name.to_owned()..)
            .take_while(|(k, _)| k.starts_with(name))
            .filter(|(k, _)| k.len() == name.len() || k.as_bytes()[name.len()] == b'{')
            .map(|(_, v)| v)
            .sum()
    }

    /// `(labels, value)` of every series of `name`, labels as a map.
    pub fn series(&self, name: &str) -> Vec<(BTreeMap<String, String>, f64)> {
        let prefix = format!("{name}{{");
        self.0
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(k, v)| (labels(&k[prefix.len()..k.len() - 1]), *v))
            .collect()
    }
}

/// `a="x",b="y"` as a map (our label values hold no quotes or commas).
fn labels(s: &str) -> BTreeMap<String, String> {
    s.split("\",")
        .filter_map(|kv| {
            let (k, v) = kv.split_once("=\"")?;
            Some((k.to_owned(), v.trim_end_matches('"').to_owned()))
        })
        .collect()
}

/// The totals the page charts, read from one snapshot.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Totals {
    events_in: f64,
    deliveries: f64,
    dropped: f64,
    slow_closes: f64,
}

impl Totals {
    fn of(s: &Snapshot) -> Totals {
        Totals {
            events_in: s.sum("wsrelay_events_in_total"),
            deliveries: s.get("wsrelay_deliveries_total").unwrap_or(0.0),
            dropped: s.get("wsrelay_events_dropped_total").unwrap_or(0.0),
            slow_closes: s
                .get("wsrelay_server_closes_total{reason=\"slow_consumer\"}")
                .unwrap_or(0.0),
        }
    }
}

/// One second of history.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Point {
    /// Seconds since the node started.
    pub t: u64,
    pub events_in: f64,
    pub deliveries: f64,
    pub dropped: f64,
    pub slow_closes: f64,
    pub connections: f64,
}

/// The last `HISTORY_SECS` seconds, as per-second rates.
#[derive(Debug, Default)]
pub struct History {
    points: VecDeque<Point>,
    last: Option<(Totals, f64)>,
    latest: Snapshot,
}

impl History {
    /// Adds a snapshot taken `t` seconds after start (`elapsed` seconds
    /// after the previous one).
    pub fn push(&mut self, t: u64, snap: Snapshot) {
        let now = Totals::of(&snap);
        if let Some((prev, at)) = self.last {
            let dt = (t as f64 - at).max(1e-3);
            let rate = |a: f64, b: f64| ((a - b) / dt).max(0.0);
            if self.points.len() == HISTORY_SECS {
                self.points.pop_front();
            }
            self.points.push_back(Point {
                t,
                events_in: rate(now.events_in, prev.events_in),
                deliveries: rate(now.deliveries, prev.deliveries),
                dropped: rate(now.dropped, prev.dropped),
                slow_closes: rate(now.slow_closes, prev.slow_closes),
                connections: snap.sum("wsrelay_connections"),
            });
        }
        self.last = Some((now, t as f64));
        self.latest = snap;
    }

    pub fn points(&self) -> impl Iterator<Item = &Point> {
        self.points.iter()
    }

    pub fn latest(&self) -> &Snapshot {
        &self.latest
    }
}

/// One link as the page and `/readyz` show it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LinkState {
    pub peer: String,
    pub direction: String,
    pub up: bool,
    pub events_sent: f64,
    pub events_received: f64,
}

/// The backplane links in a snapshot.
pub fn links(s: &Snapshot) -> Vec<LinkState> {
    s.series("wsrelay_backplane_link_up")
        .into_iter()
        .map(|(l, v)| {
            let peer = l.get("peer").cloned().unwrap_or_default();
            let per_peer = |name: &str| s.get(&format!("{name}{{peer=\"{peer}\"}}")).unwrap_or(0.0);
            LinkState {
                events_sent: per_peer("wsrelay_backplane_events_sent_total"),
                events_received: per_peer("wsrelay_backplane_events_received_total"),
                direction: l.get("direction").cloned().unwrap_or_default(),
                up: v >= 1.0,
                peer,
            }
        })
        .collect()
}

/// Whether a part the node depends on is configured and up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Part {
    Off,
    Up,
    Down,
}

/// `/readyz`: ready to take clients? Accepting (not shutting down) and,
/// when configured, Redis reachable. Peer links are reported but do not
/// decide: a node whose peers are down still serves its own clients, and
/// failing readiness for a peer's trouble would take a whole cluster out
/// of its load balancer at once.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Readiness {
    pub ready: bool,
    pub accepting: bool,
    pub redis: Part,
    pub broker: Part,
    pub links: Vec<LinkState>,
}

impl Readiness {
    pub fn of(s: &Snapshot, accepting: bool, redis: bool, broker: bool) -> Readiness {
        let part = |configured: bool, series: &str| match (configured, s.get(series)) {
            (false, _) => Part::Off,
            (true, Some(v)) if v >= 1.0 => Part::Up,
            (true, _) => Part::Down,
        };
        let redis = part(redis, "wsrelay_redis_up");
        let broker = part(broker, "wsrelay_broker_up");
        Readiness {
            ready: accepting && redis != Part::Down,
            accepting,
            redis,
            broker,
            links: links(s),
        }
    }
}

/// The sampler thread: renders the metrics once a second into `History`.
pub struct Sampler {
    pub history: Arc<Mutex<History>>,
    stop: Arc<(Mutex<bool>, std::sync::Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    pub fn spawn(metrics: Arc<Metrics>, started: Instant) -> std::io::Result<Sampler> {
        let history = Arc::new(Mutex::new(History::default()));
        let stop = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
        let (h, st) = (history.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("wsrelay-status".into())
            .spawn(move || loop {
                let snap = Snapshot::parse(&metrics.render());
                let t = started.elapsed().as_secs();
                h.lock().unwrap_or_else(|e| e.into_inner()).push(t, snap);
                let (lock, cv) = &*st;
                let stopped = lock.lock().unwrap_or_else(|e| e.into_inner());
                let (stopped, _) = cv
                    .wait_timeout_while(stopped, Duration::from_secs(1), |s| !*s)
                    .unwrap_or_else(|e| e.into_inner());
                if *stopped {
                    return;
                }
            })?;
        Ok(Sampler {
            history,
            stop,
            thread: Some(thread),
        })
    }

    pub fn stop(&mut self) {
        let (lock, cv) = &*self.stop;
        *lock.lock().unwrap_or_else(|e| e.into_inner()) = true;
        cv.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Distinct groups this node's clients hold (peers' interest excluded).
pub fn local_groups(routes: &Routes) -> usize {
    routes
        .load()
        .groups
        .values()
        .filter(|m| RouteTable::local_mask(**m) != 0)
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# HELP x y\n\
        wsrelay_events_in_total{source=\"http\"} 10\n\
        wsrelay_events_in_total{source=\"stream\"} 5\n\
        wsrelay_events_in_totally_different 99\n\
        wsrelay_deliveries_total 100\n\
        wsrelay_connections{worker=\"0\"} 3\n\
        wsrelay_connections{worker=\"1\"} 4\n\
        wsrelay_redis_up 1\n\
        wsrelay_backplane_link_up{peer=\"127.0.0.1:9\",direction=\"out\"} 1\n\
        wsrelay_backplane_link_up{peer=\"b\",direction=\"in\"} 0\n\
        wsrelay_backplane_events_sent_total{peer=\"127.0.0.1:9\"} 42\n\
        # EOF\n";

    #[test]
    fn a_snapshot_reads_sums_and_series() {
        let s = Snapshot::parse(TEXT);
        assert_eq!(s.sum("wsrelay_events_in_total"), 15.0);
        assert_eq!(s.sum("wsrelay_connections"), 7.0);
        assert_eq!(s.get("wsrelay_deliveries_total"), Some(100.0));
        let l = links(&s);
        assert_eq!(l.len(), 2);
        let out = l.iter().find(|l| l.direction == "out").unwrap();
        assert_eq!(
            (out.peer.as_str(), out.up, out.events_sent),
            ("127.0.0.1:9", true, 42.0)
        );
        assert!(!l.iter().find(|l| l.peer == "b").unwrap().up);
    }

    #[test]
    fn history_keeps_rates_for_a_bounded_window() {
        let mut h = History::default();
        let at = |n: u64| {
            Snapshot::parse(&format!(
                "wsrelay_events_in_total{{source=\"http\"}} {}\nwsrelay_deliveries_total {}\n",
                n * 10,
                n * 1000
            ))
        };
        h.push(0, at(0));
        assert_eq!(h.points().count(), 0, "a rate needs two samples");
        for t in 1..=(HISTORY_SECS as u64 + 5) {
            h.push(t, at(t));
        }
        assert_eq!(h.points().count(), HISTORY_SECS);
        let p = h.points().last().unwrap();
        assert_eq!((p.events_in, p.deliveries), (10.0, 1000.0));
        // A counter reset (a restart) never shows as a negative rate.
        h.push(1000, at(0));
        assert_eq!(h.points().last().unwrap().events_in, 0.0);
    }

    #[test]
    fn readiness_follows_accepting_and_redis_not_peers() {
        let s = Snapshot::parse(TEXT);
        let r = Readiness::of(&s, true, true, false);
        assert!(r.ready);
        assert_eq!((r.redis, r.broker), (Part::Up, Part::Off));
        assert!(!Readiness::of(&s, false, true, false).ready);
        let down = Snapshot::parse("wsrelay_redis_up 0\n");
        let r = Readiness::of(&down, true, true, false);
        assert_eq!((r.ready, r.redis), (false, Part::Down));
        assert!(Readiness::of(&down, true, false, false).ready);
    }
}
