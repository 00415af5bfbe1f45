//! Keepalive pings: when to send the next one and when an unanswered one
//! means the peer is gone.
//!
//! Go's yamux waits `KeepAliveInterval`, sends a Ping(SYN) with an id that
//! counts up from 0, and waits up to `ConnectionWriteTimeout` for the
//! matching Ping(ACK). The next interval starts only after the answer. So at
//! most one of our pings is in flight, and any other traffic does not count
//! as a sign of life. We do the same, with the clock passed in.

use std::time::{Duration, Instant};

/// Our side of the keepalive exchange.
#[derive(Debug)]
pub(crate) struct Keepalive {
    /// `None` when keepalives are off.
    interval: Option<Duration>,
    timeout: Duration,
    /// When the next ping is due, if none is in flight.
    next_ping: Option<Instant>,
    /// The ping in flight: its id and the moment it counts as lost.
    outstanding: Option<(u32, Instant)>,
    /// Id for the next ping.
    next_id: u32,
    /// When the ping in flight went out (None once deferred).
    sent: Option<Instant>,
}

/// What [`Keepalive::poll`] decided.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum KeepaliveAction {
    /// Nothing to do yet.
    Idle,
    /// Send a Ping(SYN) with this id now.
    SendPing(u32),
    /// The ping in flight was not answered in time.
    TimedOut,
}

impl Keepalive {
    /// Starts the schedule at `now`: the first ping goes out one interval
    /// later.
    pub(crate) fn new(interval: Option<Duration>, timeout: Duration, now: Instant) -> Self {
        Keepalive {
            interval,
            timeout,
            next_ping: interval.and_then(|i| now.checked_add(i)),
            outstanding: None,
            next_id: 0,
            sent: None,
        }
    }

    /// Decides what is due at `now`.
    pub(crate) fn poll(&mut self, now: Instant) -> KeepaliveAction {
        if let Some((_, deadline)) = self.outstanding {
            return if now >= deadline {
                KeepaliveAction::TimedOut
            } else {
                KeepaliveAction::Idle
            };
        }
        match self.next_ping {
            Some(due) if now >= due => {
                let id = self.next_id;
                self.next_id = self.next_id.wrapping_add(1);
                self.next_ping = None;
                self.sent = Some(now);
                // An unrepresentable deadline (absurd timeout) means "never".
                match now.checked_add(self.timeout) {
                    Some(deadline) => self.outstanding = Some((id, deadline)),
                    None => self.outstanding = None,
                }
                KeepaliveAction::SendPing(id)
            }
            _ => KeepaliveAction::Idle,
        }
    }

    /// A Ping(ACK) with `id` arrived at `now`. Answers to pings that already
    /// timed out, or that we never sent, are ignored, as in Go. Returns the
    /// round trip of an answered ping (unless it was deferred meanwhile).
    pub(crate) fn on_ack(&mut self, id: u32, now: Instant) -> Option<Duration> {
        let (pending, deadline) = self.outstanding?;
        if pending != id {
            return None;
        }
        self.outstanding = None;
        self.next_ping = self.interval.and_then(|i| now.checked_add(i));
        let sent = std::mem::take(&mut self.sent)?;
        debug_assert!(deadline >= sent);
        Some(now.saturating_duration_since(sent))
    }

    /// The driver is not reading on purpose: an outstanding ping's deadline
    /// restarts at `now` (its answer may be in the unread bytes), and its
    /// round trip no longer measures the path.
    pub(crate) fn defer(&mut self, now: Instant) {
        if let Some((id, _)) = self.outstanding {
            if let Some(deadline) = now.checked_add(self.timeout) {
                self.outstanding = Some((id, deadline));
                self.sent = None;
            }
        }
    }

    /// When [`Keepalive::poll`] next has something to do.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        match self.outstanding {
            Some((_, deadline)) => Some(deadline),
            None => self.next_ping,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ping_ack_cycle() {
        let start = Instant::now();
        let sec = Duration::from_secs(1);
        let mut keepalive = Keepalive::new(Some(30 * sec), 10 * sec, start);
        assert_eq!(keepalive.next_deadline(), Some(start + 30 * sec));
        assert_eq!(keepalive.poll(start + 29 * sec), KeepaliveAction::Idle);
        assert_eq!(
            keepalive.poll(start + 30 * sec),
            KeepaliveAction::SendPing(0)
        );
        assert_eq!(keepalive.next_deadline(), Some(start + 40 * sec));
        // A stray answer changes nothing.
        keepalive.on_ack(5, start + 31 * sec);
        assert_eq!(keepalive.next_deadline(), Some(start + 40 * sec));
        keepalive.on_ack(0, start + 31 * sec);
        assert_eq!(keepalive.next_deadline(), Some(start + 61 * sec));
        assert_eq!(
            keepalive.poll(start + 61 * sec),
            KeepaliveAction::SendPing(1)
        );
        assert_eq!(keepalive.poll(start + 70 * sec), KeepaliveAction::Idle);
        assert_eq!(keepalive.poll(start + 71 * sec), KeepaliveAction::TimedOut);
    }

    #[test]
    fn disabled() {
        let start = Instant::now();
        let mut keepalive = Keepalive::new(None, Duration::from_secs(10), start);
        assert_eq!(keepalive.next_deadline(), None);
        assert_eq!(
            keepalive.poll(start + Duration::from_secs(3600)),
            KeepaliveAction::Idle
        );
    }
}
