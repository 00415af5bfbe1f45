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

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt, OwnedReadHalf, OwnedWriteHalf, Splitable};
use monoio::net::TcpStream;
use proto::tls13::{self, Opener, Sealer};
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
    // A TLS 1.3 session leaves rustls after the handshake: its records
    // are protected by proto::tls13 (TlsStream::accept).
    sc.enable_secret_extraction = true;
    Ok(Arc::new(sc))
}

/// The client config a relay dials another relay's `wss://` with: TLS 1.3,
/// records protected here after the handshake. The other relay's
/// certificate is not checked against any root (relays have no shared CA,
/// and the built-in one makes a self-signed certificate at every start):
/// the link is kept from passive eyes, and the other relay is
/// authenticated by the link token it accepts and the one it answers to,
/// not by its certificate.
pub fn link_client_config() -> Arc<rustls::ClientConfig> {
    static CONFIG: std::sync::OnceLock<Arc<rustls::ClientConfig>> = std::sync::OnceLock::new();
    Arc::clone(CONFIG.get_or_init(|| {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = Arc::new(AnyCertificate(Arc::clone(&provider)));
        let mut c = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("ring supports TLS 1.3")
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        c.enable_secret_extraction = true;
        Arc::new(c)
    }))
}

/// Takes any certificate, but checks the handshake's signature by its key.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
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
/// rustls is given one whole record at a time, so that when the handshake
/// is done it holds no part of a record: the session can then leave rustls for
/// [`proto::tls13`] (see [`TlsStream::accept`]) without losing bytes.
/// rustls refuses more ciphertext while too much decrypted data is waiting
/// ("received plaintext buffer full"), so plaintext is drained between
/// feeds.
#[derive(Default)]
pub struct CipherIn {
    buf: Vec<u8>,
    pos: usize,
}

impl CipherIn {
    fn from_bytes(b: &[u8]) -> Self {
        let mut buf = Vec::with_capacity(b.len().max(16 * 1024));
        buf.extend_from_slice(b);
        CipherIn { buf, pos: 0 }
    }

