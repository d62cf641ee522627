//! A native link's sending side: hello, the peer's welcome (where to
//! resume), then batches of what the peer's interest asks for, resent from
//! the last acknowledgement after any reconnect (ARCHITECTURE.md, "Peer
//! protocol").

use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::time::timeout;

use super::{
    count_sink, next_message, read_loop, write_control, LinkCtx, LinkError, Reader, Shared, Writer,
};
use crate::backplane::outbox::{Pending, Sink};
use crate::backplane::wire::{self, EventsWriter, PeerMessage};
use crate::metrics::LinkMetrics;
use crate::protocol::frame::{self, client::MAX_HEADER, opcode, Message};

pub(super) async fn native(
    ctx: &LinkCtx,
    conn: (Reader, Writer),
    version: u8,
    sink: &Arc<Sink>,
    m: &LinkMetrics,
) -> Result<(), LinkError> {
    let (mut r, mut w) = conn;
    let hello = wire::hello_version(&ctx.bp.node_id, ctx.bp.incarnation, version);
    w.send(opcode::BINARY, &hello).await?;
    let welcome = timeout(ctx.settings.connect_timeout, next_message(&mut r))
        .await
        .map_err(|_| LinkError::Protocol("no welcome"))??;
    let Message::Binary(welcome) = welcome else {
        return Err(LinkError::Protocol("expected a welcome"));
    };
    let PeerMessage::Welcome { node, resume, .. } = wire::decode_version(&welcome, version)? else {
        return Err(LinkError::Protocol("expected a welcome"));
    };
    tracing::debug!(peer = sink.label, node, ?resume, "welcome");
    // Two nodes on the same broker get each other's events from it; this
    // link would deliver them twice. It stays up (interest, health) but
    // carries nothing.
    if let Some(presence) = ctx.bp.presence.get() {
        let both = presence.is_member(node).await;
        if both {
            ctx.bp.metrics.broker.redundant_links.inc();
            tracing::info!(
                peer = sink.label,
                node,
                "peer is on the broker too: this link carries no events"
            );
        }
        sink.mute(both);
    }
    sink.connected(resume);
    count_sink(sink, m);

    let out = Shared::default();
    let wake = || sink.wake();
    let reader = read_loop(
        &mut r,
        &out,
        &wake,
        ctx.settings.ping_interval,
        |msg| async {
            let Message::Binary(b) = msg else {
                return Err(LinkError::Protocol("text frame on a native link"));
            };
            match wire::decode_version(&b, version)? {
                PeerMessage::Interest {
                    epoch,
                    full,
                    added,
                    removed,
                } => {
                    let changed =
                        ctx.bp
                            .set_interest(sink, full, &added, &removed)
                            .map_err(|_| {
                                LinkError::Protocol(
                                "peer interest refused: bad name or past the node's group limit",
                            )
                            })?;
                    // With Redis, "applied" includes this node's memberships
                    // there: the peer's subscribe reply then also covers
                    // events AWX's producers write here. Bounded.
                    if let (Some(ours), Some(ack)) = (changed, &ctx.redis_ack) {
                        let _ = timeout(
                            ctx.settings.ack_timeout,
                            ack.clone().wait_for(|e| *e >= ours),
                        )
                        .await;
                    }
                    out.borrow_mut().interest_ack = Some(epoch);
                    sink.wake();
                    Ok(())
                }
                PeerMessage::Ack { seq } => {
                    sink.ack(seq);
                    m.resend_depth.set(sink.depth() as i64);
                    Ok(())
                }
                _ => Err(LinkError::Protocol("unexpected message from receiver")),
            }
        },
    );
    let writer = async {
        let mut batch: Vec<Pending> = Vec::new();
        let mut scratch = BytesMut::new();
        loop {
            if !sink.has_unsent() {
                sink.ready().await;
            }
            write_control(&mut w, &out).await?;
            if !sink.has_unsent() {
                continue;
            }
            // Let a batch fill for a moment unless it is already full.
            if !ctx.settings.flush_delay.is_zero() {
                tokio::time::sleep(ctx.settings.flush_delay).await;
            }
            while sink.has_unsent() {
                batch.clear();
                sink.take(
                    &mut batch,
                    ctx.settings.batch_events,
                    ctx.settings.batch_bytes,
                );
                let Some(first) = batch.first() else { break };
                let mut events = EventsWriter::start_version(
                    std::mem::take(&mut scratch),
                    MAX_HEADER,
                    first.seq,
                    version,
                );
                for p in &batch {
                    events.push(&p.group, p.origin, &p.payload);
                }
                let n = events.count() as u64;
                let (body, _) = events.finish();
                let framed = frame::client::frame_in_place(body, opcode::BINARY, w.key());
                w.wr.write_all(&framed).await?;
                m.events_sent.inc_by(n);
                m.bytes_sent.inc_by(framed.len() as u64);
                m.batch_events.observe(n as f64);
                count_sink(sink, m);
                // Reuse the allocation when the frame is ours alone again.
                if let Ok(b) = framed.try_into_mut() {
                    scratch = b;
                }
            }
        }
        #[allow(unreachable_code)]
        Ok::<(), LinkError>(())
    };
    tokio::select! {
        r = reader => r,
        r = writer => r,
    }
}
