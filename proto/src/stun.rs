//! STUN (RFC 5389) messages and the Binding server's answer, with RFC
//! 5780's behaviour discovery (CHANGE-REQUEST, OTHER-ADDRESS,
//! RESPONSE-ORIGIN). Sans-IO: the fastpath's UDP sockets hand datagrams
//! in and send what [`answer`] writes, from the socket it names.
//!
//! What is answered and what is not:
//! - A well-formed Binding request gets a success response with
//!   XOR-MAPPED-ADDRESS (and MAPPED-ADDRESS for RFC 3489 clients),
//!   RESPONSE-ORIGIN, OTHER-ADDRESS when the server has a second address,
//!   and FINGERPRINT when the request had one.
//! - This server authenticates nobody: MESSAGE-INTEGRITY in a request is
//!   not checked (there are no credentials to check it with) and none is
//!   sent back. FINGERPRINT is checked when present: a wrong one means the
//!   datagram is not STUN, and it is dropped.
//! - A comprehension-required attribute this server does not know, or a
//!   CHANGE-REQUEST to a server without a second address, gets a 420 error
//!   listing them (RFC 5389 §7.3.1, RFC 5780 §7.2).
//! - Anything else (bad cookie, lengths, truncated attributes, a response
//!   or an indication, another method) is dropped with a reason, never
//!   answered.
//! - No answer is larger than a fixed size plus the request's own length,
//!   so a spoofed source gains no amplification: [`MAX_FIXED_ANSWER`].

use std::net::{IpAddr, SocketAddr};

/// The magic cookie.
pub const MAGIC: u32 = 0x2112_A442;
/// Bytes of the header.
pub const HEADER_LEN: usize = 20;
/// The largest answer to a request with no attributes. An answer is at
/// most this plus the request's length (a 420 lists unknown attributes,
/// two bytes for each four or more the request spent on them).
pub const MAX_FIXED_ANSWER: usize = HEADER_LEN + 24 + 24 + 24 + 24 + 8;

/// Message types (method and class).
pub mod kind {
    /// Binding request.
    pub const BINDING_REQUEST: u16 = 0x0001;
    /// Binding success response.
    pub const BINDING_SUCCESS: u16 = 0x0101;
    /// Binding error response.
    pub const BINDING_ERROR: u16 = 0x0111;
}

/// Attribute types used here.
pub mod attr {
    /// MAPPED-ADDRESS.
    pub const MAPPED_ADDRESS: u16 = 0x0001;
    /// CHANGE-REQUEST (RFC 5780).
    pub const CHANGE_REQUEST: u16 = 0x0003;
    /// USERNAME.
    pub const USERNAME: u16 = 0x0006;
    /// MESSAGE-INTEGRITY.
    pub const MESSAGE_INTEGRITY: u16 = 0x0008;
    /// ERROR-CODE.
    pub const ERROR_CODE: u16 = 0x0009;
    /// UNKNOWN-ATTRIBUTES.
    pub const UNKNOWN_ATTRIBUTES: u16 = 0x000A;
    /// REALM.
    pub const REALM: u16 = 0x0014;
    /// NONCE.
    pub const NONCE: u16 = 0x0015;
    /// XOR-MAPPED-ADDRESS.
    pub const XOR_MAPPED_ADDRESS: u16 = 0x0020;
    /// PADDING (RFC 5780).
    pub const PADDING: u16 = 0x0026;
    /// RESPONSE-PORT (RFC 5780).
    pub const RESPONSE_PORT: u16 = 0x0027;
    /// SOFTWARE.
    pub const SOFTWARE: u16 = 0x8022;
    /// RESPONSE-ORIGIN (RFC 5780).
    pub const RESPONSE_ORIGIN: u16 = 0x802B;
    /// OTHER-ADDRESS (RFC 5780).
    pub const OTHER_ADDRESS: u16 = 0x802C;
    /// FINGERPRINT.
    pub const FINGERPRINT: u16 = 0x8028;
}

