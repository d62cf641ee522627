//! AWX's own backplane messages (SPEC section 5), I/O-free: one JSON text
//! frame per event, in the 2020 form (`/websocket/broadcast/`) and the
//! 2022 form (`/websocket/relay/`), and the 2022 interest messages.

use serde::Deserialize;
use serde_json::value::RawValue;

/// Which AWX form a link speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Era {
    /// The dialer receives every local event of the dialed node as
    /// `{"group": g, "message": "<payload>"}`.
    Y2020,
    /// The dialed node sends `consumer.subscribe`/`unsubscribe`; the dialer
    /// pushes matching events wrapped as `internal.message`.
    Y2022,
}

/// Why an AWX message was not understood; the event is skipped and
/// counted, the link stays up (AWX logs and carries on the same way).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AwxError {
    #[error("not a JSON object with group and message: {0}")]
    Shape(String),
    #[error("message type {0:?} is not internal.message")]
    Type(String),
}

/// `{"group": g, "message": "<payload>"}` (2020).
pub fn broadcast_envelope(group: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + payload.len() / 8 + group.len() + 32);
    out.extend_from_slice(b"{\"group\": ");
    json_string(&mut out, group.as_bytes());
    out.extend_from_slice(b", \"message\": ");
    json_string(&mut out, payload);
    out.push(b'}');
    out
}

/// `{"group": g, "message": {"type": "internal.message", "text": "<payload>"}}` (2022).
pub fn relay_envelope(group: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + payload.len() / 8 + group.len() + 64);
    out.extend_from_slice(b"{\"group\": ");
    json_string(&mut out, group.as_bytes());
    out.extend_from_slice(b", \"message\": {\"type\": \"internal.message\", \"text\": ");
    json_string(&mut out, payload);
    out.extend_from_slice(b"}}");
    out
}

/// `{"type": "consumer.subscribe"|"consumer.unsubscribe", "groups": [...], "origin_channel": c}`.
pub fn consumer_message<'a>(
    subscribe: bool,
    groups: impl IntoIterator<Item = &'a str>,
    origin_channel: &str,
) -> String {
    let groups: Vec<&str> = groups.into_iter().collect();
    serde_json::json!({
        "type": if subscribe { "consumer.subscribe" } else { "consumer.unsubscribe" },
        "groups": groups,
        "origin_channel": origin_channel,
    })
    .to_string()
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    group: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    message: &'a RawValue,
}

#[derive(Deserialize)]
struct Wrapped<'a> {
    #[serde(rename = "type", borrow)]
    kind: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    text: &'a RawValue,
}

/// A received event: the group and the payload JSON text.
#[derive(Debug, PartialEq, Eq)]
pub struct AwxEvent {
    pub group: String,
    pub payload: String,
}

/// Decodes a pushed event of either era. The payload is a JSON string
/// holding the event's JSON text; an object in its place is taken as is.
pub fn decode_event(text: &[u8]) -> Result<AwxEvent, AwxError> {
    let shape = |e: serde_json::Error| AwxError::Shape(e.to_string());
    let env: Envelope<'_> = serde_json::from_slice(text).map_err(shape)?;
    let message = env.message.get();
    let payload_raw = if message.starts_with('{') {
        match serde_json::from_str::<Wrapped<'_>>(message) {
            Ok(w) if w.kind == "internal.message" => w.text,
            Ok(w) => return Err(AwxError::Type(w.kind.into_owned())),
            // An object that is not a wrapper is the payload itself.
            Err(_) => env.message,
        }
    } else {
        env.message
    };
    let payload = if payload_raw.get().starts_with('"') {
        serde_json::from_str::<String>(payload_raw.get()).map_err(shape)?
    } else {
        payload_raw.get().to_owned()
    };
    Ok(AwxEvent {
        group: env.group.into_owned(),
        payload,
    })
}

/// A `consumer.subscribe`/`unsubscribe` message (2022), or `None` for any
/// other message on the control direction.
#[derive(Debug, PartialEq, Eq)]
pub struct ConsumerChange {
    pub subscribe: bool,
    pub groups: Vec<String>,
}

pub fn decode_consumer(text: &[u8]) -> Result<Option<ConsumerChange>, AwxError> {
    #[derive(Deserialize)]
    struct Msg {
        #[serde(rename = "type")]
        kind: String,
        #[serde(default)]
        groups: Vec<String>,
    }
    let m: Msg = serde_json::from_slice(text).map_err(|e| AwxError::Shape(e.to_string()))?;
    Ok(match m.kind.as_str() {
        "consumer.subscribe" => Some(ConsumerChange {
            subscribe: true,
            groups: m.groups,
        }),
        "consumer.unsubscribe" => Some(ConsumerChange {
            subscribe: false,
            groups: m.groups,
        }),
        _ => None,
    })
}

/// Appends `bytes` (UTF-8 JSON text) as a JSON string literal.
fn json_string(out: &mut Vec<u8>, bytes: &[u8]) {
    out.push(b'"');
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if esc.is_empty() {
            out.extend_from_slice(format!("\\u{b:04x}").as_bytes());
        } else {
            out.extend_from_slice(esc);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAYLOAD: &str =
        "{\"stdout\": \"\\u001b[0;32mok: [h]\\u001b[0m\\n\", \"counter\": 3, \"uuid\": \"\u{e9}\"}";

    #[test]
    fn envelopes_parse_as_awx_sends_them() {
        let b = broadcast_envelope("job_events-1", PAYLOAD.as_bytes());
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["group"], "job_events-1");
        assert_eq!(v["message"].as_str().unwrap(), PAYLOAD);
        assert_eq!(
            decode_event(&b).unwrap(),
            AwxEvent {
                group: "job_events-1".into(),
                payload: PAYLOAD.into()
            }
        );
        let r = relay_envelope("g", PAYLOAD.as_bytes());
        let v: serde_json::Value = serde_json::from_slice(&r).unwrap();
        assert_eq!(v["message"]["type"], "internal.message");
        assert_eq!(v["message"]["text"].as_str().unwrap(), PAYLOAD);
        assert_eq!(decode_event(&r).unwrap().payload, PAYLOAD);
    }

    #[test]
    fn python_shaped_input_decodes() {
        // json.dumps({"group": "g", "message": json.dumps({"a": 1})})
        let py = br#"{"group": "g", "message": "{\"a\": 1}"}"#;
        assert_eq!(decode_event(py).unwrap().payload, r#"{"a": 1}"#);
        let other = br#"{"group": "g", "message": {"type": "x.y", "text": "1"}}"#;
        assert_eq!(decode_event(other), Err(AwxError::Type("x.y".into())));
        assert!(matches!(decode_event(b"[1]"), Err(AwxError::Shape(_))));
        assert!(matches!(
            decode_event(b"{\"group\": 1}"),
            Err(AwxError::Shape(_))
        ));
    }

    #[test]
    fn consumer_messages_round_trip() {
        let m = consumer_message(true, ["a", "b"], "wsrelay_n1");
        assert_eq!(
            decode_consumer(m.as_bytes()).unwrap(),
            Some(ConsumerChange {
                subscribe: true,
                groups: vec!["a".into(), "b".into()]
            })
        );
        let u = consumer_message(false, ["a"], "x");
        assert!(!decode_consumer(u.as_bytes()).unwrap().unwrap().subscribe);
        assert_eq!(decode_consumer(br#"{"type": "hello"}"#).unwrap(), None);
    }
}
