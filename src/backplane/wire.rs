//! The native peer protocol, I/O-free: the messages two wsrelay nodes
//! exchange inside websocket binary frames once the upgrade negotiated
//! `wsrelay.peer.v2` (or `v1`, with older nodes; ARCHITECTURE.md, "Peer
//! protocol", is the prose spec).
//!
//! A link carries events one way, from the dialing node (the sender) to the
//! dialed node (the receiver); the receiver answers on the same link with
//! its interest and acknowledgements. Integers are big-endian; a string is
//! a `u16` length and UTF-8 bytes; a payload is a `u32` length and bytes.

use bytes::{BufMut, BytesMut};

/// The subprotocol token offered and selected in the upgrade. A future
/// version gets a new token; a node selects the highest it knows.
pub const SUBPROTOCOL: &str = "wsrelay.peer.v2";
/// The first version (events without their stream origin), still spoken
/// with nodes that know no other.
pub const SUBPROTOCOL_V1: &str = "wsrelay.peer.v1";
pub const VERSION: u8 = 2;

/// The protocol version a subprotocol token names.
pub fn version_of(token: &str) -> Option<u8> {
    match token {
        SUBPROTOCOL => Some(2),
        SUBPROTOCOL_V1 => Some(1),
        _ => None,
    }
}

/// The token of a version this node speaks.
pub fn token_of(version: u8) -> &'static str {
    if version == 1 {
        SUBPROTOCOL_V1
    } else {
        SUBPROTOCOL
    }
}

/// A Redis stream entry id (`ms-seq`), ordered as Redis orders them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamId {
    pub ms: u64,
    pub seq: u64,
}

impl StreamId {
    /// Parses Redis's `ms-seq` form.
    pub fn parse(id: &str) -> Option<StreamId> {
        let (ms, seq) = id.split_once('-')?;
        Some(StreamId {
            ms: ms.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }
}

impl std::fmt::Display for StreamId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// Where an event came from, so that a receiver can tell a restarted
/// sender's replay from new events (ARCHITECTURE.md, "Stream events
/// across a crash").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Origin {
    /// Not from the sender's Redis stream (HTTP emit, channels_redis, ...).
    #[default]
    None,
    /// Read from the sender's stream at this entry, for the first time.
    Live(StreamId),
    /// Sent again after the sender restarted: the receiver drops it if it
    /// already delivered this entry or a later one from that sender.
    Replay(StreamId),
}

impl Origin {
    pub fn id(self) -> Option<StreamId> {
        match self {
            Origin::None => None,
            Origin::Live(id) | Origin::Replay(id) => Some(id),
        }
    }
}

mod tag {
    // Sender to receiver.
    pub const HELLO: u8 = 0x01;
    pub const EVENTS: u8 = 0x02;
    pub const INTEREST_ACK: u8 = 0x03;
    // On the broker (`backplane::broker`), not on a link.
    pub const BROKER_EVENTS: u8 = 0x10;
    // Receiver to sender.
    pub const WELCOME: u8 = 0x81;
    pub const INTEREST: u8 = 0x82;
    pub const ACK: u8 = 0x83;
}

/// A malformed message: the link is closed with 1002 and this reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("empty peer message")]
    Empty,
    #[error("unknown peer message tag {0:#04x}")]
    UnknownTag(u8),
    #[error("truncated peer message")]
    Truncated,
    #[error("peer message has {0} bytes past its end")]
    Trailing(usize),
    #[error("group name in a peer message is not UTF-8")]
    NotUtf8,
    #[error("unsupported peer protocol version {0}")]
    Version(u8),
    #[error("event payload in a peer message is not UTF-8")]
    PayloadNotUtf8,
    #[error("empty group name in a peer message")]
    EmptyGroup,
    #[error("sequence numbers in a peer message start at 0 or pass 2^64")]
    BadSequence,
    #[error("unknown event origin kind {0}")]
    BadOrigin(u8),
}

