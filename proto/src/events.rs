//! Typed events the data plane reports to the control plane, and their
//! compact binary form (what goes through a [`crate::ring::Ring`]).
//!
//! Record: `ts_ms u64, worker u16, kind u8`, then the kind's fields in
//! order. Strings are `u16 length + UTF-8`, an optional invite is `u8 flag`
//! (+16 bytes), numbers are little-endian. New kinds get new numbers; a
//! decoder meeting a kind it does not know says so instead of guessing.
//!
//! The four kinds that can be refusals (session.close, proxy.rejected,
//! proxy.closed, auth.failed) end with the [`RefusalKind`] code as one more
//! byte when they are one. Records from fastpaths that predate refusal
//! kinds lack it and decode with `refusal: None`; a decoder from before
//! them reads the byte as trailing and says so. proxy.registered ends, the
//! same way, with the domains of a vhost proxy (one string, comma-separated)
//! when it has any.

use crate::policy::{InviteId, RefusalKind};

/// Something that happened on a worker that the control plane records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A frpc logged in.
    SessionOpen {
        /// frp run id.
        run_id: String,
        /// The invite whose ticket it used, if any.
        invite: Option<InviteId>,
        /// Login's `user`.
        user: String,
        /// frpc version.
        version: String,
        /// Client address.
        peer: String,
    },
    /// A session ended.
    SessionClose {
        /// frp run id.
        run_id: String,
        /// The session's invite.
        invite: Option<InviteId>,
        /// Why it ended.
        reason: String,
        /// The refusal's kind when the policy ended it.
        refusal: Option<RefusalKind>,
    },
    /// A proxy was registered.
    ProxyRegistered {
        /// Owning session.
        run_id: String,
        /// The session's invite.
        invite: Option<InviteId>,
        /// Proxy name.
        proxy: String,
        /// Proxy type.
        proxy_type: String,
        /// Public port (0: a vhost proxy).
        remote_port: u16,
        /// A vhost proxy's domains (customDomains and subdomain).
        domains: Vec<String>,
    },
    /// A proxy was refused.
    ProxyRejected {
        /// Owning session.
        run_id: String,
        /// The session's invite.
        invite: Option<InviteId>,
        /// Proxy name.
        proxy: String,
        /// Proxy type.
        proxy_type: String,
        /// Why.
        reason: String,
        /// The refusal's kind (None only from fastpaths before kinds).
        refusal: Option<RefusalKind>,
    },
    /// A proxy went away.
    ProxyClosed {
        /// Owning session.
        run_id: String,
        /// The session's invite.
        invite: Option<InviteId>,
        /// Proxy name.
        proxy: String,
        /// Why.
        reason: String,
        /// The refusal's kind when the policy closed it.
        refusal: Option<RefusalKind>,
    },
    /// A login was refused.
    AuthFailed {
        /// Client address.
        peer: String,
        /// The invite the ticket named, if it could be read.
        invite: Option<InviteId>,
        /// Why.
        reason: String,
        /// The refusal's kind (None only from fastpaths before kinds).
        refusal: Option<RefusalKind>,
    },
    /// Bytes a proxy relayed since its previous sample.
    Traffic {
        /// Owning session.
        run_id: String,
        /// The session's invite.
        invite: Option<InviteId>,
        /// Proxy name.
        proxy: String,
        /// Bytes from visitors towards frpc.
        bytes_in: u64,
        /// Bytes from frpc towards visitors.
        bytes_out: u64,
    },
    /// Bytes a tenant's proxy relayed since its previous sample (sessions
    /// logged in with a tenant token). The sample taken when the proxy
    /// closes has `closed` set: nothing more will follow for it, so a
    /// traffic report can send the remainder.
    TenantTraffic {
        /// Owning session.
        run_id: String,
        /// The tenant's token.
        token: String,
        /// Proxy name.
        proxy: String,
        /// Bytes from visitors towards frpc.
        bytes_in: u64,
        /// Bytes from frpc towards visitors.
        bytes_out: u64,
        /// Whether this is the proxy's last sample.
        closed: bool,
    },
    /// A visitor of a secret proxy (stcp, sudp) was joined to it (`reason`
    /// empty) or refused.
    Visitor {
        /// The visitor's session (empty for a pre-0.50 visitor).
        run_id: String,
        /// The invite of the proxy's session.
        invite: Option<InviteId>,
        /// The proxy it asked for.
        proxy: String,
        /// The visitor's address.
        peer: String,
        /// Why it was refused; empty when joined.
        reason: String,
    },
    /// A mesh node's connection to this host's relay began (`up`) or
    /// ended: where the node is, for the controller's SERVER_NODE_LOC.
    MeshNode {
        /// The node.
        node_id: u32,
        /// Its network.
        network_id: u32,
        /// Connected (true) or gone (false).
        up: bool,
    },
}

