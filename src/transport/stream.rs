//! The socket seam between the drivers and the connection state machines:
//! the few operations a connection needs, over `&self` so that one
//! session's reader and writer can use the stream at the same time.
//!
//! Buffers move in and out by value-like handles (`BytesMut` to read into,
//! `Bytes` to write), which is what io_uring's owned-buffer model needs and
//! costs epoll nothing but reference counts.

use std::io;

use bytes::{Bytes, BytesMut};

/// Frames handed to the kernel per vectored write.
pub(crate) const IOVECS: usize = 64;

/// Spare room a read asks for. Client messages are small (a subscribe is
/// ~100 bytes) and every idle connection keeps its buffer, so this is what
/// an idle connection costs in read buffer; bigger messages grow it.
pub(crate) const READ_CHUNK: usize = 1024;

pub(crate) trait Stream: 'static {
    /// Appends what the socket has to `buf`'s spare capacity; `Ok(0)` at the
    /// end of the stream.
    async fn read(&self, buf: &mut BytesMut) -> io::Result<usize>;
    /// Writes as much of `frames`, in order, as the socket takes in one
    /// vectored write, and returns the byte count.
    async fn writev(&self, frames: &mut Vec<Bytes>) -> io::Result<usize>;
    /// Writes all of `data`.
    async fn write_all(&self, data: Vec<u8>) -> io::Result<()>;
    /// Sends FIN.
    fn shutdown_write(&self) -> io::Result<()>;
    /// Shuts both directions down. Called when a connection ends: with
    /// io_uring, dropping a socket that still has a receive in flight does
    /// not close it (the operation holds the file), so the peer would never
    /// see the end; shutting down completes such operations.
    fn shutdown_all(&self);
}

// === impl Stream for tokio (epoll) ===

impl Stream for tokio::net::TcpStream {
    async fn read(&self, buf: &mut BytesMut) -> io::Result<usize> {
        loop {
            self.readable().await?;
            match self.try_read_buf(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                other => return other,
            }
        }
    }

    async fn writev(&self, frames: &mut Vec<Bytes>) -> io::Result<usize> {
        let mut slices = [io::IoSlice::new(&[]); IOVECS];
        let n = frames.len().min(IOVECS);
        for (s, f) in slices.iter_mut().zip(frames.iter()) {
            *s = io::IoSlice::new(f);
        }
        loop {
            self.writable().await?;
            match self.try_write_vectored(&slices[..n]) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                other => return other,
            }
        }
    }

    async fn write_all(&self, data: Vec<u8>) -> io::Result<()> {
        let mut at = 0;
        while at < data.len() {
            self.writable().await?;
            match self.try_write(&data[at..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => at += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn shutdown_write(&self) -> io::Result<()> {
        socket2::SockRef::from(self).shutdown(std::net::Shutdown::Write)
    }

    fn shutdown_all(&self) {
        let _ = socket2::SockRef::from(self).shutdown(std::net::Shutdown::Both);
    }
}

// === impl Stream for tokio-uring ===

impl Stream for tokio_uring::net::TcpStream {
    async fn read(&self, buf: &mut BytesMut) -> io::Result<usize> {
        use tokio_uring::buf::BoundedBuf;
        if buf.capacity() == buf.len() {
            buf.reserve(READ_CHUNK);
        }
        let len = buf.len();
        // The read lands in the spare capacity after `len` (a slice of the
        // buffer), and the buffer comes back with its length advanced.
        let (res, slice) =
            tokio_uring::net::TcpStream::read(self, std::mem::take(buf).slice(len..)).await;
        *buf = slice.into_inner();
        res
    }

    async fn writev(&self, frames: &mut Vec<Bytes>) -> io::Result<usize> {
        frames.truncate(IOVECS);
        let (res, back) = tokio_uring::net::TcpStream::writev(self, std::mem::take(frames)).await;
        *frames = back;
        res
    }

    async fn write_all(&self, data: Vec<u8>) -> io::Result<()> {
        tokio_uring::net::TcpStream::write_all(self, data).await.0
    }

    fn shutdown_write(&self) -> io::Result<()> {
        self.shutdown(std::net::Shutdown::Write)
    }

    fn shutdown_all(&self) {
        let _ = self.shutdown(std::net::Shutdown::Both);
    }
}
