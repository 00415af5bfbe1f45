//! The 12-byte yamux frame header: version, type, flags, stream id, length.
//!
//! Every yamux frame starts with this header, all fields big-endian. Only
//! Data frames carry a body (`length` bytes of payload); for the other types
//! `length` is a value in its own right: the window delta of a WindowUpdate,
//! the opaque id of a Ping, the error code of a GoAway.

use bytes::BufMut;

use super::error::HeaderError;

/// Size of an encoded frame header in bytes.
pub const HEADER_LEN: usize = 12;

/// The only protocol version yamux has ever defined.
pub const PROTOCOL_VERSION: u8 = 0;

/// GoAway code for a normal shutdown: the sender accepts no new streams.
pub const GO_AWAY_NORMAL: u32 = 0;
/// GoAway code the sender uses when the peer broke the protocol.
pub const GO_AWAY_PROTOCOL_ERROR: u32 = 1;
/// GoAway code the sender uses when it failed internally.
pub const GO_AWAY_INTERNAL_ERROR: u32 = 2;

/// What a frame is, from the header's type byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FrameType {
    /// Stream payload; `length` bytes of body follow the header.
    Data,
    /// Grants the peer `length` more bytes of send credit on a stream.
    WindowUpdate,
    /// Keepalive / RTT probe on stream 0; `length` is an opaque id echoed back.
    Ping,
    /// Session-wide shutdown notice; `length` is the reason code.
    GoAway,
}

impl FrameType {
    /// The type byte on the wire.
    pub const fn to_u8(self) -> u8 {
        match self {
            FrameType::Data => 0,
            FrameType::WindowUpdate => 1,
            FrameType::Ping => 2,
            FrameType::GoAway => 3,
        }
    }

    /// Parses a type byte; `None` for anything above 3.
    pub const fn from_u8(byte: u8) -> Option<Self> {
        match byte {
            0 => Some(FrameType::Data),
            1 => Some(FrameType::WindowUpdate),
            2 => Some(FrameType::Ping),
            3 => Some(FrameType::GoAway),
            _ => None,
        }
    }
}

/// The header's 16-bit flag set. Unknown bits are kept but carry no meaning.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Flags(pub u16);

impl Flags {
    /// No flags.
    pub const NONE: Flags = Flags(0);
    /// Opens a stream (or, on a Ping, asks for a reply).
    pub const SYN: Flags = Flags(0x1);
    /// Acknowledges a stream opened by the peer (or, on a Ping, is the reply).
    pub const ACK: Flags = Flags(0x2);
    /// Half-closes the sender's direction of a stream.
    pub const FIN: Flags = Flags(0x4);
    /// Aborts a stream in both directions.
    pub const RST: Flags = Flags(0x8);

    /// Whether every bit of `other` is set in `self`.
    pub const fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether no bit is set.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl std::ops::BitOr for Flags {
    type Output = Flags;

    fn bitor(self, rhs: Flags) -> Flags {
        Flags(self.0 | rhs.0)
    }
}

/// A decoded frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Header {
    /// What kind of frame this is.
    pub frame_type: FrameType,
    /// SYN / ACK / FIN / RST bits.
    pub flags: Flags,
    /// The stream this frame belongs to; 0 for Ping and GoAway.
    pub stream_id: u32,
    /// Payload length (Data), window delta (WindowUpdate), ping id (Ping) or
    /// error code (GoAway).
    pub length: u32,
}

impl Header {
    /// Builds a header from its parts.
    pub const fn new(frame_type: FrameType, flags: Flags, stream_id: u32, length: u32) -> Self {
        Header {
            frame_type,
            flags,
            stream_id,
            length,
        }
    }

    /// Encodes the header into its 12 wire bytes.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0] = PROTOCOL_VERSION;
        out[1] = self.frame_type.to_u8();
        out[2..4].copy_from_slice(&self.flags.0.to_be_bytes());
        out[4..8].copy_from_slice(&self.stream_id.to_be_bytes());
        out[8..12].copy_from_slice(&self.length.to_be_bytes());
        out
    }

    /// Appends the 12 wire bytes to `dst`.
    pub fn encode(&self, dst: &mut impl BufMut) {
        dst.put_slice(&self.to_bytes());
    }

    /// Decodes the 12 wire bytes of a header, rejecting an unknown version or
    /// frame type (both end the session in hashicorp/yamux).
    pub fn decode(bytes: &[u8; HEADER_LEN]) -> Result<Self, HeaderError> {
        if bytes[0] != PROTOCOL_VERSION {
            return Err(HeaderError::InvalidVersion(bytes[0]));
        }
        let frame_type = FrameType::from_u8(bytes[1]).ok_or(HeaderError::InvalidType(bytes[1]))?;
        Ok(Header {
            frame_type,
            flags: Flags(u16::from_be_bytes([bytes[2], bytes[3]])),
            stream_id: u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]),
            length: u32::from_be_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_every_type_and_flag_combination() {
        let types = [
            FrameType::Data,
            FrameType::WindowUpdate,
            FrameType::Ping,
            FrameType::GoAway,
        ];
        for frame_type in types {
            for flags in 0..16u16 {
                let header = Header::new(frame_type, Flags(flags), 0xDEAD_BEEF, 0x0102_0304);
                let bytes = header.to_bytes();
                assert_eq!(Header::decode(&bytes).ok(), Some(header));
            }
        }
    }

    #[test]
    fn go_stream_open_bytes() {
        // What frpc (6 MiB max window) sends to open stream 1.
        let header = Header::new(
            FrameType::WindowUpdate,
            Flags::SYN,
            1,
            6 * 1024 * 1024 - 256 * 1024,
        );
        assert_eq!(header.length, 0x005C_0000);
        assert_eq!(
            header.to_bytes(),
            [0x00, 0x01, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x00, 0x5C, 0x00, 0x00]
        );
        let mut buf = bytes::BytesMut::new();
        header.encode(&mut buf);
        assert_eq!(&buf[..], &header.to_bytes()[..]);
    }

    #[test]
    fn ping_ack_bytes() {
        let header = Header::new(FrameType::Ping, Flags::ACK, 0, 7);
        assert_eq!(header.to_bytes(), [0, 2, 0, 2, 0, 0, 0, 0, 0, 0, 0, 7]);
    }

    #[test]
    fn rejects_bad_version_and_type() {
        let mut bytes = Header::new(FrameType::Data, Flags::NONE, 1, 0).to_bytes();
        bytes[0] = 7;
        assert!(matches!(
            Header::decode(&bytes),
            Err(HeaderError::InvalidVersion(7))
        ));
        bytes[0] = 0;
        bytes[1] = 4;
        assert!(matches!(
            Header::decode(&bytes),
            Err(HeaderError::InvalidType(4))
        ));
    }

    #[test]
    fn flags_helpers() {
        let flags = Flags::SYN | Flags::FIN;
        assert!(flags.contains(Flags::SYN));
        assert!(flags.contains(Flags::FIN));
        assert!(!flags.contains(Flags::ACK));
        assert!(!flags.is_empty());
        assert!(Flags::NONE.is_empty());
    }
}
