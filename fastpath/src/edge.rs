//! The edge (seed 004): TLS terminated on `vhostHTTPSPort` for hostnames
//! with a managed certificate, and hostnames routed to origins.
//!
//! **Certificates** come from the slowpath as a file in the policy
//! directory ([`shm::CERTS_FILE`], `proto::certstore`), written before the
//! table that names its SHA-256. When a table in force names another
//! digest than the store in force, the policy thread reads the file,
//! checks the digest, builds every certificate's signing key, and swaps
//! the new store in ([`Edge::refresh`]). A file that does not match (cut
//! short, corrupt, or planted: the table is sealed, the file is not) is
//! refused with a log line and the last good store stays. Lookups by
//! server name are one hash lookup, exact name first, then the wildcard
//! of the parent; a store of 10k certificates is one map.
//!
//! **Routes** are read from the table in force on each request (a binary
//! search in place): an origin is an address the edge connects to, or a
//! tunnel origin — an `http` proxy registered by a client of an invite,
//! found by its name among the live proxies ([`Tunnels`]).
//!
//! **ACME**: the answers to HTTP-01 challenges are in the table too; the
//! http port answers `/.well-known/acme-challenge/<token>` for the tokens
//! it holds, so the fastpath never asks the slowpath anything.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;
use proto::policy::InviteId;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::frp::targets::VhostTarget;
use crate::policy::Policy;

