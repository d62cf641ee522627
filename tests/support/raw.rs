//! A raw websocket client over a plain TCP socket, for what a well-behaved
//! client library will not send: malformed frames, pongs without reading,
//! a close handshake timed by hand.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::WAIT;

pub struct RawWs {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

/// A masked client frame (key fixed: masking is not secrecy).
pub fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let key = [0x12u8, 0x34, 0x56, 0x78];
    let mut f = vec![(u8::from(fin) << 7) | opcode];
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n if n <= 0xFFFF => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(&key);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    f
}

impl RawWs {
    /// Upgrades on `path` over `stream`; panics unless the answer is 101.
    pub async fn upgrade_on(stream: TcpStream, path: &str) -> RawWs {
        Self::upgrade_with(stream, path, "").await
    }

    /// Like `upgrade_on`, with extra header lines (each ending in `\r\n`).
    pub async fn upgrade_with(stream: TcpStream, path: &str, headers: &str) -> RawWs {
        match Self::try_upgrade_with(stream, path, headers).await {
            Ok(ws) => ws,
            Err(head) => panic!("{head}"),
        }
    }

    /// Like `upgrade_with`; a refusal returns the response head.
    pub async fn try_upgrade_with(
        mut stream: TcpStream,
        path: &str,
        headers: &str,
    ) -> Result<RawWs, String> {
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{headers}\r\n"
        );
        stream.write_all(req.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(WAIT, stream.read(&mut chunk))
                .await
                .expect("response in time")
                .unwrap();
            assert!(n > 0, "closed during the upgrade");
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        if !head.starts_with("HTTP/1.1 101") {
            return Err(head);
        }
        buf.drain(..end);
        Ok(RawWs { stream, buf })
    }

    pub async fn connect(addr: SocketAddr, path: &str) -> RawWs {
        Self::upgrade_on(TcpStream::connect(addr).await.unwrap(), path).await
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    pub async fn send_text(&mut self, text: &str) {
        self.send(&client_frame(true, 1, text.as_bytes())).await;
    }

    /// The next server frame: (opcode, payload); `None` at end of stream.
    pub async fn next_frame(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            if self.buf.len() >= 2 {
                let op = self.buf[0] & 0x0F;
                let (len, at) = match self.buf[1] & 0x7F {
                    126 if self.buf.len() >= 4 => {
                        (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
                    }
                    127 if self.buf.len() >= 10 => {
                        let mut b = [0u8; 8];
                        b.copy_from_slice(&self.buf[2..10]);
                        (u64::from_be_bytes(b) as usize, 10)
                    }
                    126 | 127 => (usize::MAX, 0),
                    n => (n as usize, 2),
                };
                if len != usize::MAX && self.buf.len() >= at + len {
                    let payload = self.buf[at..at + len].to_vec();
                    self.buf.drain(..at + len);
                    return Some((op, payload));
                }
            }
            let mut chunk = vec![0u8; 64 * 1024];
            let n = tokio::time::timeout(WAIT, self.stream.read(&mut chunk))
                .await
                .expect("a frame in time")
                .unwrap_or(0);
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Reads until the server's close frame; returns its code and reason.
    pub async fn next_close(&mut self) -> (u16, String) {
        loop {
            match self.next_frame().await {
                Some((8, p)) => {
                    let code = u16::from_be_bytes([p[0], p[1]]);
                    return (code, String::from_utf8_lossy(&p[2..]).into_owned());
                }
                Some(_) => continue,
                None => panic!("closed without a close frame"),
            }
        }
    }

    /// The next text frame.
    pub async fn next_text(&mut self) -> String {
        match self.next_frame().await {
            Some((1, p)) => String::from_utf8(p).unwrap(),
            other => panic!("expected text, got {other:?}"),
        }
    }

    /// Waits for the server to end the TCP connection.
    pub async fn expect_eof(&mut self) {
        let mut chunk = [0u8; 4096];
        loop {
            let n = tokio::time::timeout(WAIT, self.stream.read(&mut chunk))
                .await
                .expect("the server closes the connection in time")
                .unwrap_or(0);
            if n == 0 {
                return;
            }
        }
    }
}
