//! TLS on the bind port: the server configuration (a configured certificate
//! or a self-signed one made at start, as frps does) and a TLS stream driven
//! by hand over monoio.
//!
//! We drive rustls ourselves rather than through an adapter crate because a
//! TLS work connection that lands on the wrong worker must move to its
//! owner: [`TlsStream::into_parts`] gives back the socket and the rustls
//! session state, both of which can cross threads, and the owner rebuilds
//! the stream around them. No bytes are relayed across threads.

use std::cell::RefCell;
use std::io::{self, Write};
use std::rc::Rc;
use std::sync::Arc;

use monoio::io::{AsyncReadRent, AsyncWriteRentExt, OwnedReadHalf, OwnedWriteHalf, Splitable};
use monoio::net::TcpStream;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::ServerConnection;

use crate::config::TlsConfig;

/// Build the rustls server configuration for the bind port.
pub fn server_config(cfg: &TlsConfig) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let (certs, key) = if cfg.cert_file.is_empty() {
        self_signed()?
    } else {
        load_pem(&cfg.cert_file, &cfg.key_file)?
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut sc = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    // frpc never resumes; tickets would only cost a write per handshake.
    sc.send_tls13_tickets = 0;
    Ok(Arc::new(sc))
}

fn self_signed() -> anyhow::Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let ck =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "totoro".to_string()])?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.key_pair.serialize_der()));
    Ok((vec![ck.cert.der().clone()], key))
}

fn load_pem(
    cert: &str,
    key: &str,
) -> anyhow::Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    use anyhow::Context;
    let mut r = io::BufReader::new(
        std::fs::File::open(cert).with_context(|| format!("transport.tls.certFile {cert}"))?,
    );
    let certs = rustls_pemfile::certs(&mut r)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("transport.tls.certFile {cert}: not PEM certificates"))?;
    let mut r = io::BufReader::new(
        std::fs::File::open(key).with_context(|| format!("transport.tls.keyFile {key}"))?,
    );
    let key = rustls_pemfile::private_key(&mut r)
        .with_context(|| format!("transport.tls.keyFile {key}: unreadable"))?
        .ok_or_else(|| anyhow::anyhow!("transport.tls.keyFile {key}: no private key found"))?;
    Ok((certs, key))
}

fn tls_err(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// Ciphertext read from the socket and not yet taken by rustls.
///
/// rustls refuses more ciphertext while too much decrypted data is waiting
/// ("received plaintext buffer full"), so ciphertext is fed one `read_tls`
/// at a time, and plaintext drained in between.
#[derive(Default)]
pub struct CipherIn {
    buf: Vec<u8>,
    pos: usize,
}

impl CipherIn {
    fn with_capacity(n: usize) -> Self {
        CipherIn {
            buf: Vec::with_capacity(n),
            pos: 0,
        }
    }

    fn from_bytes(b: &[u8]) -> Self {
        let mut c = CipherIn::with_capacity(b.len().max(16 * 1024));
        c.buf.extend_from_slice(b);
        c
    }

    fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }

    /// Give rustls as much as it takes in one call, and process it.
    fn feed(&mut self, conn: &mut ServerConnection) -> io::Result<()> {
        let mut slice = &self.buf[self.pos..];
        let n = conn.read_tls(&mut slice)?;
        self.pos += n;
        if self.pos >= self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
        conn.process_new_packets().map_err(tls_err)?;
        Ok(())
    }

    /// What is left, for a connection moving to another worker.
    pub fn into_vec(mut self) -> Vec<u8> {
        self.buf.drain(..self.pos);
        self.buf
    }

    /// Take the buffer for a socket read (it is empty when this is called).
    fn take_for_read(&mut self) -> Vec<u8> {
        let mut b = std::mem::take(&mut self.buf);
        b.clear();
        self.pos = 0;
        if b.capacity() < 16 * 1024 {
            b.reserve(16 * 1024);
        }
        b
    }
}