impl Event {
    /// The audit name of this kind of event.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::SessionOpen { .. } => "session.open",
            Event::SessionClose { .. } => "session.close",
            Event::ProxyRegistered { .. } => "proxy.registered",
            Event::ProxyRejected { .. } => "proxy.rejected",
            Event::ProxyClosed { .. } => "proxy.closed",
            Event::AuthFailed { .. } => "auth.failed",
            Event::Traffic { .. } => "proxy.traffic",
            Event::TenantTraffic { .. } => "tenant.traffic",
            Event::Visitor { reason, .. } if reason.is_empty() => "visitor.connected",
            Event::Visitor { .. } => "visitor.refused",
            Event::MeshNode { up: true, .. } => "mesh.node.up",
            Event::MeshNode { up: false, .. } => "mesh.node.down",
        }
    }

    fn code(&self) -> u8 {
        match self {
            Event::SessionOpen { .. } => 1,
            Event::SessionClose { .. } => 2,
            Event::ProxyRegistered { .. } => 3,
            Event::ProxyRejected { .. } => 4,
            Event::ProxyClosed { .. } => 5,
            Event::AuthFailed { .. } => 6,
            Event::Traffic { .. } => 7,
            Event::TenantTraffic { .. } => 8,
            Event::MeshNode { .. } => 9,
            Event::Visitor { .. } => 10,
        }
    }

    /// The refusal kind this event records, if it records one.
    pub fn refusal(&self) -> Option<RefusalKind> {
        match self {
            Event::SessionClose { refusal, .. }
            | Event::ProxyRejected { refusal, .. }
            | Event::ProxyClosed { refusal, .. }
            | Event::AuthFailed { refusal, .. } => *refusal,
            _ => None,
        }
    }

    /// The invite this event concerns, if any.
    pub fn invite(&self) -> Option<InviteId> {
        match self {
            Event::SessionOpen { invite, .. }
            | Event::SessionClose { invite, .. }
            | Event::ProxyRegistered { invite, .. }
            | Event::ProxyRejected { invite, .. }
            | Event::ProxyClosed { invite, .. }
            | Event::AuthFailed { invite, .. }
            | Event::Traffic { invite, .. }
            | Event::Visitor { invite, .. } => *invite,
            Event::TenantTraffic { .. } | Event::MeshNode { .. } => None,
        }
    }
}

/// An event with where and when it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRecord {
    /// Wall-clock time, ms since the epoch.
    pub ts_ms: u64,
    /// Worker that saw it.
    pub worker: u16,
    /// What happened.
    pub event: Event,
}

/// Why a record could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    /// The record ended early.
    #[error("event record truncated")]
    Truncated,
    /// A kind this build does not know.
    #[error("unknown event kind {0}")]
    UnknownKind(u8),
    /// A string that is not UTF-8.
    #[error("event string is not UTF-8")]
    Utf8,
    /// An invite or closed flag that is neither 0 nor 1.
    #[error("bad flag in event")]
    BadFlag,
    /// Bytes after the last field.
    #[error("trailing bytes after event")]
    Trailing,
    /// A refusal kind this build does not know.
    #[error("unknown refusal kind {0}")]
    UnknownRefusal(u8),
}

struct W<'a>(&'a mut Vec<u8>);

impl W<'_> {
    fn str(&mut self, s: &str) {
        // Longer strings are cut at a char boundary: an event is a record,
        // not a transport.
        let mut end = s.len().min(u16::MAX as usize);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        self.0.extend_from_slice(&(end as u16).to_le_bytes());
        self.0.extend_from_slice(&s.as_bytes()[..end]);
    }
    fn invite(&mut self, i: &Option<InviteId>) {
        match i {
            Some(id) => {
                self.0.push(1);
                self.0.extend_from_slice(&id.0);
            }
            None => self.0.push(0),
        }
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn refusal(&mut self, r: &Option<RefusalKind>) {
        if let Some(k) = r {
            self.0.push(*k as u8);
        }
    }
}

struct R<'a>(&'a [u8]);

