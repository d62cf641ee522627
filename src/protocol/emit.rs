//! The HTTP producer body: `{"group": G, "payload": <any JSON>}` or an array
//! of them. Payload bytes are kept verbatim (serde_json's `RawValue` holds
//! the exact span of the body), so clients receive what the producer sent.

use serde::Deserialize;
use serde_json::value::RawValue;

/// Why an emit body was refused; the whole body is refused, never half.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EmitBodyError {
    #[error("invalid json: {0}")]
    Json(String),
    #[error("event {index}: group must be a non-empty string of at most {max} bytes")]
    BadGroup { index: usize, max: usize },
    #[error("body holds {count} events, limit {max}")]
    TooMany { count: usize, max: usize },
}

/// One event of a body, borrowing from it.
#[derive(Debug)]
pub struct EmitEvent<'a> {
    pub group: &'a str,
    pub payload: &'a [u8],
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Item<'a> {
    #[serde(borrow)]
    group: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    payload: &'a RawValue,
}

/// Parses and validates a whole body before anything is emitted.
pub fn parse(
    body: &[u8],
    max_group_name: usize,
    max_events: usize,
) -> Result<Vec<EmitEvent<'_>>, EmitBodyError> {
    // Dispatch on the first byte rather than with `#[serde(untagged)]`,
    // which buffers the input and so cannot hand out `RawValue` spans.
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    let parsed = match first {
        Some(b'[') => serde_json::from_slice::<Vec<Item<'_>>>(body),
        _ => serde_json::from_slice::<Item<'_>>(body).map(|item| vec![item]),
    };
    let items = parsed.map_err(|e| {
        let detail = if e.is_syntax() || e.is_eof() {
            e.to_string()
        } else {
            format!("want {{\"group\": string, \"payload\": json}} or an array of them ({e})")
        };
        EmitBodyError::Json(detail)
    })?;
    if items.len() > max_events {
        return Err(EmitBodyError::TooMany {
            count: items.len(),
            max: max_events,
        });
    }
    items
        .into_iter()
        .enumerate()
        .map(|(index, item)| {
            // A group with escapes would be an owned string; group names are
            // plain text, so refuse them rather than copy.
            let std::borrow::Cow::Borrowed(group) = item.group else {
                return Err(EmitBodyError::BadGroup {
                    index,
                    max: max_group_name,
                });
            };
            if group.is_empty() || group.len() > max_group_name {
                return Err(EmitBodyError::BadGroup {
                    index,
                    max: max_group_name,
                });
            }
            Ok(EmitEvent {
                group,
                payload: item.payload.get().as_bytes(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(body: &str, expected: Result<Vec<(&str, &str)>, EmitBodyError>) {
        let got = parse(body.as_bytes(), 16, 3).map(|events| {
            events
                .iter()
                .map(|e| (e.group, std::str::from_utf8(e.payload).unwrap()))
                .collect::<Vec<_>>()
        });
        assert_eq!(got, expected, "body: {body}");
    }

    #[test]
    fn payload_bytes_are_verbatim() {
        check(
            r#"{"group": "jobs-x", "payload": {"b": 1,   "a": [ 1.50, "\u00e9" ]}}"#,
            Ok(vec![("jobs-x", r#"{"b": 1,   "a": [ 1.50, "\u00e9" ]}"#)]),
        );
        check(
            r#"[{"group": "a", "payload": 1}, {"payload": "s", "group": "b"}]"#,
            Ok(vec![("a", "1"), ("b", "\"s\"")]),
        );
        check("[]", Ok(vec![]));
    }

    #[test]
    fn bad_bodies_are_refused_whole() {
        let shape = |body: &str, detail: &str| match parse(body.as_bytes(), 16, 3) {
            Err(EmitBodyError::Json(m)) => {
                assert!(m.starts_with("want {\"group\""), "{m}");
                assert!(m.contains(detail), "{m} lacks {detail}");
            }
            other => panic!("{body}: {other:?}"),
        };
        shape(r#"{"group": "a"}"#, "missing field `payload`");
        shape(r#"{"group": 5, "payload": 1}"#, "invalid type: integer");
        shape(
            r#"{"group": "a", "payload": 1, "extra": 2}"#,
            "unknown field `extra`",
        );
        shape(r#"5"#, "invalid type");
        check(
            r#"[{"group": "a", "payload": 1}, {"group": "", "payload": 1}]"#,
            Err(EmitBodyError::BadGroup { index: 1, max: 16 }),
        );
        check(
            r#"{"group": "a-very-long-group-name", "payload": 1}"#,
            Err(EmitBodyError::BadGroup { index: 0, max: 16 }),
        );
        check(
            r#"[{"group":"a","payload":1},{"group":"a","payload":1},{"group":"a","payload":1},{"group":"a","payload":1}]"#,
            Err(EmitBodyError::TooMany { count: 4, max: 3 }),
        );
        assert!(matches!(
            parse(b"{\"group\": \"a\", \"payload\": ", 16, 3),
            Err(EmitBodyError::Json(_))
        ));
        // Invalid UTF-8 inside a payload string never reaches a client.
        assert!(matches!(
            parse(b"{\"group\": \"a\", \"payload\": \"\xff\"}", 16, 3),
            Err(EmitBodyError::Json(_))
        ));
    }
}