/// One decoded message. Events stay in the frame's bytes and are read
/// through [`Events`], so a batch costs no allocation to decode.
#[derive(Debug, PartialEq, Eq)]
pub enum PeerMessage<'a> {
    /// First message of a link: who is sending, and which run of it (a
    /// random number per process start, so a restarted sender is told
    /// apart from a reconnecting one).
    Hello { node: &'a str, incarnation: u64 },
    /// Events `first_seq ..= first_seq + count - 1`, in order.
    Events { first_seq: u64, events: Events<'a> },
    /// The sender applied the receiver's interest up to `epoch`.
    InterestAck { epoch: u64 },
    /// The receiver's answer to `Hello`: `resume` is the last sequence it
    /// holds from this incarnation, `None` when it has never heard of it.
    Welcome {
        node: &'a str,
        incarnation: u64,
        resume: Option<u64>,
    },
    /// The receiver's groups: the whole set (`full`) or a change.
    Interest {
        epoch: u64,
        full: bool,
        added: Vec<&'a str>,
        removed: Vec<&'a str>,
    },
    /// Everything up to `seq` is delivered on the receiver; the sender may
    /// forget it.
    Ack { seq: u64 },
}

/// The events of one `Events` message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Events<'a> {
    count: u32,
    version: u8,
    body: &'a [u8],
}

impl<'a> Events<'a> {
    pub fn len(&self) -> usize {
        self.count as usize
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

impl<'a> IntoIterator for Events<'a> {
    type Item = (&'a str, Origin, &'a [u8]);
    type IntoIter = EventIter<'a>;
    fn into_iter(self) -> EventIter<'a> {
        EventIter {
            left: self.count,
            version: self.version,
            r: Reader(self.body),
        }
    }
}

/// Iterates `(group, origin, payload)`; the body was checked whole by
/// `decode`.
pub struct EventIter<'a> {
    left: u32,
    version: u8,
    r: Reader<'a>,
}

impl<'a> Iterator for EventIter<'a> {
    type Item = (&'a str, Origin, &'a [u8]);
    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let group = self.r.str().ok()?;
        let origin = self.r.origin(self.version).ok()?;
        let payload = self.r.payload().ok()?;
        Some((group, origin, payload))
    }
}

/// Decodes one binary message of the current version.
pub fn decode(msg: &[u8]) -> Result<PeerMessage<'_>, WireError> {
    decode_version(msg, VERSION)
}

/// Decodes one binary message of the link's negotiated `version` (1 or 2).
pub fn decode_version(msg: &[u8], version: u8) -> Result<PeerMessage<'_>, WireError> {
    let (&t, rest) = msg.split_first().ok_or(WireError::Empty)?;
    let mut r = Reader(rest);
    let m = match t {
        tag::HELLO => {
            let hello_version = r.u8()?;
            if hello_version != version {
                return Err(WireError::Version(hello_version));
            }
            PeerMessage::Hello {
                node: r.str()?,
                incarnation: r.u64()?,
            }
        }
        tag::EVENTS => {
            let first_seq = r.u64()?;
            let count = r.u32()?;
            // Sequences start at 1, and the last must fit: the receiver's
            // resume bookkeeping adds without wrapping.
            if count > 0
                && (first_seq == 0 || first_seq.checked_add(u64::from(count) - 1).is_none())
            {
                return Err(WireError::BadSequence);
            }
            let body = r.0;
            // Check the whole batch now, so iteration cannot fail later.
            // Payloads become clients' text frames: they must be UTF-8
            // (a browser drops a connection that receives anything else).
            for _ in 0..count {
                if r.str()?.is_empty() {
                    return Err(WireError::EmptyGroup);
                }
                r.origin(version)?;
                if simdutf8::basic::from_utf8(r.payload()?).is_err() {
                    return Err(WireError::PayloadNotUtf8);
                }
            }
            let used = body.len() - r.0.len();
            PeerMessage::Events {
                first_seq,
                events: Events {
                    count,
                    version,
                    body: &body[..used],
                },
            }
        }
        tag::INTEREST_ACK => PeerMessage::InterestAck { epoch: r.u64()? },
        tag::WELCOME => {
            let node = r.str()?;
            let incarnation = r.u64()?;
            let known = r.u8()? != 0;
            let seq = r.u64()?;
            PeerMessage::Welcome {
                node,
                incarnation,
                resume: known.then_some(seq),
            }
        }
        tag::INTEREST => {
            let epoch = r.u64()?;
            let full = r.u8()? != 0;
            let added = r.strs()?;
            let removed = r.strs()?;
            PeerMessage::Interest {
                epoch,
                full,
                added,
                removed,
            }
        }
        tag::ACK => PeerMessage::Ack { seq: r.u64()? },
        other => return Err(WireError::UnknownTag(other)),
    };
    if !r.0.is_empty() {
        return Err(WireError::Trailing(r.0.len()));
    }
    Ok(m)
}

pub fn hello(node: &str, incarnation: u64) -> BytesMut {
    hello_version(node, incarnation, VERSION)
}

