//! One type for "a byte stream from frpc or a user": a plain TCP socket, a
//! TLS stream, or a yamux stream. The rest of the fastpath (identification,
//! controls, relays) is written once against [`Conn`] and its halves.
//!
//! Buffers are owned and passed in and out (monoio's rent model): a relay
//! loop keeps one buffer per direction for the life of the connection.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::{Rc, Weak};

use monoio::buf::{IoBuf, IoBufMut};
use monoio::io::{
    AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, OwnedReadHalf, OwnedWriteHalf, Splitable,
};
use monoio::net::TcpStream;

use crate::transport::bridge::{BridgeAborter, BridgeEnd, BridgeReader, BridgeWriter};
use crate::transport::mux::{MuxReader, MuxStream, MuxWriter};
use crate::transport::tls::{TlsReader, TlsStream, TlsWriter};

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
pub(crate) async fn read_append<R: AsyncReadRent>(
    r: &mut R,
    mut buf: Vec<u8>,
) -> (io::Result<usize>, Vec<u8>) {
    let len = buf.len();
    if buf.capacity() - len < 256 {
        // An empty slice would read 0 bytes, indistinguishable from EOF;
        // a few bytes of room would take a syscall for each few bytes.
        buf.reserve(16 * 1024);
    }
    let cap = buf.capacity();
    let (r, slice) = r.read(buf.slice_mut(len..cap)).await;
    (r, slice.into_inner())
}

/// The descriptor number of a socket this worker owns, for [`Aborter`]s.
///
/// Whatever owns the socket (a [`Conn`], or both halves of a split one)
/// holds the one `Rc` next to it, so the `Rc` is dropped with the last
/// owner, right after the socket is closed. An [`Aborter`] holds a `Weak`:
/// it upgrades only while an owner lives, that is, while the number still
/// names this socket. Once the socket is closed the number may be reused by
/// any thread (another worker's accept); the dead `Weak` keeps an abort
/// from reaching that socket. `Rc` is neither `Send` nor `Sync`, so no other
/// thread can hold either end.
pub struct SocketFd(RawFd);

impl SocketFd {
    /// The token for `socket`, to be kept next to it by its owner.
    fn of(socket: &TcpStream) -> Rc<SocketFd> {
        Rc::new(SocketFd(socket.as_raw_fd()))
    }
}

/// A byte stream, not yet split.
pub enum Conn {
    /// Plain TCP.
    Tcp(TcpStream, Rc<SocketFd>),
    /// TLS over TCP.
    Tls(Box<TlsStream>, Rc<SocketFd>),
    /// A yamux stream.
    Mux(MuxStream),
    /// One end of a [`bridge`](crate::transport::bridge) to another task.
    Bridge(BridgeEnd),
}

impl Conn {
    /// A plain TCP connection.
    pub fn tcp(stream: TcpStream) -> Conn {
        let fd = SocketFd::of(&stream);
        Conn::Tcp(stream, fd)
    }

    /// A TLS connection.
    pub fn tls(stream: TlsStream) -> Conn {
        let fd = SocketFd::of(stream.socket());
        Conn::Tls(Box::new(stream), fd)
    }

