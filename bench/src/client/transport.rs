//! Dialing the server: plain TCP or TLS, split into a reader and a writer
//! that can live on different threads.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::ClientConnection;

/// A boxed reading half.
pub type BoxRead = Box<dyn Read + Send>;
/// A boxed writing half.
pub type BoxWrite = Box<dyn WriteHalf>;

/// A writing half that can also half-close and abort.
pub trait WriteHalf: Write + Send {
    /// Half-close (FIN / close_notify).
    fn shutdown_write(&mut self);
    /// Abort the whole connection.
    fn abort(&mut self);
}

/// How to reach the server.
#[derive(Debug, Clone)]
pub struct Dial {
    /// Server address.
    pub addr: SocketAddr,
    /// Wrap in TLS.
    pub tls: bool,
    /// Send frp's 0x17 byte before the ClientHello (disableCustomTLSFirstByte=false).
    pub tls_custom_byte: bool,
    /// Offer TLS 1.2 only (an old client; the server's other record path).
    pub tls12_only: bool,
    /// Limit on the TCP connect and on each read and write of the TLS
    /// handshake; None leaves both to the OS.
    pub timeout: Option<Duration>,
}

impl Dial {
    /// Connect and return the two halves.
    pub fn connect(&self) -> io::Result<(BoxRead, BoxWrite)> {
        self.connect_with_handle().map(|(r, w, _)| (r, w))
    }

    /// Connect and return the two halves and a handle on the socket under
    /// them, through which another thread can shut the connection down
    /// (e.g. when a deadline passes) whoever is blocked on it.
    pub fn connect_with_handle(&self) -> io::Result<(BoxRead, BoxWrite, TcpStream)> {
        let sock = match self.timeout {
            Some(t) => TcpStream::connect_timeout(&self.addr, t)?,
            None => TcpStream::connect(self.addr)?,
        };
        sock.set_nodelay(true)?;
        let handle = sock.try_clone()?;
        if !self.tls {
            let r = sock.try_clone()?;
            return Ok((Box::new(r), Box::new(TcpWrite(sock)), handle));
        }
        // Only this thread uses the socket until the handshake is over, so
        // the timeouts can be lifted again before anyone else reads it.
        sock.set_read_timeout(self.timeout)?;
        sock.set_write_timeout(self.timeout)?;
        if self.tls_custom_byte {
            (&sock).write_all(&[0x17])?;
        }
        let conn = ClientConnection::new(
            tls_config(self.tls12_only),
            ServerName::try_from("localhost").expect("static name"),
        )
        .map_err(io::Error::other)?;
        // We write everything rustls produces right away; its own cap on
        // buffered output would only cut large writes short.
        let mut conn = conn;
        conn.set_buffer_limit(None);
        let mut tls = TlsShared {
            conn: Mutex::new(conn),
            sock: sock.try_clone()?,
        };
        tls.handshake().map_err(|e| {
            // A socket timeout reads as EAGAIN; say what it is.
            if e.kind() == io::ErrorKind::WouldBlock {
                io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out")
            } else {
                e
            }
        })?;
        sock.set_read_timeout(None)?;
        sock.set_write_timeout(None)?;
        let tls = Arc::new(tls);
        Ok((
            Box::new(TlsRead(tls.clone(), sock.try_clone()?, Vec::new(), 0)),
            Box::new(TlsWrite(tls, sock)),
            handle,
        ))
    }
}

/// Plain TCP writing half.
pub struct TcpWrite(pub TcpStream);

impl Write for TcpWrite {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0.write(b)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl WriteHalf for TcpWrite {
    fn shutdown_write(&mut self) {
        let _ = self.0.shutdown(Shutdown::Write);
    }
    fn abort(&mut self) {
        let _ = self.0.shutdown(Shutdown::Both);
    }
}

struct TlsShared {
    conn: Mutex<ClientConnection>,
    sock: TcpStream,
}

impl TlsShared {
    fn handshake(&mut self) -> io::Result<()> {
        let conn = self
            .conn
            .get_mut()
            .map_err(|_| io::Error::other("poisoned"))?;
        let mut sock = &self.sock;
        while conn.is_handshaking() {
            conn.complete_io(&mut sock)?;
        }
        while conn.wants_write() {
            conn.write_tls(&mut sock)?;
        }
        Ok(())
    }
}

struct TlsRead(Arc<TlsShared>, TcpStream, Vec<u8>, usize);

impl Read for TlsRead {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut out = Vec::new();
            let fed = {
                let mut c = self
                    .0
                    .conn
                    .lock()
                    .map_err(|_| io::Error::other("poisoned"))?;
                match c.reader().read(buf) {
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                    Err(e) => return Err(e),
                }
                // rustls takes more ciphertext only once its plaintext is
                // drained: feed one read_tls at a time.
                if self.3 < self.2.len() {
                    let mut slice = &self.2[self.3..];
                    let n = c.read_tls(&mut slice)?;
                    self.3 += n;
                    c.process_new_packets().map_err(io::Error::other)?;
                    while c.wants_write() {
                        c.write_tls(&mut out)?;
                    }
                    true
                } else {
                    false
                }
            };
            if !out.is_empty() {
                (&self.0.sock).write_all(&out)?;
            }
            if fed {
                continue;
            }
            self.2.resize(64 * 1024, 0);
            let n = self.1.read(&mut self.2)?;
            self.2.truncate(n);
            self.3 = 0;
            if n == 0 {
                return Ok(0);
            }
        }
    }
}

struct TlsWrite(Arc<TlsShared>, TcpStream);

impl Write for TlsWrite {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        let mut out = Vec::with_capacity(b.len() + 64);
        {
            let mut c = self
                .0
                .conn
                .lock()
                .map_err(|_| io::Error::other("poisoned"))?;
            c.writer().write_all(b)?;
            while c.wants_write() {
                c.write_tls(&mut out)?;
            }
        }
        (&self.0.sock).write_all(&out)?;
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl WriteHalf for TlsWrite {
    fn shutdown_write(&mut self) {
        let mut out = Vec::new();
        if let Ok(mut c) = self.0.conn.lock() {
            c.send_close_notify();
            while c.wants_write() {
                if c.write_tls(&mut out).is_err() {
                    break;
                }
            }
        }
        let _ = (&self.1).write_all(&out);
        let _ = self.1.shutdown(Shutdown::Write);
    }
    fn abort(&mut self) {
        let _ = self.1.shutdown(Shutdown::Both);
    }
}

/// frpc without `trustedCaFile` accepts any certificate; so do we.
fn tls_config(tls12_only: bool) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = if tls12_only {
        &[&rustls::version::TLS12]
    } else {
        rustls::DEFAULT_VERSIONS
    };
    let cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .expect("ring supports both versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
        .with_no_client_auth();
    Arc::new(cfg)
}

#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

impl WriteHalf for Box<dyn WriteHalf> {
    fn shutdown_write(&mut self) {
        (**self).shutdown_write()
    }
    fn abort(&mut self) {
        (**self).abort()
    }
}
