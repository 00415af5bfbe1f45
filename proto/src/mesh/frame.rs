//! Seed 003 §8.1's frame: `version (1) | type (1) | flags (1) | length (2,
//! big endian) | payload (length bytes)`, one frame per WebSocket binary
//! message.
//!
//! [`parse`] checks, in this order, what the seed's error codes name: the
//! version (2001), the length against the receiver's limit (2003), then
//! the structure — a known type, the declared length equal to what the
//! message holds (2002). A message that is shorter than a header is 2002.

use std::fmt;

use super::error::ErrorCode;

/// The protocol version this code speaks.
pub const VERSION: u8 = 0x01;
/// Bytes of the header.
pub const HEADER_LEN: usize = 5;
/// The largest payload the length field can state.
pub const MAX_PAYLOAD: usize = u16::MAX as usize;
/// Flag bit 0: the sender wants an acknowledgement.
pub const FLAG_ACK: u8 = 0x01;
/// Flag bit 1: the payload is compressed.
pub const FLAG_COMPRESSED: u8 = 0x02;

/// Seed 003 §8.2's message types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MsgType {
    /// A node or server authenticates (first frame on every channel).
    AuthRequest = 0x01,
    /// The answer to it.
    AuthResponse = 0x02,
    /// The whole configuration, pushed.
    Config = 0x03,
    /// A change to it, pushed.
    ConfigUpdate = 0x04,
    /// An encrypted IP packet between two nodes.
    Data = 0x10,
    /// Heartbeat request (8 opaque bytes).
    Ping = 0x20,
    /// Heartbeat answer (the request's bytes).
    Pong = 0x21,
    /// Measured latencies.
    LatencyReport = 0x22,
    /// P2P: start.
    P2pInit = 0x30,
    /// P2P: endpoint exchange.
    P2pEndpoint = 0x31,
    /// P2P: probe (UDP).
    P2pPing = 0x32,
    /// P2P: probe answer (UDP).
    P2pPong = 0x33,
    /// P2P: keepalive (UDP).
    P2pKeepalive = 0x34,
    /// P2P: status report.
    P2pStatus = 0x35,
    /// A relay or STUN server registers with the controller.
    ServerRegister = 0x40,
    /// Which relay each node is connected to.
    ServerNodeLoc = 0x41,
    /// Revoked token ids.
    ServerBlacklist = 0x42,
    /// An error (code and message).
    Error = 0xFF,
}

const TYPES: [MsgType; 18] = [
    MsgType::AuthRequest,
    MsgType::AuthResponse,
    MsgType::Config,
    MsgType::ConfigUpdate,
    MsgType::Data,
    MsgType::Ping,
    MsgType::Pong,
    MsgType::LatencyReport,
    MsgType::P2pInit,
    MsgType::P2pEndpoint,
    MsgType::P2pPing,
    MsgType::P2pPong,
    MsgType::P2pKeepalive,
    MsgType::P2pStatus,
    MsgType::ServerRegister,
    MsgType::ServerNodeLoc,
    MsgType::ServerBlacklist,
    MsgType::Error,
];

impl MsgType {
    /// The type for a byte, if the seed defines it.
    pub fn from_byte(b: u8) -> Option<MsgType> {
        TYPES.into_iter().find(|t| *t as u8 == b)
    }

    /// The seed's name, e.g. `AUTH_REQUEST`.
    pub const fn name(self) -> &'static str {
        match self {
            MsgType::AuthRequest => "AUTH_REQUEST",
            MsgType::AuthResponse => "AUTH_RESPONSE",
            MsgType::Config => "CONFIG",
            MsgType::ConfigUpdate => "CONFIG_UPDATE",
            MsgType::Data => "DATA",
            MsgType::Ping => "PING",
            MsgType::Pong => "PONG",
            MsgType::LatencyReport => "LATENCY_REPORT",
            MsgType::P2pInit => "P2P_INIT",
            MsgType::P2pEndpoint => "P2P_ENDPOINT",
            MsgType::P2pPing => "P2P_PING",
            MsgType::P2pPong => "P2P_PONG",
            MsgType::P2pKeepalive => "P2P_KEEPALIVE",
            MsgType::P2pStatus => "P2P_STATUS",
            MsgType::ServerRegister => "SERVER_REGISTER",
            MsgType::ServerNodeLoc => "SERVER_NODE_LOC",
            MsgType::ServerBlacklist => "SERVER_BLACKLIST",
            MsgType::Error => "ERROR",
        }
    }
}

