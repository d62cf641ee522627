//! AWX's API as the authority on identity and access: who a session cookie
//! or token belongs to (`GET /api/v2/me/`) and whether that user may see an
//! object (`GET /api/v2/jobs/<id>/`, per `policy`).
//!
//! Answers are cached, bounded in entries and expiring (accepted answers
//! for `auth_cache_ttl`, refusals for the shorter `auth_refusal_ttl`), and
//! concurrent lookups of one key coalesce into one request: a thousand tabs
//! of one browser session cost one API call. Requests run on their own
//! thread, each bounded by `auth_timeout` (queueing included) and at most
//! `auth_max_inflight` at once, so a slow or absent API refuses *new*
//! clients with `authentication unavailable` and never touches connected
//! ones. Nothing here logs or caches a credential in clear: cache keys are
//! SHA-256 digests.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::future::Cache;
use moka::Expiry;
use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, COOKIE};
use reqwest::{StatusCode, Url};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::metrics::AuthMetrics;
use crate::protocol::http::RequestHead;

/// Largest API answer read; AWX's `/api/v2/me/` is a couple of KiB.
const MAX_ANSWER_BYTES: usize = 256 * 1024;
/// Lookups waiting for the API thread at most; past it, new clients are
/// refused as `authentication unavailable` at once.
const QUEUE: usize = 4096;

/// Why the API could not answer; label values of
/// `wsrelay_auth_unavailable_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Unavailable {
    #[error("the API did not answer within the timeout")]
    Timeout,
    #[error("cannot connect to the API")]
    Connect,
    #[error("the API answered with an unexpected status")]
    Status,
    #[error("the API's answer was not understood")]
    BadAnswer,
    #[error("too many lookups waiting")]
    Overloaded,
}

impl Unavailable {
    pub const ALL: [Unavailable; 5] = [
        Unavailable::Timeout,
        Unavailable::Connect,
        Unavailable::Status,
        Unavailable::BadAnswer,
        Unavailable::Overloaded,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Unavailable::Timeout => "timeout",
            Unavailable::Connect => "connect",
            Unavailable::Status => "status",
            Unavailable::BadAnswer => "bad_answer",
            Unavailable::Overloaded => "overloaded",
        }
    }
}

/// Which kind of question; a label value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Who is this? (`/api/v2/me/`)
    Identity,
    /// May this user see that object?
    Access,
}

impl Kind {
    pub fn label(self) -> &'static str {
        match self {
            Kind::Identity => "identity",
            Kind::Access => "access",
        }
    }
}

/// The credentials of one upgrade request that AWX would read: the
/// `sessionid` and `csrftoken` cookies, and `Authorization` (a `?token=`
/// goes as `Authorization: Bearer`). Nothing else of the request is
/// forwarded.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    cookie: Option<String>,
    authorization: Option<String>,
    /// SHA-256 of what identifies the user (the session id and the
    /// authorization), the identity cache's key.
    key: [u8; 32],
}

impl std::fmt::Debug for Credentials {
    // Hand-written so a credential never reaches a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("cookie", &self.cookie.is_some())
            .field("authorization", &self.authorization.is_some())
            .finish()
    }
}

impl Credentials {
    /// What `head` presents, or `None` when it carries neither a session
    /// cookie nor a token.
    pub fn from_head(head: &RequestHead) -> Option<Credentials> {
        let session = head.cookie("sessionid").filter(|v| !v.is_empty());
        let csrf = head.cookie("csrftoken").filter(|v| !v.is_empty());
        let authorization = head
            .header("authorization")
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
            .or_else(|| {
                let token = head.query_param("token")?;
                (!token.is_empty()).then(|| format!("Bearer {token}"))
            });
        if session.is_none() && authorization.is_none() {
            return None;
        }
        let cookie = session.map(|s| match csrf {
            Some(c) => format!("sessionid={s}; csrftoken={c}"),
            None => format!("sessionid={s}"),
        });
        let mut h = Sha256::new();
        h.update(b"session\0");
        h.update(session.unwrap_or_default());
        h.update(b"\0authorization\0");
        h.update(authorization.as_deref().unwrap_or_default());
        Some(Credentials {
            cookie,
            authorization,
            key: h.finalize().into(),
        })
    }

