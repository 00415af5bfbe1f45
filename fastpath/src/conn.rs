//! One type for "a byte stream from frpc or a user": a plain TCP socket, a
//! TLS stream, or a yamux stream. The rest of the fastpath (identification,
//! controls, relays) is written once against [`Conn`] and its halves.
//!
//! Buffers are owned and passed in and out (monoio's rent model): a relay
//! loop keeps one buffer per direction for the life of the connection.

use std::io;
use std::os::fd::AsRawFd;

use monoio::buf::{IoBuf, IoBufMut};
use monoio::io::{
    AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, OwnedReadHalf, OwnedWriteHalf, Splitable,
};
use monoio::net::TcpStream;

use crate::mux::{MuxReader, MuxStream, MuxWriter};
use crate::tls::{TlsReader, TlsStream, TlsWriter};

/// View an owned buffer's initialized bytes.
fn init_slice<B: IoBuf>(buf: &B) -> &[u8] {
    // SAFETY: IoBuf guarantees read_ptr..read_ptr+bytes_init is initialized
    // and lives as long as `buf`.
    unsafe { std::slice::from_raw_parts(buf.read_ptr(), buf.bytes_init()) }
}

/// Read into the spare capacity of `buf`, keeping what it holds.
///
/// monoio's own `read` on a `Vec` fills it from the start and sets its
/// length to what was read; every reader here appends instead (the TLS and
/// yamux readers do so naturally), so callers can accumulate partial frames.
async fn read_append<R: AsyncReadRent>(
    r: &mut R,
    mut buf: Vec<u8>,
) -> (io::Result<usize>, Vec<u8>) {
    let len = buf.len();
    if buf.capacity() - len < 1024 {
        // An empty slice would read 0 bytes, indistinguishable from EOF.
        buf.reserve(16 * 1024);
    }
    let cap = buf.capacity();
    let (r, slice) = r.read(buf.slice_mut(len..cap)).await;
    (r, slice.into_inner())
}

/// A byte stream, not yet split.
pub enum Conn {
    /// Plain TCP.
    Tcp(TcpStream),
    /// TLS over TCP.
    Tls(Box<TlsStream>),
    /// A yamux stream.
    Mux(MuxStream),
}

impl Conn {
    /// Short name of the transport, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Conn::Tcp(_) => "tcp",
            Conn::Tls(_) => "tls",
            Conn::Mux(_) => "mux",
        }
    }

    /// The yamux session carrying this stream ([`MuxConn::id`]); None for
    /// a connection of its own.
    ///
    /// [`MuxConn::id`]: crate::mux::MuxConn::id
    pub fn mux_session(&self) -> Option<u64> {
        match self {
            Conn::Mux(s) => Some(s.conn().id()),
            Conn::Tcp(_) | Conn::Tls(_) => None,
        }
    }

    /// Append received bytes to `buf` (into its spare capacity); 0 is EOF.
    pub async fn read(&mut self, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        match self {
            Conn::Tcp(s) => read_append(s, buf).await,
            Conn::Tls(s) => s.read(buf).await,
            Conn::Mux(s) => s.read(buf).await,
        }
    }

    /// Send all of `buf`.
    pub async fn write_all(&mut self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        match self {
            Conn::Tcp(s) => {
                let (r, b) = s.write_all(buf).await;
                (r.map(|_| ()), b)
            }
            Conn::Tls(s) => s.write_all(buf).await,
            Conn::Mux(s) => s.write_all(buf).await,
        }
    }

    /// Send `last` (a refusal), half-close, and wait up to 2 s for the peer
    /// to close its side before dropping the connection.
    ///
    /// Dropping a yamux stream the peer has not finished resets it, and Go's
    /// yamux fails reads on a reset stream even when the refusal is already
    /// buffered: frpc would report "connection reset" instead of our reason.
    /// frps closes with FIN; so do we.
    pub async fn finish(mut self, last: Vec<u8>) {
        let _ = self.write_all(last).await;
        let (mut r, mut w) = self.into_split();
        w.shutdown().await;
        let _ = monoio::time::timeout(std::time::Duration::from_secs(2), async {
            let mut buf = Vec::with_capacity(1024);
            loop {
                buf.clear();
                let (res, b) = r.read(buf).await;
                buf = b;
                if !matches!(res, Ok(n) if n > 0) {
                    break;
                }
            }
        })
        .await;
    }

    /// Split into halves that can be used concurrently.
    pub fn into_split(self) -> (ConnReader, ConnWriter) {
        match self {
            Conn::Tcp(s) => {
                let fd = s.as_raw_fd();
                let (r, w) = s.into_split();
                (ConnReader::Tcp(r, fd), ConnWriter::Tcp(w, fd))
            }
            Conn::Tls(s) => {
                let fd = s.socket().as_raw_fd();
                let (r, w) = s.into_split();
                (ConnReader::Tls(r, fd), ConnWriter::Tls(w, fd))
            }
            Conn::Mux(s) => {
                let (r, w) = s.into_split();
                (ConnReader::Mux(r), ConnWriter::Mux(w))
            }
        }
    }

    /// A handle that can abort this connection from anywhere on the worker.
    pub fn aborter(&self) -> Aborter {
        match self {
            Conn::Tcp(s) => Aborter::Fd(s.as_raw_fd()),
            Conn::Tls(s) => Aborter::Fd(s.socket().as_raw_fd()),
            Conn::Mux(s) => Aborter::Mux(s.conn().clone(), s.id()),
        }
    }
}

