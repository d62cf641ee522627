//! Operators' endpoints: the live status page (`/status`, its script, its
//! data and its tail of one group) and readiness (`/readyz`).
//!
//! `/status` is served on the admin listener (default loopback) without a
//! key, and with `--admin-key` wherever it is asked for, the client
//! listener included; a key, once set, is required on both. `/readyz` is
//! served everywhere, like `/healthz`: load balancers ask it.

use subtle::ConstantTimeEq;

use super::{Listener, NodeContext};
use crate::protocol::http::{self, RequestHead};
use crate::status::{local_groups, Readiness, Snapshot};

const PAGE: &str = include_str!("status/status.html");
const SCRIPT: &str = include_str!("status/status.js");
const STYLE: &str = include_str!("status/status.css");

/// The page's own files only, nothing from elsewhere; no framing.
const PAGE_HEADERS: &str = "Content-Security-Policy: default-src 'none'; script-src 'self'; \
     style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; \
     frame-ancestors 'none'\r\nX-Content-Type-Options: nosniff\r\nCache-Control: no-store\r\n\
     Referrer-Policy: no-referrer\r\n";

/// Why `/status` is not served to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Denied {
    /// Not on this listener without a key (404: the page is not advertised).
    NotHere,
    /// A key is set and the request does not carry it.
    Key,
}

impl Denied {
    pub fn response(self, keep_alive: bool) -> Vec<u8> {
        match self {
            Denied::NotHere => http::error_response(404, "not found", keep_alive),
            Denied::Key => http::response_with(
                401,
                "application/json",
                "WWW-Authenticate: Bearer realm=\"wsrelay admin\"\r\n",
                br#"{"error": "the admin key is required (Authorization: Bearer KEY, or ?key=KEY)"}"#,
                keep_alive,
            ),
        }
    }
}

/// Whether the status page may be served here at all (its static files
/// need no key: they hold no data).
pub(super) fn served_here(ctx: &NodeContext, via: Listener) -> bool {
    via == Listener::Admin || ctx.config.admin_key.is_some()
}

/// Whether this request may see `/status` and its data.
pub(super) fn check(ctx: &NodeContext, head: &RequestHead, via: Listener) -> Result<(), Denied> {
    let Some(key) = &ctx.config.admin_key else {
        return if via == Listener::Admin {
            Ok(())
        } else {
            Err(Denied::NotHere)
        };
    };
    let presented = head
        .header("authorization")
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::to_owned)
        .or_else(|| head.query_param("key"));
    match presented {
        Some(p) if bool::from(p.as_bytes().ct_eq(key.expose().as_bytes())) => Ok(()),
        _ => Err(Denied::Key),
    }
}

/// The page and its static files, by path.
pub(super) fn asset(path: &str, keep_alive: bool) -> Option<Vec<u8>> {
    let (kind, body) = match path {
        "/status" | "/status/" => ("text/html; charset=utf-8", PAGE),
        "/status.js" => ("text/javascript; charset=utf-8", SCRIPT),
        "/status.css" => ("text/css; charset=utf-8", STYLE),
        _ => return None,
    };
    Some(http::response_with(
        200,
        kind,
        PAGE_HEADERS,
        body.as_bytes(),
        keep_alive,
    ))
}

/// `/status.json`: the node, its parts, totals and the last minutes.
pub(super) fn data(ctx: &NodeContext, keep_alive: bool) -> Vec<u8> {
    let Some(history) = &ctx.status else {
        return http::error_response(404, "not found", keep_alive);
    };
    let h = history.lock().unwrap_or_else(|e| e.into_inner());
    let s = h.latest();
    let ready = readiness(ctx, s);
    let get = |series: &str| s.get(series).unwrap_or(0.0);
    let body = serde_json::json!({
        "node": ctx.config.node_id,
        "version": env!("CARGO_PKG_VERSION"),
        "io": ctx.io.name(),
        "workers": ctx.workers,
        "uptime_s": ctx.started.elapsed().as_secs(),
        "connections": s.sum("wsrelay_connections"),
        "max_connections": ctx.config.max_connections,
        "groups": local_groups(&ctx.routes),
        "slow_policy": format!("{:?}", ctx.config.slow_policy).to_lowercase(),
        "totals": {
            "events_in": s.sum("wsrelay_events_in_total"),
            "deliveries": get("wsrelay_deliveries_total"),
            "dropped": get("wsrelay_events_dropped_total"),
            "slow_closes": get("wsrelay_server_closes_total{reason=\"slow_consumer\"}"),
            "unrouted": get("wsrelay_events_unrouted_total"),
            "refused": s.sum("wsrelay_clients_refused_total"),
            "queued_frames": s.sum("wsrelay_queued_frames"),
        },
        "ready": ready.ready,
        "redis": ready.redis,
        "broker": ready.broker,
        "links": ready.links,
        "history": h.points().collect::<Vec<_>>(),
    });
    http::response_with(
        200,
        "application/json",
        "Cache-Control: no-store\r\n",
        body.to_string().as_bytes(),
        keep_alive,
    )
}

fn readiness(ctx: &NodeContext, s: &Snapshot) -> Readiness {
    let accepting = !ctx.shutting_down.load(std::sync::atomic::Ordering::Acquire);
    Readiness::of(
        s,
        accepting,
        !ctx.config.redis.is_empty(),
        !ctx.config.broker.is_empty(),
    )
}

/// `/readyz`: 200 when ready to take clients, 503 otherwise; the body
/// says why either way. Read live, not from the sampler.
pub(super) fn readyz(ctx: &NodeContext, keep_alive: bool) -> Vec<u8> {
    let s = Snapshot::parse(&ctx.metrics.render());
    let r = readiness(ctx, &s);
    let body = serde_json::to_vec(&r).unwrap_or_default();
    http::response_with(
        if r.ready { 200 } else { 503 },
        "application/json",
        "Cache-Control: no-store\r\n",
        &body,
        keep_alive,
    )
}
