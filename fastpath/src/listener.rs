//! Listening sockets, made with socket2 so the options are explicit.

use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

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
