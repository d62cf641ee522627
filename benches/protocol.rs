//! Decoders and encoders on the client and producer paths.

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use wsrelay::auth::policy::Policy;
use wsrelay::auth::Identity;
use wsrelay::protocol::client::{plan, GroupLimits, Session};
use wsrelay::protocol::{emit, frame};

const KEY: [u8; 4] = [1, 2, 3, 4];

fn codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("frame");
    for size in [512usize, 2048, 5120] {
        let payload = vec![b'a'; size];
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(format!("encode_server_text/{size}B"), |b| {
            b.iter(|| frame::text_frame(black_box(&payload)))
        });
        let masked = frame::client::text_frame(&payload, KEY);
        g.bench_function(format!("decode_client_text/{size}B"), |b| {
            let mut dec = frame::Decoder::new(frame::Role::Server, 1 << 20);
            b.iter(|| {
                let mut buf = BytesMut::from(&masked[..]);
                black_box(dec.decode(&mut buf).unwrap())
            })
        });
    }
    g.finish();
}

/// The choice the io_uring issue asked to measure: fastwebsockets' reader
/// against wsrelay's I/O-free decoder, on the same bytes (1,000 masked
/// client text frames), each validating UTF-8, each paying one copy of the
/// input (into its read buffer). fastwebsockets reads from an in-memory
/// `AsyncRead`, polled once per frame with a no-op waker: the data is always
/// there, so this measures decoding, not waiting.
fn decoder_choice(c: &mut Criterion) {
    use std::future::Future;
    use std::task::{Context, Poll, Waker};

    fn ready<F: Future>(f: F) -> F::Output {
        let mut f = std::pin::pin!(f);
        match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(v) => v,
            Poll::Pending => panic!("in-memory reads never wait"),
        }
    }

    let mut g = c.benchmark_group("decode_1000_client_frames");
    for size in [64usize, 512, 2048] {
        let payload = vec![b'a'; size];
        let one = frame::client::text_frame(&payload, KEY);
        let input: Vec<u8> = one.iter().copied().cycle().take(one.len() * 1000).collect();
        g.throughput(Throughput::Elements(1000));
        g.bench_function(format!("wsrelay/{size}B"), |b| {
            b.iter(|| {
                let mut dec = frame::Decoder::new(frame::Role::Server, 1 << 20);
                let mut buf = BytesMut::from(&input[..]);
                let mut n = 0;
                while let Some(m) = dec.decode(&mut buf).unwrap() {
                    black_box(&m);
                    n += 1;
                }
                assert_eq!(n, 1000);
            })
        });
        g.bench_function(format!("fastwebsockets/{size}B"), |b| {
            b.iter(|| {
                let stream = tokio::io::join(&input[..], tokio::io::sink());
                let mut ws = fastwebsockets::WebSocket::after_handshake(
                    stream,
                    fastwebsockets::Role::Server,
                );
                ws.set_auto_close(false);
                ws.set_auto_pong(false);
                ws.set_max_message_size(1 << 20);
                for _ in 0..1000 {
                    let f = ready(ws.read_frame()).unwrap();
                    assert_eq!(f.payload.len(), size);
                    black_box(&f.payload[..]);
                }
            })
        });
    }
    g.finish();
}

fn client_messages(c: &mut Criterion) {
    let identity = Identity {
        patterns: Some(vec!["job_events-*".into(), "jobs-status_changed".into()]),
        ..Identity::anyone(1)
    };
    let policy = Policy::default();
    let session = Session {
        identity: &identity,
        csrf_cookie: None,
    };
    let limits = GroupLimits {
        max_groups: 1024,
        max_group_name: 256,
        max_access_checks: 100,
    };
    let msg = br#"{"groups": {"jobs": ["status_changed"], "job_events": [42, 43, 44, 45]}, "xrftoken": "abc"}"#;
    c.bench_function("client/plan_subscribe", |b| {
        b.iter(|| {
            let mut text = msg.to_vec();
            black_box(plan(&mut text, session, limits, &policy))
        })
    });
}

fn emit_bodies(c: &mut Criterion) {
    let event = format!(
        r#"{{"group": "job_events-42", "payload": {{"stdout": "{}", "counter": 1}}}}"#,
        "x".repeat(1000)
    );
    let body = format!("[{}]", vec![event; 100].join(","));
    let mut g = c.benchmark_group("emit");
    g.throughput(Throughput::Elements(100));
    g.bench_function("parse_100x1KiB", |b| {
        b.iter(|| {
            black_box(
                emit::parse(black_box(body.as_bytes()), 256, 100_000)
                    .unwrap()
                    .len(),
            )
        })
    });
    g.finish();
}

criterion_group!(benches, codec, decoder_choice, client_messages, emit_bodies);
criterion_main!(benches);