impl R<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], EventError> {
        if self.0.len() < n {
            return Err(EventError::Truncated);
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, EventError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, EventError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, EventError> {
        let mut a = [0; 4];
        a.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(a))
    }
    fn u64(&mut self) -> Result<u64, EventError> {
        let mut a = [0; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }
    fn str(&mut self) -> Result<String, EventError> {
        let n = self.u16()? as usize;
        let b = self.take(n)?;
        std::str::from_utf8(b)
            .map(str::to_owned)
            .map_err(|_| EventError::Utf8)
    }
    /// The optional last byte of a kind that can be a refusal.
    fn refusal(&mut self) -> Result<Option<RefusalKind>, EventError> {
        match self.0 {
            [] => Ok(None),
            [code] => {
                let k = RefusalKind::from_u8(*code).ok_or(EventError::UnknownRefusal(*code))?;
                self.0 = &[];
                Ok(Some(k))
            }
            _ => Err(EventError::Trailing),
        }
    }
    fn invite(&mut self) -> Result<Option<InviteId>, EventError> {
        match self.u8()? {
            0 => Ok(None),
            1 => {
                let mut id = [0; 16];
                id.copy_from_slice(self.take(16)?);
                Ok(Some(InviteId(id)))
            }
            _ => Err(EventError::BadFlag),
        }
    }
}

impl EventRecord {
    /// Append the binary form to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut w = W(out);
        w.u64(self.ts_ms);
        w.0.extend_from_slice(&self.worker.to_le_bytes());
        w.0.push(self.event.code());
        match &self.event {
            Event::SessionOpen {
                run_id,
                invite,
                user,
                version,
                peer,
            } => {
                w.str(run_id);
                w.invite(invite);
                w.str(user);
                w.str(version);
                w.str(peer);
            }
            Event::SessionClose {
                run_id,
                invite,
                reason,
                refusal,
            } => {
                w.str(run_id);
                w.invite(invite);
                w.str(reason);
                w.refusal(refusal);
            }
            Event::ProxyRegistered {
                run_id,
                invite,
                proxy,
                proxy_type,
                remote_port,
                domains,
            } => {
                w.str(run_id);
                w.invite(invite);
                w.str(proxy);
                w.str(proxy_type);
                w.0.extend_from_slice(&remote_port.to_le_bytes());
                if !domains.is_empty() {
                    w.str(&domains.join(","));
                }
            }
            Event::ProxyRejected {
                run_id,
                invite,
                proxy,
                proxy_type,
                reason,
                refusal,
            } => {
                w.str(run_id);
                w.invite(invite);
                w.str(proxy);
                w.str(proxy_type);
                w.str(reason);
                w.refusal(refusal);
            }
            Event::ProxyClosed {
                run_id,
                invite,
                proxy,
                reason,
                refusal,
            } => {
                w.str(run_id);
                w.invite(invite);
                w.str(proxy);
                w.str(reason);
                w.refusal(refusal);
            }
            Event::AuthFailed {
                peer,
                invite,
                reason,
                refusal,
            } => {
                w.str(peer);
                w.invite(invite);
                w.str(reason);
                w.refusal(refusal);
            }
            Event::Traffic {
                run_id,
                invite,
                proxy,
                bytes_in,
                bytes_out,
            } => {
                w.str(run_id);
                w.invite(invite);
                w.str(proxy);
                w.u64(*bytes_in);
                w.u64(*bytes_out);
            }
            Event::TenantTraffic {
                run_id,
                token,
                proxy,
                bytes_in,
                bytes_out,
                closed,
            } => {
                w.str(run_id);
                w.str(token);
                w.str(proxy);
                w.u64(*bytes_in);
                w.u64(*bytes_out);
                w.0.push(*closed as u8);
            }
            Event::MeshNode {
                node_id,
                network_id,
                up,
            } => {
                w.0.extend_from_slice(&node_id.to_le_bytes());
                w.0.extend_from_slice(&network_id.to_le_bytes());
                w.0.push(*up as u8);
            }
            Event::Visitor {
                run_id,
                invite,
                proxy,
                peer,
                reason,
            } => {
                w.str(run_id);
                w.invite(invite);
                w.str(proxy);
                w.str(peer);
                w.str(reason);
            }
        }
    }

