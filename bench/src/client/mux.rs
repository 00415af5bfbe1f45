//! A yamux client session on threads: one reader thread feeds the sans-IO
//! `proto::yamux::Session`; streams are blocking `Read`/`Write` handles.
//! Configured as frpc configures yamux (6 MiB max window, 30 s keepalive).

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use proto::yamux::{Config, Event, Role, Session};

use super::transport::{BoxRead, BoxWrite, WriteHalf};

/// frpc's yamux MaxStreamWindowSize.
pub const FRPC_WINDOW: u32 = 6 * 1024 * 1024;

#[derive(Default)]
struct StreamState {
    data: VecDeque<Bytes>,
    fin: bool,
    reset: bool,
    /// We sent FIN.
    local_closed: bool,
}

impl StreamState {
    /// Both sides are done and everything was read: the entry can go.
    fn finished(&self) -> bool {
        self.reset || (self.fin && self.local_closed && self.data.is_empty())
    }
}

struct State {
    session: Session,
    streams: HashMap<u32, StreamState>,
    closed: bool,
}

struct Inner {
    state: Mutex<State>,
    cond: Condvar,
    writer: Mutex<BoxWrite>,
    /// The socket under the session, when the driver has a handle on it.
    /// A flush holds `writer` for as long as its write blocks, which is
    /// for ever when the server stops reading; `close` then shuts this
    /// down instead of waiting for `writer`.
    socket: Option<TcpStream>,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Write whatever the session has queued, in order.
    fn flush(&self) -> io::Result<()> {
        let mut w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let out = self.lock().session.take_outbound();
        if !out.is_empty() {
            w.write_all(&out)?;
        }
        Ok(())
    }

    fn close(&self) {
        self.lock().closed = true;
        self.cond.notify_all();
        match &self.socket {
            Some(s) => {
                let _ = s.shutdown(Shutdown::Both);
            }
            None => self
                .writer
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .abort(),
        }
    }
}

/// A yamux client session.
#[derive(Clone)]
pub struct MuxClient {
    inner: Arc<Inner>,
}

impl MuxClient {
    /// Start a session over a connected transport.
    pub fn start(reader: BoxRead, writer: BoxWrite) -> MuxClient {
        Self::start_with(reader, writer, None)
    }

    /// Start a session over a connected transport, with a handle on the
    /// socket under it so that [`MuxClient::close`] ends the session even
    /// while a write is blocked on a server that stopped reading.
    pub fn start_on(reader: BoxRead, writer: BoxWrite, socket: TcpStream) -> MuxClient {
        Self::start_with(reader, writer, Some(socket))
    }

    fn start_with(mut reader: BoxRead, writer: BoxWrite, socket: Option<TcpStream>) -> MuxClient {
        let mut cfg = Config::client();
        cfg.role = Role::Client;
        cfg.max_stream_window = FRPC_WINDOW;
        cfg.keepalive_interval = Some(Duration::from_secs(30));
        let inner = Arc::new(Inner {
            state: Mutex::new(State {
                session: Session::new(cfg, Instant::now()),
                streams: HashMap::new(),
                closed: false,
            }),
            cond: Condvar::new(),
            writer: Mutex::new(writer),
            socket,
        });
        let rd = inner.clone();
        std::thread::Builder::new()
            .name("mux-reader".into())
            .stack_size(256 * 1024)
            .spawn(move || {
                let mut input = BytesMut::with_capacity(256 * 1024);
                let mut buf = vec![0u8; 256 * 1024];
                loop {
                    let n = match reader.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    input.extend_from_slice(&buf[..n]);
                    let mut st = rd.lock();
                    let r = st.session.receive(&mut input, Instant::now());
                    while let Some(ev) = st.session.poll_event() {
                        match ev {
                            Event::Data(id, b) => {
                                if let Some(s) = st.streams.get_mut(&id) {
                                    s.data.push_back(b);
                                } else {
                                    let len = b.len();
                                    st.session.consumed(id, len);
                                }
                            }
                            Event::Fin(id) => {
                                if let Some(s) = st.streams.get_mut(&id) {
                                    s.fin = true;
                                }
                            }
                            Event::Reset(id) => {
                                if let Some(s) = st.streams.get_mut(&id) {
                                    s.reset = true;
                                }
                            }
                            _ => {}
                        }
                    }
                    drop(st);
                    rd.cond.notify_all();
                    if r.is_err() || rd.flush().is_err() {
                        break;
                    }
                }
                rd.close();
            })
            .expect("spawn mux reader");
        let tk = Arc::downgrade(&inner);
        std::thread::Builder::new()
            .name("mux-timer".into())
            .stack_size(64 * 1024)
            .spawn(move || loop {
                std::thread::sleep(Duration::from_millis(500));
                let Some(inner) = tk.upgrade() else { break };
                let r = {
                    let mut st = inner.lock();
                    if st.closed {
                        break;
                    }
                    st.session.tick(Instant::now())
                };
                if r.is_err() || inner.flush().is_err() {
                    inner.close();
                    break;
                }
            })
            .expect("spawn mux timer");
        MuxClient { inner }
    }

