//! Test traffic for `demo` and the load tester: payloads shaped like AWX's
//! events, each opening with a stamp (`{"emitted_ns":T,"counter":N,...`)
//! that a receiver reads without parsing the rest of the JSON.

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

/// A playbook event with AWX's `job_events-<id>` keys (SPEC section 3):
/// ANSI-coloured stdout, event_data, and padding in stdout up to `size`.
/// The keys alone take about 740 bytes; smaller sizes get just the keys.
pub fn job_event(job: usize, counter: u64, emitted_ns: u64, size: usize) -> String {
    let head = format!(
        concat!(
            r#"{{"emitted_ns":{ns},"counter":{c},"id":{id},"job":{job},"group_name":"job_events","#,
            r#""created":"2026-11-25T10:00:00.000000Z","modified":"2026-11-25T10:00:00.000000Z","#,
            r#""url":"/api/v2/job_events/{id}/","uuid":"6c9c3c0e-2f9a-4c7b-9a1e-{c:012}","#,
            r#""parent_uuid":"0242ac12-0002-1c3b-6a1c-{job:012}","event":"runner_on_ok","#,
            r#""event_level":3,"failed":false,"changed":true,"play":"Configure web tier","#,
            r#""role":"nginx","task":"Render site configuration","start_line":{c},"end_line":{c1},"#,
            r#""event_data":{{"host":"web-{h:03}.example.internal","task_action":"ansible.builtin.template","#,
            r#""res":{{"changed":true,"dest":"/etc/nginx/sites-enabled/site-{c}.conf","mode":"0644"}}}},"#,
            r#""stdout":"\u001b[0;33mchanged: [web-{h:03}.example.internal] => (item=site-{c})\u001b[0m"#
        ),
        ns = emitted_ns,
        c = counter,
        c1 = counter + 1,
        id = job as u64 * 1_000_000_000 + counter,
        job = job,
        h = counter % 250,
    );
    let pad = size.saturating_sub(head.len() + 2);
    let mut s = String::with_capacity(head.len() + pad + 2);
    s.push_str(&head);
    s.extend(std::iter::repeat_n(' ', pad));
    s.push_str("\"}");
    s
}

/// A `jobs-status_changed` payload.
pub fn status_event(job: usize, counter: u64, emitted_ns: u64) -> String {
    format!(
        r#"{{"emitted_ns":{emitted_ns},"counter":{counter},"unified_job_id":{job},"status":"running","type":"job","group_name":"jobs","instance_group_name":"default"}}"#
    )
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
    fn awx_shaped_payloads() {
        assert!(
            job_event(7, 42, 123, 100).len() < 800,
            "no padding below the keys' size"
        );
        for size in [1024usize, 2048, 5120] {
            let e = job_event(7, 42, 123, size);
            assert_eq!(e.len(), size, "padded to size");
            let v: serde_json::Value = serde_json::from_str(&e).expect("json");
            for key in [
                "id",
                "job",
                "created",
                "modified",
                "group_name",
                "url",
                "stdout",
                "counter",
                "uuid",
                "parent_uuid",
                "start_line",
                "end_line",
                "event",
                "event_data",
                "failed",
                "changed",
                "event_level",
                "play",
                "role",
                "task",
            ] {
                assert!(v.get(key).is_some(), "missing {key}");
            }
            assert!(
                v["stdout"].as_str().unwrap().contains('\u{1b}'),
                "ANSI colours"
            );
            assert_eq!(read(e.as_bytes()), Some((42, 123)));
        }
        let s = status_event(3, 9, 77);
        serde_json::from_str::<serde_json::Value>(&s).expect("json");
        assert_eq!(read(s.as_bytes()), Some((9, 77)));
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
