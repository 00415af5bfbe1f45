//! Errors of the yamux session (fatal, end the whole connection) and of a
//! single stream operation (the caller's mistake or a stream that is gone).

use super::header::{GO_AWAY_INTERNAL_ERROR, GO_AWAY_NORMAL, GO_AWAY_PROTOCOL_ERROR};

/// A frame header that cannot be decoded.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum HeaderError {
    /// The version byte is not 0.
    #[error("invalid yamux version {0}")]
    InvalidVersion(u8),
    /// The type byte is not one of Data, WindowUpdate, Ping, GoAway.
    #[error("invalid yamux frame type {0}")]
    InvalidType(u8),
}

/// Why a yamux session cannot go on. The driver should flush any outbound
/// bytes still queued (a GoAway, for protocol errors) and close the
/// connection.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum SessionError {
    /// The peer sent a header we cannot decode.
    #[error(transparent)]
    Header(#[from] HeaderError),
    /// The peer sent more data than the window we granted on a stream.
    #[error("data exceeds receive window on stream {stream} ({len} bytes sent, {window} allowed)")]
    RecvWindowExceeded {
        /// The stream the data was for.
        stream: u32,
        /// Payload length of the offending Data frame.
        len: u32,
        /// Credit the peer had left.
        window: u32,
    },
    /// The peer sent SYN for a stream id that is still open.
    #[error("peer opened stream {0}, which is already open")]
    DuplicateStream(u32),
    /// The peer sent SYN for stream 0 or for an id of our parity (ids we
    /// would allocate ourselves).
    #[error("peer opened stream {0}, an id it may not use")]
    InvalidStreamId(u32),
    /// The peer sent FIN twice on the same stream.
    #[error("peer sent FIN on stream {0}, which it had already closed")]
    UnexpectedFin(u32),
    /// Our keepalive ping went unanswered for the configured ping timeout.
    #[error("keepalive timeout")]
    KeepaliveTimeout,
    /// The peer sent GoAway with an error code, which ends the session.
    #[error("peer ended the session: GoAway code {code} ({})", go_away_reason(*.code))]
    PeerGoAway {
        /// The code from the GoAway frame.
        code: u32,
    },
    /// The session already failed earlier; it processes nothing more.
    #[error("yamux session already failed")]
    Closed,
}

impl SessionError {
    /// Whether this error is the peer breaking the protocol, which we answer
    /// with GoAway(protocol error) before closing, as hashicorp/yamux does.
    pub fn is_protocol_violation(&self) -> bool {
        matches!(
            self,
            SessionError::Header(_)
                | SessionError::RecvWindowExceeded { .. }
                | SessionError::DuplicateStream(_)
                | SessionError::InvalidStreamId(_)
                | SessionError::UnexpectedFin(_)
        )
    }
}

/// Human words for a GoAway code, for error messages.
fn go_away_reason(code: u32) -> &'static str {
    match code {
        GO_AWAY_NORMAL => "normal",
        GO_AWAY_PROTOCOL_ERROR => "protocol error",
        GO_AWAY_INTERNAL_ERROR => "internal error",
        _ => "unknown code",
    }
}

/// Why an operation on one stream was refused.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum StreamError {
    /// No such stream: never opened, already fully closed, or reset.
    #[error("yamux stream {0} is not open")]
    UnknownStream(u32),
    /// We already half-closed this stream, so it takes no more data.
    #[error("yamux stream {0} is closed for writing")]
    ClosedForWriting(u32),
    /// The peer sent GoAway, so it accepts no new streams.
    #[error("peer sent GoAway; it accepts no new streams")]
    RemoteGoAway,
    /// All stream ids of our parity have been used.
    #[error("yamux stream ids exhausted")]
    IdsExhausted,
    /// The session failed; nothing more can be sent on it.
    #[error("yamux session has failed")]
    SessionFailed,
}