    /// The binary form as a new vector.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(64);
        self.encode(&mut v);
        v
    }

    /// Decode one record (the whole slice).
    pub fn decode(bytes: &[u8]) -> Result<EventRecord, EventError> {
        let mut r = R(bytes);
        let ts_ms = r.u64()?;
        let worker = r.u16()?;
        let code = r.u8()?;
        let event = match code {
            1 => Event::SessionOpen {
                run_id: r.str()?,
                invite: r.invite()?,
                user: r.str()?,
                version: r.str()?,
                peer: r.str()?,
            },
            2 => Event::SessionClose {
                run_id: r.str()?,
                invite: r.invite()?,
                reason: r.str()?,
                refusal: r.refusal()?,
            },
            3 => Event::ProxyRegistered {
                run_id: r.str()?,
                invite: r.invite()?,
                proxy: r.str()?,
                proxy_type: r.str()?,
                remote_port: r.u16()?,
                domains: if r.0.is_empty() {
                    Vec::new()
                } else {
                    // Written only when there are domains.
                    let s = r.str()?;
                    if s.is_empty() {
                        return Err(EventError::Trailing);
                    }
                    s.split(',').map(str::to_string).collect()
                },
            },
            4 => Event::ProxyRejected {
                run_id: r.str()?,
                invite: r.invite()?,
                proxy: r.str()?,
                proxy_type: r.str()?,
                reason: r.str()?,
                refusal: r.refusal()?,
            },
            5 => Event::ProxyClosed {
                run_id: r.str()?,
                invite: r.invite()?,
                proxy: r.str()?,
                reason: r.str()?,
                refusal: r.refusal()?,
            },
            6 => Event::AuthFailed {
                peer: r.str()?,
                invite: r.invite()?,
                reason: r.str()?,
                refusal: r.refusal()?,
            },
            7 => Event::Traffic {
                run_id: r.str()?,
                invite: r.invite()?,
                proxy: r.str()?,
                bytes_in: r.u64()?,
                bytes_out: r.u64()?,
            },
            8 => Event::TenantTraffic {
                run_id: r.str()?,
                token: r.str()?,
                proxy: r.str()?,
                bytes_in: r.u64()?,
                bytes_out: r.u64()?,
                closed: match r.u8()? {
                    0 => false,
                    1 => true,
                    _ => return Err(EventError::BadFlag),
                },
            },
            9 => Event::MeshNode {
                node_id: r.u32()?,
                network_id: r.u32()?,
                up: match r.u8()? {
                    0 => false,
                    1 => true,
                    _ => return Err(EventError::BadFlag),
                },
            },
            10 => Event::Visitor {
                run_id: r.str()?,
                invite: r.invite()?,
                proxy: r.str()?,
                peer: r.str()?,
                reason: r.str()?,
            },
            k => return Err(EventError::UnknownKind(k)),
        };
        if !r.0.is_empty() {
            return Err(EventError::Trailing);
        }
        Ok(EventRecord {
            ts_ms,
            worker,
            event,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Vec<Event> {
        let inv = Some(InviteId::from_u128(42));
        vec![
            Event::SessionOpen {
                run_id: "r1".into(),
                invite: inv,
                user: "u".into(),
                version: "0.61.1".into(),
                peer: "1.2.3.4:5".into(),
            },
            Event::SessionClose {
                run_id: "r1".into(),
                invite: None,
                reason: "invite revoked".into(),
                refusal: Some(RefusalKind::InviteRevoked),
            },
            Event::SessionClose {
                run_id: "r1".into(),
                invite: inv,
                reason: "heartbeat timeout".into(),
                refusal: None,
            },
            Event::ProxyRegistered {
                run_id: "r1".into(),
                invite: inv,
                proxy: "ssh".into(),
                proxy_type: "tcp".into(),
                remote_port: 10022,
                domains: Vec::new(),
            },
            Event::ProxyRegistered {
                run_id: "r1".into(),
                invite: inv,
                proxy: "web".into(),
                proxy_type: "http".into(),
                remote_port: 0,
                domains: vec!["a.example.com".into(), "app.t.example.net".into()],
            },
            Event::ProxyRejected {
                run_id: "r1".into(),
                invite: inv,
                proxy: "web".into(),
                proxy_type: "http".into(),
                reason: "proxy type http not allowed".into(),
                refusal: Some(RefusalKind::TypeNotAllowed),
            },
            Event::ProxyClosed {
                run_id: "r1".into(),
                invite: inv,
                proxy: "ssh".into(),
                reason: "client closed it".into(),
                refusal: None,
            },
            Event::ProxyClosed {
                run_id: "r1".into(),
                invite: inv,
                proxy: "ssh".into(),
                reason: "token was deleted".into(),
                refusal: Some(RefusalKind::TokenDeleted),
            },
            Event::AuthFailed {
                peer: "[::1]:9".into(),
                invite: None,
                reason: "ticket expired".into(),
                refusal: Some(RefusalKind::TicketExpired),
            },
            Event::Traffic {
                run_id: "r1".into(),
                invite: inv,
                proxy: "ssh".into(),
                bytes_in: 1 << 40,
                bytes_out: 7,
            },
            Event::TenantTraffic {
                run_id: "r1".into(),
                token: "user1_chengdu".into(),
                proxy: "web".into(),
                bytes_in: 52_428_800,
                bytes_out: 3,
                closed: true,
            },
            Event::MeshNode {
                node_id: 7,
                network_id: 1 << 31,
                up: true,
            },
            Event::Visitor {
                run_id: "r2".into(),
                invite: inv,
                proxy: "alice.db".into(),
                peer: "127.0.0.1:4000".into(),
                reason: "visitor connection of [alice.db] auth failed".into(),
            },
        ]
    }

    #[test]
    fn round_trip_every_kind_and_refuse_every_cut() {
        for (i, event) in all().into_iter().enumerate() {
            let rec = EventRecord {
                ts_ms: 1_700_000_000_000 + i as u64,
                worker: i as u16,
                event,
            };
            let b = rec.to_bytes();
            assert_eq!(EventRecord::decode(&b).unwrap(), rec);
            let domains = match &rec.event {
                Event::ProxyRegistered { domains, .. } if !domains.is_empty() => {
                    domains.join(",").len() + 2
                }
                _ => 0,
            };
            for cut in 0..b.len() {
                let got = EventRecord::decode(&b[..cut]);
                if cut == b.len() - 1 && rec.event.refusal().is_some() {
                    // Without its last byte a refusal reads as a record
                    // from before kinds (the ring delimits records, so a
                    // cut is not something it delivers).
                    assert_eq!(got.unwrap().event.refusal(), None);
                } else if domains > 0 && cut == b.len() - domains {
                    // Without its domains, a proxy.registered as before.
                    let Event::ProxyRegistered { domains, .. } = got.unwrap().event else {
                        panic!("another kind");
                    };
                    assert!(domains.is_empty());
                } else {
                    assert!(got.is_err(), "cut at {cut} accepted");
                }
            }
            let mut longer = b.clone();
            longer.push(0);
            let want = if rec.event.refusal().is_some() {
                EventError::Trailing
            } else if matches!(rec.event.code(), 2 | 4 | 5 | 6) {
                // Read as a refusal kind, and 0 is none.
                EventError::UnknownRefusal(0)
            } else if rec.event.code() == 3 && domains == 0 {
                // Read as the start of a domains string.
                EventError::Truncated
            } else {
                EventError::Trailing
            };
            assert_eq!(EventRecord::decode(&longer), Err(want));
            longer.push(0);
            assert_eq!(EventRecord::decode(&longer), Err(EventError::Trailing));
        }
        let mut b = vec![0; 10];
        b.push(99);
        assert_eq!(EventRecord::decode(&b), Err(EventError::UnknownKind(99)));
    }

    #[test]
    fn records_from_before_refusal_kinds_still_decode() {
        // A proxy.rejected as a fastpath without kinds wrote it: no last byte.
        let mut b = Vec::new();
        b.extend_from_slice(&5u64.to_le_bytes());
        b.extend_from_slice(&1u16.to_le_bytes());
        b.push(4);
        for s in ["r1", "", "web", "tcp", "port already used"] {
            if s.is_empty() {
                b.push(0); // no invite
                continue;
            }
            b.extend_from_slice(&(s.len() as u16).to_le_bytes());
            b.extend_from_slice(s.as_bytes());
        }
        let rec = EventRecord::decode(&b).unwrap();
        assert_eq!(rec.event.refusal(), None);
        assert_eq!(rec.to_bytes(), b, "re-encodes as it was");
        // The same record with a kind this build does not know.
        b.push(250);
        assert_eq!(
            EventRecord::decode(&b),
            Err(EventError::UnknownRefusal(250))
        );
        b.pop();
        b.push(RefusalKind::PortAlreadyUsed as u8);
        let rec = EventRecord::decode(&b).unwrap();
        assert_eq!(rec.event.refusal(), Some(RefusalKind::PortAlreadyUsed));
        assert_eq!(rec.to_bytes(), b);
    }

    #[test]
    fn long_strings_are_cut_on_a_char_boundary() {
        let rec = EventRecord {
            ts_ms: 0,
            worker: 0,
            event: Event::SessionClose {
                run_id: "é".repeat(40_000),
                invite: None,
                reason: String::new(),
                refusal: None,
            },
        };
        let back = EventRecord::decode(&rec.to_bytes()).unwrap();
        match back.event {
            Event::SessionClose { run_id, .. } => assert!(run_id.len() <= u16::MAX as usize),
            _ => unreachable!(),
        }
    }
}