    /// The headers that carry these credentials, or `None` if a value
    /// cannot be a header (a `?token=` that decodes to a line break).
    fn headers(&self) -> Option<HeaderMap> {
        let mut h = HeaderMap::new();
        h.insert(ACCEPT, HeaderValue::from_static("application/json"));
        if let Some(c) = &self.cookie {
            h.insert(COOKIE, HeaderValue::from_str(c).ok()?);
        }
        if let Some(a) = &self.authorization {
            let mut v = HeaderValue::from_str(a).ok()?;
            v.set_sensitive(true);
            h.insert(AUTHORIZATION, v);
        }
        Some(h)
    }
}

/// Where the API is and how to ask it; from the config.
pub struct ApiSettings {
    /// `auth_url`: AWX's `/api/v2/me/`. Access paths are resolved against it.
    pub me: Url,
    pub ttl: Duration,
    pub refusal_ttl: Duration,
    pub entries: u64,
    pub timeout: Duration,
    pub max_inflight: usize,
    pub tls: rustls::ClientConfig,
}

/// The API's verdict on one question, before caching.
type Verdict<T> = Result<T, Unavailable>;

/// Cached answers: `Some(user id)` or `None` (refused) per credential, and
/// allowed or not per (user, group).
pub struct AwxApi {
    me: Url,
    identities: Cache<[u8; 32], Option<u64>>,
    access: Cache<(u64, Box<str>), bool>,
    jobs: mpsc::Sender<Job>,
    metrics: AuthMetrics,
}

/// Positive answers live `ok`, negative ones `no`.
struct ByAnswer {
    ok: Duration,
    no: Duration,
}

impl Expiry<[u8; 32], Option<u64>> for ByAnswer {
    fn expire_after_create(&self, _: &[u8; 32], v: &Option<u64>, _: Instant) -> Option<Duration> {
        Some(if v.is_some() { self.ok } else { self.no })
    }
}

impl Expiry<(u64, Box<str>), bool> for ByAnswer {
    fn expire_after_create(&self, _: &(u64, Box<str>), v: &bool, _: Instant) -> Option<Duration> {
        Some(if *v { self.ok } else { self.no })
    }
}