/// Certificates by hostname.
#[derive(Debug, Default)]
pub struct CertStore {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.example.com` under "example.com".
    wildcard: HashMap<String, Arc<CertifiedKey>>,
}

impl CertStore {
    /// The certificate that serves `name` (canonical): the exact name,
    /// else a wildcard for its parent.
    pub fn get(&self, name: &str) -> Option<&Arc<CertifiedKey>> {
        self.exact.get(name).or_else(|| {
            let (_, parent) = name.split_once('.')?;
            self.wildcard.get(parent)
        })
    }

    /// Number of hostnames (exact and wildcard) served.
    pub fn len(&self) -> usize {
        self.exact.len() + self.wildcard.len()
    }

    /// Whether it serves nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Build a store from a file's bytes; entries whose key does not load
    /// are skipped and counted in the second value, with the reason of the
    /// first.
    pub fn from_bytes(bytes: &[u8]) -> Result<(CertStore, usize, Option<String>), String> {
        let entries = proto::certstore::decode(bytes).map_err(|e| e.to_string())?;
        let mut store = CertStore::default();
        let (mut skipped, mut first_error) = (0, None);
        for e in entries {
            let key = match PrivateKeyDer::try_from(e.key.to_vec())
                .map_err(|e| e.to_string())
                .and_then(|k| {
                    rustls::crypto::ring::sign::any_supported_type(&k).map_err(|e| e.to_string())
                }) {
                Ok(k) => k,
                Err(why) => {
                    skipped += 1;
                    first_error.get_or_insert(format!("{}: {why}", e.names[0]));
                    continue;
                }
            };
            let chain = e
                .chain
                .iter()
                .map(|c| CertificateDer::from(c.to_vec()))
                .collect();
            let ck = Arc::new(CertifiedKey::new(chain, key));
            for name in e.names {
                match name.strip_prefix("*.") {
                    Some(parent) => store.wildcard.insert(parent.to_string(), ck.clone()),
                    None => store.exact.insert(name.to_string(), ck.clone()),
                };
            }
        }
        Ok((store, skipped, first_error))
    }
}

/// What rustls asks for a certificate: the store in force at the time of
/// the handshake.
#[derive(Debug)]
struct Resolver(Arc<CertStore>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello.server_name()?;
        let host = proto::vhost::canonical_host(name)?;
        self.0.get(&host).cloned()
    }
}

/// The store in force and the TLS configuration made from it.
pub struct InForce {
    /// The store's digest (None: the table names no store).
    pub digest: Option<[u8; 32]>,
    /// The certificates.
    pub store: Arc<CertStore>,
    /// The server configuration that terminates with them.
    pub tls: Arc<rustls::ServerConfig>,
}

/// The edge's state in one fastpath process.
pub struct Edge {
    in_force: RwLock<Arc<InForce>>,
    /// Stores refused (digest mismatch, corrupt file, unreadable).
    pub refused: AtomicU64,
    /// Live tunnel origins: (invite, proxy name) → the proxy's route.
    pub tunnels: Tunnels,
}

impl Default for Edge {
    fn default() -> Self {
        let empty = Arc::new(CertStore::default());
        Edge {
            in_force: RwLock::new(Arc::new(InForce {
                digest: None,
                tls: server_config(empty.clone()),
                store: empty,
            })),
            refused: AtomicU64::new(0),
            tunnels: Tunnels::default(),
        }
    }
}

/// A TLS server configuration that picks its certificate from `store`:
/// HTTP/1.1 by ALPN, no session tickets, and TLS 1.3 records protected
/// after the handshake by `proto::tls13` as on the bind port.
fn server_config(store: Arc<CertStore>) -> Arc<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder =
        rustls::ServerConfig::builder_with_provider(provider).with_safe_default_protocol_versions();
    // The ring provider supports the default versions; were it ever not
    // to, no config is made and nothing is terminated.
    let mut sc = match builder {
        Ok(b) => b
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Resolver(store))),
        Err(_) => rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Resolver(store))),
    };
    sc.alpn_protocols = vec![b"http/1.1".to_vec()];
    sc.send_tls13_tickets = 0;
    sc.enable_secret_extraction = true;
    Arc::new(sc)
}

impl Edge {
    /// The store and TLS configuration in force.
    pub fn in_force(&self) -> Arc<InForce> {
        self.in_force.read().clone()
    }

    /// Bring the certificate store in line with the table in force: load
    /// the store file when the table names another digest. Called by the
    /// policy thread after each switch (never by a worker).
    pub fn refresh(&self, policy: &Policy) {
        let Some(loaded) = policy.current() else {
            return;
        };
        let want = loaded.get().edge_certs();
        let digest = want.map(|(d, _)| d);
        if self.in_force().digest == digest {
            return;
        }
        let store = match want {
            None => Ok((CertStore::default(), 0, None)),
            Some((d, _)) => load(policy, &d),
        };
        match store {
            Ok((store, skipped, why)) => {
                if skipped > 0 {
                    tracing::warn!(skipped, first = ?why, "edge certificates skipped: their keys do not load");
                }
                tracing::info!(hostnames = store.len(), "edge certificate store in force");
                let store = Arc::new(store);
                *self.in_force.write() = Arc::new(InForce {
                    digest,
                    tls: server_config(store.clone()),
                    store,
                });
            }
            Err(reason) => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%reason, "edge certificate store refused; keeping the last good one");
            }
        }
    }
}

/// Read the store file and check it is the one the table names.
fn load(policy: &Policy, want: &[u8; 32]) -> Result<(CertStore, usize, Option<String>), String> {
    let g = policy
        .governed()
        .ok_or_else(|| "no policy directory".to_string())?;
    let bytes = g
        .dir
        .read(shm::CERTS_FILE)
        .map_err(|e| format!("cannot read {}: {e}", shm::CERTS_FILE))?;
    if &proto::certstore::digest(&bytes) != want {
        return Err(format!(
            "{} does not match the table's digest",
            shm::CERTS_FILE
        ));
    }
    CertStore::from_bytes(&bytes)
}

/// Live `http` proxies that can be tunnel origins, by the invite their
/// session logged in with and their name.
#[derive(Default)]
pub struct Tunnels(RwLock<HashMap<(InviteId, Arc<str>), VhostTarget>>);

impl Tunnels {
    /// A proxy registered.
    pub fn add(&self, invite: InviteId, target: VhostTarget) {
        self.0
            .write()
            .insert((invite, target.proxy.clone()), target);
    }

    /// A proxy closed.
    pub fn remove(&self, invite: InviteId, proxy: &str) {
        let key = (invite, Arc::<str>::from(proxy));
        self.0.write().remove(&key);
    }

    /// The live proxy `proxy` of `invite`.
    pub fn get(&self, invite: InviteId, proxy: &str) -> Option<VhostTarget> {
        let key = (invite, Arc::<str>::from(proxy));
        self.0.read().get(&key).cloned()
    }
}

/// Where an edge route sends a request.
#[derive(Debug, Clone)]
pub enum Origin {
    /// A live proxy (a tunnel origin).
    Proxy(VhostTarget),
    /// An address to connect to.
    Address(SocketAddr),
    /// The route exists but its origin is not there: a tunnel origin
    /// whose proxy is not registered, or an address that does not parse.
    Down(String),
}

/// An edge route for `host`, from the table in force.
pub struct Route {
    /// Where it leads.
    pub origin: Origin,
    /// Plain HTTP is redirected to HTTPS.
    pub redirect_https: bool,
}

/// The edge route for `host` (canonical) in the table in force, if any.
pub fn route(policy: &Policy, edge: &Edge, host: &str) -> Option<Route> {
    let loaded = policy.current()?;
    let table = loaded.get();
    let r = table.edge_route(host)?;
    let origin = match r.tunnel {
        Some(invite) => match edge.tunnels.get(invite, r.origin) {
            Some(t) => Origin::Proxy(t),
            None => Origin::Down(format!("tunnel origin {:?} is not connected", r.origin)),
        },
        None => match r.origin.parse::<SocketAddr>() {
            Ok(a) => Origin::Address(a),
            Err(_) => Origin::Down(format!("origin address {:?} does not parse", r.origin)),
        },
    };
    Some(Route {
        origin,
        redirect_https: r.redirect_https,
    })
}

/// The key authorization for ACME HTTP-01 token `token`, if one is
/// pending.
pub fn acme_answer(policy: &Policy, token: &str) -> Option<String> {
    let loaded = policy.current()?;
    let table = loaded.get();
    table.acme_answer(token).map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry_bytes(names: &[&str]) -> Vec<u8> {
        let cert = rcgen::generate_simple_self_signed(
            names.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        )
        .unwrap();
        let der = cert.cert.der().to_vec();
        let key = cert.key_pair.serialize_der();
        proto::certstore::encode(&[
            proto::certstore::Entry {
                names: names.to_vec(),
                chain: vec![&der],
                key: &key,
            },
            proto::certstore::Entry {
                names: vec!["broken.example.com"],
                chain: vec![&der],
                key: b"not a key",
            },
        ])
    }

    #[test]
    fn exact_names_then_the_parents_wildcard() {
        let bytes = entry_bytes(&["app.hoge.com", "*.fuga.com"]);
        let (store, skipped, why) = CertStore::from_bytes(&bytes).unwrap();
        assert_eq!(skipped, 1, "the entry whose key does not load is skipped");
        assert!(why.unwrap().starts_with("broken.example.com"));
        assert!(store.get("app.hoge.com").is_some());
        assert!(store.get("wiki.fuga.com").is_some());
        assert!(store.get("fuga.com").is_none(), "a wildcard is one label");
        assert!(store.get("a.b.fuga.com").is_none());
        assert!(store.get("hoge.com").is_none());
        assert!(store.get("broken.example.com").is_none());
        assert!(CertStore::from_bytes(&bytes[..bytes.len() - 1]).is_err());
    }
}
