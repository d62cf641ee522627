//! Client authentication and authorization: who a websocket client is and
//! which groups it may join.
//!
//! - [`jwt`]: HS256 tokens checked locally (no I/O).
//! - [`api`]: AWX's own users: the session cookie or API token asked of
//!   AWX's `/api/v2/me/`, and per-object access asked of the object's URL;
//!   cached, coalesced, bounded, on its own thread.
//! - [`policy`]: the rules by group-name prefix (AWX's by default) that say
//!   which groups need an API check, which belong to one user, and which
//!   nobody may join. Pure.
//!
//! With both JWT and the API configured, a token is tried as a JWT first
//! and anything it does not accept goes to the API.

pub mod api;
pub mod jwt;
pub mod policy;

use std::sync::Arc;

pub use jwt::{mint_hs256, Jwt};

use crate::protocol::http::RequestHead;

/// Why a client was refused. The text goes into the close reason, so it is
/// short and never echoes a credential.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing token")]
    MissingToken,
    #[error("missing credentials: no session cookie or token")]
    MissingCredentials,
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    #[error("unsupported token algorithm")]
    UnsupportedAlgorithm,
    #[error("bad token signature")]
    BadSignature,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("token lacks claim {0}")]
    MissingClaim(&'static str),
    #[error("token sub is not a decimal user id")]
    InvalidSubject,
    /// AWX's API refused the session or token (401/403, or no user).
    #[error("invalid or expired credentials")]
    Refused,
    /// AWX's API could not answer; the client may retry later.
    #[error("authentication unavailable")]
    Unavailable(api::Unavailable),
}

impl AuthError {
    /// The close reason: `authentication unavailable` when the API could not
    /// answer (nothing is known about the client), else `authentication
    /// failed: <why>`.
    pub fn close_reason(&self) -> String {
        match self {
            AuthError::Unavailable(_) => "authentication unavailable".to_owned(),
            e => format!("authentication failed: {e}"),
        }
    }
}

/// An authenticated client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user_id: u64,
    /// Group patterns from a JWT's `groups` claim; `None` allows all.
    pub patterns: Option<Vec<String>>,
    /// The credentials AWX's API accepted, kept for per-object checks;
    /// `None` for JWT and dev-mode clients.
    pub api: Option<Arc<api::Credentials>>,
}

impl Identity {
    /// A client with no restriction of its own (policy rules still apply).
    pub fn anyone(user_id: u64) -> Identity {
        Identity {
            user_id,
            patterns: None,
            api: None,
        }
    }

    /// Whether this client's token lets it join `group`. A pattern ending
    /// in `*` matches every group starting with the rest; any other pattern
    /// must be equal.
    pub fn allows(&self, group: &str) -> bool {
        let Some(patterns) = &self.patterns else {
            return true;
        };
        patterns.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => group.starts_with(prefix),
            None => p == group,
        })
    }
}

/// How clients are authenticated: any of a local JWT check and AWX's API
/// (JWT first), or the loud development mode.
#[derive(Default)]
pub struct Authenticator {
    pub jwt: Option<Jwt>,
    pub api: Option<Arc<api::AwxApi>>,
    /// Any non-empty token is user 0 with access to every group. For local
    /// development only; the server logs a warning on every connection.
    pub dev_insecure: bool,
}

impl Authenticator {
    pub fn is_insecure(&self) -> bool {
        self.dev_insecure
    }

    /// Who the client behind `head` is, at time `now_unix` (seconds since
    /// the epoch).
    pub async fn authenticate(
        &self,
        head: &RequestHead,
        now_unix: u64,
    ) -> Result<Identity, AuthError> {
        let token = head
            .query_param("token")
            .or_else(|| head.bearer().map(str::to_owned))
            .filter(|t| !t.is_empty());
        if self.dev_insecure {
            return token
                .map(|_| Identity::anyone(0))
                .ok_or(AuthError::MissingToken);
        }
        let mut jwt_error = None;
        if let (Some(jwt), Some(token)) = (&self.jwt, &token) {
            match jwt.verify(token, now_unix) {
                Ok(identity) => return Ok(identity),
                Err(e) => jwt_error = Some(e),
            }
        }
        let Some(awx) = &self.api else {
            return Err(jwt_error.unwrap_or(AuthError::MissingToken));
        };
        let Some(creds) = api::Credentials::from_head(head) else {
            return Err(jwt_error.unwrap_or(AuthError::MissingCredentials));
        };
        match awx.identify(&creds).await {
            Ok(Some(user_id)) => Ok(Identity {
                user_id,
                patterns: None,
                api: Some(Arc::new(creds)),
            }),
            Ok(None) => Err(AuthError::Refused),
            Err(why) => Err(AuthError::Unavailable(why)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &str) -> RequestHead {
        crate::protocol::http::parse_head(raw.as_bytes(), 16 * 1024)
            .unwrap()
            .unwrap()
    }

    fn run<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn dev_insecure_needs_a_non_empty_token() {
        let a = Authenticator {
            dev_insecure: true,
            ..Authenticator::default()
        };
        let ok = head("GET /websocket/?token=anything HTTP/1.1\r\n\r\n");
        assert_eq!(run(a.authenticate(&ok, 0)), Ok(Identity::anyone(0)));
        let none = head("GET /websocket/ HTTP/1.1\r\n\r\n");
        assert_eq!(run(a.authenticate(&none, 0)), Err(AuthError::MissingToken));
    }

    #[test]
    fn jwt_alone_reports_its_own_error() {
        let a = Authenticator {
            jwt: Some(Jwt {
                secret: b"s".to_vec(),
                leeway_secs: 0,
            }),
            ..Authenticator::default()
        };
        let bad = head("GET /websocket/?token=x.y HTTP/1.1\r\n\r\n");
        assert_eq!(
            run(a.authenticate(&bad, 0)),
            Err(AuthError::Malformed("want three dot-separated parts"))
        );
        let cookie = head("GET /websocket/ HTTP/1.1\r\nCookie: sessionid=s\r\n\r\n");
        assert_eq!(
            run(a.authenticate(&cookie, 0)),
            Err(AuthError::MissingToken)
        );
    }

    #[test]
    fn close_reasons() {
        assert_eq!(
            AuthError::Unavailable(api::Unavailable::Timeout).close_reason(),
            "authentication unavailable"
        );
        assert_eq!(
            AuthError::Refused.close_reason(),
            "authentication failed: invalid or expired credentials"
        );
    }

    #[test]
    fn group_patterns() {
        let id = Identity {
            patterns: Some(vec!["job_events-*".into(), "jobs-status_changed".into()]),
            ..Identity::anyone(1)
        };
        assert!(id.allows("job_events-42"));
        assert!(id.allows("jobs-status_changed"));
        assert!(!id.allows("jobs-summary"));
        assert!(!id.allows("job_events"));
        assert!(Identity::anyone(1).allows("anything"));
    }
}
