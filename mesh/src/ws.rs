//! A blocking WebSocket client over one TCP stream, just what a node needs
//! to speak seed 003 to the controller and to relays: the opening
//! handshake, masked binary messages out, messages in. The stream can be
//! cloned so that one thread reads while another writes. `wss://` goes
//! through [`crate::tls`], which hands back a plain local stream.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use base64::Engine as _;
use proto::ws;

/// Largest message accepted from the server.
pub const MAX_MESSAGE: usize = 128 * 1024;

/// A `ws://host:port/path` URL, split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsUrl {
    /// `host:port`.
    pub authority: String,
    /// `/path`.
    pub path: String,
    /// `wss://` (or `https://`): TLS.
    pub tls: bool,
}

/// The connection under the WebSocket: TCP, or the plain end of a TLS
/// bridge.
enum Stream {
    Tcp(TcpStream),
    Tls(UnixStream),
}

impl Stream {
    fn try_clone(&self) -> io::Result<Stream> {
        Ok(match self {
            Stream::Tcp(s) => Stream::Tcp(s.try_clone()?),
            Stream::Tls(s) => Stream::Tls(s.try_clone()?),
        })
    }

    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_read_timeout(t),
            Stream::Tls(s) => s.set_read_timeout(t),
        }
    }

    fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_write_timeout(t),
            Stream::Tls(s) => s.set_write_timeout(t),
        }
    }

    fn shutdown(&self) {
        let _ = match self {
            Stream::Tcp(s) => s.shutdown(std::net::Shutdown::Both),
            Stream::Tls(s) => s.shutdown(std::net::Shutdown::Both),
        };
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl WsUrl {
    /// Parse `ws://host[:port]/path` (port 80 by default) or
    /// `wss://host[:port]/path` (port 443).
    pub fn parse(url: &str) -> Result<WsUrl, String> {
        let (rest, tls) = if let Some(r) = url.strip_prefix("ws://") {
            (r, false)
        } else if let Some(r) = url.strip_prefix("wss://") {
            (r, true)
        } else if let Some(r) = url.strip_prefix("http://") {
            (r, false)
        } else if let Some(r) = url.strip_prefix("https://") {
            (r, true)
        } else {
            return Err(format!("{url}: expected ws://host:port/path or wss://"));
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() {
            return Err(format!("{url}: no host"));
        }
        let authority = if authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
            && !authority.ends_with(']')
        {
            authority.to_owned()
        } else {
            format!("{authority}:{}", if tls { 443 } else { 80 })
        };
        Ok(WsUrl {
            authority,
            path: path.to_owned(),
            tls,
        })
    }

    /// The host name (or address) without the port or brackets.
    pub fn host(&self) -> &str {
        let h = self
            .authority
            .rsplit_once(':')
            .map_or(self.authority.as_str(), |(h, _)| h);
        h.trim_start_matches('[').trim_end_matches(']')
    }
}

/// One WebSocket connection.
pub struct WsConn {
    stream: Stream,
    buf: Vec<u8>,
    start: usize,
    partial: Option<Vec<u8>>,
}

/// What a read gives.
#[derive(Debug)]
pub enum Incoming {
    /// A binary message.
    Binary(Vec<u8>),
    /// The server closed (or the stream ended).
    Closed,
}

fn random_key() -> io::Result<[u8; 16]> {
    let mut k = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut k)
        .map_err(|_| io::Error::other("no randomness"))?;
    Ok(k)
}

impl WsConn {
    /// Connect and upgrade (`timeout` for the TCP connect and the handshake).
    pub fn connect(url: &str, timeout: Duration) -> io::Result<WsConn> {
        let u = WsUrl::parse(url).map_err(io::Error::other)?;
        let addr = u
            .authority
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| io::Error::other(format!("{}: no address", u.authority)))?;
        let tcp = TcpStream::connect_timeout(&addr, timeout)?;
        tcp.set_nodelay(true)?;
        let mut stream = if u.tls {
            Stream::Tls(crate::tls::connect(tcp, u.host(), timeout)?)
        } else {
            Stream::Tcp(tcp)
        };
        stream.set_read_timeout(Some(timeout))?;
        let key = base64::engine::general_purpose::STANDARD.encode(random_key()?);
        let req = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n",
            u.path, u.authority
        );
        stream.write_all(req.as_bytes())?;
        let mut buf = Vec::with_capacity(4096);
        let head_end = loop {
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "closed during the upgrade",
                ));
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if buf.len() > ws::MAX_REQUEST_HEAD {
                return Err(io::Error::other("upgrade answer too long"));
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let status = head.split(' ').nth(1).unwrap_or("");
        if status != "101" {
            let first = head.lines().next().unwrap_or("").to_owned();
            let body = String::from_utf8_lossy(&buf[head_end..]).to_string();
            return Err(io::Error::other(format!("upgrade refused: {first} {body}")));
        }
        let want = ws::accept_key(&key);
        if !head.lines().any(|l| {
            l.to_ascii_lowercase().starts_with("sec-websocket-accept:") && l.ends_with(&want)
        }) {
            return Err(io::Error::other(
                "upgrade answer without the right Sec-WebSocket-Accept",
            ));
        }
        stream.set_read_timeout(None)?;
        Ok(WsConn {
            stream,
            buf: buf[head_end..].to_vec(),
            start: 0,
            partial: None,
        })
    }

    /// A second handle on the same connection (one reads, one writes).
    pub fn try_clone(&self) -> io::Result<WsConn> {
        Ok(WsConn {
            stream: self.stream.try_clone()?,
            buf: Vec::new(),
            start: 0,
            partial: None,
        })
    }

    /// Set the read timeout (None: block).
    pub fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.stream.set_read_timeout(t)
    }

    /// Set the write timeout (None: block); the socket's, so every
    /// handle of this connection has it.
    pub fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.stream.set_write_timeout(t)
    }

    /// Send one binary message.
    pub fn send(&mut self, msg: &[u8]) -> io::Result<()> {
        self.send_all(std::iter::once(msg))
    }

    /// Send several binary messages in one write.
    pub fn send_all<'a>(&mut self, msgs: impl Iterator<Item = &'a [u8]>) -> io::Result<()> {
        let mut out = Vec::with_capacity(2048);
        for msg in msgs {
            masked(ws::Opcode::Binary, msg, &mut out);
        }
        self.stream.write_all(&out)
    }

    /// Write bytes already framed ([`begin_message`], [`end_message`]).
    pub fn send_raw(&mut self, framed: &[u8]) -> io::Result<()> {
        self.stream.write_all(framed)
    }

    /// Close the connection (both directions).
    pub fn shutdown(&self) {
        self.stream.shutdown();
    }

    /// The next binary message (pings answered, pongs skipped).
    pub fn recv(&mut self) -> io::Result<Incoming> {
        loop {
            if let Some(h) = ws::parse_head(&self.buf[self.start..], false, MAX_MESSAGE)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?
            {
                // RFC 6455 §5.1: a client fails on a masked server frame.
                if h.mask.is_some() {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "a masked frame from the server",
                    ));
                }
                let body = self.start + h.head_len;
                if self.buf.len() >= body + h.len {
                    let payload = self.buf[body..body + h.len].to_vec();
                    self.start = body + h.len;
                    match h.opcode {
                        ws::Opcode::Binary if h.fin && self.partial.is_none() => {
                            return Ok(Incoming::Binary(payload))
                        }
                        ws::Opcode::Binary | ws::Opcode::Continuation => {
                            let p = self.partial.get_or_insert_with(Vec::new);
                            p.extend_from_slice(&payload);
                            if p.len() > MAX_MESSAGE {
                                return Err(io::Error::new(
                                    io::ErrorKind::InvalidData,
                                    "message too large",
                                ));
                            }
                            if h.fin {
                                return Ok(Incoming::Binary(
                                    self.partial.take().unwrap_or_default(),
                                ));
                            }
                        }
                        ws::Opcode::Ping => {
                            let mut out = Vec::new();
                            masked(ws::Opcode::Pong, &payload, &mut out);
                            self.stream.write_all(&out)?;
                        }
                        ws::Opcode::Pong | ws::Opcode::Text => {}
                        ws::Opcode::Close => return Ok(Incoming::Closed),
                    }
                    continue;
                }
            }
            if self.start > 0 {
                self.buf.drain(..self.start);
                self.start = 0;
            }
            let mut chunk = vec![0u8; 64 * 1024];
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                return Ok(Incoming::Closed);
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// Start a masked binary message of `len` bytes in `out`: its head (the
/// payload follows, written by the caller, then [`end_message`] masks it).
/// Returns where the payload starts.
pub fn begin_message(len: usize, out: &mut Vec<u8>) -> usize {
    ws::encode_head(ws::Opcode::Binary, true, len, Some(random_mask()), out);
    out.len()
}

