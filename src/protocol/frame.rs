//! RFC 6455 frames: an incremental decoder over bytes the driver read, and
//! encoders for the frames the server (or the bundled client) writes.
//!
//! Why by hand and not fastwebsockets' reader: its decoder pulls from a
//! `tokio::io::AsyncRead`, while wsrelay has two drivers (tokio epoll and,
//! later, tokio-uring with owned buffers) that must decode identically. An
//! I/O-free decoder over a `BytesMut` serves both, and is what the fuzz
//! targets and benches drive.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Close codes wsrelay sends (RFC 6455 section 7.4.1).
pub mod close_code {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL_ERROR: u16 = 1002;
    pub const UNSUPPORTED_DATA: u16 = 1003;
    pub const INVALID_PAYLOAD: u16 = 1007;
    pub const POLICY_VIOLATION: u16 = 1008;
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    pub const INTERNAL_ERROR: u16 = 1011;
    pub const TRY_AGAIN_LATER: u16 = 1013;
}

/// Frame opcodes.
pub mod opcode {
    pub const CONTINUATION: u8 = 0x0;
    pub const TEXT: u8 = 0x1;
    pub const BINARY: u8 = 0x2;
    pub const CLOSE: u8 = 0x8;
    pub const PING: u8 = 0x9;
    pub const PONG: u8 = 0xA;
}

/// Which side of the connection the decoder sits on: a server requires every
/// frame masked, a client requires none masked (RFC 6455 section 5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Server,
    Client,
}

/// One complete message (fragments already joined) or control frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A text message; the bytes are valid UTF-8. Mutable so that simd-json
    /// can parse in place without another copy.
    Text(BytesMut),
    /// A binary message.
    Binary(BytesMut),
    Ping(Bytes),
    Pong(Bytes),
    /// A close frame: the code (1005 when the frame carried none) and reason.
    Close(u16, String),
}

/// Why the peer's byte stream cannot go on; maps to the close frame to send.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason} (close {code})")]
pub struct FrameError {
    pub code: u16,
    pub reason: &'static str,
}

impl FrameError {
    const fn new(code: u16, reason: &'static str) -> Self {
        Self { code, reason }
    }
}

/// Incremental decoder: feed it the read buffer; it consumes whole frames.
#[derive(Debug)]
pub struct Decoder {
    role: Role,
    max_message: usize,
    /// Opcode and collected payload of a fragmented message in progress.
    partial: Option<(u8, BytesMut)>,
}

impl Decoder {
    /// `max_message` bounds a single message after fragments are joined.
    pub fn new(role: Role, max_message: usize) -> Self {
        Self {
            role,
            max_message,
            partial: None,
        }
    }