/// The hello of a link that negotiated `version`.
pub fn hello_version(node: &str, incarnation: u64, version: u8) -> BytesMut {
    let mut b = BytesMut::with_capacity(16 + node.len());
    b.put_u8(tag::HELLO);
    b.put_u8(version);
    put_str(&mut b, node);
    b.put_u64(incarnation);
    b
}

pub fn welcome(node: &str, incarnation: u64, resume: Option<u64>) -> BytesMut {
    let mut b = BytesMut::with_capacity(24 + node.len());
    b.put_u8(tag::WELCOME);
    put_str(&mut b, node);
    b.put_u64(incarnation);
    b.put_u8(resume.is_some() as u8);
    b.put_u64(resume.unwrap_or(0));
    b
}

pub fn interest<'a>(
    epoch: u64,
    full: bool,
    added: impl ExactSizeIterator<Item = &'a str>,
    removed: impl ExactSizeIterator<Item = &'a str>,
) -> BytesMut {
    let mut b = BytesMut::with_capacity(64);
    b.put_u8(tag::INTEREST);
    b.put_u64(epoch);
    b.put_u8(full as u8);
    put_list(&mut b, added);
    put_list(&mut b, removed);
    b
}

pub fn interest_ack(epoch: u64) -> BytesMut {
    let mut b = BytesMut::with_capacity(9);
    b.put_u8(tag::INTEREST_ACK);
    b.put_u64(epoch);
    b
}

pub fn ack(seq: u64) -> BytesMut {
    let mut b = BytesMut::with_capacity(9);
    b.put_u8(tag::ACK);
    b.put_u64(seq);
    b
}

/// Builds an `Events` message in place: `start`, then `push` each event.
/// The caller reserves room for the websocket header in front, so the
/// batch is framed and masked without another copy.
pub struct EventsWriter {
    pub buf: BytesMut,
    head: usize,
    count: u32,
    version: u8,
}

impl EventsWriter {
    /// Starts a batch of the current version after `reserve_front` bytes
    /// of room.
    pub fn start(buf: BytesMut, reserve_front: usize, first_seq: u64) -> Self {
        Self::start_version(buf, reserve_front, first_seq, VERSION)
    }

    /// Starts a batch of the link's negotiated `version`.
    pub fn start_version(
        mut buf: BytesMut,
        reserve_front: usize,
        first_seq: u64,
        version: u8,
    ) -> Self {
        buf.clear();
        buf.resize(reserve_front, 0);
        let head = buf.len();
        buf.put_u8(tag::EVENTS);
        buf.put_u64(first_seq);
        buf.put_u32(0);
        Self {
            buf,
            head,
            count: 0,
            version,
        }
    }

    /// Appends one event; a version 1 link carries no origin.
    pub fn push(&mut self, group: &str, origin: Origin, payload: &[u8]) {
        put_str(&mut self.buf, group);
        if self.version >= 2 {
            put_origin(&mut self.buf, origin);
        }
        self.buf.put_u32(payload.len() as u32);
        self.buf.extend_from_slice(payload);
        self.count += 1;
    }

    pub fn count(&self) -> u32 {
        self.count
    }

    /// The message's size so far, without the room in front.
    pub fn len(&self) -> usize {
        self.buf.len() - self.head
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Fills in the count; returns the buffer and where the message starts.
    pub fn finish(mut self) -> (BytesMut, usize) {
        let at = self.head + 9;
        self.buf[at..at + 4].copy_from_slice(&self.count.to_be_bytes());
        (self.buf, self.head)
    }
}

/// One broker message (`backplane::broker`): a run of one sending node's
/// events of one group, each with the sender's sequence number. The group
/// is the message's subject too; the receiver checks that both agree.
#[derive(Debug, PartialEq, Eq)]
pub struct BrokerBatch<'a> {
    pub node: &'a str,
    pub incarnation: u64,
    pub group: &'a str,
    pub events: BrokerEvents<'a>,
}

/// The `(seq, origin, payload)` triples of a broker message, read in place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerEvents<'a> {
    count: u32,
    version: u8,
    body: &'a [u8],
}

