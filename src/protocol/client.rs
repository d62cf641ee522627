//! The AWX client protocol (SPEC section 2): what a client's text message
//! asks for and the JSON wsrelay answers with. Pure functions; the driver
//! applies the plan to the fan-out tables and sends the replies.

use std::collections::BTreeSet;

use simd_json::prelude::*;
use simd_json::BorrowedValue;

use super::json;
use crate::auth::policy::{Decision, Policy};
use crate::auth::Identity;

/// AWX's reply to a bad `xrftoken` or a non-list group value.
pub const ACCESS_DENIED: &str = "access denied to channel";

/// Bounds on what one client may ask for.
#[derive(Debug, Clone, Copy)]
pub struct GroupLimits {
    /// Groups one connection may hold at once.
    pub max_groups: usize,
    /// Longest accepted group name in bytes.
    pub max_group_name: usize,
    /// Groups in one message that may need an API access check.
    pub max_access_checks: usize,
}

/// What the connection knows about its client when a message arrives.
#[derive(Debug, Clone, Copy)]
pub struct Session<'a> {
    pub identity: &'a Identity,
    /// The `csrftoken` cookie of the upgrade request; when present, every
    /// message must carry an equal `xrftoken` (AWX's rule).
    pub csrf_cookie: Option<&'a str>,
}

/// What to do with one client text message.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// `{"error": ...}` texts to send first, in order.
    pub errors: Vec<String>,
    /// The complete new subscription set, when the message replaces it.
    pub subscribe: Option<BTreeSet<String>>,
    /// Groups in `subscribe` that stay only if AWX's API allows them
    /// (clients authenticated by the API; see `auth::policy`).
    pub checks: Vec<AccessCheck>,
}

/// One per-object question for AWX's API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessCheck {
    /// The group as the client named it: `kind-id`.
    pub group: String,
    pub kind: String,
    pub id: String,
    /// The API path whose 200 allows it.
    pub path: String,
}

impl AccessCheck {
    /// AWX's answer when the API says no.
    pub fn denial(&self) -> String {
        denial(&self.kind, &self.id)
    }
}

/// AWX's per-object denial text.
fn denial(kind: &str, id: &str) -> String {
    format!("access denied to channel {kind} for resource id {id}")
}

impl Plan {
    fn error(text: impl Into<String>) -> Self {
        Plan {
            errors: vec![text.into()],
            ..Plan::default()
        }
    }
}

/// Plans the answer to a client text message. `text` is parsed in place.
pub fn plan(text: &mut [u8], session: Session<'_>, limits: GroupLimits, policy: &Policy) -> Plan {
    // Before simd-json recurses into it (see `json`).
    if json::nests_deeper_than(text, json::MAX_DEPTH) {
        return Plan::error(format!(
            "json nested deeper than {} levels",
            json::MAX_DEPTH
        ));
    }
    let value = match simd_json::to_borrowed_value(text) {
        Ok(v) => v,
        Err(_) => return Plan::error("invalid json"),
    };
    let Some(msg) = value.as_object() else {
        return Plan::error("message must be a json object");
    };
    if let Some(cookie) = session.csrf_cookie {
        let xrf = msg.get("xrftoken").and_then(|v| v.as_str());
        if !matches!(xrf, Some(t) if constant_time_eq(t.as_bytes(), cookie.as_bytes())) {
            return Plan::error(ACCESS_DENIED);
        }
    }
    let Some(groups) = msg.get("groups") else {
        // AWX ignores messages without `groups`.
        return Plan::default();
    };
    let Some(groups) = groups.as_object() else {
        return Plan::error("groups must be an object");
    };
    // Validate every value before touching anything: AWX answers a non-list
    // mid-way and loses track of the subscriptions; wsrelay keeps them.
    if groups.values().any(|v| v.as_array().is_none()) {
        return Plan::error(ACCESS_DENIED);
    }
    let mut plan = Plan::default();
    let mut target = BTreeSet::new();
    for (kind, ids) in groups.iter() {
        for id in ids.as_array().into_iter().flatten() {
            let Some(id) = group_id(id) else {
                plan.errors.push(format!(
                    "invalid resource id for channel {kind}: want an integer or a string"
                ));
                continue;
            };
            let name = format!("{kind}-{id}");
            if name.len() > limits.max_group_name {
                plan.errors.push(format!(
                    "group name longer than {} bytes",
                    limits.max_group_name
                ));
                continue;
            }
            if !session.identity.allows(&name) {
                plan.errors.push(denial(kind, &id));
                continue;
            }
            match policy.decide(&name, session.identity.user_id) {
                Decision::Allow => {}
                Decision::Deny => {
                    plan.errors.push(denial(kind, &id));
                    continue;
                }
                // A JWT client's `groups` claim is its access list; only
                // clients AWX's API vouched for are asked about objects.
                Decision::Ask(path) => {
                    if session.identity.api.is_some() && !target.contains(&name) {
                        plan.checks.push(AccessCheck {
                            group: name.clone(),
                            kind: kind.to_string(),
                            id,
                            path,
                        });
                    }
                }
            }
            target.insert(name);
        }
    }
    if target.len() > limits.max_groups {
        return Plan::error(format!(
            "too many groups: {} requested, limit {}",
            target.len(),
            limits.max_groups
        ));
    }
    if plan.checks.len() > limits.max_access_checks {
        return Plan::error(format!(
            "too many groups needing an access check: {} requested, limit {}",
            plan.checks.len(),
            limits.max_access_checks
        ));
    }
    plan.subscribe = Some(target);
    plan
}

