//! The attacker's sockets.
//!
//! They connect from [`ATTACKER_SOURCE`], a loopback address of their own,
//! so that a server limiting connections per source address can tell the
//! attacker from the legitimate client and the harness (127.0.0.1), as it
//! would tell an attacker's address from its users' on a network.
//!
//! They close with a reset (SO_LINGER 0): ten thousand orderly closes from
//! one address would leave as many ports in TIME_WAIT for a minute, and the
//! next attack (or the other work on this machine) would run short of
//! ports.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::time::Duration;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// Where attacks on a loopback server connect from.
pub const ATTACKER_SOURCE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

/// Connects to `target` within `timeout`, from [`ATTACKER_SOURCE`] when
/// `target` is an IPv4 loopback address, with TCP_NODELAY and a close that
/// resets.
pub fn connect(target: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let sock = Socket::new(
        Domain::for_address(target),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    if let IpAddr::V4(ip) = target.ip() {
        if ip.is_loopback() {
            bind_address_no_port(&sock)?;
            sock.bind(&SockAddr::from(SocketAddr::from((ATTACKER_SOURCE, 0))))?;
        }
    }
    sock.connect_timeout(&SockAddr::from(target), timeout)?;
    sock.set_nodelay(true)?;
    sock.set_linger(Some(Duration::ZERO))?;
    Ok(sock.into())
}

/// IP_BIND_ADDRESS_NO_PORT: the bind fixes only the address and the port
/// is chosen at connect, per destination, so ten thousand connections do
/// not need ten thousand ports of their own.
fn bind_address_no_port(sock: &Socket) -> io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: setsockopt reads `size_of::<c_int>()` bytes from a pointer to
    // a live local c_int, on a descriptor `sock` owns.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether the peer has closed or reset `s`, found without reading from it
/// (an attacker that never reads must not start now): poll for
/// POLLRDHUP, POLLHUP or POLLERR, without waiting.
pub fn peer_closed(s: &TcpStream) -> bool {
    let mut p = libc::pollfd {
        fd: s.as_raw_fd(),
        events: libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: poll reads and writes one pollfd, a live local, for a
    // descriptor `s` owns; a zero timeout returns at once.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n > 0 && p.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    #[test]
    fn connects_from_the_attackers_address_and_sees_the_peer_go() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let s = connect(l.local_addr().unwrap(), Duration::from_secs(2)).unwrap();
        let (mut peer, from) = l.accept().unwrap();
        assert_eq!(from.ip(), IpAddr::V4(ATTACKER_SOURCE));
        assert!(!peer_closed(&s));
        // Data from the peer is not a close.
        peer.write_all(b"x").unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert!(!peer_closed(&s));
        drop(peer);
        std::thread::sleep(Duration::from_millis(50));
        assert!(peer_closed(&s));
    }

    #[test]
    fn closing_resets() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let s = connect(l.local_addr().unwrap(), Duration::from_secs(2)).unwrap();
        let (mut peer, _) = l.accept().unwrap();
        drop(s);
        let e = peer.read(&mut [0u8; 1]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionReset, "{e}");
    }
}