/// XOR of the FINGERPRINT's CRC-32.
const FINGERPRINT_XOR: u32 = 0x5354_554E;

/// Why a datagram is not answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    /// Shorter than a header, or its length field disagrees.
    BadLength,
    /// The first two bits are not zero, or the cookie is not STUN's.
    NotStun,
    /// An attribute runs past the message.
    TruncatedAttribute,
    /// FINGERPRINT is wrong, or not last.
    BadFingerprint,
    /// Something other than MESSAGE-INTEGRITY/FINGERPRINT after
    /// MESSAGE-INTEGRITY, or a MESSAGE-INTEGRITY of the wrong size.
    BadIntegrity,
    /// A response or an indication: nothing to answer.
    NotRequest,
    /// A request of a method other than Binding.
    NotBinding,
}

impl Dropped {
    /// A short name, for counters and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Dropped::BadLength => "bad_length",
            Dropped::NotStun => "not_stun",
            Dropped::TruncatedAttribute => "truncated_attribute",
            Dropped::BadFingerprint => "bad_fingerprint",
            Dropped::BadIntegrity => "bad_integrity",
            Dropped::NotRequest => "not_request",
            Dropped::NotBinding => "not_binding",
        }
    }
}

/// A checked message: header fields, and attributes known to be whole.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    /// Method and class.
    pub kind: u16,
    /// The transaction id.
    pub txid: [u8; 12],
    bytes: &'a [u8],
    /// A FINGERPRINT was present (and correct).
    pub fingerprint: bool,
}

/// One attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr<'a> {
    /// Its type.
    pub kind: u16,
    /// Its value, without padding.
    pub value: &'a [u8],
    /// Offset of its header in the message.
    pub at: usize,
}

/// Iterator over a checked message's attributes.
pub struct Attrs<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Iterator for Attrs<'a> {
    type Item = Attr<'a>;

    fn next(&mut self) -> Option<Attr<'a>> {
        let h = self.b.get(self.at..self.at + 4)?;
        let kind = u16::from_be_bytes([h[0], h[1]]);
        let len = usize::from(u16::from_be_bytes([h[2], h[3]]));
        let value = self.b.get(self.at + 4..self.at + 4 + len)?;
        let a = Attr {
            kind,
            value,
            at: self.at,
        };
        self.at += 4 + padded(len);
        Some(a)
    }
}

fn padded(len: usize) -> usize {
    (len + 3) & !3
}

/// CRC-32 (IEEE 802.3), as FINGERPRINT uses it.
pub fn crc32(data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut t = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
                k += 1;
            }
            t[i] = c;
            i += 1;
        }
        t
    };
    let mut c = 0xFFFF_FFFFu32;
    for &b in data {
        c = TABLE[((c ^ u32::from(b)) & 0xFF) as usize] ^ (c >> 8);
    }
    c ^ 0xFFFF_FFFF
}

