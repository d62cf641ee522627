//! The producer's stamp in each payload (`{"emitted_ns": T, "counter": N,
//! ...`), read without parsing the rest of the JSON.

/// `(counter, emitted_ns)` of a payload that starts with the stamp.
pub fn read(text: &[u8]) -> Option<(u64, u64)> {
    let rest = text.strip_prefix(b"{\"emitted_ns\":")?;
    let (ns, n) = digits(rest)?;
    let rest = rest[n..].strip_prefix(b",\"counter\":")?;
    let (seq, _) = digits(rest)?;
    Some((seq, ns))
}

fn digits(s: &[u8]) -> Option<(u64, usize)> {
    let n = s.iter().take_while(|b| b.is_ascii_digit()).count();
    if n == 0 || n > 19 {
        return None;
    }
    let v = s[..n]
        .iter()
        .fold(0u64, |acc, b| acc * 10 + u64::from(b - b'0'));
    Some((v, n))
}

/// A payload of about `size` bytes carrying the stamp.
pub fn payload(counter: u64, emitted_ns: u64, size: usize) -> String {
    let head = format!(r#"{{"emitted_ns":{emitted_ns},"counter":{counter},"pad":""#);
    let pad = size.saturating_sub(head.len() + 2);
    let mut s = String::with_capacity(size);
    s.push_str(&head);
    s.extend(std::iter::repeat_n('x', pad));
    s.push_str("\"}");
    s
}

pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_size() {
        for size in [64usize, 512, 2048] {
            let p = payload(42, 1_700_000_000_123_456_789, size);
            assert_eq!(p.len(), size.max(p.len()));
            assert!(p.len() <= size.max(60));
            serde_json::from_str::<serde_json::Value>(&p).expect("json");
            assert_eq!(read(p.as_bytes()), Some((42, 1_700_000_000_123_456_789)));
        }
    }

    #[test]
    fn refuses_what_is_not_a_stamp() {
        for bad in [
            &b"{\"accept\": true}"[..],
            b"{\"emitted_ns\":,\"counter\":1}",
            b"{\"emitted_ns\":1}",
            b"",
        ] {
            assert_eq!(read(bad), None);
        }
        assert_eq!(
            read(b"{\"emitted_ns\":99999999999999999999,\"counter\":1}"),
            None
        );
    }
}