impl fmt::Display for MsgType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A parsed frame, borrowing its payload from the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// Its type.
    pub kind: MsgType,
    /// Its flags ([`FLAG_ACK`], [`FLAG_COMPRESSED`]; other bits are kept
    /// as sent).
    pub flags: u8,
    /// Its payload.
    pub payload: &'a [u8],
}

/// Why a message is not a frame this receiver accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// Another protocol version.
    Version(u8),
    /// Payload longer than the receiver's limit.
    TooLarge {
        /// Bytes stated (or, for [`encode`], given).
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// Shorter than a header.
    Short(usize),
    /// A type byte the seed does not define.
    UnknownType(u8),
    /// The length field and the message disagree.
    Length {
        /// What the header states.
        stated: usize,
        /// What follows the header.
        actual: usize,
    },
}

impl FrameError {
    /// The seed's code for it.
    pub fn code(&self) -> ErrorCode {
        match self {
            FrameError::Version(_) => ErrorCode::UnsupportedVersion,
            FrameError::TooLarge { .. } => ErrorCode::MessageTooLarge,
            FrameError::Short(_) | FrameError::UnknownType(_) | FrameError::Length { .. } => {
                ErrorCode::InvalidMessage
            }
        }
    }
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::Version(v) => {
                write!(
                    f,
                    "protocol version {v} is not supported (this side speaks {VERSION})"
                )
            }
            FrameError::TooLarge { len, limit } => {
                write!(f, "payload of {len} bytes is over the limit of {limit}")
            }
            FrameError::Short(n) => {
                write!(f, "message of {n} bytes is shorter than a frame header")
            }
            FrameError::UnknownType(t) => write!(f, "unknown message type 0x{t:02x}"),
            FrameError::Length { stated, actual } => write!(
                f,
                "header states {stated} payload bytes but the message holds {actual}"
            ),
        }
    }
}

impl std::error::Error for FrameError {}

/// Parse one WebSocket message as a frame whose payload is at most
/// `limit` bytes.
pub fn parse(msg: &[u8], limit: usize) -> Result<Frame<'_>, FrameError> {
    if msg.len() < HEADER_LEN {
        // A version byte that is there and wrong says more than "short".
        return match msg.first() {
            Some(&v) if v != VERSION => Err(FrameError::Version(v)),
            _ => Err(FrameError::Short(msg.len())),
        };
    }
    if msg[0] != VERSION {
        return Err(FrameError::Version(msg[0]));
    }
    let stated = usize::from(u16::from_be_bytes([msg[3], msg[4]]));
    if stated > limit {
        return Err(FrameError::TooLarge { len: stated, limit });
    }
    let kind = MsgType::from_byte(msg[1]).ok_or(FrameError::UnknownType(msg[1]))?;
    let payload = &msg[HEADER_LEN..];
    if payload.len() != stated {
        return Err(FrameError::Length {
            stated,
            actual: payload.len(),
        });
    }
    Ok(Frame {
        kind,
        flags: msg[2],
        payload,
    })
}

/// A frame and the bytes after it.
pub type Split<'a> = (&'a [u8], &'a [u8]);

/// The first whole frame of `batch` (several frames back to back, as a
/// relay-to-relay link carries them) and the bytes after it; None when
/// `batch` is empty. A frame cut short is 2002. The frame itself is still
/// to be [`parse`]d.
pub fn split(batch: &[u8]) -> Result<Option<Split<'_>>, FrameError> {
    if batch.is_empty() {
        return Ok(None);
    }
    if batch.len() < HEADER_LEN {
        return Err(FrameError::Short(batch.len()));
    }
    let total = HEADER_LEN + usize::from(u16::from_be_bytes([batch[3], batch[4]]));
    if batch.len() < total {
        return Err(FrameError::Length {
            stated: total - HEADER_LEN,
            actual: batch.len() - HEADER_LEN,
        });
    }
    Ok(Some(batch.split_at(total)))
}

/// The header of a frame of `kind` with a payload of `len` bytes.
pub fn header(kind: MsgType, flags: u8, len: usize) -> Result<[u8; HEADER_LEN], FrameError> {
    let len16 = u16::try_from(len).map_err(|_| FrameError::TooLarge {
        len,
        limit: MAX_PAYLOAD,
    })?;
    let l = len16.to_be_bytes();
    Ok([VERSION, kind as u8, flags, l[0], l[1]])
}

