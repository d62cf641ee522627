//! The bodies of the fuzz targets (`fuzz/`), here so that the test suite
//! replays the committed corpora through exactly the same code on stable
//! Rust (`tests/fuzz_corpora.rs`). Each takes arbitrary bytes, drives one
//! decoder of untrusted input, and checks what must hold whatever the
//! input: no panic, no unbounded work, and a few round-trip properties.
//! Not part of the API.

use bytes::BytesMut;

use crate::auth::policy::Policy;
use crate::auth::{Identity, Jwt};
use crate::backplane::{awx, handshake, heartbeat, resume, secret, wire};
use crate::protocol::client::{self, GroupLimits, Session};
use crate::protocol::frame::{Decoder, Message, Role};
use crate::protocol::{emit, http};

/// A target: its name (the directory of its corpus) and its body.
pub type Target = (&'static str, fn(&[u8]));

/// Every target by name, for the corpus replay and `scripts/fuzz`.
pub const TARGETS: [Target; 9] = [
    ("frame_decoder", frame_decoder),
    ("http_head", http_head),
    ("client_message", client_message),
    ("emit_body", emit_body),
    ("peer_wire", peer_wire),
    ("awx_json", awx_json),
    ("channels_redis", channels_redis),
    ("secret_header", secret_header),
    ("jwt", jwt),
];

/// The websocket decoder in both roles, fed in two pieces (split at the
/// first byte's value) so partial frames are exercised too.
pub fn frame_decoder(data: &[u8]) {
    for role in [Role::Server, Role::Client] {
        let mut d = Decoder::new(role, 64 * 1024);
        let split = data.first().map_or(0, |b| *b as usize).min(data.len());
        let mut buf = BytesMut::new();
        for piece in [&data[..split], &data[split..]] {
            buf.extend_from_slice(piece);
            loop {
                match d.decode(&mut buf) {
                    Ok(Some(Message::Text(t))) => {
                        assert!(std::str::from_utf8(&t).is_ok(), "text is UTF-8");
                        assert!(t.len() <= 64 * 1024);
                    }
                    Ok(Some(Message::Binary(b))) => assert!(b.len() <= 64 * 1024),
                    Ok(Some(Message::Close(code, _))) => {
                        assert!(matches!(code, 1000..=1003 | 1005 | 1007..=1014 | 3000..=4999));
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(_) => return,
                }
            }
        }
    }
}

/// HTTP request heads and everything read from them.
pub fn http_head(data: &[u8]) {
    let Ok(Some(head)) = http::parse_head(data, 16 * 1024) else {
        return;
    };
    assert!(head.len <= data.len());
    let _ = head.body();
    let _ = http::upgrade_accept_key(&head);
    let _ = head.query_param("token");
    let _ = head.cookie("csrftoken");
    let _ = head.bearer();
    let _ = head.keep_alive();
    let _ = crate::auth::api::Credentials::from_head(&head);
}

/// A client's text message, planned for a JWT client and a restricted one.
pub fn client_message(data: &[u8]) {
    let limits = GroupLimits {
        max_groups: 64,
        max_group_name: 256,
        max_access_checks: 16,
    };
    let policy = Policy::default();
    let open = Identity::anyone(1);
    let limited = Identity {
        patterns: Some(vec!["job_events-*".into()]),
        ..Identity::anyone(2)
    };
    for (identity, cookie) in [(&open, None), (&limited, Some("tok"))] {
        let mut text = data.to_vec();
        let plan = client::plan(
            &mut text,
            Session {
                identity,
                csrf_cookie: cookie,
            },
            limits,
            &policy,
        );
        if let Some(target) = &plan.subscribe {
            assert!(target.len() <= limits.max_groups);
            assert!(target.iter().all(|g| g.len() <= limits.max_group_name));
        }
        assert!(plan.checks.len() <= limits.max_access_checks);
        let reply = client::errors_message(&plan.errors);
        assert!(
            plan.errors.is_empty() || serde_json::from_str::<serde_json::Value>(&reply).is_ok()
        );
    }
}

/// An emit body; accepted payloads are valid JSON, passed on verbatim.
pub fn emit_body(data: &[u8]) {
    if let Ok(events) = emit::parse(data, 256, 1000) {
        for e in events {
            assert!(!e.group.is_empty() && e.group.len() <= 256);
            assert!(serde_json::from_slice::<serde::de::IgnoredAny>(e.payload).is_ok());
        }
    }
}

/// A native peer message (as either version reads it), a broker message
/// or a resume point (the same bytes tried as all four); what decodes re-encodes to
/// the same meaning.
pub fn peer_wire(data: &[u8]) {
    // A restarted node's resume point, read back from the broker.
    if let Ok(p) = resume::ResumePoint::decode(data, 1024) {
        let (again, left_out) = p.encode(usize::MAX);
        assert_eq!(left_out, 0);
        assert_eq!(resume::ResumePoint::decode(&again, 1024), Ok(p));
    }
    if let Ok(b) = wire::decode_broker(data) {
        assert!(!b.group.is_empty());
        let mut w = wire::BrokerWriter::start(b.node, b.incarnation, b.group);
        let mut last = 0;
        for (seq, origin, p) in b.events.clone() {
            assert!(seq > last, "sequences rise");
            last = seq;
            assert!(std::str::from_utf8(p).is_ok());
            w.push(seq, origin, p);
        }
        let again = w.finish();
        let b2 = wire::decode_broker(&again).expect("a decoded broker message re-encodes");
        assert!(b2.events.clone().into_iter().eq(b.events.clone()));
    }
    for version in [1, wire::VERSION] {
        let Ok(m) = wire::decode_version(data, version) else {
            continue;
        };
        if let wire::PeerMessage::Events { first_seq, events } = m {
            let n = events.len();
            let mut w = wire::EventsWriter::start_version(BytesMut::new(), 0, first_seq, version);
            for (g, origin, p) in events.clone() {
                assert!(!g.is_empty());
                assert!(std::str::from_utf8(p).is_ok());
                w.push(g, origin, p);
            }
            assert_eq!(w.count() as usize, n);
            let (buf, _) = w.finish();
            let Ok(wire::PeerMessage::Events { events: again, .. }) =
                wire::decode_version(&buf, version)
            else {
                panic!("a decoded batch re-encodes");
            };
            assert!(again.into_iter().eq(events));
        }
    }
}

/// AWX's JSON forms: pushed events, consumer changes, heartbeats.
pub fn awx_json(data: &[u8]) {
    if let Ok(e) = awx::decode_event(data) {
        // A payload handed on is one a client can receive as text.
        assert!(std::str::from_utf8(e.payload.as_bytes()).is_ok());
    }
    let _ = awx::decode_consumer(data);
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(beat) = heartbeat::parse(text) {
            assert!(!beat.hostname.is_empty() && beat.hostname.len() <= 253);
        }
    }
}

/// A channels_redis member as popped from Redis (random prefix, msgpack).
pub fn channels_redis(data: &[u8]) {
    let _ = crate::ingest::channels_redis::decode(data, 12, 0.0, 60.0);
    let _ = crate::ingest::channels_redis::decode(data, 0, 0.0, 60.0);
}

/// AWX's `secret` header and the native handshake's headers.
pub fn secret_header(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = secret::verify(text, "s3cret", 1_700_000_000);
    let _ = handshake::verify_dial(text, "s3cret", 1_700_000_000);
    let _ = handshake::verify_proof(text, "s3cret", "00112233445566778899aabbccddeeff");
}

/// HS256 tokens.
pub fn jwt(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let j = Jwt {
        secret: b"s3cret-s3cret-s3cret".to_vec(),
        leeway_secs: 30,
    };
    let _ = j.verify(text, 1_700_000_000);
}