impl AwxApi {
    /// Starts the API thread.
    pub fn start(s: ApiSettings, metrics: AuthMetrics) -> std::io::Result<AwxApi> {
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(s.tls)
            // Credentials must never follow a redirect to another host.
            .redirect(reqwest::redirect::Policy::none())
            .timeout(s.timeout)
            .connect_timeout(s.timeout)
            .pool_max_idle_per_host(s.max_inflight)
            .user_agent(concat!("wsrelay/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(std::io::Error::other)?;
        let (jobs, rx) = mpsc::channel(QUEUE);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let worker = Fetcher {
            client,
            timeout: s.timeout,
            inflight: Arc::new(Semaphore::new(s.max_inflight)),
            metrics: metrics.clone(),
        };
        std::thread::Builder::new()
            .name("wsrelay-auth".into())
            .spawn(move || rt.block_on(worker.run(rx)))?;
        let expiry = || ByAnswer {
            ok: s.ttl,
            no: s.refusal_ttl,
        };
        Ok(AwxApi {
            me: s.me,
            identities: Cache::builder()
                .max_capacity(s.entries)
                .expire_after(expiry())
                .build(),
            access: Cache::builder()
                .max_capacity(s.entries)
                .expire_after(expiry())
                .build(),
            jobs,
            metrics,
        })
    }

    /// The user id AWX gives these credentials: `Ok(Some(id))`, `Ok(None)`
    /// when AWX refuses them (401/403, or no user in the answer).
    pub async fn identify(&self, creds: &Credentials) -> Verdict<Option<u64>> {
        let ran = AtomicBool::new(false);
        let answer = self
            .identities
            .try_get_with(creds.key, async {
                ran.store(true, Ordering::Relaxed);
                let body = self
                    .ask(Kind::Identity, self.me.clone(), creds, &[401, 403])
                    .await?;
                match body {
                    Some(b) => user_id(&b).ok_or(Unavailable::BadAnswer),
                    None => Ok(None),
                }
            })
            .await;
        self.metrics.lookup(Kind::Identity, ran.into_inner());
        answer.map_err(|e| *e)
    }

    /// Whether `user_id` may see the object at API `path`, cached per
    /// (user, group).
    pub async fn may_see(
        &self,
        user_id: u64,
        creds: &Credentials,
        group: &str,
        path: &str,
    ) -> Verdict<bool> {
        let ran = AtomicBool::new(false);
        let answer = self
            .access
            .try_get_with((user_id, group.into()), async {
                ran.store(true, Ordering::Relaxed);
                let url = self.me.join(path).map_err(|_| Unavailable::BadAnswer)?;
                let body = self.ask(Kind::Access, url, creds, &[401, 403, 404]).await?;
                Ok(body.is_some())
            })
            .await;
        self.metrics.lookup(Kind::Access, ran.into_inner());
        answer.map_err(|e| *e)
    }

    /// One request through the API thread: `Ok(Some(body))` for 200,
    /// `Ok(None)` for a status in `refusals`.
    async fn ask(
        &self,
        kind: Kind,
        url: Url,
        creds: &Credentials,
        refusals: &'static [u16],
    ) -> Verdict<Option<bytes::Bytes>> {
        let Some(headers) = creds.headers() else {
            // Not even sendable: as good as a refusal, and not the API's fault.
            return Ok(None);
        };
        let (reply, answer) = oneshot::channel();
        let job = Job {
            kind,
            url,
            headers,
            refusals,
            reply,
        };
        if self.jobs.try_send(job).is_err() {
            self.metrics.unavailable(kind, Unavailable::Overloaded);
            return Err(Unavailable::Overloaded);
        }
        // The thread always answers (its own timeout bounds the wait); a
        // dropped sender means it is gone.
        answer.await.unwrap_or(Err(Unavailable::Connect))
    }
}

/// The user id in AWX's `/api/v2/me/` answer:
/// `{"count": 1, "results": [{"id": N, ...}]}`.
fn user_id(body: &[u8]) -> Option<Option<u64>> {
    #[derive(serde::Deserialize)]
    struct Me {
        results: Vec<User>,
    }
    #[derive(serde::Deserialize)]
    struct User {
        id: u64,
    }
    let me: Me = serde_json::from_slice(body).ok()?;
    Some(me.results.first().map(|u| u.id))
}

struct Job {
    kind: Kind,
    url: Url,
    headers: HeaderMap,
    refusals: &'static [u16],
    reply: oneshot::Sender<Verdict<Option<bytes::Bytes>>>,
}

/// The API thread's state.
struct Fetcher {
    client: reqwest::Client,
    timeout: Duration,
    inflight: Arc<Semaphore>,
    metrics: AuthMetrics,
}

impl Fetcher {
    async fn run(self, mut jobs: mpsc::Receiver<Job>) {
        let this = Arc::new(self);
        while let Some(job) = jobs.recv().await {
            let this = this.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                let kind = job.kind;
                let verdict = tokio::time::timeout(this.timeout, this.fetch(&job))
                    .await
                    .unwrap_or(Err(Unavailable::Timeout));
                this.metrics.answered(kind, &verdict, started.elapsed());
                let _ = job.reply.send(verdict);
            });
        }
    }

