//! A worker thread: one single-threaded runtime (tokio for epoll, or
//! tokio-uring), its own listener (SO_REUSEPORT spreads connections over
//! workers), its own hub, and the inbox through which the router hands it
//! events.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::stream::{Stream, IOVECS};
use super::{conn, Io, Listener, NodeContext};
use crate::fanout::{DeliveryStats, Event, Hub, RouteDelta};
use crate::metrics::ServerClose;
use crate::protocol::frame::close_code;

/// State owned by one worker thread.
pub(crate) struct Worker {
    pub index: usize,
    pub hub: RefCell<Hub>,
    pub ctx: Arc<NodeContext>,
    /// Taken from the inbox by the delivery loop, not yet handed to the
    /// hub (a backlog waiting for its next slice): shutdown waits for it
    /// as for the inbox.
    pub backlog: RefCell<VecDeque<std::vec::IntoIter<Event>>>,
}

impl Worker {
    /// Publishes this worker's route changes and its group gauge; returns
    /// the routes epoch when something changed.
    pub fn publish(&self, delta: &RouteDelta) -> Option<u64> {
        let epoch = self.ctx.routes.apply(self.index, delta)?;
        let groups = self.hub.borrow().group_count();
        self.ctx.metrics.groups[self.index].set(groups as i64);
        Some(epoch)
    }
}

/// A listener of either driver.
trait Acceptor {
    type Stream: Stream;
    async fn next(&self) -> io::Result<(Self::Stream, std::net::SocketAddr)>;
}

impl Acceptor for tokio::net::TcpListener {
    type Stream = tokio::net::TcpStream;
    async fn next(&self) -> io::Result<(Self::Stream, std::net::SocketAddr)> {
        let (s, peer) = self.accept().await?;
        s.set_nodelay(true)?;
        Ok((s, peer))
    }
}

impl Acceptor for tokio_uring::net::TcpListener {
    type Stream = tokio_uring::net::TcpStream;
    async fn next(&self) -> io::Result<(Self::Stream, std::net::SocketAddr)> {
        let (s, peer) = self.accept().await?;
        s.set_nodelay(true)?;
        Ok((s, peer))
    }
}

/// Starts worker `index` on its own thread and returns once its runtime
/// and listener are up, or with the reason they could not be. The admin
/// listener, when given, is served by this worker too (the status page's
/// tail subscribes in its hub).
pub(crate) fn spawn_worker(
    index: usize,
    listener: std::net::TcpListener,
    admin: Option<std::net::TcpListener>,
    inbox: mpsc::Receiver<Vec<Event>>,
    ctx: Arc<NodeContext>,
    shutdown: watch::Receiver<bool>,
) -> io::Result<std::thread::JoinHandle<()>> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<io::Result<()>>();
    let handle = std::thread::Builder::new()
        .name(format!("wsrelay-worker-{index}"))
        .spawn(move || {
            let io = ctx.io;
            let hub = Hub::new(ctx.config.queue_limits(), ctx.config.slow_policy);
            let worker = Rc::new(Worker {
                index,
                hub: RefCell::new(hub),
                ctx,
                backlog: Default::default(),
            });
            match io {
                Io::Epoll => {
                    let rt = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => rt,
                        Err(e) => return drop(ready_tx.send(Err(e))),
                    };
                    tokio::task::LocalSet::new().block_on(&rt, async move {
                        let admin = admin.map(tokio::net::TcpListener::from_std).transpose();
                        match (tokio::net::TcpListener::from_std(listener), admin) {
                            (Ok(l), Ok(admin)) => {
                                let _ = ready_tx.send(Ok(()));
                                run(worker, l, admin, inbox, shutdown).await;
                            }
                            (Err(e), _) | (_, Err(e)) => drop(ready_tx.send(Err(e))),
                        }
                    });
                }
                Io::Uring => {
                    let rt = match tokio_uring::Runtime::new(&tokio_uring::builder()) {
                        Ok(rt) => rt,
                        Err(e) => return drop(ready_tx.send(Err(e))),
                    };
                    rt.block_on(async move {
                        let l = tokio_uring::net::TcpListener::from_std(listener);
                        let admin = admin.map(tokio_uring::net::TcpListener::from_std);
                        let _ = ready_tx.send(Ok(()));
                        run(worker, l, admin, inbox, shutdown).await;
                    });
                }
            }
        })?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(handle),
        Ok(Err(e)) => {
            let _ = handle.join();
            Err(e)
        }
        Err(_) => Err(io::Error::other("worker thread ended during start")),
    }
}