/// Append decrypted bytes to `buf`, up to its spare capacity (at least
/// 16 KiB). `None` means rustls needs more ciphertext first.
///
/// Copies straight out of rustls's own buffers (`BufRead`), so nothing is
/// zeroed first: with a 64 KiB relay buffer and 16 KiB records, zeroing the
/// spare room on every call was the hottest function of the TLS path.
fn take_plain<S: PlainSink>(conn: &mut ServerConnection, buf: &mut S) -> Option<io::Result<usize>> {
    use std::io::BufRead;
    let room = buf.room().max(16 * 1024);
    let mut reader = conn.reader();
    let mut got = 0;
    loop {
        let n = match reader.fill_buf() {
            // close_notify: EOF once everything before it is delivered.
            Ok([]) => return Some(Ok(got)),
            Ok(chunk) => {
                let n = chunk.len().min(room - got);
                buf.extend_from_slice(&chunk[..n]);
                n
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return (got > 0).then_some(Ok(got)),
            // A peer that closes without close_notify is an ordinary EOF for us.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Some(Ok(got)),
            Err(e) => return Some(if got > 0 { Ok(got) } else { Err(e) }),
        };
        reader.consume(n);
        got += n;
        if got >= room {
            return Some(Ok(got));
        }
    }
}

/// Where decrypted bytes go: a relay buffer or the yamux driver's input.
pub trait PlainSink {
    /// Bytes that fit without growing.
    fn room(&self) -> usize;
    /// Append.
    fn extend_from_slice(&mut self, data: &[u8]);
}

impl PlainSink for Vec<u8> {
    fn room(&self) -> usize {
        self.capacity() - self.len()
    }
    fn extend_from_slice(&mut self, data: &[u8]) {
        Vec::extend_from_slice(self, data)
    }
}

impl PlainSink for bytes::BytesMut {
    fn room(&self) -> usize {
        self.capacity() - self.len()
    }
    fn extend_from_slice(&mut self, data: &[u8]) {
        bytes::BytesMut::extend_from_slice(self, data)
    }
}

/// Move everything rustls wants to send into `out`.
fn drain_tls(conn: &mut ServerConnection, out: &mut Vec<u8>) {
    while conn.wants_write() {
        if conn.write_tls(out).is_err() {
            break;
        }
    }
}

/// A server-side TLS stream over a monoio socket, not yet split.
pub struct TlsStream {
    io: TcpStream,
    conn: ServerConnection,
    cin: CipherIn,
}

impl TlsStream {
    /// Run the handshake. `prefix` holds ciphertext already read from the
    /// socket (the peeked first bytes).
    pub async fn accept(
        io: TcpStream,
        config: Arc<rustls::ServerConfig>,
        prefix: &[u8],
    ) -> io::Result<Self> {
        let mut conn = ServerConnection::new(config).map_err(tls_err)?;
        // We flush after every write, so rustls's own plaintext cap would
        // only turn a large relay chunk into a spurious WriteZero.
        conn.set_buffer_limit(None);
        let mut s = TlsStream {
            io,
            conn,
            cin: CipherIn::from_bytes(prefix),
        };
        while s.conn.is_handshaking() {
            if !s.cin.is_empty() {
                s.cin.feed(&mut s.conn)?;
                s.flush_tls().await?;
                continue;
            }
            s.flush_tls().await?;
            if !s.conn.is_handshaking() {
                break;
            }
            if s.read_tls().await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "peer closed during TLS handshake",
                ));
            }
        }
        s.flush_tls().await?;
        Ok(s)
    }

    /// Rebuild a stream from parts moved from another worker.
    pub fn from_parts(io: TcpStream, conn: ServerConnection, ciphertext: Vec<u8>) -> Self {
        TlsStream {
            io,
            conn,
            cin: CipherIn::from_bytes(&ciphertext),
        }
    }

    /// Take the stream apart so it can move to another thread: the socket,
    /// the session state and any ciphertext read but not yet processed.
    pub fn into_parts(self) -> (TcpStream, ServerConnection, Vec<u8>) {
        (self.io, self.conn, self.cin.into_vec())
    }

    /// The socket underneath.
    pub fn socket(&self) -> &TcpStream {
        &self.io
    }

    /// Read ciphertext from the socket into `cin` (which must be empty).
    async fn read_tls(&mut self) -> io::Result<usize> {
        let buf = self.cin.take_for_read();
        let (r, buf) = self.io.read(buf).await;
        self.cin.buf = buf;
        r
    }

    async fn flush_tls(&mut self) -> io::Result<()> {
        if !self.conn.wants_write() {
            return Ok(());
        }
        let mut out = Vec::new();
        drain_tls(&mut self.conn, &mut out);
        let (r, _) = self.io.write_all(out).await;
        r.map(|_| ())
    }

    /// Append decrypted bytes to `buf`; 0 means EOF.
    pub async fn read(&mut self, mut buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        loop {
            if let Some(r) = take_plain(&mut self.conn, &mut buf) {
                return (r, buf);
            }
            if !self.cin.is_empty() {
                if let Err(e) = self.cin.feed(&mut self.conn) {
                    return (Err(e), buf);
                }
                continue;
            }
            match self.read_tls().await {
                Ok(0) => return (Ok(0), buf),
                Ok(_) => {}
                Err(e) => return (Err(e), buf),
            }
            if let Err(e) = self.flush_tls().await {
                return (Err(e), buf);
            }
        }
    }

    /// Encrypt and send all of `buf`.
    pub async fn write_all(&mut self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        if let Err(e) = self.conn.writer().write_all(&buf) {
            return (Err(e), buf);
        }
        (self.flush_tls().await, buf)
    }

    /// Split into independently usable halves sharing the TLS session.
    pub fn into_split(self) -> (TlsReader, TlsWriter) {
        let (r, w) = self.io.into_split();
        let conn = Rc::new(RefCell::new(self.conn));
        (
            TlsReader {
                io: r,
                conn: conn.clone(),
                cin: self.cin,
            },
            TlsWriter {
                io: w,
                conn,
                out: Vec::with_capacity(16 * 1024 + 64),
            },
        )
    }
}

