//! Per-stream state: the two half-close flags and the two flow-control
//! windows.
//!
//! Window accounting, as hashicorp/yamux does it. Both directions start at
//! [`INITIAL_WINDOW`] and only grow through WindowUpdate deltas; only Data
//! payload bytes use credit.
//!
//! - `send_window` is what we may still send. Data we queue uses it up. A
//!   WindowUpdate from the peer adds its delta.
//! - `recv_window` is what the peer may still send us. `unconsumed` is what we
//!   have taken in but the application has not consumed yet. Once a frame's
//!   header has been accepted, its whole payload counts as taken in, even the
//!   bytes still on the way. So `recv_window + unconsumed <= max` always
//!   holds, and that caps the memory one stream can pin at `max` bytes. When
//!   the application consumes bytes, the credit we could give back is
//!   `max - unconsumed - recv_window`. Like Go, we send it only once it
//!   reaches `max / 2`, which keeps WindowUpdates rare on bulk transfers.
//!
//! With window auto-tuning on, `max` is per stream (`window`): it starts at
//! the initial window and doubles when a credit return comes due sooner
//! after the previous one than the session's growth interval (about two
//! round trips), i.e. when the window, not the reader, limits the rate. The
//! session decides how much it may grow (its budget); see
//! [`Session::consumed_at`](super::Session::consumed_at).

use std::time::{Duration, Instant};

use super::error::SessionError;

/// The window every stream starts with in both directions, before any
/// WindowUpdate (fixed by the protocol).
pub const INITIAL_WINDOW: u32 = 256 * 1024;

/// One live stream as the session tracks it.
#[derive(Debug)]
pub(crate) struct Stream {
    /// Credit the peer has left to send to us.
    recv_window: u32,
    /// The most this stream lets the peer have in flight and unconsumed:
    /// `recv_window + unconsumed <= window`.
    window: u32,
    /// Auto-tuning: when the current measurement started, and the bytes
    /// consumed since.
    epoch_at: Instant,
    epoch_bytes: u32,
    /// Payload accepted from the peer that the application has not consumed.
    unconsumed: u32,
    /// Credit we have left to send to the peer.
    send_window: u32,
    /// We opened this stream and the peer has not ACKed it yet.
    pub(crate) awaiting_ack: bool,
    /// We sent FIN.
    pub(crate) local_closed: bool,
    /// The peer sent FIN.
    pub(crate) remote_closed: bool,
    /// Session-unique number that tells this stream apart from a later one
    /// reusing its id (close timers refer to streams by it).
    pub(crate) serial: u64,
}

impl Stream {
    /// A stream just opened at `now`, after our SYN or ACK granted `max`
    /// bytes of receive window.
    pub(crate) fn new(max_window: u32, awaiting_ack: bool, serial: u64, now: Instant) -> Self {
        Stream {
            recv_window: max_window,
            window: max_window,
            epoch_at: now,
            epoch_bytes: 0,
            unconsumed: 0,
            send_window: INITIAL_WINDOW,
            awaiting_ack,
            local_closed: false,
            remote_closed: false,
            serial,
        }
    }

    /// The delta to put in our SYN or ACK: the credit above the initial
    /// window that a stream of `max_window` grants.
    pub(crate) fn opening_delta(max_window: u32) -> u32 {
        max_window.saturating_sub(INITIAL_WINDOW)
    }

    /// Send credit left, 0 once we have half-closed.
    pub(crate) fn send_window(&self) -> u32 {
        if self.local_closed {
            0
        } else {
            self.send_window
        }
    }

    /// The peer granted `delta` more bytes. The sum saturates: only a broken
    /// peer could overflow it, and clamping is harmless.
    pub(crate) fn grant_send(&mut self, delta: u32) {
        self.send_window = self.send_window.saturating_add(delta);
    }

    /// We queued `n` bytes of Data; `n` never exceeds the send window.
    pub(crate) fn spend_send(&mut self, n: u32) {
        self.send_window = self.send_window.saturating_sub(n);
    }

    /// A Data header for `len` payload bytes arrived. Takes the credit, or
    /// fails if the peer overran its window. Returns whether the payload
    /// should reach the application. After the peer's FIN it should not: it
    /// still uses credit but is dropped.
    pub(crate) fn accept_data(&mut self, id: u32, len: u32) -> Result<bool, SessionError> {
        if len > self.recv_window {
            return Err(SessionError::RecvWindowExceeded {
                stream: id,
                len,
                window: self.recv_window,
            });
        }
        self.recv_window -= len;
        if self.remote_closed {
            return Ok(false);
        }
        // Cannot overflow: `recv_window + unconsumed <= max` (module doc).
        self.unconsumed = self.unconsumed.saturating_add(len);
        Ok(true)
    }

    /// The application consumed `n` delivered bytes. Returns the credit
    /// return that is due, if any (not yet granted: see [`Stream::grant`]):
    /// once it reaches `window / divisor` (Go: 2).
    pub(crate) fn consume(&mut self, n: usize, divisor: u32) -> Option<u32> {
        let n = u32::try_from(n).unwrap_or(u32::MAX).min(self.unconsumed);
        self.unconsumed -= n;
        self.epoch_bytes = self.epoch_bytes.saturating_add(n);
        // The peer has stopped sending; more credit would never be used.
        if self.remote_closed {
            return None;
        }
        let delta = self
            .window
            .saturating_sub(self.unconsumed)
            .saturating_sub(self.recv_window);
        if delta < self.window / divisor.max(1) {
            return None;
        }
        Some(delta)
    }

