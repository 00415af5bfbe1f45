//! TLS 1.3 record protection after the handshake (RFC 8446 §5), sans-IO.
//!
//! The handshake stays with rustls; once it is done the fastpath takes the
//! traffic keys and protects application data itself, so that received
//! records are decrypted where they were read (into the yamux driver's or
//! the relay's own buffer) instead of being copied into rustls's buffer and
//! out again, and sent data is encrypted where it is framed.
//!
//! A record is `type(1)=23 | 0x0303 | length(2) | AEAD(plaintext | inner
//! type | zeros) | tag(16)`, the additional data is the five header bytes,
//! and the nonce is the IV XOR the 64-bit sequence number (left-padded).
//! What the peer may send once the handshake is over: application data,
//! alerts (a `close_notify` ends the stream), and the post-handshake
//! handshake messages. A client's only one is `KeyUpdate`; this layer does
//! not hold the traffic secret a key update derives from, so it refuses
//! one ([`OpenError::KeyUpdate`]): the connection closes and the client
//! reconnects. Go's TLS stack (frpc) never sends one on its own. A server's
//! NewSessionTicket (what a client reads, on a relay-to-relay link) is
//! dropped: nothing here resumes sessions. One split across records is
//! refused, as anything else is.

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};

/// Record header length.
pub const HEADER_LEN: usize = 5;
/// AEAD tag length (all three TLS 1.3 AEADs here).
pub const TAG_LEN: usize = 16;
/// Largest plaintext in one record.
pub const MAX_PLAINTEXT: usize = 16 * 1024;
/// Largest protected payload the peer may send (RFC 8446 §5.2: 2^14 + 256).
pub const MAX_CIPHERTEXT: usize = MAX_PLAINTEXT + 256;
/// What a sealed record adds to its plaintext.
pub const OVERHEAD: usize = HEADER_LEN + 1 + TAG_LEN;

const APPLICATION_DATA: u8 = 23;
const ALERT: u8 = 21;
const HANDSHAKE: u8 = 22;
const KEY_UPDATE: u8 = 24;
const NEW_SESSION_TICKET: u8 = 4;

/// The AEAD a session negotiated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Suite {
    /// TLS_AES_128_GCM_SHA256.
    Aes128Gcm,
    /// TLS_AES_256_GCM_SHA384.
    Aes256Gcm,
    /// TLS_CHACHA20_POLY1305_SHA256.
    Chacha20Poly1305,
}

/// Why received bytes cannot be opened. Each ends the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// A record header that is not TLS 1.3 application data.
    #[error("TLS record header is not application data (type {0}, version {1:#06x})")]
    BadHeader(u8, u16),
    /// A record longer than RFC 8446 allows.
    #[error("TLS record of {0} bytes is over the limit of {MAX_CIPHERTEXT}")]
    TooLong(usize),
    /// Authentication failed: corrupted, forged or out of order.
    #[error("TLS record failed authentication")]
    Decrypt,
    /// A record whose inner plaintext is all padding.
    #[error("TLS record has no content type")]
    NoContentType,
    /// An alert other than close_notify.
    #[error("TLS alert from peer (level {0}, description {1})")]
    Alert(u8, u8),
    /// A KeyUpdate, which this layer does not follow.
    #[error("TLS KeyUpdate after the handshake is not supported; closing")]
    KeyUpdate,
    /// Another post-handshake message or record type.
    #[error("unexpected TLS content type {0} after the handshake")]
    Unexpected(u8),
    /// The sequence number ran out (2^64 records).
    #[error("TLS sequence number exhausted")]
    Exhausted,
}

/// One direction's key, IV and sequence number.
struct Keys {
    key: LessSafeKey,
    iv: [u8; 12],
    seq: u64,
}

impl Keys {
    fn new(suite: Suite, key: &[u8], iv: &[u8], seq: u64) -> Option<Keys> {
        let alg = match suite {
            Suite::Aes128Gcm => &aead::AES_128_GCM,
            Suite::Aes256Gcm => &aead::AES_256_GCM,
            Suite::Chacha20Poly1305 => &aead::CHACHA20_POLY1305,
        };
        let key = LessSafeKey::new(UnboundKey::new(alg, key).ok()?);
        let iv: [u8; 12] = iv.try_into().ok()?;
        Some(Keys { key, iv, seq })
    }

