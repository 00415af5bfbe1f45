//! Listening sockets, made with socket2 so the options are explicit.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;

use socket2::{Domain, Protocol, Socket, Type};

use crate::runtime::ctx::WorkerCtx;

/// Bind a listener for user connections: [`bind_tcp`], and at most
/// `not_sent_lowat` unsent bytes queued in the kernel per accepted socket
/// (TCP_NOTSENT_LOWAT, inherited by accepted sockets; 0: no limit). Without
/// it a user that does not read lets the kernel's send buffer grow to
/// `tcp_wmem`'s maximum (4 MiB): a thousand of them push the whole host
/// into TCP memory pressure, where every socket's buffers shrink and every
/// other session crawls. Bytes in flight are not counted: those the peer's
/// window bounds.
pub fn bind_user(
    addr: SocketAddr,
    not_sent_lowat: u32,
    reuse_port: bool,
) -> std::io::Result<std::net::TcpListener> {
    let l = bind_tcp(addr, reuse_port)?;
    if not_sent_lowat == 0 {
        return Ok(l);
    }
    let v = libc::c_int::try_from(not_sent_lowat).unwrap_or(libc::c_int::MAX);
    // SAFETY: a plain setsockopt on a socket we own, with a c_int value of
    // the size passed.
    let r = unsafe {
        libc::setsockopt(
            l.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_NOTSENT_LOWAT,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        // Old kernels lack it; the connection works without.
        tracing::debug!(error = %std::io::Error::last_os_error(), "TCP_NOTSENT_LOWAT not set");
    }
    Ok(l)
}

/// Bind a TCP listener. `reuse_port`: one listener per worker on the same
/// address (SO_REUSEPORT), the kernel spreading connections among them.
pub fn bind_tcp(addr: SocketAddr, reuse_port: bool) -> std::io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    if addr.is_ipv6() {
        let _ = socket.set_only_v6(false);
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

/// Accept on `listener` until cancelled or the process stops, handing each
/// connection (TCP_NODELAY set) to `serve`. A failed accept (out of
/// descriptors, say) is logged and retried after a pause, not spun on.
pub async fn accept_each(
    ctx: &WorkerCtx,
    listener: &monoio::net::TcpListener,
    cancel: monoio::io::CancelHandle,
    port: &'static str,
    mut serve: impl FnMut(monoio::net::TcpStream, SocketAddr),
) {
    loop {
        match listener.cancelable_accept(cancel.clone()).await {
            Ok((stream, peer)) => {
                if ctx.shared.is_stopping() {
                    break;
                }
                let _ = stream.set_nodelay(true);
                serve(stream, peer);
            }
            Err(e) if e.raw_os_error() == Some(libc::ECANCELED) || ctx.shared.is_stopping() => {
                break
            }
            Err(e) => {
                tracing::warn!(worker = ctx.id, port, error = %e, "accept failed");
                monoio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}
