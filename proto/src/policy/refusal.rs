//! Refusals: why a login, a proxy or a live session was turned away.
//!
//! A [`Refusal`] carries a [`RefusalKind`] (a small stable code, counted by
//! the slowpath and written into events, the audit log and the API) and the
//! detail frpc's user reads. Where frpc users know frps's words ("port
//! already used", "proxy \[x\] already exists", "token in login doesn't match
//! token from configuration", ...) the detail keeps them; the constructors
//! here are the one place each shared wording is spelt.

use std::fmt;

use super::InviteId;
use crate::ticket::TicketError;

macro_rules! refusal_kinds {
    ($($(#[$doc:meta])* $variant:ident = $code:literal, $name:literal;)*) => {
        /// What kind of refusal, as a stable code: the number goes into
        /// event records, the name ([`RefusalKind::as_str`]) into counters,
        /// audit rows and the API. Numbers and names are never reused.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u8)]
        pub enum RefusalKind {
            $($(#[$doc])* $variant = $code,)*
        }

        impl RefusalKind {
            /// Every kind, in code order.
            pub const ALL: &'static [RefusalKind] = &[$(RefusalKind::$variant,)*];

            /// The stable snake_case name.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(RefusalKind::$variant => $name,)*
                }
            }

            /// The kind with this code; None for a code this build does not know.
            pub fn from_u8(code: u8) -> Option<RefusalKind> {
                match code {
                    $($code => Some(RefusalKind::$variant),)*
                    _ => None,
                }
            }
        }
    };
}

refusal_kinds! {
    // Logins.
    /// The Login's privilege key matches neither the node's token nor a
    /// tenant's (also NewWorkConn under `auth.additionalScopes`).
    TokenMismatch = 1, "token_mismatch";
    /// The Login's `metas` are over their cap.
    LoginMetas = 2, "login_metas";
    /// The fastpath has no table from its control plane yet.
    NoPolicy = 3, "no_policy";
    /// Too many logins with far-off timestamps are being checked at once.
    ServerBusy = 4, "server_busy";
    /// A token-only login on a private node (or the node became private).
    PrivateNode = 5, "private_node";
    /// The ticket is malformed, its signature or issuer is wrong, or it
    /// names no invite id.
    TicketInvalid = 6, "ticket_invalid";
    /// The ticket is signed by a key the node does not know.
    TicketUnknownKey = 7, "ticket_unknown_key";
    /// The ticket has expired or is not valid yet.
    TicketExpired = 8, "ticket_expired";
    /// The ticket was issued for another node.
    TicketWrongNode = 9, "ticket_wrong_node";
    /// The ticket's invite is not (or no longer) on this node.
    InviteUnknown = 10, "invite_unknown";
    /// The ticket's invite was revoked.
    InviteRevoked = 11, "invite_revoked";
    /// The invite's concurrent sessions are at `max_conns`.
    InviteMaxConns = 12, "invite_max_conns";
    /// A tenant token of another region.
    TokenWrongRegion = 13, "token_wrong_region";
    /// A disabled tenant token.
    TokenDisabled = 14, "token_disabled";
    /// A tenant token whose traffic quota is used up (and closes).
    TokenOverQuota = 15, "token_over_quota";
    /// A tenant token that was deleted.
    TokenDeleted = 16, "token_deleted";
    // Proxies.
    /// A NewProxy that cannot be served as sent (empty name, port out of
    /// range, bad bandwidth settings).
    InvalidProxy = 17, "invalid_proxy";
    /// The proxy type is not allowed by the node or the invite.
    TypeNotAllowed = 18, "type_not_allowed";
    /// The proxy type (or visitor) is not implemented by this server.
    TypeNotSupported = 19, "type_not_supported";
    /// The remote port is outside the ports allowed to the session.
    PortNotAllowed = 20, "port_not_allowed";
    /// The remote port is held by another proxy.
    PortAlreadyUsed = 21, "port_already_used";
    /// The remote port cannot be bound.
    PortUnavailable = 22, "port_unavailable";
    /// No free port is left to pick.
    NoAvailablePort = 23, "no_available_port";
    /// The session holds its cap of ports (`maxPortsPerClient`).
    MaxPortsPerClient = 24, "max_ports_per_client";
    /// A token-only session holds its cap of proxies.
    MaxProxiesPerSession = 25, "max_proxies_per_session";
    /// The invite's proxies are at `max_proxies`.
    InviteMaxProxies = 26, "invite_max_proxies";
    /// A proxy of that name is registered already.
    ProxyExists = 27, "proxy_exists";
    /// A virtual-host route (domain, location, user) another proxy holds.
    RouteConflict = 28, "route_conflict";
    /// A virtual-host domain outside the invite's `domain_suffix`.
    DomainNotAllowed = 29, "domain_not_allowed";
}

impl fmt::Display for RefusalKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refused login, proxy or session: what kind, the words frpc's user
/// reads, and the invite concerned when there is one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// What kind (counted, written into events and audit rows).
    pub kind: RefusalKind,
    /// What the user reads (LoginResp / NewProxyResp error, close reason).
    pub detail: String,
    /// The invite concerned (the ticket's), if known.
    pub invite: Option<InviteId>,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.detail)
    }
}

impl std::error::Error for Refusal {}

impl From<TicketError> for Refusal {
    fn from(e: TicketError) -> Refusal {
        let kind = match e {
            TicketError::Malformed(_) | TicketError::BadSignature | TicketError::WrongIssuer => {
                RefusalKind::TicketInvalid
            }
            TicketError::UnknownKey => RefusalKind::TicketUnknownKey,
            TicketError::Expired | TicketError::NotYetValid => RefusalKind::TicketExpired,
            TicketError::WrongNode => RefusalKind::TicketWrongNode,
        };
        Refusal::new(kind, e.to_string())
    }
}

