use super::*;

/// Made by Python's msgpack.packb(..., use_bin_type=True) after a 12-byte
/// prefix, exactly as channels_redis serialises (AWX 2022+ form).
const AWX_2022: &str = "000102030405060708090a0b84a474797065b0696e7465726e616c2e6d657373616765a474657874d92b7b22737461747573223a202272756e6e696e67222c2022756e69666965645f6a6f625f6964223a2034327dab6e656564735f72656c6179c3b05f5f617367695f6368616e6e656c5f5f91d92773706563696669632e777372656c61795f6e31216a6f62732d7374617475735f6368616e676564";
/// The 2020 form (no needs_relay), sent to two channels on one key.
const AWX_2020: &str = "00000000000000000000000083a474797065b0696e7465726e616c2e6d657373616765a474657874a87b2261223a20317db05f5f617367695f6368616e6e656c5f5f92d92073706563696669632e777372656c61795f6e31216a6f625f6576656e74732d37d92073706563696669632e777372656c61795f6e31216a6f625f6576656e74732d38";

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn check(member: &[u8], expected: Result<Message, Malformed>) {
    assert_eq!(decode(member, 12, 1.0, 60.0), expected);
}

/// msgpack of a map built here, after a 12-byte prefix.
fn packed(entries: Vec<(rmpv::Value, rmpv::Value)>) -> Vec<u8> {
    let mut out = vec![0u8; 12];
    rmpv::encode::write_value(&mut out, &rmpv::Value::Map(entries)).unwrap();
    out
}

fn s(v: &str) -> rmpv::Value {
    rmpv::Value::from(v)
}

#[test]
fn decodes_what_python_channels_redis_writes() {
    check(
        &hex(AWX_2022),
        Ok(Message {
            channels: vec!["specific.wsrelay_n1!jobs-status_changed".into()],
            text: Bytes::from_static(br#"{"status": "running", "unified_job_id": 42}"#),
            needs_relay: true,
        }),
    );
    check(
        &hex(AWX_2020),
        Ok(Message {
            channels: vec![
                "specific.wsrelay_n1!job_events-7".into(),
                "specific.wsrelay_n1!job_events-8".into(),
            ],
            text: Bytes::from_static(br#"{"a": 1}"#),
            needs_relay: false,
        }),
    );
}

#[test]
fn malformed_entries_are_named() {
    let chan = || {
        (
            s("__asgi_channel__"),
            rmpv::Value::Array(vec![s("specific.x!g")]),
        )
    };
    let typ = || (s("type"), s("internal.message"));
    check(&[0u8; 5], Err(Malformed::Short));
    check(
        &[[0u8; 12].as_slice(), &[0x85, 0xa4]].concat(),
        Err(Malformed::Msgpack),
    ); // cut short
    check(
        &[[0u8; 12].as_slice(), &[0x93, 1, 2, 3]].concat(),
        Err(Malformed::NotAMap),
    );
    check(
        &packed(vec![
            (s("type"), s("websocket.send")),
            (s("text"), s("x")),
            chan(),
        ]),
        Err(Malformed::UnknownType),
    );
    check(&packed(vec![typ(), chan()]), Err(Malformed::BadText));
    check(
        &packed(vec![typ(), (s("text"), rmpv::Value::from(5)), chan()]),
        Err(Malformed::BadText),
    );
    // A msgpack str (fixstr of 2) whose bytes are not UTF-8, by hand.
    let mut bad_utf8 = vec![0u8; 12];
    bad_utf8.push(0x83);
    for v in ["type", "internal.message", "text"] {
        rmpv::encode::write_value(&mut bad_utf8, &s(v)).unwrap();
    }
    bad_utf8.extend_from_slice(&[0xa2, 0xff, 0xfe]);
    let (k, v) = chan();
    rmpv::encode::write_value(&mut bad_utf8, &k).unwrap();
    rmpv::encode::write_value(&mut bad_utf8, &v).unwrap();
    check(&bad_utf8, Err(Malformed::TextNotUtf8));
    check(
        &packed(vec![typ(), (s("text"), s("{}"))]),
        Err(Malformed::BadChannels),
    );
    check(
        &packed(vec![
            typ(),
            (s("text"), s("{}")),
            (s("__asgi_channel__"), s("specific.x!g")),
        ]),
        Err(Malformed::BadChannels),
    );
    assert_eq!(
        decode(&hex(AWX_2022), 12, 61.0, 60.0),
        Err(Malformed::Expired)
    );
}

#[test]
fn names_and_ring_match_channels_redis() {
    let n = Naming::new("asgi", "node 1");
    assert_eq!(n.channel_base, "specific.wsrelay_node_1!");
    assert_eq!(
        n.group_key("jobs-status_changed"),
        "asgi:group:jobs-status_changed"
    );
    assert_eq!(
        n.channel("job_events-42"),
        "specific.wsrelay_node_1!job_events-42"
    );
    assert_eq!(n.channel_key(), "asgispecific.wsrelay_node_1!");
    assert_eq!(
        n.group_of("specific.wsrelay_node_1!job_events-42"),
        Some("job_events-42")
    );
    assert_eq!(n.group_of("specific.other!job_events-42"), None);
    assert_eq!(n.group_of("specific.wsrelay_node_1!"), None);
    // Values from Python: int((binascii.crc32(v) & 0xFFF) / (4096 / ring)).
    for (value, rings) in [
        ("asgi:group:jobs-status_changed", [0, 0, 0, 0]),
        ("specific.wsrelay_n1!", [0, 1, 2, 4]),
        ("job_events-42", [0, 0, 0, 1]),
        ("x", [0, 0, 1, 2]),
    ] {
        let got: Vec<usize> = [1, 2, 3, 5]
            .iter()
            .map(|&r| consistent_hash(value, r))
            .collect();
        assert_eq!(got, rings, "{value}");
    }
}
