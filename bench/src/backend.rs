//! Local services that tunnels point at: an echo server (every byte back),
//! a sink (reads and discards) and a source (writes as fast as it can), the
//! last two for one-way bulk. Thread per connection; they are the far side
//! of a benchmark, not the thing measured.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// A running local service; stops accepting when dropped.
pub struct Backend {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    bytes: Arc<AtomicU64>,
}

/// A connection handler; the counter is the backend's byte total.
type Handler = fn(TcpStream, &AtomicU64);

impl Backend {
    /// Echo server on 127.0.0.1 (ephemeral port). Counts bytes received to echo.
    pub fn echo() -> std::io::Result<Backend> {
        Self::spawn(|mut s: TcpStream, bytes: &AtomicU64| {
            let mut r = match s.try_clone() {
                Ok(r) => r,
                Err(_) => return,
            };
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match r.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        // Counted before the write, so a client that has its
                        // echo back always sees it counted.
                        bytes.fetch_add(n as u64, Ordering::Relaxed);
                        if s.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                }
            }
            let _ = s.shutdown(std::net::Shutdown::Write);
        })
    }

    /// Sink on 127.0.0.1: reads and discards everything, counting the bytes
    /// (see [`Backend::bytes`]), until the peer closes.
    pub fn sink() -> std::io::Result<Backend> {
        Self::spawn(|mut s: TcpStream, bytes: &AtomicU64| {
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        bytes.fetch_add(n as u64, Ordering::Relaxed);
                    }
                }
            }
        })
    }

    /// Source on 127.0.0.1: writes a repeating byte pattern as fast as it
    /// can until the peer closes (a write fails), counting the bytes.
    pub fn source() -> std::io::Result<Backend> {
        Self::spawn(|mut s: TcpStream, bytes: &AtomicU64| {
            let buf: Vec<u8> = (0..256 * 1024).map(|i| (i % 251) as u8).collect();
            loop {
                match s.write(&buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        bytes.fetch_add(n as u64, Ordering::Relaxed);
                    }
                }
            }
        })
    }

    fn spawn(handler: Handler) -> std::io::Result<Backend> {
        let l = TcpListener::bind("127.0.0.1:0")?;
        let addr = l.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let bytes = Arc::new(AtomicU64::new(0));
        let st = stop.clone();
        let by = bytes.clone();
        std::thread::Builder::new()
            .name("backend".into())
            .spawn(move || {
                for s in l.incoming() {
                    if st.load(Ordering::Acquire) {
                        break;
                    }
                    if let Ok(s) = s {
                        let _ = s.set_nodelay(true);
                        let by = by.clone();
                        let _ = std::thread::Builder::new()
                            .stack_size(256 * 1024)
                            .spawn(move || handler(s, &by));
                    }
                }
            })?;
        Ok(Backend { addr, stop, bytes })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Bytes handled so far over all connections: echoed (echo), read and
    /// discarded (sink) or written (source).
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}