impl BrokerEvents<'_> {
    pub fn len(&self) -> usize {
        self.count as usize
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

impl<'a> IntoIterator for BrokerEvents<'a> {
    type Item = (u64, Origin, &'a [u8]);
    type IntoIter = BrokerEventIter<'a>;
    fn into_iter(self) -> BrokerEventIter<'a> {
        BrokerEventIter {
            left: self.count,
            version: self.version,
            r: Reader(self.body),
        }
    }
}

/// Iterates `(seq, origin, payload)`; the body was checked whole by
/// `decode_broker`.
pub struct BrokerEventIter<'a> {
    left: u32,
    version: u8,
    r: Reader<'a>,
}

impl<'a> Iterator for BrokerEventIter<'a> {
    type Item = (u64, Origin, &'a [u8]);
    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let seq = self.r.u64().ok()?;
        let origin = self.r.origin(self.version).ok()?;
        let payload = self.r.payload().ok()?;
        Some((seq, origin, payload))
    }
}

/// Decodes a broker message. Everything a client could see is checked
/// here: a name, a non-empty group, sequences from 1 and strictly rising,
/// UTF-8 payloads.
pub fn decode_broker(msg: &[u8]) -> Result<BrokerBatch<'_>, WireError> {
    let (&t, rest) = msg.split_first().ok_or(WireError::Empty)?;
    if t != tag::BROKER_EVENTS {
        return Err(WireError::UnknownTag(t));
    }
    let mut r = Reader(rest);
    // Version 1 messages (no origins) still come from older nodes.
    let version = r.u8()?;
    if !(1..=VERSION).contains(&version) {
        return Err(WireError::Version(version));
    }
    let node = r.str()?;
    let incarnation = r.u64()?;
    let group = r.str()?;
    if group.is_empty() {
        return Err(WireError::EmptyGroup);
    }
    let count = r.u32()?;
    let body = r.0;
    let mut last = 0u64;
    for _ in 0..count {
        let seq = r.u64()?;
        if seq <= last {
            return Err(WireError::BadSequence);
        }
        last = seq;
        r.origin(version)?;
        if simdutf8::basic::from_utf8(r.payload()?).is_err() {
            return Err(WireError::PayloadNotUtf8);
        }
    }
    if !r.0.is_empty() {
        return Err(WireError::Trailing(r.0.len()));
    }
    Ok(BrokerBatch {
        node,
        incarnation,
        group,
        events: BrokerEvents {
            count,
            version,
            body,
        },
    })
}

/// Builds a broker message: `start`, then `push` each event in order.
pub struct BrokerWriter {
    buf: BytesMut,
    count_at: usize,
    count: u32,
}

impl BrokerWriter {
    pub fn start(node: &str, incarnation: u64, group: &str) -> Self {
        let mut buf = BytesMut::with_capacity(4096);
        buf.put_u8(tag::BROKER_EVENTS);
        buf.put_u8(VERSION);
        put_str(&mut buf, node);
        buf.put_u64(incarnation);
        put_str(&mut buf, group);
        let count_at = buf.len();
        buf.put_u32(0);
        Self {
            buf,
            count_at,
            count: 0,
        }
    }

    /// The most one event adds to a message besides its payload (`push`):
    /// its sequence (8), its origin (1, or 17 with a stream entry) and its
    /// length (4).
    pub const EVENT_OVERHEAD: usize = 8 + 1 + 16 + 4;

    pub fn push(&mut self, seq: u64, origin: Origin, payload: &[u8]) {
        self.buf.put_u64(seq);
        put_origin(&mut self.buf, origin);
        self.buf.put_u32(payload.len() as u32);
        self.buf.extend_from_slice(payload);
        self.count += 1;
    }

    /// The message's size so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn finish(mut self) -> bytes::Bytes {
        let at = self.count_at;
        self.buf[at..at + 4].copy_from_slice(&self.count.to_be_bytes());
        self.buf.freeze()
    }
}

fn put_list<'a>(b: &mut BytesMut, list: impl ExactSizeIterator<Item = &'a str>) {
    b.put_u32(list.len() as u32);
    for g in list {
        put_str(b, g);
    }
}

/// An origin: a kind byte (0 none, 1 live, 2 replay), then the entry id's
/// two numbers unless none.
fn put_origin(b: &mut BytesMut, origin: Origin) {
    match origin {
        Origin::None => b.put_u8(0),
        Origin::Live(id) | Origin::Replay(id) => {
            b.put_u8(if matches!(origin, Origin::Live(_)) {
                1
            } else {
                2
            });
            b.put_u64(id.ms);
            b.put_u64(id.seq);
        }
    }
}

