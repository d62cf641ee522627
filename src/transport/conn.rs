//! One accepted TCP connection: reads HTTP request heads and routes them to
//! the websocket session, the emit endpoint, health or metrics. HTTP/1.1
//! keep-alive is honoured for everything but the upgrade.

use std::rc::Rc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::time::timeout;

use super::stream::{Stream, READ_CHUNK};
use super::worker::Worker;
use super::{admin, websocket, Listener, NodeContext};
use crate::ingest::http as emit;
use crate::protocol::http::{self, Body, HttpError, RequestHead};

pub(super) async fn serve<S: Stream>(worker: Rc<Worker>, stream: S, via: Listener) {
    // On every way out, a panic included: with io_uring a socket with a
    // receive in flight is not closed by dropping it.
    let stream = ShutdownOnDrop(stream);
    serve_requests(worker, &stream.0, via).await;
}

struct ShutdownOnDrop<S: Stream>(S);

impl<S: Stream> Drop for ShutdownOnDrop<S> {
    fn drop(&mut self) {
        self.0.shutdown_all();
    }
}

async fn serve_requests<S: Stream>(worker: Rc<Worker>, stream: &S, via: Listener) {
    // Small to start: an idle websocket client keeps this buffer for life,
    // and requests larger than this grow it as they arrive.
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let ctx = worker.ctx.clone();
    let cfg = &ctx.config;
    loop {
        let head = match timeout(
            cfg.request_timeout,
            read_head(stream, &mut buf, cfg.max_head_bytes),
        )
        .await
        {
            Ok(Ok(Some(head))) => head,
            // A clean close between requests, or a reset: nothing to answer.
            Ok(Ok(None)) | Ok(Err(ReadError::Io)) => return,
            Ok(Err(ReadError::Http(e))) => {
                let reply = http::error_response(e.status(), &e.to_string(), false);
                return answer_and_close(stream, reply).await;
            }
            Err(_elapsed) => {
                if !buf.is_empty() {
                    let reply = http::error_response(408, "request head timeout", false);
                    answer_and_close(stream, reply).await;
                }
                return;
            }
        };
        buf.advance(head.len);
        // The body's framing is checked before any route: a request whose
        // end is unclear is answered and the connection closed, never
        // parsed onward (request smuggling).
        let body = match head.body() {
            Ok(b) => b,
            Err(e) => {
                let reply = http::error_response(e.status(), &e.to_string(), false);
                return answer_and_close(stream, reply).await;
            }
        };
        // Only emit reads a body; anywhere else one means the connection
        // cannot be reused (its bytes are not a next request).
        let bodiless = matches!(body, Body::None | Body::Length(0));
        if head.is_upgrade() && !bodiless {
            let reply =
                http::error_response(400, "malformed request: an upgrade has no body", false);
            return answer_and_close(stream, reply).await;
        }
        let keep_alive = head.keep_alive() && bodiless;
        let admin_here = via == Listener::Admin;
        let (reply, reuse) = match (head.method.as_str(), head.path.as_str()) {
            ("GET", "/healthz") => (healthz(&ctx, keep_alive), keep_alive),
            ("GET", "/readyz") => (admin::readyz(&ctx, keep_alive), keep_alive),
            ("GET", "/metrics") => (
                http::response(
                    200,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    ctx.metrics.render().as_bytes(),
                    keep_alive,
                ),
                keep_alive,
            ),
            ("GET", "/status" | "/status/" | "/status.json") | (_, "/status/tail") => {
                if let Err(denied) = admin::check(&ctx, &head, via) {
                    (denied.response(keep_alive), keep_alive)
                } else if head.path == "/status/tail" {
                    if !head.is_upgrade() {
                        let reply = http::error_response(
                            426,
                            "the tail is a websocket: upgrade",
                            keep_alive,
                        );
                        (reply, keep_alive)
                    } else {
                        // Boxed: rare, and its state would size every
                        // client connection's task.
                        Box::pin(websocket::tail(worker, stream, head, buf)).await;
                        return;
                    }
                } else if head.path == "/status.json" {
                    (admin::data(&ctx, keep_alive), keep_alive)
                } else {
                    let page = admin::asset(&head.path, keep_alive).expect("a page path");
                    (page, keep_alive)
                }
            }
            ("GET", "/status.js" | "/status.css") if admin::served_here(&ctx, via) => {
                let asset = admin::asset(&head.path, keep_alive).expect("an asset path");
                (asset, keep_alive)
            }
            // The admin listener serves operators only.
            _ if admin_here => (
                http::error_response(404, "not found", keep_alive),
                keep_alive,
            ),
            // Conformance testing: every upgrade is an echo session.
            _ if ctx.config.test_echo && head.is_upgrade() => {
                websocket::run(worker, stream, head, buf).await;
                return;
            }
            (_, "/websocket/" | "/api/websocket/" | "/websocket" | "/api/websocket")
                if head.is_upgrade() =>
            {
                websocket::run(worker, stream, head, buf).await;
                return;
            }
            (_, "/websocket/broadcast/" | "/websocket/relay/") if head.is_upgrade() => {
                // Boxed: a peer link's state is large and links are few;
                // inline, it would size every client connection's task.
                Box::pin(super::peer::run(worker, stream, head, buf)).await;
                return;
            }
            (
                _,
                "/websocket/" | "/api/websocket/" | "/websocket/broadcast/" | "/websocket/relay/",
            ) => (
                http::error_response(426, "this endpoint expects a websocket upgrade", false),
                false,
            ),
            (_, "/api/v1/emit") => match emit_request(&ctx, &head, body, stream, &mut buf).await {
                // The body was read: the connection is reusable as asked.
                Ok(reply) => (reply, head.keep_alive()),
                Err(Some(reply)) => return answer_and_close(stream, reply).await,
                Err(None) => return,
            },
            _ => (
                http::error_response(404, "not found", keep_alive),
                keep_alive,
            ),
        };
        if !reuse {
            return answer_and_close(stream, reply).await;
        }
        if stream.write_all(reply).await.is_err() {
            return;
        }
    }
}

