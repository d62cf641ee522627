//! A configured peer: where to dial it and which protocol it speaks.

use std::fmt;

use super::awx::Era;

/// The protocol a dialed peer speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PeerProtocol {
    /// Another wsrelay: batched binary frames, interest, resume.
    Native,
    /// An AWX node of the given era.
    Awx(Era),
    /// Whichever the node answers: dialled at AWX's relay path offering
    /// the native subprotocol; a wsrelay node accepts it, an AWX web node
    /// (2022 and later) answers in its own form. Discovered nodes are
    /// dialled this way.
    Auto,
}

impl PeerProtocol {
    pub fn name(self) -> &'static str {
        match self {
            PeerProtocol::Native => "native",
            PeerProtocol::Awx(Era::Y2020) => "awx-2020",
            PeerProtocol::Awx(Era::Y2022) => "awx-2022",
            PeerProtocol::Auto => "auto",
        }
    }
}

/// A peer as configured: `[PROTOCOL+]ws[s]://host[:port][/]`, PROTOCOL
/// one of `native` (the default), `awx-2020`, `awx-2022`, `auto`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PeerSpec {
    pub protocol: PeerProtocol,
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--peer {url}: {why} (want [native+|awx-2020+|awx-2022+|auto+]ws[s]://host[:port])")]
pub struct PeerUrlError {
    pub url: String,
    pub why: &'static str,
}

impl PeerSpec {
    pub fn parse(url: &str) -> Result<Self, PeerUrlError> {
        let err = |why| PeerUrlError {
            url: url.to_owned(),
            why,
        };
        let (protocol, rest) = match url.split_once('+') {
            Some(("native", r)) => (PeerProtocol::Native, r),
            Some(("awx-2020", r)) => (PeerProtocol::Awx(Era::Y2020), r),
            Some(("awx-2022", r)) => (PeerProtocol::Awx(Era::Y2022), r),
            Some(("auto", r)) => (PeerProtocol::Auto, r),
            Some(_) => return Err(err("unknown protocol")),
            None => (PeerProtocol::Native, url),
        };
        let (tls, rest) = if let Some(r) = rest.strip_prefix("wss://") {
            (true, r)
        } else if let Some(r) = rest.strip_prefix("ws://") {
            (false, r)
        } else {
            return Err(err("scheme must be ws:// or wss://"));
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.contains('/') || authority.contains('@') || authority.contains('?') {
            return Err(err(
                "give only host and port; the path is chosen by the protocol",
            ));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or_else(|| err("unclosed ["))?;
            match after.strip_prefix(':') {
                Some(p) => (h, Some(p)),
                None if after.is_empty() => (h, None),
                None => return Err(err("bad port")),
            }
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(err("empty host"));
        }
        let port = match port {
            Some(p) => p.parse().map_err(|_| err("bad port"))?,
            None if tls => 443,
            None => 80,
        };
        Ok(Self {
            protocol,
            tls,
            host: host.to_owned(),
            port,
        })
    }

    /// The upgrade path AWX serves for this protocol.
    pub fn path(&self) -> &'static str {
        match self.protocol {
            PeerProtocol::Native | PeerProtocol::Awx(Era::Y2020) => "/websocket/broadcast/",
            PeerProtocol::Awx(Era::Y2022) | PeerProtocol::Auto => "/websocket/relay/",
        }
    }

    /// The label in metrics and logs: `host:port`.
    pub fn label(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for PeerSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "wss" } else { "ws" };
        write!(f, "{}+{scheme}://{}", self.protocol.name(), self.label())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_urls() {
        let p = PeerSpec::parse("wss://node2:443").unwrap();
        assert_eq!(
            (p.protocol, p.tls, p.host.as_str(), p.port),
            (PeerProtocol::Native, true, "node2", 443)
        );
        let p = PeerSpec::parse("awx-2022+ws://10.0.0.2/").unwrap();
        assert_eq!(p.protocol, PeerProtocol::Awx(Era::Y2022));
        assert_eq!((p.port, p.path()), (80, "/websocket/relay/"));
        let p = PeerSpec::parse("auto+wss://10.0.0.3").unwrap();
        assert_eq!(
            (p.protocol, p.port, p.path()),
            (PeerProtocol::Auto, 443, "/websocket/relay/")
        );
        let p = PeerSpec::parse("awx-2020+wss://[::1]:8443").unwrap();
        assert_eq!((p.host.as_str(), p.port), ("::1", 8443));
        assert_eq!(p.label(), "[::1]:8443");
        assert_eq!(p.to_string(), "awx-2020+wss://[::1]:8443");
        for bad in [
            "http://x",
            "x:1",
            "foo+ws://x",
            "ws://",
            "ws://x:99999",
            "ws://x/websocket/",
            "ws://u@x",
        ] {
            assert!(PeerSpec::parse(bad).is_err(), "{bad}");
        }
    }
}