    async fn fetch(&self, job: &Job) -> Verdict<Option<bytes::Bytes>> {
        let _permit = self.inflight.acquire().await.expect("never closed");
        let _gauge = self.metrics.in_flight();
        let resp = self
            .client
            .get(job.url.clone())
            .headers(job.headers.clone())
            .send()
            .await
            .map_err(|e| {
                if e.is_timeout() {
                    Unavailable::Timeout
                } else {
                    Unavailable::Connect
                }
            })?;
        let status = resp.status();
        if job.refusals.contains(&status.as_u16()) {
            return Ok(None);
        }
        if status != StatusCode::OK {
            tracing::debug!(url = %job.url, %status, "unexpected API status");
            return Err(Unavailable::Status);
        }
        read_bounded(resp).await.map(Some)
    }
}

async fn read_bounded(mut resp: reqwest::Response) -> Verdict<bytes::Bytes> {
    if resp
        .content_length()
        .is_some_and(|n| n > MAX_ANSWER_BYTES as u64)
    {
        return Err(Unavailable::BadAnswer);
    }
    let mut body = bytes::BytesMut::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| {
        if e.is_timeout() {
            Unavailable::Timeout
        } else {
            Unavailable::BadAnswer
        }
    })? {
        if body.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(Unavailable::BadAnswer);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &str) -> RequestHead {
        crate::protocol::http::parse_head(raw.as_bytes(), 16 * 1024)
            .unwrap()
            .unwrap()
    }

    #[test]
    fn credentials_forward_only_what_awx_reads() {
        let h = head(
            "GET /websocket/?token=t0k HTTP/1.1\r\nCookie: a=1; sessionid=S; csrftoken=C; other=2\r\n\r\n",
        );
        let c = Credentials::from_head(&h).unwrap();
        assert_eq!(c.cookie.as_deref(), Some("sessionid=S; csrftoken=C"));
        assert_eq!(c.authorization.as_deref(), Some("Bearer t0k"));
        // The header wins over the query; a csrftoken alone is no credential.
        let h = head(
            "GET /websocket/?token=q HTTP/1.1\r\nAuthorization: Token abc\r\nCookie: csrftoken=C\r\n\r\n",
        );
        let c2 = Credentials::from_head(&h).unwrap();
        assert_eq!(
            (c2.cookie, c2.authorization.as_deref()),
            (None, Some("Token abc"))
        );
        assert!(
            Credentials::from_head(&head("GET / HTTP/1.1\r\nCookie: csrftoken=C\r\n\r\n"))
                .is_none()
        );
        assert!(Credentials::from_head(&head("GET /?token= HTTP/1.1\r\n\r\n")).is_none());
        // The csrftoken does not change who the user is.
        let a = Credentials::from_head(&head(
            "GET / HTTP/1.1\r\nCookie: sessionid=S; csrftoken=1\r\n\r\n",
        ))
        .unwrap();
        let b = Credentials::from_head(&head(
            "GET / HTTP/1.1\r\nCookie: sessionid=S; csrftoken=2\r\n\r\n",
        ))
        .unwrap();
        assert_eq!(a.key, b.key);
        assert_ne!(a.key, c.key);
        assert!(!format!("{a:?}").contains('S'));
        // A token that decodes to a line break cannot become a header.
        let bad = Credentials::from_head(&head("GET /?token=a%0d%0aX:1 HTTP/1.1\r\n\r\n")).unwrap();
        assert!(bad.headers().is_none());
    }

    #[test]
    fn me_answers() {
        assert_eq!(
            user_id(br#"{"count": 1, "next": null, "previous": null, "results": [{"id": 7, "type": "user", "username": "a"}]}"#),
            Some(Some(7))
        );
        assert_eq!(user_id(br#"{"count": 0, "results": []}"#), Some(None));
        assert_eq!(user_id(br#"{"results": [{"id": -1}]}"#), None);
        assert_eq!(user_id(b"<html>"), None);
    }
}
