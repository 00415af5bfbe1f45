//! frpc's side of xtcp below QUIC: learning its mapped addresses from a
//! STUN server, and punching a UDP hole to the peer the broker names.
//!
//! The steps and bytes are frpc's (frp 0.52+, `pkg/nathole`):
//! - [`discover`]: a Binding request to the STUN server, then one to the
//!   `OTHER-ADDRESS` it answered with, from the same socket; the two
//!   `XOR-MAPPED-ADDRESS`es are the `mapped_addrs` of NatHoleVisitor /
//!   NatHoleClient, the socket's port on each local IPv4 address the
//!   `assisted_addrs`.
//! - [`make_hole`]: as the NatHoleResp's `detect_behavior` says, send
//!   `NatHoleSid` messages (frp's message framing, then AES-128-CFB under
//!   the proxy's secret key with a random IV in front, as golib's
//!   `crypto.Encode`) to the peer's addresses, the receiver with its low
//!   TTL, the sender after its delay; the receiver answers the first
//!   valid one with `response: true`, the sender waits for that answer.
//!
//! What frpc then runs over the hole (QUIC, or KCP) is not here: a test
//! exchanges plain datagrams over it. Of the punching behaviours, the
//! guessed port ranges are sent to; random ports (modes 2 and 4, for hard
//! NATs) are not, and such an answer is an error.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use proto::msg::{Message, NatHoleResp, NatHoleSid};
use proto::stun::{attr, kind, parse, Builder};

/// How long frpc waits for each STUN answer.
const STUN_WAIT: Duration = Duration::from_secs(3);

/// What [`discover`] learnt: the socket to punch from, its mapped
/// addresses as the STUN server saw them, and its local addresses.
#[derive(Debug)]
pub struct Discovered {
    /// The socket every step uses (its NAT mapping is what was learnt).
    pub socket: UdpSocket,
    /// `XOR-MAPPED-ADDRESS` from the server and from its other address.
    pub mapped: Vec<String>,
    /// The socket's port on each local non-loopback IPv4 address.
    pub assisted: Vec<String>,
}

/// Ask the STUN server at `stun` (and its `OTHER-ADDRESS`, when it gives
/// one) for this socket's mapped address, as frpc's `Discover` does.
pub fn discover(stun: SocketAddr) -> io::Result<Discovered> {
    let socket = UdpSocket::bind("0.0.0.0:0")?;
    let mut mapped = Vec::new();
    let (addr, other) = binding(&socket, stun)?;
    mapped.push(addr.to_string());
    if let Some(other) = other {
        let (addr, _) = binding(&socket, other)?;
        mapped.push(addr.to_string());
    }
    let port = socket.local_addr()?.port();
    let assisted = local_ipv4()
        .into_iter()
        .map(|ip| SocketAddr::new(IpAddr::V4(ip), port).to_string())
        .collect();
    Ok(Discovered {
        socket,
        mapped,
        assisted,
    })
}

/// One Binding round trip: the mapped address and the server's other
/// address.
fn binding(socket: &UdpSocket, to: SocketAddr) -> io::Result<(SocketAddr, Option<SocketAddr>)> {
    let txid: [u8; 12] = rand::random();
    let mut req = Vec::new();
    Builder::new(&mut req, kind::BINDING_REQUEST, txid);
    socket.send_to(&req, to)?;
    let deadline = Instant::now() + STUN_WAIT;
    let mut buf = [0u8; 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("wait response from stun server {to} timeout"),
            ));
        }
        socket.set_read_timeout(Some(left))?;
        let n = match socket.recv_from(&mut buf) {
            Ok((n, _)) => n,
            Err(e) if is_timeout(&e) => continue,
            Err(e) => return Err(e),
        };
        let Ok(m) = parse(&buf[..n]) else { continue };
        if m.txid != txid || m.kind != kind::BINDING_SUCCESS {
            continue;
        }
        let mapped = m
            .address(attr::XOR_MAPPED_ADDRESS, true)
            .or_else(|| m.address(attr::MAPPED_ADDRESS, false))
            .ok_or_else(|| io::Error::other("no external address found"))?;
        return Ok((mapped, m.address(attr::OTHER_ADDRESS, false)));
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// This host's IPv4 addresses but loopback and link-local.
fn local_ipv4() -> Vec<Ipv4Addr> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return out;
    }
    let mut at = head;
    while !at.is_null() {
        // SAFETY: `at` is a node of the list getifaddrs returned.
        let ifa = unsafe { &*at };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: a non-null ifa_addr points to a sockaddr whose
            // family says how long it is.
            let family = unsafe { (*ifa.ifa_addr).sa_family };
            if i32::from(family) == libc::AF_INET {
                // SAFETY: AF_INET: it is a sockaddr_in.
                let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
                if !ip.is_loopback() && !ip.is_link_local() {
                    out.push(ip);
                }
            }
        }
        at = ifa.ifa_next;
    }
    // SAFETY: the list came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    out
}

