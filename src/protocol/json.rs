//! A cheap check on JSON nesting, run before a recursive parser sees the
//! bytes. simd-json's value builder recurses once per level with no limit
//! of its own: 16,000 nested brackets in a 32 KB client message overflowed
//! a worker's stack and aborted the whole node. serde_json stops at 128
//! levels by itself; simd-json needs this guard.

/// Deepest nesting wsrelay parses in a client message. AWX's messages are
/// three levels deep (`{"groups": {"job_events": [42]}}`); 32 leaves room
/// for clients that add their own fields without letting anyone near the
/// stack.
pub const MAX_DEPTH: usize = 32;

/// Whether `text` nests arrays and objects deeper than `max` levels.
/// Brackets inside strings do not count; the scan is linear and stops at
/// the first level past `max`. Malformed JSON is the parser's business:
/// this only guarantees it will not recurse past `max`.
pub fn nests_deeper_than(text: &[u8], max: usize) -> bool {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in text {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, max: usize, expected: bool) {
        assert_eq!(nests_deeper_than(text.as_bytes(), max), expected, "{text}");
    }

    #[test]
    fn depth_counts_brackets_outside_strings() {
        check(r#"{"groups": {"job_events": [42]}}"#, 3, false);
        check(r#"{"groups": {"job_events": [42]}}"#, 2, true);
        check(r#"{"a": "[[[[[[[[[["}"#, 1, false);
        check(r#"{"a": "\"[[[[[[[[["}"#, 1, false);
        check(r#"{"a": "\\", "b": [[[1]]]}"#, 3, true);
        check(r#"[1], [2], [3]"#, 1, false);
        check("]]]]][[", 1, true);
        check(&"[".repeat(16_000), MAX_DEPTH, true);
        check(&("[".repeat(32) + &"]".repeat(32)), MAX_DEPTH, false);
        check(&("[".repeat(33) + &"]".repeat(33)), MAX_DEPTH, true);
    }
}
