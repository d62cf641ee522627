//! Native links' mutual authentication, I/O-free (the clock is passed in).
//!
//! AWX's `secret` header proves knowledge of the secret but can be replayed
//! for its whole ±300 s window, and its nonce (whole seconds, no node
//! identity) cannot be remembered usefully: two AWX nodes dialling in the
//! same second send the same bytes. Native links add to it:
//!
//! - the dialer sends `wsrelay-auth: v1 <node> <unix time> <nonce> <mac>`,
//!   with a fresh 128-bit random nonce and the MAC (HMAC-SHA256, keyed with
//!   the shared secret) over all of it; the dialed node accepts each nonce
//!   once within the window, so a captured upgrade request is useless to
//!   anyone else;
//! - the dialed node answers with `wsrelay-proof: <mac>` over that nonce,
//!   so the dialer knows the node it reached knows the secret too.

use std::collections::HashMap;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::secret::WINDOW_SECS;

pub const AUTH_HEADER: &str = "wsrelay-auth";
pub const PROOF_HEADER: &str = "wsrelay-proof";
const VERSION: &str = "v1";

/// Nonces remembered at most; past it new dials are refused until old
/// ones leave the window (a legitimate cluster dials a few times a minute).
pub const MAX_REMEMBERED: usize = 65_536;

/// Why a native dial was refused: the logged reason and a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error("native links need a wsrelay-auth header (is the dialing node older?)")]
    Missing,
    #[error("wsrelay-auth is not v1 <node> <time> <nonce> <mac>")]
    Format,
    #[error("wsrelay-auth digest does not match (wrong secret?)")]
    Digest,
    #[error("wsrelay-auth is outside the {WINDOW_SECS} s window")]
    Window,
    #[error("wsrelay-auth nonce was already used (a replayed request)")]
    Replayed,
    #[error("too many recent dials to remember; try again shortly")]
    Full,
}

impl HandshakeError {
    pub fn label(self) -> &'static str {
        match self {
            HandshakeError::Missing => "native_auth_missing",
            HandshakeError::Format => "native_auth_format",
            HandshakeError::Digest => "native_auth_digest",
            HandshakeError::Window => "native_auth_window",
            HandshakeError::Replayed => "replayed",
            HandshakeError::Full => "replay_cache_full",
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn mac(secret: &str, parts: &[&str]) -> Hmac<Sha256> {
    let mut m =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("hmac takes any key length");
    for p in parts {
        // Length-prefixed, so no two different part lists sign the same bytes.
        m.update(&(p.len() as u32).to_be_bytes());
        m.update(p.as_bytes());
    }
    m
}

/// The dialer's header for `node` at `now_unix` with a fresh `nonce`.
pub fn dial_header(secret: &str, node: &str, now_unix: u64, nonce: [u8; 16]) -> String {
    let (time, nonce) = (now_unix.to_string(), hex(&nonce));
    let digest = mac(secret, &["dial", VERSION, node, &time, &nonce])
        .finalize()
        .into_bytes();
    format!("{VERSION} {node} {time} {nonce} {}", hex(&digest))
}

/// A verified dial: who, and the nonce the answer must prove.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dial {
    pub node: String,
    pub nonce: String,
    pub time: u64,
}

/// Checks a dialer's header at `now_unix` (format, digest in constant
/// time, window); the nonce's freshness is `Replays::admit`'s business.
pub fn verify_dial(header: &str, secret: &str, now_unix: u64) -> Result<Dial, HandshakeError> {
    let mut parts = header.split(' ');
    let (Some(VERSION), Some(node), Some(time), Some(nonce), Some(digest), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(HandshakeError::Format);
    };
    let t: u64 = time.parse().map_err(|_| HandshakeError::Format)?;
    if nonce.len() != 32 || !nonce.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(HandshakeError::Format);
    }
    let digest = decode_hex(digest).ok_or(HandshakeError::Format)?;
    mac(secret, &["dial", VERSION, node, time, nonce])
        .verify_slice(&digest)
        .map_err(|_| HandshakeError::Digest)?;
    if now_unix.abs_diff(t) > WINDOW_SECS {
        return Err(HandshakeError::Window);
    }
    Ok(Dial {
        node: node.to_owned(),
        nonce: nonce.to_ascii_lowercase(),
        time: t,
    })
}