/// A NatHoleSid as frpc puts it in a datagram: frp's framing, encrypted
/// under `secret_key` with the IV first.
pub fn encode_sid(sid: &NatHoleSid, secret_key: &str) -> Vec<u8> {
    let mut plain = Vec::new();
    proto::frame::encode(&Message::NatHoleSid(sid.clone()), &mut plain);
    let key = proto::cfb::derive_key(secret_key.as_bytes());
    let mut out = Vec::with_capacity(plain.len() + proto::cfb::IV_LEN);
    proto::cfb::CfbStreamWriter::new(key).encrypt_into(&plain, &mut out);
    out
}

/// The NatHoleSid a datagram carries, if it is one under `secret_key`.
pub fn decode_sid(datagram: &[u8], secret_key: &str) -> Option<NatHoleSid> {
    let key = proto::cfb::derive_key(secret_key.as_bytes());
    let mut buf = datagram.to_vec();
    let plain = proto::cfb::CfbStreamReader::new(key).decrypt_in_place(&mut buf);
    match proto::frame::decode(plain) {
        Ok(Some((Message::NatHoleSid(m), _))) => Some(m),
        _ => None,
    }
}

/// Punch from `socket` as `resp` says; the peer's address once the
/// exchange of sid messages succeeded (frpc's `MakeHole` with one
/// listening socket).
pub fn make_hole(
    socket: &UdpSocket,
    resp: &NatHoleResp,
    secret_key: &str,
) -> io::Result<SocketAddr> {
    let b = &resp.detect_behavior;
    if b.listen_random_ports > 0 || b.send_random_ports > 0 {
        return Err(io::Error::other(
            "random-port punching (modes 2 and 4) is not in the in-repo client",
        ));
    }
    let sender = b.role == "sender";
    let mut targets: Vec<String> = Vec::new();
    if sender {
        if b.send_delay_ms > 0 {
            std::thread::sleep(Duration::from_millis(b.send_delay_ms as u64));
        }
        targets.extend(resp.assisted_addrs.iter().cloned());
        targets.extend(resp.candidate_addrs.iter().cloned());
    } else if b.candidate_ports.is_empty() {
        targets.extend(resp.candidate_addrs.iter().cloned());
    }
    targets.dedup();
    let tid = format!("{:016x}", rand::random::<u64>());
    // The probes go out with the behaviour's TTL, the answer with the
    // socket's own.
    let original = socket.ttl().unwrap_or(64);
    if b.ttl > 0 {
        let _ = socket.set_ttl(b.ttl as u32);
    }
    let send = |to: &str| {
        let Ok(to) = to.parse::<SocketAddr>() else {
            return;
        };
        let sid = NatHoleSid {
            transaction_id: tid.clone(),
            sid: resp.sid.clone(),
            response: false,
            nonce: "0".repeat(rand::random::<usize>() % 20),
        };
        let _ = socket.send_to(&encode_sid(&sid, secret_key), to);
    };
    for t in &targets {
        send(t);
    }
    if !b.candidate_ports.is_empty() {
        let mut ips: Vec<String> = resp
            .candidate_addrs
            .iter()
            .filter_map(|a| a.parse::<SocketAddr>().ok())
            .map(|a| a.ip().to_string())
            .collect();
        ips.dedup();
        for ip in &ips {
            for range in &b.candidate_ports {
                for port in range.from..=range.to {
                    send(&format!("{ip}:{port}"));
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        }
    }
    if b.ttl > 0 {
        let _ = socket.set_ttl(original);
    }
    let wait = if b.read_timeout_ms > 0 {
        Duration::from_millis(b.read_timeout_ms as u64)
    } else {
        Duration::from_secs(5)
    };
    let mut buf = [0u8; 1024];
    loop {
        socket.set_read_timeout(Some(wait))?;
        let (n, from) = match socket.recv_from(&mut buf) {
            Ok(x) => x,
            Err(e) if is_timeout(&e) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "wait detect message error: timeout",
                ))
            }
            Err(e) => return Err(e),
        };
        let Some(mut m) = decode_sid(&buf[..n], secret_key) else {
            continue;
        };
        if m.sid != resp.sid {
            continue;
        }
        if !m.response {
            if sender {
                continue;
            }
            m.response = true;
            socket.send_to(&encode_sid(&m, secret_key), from)?;
        }
        socket.set_read_timeout(None)?;
        return Ok(from);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sid_message_round_trips_under_its_key_only() {
        let m = NatHoleSid {
            transaction_id: "t".into(),
            sid: "s1".into(),
            response: true,
            nonce: "000".into(),
        };
        let wire = encode_sid(&m, "k");
        // IV, then frp's frame ('5', length, JSON) encrypted.
        assert!(wire.len() > proto::cfb::IV_LEN + 9);
        assert_eq!(decode_sid(&wire, "k"), Some(m));
        assert_eq!(decode_sid(&wire, "other"), None);
        assert_eq!(decode_sid(&wire[..10], "k"), None);
    }
}
