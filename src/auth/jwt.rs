//! HS256 JWTs, verified locally with `hmac` + `sha2` (already needed for
//! the backplane secret) rather than `jsonwebtoken`, whose pure-Rust
//! backend pulls RSA, ECDSA and EdDSA stacks into the build for this one
//! algorithm. The clock is an argument; no I/O here.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::{AuthError, Identity};

type HmacSha256 = Hmac<Sha256>;

/// A verifier of HS256 tokens signed with one secret.
#[derive(Clone)]
pub struct Jwt {
    pub secret: Vec<u8>,
    /// Clock skew allowed on `exp` and `nbf`, seconds.
    pub leeway_secs: u64,
}

impl std::fmt::Debug for Jwt {
    // Hand-written so the secret never reaches a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwt")
            .field("leeway_secs", &self.leeway_secs)
            .finish_non_exhaustive()
    }
}

impl Jwt {
    /// Verifies `token` at time `now_unix` (seconds since the epoch).
    pub fn verify(&self, token: &str, now_unix: u64) -> Result<Identity, AuthError> {
        verify_hs256(&self.secret, token, now_unix, self.leeway_secs)
    }
}

#[derive(serde::Deserialize)]
struct JwtHeader {
    alg: String,
}

#[derive(serde::Deserialize)]
struct Claims {
    sub: Option<serde_json::Value>,
    exp: Option<f64>,
    nbf: Option<f64>,
    groups: Option<Vec<String>>,
}

pub(super) fn verify_hs256(
    secret: &[u8],
    token: &str,
    now_unix: u64,
    leeway: u64,
) -> Result<Identity, AuthError> {
    let mut parts = token.split('.');
    let (Some(h64), Some(c64), Some(s64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Malformed("want three dot-separated parts"));
    };
    let decode = |part: &str| {
        URL_SAFE_NO_PAD
            .decode(part)
            .map_err(|_| AuthError::Malformed("bad base64url"))
    };
    let header: JwtHeader = serde_json::from_slice(&decode(h64)?)
        .map_err(|_| AuthError::Malformed("bad header json"))?;
    // Only HS256: accepting the token's own choice of algorithm is the
    // classic `alg: none` hole.
    if header.alg != "HS256" {
        return Err(AuthError::UnsupportedAlgorithm);
    }
    let signature = decode(s64)?;
    let mut mac = HmacSha256::new_from_slice(secret).expect("hmac takes any key length");
    mac.update(&token.as_bytes()[..h64.len() + 1 + c64.len()]);
    // verify_slice compares in constant time.
    mac.verify_slice(&signature)
        .map_err(|_| AuthError::BadSignature)?;

    let claims: Claims = serde_json::from_slice(&decode(c64)?)
        .map_err(|_| AuthError::Malformed("bad claims json"))?;
    let now = now_unix as f64;
    let exp = claims.exp.ok_or(AuthError::MissingClaim("exp"))?;
    if now > exp + leeway as f64 {
        return Err(AuthError::Expired);
    }
    if matches!(claims.nbf, Some(nbf) if now + (leeway as f64) < nbf) {
        return Err(AuthError::NotYetValid);
    }
    let user_id = match claims.sub.ok_or(AuthError::MissingClaim("sub"))? {
        serde_json::Value::String(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
            s.parse().map_err(|_| AuthError::InvalidSubject)?
        }
        serde_json::Value::Number(n) => n.as_u64().ok_or(AuthError::InvalidSubject)?,
        _ => return Err(AuthError::InvalidSubject),
    };
    Ok(Identity {
        user_id,
        patterns: claims.groups,
        api: None,
    })
}

/// Signs `claims` (a JSON object) as an HS256 JWT. Used by `demo` and the
/// load tester to give their own clients tokens.
pub fn mint_hs256(secret: &[u8], claims: &serde_json::Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let body = URL_SAFE_NO_PAD.encode(claims.to_string());
    let signing_input = format!("{header}.{body}");
    let mut mac = HmacSha256::new_from_slice(secret).expect("hmac takes any key length");
    mac.update(signing_input.as_bytes());
    let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{signing_input}.{sig}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: u64 = 1_700_000_000;

    fn jwt() -> Jwt {
        Jwt {
            secret: b"s3cret".to_vec(),
            leeway_secs: 30,
        }
    }

    fn check(token: &str, expected: Result<Identity, AuthError>) {
        assert_eq!(jwt().verify(token, NOW), expected);
    }

    fn user(id: u64) -> Result<Identity, AuthError> {
        Ok(Identity::anyone(id))
    }

    #[test]
    fn known_good_token_from_another_implementation() {
        // Signed by Python's hmac + hashlib over {"sub":"42","exp":1700000600}.
        let t = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiI0MiIsImV4cCI6MTcwMDAwMDYwMH0.\
                 MwBK9WDoOZg-JDdeK5gw_cQanc6b33MXGcmrmXzOwhE";
        check(t, user(42));
    }

    #[test]
    fn claims_rules() {
        let m = |c: serde_json::Value| mint_hs256(b"s3cret", &c);
        check(&m(json!({"sub": "7", "exp": NOW + 10})), user(7));
        check(&m(json!({"sub": 8, "exp": NOW})), user(8));
        // Within the leeway, then past it.
        check(&m(json!({"sub": "7", "exp": NOW - 30})), user(7));
        check(
            &m(json!({"sub": "7", "exp": NOW - 31})),
            Err(AuthError::Expired),
        );
        check(&m(json!({"sub": "7"})), Err(AuthError::MissingClaim("exp")));
        check(&m(json!({"exp": NOW})), Err(AuthError::MissingClaim("sub")));
        check(
            &m(json!({"sub": "-1", "exp": NOW})),
            Err(AuthError::InvalidSubject),
        );
        check(
            &m(json!({"sub": "bob", "exp": NOW})),
            Err(AuthError::InvalidSubject),
        );
        check(
            &m(json!({"sub": "7", "exp": NOW + 100, "nbf": NOW + 60})),
            Err(AuthError::NotYetValid),
        );
    }

    #[test]
    fn signature_and_format_rules() {
        let good = mint_hs256(b"s3cret", &json!({"sub": "1", "exp": NOW}));
        let other = mint_hs256(b"other", &json!({"sub": "1", "exp": NOW}));
        check(&other, Err(AuthError::BadSignature));
        // Swap the claims while keeping the old signature.
        let forged_claims = URL_SAFE_NO_PAD.encode(br#"{"sub":"2","exp":9999999999}"#);
        let parts: Vec<&str> = good.split('.').collect();
        let forged = format!("{}.{}.{}", parts[0], forged_claims, parts[2]);
        check(&forged, Err(AuthError::BadSignature));
        let none_alg = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#),
            parts[1]
        );
        check(&none_alg, Err(AuthError::UnsupportedAlgorithm));
        check(
            "a.b",
            Err(AuthError::Malformed("want three dot-separated parts")),
        );
        check("!!.b.c", Err(AuthError::Malformed("bad base64url")));
    }
}
