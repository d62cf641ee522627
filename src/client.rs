//! A minimal websocket client over the crate's own frame codec, for `demo`
//! and the load tester, where thousands of clients must cost little. Tests
//! use an independent client crate instead.

use std::net::SocketAddr;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::protocol::frame::{self, Decoder, Message, Role};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("upgrade refused: {0}")]
    Upgrade(String),
    #[error("bad frame from server: {0}")]
    Frame(#[from] frame::FrameError),
    #[error("connection closed")]
    Closed,
    #[error("unexpected reply: {0}")]
    Unexpected(String),
}

pub struct Client {
    stream: TcpStream,
    buf: BytesMut,
    decoder: Decoder,
    mask_seed: u32,
}

impl Client {
    /// Connects to `addr` and upgrades on `path_and_query` (for example
    /// `/websocket/?token=...`).
    pub async fn connect(addr: SocketAddr, path_and_query: &str) -> Result<Client, ClientError> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Self::upgrade(stream, addr, path_and_query).await
    }

    /// Connects from `local` (an address of this host, so that one client
    /// machine can open more connections than one address has ports).
    pub async fn connect_from(
        local: std::net::IpAddr,
        addr: SocketAddr,
        path_and_query: &str,
    ) -> Result<Client, ClientError> {
        let socket = match local {
            std::net::IpAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
            std::net::IpAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
        };
        socket.bind(SocketAddr::new(local, 0))?;
        let stream = socket.connect(addr).await?;
        stream.set_nodelay(true)?;
        Self::upgrade(stream, addr, path_and_query).await
    }

    /// A subscribed client: connects with `token` on `/websocket/`, checks
    /// the accept message, sends `groups_message` (a `{"groups": ...}`
    /// text) and waits for its reply.
    pub async fn join(
        addr: SocketAddr,
        token: &str,
        groups_message: &str,
    ) -> Result<Client, ClientError> {
        let mut c = Client::connect(addr, &format!("/websocket/?token={token}")).await?;
        let accept = c.next_text().await?;
        if !accept.starts_with(b"{\"accept\": true") {
            return Err(ClientError::Unexpected(
                String::from_utf8_lossy(&accept).into_owned(),
            ));
        }
        c.send_text(groups_message).await?;
        let reply = c.next_text().await?;
        if !reply.starts_with(b"{\"groups_current\"") {
            return Err(ClientError::Unexpected(
                String::from_utf8_lossy(&reply).into_owned(),
            ));
        }
        Ok(c)
    }

    /// Upgrades an already connected stream.
    pub async fn upgrade(
        stream: TcpStream,
        addr: SocketAddr,
        path_and_query: &str,
    ) -> Result<Client, ClientError> {
        Self::upgrade_with(stream, addr, path_and_query, "").await
    }

    /// Upgrades with extra request header lines (each ending in `\r\n`),
    /// for example a `Cookie:` line.
    pub async fn upgrade_with(
        mut stream: TcpStream,
        addr: SocketAddr,
        path_and_query: &str,
        headers: &str,
    ) -> Result<Client, ClientError> {
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let req = format!(
            "GET {path_and_query} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n{headers}\r\n"
        );
        stream.write_all(req.as_bytes()).await?;
        let mut buf = BytesMut::with_capacity(16 * 1024);
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if buf.len() > 16 * 1024 || stream.read_buf(&mut buf).await? == 0 {
                return Err(ClientError::Upgrade("no complete response head".into()));
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        if !head.starts_with("HTTP/1.1 101") {
            return Err(ClientError::Upgrade(
                head.lines().next().unwrap_or("").to_owned(),
            ));
        }
        let _ = buf.split_to(end);
        Ok(Client {
            stream,
            buf,
            decoder: Decoder::new(Role::Client, 64 * 1024 * 1024),
            mask_seed: rand::random(),
        })
    }

    fn mask(&mut self) -> [u8; 4] {
        // xorshift: masks need not be secret from ourselves, only varied.
        self.mask_seed ^= self.mask_seed << 13;
        self.mask_seed ^= self.mask_seed >> 17;
        self.mask_seed ^= self.mask_seed << 5;
        self.mask_seed.to_ne_bytes()
    }

    pub async fn send_text(&mut self, text: &str) -> Result<(), ClientError> {
        let key = self.mask();
        let f = frame::client::text_frame(text.as_bytes(), key);
        self.stream.write_all(&f).await?;
        Ok(())
    }

    /// The next text message; answers pings on the way.
    pub async fn next_text(&mut self) -> Result<BytesMut, ClientError> {
        loop {
            match self.next_message().await? {
                Message::Text(t) => return Ok(t),
                Message::Ping(p) => {
                    let key = self.mask();
                    let f = frame::client::pong_frame(&p, key);
                    self.stream.write_all(&f).await?;
                }
                Message::Close(..) => return Err(ClientError::Closed),
                _ => {}
            }
        }
    }

    /// The next message of any kind.
    pub async fn next_message(&mut self) -> Result<Message, ClientError> {
        loop {
            if let Some(m) = self.decoder.decode(&mut self.buf)? {
                return Ok(m);
            }
            if self.buf.capacity() - self.buf.len() < 4096 {
                self.buf.reserve(64 * 1024);
            }
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Err(ClientError::Closed);
            }
        }
    }

    /// Sends one frame of any kind (masked, final).
    pub async fn send(&mut self, op: u8, payload: &[u8]) -> Result<(), ClientError> {
        let key = self.mask();
        let f = frame::client::frame(op, true, payload, key);
        self.stream.write_all(&f).await?;
        Ok(())
    }

    /// Sends a close frame with `code` and `reason`.
    pub async fn close_with(&mut self, code: u16, reason: &str) -> Result<(), ClientError> {
        let key = self.mask();
        let f: Bytes = frame::client::close_frame(code, reason, key);
        self.stream.write_all(&f).await?;
        Ok(())
    }

    /// Waits (bounded) for the server to end the connection after a close.
    pub async fn finish(&mut self, within: std::time::Duration) {
        let _ = tokio::time::timeout(within, async {
            let mut sink = [0u8; 4096];
            while matches!(self.stream.read(&mut sink).await, Ok(n) if n > 0) {}
        })
        .await;
    }

    /// Sends a close frame.
    pub async fn close(&mut self) -> Result<(), ClientError> {
        let key = self.mask();
        let f: Bytes = frame::client::close_frame(frame::close_code::NORMAL, "", key);
        self.stream.write_all(&f).await?;
        Ok(())
    }
}
