//! The sending and receiving sides of AWX's two link forms, as this node
//! dials them (2022: we push what the dialed node subscribed to; 2020: it
//! pushes us its every event), and AWX's `broadcast_websocket_stats`
//! writer.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::{
    count_sink, read_loop, unix_now, write_control, LinkCtx, LinkError, Reader, Shared, Writer,
};
use crate::backplane::awx;
use crate::backplane::outbox::{Pending, Sink};
use crate::backplane::peer::PeerSpec;
use crate::backplane::Backplane;
use crate::metrics::LinkMetrics;
use crate::protocol::frame::{opcode, Message};

// === AWX 2022: we push what the dialed node subscribed to ===

pub(super) async fn awx_relay(
    ctx: &LinkCtx,
    conn: (Reader, Writer),
    sink: &Arc<Sink>,
    m: &LinkMetrics,
) -> Result<(), LinkError> {
    let (mut r, mut w) = conn;
    // AWX loses what was sent while its link was down, and its relay sends
    // the whole subscription again on connect: start from an empty set.
    let _ = ctx.bp.set_interest(sink, true, &[], &[]);
    sink.start_afresh();
    count_sink(sink, m);
    let out = Shared::default();
    let wake = || sink.wake();
    let reader = read_loop(&mut r, &out, &wake, ctx.settings.ping_interval, |msg| {
        if let Message::Text(t) = msg {
            match awx::decode_consumer(&t) {
                Ok(Some(change)) => {
                    let groups: Vec<&str> = change.groups.iter().map(String::as_str).collect();
                    let r = if change.subscribe {
                        ctx.bp.set_interest(sink, false, &groups, &[])
                    } else {
                        ctx.bp.set_interest(sink, false, &[], &groups)
                    };
                    // AWX's form has no way to refuse: skipped and counted.
                    if let Err(e) = r {
                        m.skipped.inc();
                        tracing::warn!(peer = sink.label, error = %e, "AWX consumer change refused");
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    m.skipped.inc();
                    tracing::debug!(peer = sink.label, error = %e, "unreadable AWX message");
                }
            }
        }
        std::future::ready(Ok(()))
    });
    let writer = async {
        let mut batch: Vec<Pending> = Vec::new();
        loop {
            if !sink.has_unsent() {
                sink.ready().await;
            }
            write_control(&mut w, &out).await?;
            while sink.has_unsent() {
                batch.clear();
                sink.take(
                    &mut batch,
                    ctx.settings.batch_events,
                    ctx.settings.batch_bytes,
                );
                let mut bytes = 0;
                for p in &batch {
                    let text = awx::relay_envelope(&p.group, &p.payload);
                    bytes += w.send(opcode::TEXT, &text).await?;
                }
                sink.ack_sent();
                m.events_sent.inc_by(batch.len() as u64);
                m.bytes_sent.inc_by(bytes as u64);
                m.batch_events.observe(1.0);
                count_sink(sink, m);
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

// === AWX 2020: the dialed node sends us its every local event ===

pub(super) async fn awx_broadcast(
    ctx: &LinkCtx,
    conn: (Reader, Writer),
    spec: &PeerSpec,
    m: &LinkMetrics,
) -> Result<(), LinkError> {
    let (mut r, mut w) = conn;
    ctx.bp.stats.connected(&spec.host, unix_now());
    let out = Shared::default();
    let ready = tokio::sync::Notify::new();
    let wake = || ready.notify_one();
    // Borrowed, not cloned: this runs once per received event.
    let (bp, router, host) = (&*ctx.bp, &*ctx.router, spec.host.as_str());
    let max_group = ctx.settings.max_group_name;
    let reader = read_loop(
        &mut r,
        &out,
        &wake,
        ctx.settings.ping_interval,
        |msg| async move {
            let Message::Text(t) = msg else {
                return Ok(());
            };
            super::super::receive_awx_event(bp, router, m, host, &t, max_group)
                .await
                .map_err(|_| LinkError::Stopping)
        },
    );
    let writer = async {
        loop {
            ready.notified().await;
            write_control(&mut w, &out).await?;
        }
        #[allow(unreachable_code)]
        Ok::<(), LinkError>(())
    };
    tokio::select! {
        r = reader => r,
        r = writer => r,
    }
}

// === AWX stats ===

/// Writes AWX's `broadcast_websocket_stats` key every 5 s, as AWX's relay
/// does, so AWX's metrics endpoint keeps reporting the backplane.
pub(super) async fn write_awx_stats(
    bp: Arc<Backplane>,
    url: String,
    mut stop: watch::Receiver<bool>,
) {
    let client = match deadpool_redis::redis::Client::open(url.as_str()) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "cannot write broadcast_websocket_stats");
            return;
        }
    };
    let mut conn = None;
    loop {
        if conn.is_none() {
            conn = client.get_multiplexed_async_connection().await.ok();
        }
        if let Some(c) = conn.as_mut() {
            let text = bp.stats.render(unix_now());
            let r: Result<(), _> = deadpool_redis::redis::cmd("SET")
                .arg(super::super::stats::REDIS_KEY)
                .arg(text)
                .query_async(c)
                .await;
            if r.is_err() {
                conn = None;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(super::super::stats::INTERVAL_SECS)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

// === TLS ===
