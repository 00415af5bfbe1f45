//! `totoro-mesh ping`: ICMP echo over a raw socket (root), so a node can
//! check a path through the mesh without other tools.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

fn checksum(b: &[u8]) -> u16 {
    let mut sum = 0u32;
    for c in b.chunks(2) {
        let w = u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]);
        sum += u32::from(w);
    }
    while sum > 0xFFFF {
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    !(sum as u16)
}

/// SO_RCVTIMEO on a raw descriptor (raw and packet sockets have no std
/// type to set it through).
pub fn set_recv_timeout(fd: libc::c_int, t: Duration) {
    let tv = libc::timeval {
        tv_sec: t.as_secs() as libc::time_t,
        tv_usec: t.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: `tv` is a valid timeval for the duration of the call.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &tv as *const libc::timeval as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        );
    }
}

/// An echo request with `id` and `seq`.
pub fn echo_request(id: u16, seq: u16, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![8, 0, 0, 0];
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(payload);
    let c = checksum(&p);
    p[2..4].copy_from_slice(&c.to_be_bytes());
    p
}

/// Send `count` echoes to `ip`, one a second, printing each RTT; an error
/// when none came back.
pub fn ping(ip: Ipv4Addr, count: u32, wait: Duration) -> Result<(), String> {
    // SAFETY: socket(2) takes plain integers.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::IPPROTO_ICMP,
        )
    };
    if fd < 0 {
        return Err(format!(
            "raw ICMP socket (needs root): {}",
            std::io::Error::last_os_error()
        ));
    }
    set_recv_timeout(fd, Duration::from_millis(200));
    let id = (std::process::id() & 0xFFFF) as u16;
    let mut addr: libc::sockaddr_in = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(ip.octets()),
        },
        sin_zero: [0; 8],
    };
    let mut answered = 0;
    for seq in 0..count {
        let req = echo_request(id, seq as u16, b"totoro-mesh ping");
        let sent = Instant::now();
        // SAFETY: `req` and `addr` are valid for the call's duration.
        let n = unsafe {
            libc::sendto(
                fd,
                req.as_ptr() as *const libc::c_void,
                req.len(),
                0,
                &mut addr as *mut libc::sockaddr_in as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if n < 0 {
            println!("{ip}: send: {}", std::io::Error::last_os_error());
        }
        let mut got = None;
        while sent.elapsed() < wait {
            let mut buf = [0u8; 1500];
            // SAFETY: `buf` is writable for its length.
            let n = unsafe { libc::recv(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len(), 0) };
            if n <= 0 {
                continue;
            }
            let b = &buf[..n as usize];
            let ihl = usize::from(b[0] & 0x0F) * 4;
            if b.len() < ihl + 8 || b[12..16] != ip.octets() {
                continue;
            }
            let icmp = &b[ihl..];
            if icmp[0] == 0
                && icmp[4..6] == id.to_be_bytes()
                && icmp[6..8] == (seq as u16).to_be_bytes()
            {
                got = Some(sent.elapsed());
                break;
            }
        }
        match got {
            Some(rtt) => {
                answered += 1;
                println!(
                    "reply from {ip}: seq={seq} time={:.2} ms",
                    rtt.as_secs_f64() * 1000.0
                );
            }
            None => println!("no reply from {ip}: seq={seq}"),
        }
        if seq + 1 < count {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    // SAFETY: `fd` is ours and closed once.
    unsafe { libc::close(fd) };
    println!("{count} sent, {answered} answered");
    if answered == 0 {
        return Err(format!("{ip}: no reply"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_requests_carry_a_valid_checksum() {
        let p = echo_request(0x1234, 7, b"abc");
        assert_eq!(checksum(&p), 0);
        assert_eq!(&p[4..8], &[0x12, 0x34, 0, 7]);
    }
}
