//! An [`Aborter`] reaches only the connection it was made for.
//!
//! A closed socket's descriptor number is free for the next socket any
//! thread opens (on a node, another worker's accept). An aborter kept past
//! its connection (a control's, a relay's) must then do nothing, not shut
//! down whichever connection got the number.
//!
//! One test in its own binary, so no other test's thread takes the number
//! between the close and the next socket: the kernel hands out the lowest
//! free one, which makes the reuse certain.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::Duration;

use fastpath::transport::conn::Conn;

/// A connected pair: (our end, adopted by monoio; the peer's end).
fn pair(listener: &TcpListener) -> (monoio::net::TcpStream, TcpStream) {
    let peer = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (ours, _) = listener.accept().unwrap();
    (monoio::net::TcpStream::from_std(ours).unwrap(), peer)
}

/// Whether bytes still flow both ways between two std sockets.
fn still_connected(a: &mut TcpStream, b: &mut TcpStream) -> bool {
    let mut buf = [0u8; 4];
    let one_way = |from: &mut TcpStream, to: &mut TcpStream, buf: &mut [u8; 4]| {
        from.write_all(b"ping").is_ok() && to.read_exact(buf).is_ok() && buf == b"ping"
    };
    one_way(a, b, &mut buf) && one_way(b, a, &mut buf)
}

#[test]
fn an_abort_after_close_leaves_the_socket_that_reused_the_number_alone() {
    // The epoll driver closes a dropped socket at once; io_uring would
    // close it asynchronously, which only delays the reuse.
    let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build()
        .unwrap();
    rt.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();

        // While the connection lives, its aborter shuts it down, also
        // after a split, while one half is left.
        let (ours, mut peer) = pair(&listener);
        let conn = Conn::tcp(ours);
        let aborter = conn.aborter();
        let (reader, writer) = conn.into_split();
        drop(writer);
        aborter.abort();
        peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 1];
        assert_eq!(
            peer.read(&mut buf).unwrap(),
            0,
            "the peer sees the shutdown"
        );
        drop(reader);

        // Once the connection is gone, its number goes to the next socket.
        let (ours, _peer) = pair(&listener);
        let fd = ours.as_raw_fd();
        let conn = Conn::tcp(ours);
        let stale = conn.aborter();
        drop(conn);
        let (mut a, mut b) = {
            let a = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            let (b, _) = listener.accept().unwrap();
            (a, b)
        };
        assert!(
            a.as_raw_fd() == fd || b.as_raw_fd() == fd,
            "a new socket reuses descriptor {fd} (got {} and {})",
            a.as_raw_fd(),
            b.as_raw_fd()
        );
        for s in [&a, &b] {
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        }

        stale.abort();
        assert!(
            still_connected(&mut a, &mut b),
            "an abort after close shut down the connection that reused its number"
        );
    });
}
