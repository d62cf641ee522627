//! The routes table: what a subscribe costs to publish, and what the emit
//! path pays to look a group up, over table sizes. `imbl` is the table
//! wsrelay uses (a persistent map: a change copies its path); `std` is the
//! design it replaced (a `HashMap` cloned whole on every change), kept here
//! as the baseline.

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use wsrelay::fanout::{RouteDelta, Routes};

fn names(n: usize) -> Vec<Arc<str>> {
    (0..n)
        .map(|i| Arc::from(format!("job_events-{i}")))
        .collect()
}

fn filled(n: usize) -> Routes {
    let r = Routes::default();
    for chunk in names(n).chunks(1000) {
        r.apply(
            0,
            &RouteDelta {
                held: chunk.to_vec(),
                freed: Vec::new(),
            },
        );
    }
    r
}

fn publish(c: &mut Criterion) {
    let mut g = c.benchmark_group("routes/publish_one_group");
    g.throughput(Throughput::Elements(1));
    for n in [1_000usize, 10_000, 100_000] {
        let r = filled(n);
        let one: Arc<str> = Arc::from("probe-x");
        g.bench_with_input(BenchmarkId::new("imbl", n), &n, |b, _| {
            let (held, freed) = (
                RouteDelta {
                    held: vec![one.clone()],
                    freed: Vec::new(),
                },
                RouteDelta {
                    held: Vec::new(),
                    freed: vec![one.clone()],
                },
            );
            b.iter(|| {
                black_box(r.apply(1, &held));
                black_box(r.apply(1, &freed));
            })
        });
        let mut table: Arc<HashMap<Arc<str>, u64>> =
            Arc::new(names(n).into_iter().map(|g| (g, 1)).collect());
        g.bench_with_input(BenchmarkId::new("std_clone", n), &n, |b, _| {
            b.iter(|| {
                for add in [true, false] {
                    let mut t = HashMap::clone(&table);
                    if add {
                        t.insert(one.clone(), 2);
                    } else {
                        t.remove(&one);
                    }
                    table = Arc::new(t);
                }
                black_box(&table);
            })
        });
    }
    g.finish();
}

fn lookup(c: &mut Criterion) {
    let mut g = c.benchmark_group("routes/lookup");
    g.throughput(Throughput::Elements(1000));
    for n in [1_000usize, 100_000] {
        let r = filled(n);
        let std: HashMap<Arc<str>, u64> = names(n).into_iter().map(|g| (g, 1)).collect();
        let probes: Vec<String> = (0..1000)
            .map(|i| format!("job_events-{}", i * 97 % n))
            .collect();
        g.bench_with_input(BenchmarkId::new("imbl", n), &n, |b, _| {
            let table = r.load_full();
            b.iter(|| {
                for p in &probes {
                    black_box(table.groups.get_key_value(p.as_str()));
                }
            })
        });
        g.bench_with_input(BenchmarkId::new("std", n), &n, |b, _| {
            b.iter(|| {
                for p in &probes {
                    black_box(std.get_key_value(p.as_str()));
                }
            })
        });
    }
    g.finish();
}

criterion_group!(benches, publish, lookup);
criterion_main!(benches);
