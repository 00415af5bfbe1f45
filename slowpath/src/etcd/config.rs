//! The `[etcd]` table of an frps-style TOML (seed 002), checked into
//! [`EtcdConfig`]. The file is parsed once, by [`proto::config`] (which
//! gives the keys their types and names the key of a wrong type); this
//! checks the values. Every error names its key (`etcd.endpoints[1]`,
//! `etcd.tls.certFile`); empty strings count as "not set", because the
//! seed's sample configuration writes `username = ""` and `certFile = ""`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use proto::config::{Config, EtcdSection, EtcdTlsSection};

/// Key prefix of tenant records when `etcd.prefix` is not given.
pub const DEFAULT_PREFIX: &str = "/frp/tokens/";
/// `etcd.dialTimeout` when not given.
pub const DEFAULT_DIAL_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest accepted `etcd.dialTimeout`, seconds.
const MAX_DIAL_TIMEOUT_S: f64 = 300.0;

const KEYS: &[&str] = &[
    "endpoints",
    "region",
    "prefix",
    "dialTimeout",
    "trafficReportUrl",
    "username",
    "password",
    "tls",
];
const TLS_KEYS: &[&str] = &["certFile", "keyFile", "caFile"];

/// Where and how to reach etcd, and which tenants this node serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdConfig {
    /// Base URLs, e.g. `http://127.0.0.1:2379`, tried in turn.
    pub endpoints: Vec<String>,
    /// This node's region; only tenants of this region may log in here.
    pub region: String,
    /// Key prefix; a tenant lives at `{prefix}{token}`.
    pub prefix: String,
    /// Limit on establishing a connection to one endpoint.
    pub dial_timeout: Duration,
    /// Where traffic reports are POSTed, if anywhere.
    pub traffic_report_url: Option<String>,
    /// etcd user, when etcd has authentication enabled.
    pub username: Option<String>,
    /// That user's password.
    pub password: Option<String>,
    /// TLS material; `None` = plain HTTP unless an endpoint says `https://`.
    pub tls: Option<EtcdTls>,
}

/// `[etcd.tls]`: a client certificate and/or a private CA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdTls {
    /// PEM client certificate chain (with `key_file`), for etcd's
    /// `--client-cert-auth`.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`.
    pub key_file: Option<PathBuf>,
    /// PEM CA certificates that sign etcd's server certificate; without it
    /// the public web roots are trusted.
    pub ca_file: Option<PathBuf>,
}

impl EtcdConfig {
    /// Checks the `[etcd]` table of a parsed config; `unknown` are the
    /// unknown keys [`Config::from_toml`] found, of which those under
    /// `etcd.` are errors (a misspelt key would silently change which
    /// tenants this node serves). `Ok(None)` when there is no `[etcd]`.
    pub fn from_config(config: &Config, unknown: &[String]) -> Result<Option<EtcdConfig>, String> {
        let Some(etcd) = &config.etcd else {
            return Ok(None);
        };
        refuse_unknown("etcd", unknown, KEYS)?;
        let tls = match &etcd.tls {
            None => None,
            Some(t) => {
                refuse_unknown("etcd.tls", unknown, TLS_KEYS)?;
                read_tls(t)?
            }
        };
        Self::from_section(etcd, tls)
    }

