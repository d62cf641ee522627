//! HTTP/1.1 request heads and the websocket upgrade: parsing what a client
//! sent and building the few responses wsrelay writes. No sockets here.

use base64::Engine as _;
use sha1::{Digest, Sha1};

/// Why a request head cannot be served; each maps to one HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    #[error("malformed request: {0}")]
    Malformed(String),
    #[error("request head too large")]
    HeadTooLarge,
    #[error("chunked bodies are not supported; send content-length")]
    Chunked,
    #[error("transfer-encoding is not supported; send content-length")]
    TransferEncoding,
}

impl HttpError {
    pub fn status(&self) -> u16 {
        match self {
            HttpError::Malformed(_) => 400,
            HttpError::HeadTooLarge => 431,
            HttpError::Chunked => 411,
            HttpError::TransferEncoding => 501,
        }
    }
}

/// How a request's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    None,
    Length(usize),
}

/// The parts of a request head wsrelay looks at, owned so the read buffer
/// can be reused.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestHead {
    pub method: String,
    /// The path without the query string.
    pub path: String,
    pub query: String,
    /// Header names lower-cased, values as sent (non-UTF-8 values dropped).
    pub headers: Vec<(String, String)>,
    /// Bytes of the head, including the blank line.
    pub len: usize,
}

impl RequestHead {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn header_has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    /// True when the request asks for a websocket upgrade.
    pub fn is_upgrade(&self) -> bool {
        self.header_has_token("upgrade", "websocket")
    }

    /// Where the body ends, checked strictly (RFC 9112 6.3), because a
    /// request whose end two parsers judge differently is how responses
    /// get shifted between users behind a proxy: any `Transfer-Encoding`
    /// is refused (wsrelay reads only `Content-Length` bodies), and every
    /// `Content-Length` must be plain digits, all of them the same.
    pub fn body(&self) -> Result<Body, HttpError> {
        if self.headers.iter().any(|(n, _)| n == "transfer-encoding") {
            let only_chunked = self
                .headers
                .iter()
                .filter(|(n, _)| n == "transfer-encoding")
                .flat_map(|(_, v)| v.split(','))
                .all(|t| t.trim().eq_ignore_ascii_case("chunked"));
            return Err(if only_chunked {
                HttpError::Chunked
            } else {
                HttpError::TransferEncoding
            });
        }
        let mut length: Option<usize> = None;
        let values = self
            .headers
            .iter()
            .filter(|(n, _)| n == "content-length")
            .flat_map(|(_, v)| v.split(','));
        for v in values {
            let v = v.trim();
            if v.is_empty() || v.len() > 18 || !v.bytes().all(|b| b.is_ascii_digit()) {
                return Err(HttpError::Malformed("invalid content-length".into()));
            }
            let n: usize = v
                .parse()
                .map_err(|_| HttpError::Malformed("invalid content-length".into()))?;
            if length.is_some_and(|l| l != n) {
                return Err(HttpError::Malformed("conflicting content-length".into()));
            }
            length = Some(n);
        }
        Ok(length.map_or(Body::None, Body::Length))
    }

    /// Whether the client wants the connection kept open after the response.
    pub fn keep_alive(&self) -> bool {
        !self.header_has_token("connection", "close")
    }

    /// The value of query parameter `key`, percent-decoded.
    pub fn query_param(&self, key: &str) -> Option<String> {
        self.query.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k) == key).then(|| percent_decode(v))
        })
    }

    /// The value of cookie `name`.
    pub fn cookie(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == "cookie")
            .flat_map(|(_, v)| v.split(';'))
            .find_map(|c| {
                let (k, v) = c.trim().split_once('=')?;
                (k == name).then_some(v)
            })
    }

    /// The token of an `Authorization: Bearer <token>` header.
    pub fn bearer(&self) -> Option<&str> {
        let v = self.header("authorization")?.trim();
        let (scheme, token) = v.split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then_some(token.trim())
    }
}

/// Parses a request head from the start of `buf`. `Ok(None)` means more
/// bytes are needed; `max_head` bounds how many may be needed.
pub fn parse_head(buf: &[u8], max_head: usize) -> Result<Option<RequestHead>, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    let status = req.parse(buf).map_err(|e| match e {
        httparse::Error::TooManyHeaders => HttpError::HeadTooLarge,
        other => HttpError::Malformed(other.to_string()),
    })?;
    let len = match status {
        httparse::Status::Partial if buf.len() >= max_head => return Err(HttpError::HeadTooLarge),
        httparse::Status::Partial => return Ok(None),
        httparse::Status::Complete(len) if len > max_head => return Err(HttpError::HeadTooLarge),
        httparse::Status::Complete(len) => len,
    };
    let target = req.path.unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    Ok(Some(RequestHead {
        method: req.method.unwrap_or("").to_owned(),
        path: path.to_owned(),
        query: query.to_owned(),
        headers: req
            .headers
            .iter()
            .filter_map(|h| {
                let v = std::str::from_utf8(h.value).ok()?;
                Some((h.name.to_ascii_lowercase(), v.to_owned()))
            })
            .collect(),
        len,
    }))
}

