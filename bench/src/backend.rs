//! Local services that tunnels point at: an echo server (every byte back),
//! a sink (reads and discards) and a source (writes as fast as it can), the
//! last two for one-way bulk, a limited source for the slow-reader attack,
//! and a minimal HTTP/1.1 keep-alive server for
//! request-rate runs. Thread per connection; they are the far side of a
//! benchmark, not the thing measured.

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
type Handler = Arc<dyn Fn(TcpStream, &AtomicU64) + Send + Sync>;

/// Longest request head [`Backend::http`] buffers before giving up on the
/// connection.
const MAX_HTTP_HEAD: usize = 64 * 1024;

impl Backend {
    /// Echo server on 127.0.0.1 (ephemeral port). Counts bytes received to echo.
    pub fn echo() -> std::io::Result<Backend> {
        Self::spawn(Arc::new(|mut s: TcpStream, bytes: &AtomicU64| {
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
        }))
    }

    /// Sink on 127.0.0.1: reads and discards everything, counting the bytes
    /// (see [`Backend::bytes`]), until the peer closes.
    pub fn sink() -> std::io::Result<Backend> {
        Self::spawn(Arc::new(|mut s: TcpStream, bytes: &AtomicU64| {
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        bytes.fetch_add(n as u64, Ordering::Relaxed);
                    }
                }
            }
        }))
    }

    /// Source on 127.0.0.1: writes a repeating byte pattern as fast as it
    /// can until the peer closes (a write fails), counting the bytes.
    pub fn source() -> std::io::Result<Backend> {
        Self::spawn(Arc::new(|mut s: TcpStream, bytes: &AtomicU64| {
            let buf: Vec<u8> = (0..256 * 1024).map(|i| (i % 251) as u8).collect();
            loop {
                match s.write(&buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        bytes.fetch_add(n as u64, Ordering::Relaxed);
                    }
                }
            }
        }))
    }

    /// Limited source on 127.0.0.1: writes `limit` bytes of a repeating
    /// pattern as fast as the peer takes them, counting the bytes, then
    /// holds the connection until the peer closes it. The far side of an
    /// attack that leaves a server holding what was written to it; every
    /// connection shares one 16 KiB pattern, so a thousand of them cost
    /// threads but no buffers of their own. Its send buffers are small, so
    /// that what it counts as written is close to what the peer has taken.
    pub fn source_limited(limit: u64) -> std::io::Result<Backend> {
        let chunk: Arc<[u8]> = (0..16 * 1024).map(|i| (i % 251) as u8).collect();
        Self::spawn(Arc::new(move |mut s: TcpStream, bytes: &AtomicU64| {
            let _ = socket2::SockRef::from(&s).set_send_buffer_size(16 * 1024);
            let mut left = limit;
            while left > 0 {
                let n = chunk.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                match s.write(&chunk[..n]) {
                    Ok(0) | Err(_) => return,
                    Ok(k) => {
                        left -= k as u64;
                        bytes.fetch_add(k as u64, Ordering::Relaxed);
                    }
                }
            }
            // Nothing is expected back: any byte or the end ends the hold.
            let mut b = [0u8; 1];
            let _ = s.read(&mut b);
        }))
    }

    /// HTTP/1.1 server on 127.0.0.1 that answers every request with
    /// `200 OK`, `Content-Length: body_len`, `Content-Type: text/plain` and
    /// `body_len` bytes, keeping the connection open. A request is whatever
    /// ends with an empty line: request bodies are not expected (send GETs).
    /// Pipelined requests get their answers in order, written together. A
    /// head over 64 KiB closes the connection.
    ///
    /// Here [`Backend::bytes`] counts *requests answered*, not bytes; each is
    /// counted before its response is written.
    pub fn http(body_len: usize) -> std::io::Result<Backend> {
        let mut resp = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {body_len}\r\nContent-Type: text/plain\r\n\r\n"
        )
        .into_bytes();
        resp.extend((0..body_len).map(|i| b'a' + (i % 26) as u8));
        let resp: Arc<[u8]> = resp.into();
        Self::spawn(Arc::new(move |mut s: TcpStream, requests: &AtomicU64| {
            let mut buf = Vec::with_capacity(4096);
            let mut chunk = vec![0u8; 16 * 1024];
            let mut out = Vec::new();
            loop {
                let n = match s.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                buf.extend_from_slice(&chunk[..n]);
                // Answer every complete head in the buffer, in order.
                let mut used = 0;
                while let Some(end) = find_head_end(&buf[used..]) {
                    used += end;
                    requests.fetch_add(1, Ordering::Relaxed);
                    out.extend_from_slice(&resp);
                }
                buf.drain(..used);
                if buf.len() > MAX_HTTP_HEAD {
                    break;
                }
                if !out.is_empty() {
                    if s.write_all(&out).is_err() {
                        break;
                    }
                    out.clear();
                }
            }
        }))
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
                        let handler = handler.clone();
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
    /// discarded (sink) or written (source); for [`Backend::http`], the
    /// requests answered.
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

/// Length of the HTTP head at the start of `buf` (through its `\r\n\r\n`),
/// if it is complete.
pub(crate) fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Reads `n` whole responses of `body` bytes each off `s`.
    fn read_responses(s: &mut TcpStream, n: usize, body: usize) -> Vec<u8> {
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {body}\r\nContent-Type: text/plain\r\n\r\n"
        );
        let mut got = vec![0u8; n * (head.len() + body)];
        s.read_exact(&mut got).unwrap();
        for k in 0..n {
            let one = &got[k * (head.len() + body)..][..head.len() + body];
            assert!(
                one.starts_with(head.as_bytes()),
                "{:?}",
                String::from_utf8_lossy(one)
            );
            assert!(one[head.len()..].iter().all(u8::is_ascii_lowercase));
        }
        got
    }

    #[test]
    fn http_answers_keep_alive_and_pipelined_requests() {
        let b = Backend::http(100).unwrap();
        let mut s = TcpStream::connect(b.addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        for _ in 0..3 {
            s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            read_responses(&mut s, 1, 100);
        }
        // Two at once, the second split across writes.
        s.write_all(b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n")
            .unwrap();
        std::thread::sleep(Duration::from_millis(50));
        s.write_all(b"\r\n").unwrap();
        read_responses(&mut s, 2, 100);
        assert_eq!(b.bytes(), 5);
        // Nothing more was sent.
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let mut extra = [0u8; 1];
        assert!(s.read(&mut extra).is_err());
    }

    #[test]
    fn limited_source_writes_its_limit_and_holds() {
        let b = Backend::source_limited(40_000).unwrap();
        let mut s = TcpStream::connect(b.addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut got = vec![0u8; 40_000];
        s.read_exact(&mut got).unwrap();
        assert!(got
            .iter()
            .enumerate()
            .all(|(i, &v)| v == ((i % (16 * 1024)) % 251) as u8));
        // Held open, and nothing more comes.
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        assert!(s.read(&mut [0u8; 1]).is_err());
        assert_eq!(b.bytes(), 40_000);
    }

    #[test]
    fn http_empty_body() {
        let b = Backend::http(0).unwrap();
        let mut s = TcpStream::connect(b.addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        read_responses(&mut s, 1, 0);
        assert_eq!(b.bytes(), 1);
    }
}