    fn from_section(
        etcd: &EtcdSection,
        tls: Option<EtcdTls>,
    ) -> Result<Option<EtcdConfig>, String> {
        let endpoints = read_endpoints(etcd.endpoints.as_deref(), tls.is_some())?;

        let region = set(&etcd.region)
            .ok_or("etcd.region: required, the region this node serves (e.g. \"chengdu\")")?;
        if region.trim() != region {
            return Err("etcd.region: no leading or trailing spaces".into());
        }

        let prefix = match &etcd.prefix {
            None => DEFAULT_PREFIX.to_owned(),
            Some(p) if p.is_empty() => {
                return Err(format!(
                    "etcd.prefix: must not be empty (default {DEFAULT_PREFIX:?})"
                ))
            }
            Some(p) => p.clone(),
        };

        let dial_timeout = match etcd.dial_timeout {
            None => DEFAULT_DIAL_TIMEOUT,
            Some(secs) => {
                if !(secs > 0.0 && secs <= MAX_DIAL_TIMEOUT_S) {
                    return Err(format!(
                        "etcd.dialTimeout: {secs} is out of range (more than 0, at most {MAX_DIAL_TIMEOUT_S} seconds)"
                    ));
                }
                Duration::from_secs_f64(secs)
            }
        };

        let traffic_report_url = set(&etcd.traffic_report_url);
        if let Some(url) = &traffic_report_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(format!(
                    "etcd.trafficReportUrl: {url:?} must be an http:// or https:// URL"
                ));
            }
        }

        let username = set(&etcd.username);
        let password = set(&etcd.password);
        if password.is_some() && username.is_none() {
            return Err("etcd.password: given without etcd.username".into());
        }

        Ok(Some(EtcdConfig {
            endpoints,
            region,
            prefix,
            dial_timeout,
            traffic_report_url,
            username,
            password,
            tls,
        }))
    }

    /// The rustls configuration for https endpoints, when `[etcd.tls]` asks
    /// for a client certificate or a private CA; `None` = ureq's defaults.
    pub fn tls_client_config(&self) -> Result<Option<Arc<rustls::ClientConfig>>, String> {
        match &self.tls {
            None => Ok(None),
            Some(tls) => tls.client_config().map(Some),
        }
    }
}

impl EtcdTls {
    /// Loads the files into a rustls client configuration.
    pub fn client_config(&self) -> Result<Arc<rustls::ClientConfig>, String> {
        let mut roots = rustls::RootCertStore::empty();
        match &self.ca_file {
            Some(path) => {
                let certs = read_certs("etcd.tls.caFile", path)?;
                for cert in certs {
                    roots.add(cert).map_err(|e| {
                        format!("etcd.tls.caFile: {}: not a usable CA: {e}", path.display())
                    })?;
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("etcd.tls: {e}"))?
            .with_root_certificates(roots);
        let config = match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => {
                let chain = read_certs("etcd.tls.certFile", cert)?;
                let key = read_key(key)?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| format!("etcd.tls.keyFile: does not fit etcd.tls.certFile: {e}"))?
            }
            _ => builder.with_no_client_auth(),
        };
        Ok(Arc::new(config))
    }
}

/// Errors naming the unknown keys directly under `path` (`etcd.prefx`).
fn refuse_unknown(path: &str, unknown: &[String], known: &[&str]) -> Result<(), String> {
    let ours: Vec<&str> = unknown
        .iter()
        .filter(|k| {
            k.strip_prefix(path)
                .and_then(|rest| rest.strip_prefix('.'))
                .is_some_and(|rest| !rest.contains('.'))
        })
        .map(String::as_str)
        .collect();
    if ours.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{}: unknown key{} (known: {})",
            ours.join(", "),
            if ours.len() == 1 { "" } else { "s" },
            known.join(", ")
        ))
    }
}

/// A string key; absent or empty = `None`.
fn set(value: &Option<String>) -> Option<String> {
    value.as_ref().filter(|s| !s.is_empty()).cloned()
}

fn read_tls(section: &EtcdTlsSection) -> Result<Option<EtcdTls>, String> {
    let file = |v: &Option<String>| set(v).map(PathBuf::from);
    let tls = EtcdTls {
        cert_file: file(&section.cert_file),
        key_file: file(&section.key_file),
        ca_file: file(&section.ca_file),
    };
    match (&tls.cert_file, &tls.key_file) {
        (Some(_), None) => return Err("etcd.tls.keyFile: required with etcd.tls.certFile".into()),
        (None, Some(_)) => return Err("etcd.tls.certFile: required with etcd.tls.keyFile".into()),
        _ => {}
    }
    if tls.cert_file.is_none() && tls.ca_file.is_none() {
        // The seed's sample writes an [etcd.tls] table of empty strings:
        // that is no TLS configuration at all.
        return Ok(None);
    }
    // Load the files now so that a wrong path fails at start-up with the
    // key's name, not later as a connection error.
    tls.client_config()?;
    Ok(Some(tls))
}

fn read_endpoints(list: Option<&[String]>, tls: bool) -> Result<Vec<String>, String> {
    let list = list.ok_or("etcd.endpoints: required, e.g. [\"127.0.0.1:2379\"]")?;
    if list.is_empty() {
        return Err("etcd.endpoints: must name at least one endpoint".into());
    }
    list.iter()
        .enumerate()
        .map(|(i, text)| {
            endpoint_url(text, tls).map_err(|e| format!("etcd.endpoints[{i}]: {text:?} {e}"))
        })
        .collect()
}

