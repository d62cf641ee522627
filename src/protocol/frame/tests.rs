use super::*;

const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

fn decode_all(role: Role, max: usize, bytes: &[u8]) -> Vec<Result<Message, FrameError>> {
    let mut dec = Decoder::new(role, max);
    let mut buf = BytesMut::from(bytes);
    let mut out = Vec::new();
    loop {
        match dec.decode(&mut buf) {
            Ok(Some(m)) => out.push(Ok(m)),
            Ok(None) => break,
            Err(e) => {
                out.push(Err(e));
                break;
            }
        }
    }
    out
}

fn check(role: Role, bytes: &[u8], expected: &[Result<Message, FrameError>]) {
    assert_eq!(decode_all(role, 1 << 16, bytes), expected);
}

fn text(s: &str) -> Message {
    Message::Text(BytesMut::from(s.as_bytes()))
}

#[test]
fn rfc_examples() {
    // RFC 6455 section 5.7: a single-frame masked text message "Hello".
    check(
        Role::Server,
        &[
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ],
        &[Ok(text("Hello"))],
    );
    // A single-frame unmasked text message, as a client sees it.
    check(
        Role::Client,
        &[0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f],
        &[Ok(text("Hello"))],
    );
    // A fragmented unmasked text message.
    check(
        Role::Client,
        &[0x01, 0x03, 0x48, 0x65, 0x6c, 0x80, 0x02, 0x6c, 0x6f],
        &[Ok(text("Hello"))],
    );
}

#[test]
fn round_trips_every_length_class() {
    for len in [0usize, 1, 125, 126, 65535, 65536, 200_000] {
        let payload = "x".repeat(len);
        let frame = client::text_frame(payload.as_bytes(), KEY);
        assert_eq!(
            decode_all(Role::Server, 1 << 20, &frame),
            vec![Ok(text(&payload))],
            "len {len}"
        );
        let frame = text_frame(payload.as_bytes());
        assert_eq!(frame.len(), header_len(len) + len);
        assert_eq!(
            decode_all(Role::Client, 1 << 20, &frame),
            vec![Ok(text(&payload))]
        );
    }
}

#[test]
fn byte_at_a_time_feeding_decodes_the_same() {
    let mut stream = Vec::new();
    stream.extend_from_slice(&client::frame(0x1, false, b"he", KEY));
    stream.extend_from_slice(&client::frame(0x9, true, b"p", KEY));
    stream.extend_from_slice(&client::frame(0x0, true, b"llo", KEY));
    stream.extend_from_slice(&client::close_frame(1000, "bye", KEY));
    let mut dec = Decoder::new(Role::Server, 1024);
    let mut buf = BytesMut::new();
    let mut got = Vec::new();
    for b in stream {
        buf.put_u8(b);
        while let Some(m) = dec.decode(&mut buf).unwrap() {
            got.push(m);
        }
    }
    assert_eq!(
        got,
        vec![
            Message::Ping(Bytes::from_static(b"p")),
            text("hello"),
            Message::Close(1000, "bye".into()),
        ]
    );
}

