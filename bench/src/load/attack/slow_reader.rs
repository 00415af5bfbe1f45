//! Users who never read: a client logs in (as the system's own client
//! does: the bench client, tcpMux as configured) and registers one TCP
//! proxy to a local source that writes `bytes_per_user` to each connection.
//! Then `users` connections to the proxy's public port open from the
//! attacker's address and never read. For each, the server asks for a work
//! connection, the client answers it, and the source's bytes flow towards a
//! user who does not take them: whatever the kernel's socket buffers do not
//! hold, the server holds, or it stops reading the work connection (with
//! tcpMux: stops granting the stream window), as a careful server does.
//!
//! The fill ends when every byte is written, when no byte has moved for a
//! second, or after a time limit.

use super::{dial, hold, LoginCheck, RssWatch, Target, Timing};
use crate::backend::Backend;
use crate::client::Client;
use serde::Serialize;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// How many users, how much towards each.
#[derive(Debug, Clone, Copy)]
pub struct SlowReaderOpts {
    /// User connections that never read.
    pub users: usize,
    /// Bytes the client side writes towards each.
    pub bytes_per_user: u64,
    /// The fill ends after this long without a byte moving.
    pub stall: Duration,
    /// The fill ends after this long in any case.
    pub fill_limit: Duration,
    /// Limit on the login, the proxy's registration and each connect.
    pub timeout: Duration,
}

/// Outcome of one slow-reader run.
#[derive(Debug, Clone, Serialize)]
pub struct SlowReaderResult {
    pub users: usize,
    pub bytes_per_user: u64,
    /// User connections that opened.
    pub users_connected: u64,
    /// Work connections the client opened for them.
    pub work_conns: u64,
    /// Bytes the client side wrote towards the users (what the server and
    /// the kernel's buffers took, give or take a small socket buffer per
    /// connection).
    pub bytes_written: u64,
    /// Seconds from the first user connection to the end of the fill.
    pub fill_s: f64,
    /// Whether the fill ended because nothing moved any more (rather than
    /// because everything was written, or the time limit).
    pub stalled: bool,
    /// The first user connection error.
    pub first_error: Option<String>,
    #[serde(flatten)]
    pub memory: super::Footprint,
    #[serde(flatten)]
    pub login: LoginCheck,
}

/// Runs the attack against `target` and measures it (see the module docs).
/// Fails if the server's memory cannot be read, or the client cannot log
/// in or register its proxy.
pub fn run(target: &Target, timing: &Timing, opts: SlowReaderOpts) -> io::Result<SlowReaderResult> {
    let watch = RssWatch::start(target.pid, timing.ceiling_kib)?;
    let source = Backend::source_limited(opts.bytes_per_user)?;
    let client = Client::login(target.client_opts(opts.timeout))
        .map_err(|e| io::Error::other(format!("attacker's login: {e}")))?;
    // Ends the client's session (and its threads) however this returns.
    let client = KillOnDrop(client);
    let port = crate::proc::free_port();
    let tag: u32 = rand::random();
    client
        .0
        .add_plain_proxy(&format!("slow-{tag:08x}"), port, source.addr())
        .map_err(|e| io::Error::other(format!("attacker's proxy: {e}")))?;
    let public = SocketAddr::from(([127, 0, 0, 1], port));
    let start = Instant::now();
    let mut users = Vec::with_capacity(opts.users);
    let mut first_error = None;
    for _ in 0..opts.users {
        // Opening shares the fill's time limit: a server that stops
        // accepting makes every connect wait out its timeout.
        if watch.over_ceiling() || start.elapsed() > opts.fill_limit {
            break;
        }
        match dial::connect(public, opts.timeout) {
            Ok(s) => users.push(s),
            Err(e) => {
                first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    let all = opts.bytes_per_user * users.len() as u64;
    let (mut last, mut moved_at) = (0u64, Instant::now());
    let stalled = loop {
        std::thread::sleep(Duration::from_millis(100));
        let now = source.bytes();
        if now != last {
            (last, moved_at) = (now, Instant::now());
        }
        if now >= all || watch.over_ceiling() || start.elapsed() > opts.fill_limit {
            break false;
        }
        if moved_at.elapsed() >= opts.stall {
            break true;
        }
    };
    let fill_s = start.elapsed().as_secs_f64();
    let login = hold(target, timing, &watch);
    let work_conns = client.0.work_conns();
    let users_connected = users.len() as u64;
    let bytes_written = source.bytes();
    drop(client);
    drop(users);
    drop(source);
    let memory = watch.finish(timing.after);
    Ok(SlowReaderResult {
        users: opts.users,
        bytes_per_user: opts.bytes_per_user,
        users_connected,
        work_conns,
        bytes_written,
        fill_s,
        stalled,
        first_error,
        memory,
        login,
    })
}

struct KillOnDrop(Client);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        self.0.kill();
    }
}