    /// Open a stream (sends WindowUpdate|SYN like frpc).
    pub fn open(&self) -> io::Result<MuxStream> {
        let id = {
            let mut st = self.inner.lock();
            if st.closed {
                return Err(io::Error::new(
                    io::ErrorKind::NotConnected,
                    "session closed",
                ));
            }
            let id = st
                .session
                .open_stream()
                .map_err(|e| io::Error::other(e.to_string()))?;
            st.streams.insert(id, StreamState::default());
            id
        };
        self.inner.flush()?;
        Ok(MuxStream {
            inner: self.inner.clone(),
            id,
        })
    }

    /// Half-close the connection (TLS close_notify, then FIN) as an
    /// exiting frpc does; the session ends when the server hangs up.
    pub fn shutdown(&self) {
        self.inner
            .writer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .shutdown_write();
    }

    /// Close the whole session (like killing frpc's connection).
    pub fn close(&self) {
        self.inner.close();
    }

    /// Whether the session has ended.
    pub fn is_closed(&self) -> bool {
        self.inner.lock().closed
    }
}

/// One yamux stream; clone it to read and write from different threads.
#[derive(Clone)]
pub struct MuxStream {
    inner: Arc<Inner>,
    id: u32,
}

impl Read for MuxStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut st = self.inner.lock();
        loop {
            let closed = st.closed;
            let Some(s) = st.streams.get_mut(&self.id) else {
                return Ok(0);
            };
            if let Some(front) = s.data.front_mut() {
                let n = buf.len().min(front.len());
                buf[..n].copy_from_slice(&front[..n]);
                front.advance(n);
                if front.is_empty() {
                    s.data.pop_front();
                }
                st.session.consumed(self.id, n);
                drop(st);
                self.inner.flush()?;
                return Ok(n);
            }
            if s.reset {
                st.streams.remove(&self.id);
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionReset,
                    "stream reset",
                ));
            }
            if s.fin || closed {
                if s.finished() {
                    st.streams.remove(&self.id);
                }
                return Ok(0);
            }
            st = self.inner.cond.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }
}

impl Write for MuxStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut st = self.inner.lock();
        loop {
            if st.closed {
                return Err(io::Error::new(io::ErrorKind::BrokenPipe, "session closed"));
            }
            if st.streams.get(&self.id).is_some_and(|s| s.reset) {
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionReset,
                    "stream reset",
                ));
            }
            let n = st
                .session
                .write_data(self.id, buf)
                .map_err(|e| io::Error::new(io::ErrorKind::BrokenPipe, e.to_string()))?;
            if n > 0 {
                drop(st);
                self.inner.flush()?;
                return Ok(n);
            }
            st = self
                .inner
                .cond
                .wait_timeout(st, Duration::from_millis(100))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl WriteHalf for MuxStream {
    fn shutdown_write(&mut self) {
        {
            let mut st = self.inner.lock();
            st.session.close_stream(self.id);
            if let Some(s) = st.streams.get_mut(&self.id) {
                s.local_closed = true;
                if s.finished() {
                    st.streams.remove(&self.id);
                }
            }
        }
        let _ = self.inner.flush();
    }
    fn abort(&mut self) {
        self.inner.lock().session.reset_stream(self.id);
        let _ = self.inner.flush();
        // Readers of this stream see "gone" (EOF) from now on.
        self.inner.lock().streams.remove(&self.id);
        self.inner.cond.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::transport::TcpWrite;
    use std::net::TcpListener;

    #[test]
    fn close_ends_a_session_whose_write_is_blocked_on_a_peer_that_does_not_read() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let sock = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        // Accepted, never read: 32 streams' windows of 256 KiB are more
        // than the socket buffers take, so a flush blocks holding the writer.
        let (_peer, _) = l.accept().unwrap();
        let m = MuxClient::start_on(
            Box::new(sock.try_clone().unwrap()),
            Box::new(TcpWrite(sock.try_clone().unwrap())),
            sock,
        );
        // All opened first: an open flushes too, and would wait behind the
        // blocked writer.
        let streams: Vec<_> = (0..32).map(|_| m.open().unwrap()).collect();
        let writers: Vec<_> = streams
            .into_iter()
            .map(|mut s| {
                std::thread::spawn(move || {
                    let chunk = vec![0u8; 64 * 1024];
                    while s.write_all(&chunk).is_ok() {}
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(300));
        let t = Instant::now();
        m.close();
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
        for w in writers {
            w.join().unwrap();
        }
        assert!(m.is_closed());
    }
}