/// Check `b` as a STUN message: header, cookie, lengths, every attribute
/// whole, MESSAGE-INTEGRITY followed by nothing but FINGERPRINT, and a
/// FINGERPRINT, if any, last and correct.
pub fn parse(b: &[u8]) -> Result<Message<'_>, Dropped> {
    if b.len() < HEADER_LEN {
        return Err(Dropped::BadLength);
    }
    if b[0] & 0xC0 != 0 || u32::from_be_bytes([b[4], b[5], b[6], b[7]]) != MAGIC {
        return Err(Dropped::NotStun);
    }
    let len = usize::from(u16::from_be_bytes([b[2], b[3]]));
    if len % 4 != 0 || HEADER_LEN + len != b.len() {
        return Err(Dropped::BadLength);
    }
    let mut txid = [0u8; 12];
    txid.copy_from_slice(&b[8..20]);
    let mut at = HEADER_LEN;
    let mut integrity = false;
    let mut fingerprint = false;
    while at < b.len() {
        if fingerprint {
            return Err(Dropped::BadFingerprint);
        }
        if at + 4 > b.len() {
            return Err(Dropped::TruncatedAttribute);
        }
        let kind = u16::from_be_bytes([b[at], b[at + 1]]);
        let alen = usize::from(u16::from_be_bytes([b[at + 2], b[at + 3]]));
        let end = at + 4 + padded(alen);
        if end > b.len() {
            return Err(Dropped::TruncatedAttribute);
        }
        match kind {
            attr::FINGERPRINT => {
                if alen != 4 {
                    return Err(Dropped::BadFingerprint);
                }
                // The CRC covers the message up to this attribute, with
                // the length field as it is (it counts the FINGERPRINT).
                let want = crc32(&b[..at]) ^ FINGERPRINT_XOR;
                let got = u32::from_be_bytes([b[at + 4], b[at + 5], b[at + 6], b[at + 7]]);
                if want != got {
                    return Err(Dropped::BadFingerprint);
                }
                fingerprint = true;
            }
            attr::MESSAGE_INTEGRITY => {
                if integrity || alen != 20 {
                    return Err(Dropped::BadIntegrity);
                }
                integrity = true;
            }
            _ if integrity => return Err(Dropped::BadIntegrity),
            _ => {}
        }
        at = end;
    }
    Ok(Message {
        kind: u16::from_be_bytes([b[0], b[1]]),
        txid,
        bytes: b,
        fingerprint,
    })
}

impl<'a> Message<'a> {
    /// Its attributes, in order.
    pub fn attrs(&self) -> Attrs<'a> {
        Attrs {
            b: self.bytes,
            at: HEADER_LEN,
        }
    }

    /// The first attribute of `kind`.
    pub fn get(&self, kind: u16) -> Option<&'a [u8]> {
        self.attrs().find(|a| a.kind == kind).map(|a| a.value)
    }

    /// Whether MESSAGE-INTEGRITY verifies with `key` (RFC 5389 §15.4:
    /// HMAC-SHA1 over the message up to it, the length field counting
    /// through it). None: the message has none.
    pub fn integrity_ok(&self, key: &[u8]) -> Option<bool> {
        let a = self.attrs().find(|a| a.kind == attr::MESSAGE_INTEGRITY)?;
        let mut head = self.bytes[..a.at].to_vec();
        let len = (a.at + 24 - HEADER_LEN) as u16;
        head[2..4].copy_from_slice(&len.to_be_bytes());
        let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, key);
        Some(ring::hmac::verify(&k, &head, a.value).is_ok())
    }

    /// An address attribute's value (MAPPED-ADDRESS family of
    /// encodings), XOR-decoded when `xor`.
    pub fn address(&self, kind: u16, xor: bool) -> Option<SocketAddr> {
        decode_address(self.get(kind)?, xor, &self.txid)
    }
}

fn decode_address(v: &[u8], xor: bool, txid: &[u8; 12]) -> Option<SocketAddr> {
    if v.len() < 4 {
        return None;
    }
    let mut port = u16::from_be_bytes([v[2], v[3]]);
    let mut mask = [0u8; 16];
    mask[..4].copy_from_slice(&MAGIC.to_be_bytes());
    mask[4..].copy_from_slice(txid);
    if xor {
        port ^= (MAGIC >> 16) as u16;
    }
    let x = |i: usize, b: u8| if xor { b ^ mask[i] } else { b };
    match (v[1], v.len()) {
        (1, 8) => {
            let o: [u8; 4] = std::array::from_fn(|i| x(i, v[4 + i]));
            Some(SocketAddr::new(IpAddr::from(o), port))
        }
        (2, 20) => {
            let o: [u8; 16] = std::array::from_fn(|i| x(i, v[4 + i]));
            Some(SocketAddr::new(IpAddr::from(o), port))
        }
        _ => None,
    }
}