    /// Auto-tuning, with a credit return due at `now`: once half a window
    /// has been consumed since the measurement started, if that took less
    /// than `interval` the window is what limits this stream, so it
    /// doubles, up to `cap` and by at most `allowance` bytes; a new
    /// measurement starts either way. Returns the growth, which the caller
    /// adds to the delta it grants.
    pub(crate) fn grow(
        &mut self,
        now: Instant,
        interval: Duration,
        cap: u32,
        allowance: u64,
    ) -> u32 {
        if self.epoch_bytes < self.window / 2 {
            return 0;
        }
        let quick = now.saturating_duration_since(self.epoch_at) < interval;
        self.epoch_at = now;
        self.epoch_bytes = 0;
        if !quick || self.window >= cap {
            return 0;
        }
        let by = self
            .window
            .min(cap - self.window)
            .min(u32::try_from(allowance).unwrap_or(u32::MAX));
        self.window += by;
        by
    }

    /// Grant `delta` more bytes of credit (the WindowUpdate goes out with
    /// it).
    pub(crate) fn grant(&mut self, delta: u32) {
        self.recv_window = self.recv_window.saturating_add(delta);
    }

    /// The stream's current window (see the module doc).
    pub(crate) fn window(&self) -> u32 {
        self.window
    }

    /// Credit the peer has left to send to us (for tests and metrics).
    pub(crate) fn recv_window(&self) -> u32 {
        self.recv_window
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: u32 = 1024 * 1024;

    fn stream() -> Stream {
        Stream::new(MAX, false, 0, Instant::now())
    }

    #[test]
    fn window_update_only_at_half_max() {
        let mut stream = stream();
        assert_eq!(stream.accept_data(1, MAX).ok(), Some(true));
        assert_eq!(stream.recv_window(), 0);
        // Consuming less than half gives nothing back yet.
        assert_eq!(stream.consume((MAX / 2 - 1) as usize, 2), None);
        // Reaching half returns exactly what was consumed.
        assert_eq!(stream.consume(1, 2), Some(MAX / 2));
        stream.grant(MAX / 2);
        assert_eq!(stream.recv_window(), MAX / 2);
    }

    #[test]
    fn grows_only_when_half_a_window_goes_within_the_interval() {
        let t0 = Instant::now();
        let ms = Duration::from_millis(1);
        let w0 = INITIAL_WINDOW;
        let mut s = Stream::new(w0, false, 0, t0);
        let cap = 4 * w0;
        // Less than half a window consumed: no decision yet.
        s.epoch_bytes = w0 / 2 - 1;
        assert_eq!(s.grow(t0 + ms, 2 * ms, cap, u64::MAX), 0);
        // Half a window within 1 ms of opening, 2 ms interval: doubles.
        s.epoch_bytes = w0 / 2;
        assert_eq!(s.grow(t0 + ms, 2 * ms, cap, u64::MAX), w0);
        assert_eq!(s.window(), 2 * w0);
        assert_eq!(s.epoch_bytes, 0, "a new measurement starts");
        // A slow reader: the next half window takes 5 ms; it stays.
        s.epoch_bytes = w0;
        assert_eq!(s.grow(t0 + 6 * ms, 2 * ms, cap, u64::MAX), 0);
        // Limited by what the session allows, and never past the cap.
        s.epoch_bytes = w0;
        assert_eq!(s.grow(t0 + 7 * ms, 2 * ms, cap, 1000), 1000);
        s.epoch_bytes = cap;
        assert_eq!(
            s.grow(t0 + 8 * ms, 2 * ms, cap, u64::MAX),
            cap - 2 * w0 - 1000
        );
        s.epoch_bytes = cap;
        assert_eq!(s.grow(t0 + 9 * ms, 2 * ms, cap, u64::MAX), 0);
    }

    #[test]
    fn overrun_is_an_error() {
        let mut stream = stream();
        assert!(stream.accept_data(1, MAX + 1).is_err());
        assert_eq!(stream.accept_data(1, 10).ok(), Some(true));
        assert!(matches!(
            stream.accept_data(1, MAX),
            Err(SessionError::RecvWindowExceeded {
                stream: 1,
                len,
                window,
            }) if len == MAX && window == MAX - 10
        ));
    }

    #[test]
    fn over_consuming_is_clamped() {
        let mut stream = stream();
        assert_eq!(stream.accept_data(1, 100).ok(), Some(true));
        assert_eq!(stream.consume(usize::MAX, 2), None);
        assert_eq!(stream.unconsumed, 0);
    }

    #[test]
    fn data_after_fin_uses_credit_but_is_dropped() {
        let mut stream = stream();
        stream.remote_closed = true;
        assert_eq!(stream.accept_data(1, 100).ok(), Some(false));
        assert_eq!(stream.recv_window(), MAX - 100);
        assert_eq!(stream.unconsumed, 0);
    }

    #[test]
    fn send_window_is_zero_once_closed() {
        let mut stream = stream();
        assert_eq!(stream.send_window(), INITIAL_WINDOW);
        stream.grant_send(u32::MAX);
        assert_eq!(stream.send_window(), u32::MAX);
        stream.local_closed = true;
        assert_eq!(stream.send_window(), 0);
    }
}