/// Mask the payload of the message whose payload starts at `body` (what
/// [`begin_message`] returned; the payload is the whole rest of `out`).
pub fn end_message(out: &mut [u8], body: usize) {
    // The head ends with its mask, right before the payload.
    let mut mask = [0; 4];
    mask.copy_from_slice(&out[body - 4..body]);
    ws::apply_mask(&mut out[body..], mask, 0);
}

/// Append a masked client frame holding `payload`.
fn masked(opcode: ws::Opcode, payload: &[u8], out: &mut Vec<u8>) {
    let mask = random_mask();
    ws::encode_head(opcode, true, payload.len(), Some(mask), out);
    let at = out.len();
    out.extend_from_slice(payload);
    ws::apply_mask(&mut out[at..], mask, 0);
}

fn random_mask() -> [u8; 4] {
    // The mask only keeps intermediaries from reading frames as requests;
    // it needs variation, not secrecy: a per-thread xorshift seeded once.
    thread_local! {
        static STATE: std::cell::Cell<u64> = std::cell::Cell::new({
            let mut s = [0u8; 8];
            let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut s);
            u64::from_le_bytes(s) | 1
        });
    }
    STATE.with(|st| {
        let mut x = st.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        st.set(x);
        (x as u32).to_le_bytes()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_split() {
        assert_eq!(
            WsUrl::parse("ws://127.0.0.1:8444/ws/data").unwrap(),
            WsUrl {
                authority: "127.0.0.1:8444".into(),
                path: "/ws/data".into(),
                tls: false,
            }
        );
        assert_eq!(
            WsUrl::parse("http://h/ws/control").unwrap().authority,
            "h:80"
        );
        let s = WsUrl::parse("wss://relay.example/x").unwrap();
        assert_eq!(
            (s.authority.as_str(), s.host(), s.tls),
            ("relay.example:443", "relay.example", true)
        );
        let s = WsUrl::parse("https://[::1]:8443/ws/control").unwrap();
        assert_eq!((s.host(), s.tls), ("::1", true));
        assert!(WsUrl::parse("ftp://h").is_err());
    }
}