#[test]
fn protocol_violations() {
    let err = |code, reason| vec![Err(FrameError { code, reason })];
    let unmasked = text_frame(b"hi");
    assert_eq!(
        decode_all(Role::Server, 64, &unmasked),
        err(1002, "client frames must be masked")
    );
    let masked = client::text_frame(b"hi", KEY);
    assert_eq!(
        decode_all(Role::Client, 64, &masked),
        err(1002, "server frames must not be masked")
    );
    let too_big = client::text_frame(&[b'a'; 65], KEY);
    assert_eq!(
        decode_all(Role::Server, 64, &too_big),
        err(1009, "message too big")
    );
    // Fragments that only add up past the limit are refused too.
    let mut frags = client::frame(0x1, false, &[b'a'; 40], KEY).to_vec();
    frags.extend_from_slice(&client::frame(0x0, true, &[b'a'; 40], KEY));
    assert_eq!(
        decode_all(Role::Server, 64, &frags),
        err(1009, "message too big")
    );
    // A header that announces 2^63 bytes is refused from the header alone.
    let huge = [0x81, 0xFF, 0x7F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF];
    assert_eq!(
        decode_all(Role::Server, 64, &huge),
        err(1009, "message too big")
    );
    let bad_utf8 = client::text_frame(&[0xC3, 0x28], KEY);
    assert_eq!(
        decode_all(Role::Server, 64, &bad_utf8),
        err(1007, "text frame is not valid utf-8")
    );
    let rsv = [0xC1, 0x80, 0, 0, 0, 0];
    assert_eq!(
        decode_all(Role::Server, 64, &rsv),
        err(1002, "reserved bits set")
    );
    let cont = client::frame(0x0, true, b"x", KEY);
    assert_eq!(
        decode_all(Role::Server, 64, &cont),
        err(1002, "continuation without a message")
    );
    let frag_ping = client::frame(0x9, false, b"x", KEY);
    assert_eq!(
        decode_all(Role::Server, 64, &frag_ping),
        err(1002, "invalid control frame")
    );
    let op3 = client::frame(0x3, true, b"x", KEY);
    assert_eq!(
        decode_all(Role::Server, 64, &op3),
        err(1002, "unknown opcode")
    );
    // Regression (issue 10, finding 13): lengths in a longer form than
    // needed, and the 64-bit form's top bit.
    for header in [
        &[0x81u8, 0xFE, 0x00, 0x05][..],
        &[0x81, 0xFF, 0, 0, 0, 0, 0, 0, 0x00, 0x05],
        &[0x81, 0xFF, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF],
        &[0x81, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0x05],
    ] {
        let mut f = header.to_vec();
        f.extend_from_slice(&KEY);
        assert_eq!(
            decode_all(Role::Server, 1 << 20, &f),
            err(1002, "non-minimal length encoding"),
            "{header:?}"
        );
    }
    // Close codes that may not appear on the wire.
    for code in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000] {
        let mut body = code.to_be_bytes().to_vec();
        body.extend_from_slice(b"x");
        let f = client::frame(0x8, true, &body, KEY);
        assert_eq!(
            decode_all(Role::Server, 64, &f),
            err(1002, "invalid close code"),
            "{code}"
        );
    }
    for code in [1000u16, 1003, 1007, 1014, 3000, 4999] {
        let f = client::frame(0x8, true, &code.to_be_bytes(), KEY);
        assert_eq!(
            decode_all(Role::Server, 64, &f),
            vec![Ok(Message::Close(code, String::new()))]
        );
    }
}

#[test]
fn a_ping_between_fragments_does_not_count_towards_the_message() {
    // Regression (issue 10, finding 13): 60 of 64 bytes collected, then a
    // 10-byte ping, then the last 4 bytes: within the limit.
    let mut f = client::frame(0x1, false, &[b'a'; 60], KEY).to_vec();
    f.extend_from_slice(&client::frame(0x9, true, &[b'p'; 10], KEY));
    f.extend_from_slice(&client::frame(0x0, true, &[b'a'; 4], KEY));
    assert_eq!(
        decode_all(Role::Server, 64, &f),
        vec![
            Ok(Message::Ping(Bytes::from_static(&[b'p'; 10]))),
            Ok(text(&"a".repeat(64))),
        ]
    );
}

#[test]
fn binary_is_reported_not_rejected() {
    // The decoder reports binary messages; refusing them is client policy.
    let bin = client::frame(0x2, true, &[0, 159, 146, 150], KEY);
    assert_eq!(
        decode_all(Role::Server, 64, &bin),
        vec![Ok(Message::Binary(BytesMut::from(
            &[0u8, 159, 146, 150][..]
        )))]
    );
}

#[test]
fn close_reason_is_cut_at_a_char_boundary() {
    let reason = "é".repeat(100); // 200 bytes
    let frame = close_frame(1008, &reason);
    assert!(
        frame.len() <= 127,
        "control frame over 125 bytes of payload"
    );
    match &decode_all(Role::Client, 1024, &frame)[..] {
        [Ok(Message::Close(1008, r))] => assert_eq!(r.len(), 122),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn masking_handles_unaligned_tails() {
    for len in 0..9 {
        let mut data: Vec<u8> = (0..len as u8).collect();
        let orig = data.clone();
        apply_mask(&mut data, KEY);
        for (i, b) in data.iter().enumerate() {
            assert_eq!(*b, orig[i] ^ KEY[i % 4]);
        }
    }
}

#[test]
fn frame_in_place_matches_a_copied_client_frame() {
    for len in [0usize, 5, 125, 126, 65_535, 65_536, 100_000] {
        let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let mut buf = BytesMut::new();
        buf.resize(client::MAX_HEADER, 0);
        buf.extend_from_slice(&payload);
        let key = [1, 2, 3, 4];
        let in_place = client::frame_in_place(buf, opcode::BINARY, key);
        let copied = client::frame(opcode::BINARY, true, &payload, key);
        assert_eq!(in_place, copied, "len {len}");
        let mut d = Decoder::new(Role::Server, 1 << 20);
        let mut wire = BytesMut::from(&in_place[..]);
        assert_eq!(
            d.decode(&mut wire).unwrap(),
            Some(Message::Binary(BytesMut::from(&payload[..])))
        );
    }
}
