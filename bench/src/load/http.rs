//! HTTP/1.1 request rate over keep-alive connections (what wrk against
//! nginx measures, without either): `C` connections, one thread each, send
//! `GET / HTTP/1.1` and read the whole answer (head, then a body delimited
//! by `Content-Length`) before the next request, closed loop.
//!
//! All connections are opened before the clock starts, so the run measures
//! requests and not connection set-up; a target that cannot be connected to
//! at that point is an error, not a result. After a warm-up, only requests
//! that start and finish inside the measured window count. A request that
//! fails (I/O error, timeout, status other than 2xx, a response it cannot
//! delimit) counts as an error and its connection is replaced; a response
//! with `Connection: close` replaces it without an error.

use super::{merge, new_histogram, per_sec, record, Percentiles};
use crate::backend::find_head_end;
use hdrhistogram::Histogram;
use serde::Serialize;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// The request every connection sends.
const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n";

/// Longest response head read before the response counts as an error.
const MAX_HEAD: usize = 64 * 1024;

/// How many connections, for how long.
#[derive(Debug, Clone)]
pub struct HttpOpts {
    /// Keep-alive connections, one thread each, one request in flight each.
    pub connections: usize,
    /// Length of the measured window.
    pub duration: Duration,
    /// Time spent sending requests before the window opens (not counted).
    pub warmup: Duration,
    /// Limit on each connect and on each read or write of a request.
    pub timeout: Duration,
}

impl Default for HttpOpts {
    /// 64 connections, 1 s warm-up, 5 s measured.
    fn default() -> Self {
        HttpOpts {
            connections: 64,
            duration: Duration::from_secs(5),
            warmup: Duration::from_secs(1),
            timeout: Duration::from_secs(5),
        }
    }
}

/// Outcome of one HTTP run; every figure covers the measured window only.
#[derive(Debug, Clone, Serialize)]
pub struct HttpResult {
    pub connections: usize,
    /// Length of the measured window, in seconds.
    pub duration_s: f64,
    /// Requests answered with a 2xx and read in full.
    pub requests: u64,
    /// Requests that failed, and reconnects that failed.
    pub errors: u64,
    /// `requests / duration_s`.
    pub req_per_sec: f64,
    /// Response bytes (heads and bodies) of the counted requests.
    pub bytes: u64,
    /// Time from writing a request to the last byte of its response.
    #[serde(flatten)]
    pub latency: Percentiles,
}

/// What a response head says about its body and the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Head {
    status: u16,
    content_length: usize,
    close: bool,
}

fn bad(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Parses a response head (status line and headers, without the final
/// empty line's requirement). Errors on a malformed status line and on
/// bodies it cannot delimit: chunked, or no `Content-Length`.
fn parse_head(head: &[u8]) -> io::Result<Head> {
    let text = std::str::from_utf8(head).map_err(|_| bad("response head is not UTF-8".into()))?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.split(' ');
    let version = parts.next().unwrap_or_default();
    let status = parts
        .next()
        .and_then(|c| c.parse::<u16>().ok())
        .filter(|_| version.starts_with("HTTP/1."))
        .ok_or_else(|| bad(format!("bad status line {status_line:?}")))?;
    let mut content_length = None;
    let mut close = version == "HTTP/1.0";
    for line in lines.filter(|l| !l.is_empty()) {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| bad(format!("bad header line {line:?}")))?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            content_length = Some(
                value
                    .parse::<usize>()
                    .map_err(|_| bad(format!("bad Content-Length {value:?}")))?,
            );
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            && !value.eq_ignore_ascii_case("identity")
        {
            return Err(bad(format!("Transfer-Encoding {value:?} is not supported")));
        } else if name.eq_ignore_ascii_case("connection") {
            if value.eq_ignore_ascii_case("close") {
                close = true;
            } else if value.eq_ignore_ascii_case("keep-alive") {
                close = false;
            }
        }
    }
    let content_length =
        content_length.ok_or_else(|| bad("response has no Content-Length".into()))?;
    Ok(Head {
        status,
        content_length,
        close,
    })
}

/// One keep-alive connection and what it has read past the last response.
struct Conn {
    s: TcpStream,
    buf: Vec<u8>,
    scratch: Vec<u8>,
}

impl Conn {
    fn open(target: SocketAddr, timeout: Duration) -> io::Result<Conn> {
        let s = TcpStream::connect_timeout(&target, timeout)?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))?;
        Ok(Conn {
            s,
            buf: Vec::with_capacity(4096),
            scratch: vec![0u8; 64 * 1024],
        })
    }

    fn fill(&mut self) -> io::Result<()> {
        let n = self.s.read(&mut self.scratch)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.buf.extend_from_slice(&self.scratch[..n]);
        Ok(())
    }

    /// Sends one request and reads its response; returns the head and the
    /// response's size in bytes.
    fn request(&mut self) -> io::Result<(Head, u64)> {
        self.s.write_all(REQUEST)?;
        let head_len = loop {
            if let Some(n) = find_head_end(&self.buf) {
                break n;
            }
            if self.buf.len() > MAX_HEAD {
                return Err(bad("response head over 64 KiB".into()));
            }
            self.fill()?;
        };
        let head = parse_head(&self.buf[..head_len - 4])?;
        if !(200..300).contains(&head.status) {
            return Err(bad(format!("status {}", head.status)));
        }
        let have = self.buf.len() - head_len;
        if have >= head.content_length {
            self.buf.drain(..head_len + head.content_length);
        } else {
            // Read and drop the rest of the body without reading past it.
            let mut left = head.content_length - have;
            self.buf.clear();
            while left > 0 {
                let want = left.min(self.scratch.len());
                let n = self.s.read(&mut self.scratch[..want])?;
                if n == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                left -= n;
            }
        }
        Ok((head, (head_len + head.content_length) as u64))
    }
}

