//! Per-delivery cost as workers are added: W worker threads, each with its
//! own hub of N subscribers of one group and its own inbox, receive the same
//! stream through the real `Router` (the frame built once, a batch per worker
//! per routed call) and deliver it, draining every queue as the writer does
//! (no syscall). If the cost per delivery on each thread stays flat as W
//! grows, nothing the workers share (the routes snapshot, the frame's
//! reference count, the inboxes' wake-ups, the metrics) is what makes a node
//! slower per delivery on more cores.
//!
//! Reported: time per delivery per thread = elapsed x W / deliveries. W =
//! 1, 2 and every power of two up to the cores here.

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tokio::sync::mpsc;
use wsrelay::fanout::{
    DeliveryStats, Event, Hub, QueueLimits, RouteDelta, Router, Routes, SlowPolicy,
};

const LIMITS: QueueLimits = QueueLimits {
    max_bytes: 64 << 20,
    max_frames: 1 << 16,
};
/// Subscribers per worker.
const SUBS: usize = 250;
/// Events per routed call (an emit request's batch).
const BATCH: usize = 16;

struct Pool {
    router: Router,
    delivered: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

fn pool(workers: usize) -> Pool {
    let routes = Arc::new(Routes::default());
    let delivered = Arc::new(AtomicU64::new(0));
    let mut senders = Vec::new();
    let mut threads = Vec::new();
    for w in 0..workers {
        let (tx, mut rx) = mpsc::channel::<Vec<Event>>(1024);
        senders.push(tx);
        let mut hub = Hub::new(LIMITS, SlowPolicy::Disconnect);
        let mut delta = RouteDelta::default();
        let ids: Vec<_> = (0..SUBS)
            .map(|_| {
                let id = hub.insert();
                hub.set_groups(id, ["job_events-1".to_owned()].into(), &mut delta);
                id
            })
            .collect();
        routes.apply(w, &delta);
        let delivered = delivered.clone();
        threads.push(std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            rt.block_on(async move {
                // The worker's loop (`transport::worker::deliver`), then the
                // writers' draining, without sockets.
                let mut batches = Vec::with_capacity(64);
                let mut frames: Vec<Bytes> = Vec::new();
                while rx.recv_many(&mut batches, 64).await > 0 {
                    let mut stats = DeliveryStats::default();
                    let mut delta = RouteDelta::default();
                    for batch in batches.drain(..) {
                        for e in batch {
                            hub.deliver(&e.group, &e.frame, &mut stats, &mut delta);
                        }
                    }
                    for &id in &ids {
                        let q = hub.queue_mut(id);
                        while !q.is_empty() {
                            q.take_batch(&mut frames, 64);
                            let n: usize = frames.iter().map(Bytes::len).sum();
                            black_box(&frames);
                            q.settle(&mut frames, n);
                        }
                    }
                    delivered.fetch_add(stats.delivered, Ordering::Release);
                }
            });
        }));
    }
    Pool {
        router: Router::new(routes, senders),
        delivered,
        threads,
    }
}

fn worker_counts() -> Vec<usize> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut w = vec![1];
    let mut n = 2;
    while n <= cores.max(2) {
        w.push(n);
        n *= 2;
    }
    w
}

fn deliver_across_workers(c: &mut Criterion) {
    let payload = vec![b'x'; 1024];
    let mut g = c.benchmark_group("scaling/deliver_1KiB");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(3));
    for workers in worker_counts() {
        let p = pool(workers);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        // Elements: deliveries per worker per iteration (one event each), so
        // criterion's time per element is the time per delivery per thread.
        g.throughput(Throughput::Elements(SUBS as u64));
        g.bench_with_input(BenchmarkId::new("workers", workers), &workers, |b, &w| {
            b.iter_custom(|iters| {
                let start_count = p.delivered.load(Ordering::Acquire);
                let want = start_count + iters * (SUBS * w) as u64;
                let t = Instant::now();
                rt.block_on(async {
                    let mut left = iters;
                    while left > 0 {
                        let n = left.min(BATCH as u64) as usize;
                        let events = (0..n).map(|_| ("job_events-1", &payload[..]));
                        p.router.route(events).await.unwrap();
                        left -= n as u64;
                    }
                });
                // Yield rather than spin: the waiting thread must not take a
                // core from the workers being measured.
                while p.delivered.load(Ordering::Acquire) < want {
                    std::thread::yield_now();
                }
                // Per thread: the elapsed time covers W threads' work at once.
                t.elapsed()
            })
        });
        drop(p.router);
        for t in p.threads {
            let _ = t.join();
        }
    }
    g.finish();
}

criterion_group!(benches, deliver_across_workers);
criterion_main!(benches);