    fn pending(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    /// The length of the whole record at the front, if one is there.
    fn first_record(&self) -> Option<usize> {
        let rest = self.pending();
        (rest.len() >= tls13::HEADER_LEN && tls13::missing(rest) == 0)
            .then(|| tls13::HEADER_LEN + u16::from_be_bytes([rest[3], rest[4]]) as usize)
    }

    /// Whether a whole record is waiting.
    fn ready(&self) -> bool {
        self.first_record().is_some()
    }

    /// Give rustls the record at the front, all of it, and process it. One
    /// record at a time: rustls then never holds part of a record when the
    /// handshake ends, and never more plaintext than one record's.
    fn feed<C: TlsSide>(&mut self, conn: &mut C) -> io::Result<()> {
        let Some(len) = self.first_record() else {
            return Ok(());
        };
        let end = self.pos + len;
        while self.pos < end {
            let mut slice = &self.buf[self.pos..end];
            match conn.read_tls(&mut slice)? {
                0 => break,
                n => self.pos += n,
            }
        }
        if self.pos >= self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
        conn.process_new_packets().map_err(tls_err)?;
        Ok(())
    }

    /// What is left.
    fn into_vec(mut self) -> Vec<u8> {
        self.buf.drain(..self.pos);
        // Nothing left over (the usual case): no record-sized buffer stays
        // with the session.
        if self.buf.is_empty() {
            return Vec::new();
        }
        self.buf
    }

    /// Read from `io`, appending after what is waiting (moved to the
    /// front first), with room for at least one whole record.
    async fn read_from<R: AsyncReadRent>(&mut self, io: &mut R) -> io::Result<usize> {
        let mut b = std::mem::take(&mut self.buf);
        b.drain(..self.pos);
        self.pos = 0;
        let room = tls13::HEADER_LEN + tls13::MAX_CIPHERTEXT;
        if b.capacity() - b.len() < room {
            b.reserve(room);
        }
        let (len, cap) = (b.len(), b.capacity());
        // A slice from `len`: a plain Vec would be read into from its start.
        let (r, slice) = io.read(b.slice_mut(len..cap)).await;
        self.buf = slice.into_inner();
        r
    }
}

/// Append decrypted bytes to `buf`, up to its spare capacity (at least
/// 16 KiB). `None` means rustls needs more ciphertext first.
///
/// Copies straight out of rustls's own buffers (`BufRead`), so nothing is
/// zeroed first.
fn take_plain<S: PlainSink, C: TlsSide>(conn: &mut C, buf: &mut S) -> Option<io::Result<usize>> {
    use std::io::BufRead;
    let room = (buf.capacity() - buf.len()).max(16 * 1024);
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

/// Either side of a rustls session (the server's, and the client's of a
/// relay-to-relay link): what the handshake and the plaintext drain use.
pub trait TlsSide: std::ops::DerefMut<Target = rustls::ConnectionCommon<Self::Data>> {
    /// rustls's per-side data.
    type Data;
}

impl TlsSide for ServerConnection {
    type Data = rustls::server::ServerConnectionData;
}

impl TlsSide for rustls::ClientConnection {
    type Data = rustls::client::ClientConnectionData;
}

/// Where decrypted bytes go: a relay buffer or the yamux driver's input.
/// Records are read from the socket into its spare room and opened there.
pub trait PlainSink: monoio::buf::IoBuf + monoio::buf::IoBufMut + Default {
    /// Bytes held.
    fn len(&self) -> usize;
    /// Whether it holds nothing.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Bytes it can hold without growing.
    fn capacity(&self) -> usize;
    /// Make room for `n` more.
    fn reserve(&mut self, n: usize);
    /// Append.
    fn extend_from_slice(&mut self, data: &[u8]);
    /// Drop everything from `len` on.
    fn truncate(&mut self, len: usize);
    /// The bytes held.
    fn bytes_mut(&mut self) -> &mut [u8];
}

impl PlainSink for Vec<u8> {
    fn len(&self) -> usize {
        Vec::len(self)
    }
    fn capacity(&self) -> usize {
        Vec::capacity(self)
    }
    fn reserve(&mut self, n: usize) {
        Vec::reserve(self, n)
    }
    fn extend_from_slice(&mut self, data: &[u8]) {
        Vec::extend_from_slice(self, data)
    }
    fn truncate(&mut self, len: usize) {
        Vec::truncate(self, len)
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        self
    }
}

impl PlainSink for bytes::BytesMut {
    fn len(&self) -> usize {
        bytes::BytesMut::len(self)
    }
    fn capacity(&self) -> usize {
        bytes::BytesMut::capacity(self)
    }
    fn reserve(&mut self, n: usize) {
        bytes::BytesMut::reserve(self, n)
    }
    fn extend_from_slice(&mut self, data: &[u8]) {
        bytes::BytesMut::extend_from_slice(self, data)
    }
    fn truncate(&mut self, len: usize) {
        bytes::BytesMut::truncate(self, len)
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        self
    }
}

/// Move everything rustls wants to send into `out`.
fn drain_tls<C: TlsSide>(conn: &mut C, out: &mut Vec<u8>) {
    while conn.wants_write() {
        if conn.write_tls(out).is_err() {
            break;
        }
    }
}

/// The receiving side of a session whose records are protected here.
pub struct RecordIn {
    opener: Opener,
    /// Plaintext rustls had decrypted when the session left it.
    plain: Vec<u8>,
    /// Ciphertext read and not yet opened (part of a record, or records
    /// rustls had not been given).
    pending: Vec<u8>,
    /// close_notify came: everything after is EOF.
    closed: bool,
}

impl RecordIn {
    /// Nothing read and waiting: the next read goes to the socket.
    fn idle(&self) -> bool {
        self.plain.is_empty() && self.pending.is_empty() && !self.closed
    }

    /// Append decrypted bytes to `sink`; 0 means EOF. Reads the socket
    /// straight into `sink`'s spare room and opens the records there,
    /// moving each record's plaintext down over its header: the bytes are
    /// copied once, by the kernel.
    async fn read_into<R: AsyncReadRent, S: PlainSink>(
        &mut self,
        io: &mut R,
        sink: &mut S,
    ) -> io::Result<usize> {
        if !self.plain.is_empty() {
            let n = self.plain.len();
            sink.extend_from_slice(&self.plain);
            self.plain = Vec::new();
            return Ok(n);
        }
        if self.closed {
            return Ok(0);
        }
        let start = sink.len();
        loop {
            let need = tls13::missing(&self.pending);
            let room = (self.pending.len() + need).max(tls13::HEADER_LEN + tls13::MAX_CIPHERTEXT);
            if sink.capacity() - sink.len() < room {
                sink.reserve(room);
            }
            sink.extend_from_slice(&self.pending);
            if self.pending.capacity() > 4096 {
                self.pending = Vec::new();
            } else {
                self.pending.clear();
            }
            if need > 0 || sink.len() == start {
                let len = sink.len();
                let cap = sink.capacity();
                let (r, slice) = io.read(std::mem::take(sink).slice_mut(len..cap)).await;
                *sink = slice.into_inner();
                if r? == 0 {
                    // A peer that closes without close_notify (or inside a
                    // record) is an ordinary EOF for us, as with rustls.
                    sink.truncate(start);
                    return Ok(0);
                }
            }
            let opened = self
                .opener
                .open(sink.bytes_mut(), start, start)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            if !opened.closed {
                self.pending
                    .extend_from_slice(&sink.bytes_mut()[opened.rest..]);
            }
            sink.truncate(opened.plain_end);
            if opened.closed {
                self.closed = true;
                return Ok(opened.plain_end - start);
            }
            if opened.plain_end > start {
                return Ok(opened.plain_end - start);
            }
        }
    }
}

/// A session's state apart from its socket: what moves with a connection
/// to another worker.
// The rustls variant is the large one; a TlsStream is boxed in `Conn`.
#[allow(clippy::large_enum_variant)]
pub enum TlsState {
    /// rustls protects the records (TLS 1.2).
    Rustls(ServerConnection, CipherIn),
    /// TLS 1.3: records are protected here ([`proto::tls13`]). Boxed (the
    /// key schedules are large): every relay's reader and writer enums
    /// would otherwise be that size, plain TCP and yamux ones too.
    Record(Box<Sealer>, Box<RecordIn>),
}

impl TlsState {
    /// Leave rustls for [`proto::tls13`] when the session is TLS 1.3 and its
    /// suite is one we protect; otherwise stay with rustls. Called once the
    /// handshake is done and rustls has nothing left to send.
    fn after_handshake(conn: ServerConnection, cin: CipherIn) -> io::Result<TlsState> {
        if conn.protocol_version() != Some(rustls::ProtocolVersion::TLSv1_3) {
            return Ok(TlsState::Rustls(conn, cin));
        }
        let mut conn = conn;
        // What rustls decrypted past the handshake (frpc's first message
        // often comes with its Finished) is handed out first.
        let mut plain = Vec::new();
        if let Some(r) = take_plain(&mut conn, &mut plain) {
            r?;
        }
        let secrets = conn.dangerous_extract_secrets().map_err(tls_err)?;
        record_state(secrets, plain, cin.into_vec())
    }
}

/// A TLS 1.3 session's record state from its extracted secrets: records
/// protected here from now on. `plain` is what rustls had decrypted,
/// `pending` ciphertext read and not yet opened.
fn record_state(
    secrets: rustls::ExtractedSecrets,
    plain: Vec<u8>,
    pending: Vec<u8>,
) -> io::Result<TlsState> {
    use rustls::ConnectionTrafficSecrets as S;
    {
        let keys = |s: &S| -> Option<(tls13::Suite, Vec<u8>, Vec<u8>)> {
            match s {
                S::Aes128Gcm { key, iv } => Some((
                    tls13::Suite::Aes128Gcm,
                    key.as_ref().to_vec(),
                    iv.as_ref().to_vec(),
                )),
                S::Aes256Gcm { key, iv } => Some((
                    tls13::Suite::Aes256Gcm,
                    key.as_ref().to_vec(),
                    iv.as_ref().to_vec(),
                )),
                S::Chacha20Poly1305 { key, iv } => Some((
                    tls13::Suite::Chacha20Poly1305,
                    key.as_ref().to_vec(),
                    iv.as_ref().to_vec(),
                )),
                _ => None,
            }
        };
        let unsupported = || {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "TLS 1.3 suite without a record layer here",
            )
        };
        let (tx_seq, tx) = &secrets.tx;
        let (rx_seq, rx) = &secrets.rx;
        let (suite, key, iv) = keys(tx).ok_or_else(unsupported)?;
        let sealer = Sealer::new(suite, &key, &iv, *tx_seq).ok_or_else(unsupported)?;
        let (suite, key, iv) = keys(rx).ok_or_else(unsupported)?;
        let opener = Opener::new(suite, &key, &iv, *rx_seq).ok_or_else(unsupported)?;
        Ok(TlsState::Record(
            Box::new(sealer),
            Box::new(RecordIn {
                opener,
                plain,
                pending,
                closed: false,
            }),
        ))
    }
}

/// A server-side TLS stream over a monoio socket, not yet split.
pub struct TlsStream {
    io: TcpStream,
    state: TlsState,
}

impl TlsStream {
    /// Run the handshake. `prefix` holds ciphertext already read from the
    /// socket (the peeked first bytes). A TLS 1.3 session then leaves
    /// rustls: its records are protected by [`proto::tls13`].
    pub async fn accept(
        io: TcpStream,
        config: Arc<rustls::ServerConfig>,
        prefix: &[u8],
    ) -> io::Result<Self> {
        let mut conn = ServerConnection::new(config).map_err(tls_err)?;
        // We flush after every write, so rustls's own plaintext cap would
        // only turn a large relay chunk into a spurious WriteZero.
        conn.set_buffer_limit(None);
        let mut io = io;
        let mut cin = CipherIn::from_bytes(prefix);
        while conn.is_handshaking() {
            if cin.ready() {
                cin.feed(&mut conn)?;
                flush(&mut io, &mut conn).await?;
                continue;
            }
            flush(&mut io, &mut conn).await?;
            if !conn.is_handshaking() {
                break;
            }
            if cin.read_from(&mut io).await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "peer closed during TLS handshake",
                ));
            }
        }
        flush(&mut io, &mut conn).await?;
        let state = TlsState::after_handshake(conn, cin)?;
        Ok(TlsStream { io, state })
    }

    /// The client side, for a relay dialing another relay's `/ws/mesh`:
    /// the handshake (TLS 1.3 only), then records protected here as on
    /// the server side.
    pub async fn connect(
        io: TcpStream,
        config: Arc<rustls::ClientConfig>,
        name: rustls::pki_types::ServerName<'static>,
    ) -> io::Result<Self> {
        let mut conn = rustls::ClientConnection::new(config, name).map_err(tls_err)?;
        conn.set_buffer_limit(None);
        let mut io = io;
        let mut cin = CipherIn::default();
        flush(&mut io, &mut conn).await?;
        while conn.is_handshaking() {
            if cin.ready() {
                cin.feed(&mut conn)?;
                flush(&mut io, &mut conn).await?;
                continue;
            }
            if cin.read_from(&mut io).await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "peer closed during TLS handshake",
                ));
            }
        }
        flush(&mut io, &mut conn).await?;
        if conn.protocol_version() != Some(rustls::ProtocolVersion::TLSv1_3) {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "not TLS 1.3"));
        }
        let mut plain = Vec::new();
        if let Some(r) = take_plain(&mut conn, &mut plain) {
            r?;
        }
        let secrets = conn.dangerous_extract_secrets().map_err(tls_err)?;
        let state = record_state(secrets, plain, cin.into_vec())?;
        Ok(TlsStream { io, state })
    }

    /// Rebuild a stream from parts moved from another worker.
    pub fn from_parts(io: TcpStream, state: TlsState) -> Self {
        TlsStream { io, state }
    }

    /// Take the stream apart so it can move to another thread: the socket
    /// and the session state, with whatever was read and not yet used.
    pub fn into_parts(self) -> (TcpStream, TlsState) {
        (self.io, self.state)
    }

    /// Whether the records are protected here ([`proto::tls13`]) rather
    /// than by rustls.
    pub fn protects_records(&self) -> bool {
        matches!(self.state, TlsState::Record(..))
    }

    /// The socket underneath.
    pub fn socket(&self) -> &TcpStream {
        &self.io
    }

    /// Append decrypted bytes to `buf`; 0 means EOF.
    pub async fn read(&mut self, mut buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        let r = match &mut self.state {
            TlsState::Record(_, rin) => {
                // A read needs room for a whole record (16 KiB); an idle
                // keep-alive connection waits for bytes before it takes
                // that much, so that it holds no read buffer while idle.
                if rin.idle()
                    && buf.capacity() - buf.len() < tls13::HEADER_LEN + tls13::MAX_CIPHERTEXT
                {
                    if let Err(e) = self.io.readable(false).await {
                        return (Err(e), buf);
                    }
                }
                rin.read_into(&mut self.io, &mut buf).await
            }
            TlsState::Rustls(conn, cin) => {
                rustls_read(&mut self.io, &RefCell::new(conn), cin, &mut buf).await
            }
        };
        (r, buf)
    }

    /// Encrypt and send all of `buf`.
    pub async fn write_all(&mut self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        let mut out = Vec::new();
        let sealed = match &mut self.state {
            TlsState::Record(sealer, _) => sealer
                .seal(&buf, &mut out)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
            TlsState::Rustls(conn, _) => conn
                .writer()
                .write_all(&buf)
                .map(|()| drain_tls(conn, &mut out)),
        };
        if let Err(e) = sealed {
            return (Err(e), buf);
        }
        let (r, _) = self.io.write_all(out).await;
        (r.map(|_| ()), buf)
    }

    /// Split into independently usable halves.
    pub fn into_split(self) -> (TlsReader, TlsWriter) {
        let (r, w) = self.io.into_split();
        let out = Vec::with_capacity(16 * 1024 + 64);
        match self.state {
            TlsState::Record(sealer, rin) => (
                TlsReader {
                    io: r,
                    side: ReadSide::Record(rin),
                },
                TlsWriter {
                    io: w,
                    side: WriteSide::Record(sealer),
                    out,
                },
            ),
            TlsState::Rustls(conn, cin) => {
                let conn = Rc::new(RefCell::new(conn));
                (
                    TlsReader {
                        io: r,
                        side: ReadSide::Rustls(conn.clone(), cin),
                    },
                    TlsWriter {
                        io: w,
                        side: WriteSide::Rustls(conn),
                        out,
                    },
                )
            }
        }
    }
}