#[derive(Default)]
struct Counts {
    requests: u64,
    errors: u64,
    bytes: u64,
}

/// Opens the connections, runs warm-up and window, and totals the threads.
/// Fails if `connections` is 0, if any connection cannot be opened before
/// the start, or if a thread cannot be started.
pub fn run(target: SocketAddr, opts: HttpOpts) -> io::Result<HttpResult> {
    if opts.connections == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "connections must be at least 1",
        ));
    }
    let conns = (0..opts.connections)
        .map(|k| {
            Conn::open(target, opts.timeout)
                .map_err(|e| io::Error::new(e.kind(), format!("connection {k} to {target}: {e}")))
        })
        .collect::<io::Result<Vec<_>>>()?;
    let measure_from = Instant::now() + opts.warmup;
    let end = measure_from + opts.duration;
    let mut handles = Vec::with_capacity(conns.len());
    for (k, c) in conns.into_iter().enumerate() {
        let timeout = opts.timeout;
        handles.push(
            std::thread::Builder::new()
                .name(format!("http-{k}"))
                .stack_size(256 * 1024)
                .spawn(move || worker(target, c, timeout, measure_from, end))?,
        );
    }
    let results = handles.into_iter().filter_map(|h| h.join().ok());
    let (c, hist) = merge(results, |t, c| {
        t.requests += c.requests;
        t.errors += c.errors;
        t.bytes += c.bytes;
    });
    let duration_s = opts.duration.as_secs_f64();
    Ok(HttpResult {
        connections: opts.connections,
        duration_s,
        requests: c.requests,
        errors: c.errors,
        req_per_sec: per_sec(c.requests, duration_s),
        bytes: c.bytes,
        latency: Percentiles::of(&hist),
    })
}

