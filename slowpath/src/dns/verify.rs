//! Proving that a user owns a domain (seed 000 §8.2): the token is found
//! either in a TXT record at `_totoro-verify.<domain>` (looked up with
//! `hickory-resolver`, on the configured nameservers or the system's) or
//! as the body of `http://<domain>/.well-known/totoro-verify/<token>`,
//! fetched from the addresses the domain resolves to with the same
//! resolver, with no redirect followed.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::TokioResolver;

use crate::domain::domains::txt_name;

/// How long one check may take.
const TIMEOUT: Duration = Duration::from_secs(5);
/// The most of an HTTP answer read.
const BODY_LIMIT: u64 = 1024;

/// How checks are made.
#[derive(Debug, Clone)]
pub struct VerifyConfig {
    /// Nameservers to ask (empty: the system's, from /etc/resolv.conf).
    pub nameservers: Vec<SocketAddr>,
    /// The port the HTTP token is fetched on (80 but in tests).
    pub http_port: u16,
}

/// The checker.
#[derive(Clone)]
pub struct Verifier {
    resolver: TokioResolver,
    http_port: u16,
}

impl Verifier {
    /// A checker, or why it cannot be made (no system resolver config).
    pub fn new(cfg: &VerifyConfig) -> Result<Verifier, String> {
        let mut opts = ResolverOpts::default();
        opts.timeout = Duration::from_secs(2);
        opts.attempts = 2;
        // A record the owner has just published must be seen now, not
        // after a cached NXDOMAIN expires.
        opts.cache_size = 0;
        let builder = if cfg.nameservers.is_empty() {
            TokioResolver::builder_tokio().map_err(|e| format!("the system's resolver: {e}"))?
        } else {
            let servers = cfg
                .nameservers
                .iter()
                .map(|a| {
                    let mut udp = ConnectionConfig::udp();
                    udp.port = a.port();
                    let mut tcp = ConnectionConfig::tcp();
                    tcp.port = a.port();
                    NameServerConfig::new(a.ip(), true, vec![udp, tcp])
                })
                .collect();
            TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(servers),
                TokioRuntimeProvider::default(),
            )
        };
        let resolver = builder
            .with_options(opts)
            .build()
            .map_err(|e| format!("the resolver: {e}"))?;
        Ok(Verifier {
            resolver,
            http_port: cfg.http_port,
        })
    }

    /// Is `token` in a TXT record at `_totoro-verify.<domain>`?
    pub async fn dns(&self, domain: &str, token: &str) -> Result<(), String> {
        let name = txt_name(domain);
        let lookup = tokio::time::timeout(TIMEOUT, self.resolver.txt_lookup(format!("{name}.")))
            .await
            .map_err(|_| format!("no answer for the TXT record {name} within {TIMEOUT:?}"))?
            .map_err(|e| {
                if e.is_no_records_found() || e.is_nx_domain() {
                    format!("no TXT record at {name}")
                } else {
                    format!("looking up the TXT record {name}: {e}")
                }
            })?;
        let mut seen = Vec::new();
        for r in lookup.answers() {
            if let RData::TXT(txt) = &r.data {
                let value: Vec<u8> = txt
                    .txt_data
                    .iter()
                    .flat_map(|s| s.iter().copied())
                    .collect();
                let value = String::from_utf8_lossy(&value).trim().to_owned();
                if value == token {
                    return Ok(());
                }
                seen.push(value);
            }
        }
        Err(if seen.is_empty() {
            format!("no TXT record at {name}")
        } else {
            format!("the TXT records at {name} do not hold the token (found {seen:?})")
        })
    }

    /// Does `http://<domain>/.well-known/totoro-verify/<token>` answer 200
    /// with the token as its body?
    pub async fn http(&self, domain: &str, token: &str) -> Result<(), String> {
        let ips: Vec<IpAddr> =
            tokio::time::timeout(TIMEOUT, self.resolver.lookup_ip(format!("{domain}.")))
                .await
                .map_err(|_| format!("no address for {domain} within {TIMEOUT:?}"))?
                .map_err(|e| {
                    if e.is_no_records_found() || e.is_nx_domain() {
                        format!("no address for {domain}")
                    } else {
                        format!("looking up {domain}: {e}")
                    }
                })?
                .iter()
                .take(4)
                .collect();
        if ips.is_empty() {
            return Err(format!("no address for {domain}"));
        }
        let port = self.http_port;
        let url = if port == 80 {
            format!("http://{domain}/.well-known/totoro-verify/{token}")
        } else {
            format!("http://{domain}:{port}/.well-known/totoro-verify/{token}")
        };
        let (url2, token) = (url.clone(), token.to_owned());
        tokio::task::spawn_blocking(move || {
            let addrs: Vec<SocketAddr> = ips.iter().map(|ip| SocketAddr::new(*ip, port)).collect();
            let agent = ureq::AgentBuilder::new()
                .timeout(TIMEOUT)
                .redirects(0)
                .resolver(move |_: &str| Ok(addrs.clone()))
                .build();
            let resp = agent.get(&url2).call().map_err(|e| match e {
                ureq::Error::Status(code, _) => format!("{url2} answered {code}"),
                e => format!("{url2}: {e}"),
            })?;
            let mut body = String::new();
            std::io::Read::read_to_string(
                &mut std::io::Read::take(resp.into_reader(), BODY_LIMIT),
                &mut body,
            )
            .map_err(|e| format!("{url2}: reading the answer: {e}"))?;
            if body.trim() == token {
                Ok(())
            } else {
                Err(format!("{url2} answered 200 but its body is not the token"))
            }
        })
        .await
        .map_err(|e| format!("{url}: {e}"))?
    }
}
