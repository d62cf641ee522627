//! channels_redis's storage format (SPEC section 4), I/O-free: key names,
//! the consistent hash over several hosts, and decoding a message popped
//! from a channel key.
//!
//! wsrelay joins each group `g` its clients hold with its own channel
//! `specific.<client prefix>!<g>`. All those channels share one Redis key
//! (channels_redis stores every `specific.X!...` channel under
//! `<prefix>specific.X!`), so one pop loop drains them all, and each
//! message's `__asgi_channel__` list names the channels (so the groups) it
//! was sent to: the group itself is not in an ASGI message.

use bytes::Bytes;

/// Why an entry popped from Redis was skipped. Label values of
/// `wsrelay_redis_skipped_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("shorter than the random prefix")]
    Short,
    #[error("not msgpack")]
    Msgpack,
    #[error("not a msgpack map")]
    NotAMap,
    #[error("type is not internal.message")]
    UnknownType,
    #[error("missing or non-string text")]
    BadText,
    #[error("text is not utf-8")]
    TextNotUtf8,
    #[error("missing or malformed __asgi_channel__")]
    BadChannels,
    #[error("older than the message expiry")]
    Expired,
}

impl Malformed {
    pub const ALL: [Malformed; 8] = [
        Malformed::Short,
        Malformed::Msgpack,
        Malformed::NotAMap,
        Malformed::UnknownType,
        Malformed::BadText,
        Malformed::TextNotUtf8,
        Malformed::BadChannels,
        Malformed::Expired,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Malformed::Short => "short",
            Malformed::Msgpack => "bad_msgpack",
            Malformed::NotAMap => "not_a_map",
            Malformed::UnknownType => "unknown_type",
            Malformed::BadText => "bad_text",
            Malformed::TextNotUtf8 => "text_not_utf8",
            Malformed::BadChannels => "bad_channels",
            Malformed::Expired => "expired",
        }
    }
}

/// One `internal.message`, as AWX's `emit_channel_notification` sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The channels (of this node) the message was sent to.
    pub channels: Vec<String>,
    /// The payload JSON text, delivered to clients verbatim.
    pub text: Bytes,
    /// Set by AWX 2022 and later; the 2020 form lacks it.
    pub needs_relay: bool,
}

/// The names wsrelay uses in Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Naming {
    /// The layer prefix, `asgi` in AWX.
    pub prefix: String,
    /// `specific.<client prefix>!`: the part of every channel name up to and
    /// including `!`.
    pub channel_base: String,
}

impl Naming {
    /// `node` becomes the client prefix, restricted to the characters
    /// channels allows in names.
    pub fn new(prefix: &str, node: &str) -> Self {
        let clean: String = node
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        Self {
            prefix: prefix.to_owned(),
            channel_base: format!("specific.wsrelay_{clean}!"),
        }
    }

    /// The sorted set of a group's member channels.
    pub fn group_key(&self, group: &str) -> String {
        format!("{}:group:{group}", self.prefix)
    }

    /// This node's channel in `group`.
    pub fn channel(&self, group: &str) -> String {
        format!("{}{group}", self.channel_base)
    }

    /// The one key all of this node's channels store messages under.
    pub fn channel_key(&self) -> String {
        format!("{}{}", self.prefix, self.channel_base)
    }

    /// The group a channel of this node stands for.
    pub fn group_of<'a>(&self, channel: &'a str) -> Option<&'a str> {
        channel
            .strip_prefix(self.channel_base.as_str())
            .filter(|g| !g.is_empty())
    }
}

/// channels_redis's ring: `crc32(value) & 0xFFF`, scaled to `ring` hosts.
pub fn consistent_hash(value: &str, ring: usize) -> usize {
    if ring <= 1 {
        return 0;
    }
    let big = crc32fast::hash(value.as_bytes()) & 0xFFF;
    let divisor = 4096.0 / ring as f64;
    ((big as f64 / divisor) as usize).min(ring - 1)
}

/// Decodes a popped member: `prefix_len` random bytes, then a msgpack map.
/// `age_secs` is now minus the member's score (its send time); messages
/// older than `expiry_secs` are dropped as channels_redis receivers do.
pub fn decode(
    member: &[u8],
    prefix_len: usize,
    age_secs: f64,
    expiry_secs: f64,
) -> Result<Message, Malformed> {
    if age_secs > expiry_secs {
        return Err(Malformed::Expired);
    }
    let body = member.get(prefix_len..).ok_or(Malformed::Short)?;
    let mut cursor = body;
    let value = rmpv::decode::read_value_ref(&mut cursor).map_err(|_| Malformed::Msgpack)?;
    let rmpv::ValueRef::Map(entries) = value else {
        return Err(Malformed::NotAMap);
    };
    let field = |name: &str| {
        entries
            .iter()
            .find(|(k, _)| matches!(k, rmpv::ValueRef::String(s) if s.as_str() == Some(name)))
            .map(|(_, v)| v)
    };
    match field("type") {
        Some(rmpv::ValueRef::String(s)) if s.as_str() == Some("internal.message") => {}
        _ => return Err(Malformed::UnknownType),
    }
    let text = match field("text") {
        Some(rmpv::ValueRef::String(s)) => match s.as_str() {
            Some(t) => Bytes::copy_from_slice(t.as_bytes()),
            None => return Err(Malformed::TextNotUtf8),
        },
        _ => return Err(Malformed::BadText),
    };
    let channels = match field("__asgi_channel__") {
        Some(rmpv::ValueRef::Array(items)) if !items.is_empty() => items
            .iter()
            .map(|c| match c {
                rmpv::ValueRef::String(s) => {
                    s.as_str().map(str::to_owned).ok_or(Malformed::BadChannels)
                }
                _ => Err(Malformed::BadChannels),
            })
            .collect::<Result<Vec<_>, _>>()?,
        _ => return Err(Malformed::BadChannels),
    };
    let needs_relay = matches!(field("needs_relay"), Some(rmpv::ValueRef::Boolean(true)));
    Ok(Message {
        channels,
        text,
        needs_relay,
    })
}

#[cfg(test)]
mod tests;