/// Checks a websocket upgrade request (RFC 6455 section 4.2.1) and returns
/// the `Sec-WebSocket-Accept` value for the 101 response.
pub fn upgrade_accept_key(head: &RequestHead) -> Result<String, HttpError> {
    let bad = |m: &str| Err(HttpError::Malformed(m.into()));
    if head.method != "GET" {
        return bad("websocket upgrade must use GET");
    }
    if !head.header_has_token("connection", "upgrade") {
        return bad("missing connection: upgrade");
    }
    if head.header("sec-websocket-version").map(str::trim) != Some("13") {
        return bad("unsupported sec-websocket-version (want 13)");
    }
    let Some(key) = head.header("sec-websocket-key") else {
        return bad("missing sec-websocket-key");
    };
    // RFC 6455 4.1: a base64-encoded 16-byte nonce.
    let key = key.trim();
    let decoded = base64::engine::general_purpose::STANDARD.decode(key);
    if !matches!(decoded, Ok(ref k) if k.len() == 16) {
        return bad("sec-websocket-key must be 16 bytes in base64");
    }
    Ok(accept_key(key))
}

/// `base64(sha1(key + GUID))` per RFC 6455 section 4.2.2.
pub fn accept_key(key: &str) -> String {
    let mut sha = Sha1::new();
    sha.update(key.as_bytes());
    sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

/// The 101 response completing the upgrade.
pub fn switching_protocols(accept: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    )
    .into_bytes()
}

/// A complete response with a body. JSON bodies get `application/json`.
pub fn response(status: u16, content_type: &str, body: &[u8], keep_alive: bool) -> Vec<u8> {
    response_with(status, content_type, "", body, keep_alive)
}

/// A complete response with more header lines (`extra`: each ending in
/// CRLF, from our own constants only).
pub fn response_with(
    status: u16,
    content_type: &str,
    extra: &str,
    body: &[u8],
    keep_alive: bool,
) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\n{extra}Content-Length: {}\r\nConnection: {}\r\n\r\n",
        reason_phrase(status),
        body.len(),
        if keep_alive { "keep-alive" } else { "close" },
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

/// A JSON error response: `{"error": "<message>"}`.
pub fn error_response(status: u16, message: &str, keep_alive: bool) -> Vec<u8> {
    let body = serde_json::json!({ "error": message }).to_string();
    response(status, "application/json", body.as_bytes(), keep_alive)
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        501 => "Not Implemented",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &str) -> RequestHead {
        parse_head(raw.as_bytes(), 16 * 1024).unwrap().unwrap()
    }

    #[test]
    fn rfc_accept_key() {
        // RFC 6455 section 1.3's worked example.
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn parses_upgrade_with_token_and_cookie() {
        let h = head(
            "GET /websocket/?token=a%2Bb.c&x=1 HTTP/1.1\r\nHost: n\r\nUpgrade: WebSocket\r\n\
             Connection: keep-alive, Upgrade\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nCookie: a=1; csrftoken=xyz\r\n\r\n",
        );
        assert_eq!(h.path, "/websocket/");
        assert!(h.is_upgrade());
        assert_eq!(h.query_param("token").as_deref(), Some("a+b.c"));
        assert_eq!(h.cookie("csrftoken"), Some("xyz"));
        assert_eq!(
            upgrade_accept_key(&h).unwrap(),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn bearer_and_missing_parts() {
        let h = head("GET /x HTTP/1.1\r\nAuthorization: Bearer  t0k \r\n\r\n");
        assert_eq!(h.bearer(), Some("t0k"));
        assert_eq!(h.query_param("token"), None);
        assert!(matches!(
            upgrade_accept_key(&h),
            Err(HttpError::Malformed(_))
        ));
    }

    #[test]
    fn partial_and_oversized_heads() {
        assert_eq!(parse_head(b"GET / HTTP/1.1\r\nHost", 1024), Ok(None));
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n", "a".repeat(2000));
        assert_eq!(
            parse_head(big.as_bytes(), 1024),
            Err(HttpError::HeadTooLarge)
        );
        assert!(matches!(
            parse_head(b"\x00\x01 / HTTP/1.1\r\n\r\n", 1024),
            Err(HttpError::Malformed(_))
        ));
    }

    #[test]
    fn percent_decoding_edge_cases() {
        assert_eq!(percent_decode("%41%4a+b"), "AJ b");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
        assert_eq!(percent_decode("%4"), "%4");
    }
}
