//! What the session reports to the application, in the order the frames
//! that caused it arrived.

use bytes::Bytes;

/// Something the peer did that the application needs to know about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The peer opened a stream. The session has already queued the
    /// WindowUpdate|ACK (delta = max − 256 KiB, sent even when that is 0).
    /// frpc tears down its whole session when a stream stays unACKed for
    /// 75 s, and pooled work streams can sit idle much longer than that, so
    /// the ACK cannot wait for the application.
    StreamOpened(u32),
    /// The peer acknowledged a stream we opened.
    StreamAcked(u32),
    /// Payload for a stream. A large Data frame may arrive split over
    /// several events. Report each one back with
    /// [`Session::consumed`](super::Session::consumed) once it is consumed,
    /// or the peer's credit runs out.
    Data(u32, Bytes),
    /// The peer half-closed the stream (FIN): no more data will come. When
    /// both sides have sent FIN the stream is removed.
    Fin(u32),
    /// The stream was reset and is gone. Either the peer sent RST, or we did
    /// because the peer never answered our FIN within the stream close
    /// timeout.
    Reset(u32),
    /// The peer granted more send credit on the stream; writes that returned
    /// 0 may go on.
    WindowUpdate(u32),
    /// The peer sent GoAway with this code. With code 0 (normal) the session
    /// goes on but accepts no new streams from us. With any other code,
    /// [`Session::receive`](super::Session::receive) also returns an error.
    GoAway(u32),
}