fn worker(
    target: SocketAddr,
    first: Conn,
    timeout: Duration,
    measure_from: Instant,
    end: Instant,
) -> (Counts, Histogram<u64>) {
    let mut c = Counts::default();
    let mut hist = new_histogram();
    let mut conn = Some(first);
    loop {
        let t = Instant::now();
        if t >= end {
            break;
        }
        let counted = t >= measure_from;
        let cn = match &mut conn {
            Some(cn) => cn,
            None => match Conn::open(target, timeout) {
                Ok(cn) => conn.insert(cn),
                Err(_) => {
                    c.errors += u64::from(counted);
                    // A refused connect returns at once; do not spin on it.
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                }
            },
        };
        match cn.request() {
            Ok((head, bytes)) => {
                let done = Instant::now();
                if counted && done <= end {
                    c.requests += 1;
                    c.bytes += bytes;
                    record(&mut hist, done - t);
                }
                if head.close {
                    conn = None;
                }
            }
            Err(_) => {
                c.errors += u64::from(counted);
                conn = None;
            }
        }
    }
    (c, hist)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Backend;
    use crate::load::testing::{assert_latency, closed_port};
    use std::net::TcpListener;

    /// Response size of `Backend::http(body)`.
    fn response_len(body: usize) -> u64 {
        format!("HTTP/1.1 200 OK\r\nContent-Length: {body}\r\nContent-Type: text/plain\r\n\r\n")
            .len() as u64
            + body as u64
    }

    #[test]
    fn keep_alive_backend_gives_requests_and_no_errors() {
        let b = Backend::http(300).unwrap();
        let r = run(
            b.addr(),
            HttpOpts {
                connections: 4,
                duration: Duration::from_millis(400),
                warmup: Duration::from_millis(200),
                timeout: Duration::from_secs(2),
            },
        )
        .unwrap();
        assert_eq!(r.errors, 0, "{r:?}");
        assert!(r.requests > 0 && r.req_per_sec > 0.0, "{r:?}");
        assert_eq!(r.bytes, r.requests * response_len(300), "{r:?}");
        // The backend also answered the warm-up and the cut-off requests.
        assert!(b.bytes() > r.requests, "{} vs {r:?}", b.bytes());
        assert_latency(&r, r.latency);
        assert_eq!(r.duration_s, 0.4);
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["requests"], r.requests);
    }

    #[test]
    fn closed_port_is_an_error_before_the_run() {
        let addr = closed_port();
        let t = Instant::now();
        let e = run(
            addr,
            HttpOpts {
                connections: 2,
                ..HttpOpts::default()
            },
        )
        .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused, "{e}");
        assert!(e.to_string().contains(&addr.to_string()), "{e}");
        assert!(t.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn no_connections_is_invalid() {
        let b = Backend::http(1).unwrap();
        let e = run(
            b.addr(),
            HttpOpts {
                connections: 0,
                ..HttpOpts::default()
            },
        )
        .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }

    /// Serves each connection with `answer` until `stop` (an instant).
    fn fake_server(answer: fn(TcpStream), until: Instant) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        l.set_nonblocking(true).unwrap();
        std::thread::spawn(move || {
            while Instant::now() < until {
                match l.accept() {
                    Ok((s, _)) => {
                        s.set_nonblocking(false).unwrap();
                        std::thread::spawn(move || answer(s));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(1)),
                }
            }
        });
        addr
    }

    fn short() -> HttpOpts {
        HttpOpts {
            connections: 2,
            duration: Duration::from_millis(200),
            warmup: Duration::ZERO,
            timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn server_that_hangs_up_counts_errors() {
        let addr = fake_server(drop, Instant::now() + Duration::from_secs(2));
        let r = run(addr, short()).unwrap();
        assert_eq!(r.requests, 0, "{r:?}");
        assert!(r.errors >= 2, "{r:?}");
        assert_eq!(r.latency, Percentiles::default());
    }

    #[test]
    fn non_2xx_status_counts_errors() {
        fn not_found(mut s: TcpStream) {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 1024];
            while let Ok(n) = s.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
                while let Some(end) = find_head_end(&buf) {
                    buf.drain(..end);
                    let resp = b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\nno";
                    if s.write_all(resp).is_err() {
                        return;
                    }
                }
            }
        }
        let addr = fake_server(not_found, Instant::now() + Duration::from_secs(2));
        let r = run(addr, short()).unwrap();
        assert_eq!(r.requests, 0, "{r:?}");
        assert!(r.errors >= 2, "{r:?}");
    }

    #[test]
    fn parse_head_reads_length_and_connection() {
        let h =
            parse_head(b"HTTP/1.1 200 OK\r\ncontent-LENGTH:  12 \r\nConnection: close").unwrap();
        assert_eq!(
            h,
            Head {
                status: 200,
                content_length: 12,
                close: true
            }
        );
        let h = parse_head(b"HTTP/1.0 204 No Content\r\nContent-Length: 0").unwrap();
        assert!(h.close && h.status == 204);
        let h =
            parse_head(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\nConnection: keep-alive").unwrap();
        assert!(!h.close);
        for bad in [
            &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked"[..],
            b"HTTP/1.1 200 OK",
            b"HTTP/1.1 200 OK\r\nContent-Length: x",
            b"HTTP/2 200\r\nContent-Length: 1",
            b"garbage",
        ] {
            assert!(
                parse_head(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
