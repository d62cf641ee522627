//! The in-process producer handle, for embedding wsrelay in a Rust program
//! (and for `demo`).

use std::sync::Arc;

use crate::fanout::{RouteError, Router};
use crate::metrics::Metrics;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EmitError {
    #[error(transparent)]
    Route(#[from] RouteError),
    #[error("group must be a non-empty string of at most {0} bytes")]
    BadGroup(usize),
}

/// Emits events into a running node. Cheap to clone; usable from any
/// thread or runtime.
#[derive(Clone)]
pub struct Emitter {
    router: Arc<Router>,
    metrics: Arc<Metrics>,
    max_group_name: usize,
}

impl Emitter {
    pub(crate) fn new(router: Arc<Router>, metrics: Arc<Metrics>, max_group_name: usize) -> Self {
        Self {
            router,
            metrics,
            max_group_name,
        }
    }

    /// Emits one event. `payload` is sent to clients verbatim; it should be
    /// JSON text (the AWX UI parses every message). Waits while the workers
    /// are saturated.
    pub async fn emit(&self, group: &str, payload: &str) -> Result<(), EmitError> {
        self.emit_many([(group, payload)]).await.map(|_| ())
    }

    /// Emits events in order; returns how many were accepted.
    pub async fn emit_many<'a>(
        &self,
        events: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<u64, EmitError> {
        let events: Vec<(&str, &[u8])> =
            events.into_iter().map(|(g, p)| (g, p.as_bytes())).collect();
        if events
            .iter()
            .any(|(g, _)| g.is_empty() || g.len() > self.max_group_name)
        {
            return Err(EmitError::BadGroup(self.max_group_name));
        }
        let routed = self.router.route(events).await?;
        self.metrics.events_in_inproc.inc_by(routed.accepted);
        self.metrics.events_unrouted.inc_by(routed.unrouted);
        Ok(routed.accepted)
    }
}
