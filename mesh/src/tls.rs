//! `wss://` for the node: TLS to a relay or the controller, run by a
//! thread of its own that bridges it to one end of a local socket pair.
//! The WebSocket client keeps a plain stream it can clone (one thread
//! reads while another writes), which a TLS session shared by two threads
//! would not give it.
//!
//! The server's certificate is checked against the roots of
//! `--ca-file` when given, else the web PKI's (Mozilla's list, built in).
//! Memory stays bounded both ways: plaintext from the socket pair is taken
//! only once the TLS records before it are written, and the TLS socket is
//! read only while less than `HELD` bytes wait for the local side.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, RootCertStore};

/// Plaintext held for the local side before the TLS socket stops being
/// read.
const HELD: usize = 256 * 1024;

/// How long TLS output may take to go once the local side has closed.
const CLOSING: Duration = Duration::from_secs(5);

static CONFIG: OnceLock<Arc<ClientConfig>> = OnceLock::new();

/// Trust the certificates in `ca_file` (PEM) instead of the web PKI's
/// roots, for every `wss://` connection of this process. Call before the
/// first one; later calls change nothing.
pub fn set_ca_file(ca_file: &Path) -> io::Result<()> {
    let pem = std::fs::read(ca_file)?;
    let mut roots = RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut &pem[..]) {
        roots
            .add(cert?)
            .map_err(|e| io::Error::other(format!("{}: {e}", ca_file.display())))?;
    }
    if roots.is_empty() {
        return Err(io::Error::other(format!(
            "{}: no certificate in it",
            ca_file.display()
        )));
    }
    let _ = CONFIG.set(config(roots)?);
    Ok(())
}

fn config(roots: RootCertStore) -> io::Result<Arc<ClientConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let c = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| io::Error::other(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(c))
}

fn client_config() -> io::Result<Arc<ClientConfig>> {
    if let Some(c) = CONFIG.get() {
        return Ok(Arc::clone(c));
    }
    let roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let c = config(roots)?;
    Ok(Arc::clone(CONFIG.get_or_init(|| c)))
}

/// TLS with `host` over `tcp` (handshake within `timeout`); the plain end
/// of the bridge.
pub fn connect(mut tcp: TcpStream, host: &str, timeout: Duration) -> io::Result<UnixStream> {
    let name = ServerName::try_from(host.to_owned())
        .map_err(|e| io::Error::other(format!("{host}: {e}")))?;
    let mut conn = ClientConnection::new(client_config()?, name)
        .map_err(|e| io::Error::other(e.to_string()))?;
    tcp.set_read_timeout(Some(timeout))?;
    tcp.set_write_timeout(Some(timeout))?;
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp)
            .map_err(|e| io::Error::new(e.kind(), format!("TLS with {host}: {e}")))?;
    }
    // Bounded by the bridge instead (one local read at a time).
    conn.set_buffer_limit(None);
    let (ours, theirs) = UnixStream::pair()?;
    tcp.set_nonblocking(true)?;
    theirs.set_nonblocking(true)?;
    std::thread::Builder::new()
        .name("mesh-tls".into())
        .spawn(move || {
            let _ = bridge(conn, tcp, theirs);
        })?;
    Ok(ours)
}

fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted
}

/// Moves bytes between the TLS socket and the local end until either
/// closes.
fn bridge(mut conn: ClientConnection, mut tcp: TcpStream, mut local: UnixStream) -> io::Result<()> {
    let mut to_local: Vec<u8> = Vec::new();
    // The local side still sends (and its end is still polled); once it
    // is closed, what TLS holds gets [`CLOSING`] to go out.
    let mut local_open = true;
    let mut closing: Option<std::time::Instant> = None;
    // The relay sent close_notify: done once what it sent is delivered.
    let mut peer_closed = false;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if closing.is_some_and(|t| t.elapsed() > CLOSING) {
            return Ok(());
        }
        if peer_closed && to_local.is_empty() {
            return Ok(());
        }
        let mut fds = [
            libc::pollfd {
                fd: tcp.as_raw_fd(),
                events: 0,
                revents: 0,
            },
            libc::pollfd {
                // A closed local end is not polled (its hang-up would
                // wake every poll).
                fd: if local_open || !to_local.is_empty() {
                    local.as_raw_fd()
                } else {
                    -1
                },
                events: 0,
                revents: 0,
            },
        ];
        if to_local.len() < HELD {
            fds[0].events |= libc::POLLIN;
        }
        if conn.wants_write() {
            fds[0].events |= libc::POLLOUT;
        }
        if local_open && !conn.wants_write() {
            fds[1].events |= libc::POLLIN;
        }
        if !to_local.is_empty() {
            fds[1].events |= libc::POLLOUT;
        }
        // SAFETY: `fds` is a valid array of two pollfd for the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, 1_000) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if would_block(&e) {
                continue;
            }
            return Err(e);
        }
        let hangup = libc::POLLHUP | libc::POLLERR;
        // TLS in: records to plaintext for the local side.
        if fds[0].revents & (libc::POLLIN | hangup) != 0 {
            match conn.read_tls(&mut tcp) {
                Ok(0) => {
                    // The relay is gone: what it sent before still goes
                    // to the local side (its last ERROR, its Close).
                    let _ = local.set_nonblocking(false);
                    let _ = local.set_write_timeout(Some(CLOSING));
                    let _ = local.write_all(&to_local);
                    return Ok(());
                }
                Ok(_) => {
                    let state = conn
                        .process_new_packets()
                        .map_err(|e| io::Error::other(e.to_string()))?;
                    let mut want = state.plaintext_bytes_to_read();
                    while want > 0 {
                        let take = want.min(buf.len());
                        let k = conn.reader().read(&mut buf[..take])?;
                        if k == 0 {
                            break;
                        }
                        to_local.extend_from_slice(&buf[..k]);
                        want -= k;
                    }
                    peer_closed |= state.peer_has_closed();
                }
                Err(e) if would_block(&e) => {}
                Err(e) => return Err(e),
            }
        }
        if !to_local.is_empty() {
            match local.write(&to_local) {
                Ok(k) => {
                    to_local.drain(..k);
                }
                Err(e) if would_block(&e) => {}
                Err(_) => return Ok(()),
            }
        } else if !local_open && fds[1].revents & hangup != 0 {
            return Ok(());
        }
        // Local plaintext in: into TLS records. A hang-up while TLS output
        // waits (nothing read then) closes too, or it would wake every poll.
        let local_rev = fds[1].revents;
        if local_open && local_rev & (libc::POLLIN | hangup) != 0 {
            let got = if conn.wants_write() {
                if local_rev & libc::POLLIN == 0 {
                    Ok(0)
                } else {
                    Err(io::ErrorKind::WouldBlock.into())
                }
            } else {
                local.read(&mut buf)
            };
            match got {
                Ok(0) => {
                    local_open = false;
                    closing = Some(std::time::Instant::now());
                    conn.send_close_notify();
                }
                Ok(k) => conn.writer().write_all(&buf[..k])?,
                Err(e) if would_block(&e) => {}
                Err(_) => {
                    local_open = false;
                    closing = Some(std::time::Instant::now());
                    conn.send_close_notify();
                }
            }
        }
        while conn.wants_write() {
            match conn.write_tls(&mut tcp) {
                Ok(_) => {}
                Err(e) if would_block(&e) => break,
                Err(e) => return Err(e),
            }
        }
        if !local_open && !conn.wants_write() {
            return Ok(());
        }
    }
}