    /// Decodes the next complete message from `buf`, consuming its bytes.
    /// `Ok(None)` means more bytes are needed. After an error the stream is
    /// unusable and the caller closes with the error's code.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Message>, FrameError> {
        loop {
            let Some(header) = self.parse_header(buf)? else {
                return Ok(None);
            };
            if buf.len() < header.header_len + header.payload_len {
                // Reserve once for the whole frame so a large frame is not
                // read through many reallocations.
                buf.reserve(header.header_len + header.payload_len - buf.len());
                return Ok(None);
            }
            buf.advance(header.header_len);
            let mut payload = buf.split_to(header.payload_len);
            if let Some(mask) = header.mask {
                apply_mask(&mut payload, mask);
            }
            if let Some(message) = self.assemble(header.fin, header.opcode, payload)? {
                return Ok(Some(message));
            }
        }
    }

    fn parse_header(&self, buf: &BytesMut) -> Result<Option<Header>, FrameError> {
        if buf.len() < 2 {
            return Ok(None);
        }
        let (b0, b1) = (buf[0], buf[1]);
        if b0 & 0x70 != 0 {
            return Err(FrameError::new(
                close_code::PROTOCOL_ERROR,
                "reserved bits set",
            ));
        }
        let masked = b1 & 0x80 != 0;
        match (self.role, masked) {
            (Role::Server, false) => {
                return Err(FrameError::new(
                    close_code::PROTOCOL_ERROR,
                    "client frames must be masked",
                ))
            }
            (Role::Client, true) => {
                return Err(FrameError::new(
                    close_code::PROTOCOL_ERROR,
                    "server frames must not be masked",
                ))
            }
            _ => {}
        }
        let opcode = b0 & 0x0F;
        let fin = b0 & 0x80 != 0;
        let is_control = opcode & 0x08 != 0;
        let len7 = (b1 & 0x7F) as usize;
        if is_control && (!fin || len7 > 125) {
            return Err(FrameError::new(
                close_code::PROTOCOL_ERROR,
                "invalid control frame",
            ));
        }
        // RFC 6455 5.2: "the minimal number of bytes MUST be used to encode
        // the length", and the 64-bit form's most significant bit is 0.
        let non_minimal =
            || FrameError::new(close_code::PROTOCOL_ERROR, "non-minimal length encoding");
        let (payload_len, mut header_len) = match len7 {
            126 => {
                if buf.len() < 4 {
                    return Ok(None);
                }
                let len = u16::from_be_bytes([buf[2], buf[3]]) as usize;
                if len < 126 {
                    return Err(non_minimal());
                }
                (len, 4)
            }
            127 => {
                if buf.len() < 10 {
                    return Ok(None);
                }
                let mut len = [0u8; 8];
                len.copy_from_slice(&buf[2..10]);
                let len = u64::from_be_bytes(len);
                if len <= u64::from(u16::MAX) || len >> 63 != 0 {
                    return Err(non_minimal());
                }
                // Checked before any allocation: a header announcing 2^63
                // bytes must cost nothing.
                (usize::try_from(len).unwrap_or(usize::MAX), 10)
            }
            n => (n, 2),
        };
        // Control frames may arrive between fragments; they are not part of
        // the message being collected, so they do not count towards it.
        let collected = if is_control {
            0
        } else {
            self.partial.as_ref().map_or(0, |(_, p)| p.len())
        };
        if payload_len > self.max_message || collected + payload_len > self.max_message {
            return Err(FrameError::new(
                close_code::MESSAGE_TOO_BIG,
                "message too big",
            ));
        }
        let mask = if masked {
            if buf.len() < header_len + 4 {
                return Ok(None);
            }
            let mut key = [0u8; 4];
            key.copy_from_slice(&buf[header_len..header_len + 4]);
            header_len += 4;
            Some(key)
        } else {
            None
        };
        Ok(Some(Header {
            fin,
            opcode,
            mask,
            header_len,
            payload_len,
        }))
    }

    fn assemble(
        &mut self,
        fin: bool,
        op: u8,
        payload: BytesMut,
    ) -> Result<Option<Message>, FrameError> {
        match op {
            opcode::TEXT | opcode::BINARY => {
                if self.partial.is_some() {
                    return Err(FrameError::new(
                        close_code::PROTOCOL_ERROR,
                        "new message inside a fragmented one",
                    ));
                }
                if fin {
                    return finish(op, payload).map(Some);
                }
                self.partial = Some((op, payload));
                Ok(None)
            }
            opcode::CONTINUATION => {
                let Some((_, collected)) = self.partial.as_mut() else {
                    return Err(FrameError::new(
                        close_code::PROTOCOL_ERROR,
                        "continuation without a message",
                    ));
                };
                collected.extend_from_slice(&payload);
                if !fin {
                    return Ok(None);
                }
                let (op, collected) = self.partial.take().expect("checked above");
                finish(op, collected).map(Some)
            }
            opcode::PING => Ok(Some(Message::Ping(payload.freeze()))),
            opcode::PONG => Ok(Some(Message::Pong(payload.freeze()))),
            opcode::CLOSE => parse_close(&payload).map(Some),
            _ => Err(FrameError::new(
                close_code::PROTOCOL_ERROR,
                "unknown opcode",
            )),
        }
    }
}

struct Header {
    fin: bool,
    opcode: u8,
    mask: Option<[u8; 4]>,
    header_len: usize,
    payload_len: usize,
}

fn finish(op: u8, payload: BytesMut) -> Result<Message, FrameError> {
    if op == opcode::BINARY {
        return Ok(Message::Binary(payload));
    }
    if std::str::from_utf8(&payload).is_err() {
        return Err(FrameError::new(
            close_code::INVALID_PAYLOAD,
            "text frame is not valid utf-8",
        ));
    }
    Ok(Message::Text(payload))
}

fn parse_close(payload: &[u8]) -> Result<Message, FrameError> {
    match payload.len() {
        0 => Ok(Message::Close(1005, String::new())),
        1 => Err(FrameError::new(
            close_code::PROTOCOL_ERROR,
            "close frame with a one-byte body",
        )),
        _ => {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            // RFC 6455 7.4: 1005, 1006 and 1015 are never sent on the wire;
            // 1016-2999 are reserved; 5000 and up are not codes.
            if !matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999) {
                return Err(FrameError::new(
                    close_code::PROTOCOL_ERROR,
                    "invalid close code",
                ));
            }
            let reason = std::str::from_utf8(&payload[2..]).map_err(|_| {
                FrameError::new(close_code::INVALID_PAYLOAD, "close reason is not utf-8")
            })?;
            Ok(Message::Close(code, reason.to_owned()))
        }
    }
}

