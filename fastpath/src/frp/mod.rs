//! The frp server: a connection's life from its first bytes ([`accept`])
//! to a session ([`control`]) and its public ports ([`proxy`]); the
//! connections frpc opens for users reach the session's pool through
//! [`work_conns`]; frp messages over any transport are read and written by
//! [`msgio`]. Virtual hosts (`vhostHTTPSPort`) are routed by [`vhost`]; a
//! `udp` proxy's datagrams travel as messages on one work connection
//! ([`udp`]). Visitors of secret proxies (`stcp`, `sudp`) are joined to
//! them by [`visitor`]; [`xtcp`] introduces two frpc that punch a path
//! of their own.

pub mod accept;
pub mod control;
pub mod domains;
pub mod http;
pub mod msgio;
pub mod proxy;
pub mod spread;
pub mod targets;
pub mod udp;
pub mod vhost;
pub mod visitor;
pub mod work_conns;
pub mod xtcp;