/// Reading half of a split [`TlsStream`].
pub struct TlsReader {
    io: OwnedReadHalf<TcpStream>,
    conn: Rc<RefCell<ServerConnection>>,
    cin: CipherIn,
}

impl TlsReader {
    /// Append decrypted bytes to `buf`; 0 means EOF.
    pub async fn read(&mut self, mut buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        let r = self.read_into(&mut buf).await;
        (r, buf)
    }

    /// Append decrypted bytes to any sink (the yamux driver reads straight
    /// into its frame buffer this way, with no intermediate copy).
    pub async fn read_into<S: PlainSink>(&mut self, buf: &mut S) -> io::Result<usize> {
        loop {
            if let Some(r) = take_plain(&mut self.conn.borrow_mut(), buf) {
                return r;
            }
            if !self.cin.is_empty() {
                // Anything rustls wants to say back (alerts, key updates)
                // goes out with the writer's next flush.
                self.cin.feed(&mut self.conn.borrow_mut())?;
                continue;
            }
            let cbuf = self.cin.take_for_read();
            let (r, cbuf) = self.io.read(cbuf).await;
            self.cin.buf = cbuf;
            if r? == 0 {
                return Ok(0);
            }
        }
    }
}

/// Writing half of a split [`TlsStream`].
pub struct TlsWriter {
    io: OwnedWriteHalf<TcpStream>,
    conn: Rc<RefCell<ServerConnection>>,
    out: Vec<u8>,
}

impl TlsWriter {
    /// Encrypt and send all of `data`.
    pub async fn write_slice(&mut self, data: &[u8]) -> io::Result<()> {
        {
            let mut c = self.conn.borrow_mut();
            c.writer().write_all(data)?;
            drain_tls(&mut c, &mut self.out);
        }
        let out = std::mem::take(&mut self.out);
        let (r, mut out) = self.io.write_all(out).await;
        out.clear();
        self.out = out;
        r.map(|_| ())
    }

    /// Send close_notify and half-close the socket.
    pub async fn shutdown(&mut self) {
        {
            let mut c = self.conn.borrow_mut();
            c.send_close_notify();
            drain_tls(&mut c, &mut self.out);
        }
        let out = std::mem::take(&mut self.out);
        let _ = self.io.write_all(out).await;
        let _ = monoio::io::AsyncWriteRent::shutdown(&mut self.io).await;
    }
}
