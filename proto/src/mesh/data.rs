//! Seed 003 §8.3's DATA payload: `src node (4) | dst node (4) | nonce (12)
//! | ciphertext | tag (16)`. The node ids are in clear (big endian) so that
//! a relay routes by `dst` without a key; the nonce is 4 bytes fixed per
//! session and an 8-byte big-endian counter, which the receiver's replay
//! window checks after the tag verifies.

use std::fmt;

use super::error::ErrorCode;

/// Bytes before the ciphertext: src, dst, nonce.
pub const HEADER_LEN: usize = 20;
/// Bytes of the ChaCha20-Poly1305 tag.
pub const TAG_LEN: usize = 16;
/// The shortest DATA payload: a header and a tag around an empty packet.
pub const MIN_LEN: usize = HEADER_LEN + TAG_LEN;

/// A DATA payload, borrowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Data<'a> {
    /// Sending node.
    pub src: u32,
    /// Destination node.
    pub dst: u32,
    /// The AEAD nonce: 4 session bytes, then the counter.
    pub nonce: [u8; 12],
    /// Ciphertext followed by the tag (at least [`TAG_LEN`] bytes).
    pub sealed: &'a [u8],
}

/// Why a payload is not DATA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataError(pub usize);

impl DataError {
    /// The seed's code for it (2002).
    pub fn code(&self) -> ErrorCode {
        ErrorCode::InvalidMessage
    }
}

impl fmt::Display for DataError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "DATA payload of {} bytes is shorter than the {MIN_LEN} of its header and tag",
            self.0
        )
    }
}

impl std::error::Error for DataError {}

impl<'a> Data<'a> {
    /// Parse a DATA frame's payload.
    pub fn parse(payload: &'a [u8]) -> Result<Data<'a>, DataError> {
        if payload.len() < MIN_LEN {
            return Err(DataError(payload.len()));
        }
        let mut nonce = [0; 12];
        nonce.copy_from_slice(&payload[8..20]);
        Ok(Data {
            src: u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]),
            dst: u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]),
            nonce,
            sealed: &payload[HEADER_LEN..],
        })
    }

    /// The nonce's counter.
    pub fn counter(&self) -> u64 {
        counter_of(&self.nonce)
    }

    /// Bytes of plaintext the sealed part holds.
    pub fn plaintext_len(&self) -> usize {
        self.sealed.len() - TAG_LEN
    }
}

/// The counter of a nonce (its last 8 bytes, big endian).
pub fn counter_of(nonce: &[u8; 12]) -> u64 {
    let mut c = [0; 8];
    c.copy_from_slice(&nonce[4..]);
    u64::from_be_bytes(c)
}

/// The nonce for `counter` in a session whose fixed part is `prefix`.
pub fn nonce(prefix: [u8; 4], counter: u64) -> [u8; 12] {
    let mut n = [0; 12];
    n[..4].copy_from_slice(&prefix);
    n[4..].copy_from_slice(&counter.to_be_bytes());
    n
}

/// The destination of a DATA payload, all a relay reads (None: too short
/// to be DATA).
pub fn peek_dst(payload: &[u8]) -> Option<u32> {
    (payload.len() >= MIN_LEN)
        .then(|| u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]))
}

/// Append a DATA header (src, dst, nonce); the sealed packet follows.
pub fn put_header(out: &mut Vec<u8>, src: u32, dst: u32, nonce: &[u8; 12]) {
    out.extend_from_slice(&src.to_be_bytes());
    out.extend_from_slice(&dst.to_be_bytes());
    out.extend_from_slice(nonce);
}

/// The additional data the AEAD binds a DATA packet to: its src and dst,
/// so that a relay cannot redirect a packet to another node undetected.
pub fn aad(src: u32, dst: u32) -> [u8; 8] {
    let mut a = [0; 8];
    a[..4].copy_from_slice(&src.to_be_bytes());
    a[4..].copy_from_slice(&dst.to_be_bytes());
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_the_seeds() {
        let n = nonce([1, 2, 3, 4], 0x0102_0304_0506_0708);
        assert_eq!(n, [1, 2, 3, 4, 1, 2, 3, 4, 5, 6, 7, 8]);
        let mut p = Vec::new();
        put_header(&mut p, 7, 0x0A0B0C0D, &n);
        p.extend_from_slice(&[0xEE; 3 + TAG_LEN]);
        assert_eq!(&p[..8], &[0, 0, 0, 7, 0x0A, 0x0B, 0x0C, 0x0D]);
        let d = Data::parse(&p).unwrap();
        assert_eq!((d.src, d.dst, d.nonce), (7, 0x0A0B0C0D, n));
        assert_eq!(d.counter(), 0x0102_0304_0506_0708);
        assert_eq!(d.plaintext_len(), 3);
        assert_eq!(peek_dst(&p), Some(0x0A0B0C0D));
        assert_eq!(aad(7, 0x0A0B0C0D), p[..8]);
    }

    #[test]
    fn short_payloads_are_2002() {
        for len in 0..MIN_LEN {
            let p = vec![0; len];
            let e = Data::parse(&p).unwrap_err();
            assert_eq!(e.code().code(), 2002);
            assert_eq!(peek_dst(&p), None);
        }
        assert!(Data::parse(&[0; MIN_LEN]).is_ok());
    }
}