/// Writes a message: header, attributes, then optional MESSAGE-INTEGRITY
/// and FINGERPRINT.
pub struct Builder<'b> {
    out: &'b mut Vec<u8>,
    start: usize,
    txid: [u8; 12],
}

impl<'b> Builder<'b> {
    /// Start a message of `kind` with `txid`, appended to `out`.
    pub fn new(out: &'b mut Vec<u8>, kind: u16, txid: [u8; 12]) -> Self {
        let start = out.len();
        out.extend_from_slice(&kind.to_be_bytes());
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&MAGIC.to_be_bytes());
        out.extend_from_slice(&txid);
        Builder { out, start, txid }
    }

    fn set_len(&mut self) {
        let len = (self.out.len() - self.start - HEADER_LEN) as u16;
        self.out[self.start + 2..self.start + 4].copy_from_slice(&len.to_be_bytes());
    }

    /// An attribute, padded with `pad` bytes (zero is usual; RFC 5769's
    /// vectors pad with spaces).
    pub fn attr_padded(&mut self, kind: u16, value: &[u8], pad: u8) -> &mut Self {
        self.out.extend_from_slice(&kind.to_be_bytes());
        self.out
            .extend_from_slice(&(value.len().min(0xFFFF) as u16).to_be_bytes());
        self.out.extend_from_slice(value);
        self.out
            .resize(self.out.len() + padded(value.len()) - value.len(), pad);
        self.set_len();
        self
    }

    /// An attribute padded with zeros.
    pub fn attr(&mut self, kind: u16, value: &[u8]) -> &mut Self {
        self.attr_padded(kind, value, 0)
    }

    /// An address attribute, XOR-encoded when `xor`.
    pub fn address(&mut self, kind: u16, addr: SocketAddr, xor: bool) -> &mut Self {
        let mut mask = [0u8; 16];
        mask[..4].copy_from_slice(&MAGIC.to_be_bytes());
        mask[4..].copy_from_slice(&self.txid);
        let port = if xor {
            addr.port() ^ (MAGIC >> 16) as u16
        } else {
            addr.port()
        };
        let mut v = Vec::with_capacity(20);
        let ip: Vec<u8> = match addr.ip() {
            IpAddr::V4(a) => a.octets().to_vec(),
            IpAddr::V6(a) => a.octets().to_vec(),
        };
        v.push(0);
        v.push(if ip.len() == 4 { 1 } else { 2 });
        v.extend_from_slice(&port.to_be_bytes());
        v.extend(
            ip.iter()
                .enumerate()
                .map(|(i, b)| if xor { b ^ mask[i] } else { *b }),
        );
        self.attr(kind, &v)
    }

    /// MESSAGE-INTEGRITY with `key` (HMAC-SHA1).
    pub fn integrity(&mut self, key: &[u8]) -> &mut Self {
        // The length counts the attribute being added.
        let len = (self.out.len() - self.start - HEADER_LEN + 24) as u16;
        self.out[self.start + 2..self.start + 4].copy_from_slice(&len.to_be_bytes());
        let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, key);
        let mac = ring::hmac::sign(&k, &self.out[self.start..]);
        self.attr(attr::MESSAGE_INTEGRITY, mac.as_ref())
    }

    /// FINGERPRINT, last.
    pub fn fingerprint(&mut self) -> &mut Self {
        let len = (self.out.len() - self.start - HEADER_LEN + 8) as u16;
        self.out[self.start + 2..self.start + 4].copy_from_slice(&len.to_be_bytes());
        let crc = crc32(&self.out[self.start..]) ^ FINGERPRINT_XOR;
        self.attr(attr::FINGERPRINT, &crc.to_be_bytes())
    }
}

/// The server's addresses: up to two IPs and two ports, so four sockets
/// (RFC 5780 §4.1). Without a second address only `[0][0]` is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Site {
    /// The primary IP and, when configured, the secondary (seed 003's
    /// `external_ip` and `secondary_ip`), as clients reach them.
    pub ips: [IpAddr; 2],
    /// The primary port and the alternate port.
    pub ports: [u16; 2],
    /// Whether the second IP and port exist.
    pub alternate: bool,
}

