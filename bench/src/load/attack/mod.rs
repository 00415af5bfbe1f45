//! Attacks on a server's memory: how much resident memory a client that
//! breaks no rule the server checks can make the server hold, while the
//! attack lasts and after the attacker has gone.
//!
//! Every attack has the same phases, in this order:
//!
//! 1. **before** — [`RssWatch::start`] resets the server's VmHWM, reads its
//!    VmRSS, and from then on samples it every 100 ms.
//! 2. **open** — the attack opens its connections and sends what it sends;
//!    it stops opening more if the server's RSS passes a ceiling (half the
//!    memory available when the watch started), so that a server that
//!    gives in does not take the machine with it.
//! 3. **hold** — the attack keeps everything open for a while, and a
//!    legitimate client logs in meanwhile ([`LoginProbe`]): a server that
//!    survives an attack by refusing everyone has not survived it.
//! 4. **close** — every socket closes with a reset; every wait on the
//!    server has a time limit, so a server that misbehaves cannot keep an
//!    attack from ending.
//! 5. **after** — [`RssWatch::finish`] waits, reads VmRSS once more and
//!    reports before, peak (the larger of the samples and VmHWM) and after.
//!
//! The attacks:
//!
//! - [`preauth_streams`]: yamux sessions that open thousands of streams
//!   and never log in.
//! - [`stalled_conns`]: thousands of connections that send nothing, or one
//!   byte, and stop.
//! - [`slow_reader`]: a logged-in client whose users never read, while the
//!   client writes towards them as fast as the server takes it.
//! - [`ping_flood`]: a logged-in client that sends Pings as fast as it can
//!   and never reads the answers.
//!
//! And what they share: [`watch`] (the server's memory), [`probe`] (the
//! legitimate login), [`dial`] (the attacker's sockets, from an address of
//! their own) and [`raw_control`] (a control connection driven by hand,
//! for the attacker that never reads).

use crate::client::ClientOpts;
use std::net::SocketAddr;
use std::time::Duration;

pub mod dial;
pub mod ping_flood;
pub mod preauth_streams;
pub mod probe;
pub mod raw_control;
pub mod slow_reader;
pub mod stalled_conns;
pub mod watch;

pub use probe::{LoginCheck, LoginProbe};
pub use watch::{Footprint, RssWatch};

/// The server under attack.
#[derive(Debug, Clone)]
pub struct Target {
    /// Its frp bind port.
    pub frp: SocketAddr,
    /// auth.token.
    pub token: String,
    /// Whether its clients log in with TLS.
    pub tls: bool,
    /// Whether its clients log in with yamux (tcpMux).
    pub mux: bool,
    /// The server process, whose memory is measured.
    pub pid: u32,
}

impl Target {
    /// A client's settings for this server: its transport, no pooled work
    /// connections, and `timeout` on each step of the login.
    pub fn client_opts(&self, timeout: Duration) -> ClientOpts {
        let mut o = ClientOpts::new(self.frp, &self.token);
        o.tls = self.tls;
        o.mux = self.mux;
        o.pool_count = 0;
        o.timeout = Some(timeout);
        // Like frpc: without tcpMux, app-level pings keep the session alive.
        o.heartbeat = (!self.mux).then_some(Duration::from_secs(30));
        o
    }
}

/// The phases' lengths, and where an attack stops for the machine's sake.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// How long everything stays open once the attack is in place.
    pub hold: Duration,
    /// How long after the attacker has gone the last RSS is read.
    pub after: Duration,
    /// Server VmRSS (KiB) at which an attack stops opening more.
    pub ceiling_kib: u64,
}

impl Timing {
    /// `hold` and `after`, with the ceiling at half the memory available
    /// now.
    pub fn new(hold: Duration, after: Duration) -> Timing {
        Timing {
            hold,
            after,
            ceiling_kib: watch::default_ceiling_kib(),
        }
    }
}

/// A unit test's target and timing: a plain yamux listener of the test's
/// own at `frp` (this process stands in for the server), a 300 ms hold and
/// no ceiling.
#[cfg(test)]
pub(crate) fn test_setup(frp: SocketAddr) -> (Target, Timing) {
    let target = Target {
        frp,
        token: "t".into(),
        tls: false,
        mux: true,
        pid: std::process::id(),
    };
    let timing = Timing {
        hold: Duration::from_millis(300),
        after: Duration::ZERO,
        ceiling_kib: u64::MAX,
    };
    (target, timing)
}

/// Waits out the hold while a legitimate client logs in; returns early when
/// the server's RSS passes the ceiling.
pub(crate) fn hold(target: &Target, timing: &Timing, watch: &RssWatch) -> LoginCheck {
    let probe = LoginProbe::start(target, Duration::ZERO);
    let end = std::time::Instant::now() + timing.hold;
    while std::time::Instant::now() < end && !watch.over_ceiling() {
        std::thread::sleep(Duration::from_millis(50));
    }
    probe.finish()
}