    /// Short name of the transport, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Conn::Tcp(..) => "tcp",
            Conn::Tls(..) => "tls",
            Conn::Mux(_) => "mux",
            Conn::Bridge(_) => "bridge",
        }
    }

    /// The yamux session carrying this stream ([`MuxConn::id`]); None for
    /// a connection of its own.
    ///
    /// [`MuxConn::id`]: crate::transport::mux::MuxConn::id
    pub fn mux_session(&self) -> Option<u64> {
        match self {
            Conn::Mux(s) => Some(s.conn().id()),
            Conn::Tcp(..) | Conn::Tls(..) | Conn::Bridge(_) => None,
        }
    }

    /// Append received bytes to `buf` (into its spare capacity); 0 is EOF.
    pub async fn read(&mut self, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        match self {
            Conn::Tcp(s, _) => read_append(s, buf).await,
            Conn::Tls(s, _) => s.read(buf).await,
            Conn::Mux(s) => s.read(buf).await,
            Conn::Bridge(b) => b.read(buf).await,
        }
    }

    /// Send all of `buf`.
    pub async fn write_all(&mut self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        match self {
            Conn::Tcp(s, _) => {
                let (r, b) = s.write_all(buf).await;
                (r.map(|_| ()), b)
            }
            Conn::Tls(s, _) => s.write_all(buf).await,
            Conn::Mux(s) => s.write_all(buf).await,
            Conn::Bridge(b) => {
                let r = b.write_all(&buf).await;
                (r, buf)
            }
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
            Conn::Tcp(s, fd) => {
                let (r, w) = s.into_split();
                (ConnReader::Tcp(r, fd.clone()), ConnWriter::Tcp(w, fd))
            }
            Conn::Tls(s, fd) => {
                let (r, w) = s.into_split();
                (ConnReader::Tls(r, fd.clone()), ConnWriter::Tls(w, fd))
            }
            Conn::Mux(s) => {
                let (r, w) = s.into_split();
                (ConnReader::Mux(r), ConnWriter::Mux(w))
            }
            Conn::Bridge(b) => {
                let (r, w) = b.into_split();
                (ConnReader::Bridge(r), ConnWriter::Bridge(w))
            }
        }
    }

    /// A handle that can abort this connection from anywhere on the worker,
    /// for as long as it lives (an abort after it closed does nothing).
    pub fn aborter(&self) -> Aborter {
        match self {
            Conn::Tcp(_, fd) | Conn::Tls(_, fd) => Aborter::Socket(Rc::downgrade(fd)),
            Conn::Mux(s) => Aborter::Mux(s.conn().clone(), s.id()),
            Conn::Bridge(b) => Aborter::Bridge(b.aborter()),
        }
    }
}

/// Reading half of a [`Conn`].
pub enum ConnReader {
    Tcp(OwnedReadHalf<TcpStream>, Rc<SocketFd>),
    Tls(TlsReader, Rc<SocketFd>),
    Mux(MuxReader),
    Bridge(BridgeReader),
}

impl ConnReader {
    /// Append received bytes to `buf`; 0 is EOF.
    pub async fn read(&mut self, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        match self {
            ConnReader::Tcp(s, _) => read_append(s, buf).await,
            ConnReader::Tls(s, _) => s.read(buf).await,
            ConnReader::Mux(s) => s.read(buf).await,
            ConnReader::Bridge(b) => b.read(buf).await,
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

    /// Aborts the connection this half belongs to, as [`Conn::aborter`].
    pub fn aborter(&self) -> Aborter {
        match self {
            ConnReader::Tcp(_, fd) | ConnReader::Tls(_, fd) => Aborter::Socket(Rc::downgrade(fd)),
            ConnReader::Mux(r) => r.aborter(),
            ConnReader::Bridge(b) => Aborter::Bridge(b.aborter()),
        }
    }
}

/// Writing half of a [`Conn`].
pub enum ConnWriter {
    Tcp(OwnedWriteHalf<TcpStream>, Rc<SocketFd>),
    Tls(TlsWriter, Rc<SocketFd>),
    Mux(MuxWriter),
    Bridge(BridgeWriter),
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
            ConnWriter::Bridge(b) => {
                let r = b.write_all(init_slice(&buf)).await;
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
            ConnWriter::Bridge(b) => b.shutdown(),
        }
    }
}

/// Aborts a connection: shuts a socket down or resets a yamux stream, so
/// that whatever task is blocked on it wakes with an error. It never keeps
/// the connection open, and once the connection is gone it does nothing.
#[derive(Clone)]
pub enum Aborter {
    /// A TCP or TLS connection's socket, while a [`Conn`] or half owns it
    /// (see [`SocketFd`]).
    Socket(Weak<SocketFd>),
    /// A yamux stream: the session and the stream id.
    Mux(Rc<crate::transport::mux::MuxConn>, u32),
    /// A bridge between two tasks.
    Bridge(BridgeAborter),
}

impl Aborter {
    /// Abort now.
    pub fn abort(&self) {
        match self {
            Aborter::Socket(fd) => {
                let Some(fd) = fd.upgrade() else { return };
                // SAFETY: shutdown(2) takes a descriptor number and touches
                // no memory of ours. The upgrade succeeded, so an owner of
                // the socket lives on this thread and the number still names
                // the socket this Aborter was made for (see SocketFd).
                unsafe {
                    libc::shutdown(fd.0, libc::SHUT_RDWR);
                }
            }
            Aborter::Mux(conn, id) => crate::transport::mux::abort_stream(conn, *id),
            Aborter::Bridge(b) => b.abort(),
        }
    }
}
