//! Which groups a client may join: a table of rules by group-name prefix,
//! with AWX's defaults. Pure: the API lookups a rule asks for are made by
//! `auth::api`.

use std::fmt;

/// What one rule says about the groups under its prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    /// Any authenticated client.
    Allow,
    /// Nobody.
    Deny,
    /// Only the user whose decimal id is the rest of the name
    /// (`control-limit_reached_<uid>`).
    OwnUser,
    /// Ask AWX's API: `GET` this path (`{id}` replaced by the rest of the
    /// name, which must be a decimal id) with the client's credentials;
    /// 200 allows, 401/403/404 deny.
    Api(String),
}

impl Rule {
    pub fn parse(text: &str) -> Result<Rule, String> {
        match text.trim() {
            "allow" => Ok(Rule::Allow),
            "deny" => Ok(Rule::Deny),
            "user" => Ok(Rule::OwnUser),
            t if t.contains("{id}") && (t.starts_with('/') || t.starts_with("http")) => {
                Ok(Rule::Api(t.to_owned()))
            }
            t => Err(format!(
                "{t:?}: want allow, deny, user, or an API path containing {{id}} (e.g. /api/v2/jobs/{{id}}/)"
            )),
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rule::Allow => f.write_str("allow"),
            Rule::Deny => f.write_str("deny"),
            Rule::OwnUser => f.write_str("user"),
            Rule::Api(path) => f.write_str(path),
        }
    }
}

/// The answer for one group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Deny,
    /// Allowed if the API answers 200 for this path (with the client's
    /// credentials). Clients without API credentials (JWT) are governed by
    /// their token's `groups` claim instead.
    Ask(String),
}

/// Rules by prefix; the longest matching prefix decides, and `*` is the
/// rule for names no prefix matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Longest prefix first.
    rules: Vec<(String, Rule)>,
    fallback: Rule,
}

/// AWX's rules: `consumer_access` checks job, workflow job and ad hoc
/// command events per object; `control-limit_reached_<uid>` is meant for
/// that one user; and no client may join `broadcast-group_send`, the group
/// AWX's 2020 relay reads every event from (a client there would see every
/// group's events). Everything else is open to any authenticated user, as
/// in AWX.
pub const AWX_DEFAULTS: [(&str, &str); 6] = [
    ("job_events-", "/api/v2/jobs/{id}/"),
    ("workflow_events-", "/api/v2/workflow_jobs/{id}/"),
    ("ad_hoc_command_events-", "/api/v2/ad_hoc_commands/{id}/"),
    ("control-limit_reached_", "user"),
    ("broadcast-", "deny"),
    ("*", "allow"),
];

impl Default for Policy {
    fn default() -> Self {
        Policy::with(&[]).expect("the defaults parse")
    }
}

impl Policy {
    /// AWX's defaults with `entries` (prefix, rule text) laid over them: an
    /// entry for a prefix the defaults have replaces it.
    pub fn with(entries: &[(String, String)]) -> Result<Policy, String> {
        let mut table: Vec<(String, Rule)> = Vec::new();
        let defaults = AWX_DEFAULTS.iter().map(|(p, r)| (*p, *r));
        let given = entries.iter().map(|(p, r)| (p.as_str(), r.as_str()));
        for (prefix, text) in defaults.chain(given) {
            if prefix.is_empty() {
                return Err("an access prefix must not be empty (use \"*\" for the rest)".into());
            }
            let rule = Rule::parse(text).map_err(|e| format!("access {prefix:?}: {e}"))?;
            table.retain(|(p, _)| p != prefix);
            table.push((prefix.to_owned(), rule));
        }
        let fallback = table
            .iter()
            .position(|(p, _)| p == "*")
            .map(|i| table.remove(i).1)
            .unwrap_or(Rule::Allow);
        table.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        Ok(Policy {
            rules: table,
            fallback,
        })
    }

