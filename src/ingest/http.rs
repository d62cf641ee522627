//! `POST /api/v1/emit`: producers over HTTP. The transport reads the body
//! within the bounds `check` returns, then `accept` routes it whole or not
//! at all.

use subtle::ConstantTimeEq;

use crate::protocol::emit;
use crate::protocol::http::{self, Body, RequestHead};
use crate::transport::NodeContext;

/// A JSON reply with its status.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: String,
}

impl Reply {
    fn error(status: u16, message: &str) -> Self {
        Self {
            status,
            body: serde_json::json!({ "error": message }).to_string(),
        }
    }

    pub fn into_http(self, keep_alive: bool) -> Vec<u8> {
        http::response(
            self.status,
            "application/json",
            self.body.as_bytes(),
            keep_alive,
        )
    }
}

/// Checks everything that can be checked before reading the body and
/// returns the body length to read. `body` is the head's checked framing.
pub(crate) fn check(ctx: &NodeContext, head: &RequestHead, body: Body) -> Result<usize, Reply> {
    let Some(key) = &ctx.config.emit_key else {
        // Without a key the endpoint does not exist.
        return Err(Reply::error(404, "not found"));
    };
    if head.method != "POST" {
        return Err(Reply::error(405, "use POST"));
    }
    let presented = head.bearer().unwrap_or("");
    if !bool::from(presented.as_bytes().ct_eq(key.expose().as_bytes())) {
        return Err(Reply::error(401, "missing or wrong emit key"));
    }
    let Body::Length(len) = body else {
        return Err(Reply::error(411, "content-length required"));
    };
    if len > ctx.config.max_emit_bytes {
        return Err(Reply::error(
            413,
            &format!(
                "body of {len} bytes exceeds the limit of {}",
                ctx.config.max_emit_bytes
            ),
        ));
    }
    Ok(len)
}

/// Parses the whole body, then routes every event, in order.
pub(crate) async fn accept(ctx: &NodeContext, body: &[u8]) -> Reply {
    let cfg = &ctx.config;
    let events = match emit::parse(body, cfg.max_group_name, cfg.max_emit_events) {
        Ok(events) => events,
        Err(e) => return Reply::error(400, &e.to_string()),
    };
    match ctx
        .router
        .route(events.iter().map(|e| (e.group, e.payload)))
        .await
    {
        Ok(routed) => {
            ctx.metrics.events_in_http.inc_by(routed.accepted);
            ctx.metrics.events_unrouted.inc_by(routed.unrouted);
            Reply {
                status: 200,
                body: format!(r#"{{"accepted": {}}}"#, routed.accepted),
            }
        }
        Err(e) => Reply::error(503, &e.to_string()),
    }
}
