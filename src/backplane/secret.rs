//! The backplane `secret` request header, byte-compatible with AWX (SPEC
//! section 5): `HMAC-SHA256 <nonce>:<hex digest>`, where the nonce is the
//! decimal Unix time and the digest is HMAC-SHA256, keyed with the shared
//! secret, over Python's `json.dumps({"secret": S, "nonce": N})`. The clock
//! is passed in.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// How far a nonce may be from now, either way (AWX's tolerance).
pub const WINDOW_SECS: u64 = 300;

const PREFIX: &str = "HMAC-SHA256";

/// Why a header was refused: the logged reason, and a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("header does not start with HMAC-SHA256")]
    BadPrefix,
    #[error("header is not HMAC-SHA256 <nonce>:<hex digest>")]
    BadFormat,
    #[error("digest does not match (wrong secret?)")]
    BadDigest,
    #[error("nonce is {0} s old, over the {WINDOW_SECS} s window")]
    Stale(u64),
    #[error("nonce is {0} s in the future, over the {WINDOW_SECS} s window")]
    Future(u64),
}

impl SecretError {
    pub fn label(self) -> &'static str {
        match self {
            SecretError::BadPrefix => "bad_prefix",
            SecretError::BadFormat => "bad_format",
            SecretError::BadDigest => "bad_digest",
            SecretError::Stale(_) => "stale_nonce",
            SecretError::Future(_) => "future_nonce",
        }
    }
}

/// The header value a dialing node sends at `now_unix`.
pub fn header_value(secret: &str, now_unix: u64) -> String {
    let nonce = now_unix.to_string();
    let digest = mac(secret, &nonce).finalize().into_bytes();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("{PREFIX} {nonce}:{hex}")
}

/// Verifies a received header at `now_unix`: format, then the digest (in
/// constant time), then the nonce window.
pub fn verify(header: &str, secret: &str, now_unix: u64) -> Result<(), SecretError> {
    let (prefix, rest) = header.split_once(' ').ok_or(SecretError::BadFormat)?;
    if prefix != PREFIX {
        return Err(SecretError::BadPrefix);
    }
    let (nonce, hex) = rest.split_once(':').ok_or(SecretError::BadFormat)?;
    let nonce_value: u64 = nonce.parse().map_err(|_| SecretError::BadFormat)?;
    if nonce.is_empty() || !nonce.bytes().all(|b| b.is_ascii_digit()) {
        return Err(SecretError::BadFormat);
    }
    let digest = decode_hex(hex).ok_or(SecretError::BadFormat)?;
    mac(secret, nonce)
        .verify_slice(&digest)
        .map_err(|_| SecretError::BadDigest)?;
    if now_unix > nonce_value && now_unix - nonce_value > WINDOW_SECS {
        return Err(SecretError::Stale(now_unix - nonce_value));
    }
    if nonce_value > now_unix && nonce_value - now_unix > WINDOW_SECS {
        return Err(SecretError::Future(nonce_value - now_unix));
    }
    Ok(())
}

fn mac(secret: &str, nonce: &str) -> Hmac<Sha256> {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("hmac takes any key length");
    mac.update(python_json_dumps(secret, nonce).as_bytes());
    mac
}

/// Exactly what Python's `json.dumps({"secret": secret, "nonce": nonce})`
/// prints: `", "` and `": "` separators, and `ensure_ascii` escaping.
fn python_json_dumps(secret: &str, nonce: &str) -> String {
    format!(
        r#"{{"secret": {}, "nonce": {}}}"#,
        python_json_str(secret),
        python_json_str(nonce)
    )
}

/// A JSON string as Python's json module writes it with `ensure_ascii`:
/// short escapes for `"` `\` and \b \f \n \r \t, `\u00XX` for other
/// control characters, `\uXXXX` (surrogate pairs beyond the BMP) for every
/// non-ASCII character.
pub(crate) fn python_json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || !c.is_ascii() => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if hex.len() != 64 {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Made by Python, as AWX builds the header:
    //   m = json.dumps({'secret': s, 'nonce': n})
    //   'HMAC-SHA256 %s:%s' % (n, hmac.new(s.encode(), msg=m.encode(), digestmod='sha256').hexdigest())
    const PY_ASCII: (&str, &str) = (
        "s3cret",
        "HMAC-SHA256 1700000000:bf15af05a2e28774e40166c85d68db1b21928c88973a4ad55cf4a0db102b8714",
    );
    const PY_UNICODE: (&str, &str) = (
        "pässwörd \"q\"",
        "HMAC-SHA256 1700000123:9fe1b63384deaf9c3b92a918424d87be8ce234e6ac1f7da3ea7b6e2e11cf717e",
    );

    #[test]
    fn builds_and_accepts_what_python_builds() {
        assert_eq!(header_value(PY_ASCII.0, 1_700_000_000), PY_ASCII.1);
        assert_eq!(header_value(PY_UNICODE.0, 1_700_000_123), PY_UNICODE.1);
        assert_eq!(verify(PY_ASCII.1, PY_ASCII.0, 1_700_000_000), Ok(()));
        assert_eq!(verify(PY_UNICODE.1, PY_UNICODE.0, 1_700_000_123), Ok(()));
    }

    #[test]
    fn python_escaping() {
        assert_eq!(
            python_json_dumps("a\"b\\c\n\u{1}é😀", "1"),
            r#"{"secret": "a\"b\\c\n\u0001\u00e9\ud83d\ude00", "nonce": "1"}"#
        );
    }

    #[test]
    fn refusals_name_their_reason() {
        let (secret, header) = PY_ASCII;
        let now = 1_700_000_000;
        assert_eq!(verify(header, "other", now), Err(SecretError::BadDigest));
        assert_eq!(verify(header, secret, now + 300), Ok(()));
        assert_eq!(
            verify(header, secret, now + 301),
            Err(SecretError::Stale(301))
        );
        assert_eq!(verify(header, secret, now - 300), Ok(()));
        assert_eq!(
            verify(header, secret, now - 301),
            Err(SecretError::Future(301))
        );
        for (bad, why) in [
            ("", SecretError::BadFormat),
            ("HMAC-SHA256", SecretError::BadFormat),
            ("HMAC-SHA1 1700000000:00", SecretError::BadPrefix),
            ("HMAC-SHA256 1700000000", SecretError::BadFormat),
            ("HMAC-SHA256 17e8:bf15", SecretError::BadFormat),
            ("HMAC-SHA256 1700000000:zz15af05a2e28774e40166c85d68db1b21928c88973a4ad55cf4a0db102b8714", SecretError::BadFormat),
            ("HMAC-SHA256 1700000000:bf15", SecretError::BadFormat),
        ] {
            assert_eq!(verify(bad, secret, now), Err(why), "{bad:?}");
        }
        assert_eq!(SecretError::Stale(1).label(), "stale_nonce");
    }
}