impl Refusal {
    /// A refusal of `kind` that reads `detail`.
    pub fn new(kind: RefusalKind, detail: impl Into<String>) -> Refusal {
        Refusal {
            kind,
            detail: detail.into(),
            invite: None,
        }
    }

    /// The same refusal, concerning `invite`.
    pub fn with_invite(mut self, invite: Option<InviteId>) -> Refusal {
        self.invite = invite;
        self
    }

    /// frps: a Login whose privilege key no token explains.
    pub fn token_mismatch() -> Refusal {
        Refusal::new(
            RefusalKind::TokenMismatch,
            "token in login doesn't match token from configuration",
        )
    }

    /// frps: a NewWorkConn whose privilege key does not match the session's token.
    pub fn work_conn_token_mismatch() -> Refusal {
        Refusal::new(
            RefusalKind::TokenMismatch,
            "token in NewWorkConn doesn't match token from configuration",
        )
    }

    /// No table from the control plane yet.
    pub fn no_policy() -> Refusal {
        Refusal::new(
            RefusalKind::NoPolicy,
            "the node has no policy from its control plane yet; retry shortly",
        )
    }

    /// Too many logins with far-off timestamps are being checked at once.
    pub fn server_busy() -> Refusal {
        Refusal::new(
            RefusalKind::ServerBusy,
            "the server is busy checking logins whose timestamp is far from its clock; retry shortly",
        )
    }

    /// frps: a second proxy of the same name.
    pub fn proxy_exists(name: &str) -> Refusal {
        Refusal::new(
            RefusalKind::ProxyExists,
            format!("proxy [{name}] already exists"),
        )
    }

    /// frps: `remotePort` outside the server's `allowPorts`.
    pub fn port_not_allowed() -> Refusal {
        Refusal::new(RefusalKind::PortNotAllowed, "port not allowed")
    }

    /// frps: `remotePort` held by another proxy.
    pub fn port_already_used() -> Refusal {
        Refusal::new(RefusalKind::PortAlreadyUsed, "port already used")
    }

    /// frps: `remotePort` cannot be bound (frps stops at "port unavailable";
    /// the OS's reason follows it here).
    pub fn port_unavailable(why: impl fmt::Display) -> Refusal {
        Refusal::new(
            RefusalKind::PortUnavailable,
            format!("port unavailable: {why}"),
        )
    }

    /// frps: no free port left to pick for `remotePort = 0`.
    pub fn no_available_port() -> Refusal {
        Refusal::new(RefusalKind::NoAvailablePort, "no available port")
    }

    /// frps: the server's `maxPortsPerClient` is reached.
    pub fn max_ports_per_client() -> Refusal {
        Refusal::new(
            RefusalKind::MaxPortsPerClient,
            "exceed the max_ports_per_client",
        )
    }

    /// A proxy type this server does not implement (yet).
    pub fn type_not_supported(name: &str) -> Refusal {
        Refusal::new(
            RefusalKind::TypeNotSupported,
            format!("proxy type [{name}] is not supported by this server yet"),
        )
    }

    /// frps: a virtual-host route another proxy holds ("router config
    /// conflict"); the domain follows.
    pub fn route_conflict(domain: &str) -> Refusal {
        Refusal::new(
            RefusalKind::RouteConflict,
            format!("router config conflict: {domain}"),
        )
    }

    /// A NewProxy that cannot be served as sent.
    pub fn invalid_proxy(detail: impl Into<String>) -> Refusal {
        Refusal::new(RefusalKind::InvalidProxy, detail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_names_are_unique_and_round_trip() {
        let mut names = std::collections::HashSet::new();
        for (i, &k) in RefusalKind::ALL.iter().enumerate() {
            // Codes are dense from 1, so ALL is in code order with no gaps.
            assert_eq!(k as u8 as usize, i + 1);
            assert_eq!(RefusalKind::from_u8(k as u8), Some(k));
            let name = k.as_str();
            assert!(names.insert(name), "{name} twice");
            assert!(
                name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{name} is not snake_case"
            );
            assert_eq!(k.to_string(), name);
        }
        assert_eq!(RefusalKind::from_u8(0), None);
        assert_eq!(RefusalKind::from_u8(RefusalKind::ALL.len() as u8 + 1), None);
    }

    #[test]
    fn display_is_the_detail_and_ticket_errors_keep_their_words() {
        let r = Refusal::proxy_exists("u.web").with_invite(Some(InviteId::from_u128(1)));
        assert_eq!(r.to_string(), "proxy [u.web] already exists");
        assert_eq!(r.kind, RefusalKind::ProxyExists);
        assert_eq!(r.invite, Some(InviteId::from_u128(1)));
        let cases = [
            (TicketError::Malformed("x"), RefusalKind::TicketInvalid),
            (TicketError::BadSignature, RefusalKind::TicketInvalid),
            (TicketError::WrongIssuer, RefusalKind::TicketInvalid),
            (TicketError::UnknownKey, RefusalKind::TicketUnknownKey),
            (TicketError::Expired, RefusalKind::TicketExpired),
            (TicketError::NotYetValid, RefusalKind::TicketExpired),
            (TicketError::WrongNode, RefusalKind::TicketWrongNode),
        ];
        for (e, kind) in cases {
            let words = e.to_string();
            let r = Refusal::from(e);
            assert_eq!((r.kind, r.detail.as_str()), (kind, words.as_str()));
        }
    }
}
