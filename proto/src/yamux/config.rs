//! Which side of the session we are, and the knobs hashicorp/yamux exposes
//! that matter on the wire.

use std::time::Duration;

use super::stream::INITIAL_WINDOW;

/// Which end of the connection we are; decides the parity of stream ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// The dialing side (frpc): opens odd stream ids 1, 3, 5, …
    Client,
    /// The accepting side (frps): opens even stream ids 2, 4, 6, …
    Server,
}

impl Role {
    /// The first stream id this role allocates.
    pub(crate) const fn first_stream_id(self) -> u32 {
        match self {
            Role::Client => 1,
            Role::Server => 2,
        }
    }

    /// Whether `id` belongs to the ids this role allocates itself.
    pub(crate) const fn owns(self, id: u32) -> bool {
        match self {
            // Bit tests rather than `%`: clippy wants `is_multiple_of`,
            // which is newer than our minimum Rust version.
            Role::Client => id & 1 == 1,
            Role::Server => id != 0 && id & 1 == 0,
        }
    }
}

/// Session settings. Start from [`Config::server`] or [`Config::client`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Which end we are.
    pub role: Role,
    /// Receive window we grant the peer on each stream, in bytes. Values below
    /// [`INITIAL_WINDOW`] are raised to it: the protocol starts every stream
    /// there and can only grow it.
    pub max_stream_window: u32,
    /// How often we send a keepalive Ping; `None` disables keepalives.
    pub keepalive_interval: Option<Duration>,
    /// How long a keepalive Ping may go unanswered before the session fails.
    pub ping_timeout: Duration,
    /// How many inbound streams may wait in the event queue, announced but
    /// not yet polled; a SYN beyond that is answered with RST.
    pub accept_backlog: usize,
    /// Most streams alive at once; an inbound SYN beyond it is answered with
    /// RST (the session itself carries on).
    pub max_streams: usize,
    /// Streams the peer may have open before the application admits the
    /// session ([`Session::admit`](super::Session::admit), e.g. once a Login
    /// on it succeeded); until then each stream gets only the initial
    /// 256 KiB window, and a SYN beyond this count is answered with RST.
    /// 0: no gate, the session is admitted from the start.
    pub pre_auth_streams: usize,
    /// After we half-close a stream, how long we wait for the peer's FIN
    /// before resetting it (Go's `StreamCloseTimeout`); `None` waits forever.
    pub stream_close_timeout: Option<Duration>,
    /// Window auto-tuning: streams open with the initial 256 KiB window and
    /// grow (doubling, up to `max_stream_window`) only while the window is
    /// what limits them, so memory follows the bandwidth-delay product in
    /// use rather than the stream count. Off: every stream is granted
    /// `max_stream_window` when it opens, as Go does.
    pub window_autotune: bool,
    /// With auto-tuning, the most window all streams of the session together
    /// may hold above their initial 256 KiB (the driver may lower it further
    /// with [`Session::set_window_allowance`](super::Session::set_window_allowance)).
    pub session_window_budget: u64,
}

impl Config {
    /// frp's settings (6 MiB windows, 30 s keepalive, 10 s ping deadline)
    /// with a backlog and stream limit sized for a server carrying many
    /// pooled work connections per client, and auto-tuned windows within a
    /// 32 MiB session budget.
    pub fn server() -> Self {
        Config {
            role: Role::Server,
            max_stream_window: 6 * 1024 * 1024,
            keepalive_interval: Some(Duration::from_secs(30)),
            ping_timeout: Duration::from_secs(10),
            accept_backlog: 4096,
            max_streams: 65536,
            pre_auth_streams: 0,
            stream_close_timeout: Some(Duration::from_secs(5 * 60)),
            window_autotune: true,
            session_window_budget: 32 * 1024 * 1024,
        }
    }

    /// The settings frpc itself runs with (Go's defaults plus frp's 6 MiB
    /// window, granted in full when a stream opens); used mostly by tests
    /// that play frpc.
    pub fn client() -> Self {
        Config {
            role: Role::Client,
            accept_backlog: 256,
            window_autotune: false,
            session_window_budget: u64::MAX,
            ..Config::server()
        }
    }

    /// The window actually granted: `max_stream_window`, but never below
    /// [`INITIAL_WINDOW`] (Go rejects such configs; we round up instead).
    pub(crate) fn effective_max_window(&self) -> u32 {
        self.max_stream_window.max(INITIAL_WINDOW)
    }
}