/// `host:port` or `http(s)://host[:port]` as a base URL without a trailing
/// slash; bare addresses get `https://` when TLS is configured.
fn endpoint_url(text: &str, tls: bool) -> Result<String, String> {
    let (scheme, authority, explicit) = if let Some(rest) = text.strip_prefix("http://") {
        ("http", rest, true)
    } else if let Some(rest) = text.strip_prefix("https://") {
        ("https", rest, true)
    } else if text.contains("://") {
        return Err("must use http:// or https://".into());
    } else {
        (if tls { "https" } else { "http" }, text, false)
    };
    let authority = authority.strip_suffix('/').unwrap_or(authority);
    if authority.is_empty()
        || authority
            .chars()
            .any(|c| c.is_whitespace() || matches!(c, '/' | '@' | '?' | '#'))
    {
        return Err("must be host:port or a URL without a path".into());
    }
    // "[::1]:2379" and "host:2379": the port follows the last colon outside
    // the brackets.
    let port = match authority.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && !port.contains(']') => Some(port),
        _ => None,
    };
    match port {
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 => {}
            _ => return Err("has a port that is not 1-65535".into()),
        },
        None if !explicit => return Err("needs a port, e.g. \"127.0.0.1:2379\"".into()),
        None => {}
    }
    Ok(format!("{scheme}://{authority}"))
}

