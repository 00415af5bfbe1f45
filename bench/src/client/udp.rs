//! frpc's side of a `udp` proxy: after StartWorkConn the work connection
//! carries `UDPPacket` messages. Each one from the server goes to the
//! local service from a UDP socket of its own per user address (so the
//! service's answers can be told apart); each answer goes back as a
//! `UDPPacket` naming that user. A `Ping` goes up every 30 s, as frpc
//! sends one. A socket idle for 60 s is closed.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proto::msg::{Message, Ping, UdpPacket};

use super::codec::{DecodeReader, EncodeWriter};
use super::session::{encode_msg, encode_msg_into, read_msg_exact};
use super::transport::{BoxRead, BoxWrite, WriteHalf};

/// frpc's heartbeat on a udp work connection.
const PING_EVERY: Duration = Duration::from_secs(30);

/// A local socket idle this long is closed.
const IDLE: Duration = Duration::from_secs(60);

/// At most this many of the service's answers already waiting go back in
/// one write.
const BATCH: usize = 32;

/// How a udp work connection is wrapped and framed.
pub struct UdpWork {
    /// The local service (`localIP:localPort`).
    pub local: SocketAddr,
    /// `useEncryption`: the token key.
    pub key: Option<[u8; 16]>,
    /// `useCompression`.
    pub compress: bool,
    /// Wire protocol v2 framing.
    pub v2: bool,
    /// While set, the work connection is not read (a slow frpc).
    pub paused: Arc<AtomicBool>,
}

type Sender = Arc<Mutex<EncodeWriter<BoxWrite>>>;

/// Serve the work connection until it ends (the server closed it, or a
/// write failed).
pub fn serve(work: UdpWork, r: BoxRead, w: BoxWrite) {
    // Buffered: a read takes as many whole messages as have arrived.
    let r: BoxRead = Box::new(std::io::BufReader::with_capacity(64 * 1024, r));
    let mut r = DecodeReader::new(r, work.key, work.compress);
    let w: Sender = Arc::new(Mutex::new(EncodeWriter::new(w, work.key, work.compress)));
    let done = Arc::new(AtomicBool::new(false));
    let v2 = work.v2;
    {
        let (w, done) = (w.clone(), done.clone());
        let _ = std::thread::Builder::new()
            .stack_size(64 * 1024)
            .spawn(move || {
                let mut last = Instant::now();
                while !done.load(Ordering::Acquire) {
                    std::thread::sleep(Duration::from_millis(200));
                    if last.elapsed() >= PING_EVERY {
                        last = Instant::now();
                        if send(&w, &Message::Ping(Ping::default()), v2).is_err() {
                            break;
                        }
                    }
                }
            });
    }
    let mut socks: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
    loop {
        while work.paused.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let Ok(msg) = read_msg_exact(&mut r as &mut dyn Read, v2) else {
            break;
        };
        let Message::UdpPacket(p) = msg else { continue };
        let Some(user) = p
            .remote_addr
            .as_ref()
            .and_then(|a| Some(SocketAddr::new(a.ip?, u16::try_from(a.port).ok()?)))
        else {
            continue;
        };
        socks.retain(|_, s| Arc::strong_count(s) > 1);
        let sock = match socks.get(&user) {
            Some(s) => s.clone(),
            None => match open(work.local, user, w.clone(), done.clone(), v2) {
                Some(s) => {
                    socks.insert(user, s.clone());
                    s
                }
                None => continue,
            },
        };
        let _ = sock.send(&p.content);
    }
    done.store(true, Ordering::Release);
    w.lock().unwrap_or_else(|e| e.into_inner()).abort();
}

fn send(w: &Sender, msg: &Message, v2: bool) -> std::io::Result<()> {
    write(w, &encode_msg(msg, v2))
}

fn write(w: &Sender, bytes: &[u8]) -> std::io::Result<()> {
    let mut w = w.lock().unwrap_or_else(|e| e.into_inner());
    w.write_all(bytes)
}

/// `answer` (a `UDPPacket` naming its user) carrying `data`, appended to
/// `out`; the packet's buffer is kept from one answer to the next.
fn encode_answer(answer: &mut Message, data: &[u8], v2: bool, out: &mut Vec<u8>) {
    if let Message::UdpPacket(p) = answer {
        p.content.clear();
        p.content.extend_from_slice(data);
    }
    encode_msg_into(answer, v2, out);
}

/// A datagram already waiting on `s`, without waiting for one.
fn recv_waiting(s: &UdpSocket, buf: &mut [u8]) -> Option<usize> {
    use std::os::fd::AsRawFd;
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes, and the
    // descriptor stays open while `s` is borrowed.
    let n = unsafe {
        libc::recv(
            s.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT,
        )
    };
    usize::try_from(n).ok()
}

/// A socket to the local service for one user, with a thread that sends
/// the service's answers back naming that user.
fn open(
    local: SocketAddr,
    user: SocketAddr,
    w: Sender,
    done: Arc<AtomicBool>,
    v2: bool,
) -> Option<Arc<UdpSocket>> {
    let bind: SocketAddr = if local.is_ipv6() {
        "[::]:0".parse().ok()?
    } else {
        "0.0.0.0:0".parse().ok()?
    };
    let s = UdpSocket::bind(bind).ok()?;
    s.connect(local).ok()?;
    s.set_read_timeout(Some(Duration::from_millis(200))).ok()?;
    // Room for the service's answers while this thread waits for a CPU.
    let _ = socket2::SockRef::from(&s).set_recv_buffer_size(4 << 20);
    let s = Arc::new(s);
    let reader = s.clone();
    std::thread::Builder::new()
        .stack_size(128 * 1024)
        .spawn(move || {
            let mut buf = vec![0u8; 65536];
            let mut out = Vec::new();
            let mut answer = Message::UdpPacket(UdpPacket {
                content: Vec::new(),
                local_addr: None,
                remote_addr: Some(user.into()),
            });
            let mut last = Instant::now();
            while !done.load(Ordering::Acquire) && last.elapsed() < IDLE {
                match reader.recv(&mut buf) {
                    Ok(n) => {
                        last = Instant::now();
                        out.clear();
                        encode_answer(&mut answer, &buf[..n], v2, &mut out);
                        // The answers already waiting go in the same write.
                        for _ in 1..BATCH {
                            let Some(n) = recv_waiting(&reader, &mut buf) else {
                                break;
                            };
                            encode_answer(&mut answer, &buf[..n], v2, &mut out);
                        }
                        if write(&w, &out).is_err() {
                            break;
                        }
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) => {}
                    // The service is not there (ICMP unreachable): frpc
                    // keeps the socket.
                    Err(_) => {}
                }
            }
        })
        .ok()?;
    Some(s)
}
