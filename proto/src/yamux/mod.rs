//! yamux, the stream multiplexer frpc runs over its one TCP (or TLS, …)
//! connection, as a sans-IO state machine that speaks hashicorp/yamux's
//! wire format and behaves the way Go peers expect.
//!
//! How the pieces fit:
//!
//! - `header`: the 12-byte frame header ([`Header`], [`FrameType`],
//!   [`Flags`]) and the GoAway codes ([`GO_AWAY_NORMAL`], …).
//! - [`Session`] (in `session`): parses inbound frames, tracks streams, queues
//!   outbound frames and reports [`Event`]s. It owns no socket and no clock.
//!   The driver passes `now` in and writes out what
//!   [`Session::take_outbound`] returns.
//! - `stream`: per-stream half-close state and the two flow-control windows,
//!   with the accounting rules spelled out.
//! - `keepalive`: our ping schedule and the ping-timeout check.
//! - [`Config`] / [`Role`]: window size, keepalive, backlog and stream
//!   limits.
//! - [`SessionError`] (fatal for the connection) and [`StreamError`] (one
//!   operation refused).
//!
//! Go behaviours frpc depends on, and what we do about them:
//!
//! - Every inbound stream is ACKed the moment its SYN is parsed. frpc kills
//!   the whole session when a SYN stays unACKed for 75 s, and pooled work
//!   streams can sit unused far longer than that.
//! - The SYN/ACK WindowUpdate carries `max − 256 KiB` (with frp's 6 MiB,
//!   `0x005C0000`). Later credit goes back only in steps of at least
//!   `max / 2`.
//! - Pings are answered with the same opaque id. Ours count up from 0, one
//!   in flight at a time, and fail the session if unanswered within the ping
//!   timeout.
//! - Frames for unknown streams are dropped silently, payload included. A
//!   SYN beyond the backlog or stream limit gets RST, never GoAway.
//! - Protocol violations queue GoAway(1) and fail the session.

mod config;
mod error;
mod event;
mod header;
mod keepalive;
mod session;
mod stream;

#[cfg(test)]
mod tests;

pub use config::{Config, Role};
pub use error::{HeaderError, SessionError, StreamError};
pub use event::Event;
pub use header::{
    Flags, FrameType, Header, GO_AWAY_INTERNAL_ERROR, GO_AWAY_NORMAL, GO_AWAY_PROTOCOL_ERROR,
    HEADER_LEN, PROTOCOL_VERSION,
};
pub use session::{Session, MAX_DATA_FRAME};
pub use stream::INITIAL_WINDOW;