fn read_certs(
    key: &str,
    path: &Path,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("{key}: {}: {e}", path.display()))?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{key}: {}: not PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{key}: {}: holds no PEM certificate",
            path.display()
        ));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<rustls::pki_types::PrivateKeyDer<'static>, String> {
    let key = "etcd.tls.keyFile";
    let pem = std::fs::read(path).map_err(|e| format!("{key}: {}: {e}", path.display()))?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|e| format!("{key}: {}: not PEM: {e}", path.display()))?
        .ok_or_else(|| format!("{key}: {}: holds no PEM private key", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Option<EtcdConfig>, String> {
        let (config, unknown) = Config::from_toml(text).map_err(|e| e.to_string())?;
        EtcdConfig::from_config(&config, &unknown)
    }

    fn err(text: &str) -> String {
        parse(text).unwrap_err()
    }

    #[test]
    fn no_table_no_config() {
        assert_eq!(parse("bindPort = 7000").unwrap(), None);
    }

    #[test]
    fn the_seed_sample_reads() {
        let cfg = parse(
            r#"
            bindPort = 7000
            [etcd]
            endpoints = ["127.0.0.1:2379", "127.0.0.1:2380"]
            region = "chengdu"
            prefix = "/frp/tokens/"
            dialTimeout = 5
            trafficReportUrl = "http://your-api-server/traffic/report"
            username = ""
            password = ""
            [etcd.tls]
            certFile = ""
            keyFile = ""
            "#,
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            cfg,
            EtcdConfig {
                endpoints: vec![
                    "http://127.0.0.1:2379".into(),
                    "http://127.0.0.1:2380".into()
                ],
                region: "chengdu".into(),
                prefix: "/frp/tokens/".into(),
                dial_timeout: Duration::from_secs(5),
                traffic_report_url: Some("http://your-api-server/traffic/report".into()),
                username: None,
                password: None,
                tls: None,
            }
        );
    }

    #[test]
    fn defaults() {
        let cfg = parse("[etcd]\nendpoints = [\"https://etcd.example/\"]\nregion = \"sh\"")
            .unwrap()
            .unwrap();
        assert_eq!(cfg.endpoints, ["https://etcd.example"]);
        assert_eq!(cfg.prefix, DEFAULT_PREFIX);
        assert_eq!(cfg.dial_timeout, DEFAULT_DIAL_TIMEOUT);
        assert_eq!(cfg.traffic_report_url, None);
        let cfg = parse("[etcd]\nendpoints = [\"[::1]:2379\"]\nregion = \"sh\"\ndialTimeout = 0.5")
            .unwrap()
            .unwrap();
        assert_eq!(cfg.endpoints, ["http://[::1]:2379"]);
        assert_eq!(cfg.dial_timeout, Duration::from_millis(500));
    }

    #[test]
    fn errors_name_the_key() {
        let base = "[etcd]\nendpoints = [\"127.0.0.1:2379\"]\nregion = \"r\"\n";
        let cases = [
            ("[etcd]\nregion = \"r\"", "etcd.endpoints:"),
            ("[etcd]\nendpoints = []\nregion = \"r\"", "etcd.endpoints:"),
            (
                "[etcd]\nendpoints = \"a:1\"\nregion = \"r\"",
                "etcd.endpoints:",
            ),
            (
                "[etcd]\nendpoints = [\"a:1\", 5]\nregion = \"r\"",
                "etcd.endpoints[1]:",
            ),
            (
                "[etcd]\nendpoints = [\"a:1\", \"b\"]\nregion = \"r\"",
                "etcd.endpoints[1]:",
            ),
            (
                "[etcd]\nendpoints = [\"a:99999\"]\nregion = \"r\"",
                "etcd.endpoints[0]:",
            ),
            (
                "[etcd]\nendpoints = [\"unix:///x\"]\nregion = \"r\"",
                "etcd.endpoints[0]:",
            ),
            (
                "[etcd]\nendpoints = [\"http://a:1/v3\"]\nregion = \"r\"",
                "etcd.endpoints[0]:",
            ),
            ("[etcd]\nendpoints = [\"a:1\"]", "etcd.region:"),
            (
                "[etcd]\nendpoints = [\"a:1\"]\nregion = \"\"",
                "etcd.region:",
            ),
            ("[etcd]\nendpoints = [\"a:1\"]\nregion = 3", "etcd.region:"),
            ("etcd = 1", "etcd:"),
        ];
        for (text, want) in cases {
            let e = err(text);
            assert!(e.starts_with(want), "{text:?}: {e}");
        }
        let with = |extra: &str| err(&format!("{base}{extra}"));
        assert!(with("prefix = \"\"").starts_with("etcd.prefix:"));
        assert!(with("dialTimeout = 0").starts_with("etcd.dialTimeout:"));
        assert!(with("dialTimeout = -1").starts_with("etcd.dialTimeout:"));
        assert!(with("dialTimeout = \"5s\"").starts_with("etcd.dialTimeout:"));
        assert!(with("dialTimeout = 301").starts_with("etcd.dialTimeout:"));
        assert!(with("trafficReportUrl = \"ftp://x\"").starts_with("etcd.trafficReportUrl:"));
        assert!(with("password = \"p\"").starts_with("etcd.password:"));
        assert!(with("[etcd.tls]\ncertFile = \"c.pem\"").starts_with("etcd.tls.keyFile:"));
        assert!(with("[etcd.tls]\nkeyFile = \"k.pem\"").starts_with("etcd.tls.certFile:"));
        let e = with("[etcd.tls]\ncaFile = \"/nonexistent/ca.pem\"");
        assert!(e.starts_with("etcd.tls.caFile:"), "{e}");
        let e = with("[etcd.tls]\ncertFile = \"/nonexistent/c.pem\"\nkeyFile = \"k\"");
        assert!(e.starts_with("etcd.tls.certFile:"), "{e}");
        let e = with("tls = 1");
        assert!(e.starts_with("etcd.tls:"), "{e}");
    }

    #[test]
    fn unknown_keys_are_named() {
        let e =
            err("[etcd]\nendpoints = [\"a:1\"]\nregion = \"r\"\nendpoint = \"x\"\nprefx = \"y\"");
        assert!(
            e.starts_with("etcd.endpoint, etcd.prefx: unknown keys"),
            "{e}"
        );
        let e = err("[etcd]\nendpoints = [\"a:1\"]\nregion = \"r\"\n[etcd.tls]\ncaFil = \"x\"");
        assert!(e.starts_with("etcd.tls.caFil: unknown key"), "{e}");
    }

    #[test]
    fn tls_makes_bare_endpoints_https() {
        let dir = std::env::temp_dir().join(format!("totoro-etcd-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, cert.pem()).unwrap();
        let text = format!(
            "[etcd]\nendpoints = [\"a:1\", \"http://b:2\"]\nregion = \"r\"\n[etcd.tls]\ncaFile = {:?}",
            ca.display().to_string()
        );
        let cfg = parse(&text).unwrap().unwrap();
        assert_eq!(cfg.endpoints, ["https://a:1", "http://b:2"]);
        assert!(cfg.tls_client_config().unwrap().is_some());
        std::fs::write(&ca, "not pem").unwrap();
        let e = parse(&text).unwrap_err();
        assert!(e.starts_with("etcd.tls.caFile:"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
