//! wsrelay's native Redis Streams format, I/O-free: producers `XADD` to a
//! stream key with fields `group` and `payload`; this checks an entry and
//! yields the event.

use bytes::Bytes;

/// Why a stream entry was skipped. Label values of
/// `wsrelay_stream_skipped_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadEntry {
    #[error("missing group field")]
    MissingGroup,
    #[error("group is empty, too long or not utf-8")]
    BadGroup,
    #[error("missing payload field")]
    MissingPayload,
    #[error("payload is not utf-8 json")]
    BadPayload,
}

impl BadEntry {
    pub const ALL: [BadEntry; 4] = [
        BadEntry::MissingGroup,
        BadEntry::BadGroup,
        BadEntry::MissingPayload,
        BadEntry::BadPayload,
    ];

    pub fn label(self) -> &'static str {
        match self {
            BadEntry::MissingGroup => "missing_group",
            BadEntry::BadGroup => "bad_group",
            BadEntry::MissingPayload => "missing_payload",
            BadEntry::BadPayload => "bad_payload",
        }
    }
}

/// One entry's field/value pairs, as `XREADGROUP` returns them.
pub type Fields = Vec<(Vec<u8>, Vec<u8>)>;

/// Checks one entry's field/value pairs. The payload must be JSON text (the
/// AWX UI parses every message); it is delivered verbatim.
pub fn event(fields: &[(Vec<u8>, Vec<u8>)], max_group: usize) -> Result<(String, Bytes), BadEntry> {
    let get = |name: &[u8]| fields.iter().find(|(k, _)| k == name).map(|(_, v)| v);
    let group = get(b"group").ok_or(BadEntry::MissingGroup)?;
    let group = std::str::from_utf8(group)
        .ok()
        .filter(|g| !g.is_empty() && g.len() <= max_group)
        .ok_or(BadEntry::BadGroup)?;
    let payload = get(b"payload").ok_or(BadEntry::MissingPayload)?;
    // UTF-8 first: serde_json does not check it inside strings it skips.
    let valid = std::str::from_utf8(payload).is_ok()
        && serde_json::from_slice::<serde::de::IgnoredAny>(payload).is_ok();
    if !valid {
        return Err(BadEntry::BadPayload);
    }
    Ok((group.to_owned(), Bytes::copy_from_slice(payload)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(fields: &[(&str, &[u8])], expected: Result<(&str, &str), BadEntry>) {
        let fields: Vec<(Vec<u8>, Vec<u8>)> = fields
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.to_vec()))
            .collect();
        let got = event(&fields, 16);
        let got = got
            .as_ref()
            .map(|(g, p)| (g.as_str(), std::str::from_utf8(p).unwrap()))
            .map_err(|e| *e);
        assert_eq!(got, expected);
    }

    #[test]
    fn entries() {
        check(
            &[("group", b"jobs-x"), ("payload", br#"{"a":  1}"#)],
            Ok(("jobs-x", r#"{"a":  1}"#)),
        );
        check(
            &[("payload", b"1"), ("group", b"g"), ("extra", b"x")],
            Ok(("g", "1")),
        );
        check(&[("payload", b"1")], Err(BadEntry::MissingGroup));
        check(
            &[("group", b""), ("payload", b"1")],
            Err(BadEntry::BadGroup),
        );
        check(
            &[("group", b"a-group-name-too-long"), ("payload", b"1")],
            Err(BadEntry::BadGroup),
        );
        check(
            &[("group", &[0xff]), ("payload", b"1")],
            Err(BadEntry::BadGroup),
        );
        check(&[("group", b"g")], Err(BadEntry::MissingPayload));
        check(
            &[("group", b"g"), ("payload", b"{nope")],
            Err(BadEntry::BadPayload),
        );
        check(
            &[("group", b"g"), ("payload", &[b'"', 0xff, b'"'])],
            Err(BadEntry::BadPayload),
        );
    }
}