/// Reading half of a [`Conn`].
pub enum ConnReader {
    Tcp(OwnedReadHalf<TcpStream>, i32),
    Tls(TlsReader, i32),
    Mux(MuxReader),
}

impl ConnReader {
    /// Append received bytes to `buf`; 0 is EOF.
    pub async fn read(&mut self, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        match self {
            ConnReader::Tcp(s, _) => read_append(s, buf).await,
            ConnReader::Tls(s, _) => s.read(buf).await,
            ConnReader::Mux(s) => s.read(buf).await,
        }
    }

    /// Append received bytes to a `BytesMut` (the yamux driver's input).
    /// Plain TCP reads and TLS decrypts straight into it; anything else
    /// goes through `scratch`.
    pub async fn read_bytes(
        &mut self,
        mut buf: bytes::BytesMut,
        scratch: Vec<u8>,
    ) -> (io::Result<usize>, bytes::BytesMut, Vec<u8>) {
        match self {
            ConnReader::Tcp(s, _) => {
                let len = buf.len();
                if buf.capacity() - len < 16 * 1024 {
                    buf.reserve(256 * 1024);
                }
                let cap = buf.capacity();
                let (r, slice) = s.read(buf.slice_mut(len..cap)).await;
                (r, slice.into_inner(), scratch)
            }
            ConnReader::Tls(t, _) => {
                let r = t.read_into(&mut buf).await;
                (r, buf, scratch)
            }
            other => {
                let mut scratch = scratch;
                scratch.clear();
                let (r, scratch) = other.read(scratch).await;
                if matches!(r, Ok(n) if n > 0) {
                    buf.extend_from_slice(&scratch);
                }
                (r, buf, scratch)
            }
        }
    }

    /// The socket descriptor underneath (-1 for yamux streams).
    pub fn raw_fd(&self) -> i32 {
        match self {
            ConnReader::Tcp(_, fd) | ConnReader::Tls(_, fd) => *fd,
            ConnReader::Mux(_) => -1,
        }
    }
}

/// Writing half of a [`Conn`].
pub enum ConnWriter {
    Tcp(OwnedWriteHalf<TcpStream>, i32),
    Tls(TlsWriter, i32),
    Mux(MuxWriter),
}

impl ConnWriter {
    /// Send all of `buf`.
    pub async fn write_all<B: IoBuf>(&mut self, buf: B) -> (io::Result<()>, B) {
        match self {
            ConnWriter::Tcp(s, _) => {
                let (r, b) = s.write_all(buf).await;
                (r.map(|_| ()), b)
            }
            ConnWriter::Tls(s, _) => {
                let r = s.write_slice(init_slice(&buf)).await;
                (r, buf)
            }
            ConnWriter::Mux(s) => {
                let r = s.write_slice(init_slice(&buf)).await;
                (r, buf)
            }
        }
    }

    /// Half-close the write direction (FIN / close_notify / yamux FIN).
    pub async fn shutdown(&mut self) {
        match self {
            ConnWriter::Tcp(s, _) => {
                let _ = s.shutdown().await;
            }
            ConnWriter::Tls(s, _) => s.shutdown().await,
            ConnWriter::Mux(s) => s.shutdown(),
        }
    }
}

/// Aborts a connection: shuts a socket down or resets a yamux stream, so
/// that whatever task is blocked on it wakes with an error.
#[derive(Clone)]
pub enum Aborter {
    Fd(i32),
    Mux(std::rc::Rc<crate::mux::MuxConn>, u32),
}

impl Aborter {
    /// Abort now.
    pub fn abort(&self) {
        match self {
            Aborter::Fd(fd) => {
                // SAFETY: shutdown(2) on a descriptor number; if the socket
                // is already closed and the number reused, the worst case is
                // an extra shutdown of a connection that is going away with
                // ours — callers only hold Aborters while the conn lives.
                unsafe {
                    libc::shutdown(*fd, libc::SHUT_RDWR);
                }
            }
            Aborter::Mux(conn, id) => crate::mux::abort_stream(conn, *id),
        }
    }
}