    /// The next record's nonce; the sequence number moves on.
    fn next_nonce(&mut self) -> Option<Nonce> {
        let seq = self.seq;
        self.seq = seq.checked_add(1)?;
        let mut n = self.iv;
        for (b, s) in n[4..].iter_mut().zip(seq.to_be_bytes()) {
            *b ^= s;
        }
        Some(Nonce::assume_unique_for_key(n))
    }
}

/// Protects outgoing records.
pub struct Sealer(Keys);

impl Sealer {
    /// A sealer for `suite` with the write key and IV, starting at `seq`
    /// (the records the handshake already sent). None if the key or IV has
    /// the wrong length for the suite.
    pub fn new(suite: Suite, key: &[u8], iv: &[u8], seq: u64) -> Option<Sealer> {
        Keys::new(suite, key, iv, seq).map(Sealer)
    }

    /// Append `data` to `out` as application-data records of at most
    /// [`MAX_PLAINTEXT`] bytes each: each byte is copied once, into `out`,
    /// and encrypted there.
    pub fn seal(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<(), OpenError> {
        out.reserve(data.len() + data.len().div_ceil(MAX_PLAINTEXT).max(1) * OVERHEAD);
        for chunk in data.chunks(MAX_PLAINTEXT) {
            self.seal_record(APPLICATION_DATA, chunk, out)?;
        }
        Ok(())
    }

    /// Append a close_notify alert to `out`.
    pub fn close_notify(&mut self, out: &mut Vec<u8>) -> Result<(), OpenError> {
        // level warning (1), description close_notify (0)
        self.seal_record(ALERT, &[1, 0], out)
    }

    fn seal_record(&mut self, inner: u8, data: &[u8], out: &mut Vec<u8>) -> Result<(), OpenError> {
        let nonce = self.0.next_nonce().ok_or(OpenError::Exhausted)?;
        let len = data.len() + 1 + TAG_LEN;
        let header = [APPLICATION_DATA, 3, 3, (len >> 8) as u8, len as u8];
        out.extend_from_slice(&header);
        let start = out.len();
        out.extend_from_slice(data);
        out.push(inner);
        let tag = self
            .0
            .key
            .seal_in_place_separate_tag(nonce, Aad::from(header), &mut out[start..])
            .map_err(|_| OpenError::Exhausted)?;
        out.extend_from_slice(tag.as_ref());
        Ok(())
    }
}

/// What [`Opener::open`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opened {
    /// Where the plaintext now ends: the records' plaintexts lie one after
    /// another from `plain_end` (the argument) up to here.
    pub plain_end: usize,
    /// Where the unopened bytes (at most part of one record) start.
    pub rest: usize,
    /// The peer sent close_notify: nothing after it counts.
    pub closed: bool,
}

/// Opens incoming records.
pub struct Opener(Keys);

impl Opener {
    /// An opener for `suite` with the read key and IV, starting at `seq`.
    pub fn new(suite: Suite, key: &[u8], iv: &[u8], seq: u64) -> Option<Opener> {
        Keys::new(suite, key, iv, seq).map(Opener)
    }

