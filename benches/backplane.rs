//! The backplane's per-event cost on each side of a link, for the two
//! forms a link can take: wsrelay's native batch (one binary frame per
//! batch, framed and masked in place) and AWX's JSON (one masked text
//! frame per event, the payload escaped into a JSON string), and the
//! receiving side's decoding of each. 1 KiB AWX-shaped job events.

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use wsrelay::backplane::{awx, wire};
use wsrelay::protocol::frame::{self, client, opcode};

const KEY: [u8; 4] = [9, 8, 7, 6];
const BATCH: usize = 256;

fn events() -> Vec<(String, String)> {
    (0..BATCH)
        .map(|i| {
            (
                "job_events-42".to_owned(),
                wsrelay::payload::job_event(42, i as u64, 1_700_000_000_000_000_000, 1024),
            )
        })
        .collect()
}

/// Each event as read from the node's stream: the costliest origin.
fn origin(i: usize) -> wire::Origin {
    wire::Origin::Live(wire::StreamId {
        ms: 1_764_000_000_000,
        seq: i as u64,
    })
}

/// The native batch of `version`: version 2 carries each event's origin
/// (17 bytes more per event), version 1 none.
fn native_batch(events: &[(String, String)], version: u8, scratch: BytesMut) -> bytes::Bytes {
    let mut w = wire::EventsWriter::start_version(scratch, client::MAX_HEADER, 1, version);
    for (i, (g, p)) in events.iter().enumerate() {
        w.push(g, origin(i), p.as_bytes());
    }
    let (buf, _) = w.finish();
    client::frame_in_place(buf, opcode::BINARY, KEY)
}

fn encode(c: &mut Criterion) {
    let events = events();
    let bytes: usize = events.iter().map(|(_, p)| p.len()).sum();
    let mut g = c.benchmark_group("backplane_encode");
    g.throughput(Throughput::Elements(BATCH as u64));
    for (name, version) in [("native_batch_of_256", 2), ("native_v1_batch_of_256", 1)] {
        g.bench_function(name, |b| {
            let mut scratch = BytesMut::with_capacity(bytes + 32 * BATCH + 64);
            b.iter(|| {
                let framed = native_batch(&events, version, std::mem::take(&mut scratch));
                black_box(framed.len());
                if let Ok(back) = framed.try_into_mut() {
                    scratch = back;
                }
            })
        });
    }
    g.bench_function("awx_json_frame_per_event", |b| {
        b.iter(|| {
            for (g, p) in &events {
                let text = awx::relay_envelope(g, p.as_bytes());
                black_box(client::frame(opcode::TEXT, true, &text, KEY));
            }
        })
    });
    g.finish();
}

fn decode(c: &mut Criterion) {
    let events = events();
    let json: Vec<u8> = events
        .iter()
        .flat_map(|(g, p)| {
            client::frame(
                opcode::TEXT,
                true,
                &awx::relay_envelope(g, p.as_bytes()),
                KEY,
            )
            .to_vec()
        })
        .collect();
    let mut g = c.benchmark_group("backplane_decode");
    g.throughput(Throughput::Elements(BATCH as u64));
    for (name, version) in [("native_batch_of_256", 2), ("native_v1_batch_of_256", 1)] {
        let native = native_batch(&events, version, BytesMut::new());
        g.bench_function(name, |b| {
            let mut dec = frame::Decoder::new(frame::Role::Server, 1 << 24);
            b.iter(|| {
                let mut wire_bytes = BytesMut::from(&native[..]);
                let frame::Message::Binary(m) = dec.decode(&mut wire_bytes).unwrap().unwrap()
                else {
                    unreachable!()
                };
                let wire::PeerMessage::Events { events, .. } =
                    wire::decode_version(&m, version).unwrap()
                else {
                    unreachable!()
                };
                for (g, o, p) in events {
                    black_box((g, o, p));
                }
            })
        });
    }
    g.bench_function("awx_json_frame_per_event", |b| {
        let mut dec = frame::Decoder::new(frame::Role::Server, 1 << 24);
        b.iter(|| {
            let mut wire_bytes = BytesMut::from(&json[..]);
            while let Some(frame::Message::Text(t)) = dec.decode(&mut wire_bytes).unwrap() {
                black_box(awx::decode_event(&t).unwrap());
            }
        })
    });
    g.finish();
}

criterion_group!(benches, encode, decode);
criterion_main!(benches);