fn put_str(b: &mut BytesMut, s: &str) {
    // Group names are bounded far below 64 KiB by --max-group-name; node
    // names likewise. A longer one is cut at the bound rather than wrapped.
    let n = s.len().min(u16::MAX as usize);
    b.put_u16(n as u16);
    b.extend_from_slice(&s.as_bytes()[..n]);
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.0.len() < n {
            return Err(WireError::Truncated);
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, WireError> {
        Ok(u16::from_be_bytes(self.take(2)?.try_into().unwrap()))
    }
    fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_be_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_be_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn str(&mut self) -> Result<&'a str, WireError> {
        let n = self.u16()? as usize;
        std::str::from_utf8(self.take(n)?).map_err(|_| WireError::NotUtf8)
    }
    fn payload(&mut self) -> Result<&'a [u8], WireError> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    /// An event's origin; version 1 carries none.
    fn origin(&mut self, version: u8) -> Result<Origin, WireError> {
        if version < 2 {
            return Ok(Origin::None);
        }
        let kind = self.u8()?;
        if kind == 0 {
            return Ok(Origin::None);
        }
        let id = StreamId {
            ms: self.u64()?,
            seq: self.u64()?,
        };
        match kind {
            1 => Ok(Origin::Live(id)),
            2 => Ok(Origin::Replay(id)),
            other => Err(WireError::BadOrigin(other)),
        }
    }
    fn strs(&mut self) -> Result<Vec<&'a str>, WireError> {
        let n = self.u32()? as usize;
        // Each string takes at least two bytes: a bogus count cannot make
        // this allocate more than the message could hold.
        if n > self.0.len() / 2 {
            return Err(WireError::Truncated);
        }
        (0..n).map(|_| self.str()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_messages_round_trip() {
        assert_eq!(
            decode(&hello("node-a", 7)).unwrap(),
            PeerMessage::Hello {
                node: "node-a",
                incarnation: 7
            }
        );
        assert_eq!(
            decode(&welcome("b", 9, Some(41))).unwrap(),
            PeerMessage::Welcome {
                node: "b",
                incarnation: 9,
                resume: Some(41)
            }
        );
        assert_eq!(
            decode(&welcome("b", 9, None)).unwrap(),
            PeerMessage::Welcome {
                node: "b",
                incarnation: 9,
                resume: None
            }
        );
        let m = interest(
            5,
            true,
            ["job_events-1", "jobs-status_changed"].into_iter(),
            std::iter::empty(),
        );
        assert_eq!(
            decode(&m).unwrap(),
            PeerMessage::Interest {
                epoch: 5,
                full: true,
                added: vec!["job_events-1", "jobs-status_changed"],
                removed: vec![]
            }
        );
        assert_eq!(
            decode(&interest_ack(3)).unwrap(),
            PeerMessage::InterestAck { epoch: 3 }
        );
        assert_eq!(decode(&ack(99)).unwrap(), PeerMessage::Ack { seq: 99 });
    }

    #[test]
    fn events_batch_round_trips_after_reserved_room() {
        let id = |ms, seq| StreamId { ms, seq };
        let mut w = EventsWriter::start(BytesMut::new(), 14, 100);
        w.push("g1", Origin::Live(id(1_700_000_000_000, 3)), b"{\"a\":1}");
        w.push("g2", Origin::None, b"");
        w.push("g1", Origin::Replay(id(5, u64::MAX)), &[b'x'; 70_000]);
        assert_eq!(w.count(), 3);
        let (buf, at) = w.finish();
        assert_eq!(at, 14);
        let PeerMessage::Events { first_seq, events } = decode(&buf[at..]).unwrap() else {
            panic!("not events");
        };
        assert_eq!(first_seq, 100);
        assert_eq!(events.len(), 3);
        let got: Vec<_> = events.into_iter().collect();
        assert_eq!(
            got[0],
            (
                "g1",
                Origin::Live(id(1_700_000_000_000, 3)),
                &b"{\"a\":1}"[..]
            )
        );
        assert_eq!(got[1], ("g2", Origin::None, &b""[..]));
        assert_eq!(got[2].1, Origin::Replay(id(5, u64::MAX)));
        assert_eq!(got[2].2.len(), 70_000);
    }

    /// Links to nodes that speak only version 1 carry no origins, and
    /// their messages decode as they always did.
    #[test]
    fn version_1_links_carry_no_origins() {
        assert_eq!(version_of(SUBPROTOCOL_V1), Some(1));
        assert_eq!(version_of(SUBPROTOCOL), Some(VERSION));
        assert_eq!(version_of("wsrelay.peer.v9"), None);
        let origin = Origin::Live(StreamId { ms: 1, seq: 2 });
        let mut w = EventsWriter::start_version(BytesMut::new(), 0, 1, 1);
        w.push("g", origin, b"{}");
        let (v1, _) = w.finish();
        let mut w = EventsWriter::start(BytesMut::new(), 0, 1);
        w.push("g", origin, b"{}");
        let (v2, _) = w.finish();
        assert_eq!(v2.len(), v1.len() + 17);
        let PeerMessage::Events { events, .. } = decode_version(&v1, 1).unwrap() else {
            panic!("not events");
        };
        let got: Vec<_> = events.into_iter().collect();
        assert_eq!(got, vec![("g", Origin::None, &b"{}"[..])]);
        // Each side reads what its version says: a mismatch is an error,
        // not a misreading.
        assert!(decode_version(&v1, 2).is_err());
        assert!(decode_version(&v2, 1).is_err());
        assert_eq!(
            decode_version(&hello_version("n", 1, 1), 2),
            Err(WireError::Version(1))
        );
        assert!(decode_version(&hello_version("n", 1, 1), 1).is_ok());
        // An origin kind that does not exist.
        let mut bad = v2.to_vec();
        let kind_at = 1 + 8 + 4 + 2 + 1;
        bad[kind_at] = 7;
        assert_eq!(decode(&bad), Err(WireError::BadOrigin(7)));
    }

    #[test]
    fn stream_ids_parse_and_order_as_redis_does() {
        let a = StreamId::parse("1700000000000-0").unwrap();
        let b = StreamId::parse("1700000000000-10").unwrap();
        let c = StreamId::parse("1700000000001-0").unwrap();
        assert!(a < b && b < c);
        assert_eq!(b.to_string(), "1700000000000-10");
        assert_eq!(StreamId::parse("17"), None);
        assert_eq!(StreamId::parse("a-1"), None);
    }

    #[test]
    fn malformed_messages_are_errors_not_panics() {
        assert_eq!(decode(b""), Err(WireError::Empty));
        assert_eq!(decode(&[0x55]), Err(WireError::UnknownTag(0x55)));
        let mut h = hello("n", 1);
        h[1] = 9;
        assert_eq!(decode(&h), Err(WireError::Version(9)));
        let mut w = EventsWriter::start(BytesMut::new(), 0, 1);
        w.push("g", Origin::Live(StreamId { ms: 1, seq: 1 }), b"abc");
        let (buf, _) = w.finish();
        for cut in 1..buf.len() {
            assert!(decode(&buf[..cut]).is_err(), "cut at {cut}");
        }
        let mut long = buf.to_vec();
        long.push(0);
        assert_eq!(decode(&long), Err(WireError::Trailing(1)));
        // A count far beyond the bytes present.
        let mut bogus = vec![0x82];
        bogus.extend_from_slice(&1u64.to_be_bytes());
        bogus.push(1);
        bogus.extend_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(decode(&bogus), Err(WireError::Truncated));
        let mut bad_utf8 = vec![0x01, VERSION, 0, 1, 0xff];
        bad_utf8.extend_from_slice(&0u64.to_be_bytes());
        assert_eq!(decode(&bad_utf8), Err(WireError::NotUtf8));
    }

    /// Regression (issue 10, finding 8): what a hostile peer sends.
    #[test]
    fn peer_events_are_checked() {
        let batch = |first_seq: u64, events: &[(&str, &[u8])]| {
            let mut w = EventsWriter::start(BytesMut::new(), 0, first_seq);
            for (g, p) in events {
                w.push(g, Origin::None, p);
            }
            w.finish().0
        };
        assert_eq!(
            decode(&batch(1, &[("g", &[b'{', 0xC3, 0x28, b'}'])])),
            Err(WireError::PayloadNotUtf8)
        );
        assert_eq!(
            decode(&batch(1, &[("", b"{}")])),
            Err(WireError::EmptyGroup)
        );
        assert_eq!(
            decode(&batch(0, &[("g", b"{}")])),
            Err(WireError::BadSequence)
        );
        assert_eq!(
            decode(&batch(u64::MAX, &[("g", b"1"), ("g", b"2")])),
            Err(WireError::BadSequence)
        );
        // The last possible sequence, alone, is fine; an empty batch too.
        assert!(decode(&batch(u64::MAX, &[("g", b"1")])).is_ok());
        assert!(decode(&batch(0, &[])).is_ok());
    }
}