    /// The rules in force, longest prefix first, then `*`.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &Rule)> {
        self.rules
            .iter()
            .map(|(p, r)| (p.as_str(), r))
            .chain(std::iter::once(("*", &self.fallback)))
    }

    /// What `user_id` may do with `group`.
    pub fn decide(&self, group: &str, user_id: u64) -> Decision {
        let (rest, rule) = self
            .rules
            .iter()
            .find_map(|(p, r)| group.strip_prefix(p.as_str()).map(|rest| (rest, r)))
            .unwrap_or((group, &self.fallback));
        match rule {
            Rule::Allow => Decision::Allow,
            Rule::Deny => Decision::Deny,
            Rule::OwnUser if rest == user_id.to_string() => Decision::Allow,
            Rule::OwnUser => Decision::Deny,
            // Only a decimal id goes into a URL: nothing a client sends can
            // change the path or reach another endpoint.
            Rule::Api(template) if is_object_id(rest) => {
                Decision::Ask(template.replace("{id}", rest))
            }
            Rule::Api(_) => Decision::Deny,
        }
    }
}

/// An object id: decimal digits only (AWX's ids are integers), short
/// enough for a u64.
fn is_object_id(s: &str) -> bool {
    (1..=19).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(policy: &Policy, group: &str, user: u64, expected: Decision) {
        assert_eq!(
            policy.decide(group, user),
            expected,
            "{group} for user {user}"
        );
    }

    #[test]
    fn awx_defaults() {
        let p = Policy::default();
        check(
            &p,
            "job_events-42",
            1,
            Decision::Ask("/api/v2/jobs/42/".into()),
        );
        check(
            &p,
            "workflow_events-7",
            1,
            Decision::Ask("/api/v2/workflow_jobs/7/".into()),
        );
        check(
            &p,
            "ad_hoc_command_events-9",
            1,
            Decision::Ask("/api/v2/ad_hoc_commands/9/".into()),
        );
        check(&p, "job_events-../../me", 1, Decision::Deny);
        check(&p, "job_events-4%2F2", 1, Decision::Deny);
        check(
            &p,
            "job_events-0",
            1,
            Decision::Ask("/api/v2/jobs/0/".into()),
        );
        check(&p, "job_events-12345678901234567890", 1, Decision::Deny);
        check(&p, "job_events-", 1, Decision::Deny);
        check(&p, "control-limit_reached_5", 5, Decision::Allow);
        check(&p, "control-limit_reached_5", 6, Decision::Deny);
        check(&p, "control-limit_reached_55", 5, Decision::Deny);
        check(&p, "broadcast-group_send", 1, Decision::Deny);
        check(&p, "jobs-status_changed", 1, Decision::Allow);
        check(&p, "project_update_events-3", 1, Decision::Allow);
    }

    #[test]
    fn entries_extend_and_replace_the_defaults() {
        let p = Policy::with(&[
            (
                "project_update_events-".into(),
                "/api/v2/project_updates/{id}/".into(),
            ),
            ("job_events-".into(), "allow".into()),
            ("*".into(), "deny".into()),
            ("jobs-".into(), "allow".into()),
        ])
        .unwrap();
        check(
            &p,
            "project_update_events-3",
            1,
            Decision::Ask("/api/v2/project_updates/3/".into()),
        );
        check(&p, "job_events-42", 1, Decision::Allow);
        check(&p, "jobs-status_changed", 1, Decision::Allow);
        check(&p, "schedules-changed", 1, Decision::Deny);
        // The longest prefix decides.
        let p = Policy::with(&[("job".into(), "deny".into())]).unwrap();
        check(&p, "jobs-summary", 1, Decision::Deny);
        check(
            &p,
            "job_events-1",
            1,
            Decision::Ask("/api/v2/jobs/1/".into()),
        );
    }

    #[test]
    fn bad_rules_are_refused_with_the_reason() {
        for (prefix, rule, why) in [
            (
                "x-",
                "maybe",
                "access \"x-\": \"maybe\": want allow, deny, user",
            ),
            (
                "x-",
                "/api/v2/x/",
                "want allow, deny, user, or an API path containing {id}",
            ),
            ("", "allow", "an access prefix must not be empty"),
        ] {
            let err = Policy::with(&[(prefix.into(), rule.into())]).unwrap_err();
            assert!(err.contains(why), "{err}");
        }
    }
}
