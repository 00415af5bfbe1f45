//! Messages between workers.
//!
//! The only cross-thread traffic in the fastpath: a connection that landed
//! on the wrong worker moves to its owner as a file descriptor (plus, for
//! TLS, the rustls session state), a plain relay moves to a less busy
//! worker as two, and a session that was replaced on another worker is
//! told to close. Bytes cross threads only through the
//! [`bridge`](crate::transport::bridge) of a visitor whose proxy lives on
//! another worker.

use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd};

use monoio::net::TcpStream;
use proto::msg::NewWorkConn;

/// A message to a worker's inbox.
pub enum WorkerMsg {
    /// A non-multiplexed work connection for a session this worker owns.
    WorkConn(Box<MovedConn>),
    /// A connection on a vhost port for a proxy of a session this worker
    /// owns, with what was read of it to route it.
    VhostConn(Box<MovedVhost>),
    /// A plain relay to run for a session of worker `owner`
    /// ([`crate::frp::spread`]).
    Relay(Box<MovedRelay>),
    /// End the relay this worker runs under `key` (its proxy was closed by
    /// policy, or its session ended).
    AbortRelay { key: u64 },
    /// The relay this worker handed over under `key` has ended.
    RelayDone { key: u64 },
    /// An authenticated mesh node for a network this worker serves.
    MeshConn(Box<MovedMesh>),
    /// Mesh frames for a link this worker holds (`relay` ≠ 0) or for nodes
    /// it serves (`relay` = 0): whole seed frames back to back.
    MeshFrames { relay: u32, frames: Vec<u8> },
    /// A visitor of a secret proxy whose session this worker owns: the
    /// far end of the bridge to relay with a work connection.
    Visitor(Box<MovedVisitor>),
    /// xtcp: hand the owner of `proxy` (control `control_id` here) the
    /// attempt's sid on a work connection.
    XtcpSid {
        control_id: u64,
        proxy: String,
        sid: String,
    },
    /// Send `msg` on the control with this id, after `delay_ms` (the
    /// xtcp broker's answers).
    ControlMsg {
        control_id: u64,
        msg: Box<proto::msg::Message>,
        delay_ms: u64,
    },
    /// Close the control with this id (its run_id was taken over by a
    /// new login elsewhere).
    Kick { control_id: u64 },
    /// A new policy table is in force: end the sessions it no longer
    /// allows, then report the generation as applied.
    PolicyChanged { generation: u64 },
    /// A successor took the listening sockets over: stop accepting,
    /// serve the live sessions on.
    Drain,
    /// The process is stopping: close everything.
    Stop,
}

/// A connection in transit between workers.
pub struct MovedConn {
    /// The socket, detached from the sending worker's runtime.
    pub socket: std::net::TcpStream,
    /// TLS session state when the connection is TLS, with whatever was
    /// read from the socket and not yet used.
    pub tls: Option<crate::transport::tls::TlsState>,
    /// What it offered to be.
    pub offer: WorkConnOffer,
}

/// A user connection and its work connection, both plain TCP, in transit
/// to the worker that relays them for their session's worker.
pub struct MovedRelay {
    /// The user's connection, detached.
    pub user: std::net::TcpStream,
    /// The work connection to frpc, detached.
    pub work: std::net::TcpStream,
    /// What was read of the user's connection, to go to frpc first.
    pub pending: Vec<u8>,
    /// The relay's options.
    pub opts: crate::relay::RelayOpts,
    /// The proxy's bandwidth limits.
    pub limits: crate::policy::tenants::Limits,
    /// The proxy's byte counters.
    pub bytes: std::sync::Arc<[std::sync::atomic::AtomicU64; 2]>,
    /// The worker that owns the session, told when the relay ends.
    pub owner: usize,
    /// The relay's name on both workers.
    pub key: u64,
}

/// A mesh connection in transit to its home worker: a node's to its
/// network's, a relay link's to the worker that serves that relay.
pub struct MovedMesh {
    /// The socket, detached from the sending worker's runtime.
    pub socket: std::net::TcpStream,
    /// TLS session state, when it is TLS.
    pub tls: Option<crate::transport::tls::TlsState>,
    /// Plaintext read past the AUTH_REQUEST.
    pub pending: Vec<u8>,
    /// Who it is.
    pub auth: crate::mesh::nodes::MeshAuth,
    /// Its address.
    pub peer: std::net::SocketAddr,
}

/// A vhost connection in transit between workers.
pub struct MovedVhost {
    /// The socket, detached from the sending worker's runtime.
    pub socket: std::net::TcpStream,
    /// TLS session state, when the edge terminated TLS on it.
    pub tls: Option<crate::transport::tls::TlsState>,
    /// What was read to route it (a ClientHello), to go to frpc first;
    /// on the http port, the request it was routed by and what followed.
    pub pending: Vec<u8>,
    /// The user's address.
    pub peer: SocketAddr,
    /// The route it matched.
    pub target: crate::frp::targets::VhostTarget,
}

/// A visitor's far end, in transit to the proxy's worker.
pub struct MovedVisitor {
    /// The proxy's full name.
    pub proxy: String,
    /// The control of its session.
    pub control_id: u64,
    /// The bridge end to relay with a work connection.
    pub end: crate::transport::bridge::BridgeEnd,
    /// The visitor's address (StartWorkConn's source).
    pub peer: SocketAddr,
}

/// What a work connection said about itself, apart from the connection.
pub struct WorkConnOffer {
    /// Plaintext already read past the first message (normally empty).
    pub pending: Vec<u8>,
    /// The NewWorkConn that identified it.
    pub msg: NewWorkConn,
    /// The wire protocol it speaks.
    pub wire: crate::frp::msgio::Wire,
    /// The client's address.
    pub peer: SocketAddr,
}

/// Detach a monoio socket from this worker so it can move to another.
pub fn detach(stream: TcpStream) -> std::net::TcpStream {
    let fd = stream.into_raw_fd();
    // SAFETY: we own `fd`: into_raw_fd released it from monoio.
    unsafe { std::net::TcpStream::from_raw_fd(fd) }
}