/// Send what rustls wants to send.
async fn flush<C: TlsSide>(io: &mut TcpStream, conn: &mut C) -> io::Result<()> {
    if !conn.wants_write() {
        return Ok(());
    }
    let mut out = Vec::new();
    drain_tls(conn, &mut out);
    let (r, _) = io.write_all(out).await;
    r.map(|_| ())
}

/// Read through rustls (a TLS 1.2 session): ciphertext into `cin`,
/// plaintext copied out of rustls into `sink`.
async fn rustls_read<R: AsyncReadRent, S: PlainSink, C: AsConn>(
    io: &mut R,
    conn: &RefCell<C>,
    cin: &mut CipherIn,
    sink: &mut S,
) -> io::Result<usize> {
    loop {
        if let Some(r) = take_plain(conn.borrow_mut().conn(), sink) {
            return r;
        }
        if cin.ready() {
            // Anything rustls wants to say back (alerts, key updates)
            // goes out with the writer's next flush.
            cin.feed(conn.borrow_mut().conn())?;
            continue;
        }
        if cin.read_from(io).await? == 0 {
            return Ok(0);
        }
    }
}

/// A rustls session, owned or borrowed, behind a `RefCell` while a read
/// waits (the split halves share one).
trait AsConn {
    fn conn(&mut self) -> &mut ServerConnection;
}

