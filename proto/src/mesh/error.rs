//! Seed 003 §8.4's error codes: what an ERROR frame and an API answer say.

use std::fmt;

/// One of the seed's error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// 1001: the token is not valid (bad signature, malformed, wrong type).
    InvalidToken,
    /// 1002: the token has expired.
    TokenExpired,
    /// 1003: the token was revoked (its jti is blacklisted).
    TokenRevoked,
    /// 1004: the machine_key is not a valid Ed25519 public key.
    InvalidMachineKey,
    /// 1005: a signature (node_key update, registration) does not verify.
    SignatureInvalid,
    /// 1006: the node is not authorized in its network.
    NodeNotAuthorized,
    /// 2001: the frame's protocol version is not supported.
    UnsupportedVersion,
    /// 2002: the frame or its payload is malformed.
    InvalidMessage,
    /// 2003: the frame is larger than the receiver accepts.
    MessageTooLarge,
    /// 3001: the destination node does not exist.
    NodeNotFound,
    /// 3002: the destination node is offline.
    NodeOffline,
    /// 3003: no route to the destination.
    NoRoute,
    /// 4001: internal error.
    Internal,
    /// 4002: the service is unavailable.
    Unavailable,
    /// 4003: the server is overloaded.
    Overloaded,
}

const ALL: [ErrorCode; 15] = [
    ErrorCode::InvalidToken,
    ErrorCode::TokenExpired,
    ErrorCode::TokenRevoked,
    ErrorCode::InvalidMachineKey,
    ErrorCode::SignatureInvalid,
    ErrorCode::NodeNotAuthorized,
    ErrorCode::UnsupportedVersion,
    ErrorCode::InvalidMessage,
    ErrorCode::MessageTooLarge,
    ErrorCode::NodeNotFound,
    ErrorCode::NodeOffline,
    ErrorCode::NoRoute,
    ErrorCode::Internal,
    ErrorCode::Unavailable,
    ErrorCode::Overloaded,
];

impl ErrorCode {
    /// The numeric code.
    pub const fn code(self) -> u16 {
        match self {
            ErrorCode::InvalidToken => 1001,
            ErrorCode::TokenExpired => 1002,
            ErrorCode::TokenRevoked => 1003,
            ErrorCode::InvalidMachineKey => 1004,
            ErrorCode::SignatureInvalid => 1005,
            ErrorCode::NodeNotAuthorized => 1006,
            ErrorCode::UnsupportedVersion => 2001,
            ErrorCode::InvalidMessage => 2002,
            ErrorCode::MessageTooLarge => 2003,
            ErrorCode::NodeNotFound => 3001,
            ErrorCode::NodeOffline => 3002,
            ErrorCode::NoRoute => 3003,
            ErrorCode::Internal => 4001,
            ErrorCode::Unavailable => 4002,
            ErrorCode::Overloaded => 4003,
        }
    }

    /// The code for a number, if it is one of the seed's.
    pub fn from_code(code: u16) -> Option<ErrorCode> {
        ALL.into_iter().find(|c| c.code() == code)
    }

    /// A readable message (the seed's meaning).
    pub const fn message(self) -> &'static str {
        match self {
            ErrorCode::InvalidToken => "invalid token",
            ErrorCode::TokenExpired => "token expired",
            ErrorCode::TokenRevoked => "token revoked",
            ErrorCode::InvalidMachineKey => "invalid machine_key",
            ErrorCode::SignatureInvalid => "signature verification failed",
            ErrorCode::NodeNotAuthorized => "node not authorized",
            ErrorCode::UnsupportedVersion => "unsupported protocol version",
            ErrorCode::InvalidMessage => "invalid message format",
            ErrorCode::MessageTooLarge => "message too large",
            ErrorCode::NodeNotFound => "destination node does not exist",
            ErrorCode::NodeOffline => "destination node is offline",
            ErrorCode::NoRoute => "no route available",
            ErrorCode::Internal => "internal error",
            ErrorCode::Unavailable => "service unavailable",
            ErrorCode::Overloaded => "overloaded",
        }
    }

    /// Whether the sender should close the connection after sending it
    /// (authentication and protocol errors), rather than go on serving it
    /// (routing and server errors concern one frame).
    pub const fn closes(self) -> bool {
        self.code() < 3000
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.code(), self.message())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_are_the_seeds() {
        let codes: Vec<u16> = ALL.iter().map(|c| c.code()).collect();
        assert_eq!(
            codes,
            [
                1001, 1002, 1003, 1004, 1005, 1006, 2001, 2002, 2003, 3001, 3002, 3003, 4001, 4002,
                4003
            ]
        );
        for c in ALL {
            assert_eq!(ErrorCode::from_code(c.code()), Some(c));
            assert!(!c.message().is_empty());
        }
        assert_eq!(ErrorCode::from_code(1000), None);
        assert_eq!(ErrorCode::from_code(3004), None);
        assert_eq!(
            ErrorCode::NodeOffline.to_string(),
            "3002 destination node is offline"
        );
        assert!(ErrorCode::UnsupportedVersion.closes());
        assert!(ErrorCode::TokenRevoked.closes());
        assert!(!ErrorCode::NodeNotFound.closes());
    }
}
