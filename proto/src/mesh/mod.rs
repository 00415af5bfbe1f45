//! Seed 003's mesh protocol (WSS-Mesh), sans-IO.
//!
//! Every WebSocket binary message between mesh parties (node ↔ controller
//! on `/ws/control`, relay ↔ controller on `/ws/server`, node ↔ relay on
//! `/ws/data`, relay ↔ relay on `/ws/mesh`) carries exactly one frame: the
//! seed's 5-byte header (version, type, flags, big-endian length) and its
//! payload ([`frame`]). DATA payloads are the seed's binary layout, the two
//! node ids in clear for routing and the sealed IP packet ([`data`]);
//! PING and PONG carry 8 opaque bytes echoed back; every other message's
//! payload is one JSON object ([`control`]), a choice the seed leaves open.
//! Errors are the seed's codes 1001–4003 ([`error`]). Tokens are JWTs with
//! the seed's claims ([`token`]).

pub mod control;
pub mod data;
pub mod error;
pub mod frame;
pub mod token;

pub use error::ErrorCode;
pub use frame::{Frame, FrameError, MsgType};