/// Append a whole frame to `out`.
pub fn encode(
    kind: MsgType,
    flags: u8,
    payload: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), FrameError> {
    out.extend_from_slice(&header(kind, flags, payload.len())?);
    out.extend_from_slice(payload);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_splits_into_its_frames_and_a_cut_one_is_refused() {
        let mut b = Vec::new();
        encode(MsgType::Ping, 0, &[1; 8], &mut b).unwrap();
        encode(MsgType::Data, 0, &[2; 300], &mut b).unwrap();
        let (f1, rest) = split(&b).unwrap().unwrap();
        assert_eq!(parse(f1, MAX_PAYLOAD).unwrap().kind, MsgType::Ping);
        let (f2, rest) = split(rest).unwrap().unwrap();
        assert_eq!(parse(f2, MAX_PAYLOAD).unwrap().payload, &[2; 300][..]);
        assert_eq!(split(rest), Ok(None));
        for cut in 1..b.len() {
            let mut at = &b[..cut];
            let mut res = Ok(None);
            while let Ok(Some((_, r))) = split(at) {
                at = r;
                res = split(at);
            }
            if cut != HEADER_LEN + 8 {
                assert!(split(at).is_err() || res.is_err(), "cut {cut}");
            }
        }
    }

    #[test]
    fn every_type_round_trips() {
        for t in TYPES {
            assert_eq!(MsgType::from_byte(t as u8), Some(t));
            let mut out = Vec::new();
            encode(t, FLAG_ACK, b"xyz", &mut out).unwrap();
            assert_eq!(out, [1, t as u8, 1, 0, 3, b'x', b'y', b'z']);
            let f = parse(&out, 100).unwrap();
            assert_eq!((f.kind, f.flags, f.payload), (t, FLAG_ACK, &b"xyz"[..]));
        }
        assert_eq!(MsgType::Data as u8, 0x10);
        assert_eq!(MsgType::Error as u8, 0xFF);
        assert_eq!(MsgType::ServerBlacklist.to_string(), "SERVER_BLACKLIST");
        let known: Vec<u8> = TYPES.iter().map(|t| *t as u8).collect();
        for b in 0..=255u8 {
            assert_eq!(MsgType::from_byte(b).is_some(), known.contains(&b), "{b}");
        }
    }

    #[test]
    fn bad_messages_get_the_seeds_codes() {
        let code = |m: &[u8], limit| parse(m, limit).unwrap_err().code().code();
        // 2001: another version, even in a message too short to be a frame.
        assert_eq!(code(&[2, 0x10, 0, 0, 0], 100), 2001);
        assert_eq!(code(&[0], 100), 2001);
        // 2003: over the limit, decided from the header alone.
        assert_eq!(code(&[1, 0x10, 0, 0x10, 0x00], 4095), 2003);
        assert_eq!(
            parse(&[1, 0x10, 0, 0xff, 0xff], 1400).unwrap_err(),
            FrameError::TooLarge {
                len: 65535,
                limit: 1400
            }
        );
        // 2002: short, unknown type, length disagreeing either way.
        assert_eq!(code(&[], 100), 2002);
        assert_eq!(code(&[1, 0x10, 0], 100), 2002);
        assert_eq!(code(&[1, 0x11, 0, 0, 0], 100), 2002);
        assert_eq!(code(&[1, 0x10, 0, 0, 2, 9], 100), 2002);
        assert_eq!(code(&[1, 0x10, 0, 0, 1, 9, 9], 100), 2002);
        assert_eq!(
            parse(&[1, 0x10, 0, 0, 1, 9, 9], 100)
                .unwrap_err()
                .to_string(),
            "header states 1 payload bytes but the message holds 2"
        );
        // An empty payload is a frame.
        assert_eq!(parse(&[1, 0x20, 0, 0, 0], 0).unwrap().payload, b"");
        // A payload the length field cannot state is refused at encoding.
        let big = vec![0; MAX_PAYLOAD + 1];
        assert_eq!(
            encode(MsgType::Data, 0, &big, &mut Vec::new())
                .unwrap_err()
                .code(),
            ErrorCode::MessageTooLarge
        );
    }
}