/// Writes a final response and closes without losing it: closing a socket
/// with unread request bytes makes the kernel send RST, which can destroy
/// the response in flight. So: write, send FIN, then drain what the client
/// still sends, bounded in time and bytes, before dropping the socket.
pub(super) async fn answer_and_close<S: Stream>(stream: &S, reply: Vec<u8>) {
    if stream.write_all(reply).await.is_err() || stream.shutdown_write().is_err() {
        return;
    }
    let _ = timeout(Duration::from_secs(1), async {
        let mut sink = BytesMut::with_capacity(4096);
        let mut left = 1usize << 20;
        while left > 0 {
            sink.clear();
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    })
    .await;
}

/// Reads the body of an emit request (bounded by the checks in `ingest`),
/// and returns the response. `Err(Some(reply))` is a final answer after
/// which the connection closes; `Err(None)` means the client went away.
async fn emit_request<S: Stream>(
    ctx: &NodeContext,
    head: &RequestHead,
    body: Body,
    stream: &S,
    buf: &mut BytesMut,
) -> Result<Vec<u8>, Option<Vec<u8>>> {
    let len = match emit::check(ctx, head, body) {
        Ok(len) => len,
        Err(reply) => {
            ctx.metrics.emit_request(reply.status).inc();
            // The body was not read, so the connection cannot be reused.
            return Err(Some(reply.into_http(false)));
        }
    };
    let read = async {
        while buf.len() < len {
            buf.reserve(len - buf.len());
            if stream.read(buf).await.ok()? == 0 {
                return None;
            }
        }
        Some(())
    };
    match timeout(ctx.config.request_timeout, read).await {
        Ok(Some(())) => {}
        Ok(None) => return Err(None),
        Err(_) => {
            return Err(Some(http::error_response(
                408,
                "request body timeout",
                false,
            )))
        }
    }
    let body = buf.split_to(len);
    let reply = emit::accept(ctx, &body).await;
    ctx.metrics.emit_request(reply.status).inc();
    Ok(reply.into_http(head.keep_alive()))
}

fn healthz(ctx: &NodeContext, keep_alive: bool) -> Vec<u8> {
    let body = serde_json::json!({
        "status": "ok",
        "io": ctx.io.name(),
        "workers": ctx.workers,
        "connections": ctx.metrics.total_connections(),
    });
    http::response(
        200,
        "application/json",
        body.to_string().as_bytes(),
        keep_alive,
    )
}

enum ReadError {
    Http(HttpError),
    Io,
}

/// Reads until `buf` starts with a whole request head. `Ok(None)` is a clean
/// end of stream before any byte of a new request.
async fn read_head<S: Stream>(
    stream: &S,
    buf: &mut BytesMut,
    max_head: usize,
) -> Result<Option<RequestHead>, ReadError> {
    loop {
        if !buf.is_empty() {
            if let Some(head) = http::parse_head(buf, max_head).map_err(ReadError::Http)? {
                return Ok(Some(head));
            }
        }
        buf.reserve(READ_CHUNK);
        match stream.read(buf).await {
            Ok(0) if buf.is_empty() => return Ok(None),
            Ok(0) => return Err(ReadError::Io),
            Ok(_) => {}
            Err(_) => return Err(ReadError::Io),
        }
    }
}
