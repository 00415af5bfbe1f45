//! Local services that tunnels point at: an echo server (every byte back)
//! and a sink/source (for one-way bulk). Thread per connection; they are
//! the far side of a benchmark, not the thing measured.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A running local service; stops accepting when dropped.
pub struct Backend {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Backend {
    /// Echo server on 127.0.0.1 (ephemeral port).
    pub fn echo() -> std::io::Result<Backend> {
        Self::spawn(|mut s: TcpStream| {
            let mut r = match s.try_clone() {
                Ok(r) => r,
                Err(_) => return,
            };
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match r.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if s.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                }
            }
            let _ = s.shutdown(std::net::Shutdown::Write);
        })
    }

    fn spawn(handler: fn(TcpStream)) -> std::io::Result<Backend> {
        let l = TcpListener::bind("127.0.0.1:0")?;
        let addr = l.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        std::thread::Builder::new()
            .name("backend".into())
            .spawn(move || {
                for s in l.incoming() {
                    if st.load(Ordering::Acquire) {
                        break;
                    }
                    if let Ok(s) = s {
                        let _ = s.set_nodelay(true);
                        let _ = std::thread::Builder::new()
                            .stack_size(256 * 1024)
                            .spawn(move || handler(s));
                    }
                }
            })?;
        Ok(Backend { addr, stop })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}
