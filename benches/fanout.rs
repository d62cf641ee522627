//! The delivery hot path: one event to N subscribers of a group on one
//! worker, with every queue drained the way the writer does (`take_batch`,
//! then `settle` as if the socket took it all; no syscall) inside the
//! measured loop.
//! Throughput is deliveries.

use std::collections::BTreeSet;
use std::hint::black_box;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use wsrelay::fanout::{DeliveryStats, Hub, QueueLimits, RouteDelta, SlowPolicy, SubId};
use wsrelay::protocol::frame;

const LIMITS: QueueLimits = QueueLimits {
    max_bytes: 64 << 20,
    max_frames: 1 << 16,
};

fn hub_with(subs: usize) -> (Hub, Vec<SubId>) {
    let mut hub = Hub::new(LIMITS, SlowPolicy::Disconnect);
    let mut delta = RouteDelta::default();
    let ids = (0..subs)
        .map(|_| {
            let id = hub.insert();
            let groups: BTreeSet<String> = ["job_events-1".to_owned()].into();
            hub.set_groups(id, groups, &mut delta);
            id
        })
        .collect();
    (hub, ids)
}

fn drain(hub: &mut Hub, ids: &[SubId], batch: &mut Vec<Bytes>) {
    for &id in ids {
        let q = hub.queue_mut(id);
        q.take_batch(batch, 64);
        let total: usize = batch.iter().map(|s| s.len()).sum();
        black_box(&batch);
        q.settle(batch, total);
    }
}

fn deliver(c: &mut Criterion) {
    let mut g = c.benchmark_group("deliver");
    for size in [512usize, 2048] {
        let payload = vec![b'x'; size];
        for subs in [1usize, 100, 1_000, 10_000] {
            let (mut hub, ids) = hub_with(subs);
            g.throughput(Throughput::Elements(subs as u64));
            g.bench_with_input(
                BenchmarkId::new(format!("shared/{size}B"), subs),
                &subs,
                |b, _| {
                    let mut stats = DeliveryStats::default();
                    let mut delta = RouteDelta::default();
                    let mut batch = Vec::new();
                    b.iter(|| {
                        // Built once per event, shared by every subscriber.
                        let f = frame::text_frame(black_box(&payload));
                        hub.deliver("job_events-1", &f, &mut stats, &mut delta);
                        drain(&mut hub, &ids, &mut batch);
                    });
                },
            );
            // The baseline the design avoids: the same queueing and draining,
            // but with a frame encoded (allocated and copied) per subscriber.
            g.bench_with_input(
                BenchmarkId::new(format!("copy-per-subscriber/{size}B"), subs),
                &subs,
                |b, _| {
                    let mut batch = Vec::new();
                    b.iter(|| {
                        for &id in &ids {
                            let f: Bytes = frame::text_frame(black_box(&payload));
                            hub.queue_mut(id)
                                .push_event(&f, 1, LIMITS, SlowPolicy::Disconnect);
                        }
                        drain(&mut hub, &ids, &mut batch);
                    });
                },
            );
        }
    }
    g.finish();
}

criterion_group!(benches, deliver);
criterion_main!(benches);