impl Site {
    /// The address of socket `(ip, port)`.
    pub fn addr(&self, at: (usize, usize)) -> SocketAddr {
        SocketAddr::new(self.ips[at.0 & 1], self.ports[at.1 & 1])
    }
}

/// Answer `req`, received from `src` on socket `at` (indexes into
/// [`Site`]). Ok: the answer is in `out`, to be sent from the returned
/// socket; Err: dropped, with the reason.
pub fn answer(
    req: &[u8],
    src: SocketAddr,
    at: (usize, usize),
    site: &Site,
    out: &mut Vec<u8>,
) -> Result<(usize, usize), Dropped> {
    out.clear();
    let m = parse(req)?;
    match m.kind & 0x0110 {
        0x0000 => {}
        _ => return Err(Dropped::NotRequest),
    }
    if m.kind != kind::BINDING_REQUEST {
        return Err(Dropped::NotBinding);
    }
    // Comprehension-required attributes this server does not act on.
    let mut unknown: Vec<u16> = Vec::new();
    let mut change = (false, false);
    for a in m.attrs() {
        match a.kind {
            attr::CHANGE_REQUEST if a.value.len() == 4 => {
                change = (a.value[3] & 0x04 != 0, a.value[3] & 0x02 != 0);
            }
            attr::CHANGE_REQUEST => unknown.push(a.kind),
            attr::USERNAME
            | attr::MESSAGE_INTEGRITY
            | attr::REALM
            | attr::NONCE
            | attr::PADDING
            | attr::MAPPED_ADDRESS
            | attr::XOR_MAPPED_ADDRESS => {}
            k if k < 0x8000 && !unknown.contains(&k) => unknown.push(k),
            _ => {}
        }
    }
    if (change.0 || change.1) && !site.alternate && !unknown.contains(&attr::CHANGE_REQUEST) {
        unknown.push(attr::CHANGE_REQUEST);
    }
    if !unknown.is_empty() {
        let mut b = Builder::new(out, kind::BINDING_ERROR, m.txid);
        let reason = b"Unknown Attribute";
        let mut v = vec![0, 0, 4, 20];
        v.extend_from_slice(reason);
        b.attr(attr::ERROR_CODE, &v);
        let list: Vec<u8> = unknown.iter().flat_map(|k| k.to_be_bytes()).collect();
        b.attr(attr::UNKNOWN_ATTRIBUTES, &list);
        if m.fingerprint {
            b.fingerprint();
        }
        return Ok(at);
    }
    let from = (at.0 ^ usize::from(change.0), at.1 ^ usize::from(change.1));
    let mut b = Builder::new(out, kind::BINDING_SUCCESS, m.txid);
    b.address(attr::XOR_MAPPED_ADDRESS, src, true);
    b.address(attr::MAPPED_ADDRESS, src, false);
    // An unspecified IP (a server bound to 0.0.0.0) cannot say where it
    // answers from.
    if !site.addr(from).ip().is_unspecified() {
        b.address(attr::RESPONSE_ORIGIN, site.addr(from), false);
    }
    if site.alternate {
        b.address(attr::OTHER_ADDRESS, site.addr((at.0 ^ 1, at.1 ^ 1)), false);
    }
    if m.fingerprint {
        b.fingerprint();
    }
    Ok(from)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TXID: [u8; 12] = [
        0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae,
    ];
    const PASSWORD: &[u8] = b"VOkJxbRl1RmTxUk/WvJxBt";

    /// RFC 5769 §2.1.
    const SAMPLE_REQUEST: [u8; 108] = [
        0x00, 0x01, 0x00, 0x58, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6,
        0x86, 0xfa, 0x87, 0xdf, 0xae, 0x80, 0x22, 0x00, 0x10, 0x53, 0x54, 0x55, 0x4e, 0x20, 0x74,
        0x65, 0x73, 0x74, 0x20, 0x63, 0x6c, 0x69, 0x65, 0x6e, 0x74, 0x00, 0x24, 0x00, 0x04, 0x6e,
        0x00, 0x01, 0xff, 0x80, 0x29, 0x00, 0x08, 0x93, 0x2f, 0xf9, 0xb1, 0x51, 0x26, 0x3b, 0x36,
        0x00, 0x06, 0x00, 0x09, 0x65, 0x76, 0x74, 0x6a, 0x3a, 0x68, 0x36, 0x76, 0x59, 0x20, 0x20,
        0x20, 0x00, 0x08, 0x00, 0x14, 0x9a, 0xea, 0xa7, 0x0c, 0xbf, 0xd8, 0xcb, 0x56, 0x78, 0x1e,
        0xf2, 0xb5, 0xb2, 0xd3, 0xf2, 0x49, 0xc1, 0xb5, 0x71, 0xa2, 0x80, 0x28, 0x00, 0x04, 0xe5,
        0x7a, 0x3b, 0xcf,
    ];

    /// RFC 5769 §2.2: 192.0.2.1 port 32853.
    const SAMPLE_IPV4_RESPONSE: [u8; 80] = [
        0x01, 0x01, 0x00, 0x3c, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6,
        0x86, 0xfa, 0x87, 0xdf, 0xae, 0x80, 0x22, 0x00, 0x0b, 0x74, 0x65, 0x73, 0x74, 0x20, 0x76,
        0x65, 0x63, 0x74, 0x6f, 0x72, 0x20, 0x00, 0x20, 0x00, 0x08, 0x00, 0x01, 0xa1, 0x47, 0xe1,
        0x12, 0xa6, 0x43, 0x00, 0x08, 0x00, 0x14, 0x2b, 0x91, 0xf5, 0x99, 0xfd, 0x9e, 0x90, 0xc3,
        0x8c, 0x74, 0x89, 0xf9, 0x2a, 0xf9, 0xba, 0x53, 0xf0, 0x6b, 0xe7, 0xd7, 0x80, 0x28, 0x00,
        0x04, 0xc0, 0x7d, 0x4c, 0x96,
    ];

    /// RFC 5769 §2.3: 2001:db8:1234:5678:11:2233:4455:6677 port 32853.
    const SAMPLE_IPV6_RESPONSE: [u8; 92] = [
        0x01, 0x01, 0x00, 0x48, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6,
        0x86, 0xfa, 0x87, 0xdf, 0xae, 0x80, 0x22, 0x00, 0x0b, 0x74, 0x65, 0x73, 0x74, 0x20, 0x76,
        0x65, 0x63, 0x74, 0x6f, 0x72, 0x20, 0x00, 0x20, 0x00, 0x14, 0x00, 0x02, 0xa1, 0x47, 0x01,
        0x13, 0xa9, 0xfa, 0xa5, 0xd3, 0xf1, 0x79, 0xbc, 0x25, 0xf4, 0xb5, 0xbe, 0xd2, 0xb9, 0xd9,
        0x00, 0x08, 0x00, 0x14, 0xa3, 0x82, 0x95, 0x4e, 0x4b, 0xe6, 0x7b, 0xf1, 0x17, 0x84, 0xc9,
        0x7c, 0x82, 0x92, 0xc2, 0x75, 0xbf, 0xe3, 0xed, 0x41, 0x80, 0x28, 0x00, 0x04, 0xc8, 0xfb,
        0x0b, 0x4c,
    ];

    fn site(alternate: bool) -> Site {
        Site {
            ips: [
                "203.0.113.1".parse().unwrap(),
                "203.0.113.2".parse().unwrap(),
            ],
            ports: [3478, 3479],
            alternate,
        }
    }

    #[test]
    fn the_rfc_5769_request_parses_with_its_fingerprint_and_integrity() {
        let m = parse(&SAMPLE_REQUEST).unwrap();
        assert_eq!(m.kind, kind::BINDING_REQUEST);
        assert_eq!(m.txid, TXID);
        assert!(m.fingerprint);
        assert_eq!(m.get(attr::SOFTWARE), Some(&b"STUN test client"[..]));
        assert_eq!(m.get(attr::USERNAME), Some(&b"evtj:h6vY"[..]));
        assert_eq!(m.integrity_ok(PASSWORD), Some(true));
        assert_eq!(m.integrity_ok(b"wrong"), Some(false));
    }

    /// The responses of RFC 5769 §2.2 and §2.3, built here byte for byte:
    /// XOR-MAPPED-ADDRESS, MESSAGE-INTEGRITY and FINGERPRINT.
    #[test]
    fn the_rfc_5769_responses_are_built_byte_exact() {
        for (vector, addr) in [
            (&SAMPLE_IPV4_RESPONSE[..], "192.0.2.1:32853"),
            (
                &SAMPLE_IPV6_RESPONSE[..],
                "[2001:db8:1234:5678:11:2233:4455:6677]:32853",
            ),
        ] {
            let addr: SocketAddr = addr.parse().unwrap();
            let mut out = Vec::new();
            Builder::new(&mut out, kind::BINDING_SUCCESS, TXID)
                .attr_padded(attr::SOFTWARE, b"test vector", b' ')
                .address(attr::XOR_MAPPED_ADDRESS, addr, true)
                .integrity(PASSWORD)
                .fingerprint();
            assert_eq!(out, vector, "{addr}");
            let m = parse(vector).unwrap();
            assert_eq!(m.address(attr::XOR_MAPPED_ADDRESS, true), Some(addr));
            assert_eq!(m.integrity_ok(PASSWORD), Some(true));
        }
    }

    #[test]
    fn a_binding_request_gets_its_address_and_rfc_5780_attributes() {
        let src: SocketAddr = "198.51.100.7:40000".parse().unwrap();
        let mut req = Vec::new();
        Builder::new(&mut req, kind::BINDING_REQUEST, TXID);
        let mut out = Vec::new();
        // No second address: no OTHER-ADDRESS, answered from where it came.
        let from = answer(&req, src, (0, 0), &site(false), &mut out).unwrap();
        assert_eq!(from, (0, 0));
        let m = parse(&out).unwrap();
        assert_eq!(m.kind, kind::BINDING_SUCCESS);
        assert_eq!(m.txid, TXID);
        assert_eq!(m.address(attr::XOR_MAPPED_ADDRESS, true), Some(src));
        assert_eq!(m.address(attr::MAPPED_ADDRESS, false), Some(src));
        assert_eq!(
            m.address(attr::RESPONSE_ORIGIN, false),
            Some("203.0.113.1:3478".parse().unwrap())
        );
        assert_eq!(m.get(attr::OTHER_ADDRESS), None);
        assert!(!m.fingerprint);
        assert!(out.len() <= MAX_FIXED_ANSWER + req.len());
        // With one: OTHER-ADDRESS differs in both; CHANGE-REQUEST picks
        // the socket, and RESPONSE-ORIGIN says which.
        for (flags, want) in [(0u8, (0, 0)), (4, (1, 0)), (2, (0, 1)), (6, (1, 1))] {
            let mut req = Vec::new();
            Builder::new(&mut req, kind::BINDING_REQUEST, TXID)
                .attr(attr::CHANGE_REQUEST, &[0, 0, 0, flags])
                .fingerprint();
            let from = answer(&req, src, (0, 0), &site(true), &mut out).unwrap();
            assert_eq!(from, want, "flags {flags}");
            let m = parse(&out).unwrap();
            assert!(m.fingerprint, "a request with FINGERPRINT gets one");
            assert_eq!(
                m.address(attr::OTHER_ADDRESS, false),
                Some("203.0.113.2:3479".parse().unwrap())
            );
            assert_eq!(
                m.address(attr::RESPONSE_ORIGIN, false),
                Some(site(true).addr(want))
            );
            assert!(out.len() <= MAX_FIXED_ANSWER + req.len());
        }
        // The RFC 5769 request is an ICE check: its PRIORITY (0x0024) is
        // comprehension-required and not this server's, so a 420 names
        // it (ICE-CONTROLLED, 0x8029, is optional and ignored).
        let from = answer(&SAMPLE_REQUEST, src, (0, 0), &site(false), &mut out).unwrap();
        assert_eq!(from, (0, 0));
        let m = parse(&out).unwrap();
        assert_eq!(m.kind, kind::BINDING_ERROR);
        assert_eq!(m.get(attr::UNKNOWN_ATTRIBUTES), Some(&[0x00, 0x24][..]));
        assert_eq!(&m.get(attr::ERROR_CODE).unwrap()[..4], &[0, 0, 4, 20]);
    }

    #[test]
    fn change_request_without_a_second_address_is_a_420() {
        let mut req = Vec::new();
        Builder::new(&mut req, kind::BINDING_REQUEST, TXID)
            .attr(attr::CHANGE_REQUEST, &[0, 0, 0, 4]);
        let mut out = Vec::new();
        answer(
            &req,
            "10.0.0.1:1".parse().unwrap(),
            (0, 0),
            &site(false),
            &mut out,
        )
        .unwrap();
        let m = parse(&out).unwrap();
        assert_eq!(m.kind, kind::BINDING_ERROR);
        assert_eq!(m.get(attr::UNKNOWN_ATTRIBUTES), Some(&[0x00, 0x03][..]));
    }

    #[test]
    fn malformed_messages_are_dropped_with_a_reason() {
        let src: SocketAddr = "10.0.0.1:1".parse().unwrap();
        let mut out = Vec::new();
        let mut ok = Vec::new();
        Builder::new(&mut ok, kind::BINDING_REQUEST, TXID)
            .attr(attr::SOFTWARE, b"x")
            .fingerprint();
        let mut bad_cookie = ok.clone();
        bad_cookie[4] ^= 1;
        let mut bad_len = ok.clone();
        bad_len[3] += 4;
        let mut bad_fp = ok.clone();
        let n = bad_fp.len();
        bad_fp[n - 1] ^= 1;
        let mut truncated_attr = ok[..HEADER_LEN].to_vec();
        truncated_attr[3] = 4;
        truncated_attr.extend_from_slice(&[0x80, 0x22, 0x00, 0x10]);
        let mut response = Vec::new();
        Builder::new(&mut response, kind::BINDING_SUCCESS, TXID);
        let mut indication = Vec::new();
        Builder::new(&mut indication, 0x0011, TXID);
        let mut allocate = Vec::new();
        Builder::new(&mut allocate, 0x0003, TXID);
        let mut after_integrity = Vec::new();
        Builder::new(&mut after_integrity, kind::BINDING_REQUEST, TXID)
            .integrity(b"k")
            .attr(attr::SOFTWARE, b"x");
        for (msg, why) in [
            (&ok[..10], Dropped::BadLength),
            (&bad_cookie[..], Dropped::NotStun),
            (&bad_len[..], Dropped::BadLength),
            (&bad_fp[..], Dropped::BadFingerprint),
            (&truncated_attr[..], Dropped::TruncatedAttribute),
            (&response[..], Dropped::NotRequest),
            (&indication[..], Dropped::NotRequest),
            (&allocate[..], Dropped::NotBinding),
            (&after_integrity[..], Dropped::BadIntegrity),
            (&[0x80u8; 40][..], Dropped::NotStun),
        ] {
            assert_eq!(answer(msg, src, (0, 0), &site(true), &mut out), Err(why));
            assert!(out.is_empty(), "nothing is written for a dropped message");
        }
        assert!(answer(&ok, src, (0, 0), &site(true), &mut out).is_ok());
    }

    #[test]
    fn the_crc_is_ieee_crc32() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }
}