    /// Open every whole record in `buf[from..]`, in place: each record's
    /// plaintext is moved down to follow the plaintext before it, starting
    /// at `plain_end` (≤ `from`), so the caller's buffer holds contiguous
    /// plaintext in `buf[..opened.plain_end]` and an incomplete record, if
    /// any, in `buf[opened.rest..]`. Stops after a close_notify.
    pub fn open(
        &mut self,
        buf: &mut [u8],
        plain_end: usize,
        from: usize,
    ) -> Result<Opened, OpenError> {
        debug_assert!(plain_end <= from && from <= buf.len());
        let mut plain_end = plain_end;
        let mut at = from;
        while let Some(header) = buf.get(at..at + HEADER_LEN) {
            let header: [u8; HEADER_LEN] = [header[0], header[1], header[2], header[3], header[4]];
            let version = u16::from_be_bytes([header[1], header[2]]);
            if header[0] != APPLICATION_DATA || version != 0x0303 {
                return Err(OpenError::BadHeader(header[0], version));
            }
            let len = u16::from_be_bytes([header[3], header[4]]) as usize;
            if len > MAX_CIPHERTEXT {
                return Err(OpenError::TooLong(len));
            }
            if len < TAG_LEN + 1 {
                return Err(OpenError::Decrypt);
            }
            let end = at + HEADER_LEN + len;
            if end > buf.len() {
                break;
            }
            let nonce = self.0.next_nonce().ok_or(OpenError::Exhausted)?;
            let shift = at + HEADER_LEN - plain_end;
            let plain = self
                .0
                .key
                .open_within(nonce, Aad::from(header), &mut buf[plain_end..end], shift..)
                .map_err(|_| OpenError::Decrypt)?;
            // The inner content type is the last non-zero byte.
            let Some(type_at) = plain.iter().rposition(|&b| b != 0) else {
                return Err(OpenError::NoContentType);
            };
            let inner = plain[type_at];
            at = end;
            match inner {
                APPLICATION_DATA => plain_end += type_at,
                ALERT => {
                    return match plain[..type_at] {
                        [_, 0] => Ok(Opened {
                            plain_end,
                            rest: at,
                            closed: true,
                        }),
                        [level, desc] => Err(OpenError::Alert(level, desc)),
                        _ => Err(OpenError::Alert(0, 0)),
                    };
                }
                HANDSHAKE if plain.first() == Some(&KEY_UPDATE) => {
                    return Err(OpenError::KeyUpdate)
                }
                // Session tickets a server sends after the handshake (a
                // relay dialing a `wss://` relay behind another TLS stack):
                // this side never resumes, so they are dropped.
                HANDSHAKE if plain.first() == Some(&NEW_SESSION_TICKET) => {}
                other => return Err(OpenError::Unexpected(other)),
            }
        }
        Ok(Opened {
            plain_end,
            rest: at,
            closed: false,
        })
    }
}

