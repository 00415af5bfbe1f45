//! Proxy listening sockets an upgrade's predecessor handed over with the
//! sessions it moved (see [`crate::runtime::upgrade`]), kept until the
//! same proxies of the same sessions register again here.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::runtime::shared::PortTable;

/// User connections accepted on a handed-over socket, with their peers.
type Users = Vec<(std::net::TcpStream, SocketAddr)>;

/// Proxy listening sockets a predecessor handed over with their sessions,
/// waiting (at most the time given to [`Parked::add`]) for the same proxy of the same session
/// (frpc logs in again with its run_id) to register again.
#[derive(Default)]
pub struct Parked {
    ports: parking_lot::Mutex<Vec<ParkedPort>>,
    /// Users of sockets taken, until their proxy's accept loop serves them.
    users: parking_lot::Mutex<Vec<(u16, Users)>>,
}

struct ParkedPort {
    port: u16,
    run_id: String,
    proxy: String,
    listener: std::net::TcpListener,
    until: Instant,
    /// Users the predecessor accepted on it as it handed it over.
    users: Users,
}

impl Parked {
    /// The parked socket of `proxy` of session `run_id` on a port
    /// `allowed` takes (claimed in the port table already).
    pub fn take(
        &self,
        run_id: &str,
        proxy: &str,
        allowed: impl Fn(u16) -> bool,
    ) -> Option<(u16, std::net::TcpListener)> {
        let mut ports = self.ports.lock();
        let at = ports
            .iter()
            .position(|p| p.run_id == run_id && p.proxy == proxy && allowed(p.port))?;
        let p = ports.swap_remove(at);
        tracing::info!(
            port = p.port,
            proxy_name = proxy,
            session = run_id,
            "proxy registered again on its handed-over socket"
        );
        if !p.users.is_empty() {
            self.users.lock().push((p.port, p.users));
        }
        Some((p.port, p.listener))
    }

    /// The users handed over with `port`'s socket, for the proxy that took
    /// it to serve.
    pub fn users(&self, port: u16) -> Users {
        let mut all = self.users.lock();
        match all.iter().position(|(p, _)| *p == port) {
            Some(at) => all.swap_remove(at).1,
            None => Vec::new(),
        }
    }

    /// A proxy's socket handed over, kept for `for_`.
    pub fn add(
        &self,
        port: u16,
        run_id: String,
        proxy: String,
        listener: std::net::TcpListener,
        for_: Duration,
    ) {
        self.ports.lock().push(ParkedPort {
            port,
            run_id,
            proxy,
            listener,
            until: Instant::now() + for_,
            users: Vec::new(),
        });
    }

    /// A user the predecessor accepted on `port` as it handed it over.
    pub fn add_user(&self, port: u16, user: std::net::TcpStream, peer: SocketAddr) {
        let mut ports = self.ports.lock();
        match ports.iter_mut().find(|p| p.port == port) {
            Some(p) => p.users.push((user, peer)),
            None => {
                tracing::warn!(port, %peer, "a handed-over user connection for a port not waiting here is closed")
            }
        }
    }

    /// Let go of what waited too long: the port (released in `table`) and
    /// its queued users. How many still wait.
    pub fn expire(&self, table: &PortTable) -> usize {
        let now = Instant::now();
        let mut ports = self.ports.lock();
        ports.retain(|p| {
            let keep = p.until > now;
            if !keep {
                tracing::info!(port = p.port, proxy_name = %p.proxy, "handed-over proxy socket closed: its session did not come back");
                table.release(p.port);
            }
            keep
        });
        ports.len()
    }
}
