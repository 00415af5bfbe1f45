//! The node's TUN device: opened through `/dev/net/tun` (IFF_TUN without
//! the packet-information header, so a read is one IP packet), given its
//! virtual address, netmask and MTU, and brought up with the classic
//! interface ioctls. Subnet routes behind gateways are added with
//! `ip route` (iproute2), which every machine running a TUN has.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;

const IFF_TUN: libc::c_short = 0x0001;
const IFF_NO_PI: libc::c_short = 0x1000;
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;

/// `struct ifreq` as the ioctls used here read it: the name and a union
/// that holds a sockaddr, flags or an MTU.
#[repr(C)]
struct IfReq {
    name: [libc::c_char; libc::IFNAMSIZ],
    data: [u8; 24],
}

impl IfReq {
    fn new(name: &str) -> io::Result<IfReq> {
        if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains(['/', ' ', '\0']) {
            return Err(io::Error::other(format!(
                "interface name {name:?} must be 1-15 characters without '/' or spaces"
            )));
        }
        let mut r = IfReq {
            name: [0; libc::IFNAMSIZ],
            data: [0; 24],
        };
        for (d, s) in r.name.iter_mut().zip(name.bytes()) {
            *d = s as libc::c_char;
        }
        Ok(r)
    }

    fn set_addr(&mut self, ip: Ipv4Addr) {
        // struct sockaddr_in: family (u16, host order), port, address.
        self.data[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
        self.data[2..4].copy_from_slice(&[0, 0]);
        self.data[4..8].copy_from_slice(&ip.octets());
    }
}

/// An open TUN device.
pub struct Tun {
    file: File,
    name: String,
}

fn ioctl(fd: libc::c_int, req: libc::c_ulong, r: &mut IfReq) -> io::Result<()> {
    // SAFETY: `r` is a live, writable ifreq-sized struct for the duration
    // of the call; the kernel reads and writes only within it.
    let rc = unsafe { libc::ioctl(fd, req as _, r as *mut IfReq) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A datagram socket to configure interfaces through.
fn control_socket() -> io::Result<File> {
    // SAFETY: socket(2) takes plain integers and returns a new descriptor
    // or -1.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket(2) and is owned by nobody
    // else; the File closes it.
    Ok(unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

impl Tun {
    /// Create (or attach to) TUN interface `name`.
    pub fn open(name: &str) -> io::Result<Tun> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")
            .map_err(|e| io::Error::new(e.kind(), format!("/dev/net/tun: {e}")))?;
        let mut req = IfReq::new(name)?;
        req.data[..2].copy_from_slice(&(IFF_TUN | IFF_NO_PI).to_ne_bytes());
        ioctl(file.as_raw_fd(), TUNSETIFF, &mut req)
            .map_err(|e| io::Error::new(e.kind(), format!("TUNSETIFF {name}: {e}")))?;
        Ok(Tun {
            file,
            name: name.to_owned(),
        })
    }

    /// Its interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Give it `ip/prefix` and `mtu`, and bring it up.
    pub fn configure(&self, ip: Ipv4Addr, prefix: u8, mtu: u32) -> io::Result<()> {
        let sock = control_socket()?;
        let fd = sock.as_raw_fd();
        let mut r = IfReq::new(&self.name)?;
        r.set_addr(ip);
        ioctl(fd, libc::SIOCSIFADDR, &mut r)?;
        let mask = if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(prefix.min(32)))
        };
        let mut r = IfReq::new(&self.name)?;
        r.set_addr(Ipv4Addr::from(mask));
        ioctl(fd, libc::SIOCSIFNETMASK, &mut r)?;
        let mut r = IfReq::new(&self.name)?;
        r.data[..4].copy_from_slice(&(mtu as libc::c_int).to_ne_bytes());
        ioctl(fd, libc::SIOCSIFMTU, &mut r)?;
        let mut r = IfReq::new(&self.name)?;
        ioctl(fd, libc::SIOCGIFFLAGS, &mut r)?;
        let flags = i16::from_ne_bytes([r.data[0], r.data[1]])
            | libc::IFF_UP as i16
            | libc::IFF_RUNNING as i16;
        r.data[..2].copy_from_slice(&flags.to_ne_bytes());
        ioctl(fd, libc::SIOCSIFFLAGS, &mut r)
    }

    /// A second handle (one thread reads, others write).
    pub fn try_clone(&self) -> io::Result<Tun> {
        Ok(Tun {
            file: self.file.try_clone()?,
            name: self.name.clone(),
        })
    }

    /// Reads return WouldBlock instead of waiting (the descriptor is
    /// shared with the handles [`Tun::try_clone`] made).
    pub fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        let fd = self.file.as_raw_fd();
        // SAFETY: fcntl(2) on a descriptor this File owns.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        if flags < 0 {
            return Err(io::Error::last_os_error());
        }
        let flags = if on {
            flags | libc::O_NONBLOCK
        } else {
            flags & !libc::O_NONBLOCK
        };
        // SAFETY: as above.
        if unsafe { libc::fcntl(fd, libc::F_SETFL, flags) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Wait until a packet can be read.
    pub fn wait_readable(&self) -> io::Result<()> {
        let mut p = libc::pollfd {
            fd: self.file.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        if unsafe { libc::poll(&mut p, 1, -1) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// One packet into `buf`; its length.
    pub fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.file.read(buf)
    }

    /// Send one packet.
    pub fn send(&mut self, packet: &[u8]) -> io::Result<()> {
        self.file.write_all(packet)
    }
}

/// Add (or with `add` false, remove) a route to `cidr` through interface
/// `dev`.
pub fn route(dev: &str, cidr: &str, add: bool) -> io::Result<()> {
    let verb = if add { "replace" } else { "del" };
    let out = std::process::Command::new("ip")
        .args(["route", verb, cidr, "dev", dev])
        .output()?;
    if !out.status.success() && add {
        return Err(io::Error::other(format!(
            "ip route {verb} {cidr} dev {dev}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// The destination of an IPv4 packet (None: not IPv4, or too short).
pub fn ipv4_dst(packet: &[u8]) -> Option<Ipv4Addr> {
    if packet.len() < 20 || packet[0] >> 4 != 4 {
        return None;
    }
    Some(Ipv4Addr::new(
        packet[16], packet[17], packet[18], packet[19],
    ))
}

/// The source of an IPv4 packet.
pub fn ipv4_src(packet: &[u8]) -> Option<Ipv4Addr> {
    if packet.len() < 20 || packet[0] >> 4 != 4 {
        return None;
    }
    Some(Ipv4Addr::new(
        packet[12], packet[13], packet[14], packet[15],
    ))
}