async fn run<A: Acceptor + 'static>(
    worker: Rc<Worker>,
    listener: A,
    admin: Option<A>,
    inbox: mpsc::Receiver<Vec<Event>>,
    shutdown: watch::Receiver<bool>,
) {
    tokio::task::spawn_local(deliver(worker.clone(), inbox));
    tokio::task::spawn_local(sample_queues(worker.clone()));
    // Each listener has its own accept loop: an accept is never raced
    // against another (with io_uring, a cancelled accept still completes
    // in the kernel, and the connection it took would be lost).
    let admin = admin.map(|admin| {
        tokio::task::spawn_local(accept_loop(
            worker.clone(),
            admin,
            Listener::Admin,
            shutdown.clone(),
        ))
    });
    accept_loop(worker.clone(), listener, Listener::Clients, shutdown).await;
    if let Some(admin) = admin {
        let _ = admin.await;
    }
    close_everyone(&worker).await;
}

/// Accepts on `listener` until shutdown, each connection a task of its
/// own with its context (peer address, worker) on every log line.
async fn accept_loop<A: Acceptor>(
    worker: Rc<Worker>,
    listener: A,
    via: Listener,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            a = listener.next() => a,
            _ = shutdown.changed() => break,
        };
        match accepted {
            Ok((stream, peer)) => {
                let span = tracing::info_span!("conn", %peer, worker = worker.index);
                tokio::task::spawn_local(tracing::Instrument::instrument(
                    conn::serve(worker.clone(), stream, via),
                    span,
                ));
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of
                // spinning on an error that will repeat (the message says
                // so once a second at most).
                if worker.ctx.throttle.accept_failed.allow() {
                    tracing::warn!(worker = worker.index, error = %e, "accept failed");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Once a second: the depth of this worker's client queues, for
/// `wsrelay_queued_frames`/`_bytes` and the deepest one. A walk over the
/// worker's subscribers, O(connections) once a second, instead of
/// bookkeeping on every push.
async fn sample_queues(worker: Rc<Worker>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let depth = worker.hub.borrow().queue_depth();
        let m = &worker.ctx.metrics;
        m.queued_frames[worker.index].set(depth.frames as i64);
        m.queued_bytes[worker.index].set(depth.bytes as i64);
        m.deepest_queue[worker.index].set(depth.deepest_frames as i64);
    }
}

/// Delivers what is still in the inbox, then closes every client with 1001
/// after its queue is written, and waits (bounded by the grace period) for
/// them to go.
async fn close_everyone(worker: &Worker) {
    let ctx = &worker.ctx;
    ctx.shutting_down
        .store(true, std::sync::atomic::Ordering::Release);
    let deadline = tokio::time::Instant::now() + ctx.config.shutdown_grace;
    while (!ctx.router.inbox_is_empty(worker.index) || !worker.backlog.borrow().is_empty())
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut delta = RouteDelta::default();
    let closed = {
        let mut hub = worker.hub.borrow_mut();
        hub.finish_all(close_code::GOING_AWAY, "server shutting down", &mut delta);
        hub.len()
    };
    worker.publish(&delta);
    ctx.metrics
        .server_close(ServerClose::Shutdown)
        .inc_by(closed as u64);
    while !worker.hub.borrow().is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Drains the inbox into the hub, and adds the counts to the metrics once
/// per round rather than once per frame.
///
/// Between two turns of the connections' writers it queues at most what
/// a writer takes in one write (`IOVECS` frames per subscriber) and a
/// quarter of a queue's bytes; past that it lets the writers go before
/// queuing more. A backlog in the inbox is this worker's own (its thread
/// was held up, or a burst came in from a peer or the broker after a
/// stall upstream); queued all at once it filled a fast client's queue
/// before its writer ran once, and the client was closed as a slow
/// consumer for the node's delay. A slice at a time, each written out
/// before the next is queued, a queue's bound measures its client. An
/// inbox that empties between arrivals lets the writers go by itself:
/// steady traffic is never cut into slices.
async fn deliver(worker: Rc<Worker>, mut inbox: mpsc::Receiver<Vec<Event>>) {
    let (cap_frames, cap_bytes) = round_cap(worker.hub.borrow().limits());
    let mut received = Vec::with_capacity(64);
    // Queued since the writers last had a turn.
    let (mut frames, mut bytes) = (0usize, 0usize);
    loop {
        if worker.backlog.borrow().is_empty() {
            let mut waited = false;
            let n = std::future::poll_fn(|cx| {
                let p = inbox.poll_recv_many(cx, &mut received, 64);
                waited |= p.is_pending();
                p
            })
            .await;
            if n == 0 {
                return;
            }
            if waited {
                // While this task waited for the inbox, the writers had
                // their turn.
                (frames, bytes) = (0, 0);
            }
            worker
                .backlog
                .borrow_mut()
                .extend(received.drain(..).map(Vec::into_iter));
        }
        let mut stats = DeliveryStats::default();
        let mut delta = RouteDelta::default();
        let cut = {
            let mut hub = worker.hub.borrow_mut();
            let mut waiting = worker.backlog.borrow_mut();
            'round: while let Some(mut batch) = waiting.pop_front() {
                for event in batch.by_ref() {
                    frames += 1;
                    bytes += event.frame.len();
                    hub.deliver_at(&event.group, &event.frame, event.at, &mut stats, &mut delta);
                    if frames >= cap_frames || bytes >= cap_bytes {
                        if batch.len() > 0 {
                            waiting.push_front(batch);
                        }
                        break 'round;
                    }
                }
            }
            frames >= cap_frames || bytes >= cap_bytes
        };
        worker.publish(&delta);
        let m = &worker.ctx.metrics;
        m.delivery_rounds[worker.index].inc();
        m.deliveries.inc_by(stats.delivered);
        if stats.dropped > 0 {
            m.dropped.inc_by(stats.dropped);
        }
        if stats.observer_dropped > 0 {
            m.tail_dropped.inc_by(stats.observer_dropped);
        }
        if stats.slow_disconnects > 0 {
            m.server_close(ServerClose::SlowConsumer)
                .inc_by(stats.slow_disconnects);
        }
        if cut {
            let_writers_go(worker.ctx.io).await;
            (frames, bytes) = (0, 0);
        }
    }
}

/// What one delivery round may queue for a subscriber of every group in
/// it: what its writer takes in one write, and a quarter of its queue's
/// bytes (at least one event, so a round always moves).
fn round_cap(limits: crate::fanout::QueueLimits) -> (usize, usize) {
    (
        IOVECS.min(limits.max_frames / 4).max(1),
        (limits.max_bytes / 4).max(1),
    )
}

/// Lets the writers this round woke write before the next round queues
/// more. On epoll a yield is enough: their writes are syscalls made when
/// they run. On io_uring their writes are only submitted when the thread
/// parks, which a yield never lets it do (tokio polls the driver without
/// parking while work is deferred); a no-op of the ring's own waits for
/// that park, and so for the writes submitted with it.
async fn let_writers_go(io: super::Io) {
    match io {
        super::Io::Epoll => tokio::task::yield_now().await,
        super::Io::Uring => {
            if tokio_uring::no_op().await.is_err() {
                tokio::task::yield_now().await;
            }
        }
    }
}