/// Integers in decimal, strings as they are (AWX's `'{}-{}'.format`).
fn group_id(v: &BorrowedValue<'_>) -> Option<String> {
    if let Some(s) = v.as_str() {
        return Some(s.to_owned());
    }
    if let Some(n) = v.as_i64() {
        return Some(n.to_string());
    }
    v.as_u64().map(|n| n.to_string())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The first message after a successful upgrade.
pub fn accept_message(user_id: u64) -> String {
    format!(r#"{{"accept": true, "user": {user_id}}}"#)
}

/// Sent before closing an unauthenticated client (the AWX UI relies on it).
pub const CLOSE_MESSAGE: &str = r#"{"close": true}"#;

/// `{"error": "<text>"}`.
pub fn error_message(text: &str) -> String {
    serde_json::json!({ "error": text }).to_string()
}

/// Most errors listed in one reply.
pub const MAX_LISTED_ERRORS: usize = 16;

/// The one reply to a message's errors: AWX's `{"error": "<text>"}` for a
/// single error; for several, the first as `error` and up to
/// `MAX_LISTED_ERRORS` of them in `errors`, with `errors_omitted` counting
/// the rest. The reply stays small whatever the message named.
pub fn errors_message(errors: &[String]) -> String {
    match errors {
        [] => String::new(),
        [one] => error_message(one),
        [first, ..] => {
            let listed = &errors[..errors.len().min(MAX_LISTED_ERRORS)];
            let mut v = serde_json::json!({ "error": first, "errors": listed });
            if errors.len() > listed.len() {
                v["errors_omitted"] = (errors.len() - listed.len()).into();
            }
            v.to_string()
        }
    }
}

/// Told to a `drop-oldest` client in place of the events it lost.
pub fn dropped_message(count: u64) -> String {
    format!(r#"{{"dropped": {count}}}"#)
}

/// The reply to a `groups` message.
pub fn groups_reply<'a>(
    current: impl IntoIterator<Item = &'a str>,
    left: impl IntoIterator<Item = &'a str>,
    joined: impl IntoIterator<Item = &'a str>,
) -> String {
    let list = |it: &mut dyn Iterator<Item = &'a str>| it.collect::<Vec<_>>();
    serde_json::json!({
        "groups_current": list(&mut current.into_iter()),
        "groups_left": list(&mut left.into_iter()),
        "groups_joined": list(&mut joined.into_iter()),
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: GroupLimits = GroupLimits {
        max_groups: 4,
        max_group_name: 32,
        max_access_checks: 2,
    };

    fn anyone() -> Identity {
        Identity::anyone(1)
    }

    fn check_with(identity: &Identity, cookie: Option<&str>, input: &str, expected: Plan) {
        let mut bytes = input.as_bytes().to_vec();
        let session = Session {
            identity,
            csrf_cookie: cookie,
        };
        assert_eq!(
            plan(&mut bytes, session, LIMITS, &Policy::default()),
            expected,
            "input: {input}"
        );
    }

    fn check(input: &str, expected: Plan) {
        check_with(&anyone(), None, input, expected);
    }

    fn subscribe(groups: &[&str], errors: &[&str]) -> Plan {
        Plan {
            errors: errors.iter().map(|s| s.to_string()).collect(),
            subscribe: Some(groups.iter().map(|s| s.to_string()).collect()),
            checks: Vec::new(),
        }
    }

    #[test]
    fn groups_messages() {
        check(
            r#"{"groups": {"jobs": ["status_changed"], "job_events": [42, 43]}, "xrftoken": "x"}"#,
            subscribe(
                &["jobs-status_changed", "job_events-42", "job_events-43"],
                &[],
            ),
        );
        check(r#"{"groups": {}}"#, subscribe(&[], &[]));
        check(r#"{"groups": {"jobs": []}}"#, subscribe(&[], &[]));
        check(r#"{"xrftoken": "abc"}"#, Plan::default());
        check(
            r#"{"groups": {"jobs": [1, 2.5, true, "x"]}}"#,
            subscribe(
                &["jobs-1", "jobs-x"],
                &[
                    "invalid resource id for channel jobs: want an integer or a string",
                    "invalid resource id for channel jobs: want an integer or a string",
                ],
            ),
        );
        check(
            r#"{"groups": {"a": ["0123456789012345678901234567890123456789"]}}"#,
            subscribe(&[], &["group name longer than 32 bytes"]),
        );
    }

    #[test]
    fn bad_messages_change_nothing() {
        check("not json", Plan::error("invalid json"));
        check("[1, 2]", Plan::error("message must be a json object"));
        let deep = "[".repeat(16_000) + &"]".repeat(16_000);
        check(&deep, Plan::error("json nested deeper than 32 levels"));
        check(
            r#"{"groups": [1]}"#,
            Plan::error("groups must be an object"),
        );
        check(
            r#"{"groups": {"jobs": ["status_changed"], "job_events": 42}}"#,
            Plan::error(ACCESS_DENIED),
        );
        check(
            r#"{"groups": {"g": [1, 2, 3, 4, 5]}}"#,
            Plan::error("too many groups: 5 requested, limit 4"),
        );
    }

    #[test]
    fn per_resource_denial() {
        let limited = Identity {
            patterns: Some(vec!["job_events-4*".into()]),
            ..Identity::anyone(3)
        };
        check_with(
            &limited,
            None,
            r#"{"groups": {"job_events": [42, 7], "jobs": ["status_changed"]}}"#,
            subscribe(
                &["job_events-42"],
                &[
                    "access denied to channel job_events for resource id 7",
                    "access denied to channel jobs for resource id status_changed",
                ],
            ),
        );
    }

    #[test]
    fn policy_rules_apply_to_every_client() {
        // AWX's defaults: nobody joins the relay's broadcast group, and a
        // user's control group is that user's alone.
        check(
            r#"{"groups": {"broadcast": ["group_send"], "control": ["limit_reached_1", "limit_reached_2"]}}"#,
            subscribe(
                &["control-limit_reached_1"],
                &[
                    "access denied to channel broadcast for resource id group_send",
                    "access denied to channel control for resource id limit_reached_2",
                ],
            ),
        );
    }

    #[test]
    fn api_clients_get_object_checks_planned() {
        let creds = crate::protocol::http::parse_head(
            b"GET / HTTP/1.1\r\nCookie: sessionid=s\r\n\r\n",
            1024,
        )
        .unwrap()
        .unwrap();
        let api_user = Identity {
            api: crate::auth::api::Credentials::from_head(&creds).map(std::sync::Arc::new),
            ..Identity::anyone(1)
        };
        let check_of = |id: &str| AccessCheck {
            group: format!("job_events-{id}"),
            kind: "job_events".into(),
            id: id.into(),
            path: format!("/api/v2/jobs/{id}/"),
        };
        check_with(
            &api_user,
            None,
            r#"{"groups": {"job_events": [42, "x", 42], "jobs": ["status_changed"]}}"#,
            Plan {
                errors: vec!["access denied to channel job_events for resource id x".into()],
                subscribe: Some(
                    ["job_events-42", "jobs-status_changed"]
                        .map(String::from)
                        .into(),
                ),
                checks: vec![check_of("42")],
            },
        );
        check_with(
            &api_user,
            None,
            r#"{"groups": {"job_events": [1, 2, 3]}}"#,
            Plan::error("too many groups needing an access check: 3 requested, limit 2"),
        );
        // A JWT client is governed by its token's claim instead.
        check(
            r#"{"groups": {"job_events": [1, 2, 3]}}"#,
            subscribe(&["job_events-1", "job_events-2", "job_events-3"], &[]),
        );
    }

    #[test]
    fn xrftoken_rule_applies_only_with_a_cookie() {
        let id = anyone();
        let msg = r#"{"groups": {"jobs": ["x"]}, "xrftoken": "tok"}"#;
        check_with(&id, Some("tok"), msg, subscribe(&["jobs-x"], &[]));
        check_with(&id, Some("other"), msg, Plan::error(ACCESS_DENIED));
        check_with(
            &id,
            Some("tok"),
            r#"{"groups": {"jobs": ["x"]}}"#,
            Plan::error(ACCESS_DENIED),
        );
        check_with(
            &id,
            None,
            r#"{"groups": {"jobs": ["x"]}}"#,
            subscribe(&["jobs-x"], &[]),
        );
    }

    #[test]
    fn reply_shapes() {
        assert_eq!(accept_message(42), r#"{"accept": true, "user": 42}"#);
        assert_eq!(
            groups_reply(["a", "b"], ["c"], ["b"]),
            r#"{"groups_current":["a","b"],"groups_joined":["b"],"groups_left":["c"]}"#
        );
        assert_eq!(error_message("x \"y\""), r#"{"error":"x \"y\""}"#);
        assert_eq!(errors_message(&["a".into()]), r#"{"error":"a"}"#);
        assert_eq!(
            errors_message(&["a".into(), "b".into()]),
            r#"{"error":"a","errors":["a","b"]}"#
        );
        let many: Vec<String> = (0..20).map(|i| i.to_string()).collect();
        let v: serde_json::Value = serde_json::from_str(&errors_message(&many)).unwrap();
        assert_eq!(v["errors"].as_array().unwrap().len(), MAX_LISTED_ERRORS);
        assert_eq!(v["errors_omitted"], 4);
    }
}