impl AsConn for ServerConnection {
    fn conn(&mut self) -> &mut ServerConnection {
        self
    }
}

impl AsConn for &mut ServerConnection {
    fn conn(&mut self) -> &mut ServerConnection {
        self
    }
}

enum ReadSide {
    Rustls(Rc<RefCell<ServerConnection>>, CipherIn),
    Record(Box<RecordIn>),
}

/// Reading half of a split [`TlsStream`].
pub struct TlsReader {
    io: OwnedReadHalf<TcpStream>,
    side: ReadSide,
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
        match &mut self.side {
            ReadSide::Record(rin) => rin.read_into(&mut self.io, buf).await,
            ReadSide::Rustls(conn, cin) => rustls_read(&mut self.io, conn, cin, buf).await,
        }
    }
}

enum WriteSide {
    Rustls(Rc<RefCell<ServerConnection>>),
    Record(Box<Sealer>),
}

/// Writing half of a split [`TlsStream`].
pub struct TlsWriter {
    io: OwnedWriteHalf<TcpStream>,
    side: WriteSide,
    out: Vec<u8>,
}

impl TlsWriter {
    /// Encrypt and send all of `data`.
    pub async fn write_slice(&mut self, data: &[u8]) -> io::Result<()> {
        match &mut self.side {
            WriteSide::Record(sealer) => sealer
                .seal(data, &mut self.out)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?,
            WriteSide::Rustls(conn) => {
                let mut c = conn.borrow_mut();
                c.writer().write_all(data)?;
                drain_tls(&mut *c, &mut self.out);
            }
        }
        let out = std::mem::take(&mut self.out);
        let (r, mut out) = self.io.write_all(out).await;
        out.clear();
        self.out = out;
        r.map(|_| ())
    }

    /// Send close_notify and half-close the socket.
    pub async fn shutdown(&mut self) {
        match &mut self.side {
            WriteSide::Record(sealer) => {
                let _ = sealer.close_notify(&mut self.out);
            }
            WriteSide::Rustls(conn) => {
                let mut c = conn.borrow_mut();
                c.send_close_notify();
                drain_tls(&mut *c, &mut self.out);
            }
        }
        let out = std::mem::take(&mut self.out);
        let _ = self.io.write_all(out).await;
        let _ = monoio::io::AsyncWriteRent::shutdown(&mut self.io).await;
    }
}