/// How many more bytes the record starting at `buf[0]` needs before it is
/// whole (0: it is whole, or fewer than a header's bytes are there, in
/// which case the header is what is missing).
pub fn missing(buf: &[u8]) -> usize {
    match buf {
        [_, _, _, hi, lo, rest @ ..] => {
            let len = u16::from_be_bytes([*hi, *lo]) as usize;
            len.saturating_sub(rest.len())
        }
        short => HEADER_LEN - short.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 16] = [7; 16];
    const IV: [u8; 12] = [9; 12];

    fn pair(suite: Suite) -> (Sealer, Opener) {
        let key: Vec<u8> = match suite {
            Suite::Aes128Gcm => KEY.to_vec(),
            _ => [KEY, KEY].concat(),
        };
        (
            Sealer::new(suite, &key, &IV, 3).unwrap(),
            Opener::new(suite, &key, &IV, 3).unwrap(),
        )
    }

    #[test]
    fn records_open_to_contiguous_plaintext_in_place() {
        for suite in [Suite::Aes128Gcm, Suite::Aes256Gcm, Suite::Chacha20Poly1305] {
            let (mut s, mut o) = pair(suite);
            let data: Vec<u8> = (0..40_000u32).map(|i| (i * 7) as u8).collect();
            let mut wire = Vec::new();
            s.seal(&data[..100], &mut wire).unwrap();
            s.seal(&data[100..], &mut wire).unwrap();
            // Three records for the second write (16384 + 16384 + rest).
            assert_eq!(wire.len(), data.len() + 4 * OVERHEAD);
            // Ten plaintext bytes already in the buffer stay in front.
            let mut buf = b"0123456789".to_vec();
            let split = wire.len() - 1000;
            buf.extend_from_slice(&wire[..split]);
            let got = o.open(&mut buf, 10, 10).unwrap();
            assert!(!got.closed);
            assert_eq!(&buf[..10], b"0123456789");
            assert_eq!(&buf[10..got.plain_end], &data[..got.plain_end - 10]);
            // The incomplete last record is left where it was.
            let rest = buf[got.rest..].to_vec();
            assert_eq!(missing(&rest), 1000);
            let mut buf2 = buf[..got.plain_end].to_vec();
            let from = buf2.len();
            buf2.extend_from_slice(&rest);
            buf2.extend_from_slice(&wire[split..]);
            let got2 = o.open(&mut buf2, from, from).unwrap();
            assert_eq!(got2.rest, buf2.len());
            assert_eq!(&buf2[10..got2.plain_end], &data[..]);
        }
    }

    #[test]
    fn close_notify_ends_and_tampering_fails() {
        let (mut s, mut o) = pair(Suite::Aes128Gcm);
        let mut wire = Vec::new();
        s.seal(b"hello", &mut wire).unwrap();
        s.close_notify(&mut wire).unwrap();
        s.seal(b"after", &mut wire).unwrap();
        let mut buf = wire.clone();
        let got = o.open(&mut buf, 0, 0).unwrap();
        assert!(got.closed);
        assert_eq!(&buf[..got.plain_end], b"hello");

        let (_, mut o) = pair(Suite::Aes128Gcm);
        let mut bad = wire.clone();
        bad[8] ^= 1;
        assert_eq!(o.open(&mut bad, 0, 0), Err(OpenError::Decrypt));
        // A record replayed (out of sequence) fails too.
        let (_, mut o) = pair(Suite::Aes128Gcm);
        let first = HEADER_LEN + b"hello".len() + 1 + TAG_LEN;
        let mut twice = [&wire[..first], &wire[..first]].concat();
        assert_eq!(o.open(&mut twice, 0, 0), Err(OpenError::Decrypt));
    }

    #[test]
    fn bad_headers_and_lengths_are_refused_without_panicking() {
        let (_, mut o) = pair(Suite::Aes128Gcm);
        assert!(matches!(
            o.open(&mut [22, 3, 3, 0, 20], 0, 0),
            Err(OpenError::BadHeader(22, _))
        ));
        assert!(matches!(
            o.open(&mut [23, 3, 1, 0, 20], 0, 0),
            Err(OpenError::BadHeader(23, 0x0301))
        ));
        assert_eq!(
            o.open(&mut [23, 3, 3, 0xff, 0xff], 0, 0),
            Err(OpenError::TooLong(0xffff))
        );
        assert_eq!(
            o.open(&mut [23, 3, 3, 0, 3, 1, 2, 3], 0, 0),
            Err(OpenError::Decrypt)
        );
        // Fewer bytes than a header: nothing opened, nothing refused.
        let got = o.open(&mut [23, 3], 0, 0).unwrap();
        assert_eq!((got.plain_end, got.rest), (0, 0));
        assert_eq!(missing(&[23, 3]), 3);
    }

    #[test]
    fn session_tickets_are_dropped_and_what_follows_them_kept() {
        let (mut s, mut o) = pair(Suite::Aes128Gcm);
        let mut wire = Vec::new();
        s.seal(b"before", &mut wire).unwrap();
        s.seal_record(
            HANDSHAKE,
            &[NEW_SESSION_TICKET, 0, 0, 3, 1, 2, 3],
            &mut wire,
        )
        .unwrap();
        s.seal(b" after", &mut wire).unwrap();
        let got = o.open(&mut wire, 0, 0).unwrap();
        assert_eq!(&wire[..got.plain_end], b"before after");
        assert_eq!(got.rest, wire.len());
    }

    #[test]
    fn a_key_update_or_an_alert_is_refused_by_name() {
        let (mut s, mut o) = pair(Suite::Chacha20Poly1305);
        let mut wire = Vec::new();
        s.seal_record(HANDSHAKE, &[KEY_UPDATE, 0, 0, 1, 0], &mut wire)
            .unwrap();
        assert_eq!(o.open(&mut wire, 0, 0), Err(OpenError::KeyUpdate));
        let (mut s, mut o) = pair(Suite::Chacha20Poly1305);
        let mut wire = Vec::new();
        s.seal_record(ALERT, &[2, 40], &mut wire).unwrap();
        assert_eq!(o.open(&mut wire, 0, 0), Err(OpenError::Alert(2, 40)));
        // Padding after the content type is allowed.
        let (mut s, mut o) = pair(Suite::Chacha20Poly1305);
        let mut wire = Vec::new();
        // Inner plaintext 1, 2, 3, type 23, then one zero of padding.
        s.seal_record(0, &[1, 2, 3, APPLICATION_DATA], &mut wire)
            .unwrap();
        let got = o.open(&mut wire, 0, 0).unwrap();
        assert_eq!(&wire[..got.plain_end], &[1, 2, 3]);
    }
}