/// XORs `buf` with the 4-byte masking key, a word at a time where it can.
pub fn apply_mask(buf: &mut [u8], key: [u8; 4]) {
    let word = u32::from_ne_bytes(key);
    let mut chunks = buf.chunks_exact_mut(4);
    for chunk in &mut chunks {
        let v = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]) ^ word;
        chunk.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= key[i];
    }
}

/// Length of the header of an unmasked frame with a payload of `len` bytes.
pub const fn header_len(len: usize) -> usize {
    if len < 126 {
        2
    } else if len <= u16::MAX as usize {
        4
    } else {
        10
    }
}

fn put_header(out: &mut BytesMut, op: u8, len: usize, masked: bool) {
    let mask_bit = if masked { 0x80 } else { 0 };
    out.put_u8(0x80 | op);
    if len < 126 {
        out.put_u8(mask_bit | len as u8);
    } else if len <= u16::MAX as usize {
        out.put_u8(mask_bit | 126);
        out.put_u16(len as u16);
    } else {
        out.put_u8(mask_bit | 127);
        out.put_u64(len as u64);
    }
}

/// A complete unmasked server text frame, header and payload in one buffer:
/// the unit the fan-out core builds once per event and shares.
pub fn text_frame(payload: &[u8]) -> Bytes {
    server_frame(opcode::TEXT, payload)
}

/// A server pong answering a ping with `payload`.
pub fn pong_frame(payload: &[u8]) -> Bytes {
    server_frame(opcode::PONG, payload)
}

/// A server ping.
pub fn ping_frame(payload: &[u8]) -> Bytes {
    server_frame(opcode::PING, payload)
}

/// A server close frame. The reason is cut at a character boundary so the
/// control frame stays within 125 bytes.
pub fn close_frame(code: u16, reason: &str) -> Bytes {
    let payload = close_payload(code, reason);
    server_frame(opcode::CLOSE, &payload)
}

fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut cut = reason.len().min(123);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut payload = Vec::with_capacity(2 + cut);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..cut]);
    payload
}

fn server_frame(op: u8, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(header_len(payload.len()) + payload.len());
    put_header(&mut out, op, payload.len(), false);
    out.extend_from_slice(payload);
    out.freeze()
}

/// Client-side frames (masked), for the bundled client used by `demo` and
/// the load tester.
pub mod client {
    use super::*;

    /// A masked client text frame.
    pub fn text_frame(payload: &[u8], key: [u8; 4]) -> Bytes {
        masked(opcode::TEXT, payload, key)
    }

    /// A masked client pong.
    pub fn pong_frame(payload: &[u8], key: [u8; 4]) -> Bytes {
        masked(opcode::PONG, payload, key)
    }

    /// A masked client close frame.
    pub fn close_frame(code: u16, reason: &str, key: [u8; 4]) -> Bytes {
        masked(opcode::CLOSE, &close_payload(code, reason), key)
    }

    /// Any masked frame; exposed for tests that need odd opcodes.
    pub fn frame(op: u8, fin: bool, payload: &[u8], key: [u8; 4]) -> Bytes {
        let mut out = BytesMut::with_capacity(header_len(payload.len()) + 4 + payload.len());
        put_header(&mut out, op, payload.len(), true);
        if !fin {
            out[0] &= 0x7F;
        }
        out.extend_from_slice(&key);
        let start = out.len();
        out.extend_from_slice(payload);
        apply_mask(&mut out[start..], key);
        out.freeze()
    }

    fn masked(op: u8, payload: &[u8], key: [u8; 4]) -> Bytes {
        frame(op, true, payload, key)
    }

    /// Room to leave in front of a payload for `frame_in_place`: the
    /// longest client header (2 + 8 length bytes + 4 mask bytes).
    pub const MAX_HEADER: usize = 14;

    /// Frames and masks a payload already in `buf` after `MAX_HEADER`
    /// bytes of room, without copying it: the peer links build batches
    /// this way.
    pub fn frame_in_place(mut buf: BytesMut, op: u8, key: [u8; 4]) -> Bytes {
        let len = buf.len() - MAX_HEADER;
        let hlen = header_len(len) + 4;
        let start = MAX_HEADER - hlen;
        let mut head = BytesMut::with_capacity(hlen);
        put_header(&mut head, op, len, true);
        head.extend_from_slice(&key);
        buf[start..MAX_HEADER].copy_from_slice(&head);
        apply_mask(&mut buf[MAX_HEADER..], key);
        buf.freeze().slice(start..)
    }
}

/// An unmasked server binary frame.
pub fn binary_frame(payload: &[u8]) -> Bytes {
    server_frame(opcode::BINARY, payload)
}

#[cfg(test)]
mod tests;