/// The dialed node's answer to a dial with `nonce`.
pub fn proof(secret: &str, nonce: &str) -> String {
    hex(&mac(secret, &["accept", VERSION, nonce])
        .finalize()
        .into_bytes())
}

/// Whether `answer` proves knowledge of the secret for `nonce`.
pub fn verify_proof(answer: &str, secret: &str, nonce: &str) -> bool {
    decode_hex(answer.trim()).is_some_and(|d| {
        mac(secret, &["accept", VERSION, nonce])
            .verify_slice(&d)
            .is_ok()
    })
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if s.len() != 64 {
        return None;
    }
    (0..64)
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Nonces seen within the window, each accepted once.
#[derive(Debug, Default)]
pub struct Replays {
    /// Nonce -> the unix second after which it can be forgotten.
    seen: HashMap<String, u64>,
}

impl Replays {
    /// Accepts `dial`'s nonce once; remembers it until its time is out of
    /// the window, so it can never be accepted again.
    pub fn admit(&mut self, dial: &Dial, now_unix: u64) -> Result<(), HandshakeError> {
        if self.seen.contains_key(&dial.nonce) {
            return Err(HandshakeError::Replayed);
        }
        if self.seen.len() >= MAX_REMEMBERED {
            self.seen.retain(|_, until| *until >= now_unix);
            if self.seen.len() >= MAX_REMEMBERED {
                return Err(HandshakeError::Full);
            }
        }
        self.seen
            .insert(dial.nonce.clone(), dial.time + WINDOW_SECS + 1);
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000;

    #[test]
    fn a_dial_verifies_once_and_the_proof_checks_both_ways() {
        let h = dial_header("s3cret", "node-a", NOW, [7; 16]);
        let d = verify_dial(&h, "s3cret", NOW + 10).unwrap();
        assert_eq!((d.node.as_str(), d.time), ("node-a", NOW));
        let mut r = Replays::default();
        assert_eq!(r.admit(&d, NOW), Ok(()));
        // The same captured request, again: refused.
        let again = verify_dial(&h, "s3cret", NOW + 20).unwrap();
        assert_eq!(r.admit(&again, NOW + 20), Err(HandshakeError::Replayed));
        let p = proof("s3cret", &d.nonce);
        assert!(verify_proof(&p, "s3cret", &d.nonce));
        assert!(!verify_proof(&p, "other", &d.nonce));
        assert!(!verify_proof(&p, "s3cret", &"0".repeat(32)));
        assert!(!verify_proof("nope", "s3cret", &d.nonce));
    }

    #[test]
    fn bad_dials_are_refused_with_a_reason() {
        let h = dial_header("s3cret", "node-a", NOW, [1; 16]);
        assert_eq!(verify_dial(&h, "wrong", NOW), Err(HandshakeError::Digest));
        assert_eq!(
            verify_dial(&h, "s3cret", NOW + WINDOW_SECS + 1),
            Err(HandshakeError::Window)
        );
        // Another node's name under the same digest.
        let forged = h.replacen("node-a", "node-b", 1);
        assert_eq!(
            verify_dial(&forged, "s3cret", NOW),
            Err(HandshakeError::Digest)
        );
        for bad in ["", "v1", "v2 a 1 00 00", &format!("{h} extra")] {
            assert_eq!(
                verify_dial(bad, "s3cret", NOW),
                Err(HandshakeError::Format),
                "{bad}"
            );
        }
    }

    #[test]
    fn the_replay_memory_is_bounded_and_forgets_expired_nonces() {
        let mut r = Replays::default();
        let dial = |i: usize, t: u64| Dial {
            node: "n".into(),
            nonce: format!("{i:032x}"),
            time: t,
        };
        for i in 0..MAX_REMEMBERED {
            r.admit(&dial(i, NOW), NOW).unwrap();
        }
        assert_eq!(
            r.admit(&dial(usize::MAX, NOW), NOW),
            Err(HandshakeError::Full)
        );
        // Once the old ones are out of the window they are forgotten.
        let later = NOW + WINDOW_SECS + 2;
        assert_eq!(r.admit(&dial(usize::MAX, later), later), Ok(()));
        assert_eq!(r.len(), 1);
    }
}
