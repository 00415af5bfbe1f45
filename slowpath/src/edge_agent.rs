//! Seed 004's edge agent, for operators who keep nginx: `slowpath
//! edge-agent --control URL --token …` pulls the edge configuration
//! (`GET /api/v1/edge-nodes/me/config`, with `If-None-Match`, so an
//! unchanged config costs a 304) and the certificates of routed
//! hostnames, writes nginx's `map $host $kokoa_backend` file and one
//! directory of PEM files per hostname, and runs the reload command only
//! when what it wrote changed (the `config_hash`, or the certificates).
//!
//! Files are written aside and renamed into place, keys 0600, so nginx
//! never reads half a file. The nginx side (seed 004's default server) is
//! one `include` of the map and, for TLS, `ssl_certificate
//! <cert-dir>/$ssl_server_name/fullchain.pem` (nginx ≥ 1.15.9 loads it per
//! handshake): see the README. While the control plane is unreachable the
//! last files stay and nginx goes on serving them.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use serde_json::Value;

/// What the agent is told.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The control plane's base URL (`https://cp.example.com`).
    pub control: String,
    /// The edge node's token.
    pub token: String,
    /// A root certificate (PEM) for the control plane's HTTPS, when it is
    /// not publicly trusted.
    pub ca_file: Option<PathBuf>,
    /// nginx's map file.
    pub map_file: PathBuf,
    /// Where each hostname's `fullchain.pem` and `privkey.pem` go.
    pub cert_dir: PathBuf,
    /// Run after a change (`nginx -s reload`); empty: none.
    pub reload: Vec<String>,
    /// Seconds between pulls.
    pub interval: Duration,
    /// Pull and apply once, then exit.
    pub once: bool,
}

/// What was last applied.
#[derive(Default)]
struct Applied {
    config_etag: Option<String>,
    certs_etag: Option<String>,
}

/// Run until killed (or once).
pub fn run(cfg: AgentConfig) -> Result<()> {
    let agent = agent(&cfg)?;
    let mut applied = Applied::default();
    loop {
        match pass(&cfg, &agent, &mut applied) {
            Ok(true) => tracing::info!("edge configuration applied"),
            Ok(false) => tracing::debug!("edge configuration unchanged"),
            Err(e) if cfg.once => return Err(e),
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "edge pull failed; the last files stay")
            }
        }
        if cfg.once {
            return Ok(());
        }
        std::thread::sleep(cfg.interval);
    }
}

fn agent(cfg: &AgentConfig) -> Result<ureq::Agent> {
    http_agent(cfg.ca_file.as_deref(), Duration::from_secs(15))
}

/// An HTTP(S) client with `timeout` per request that trusts the public
/// roots, or only the PEM certificates in `ca_file` when given (also the
/// node agent's, [`crate::agent`]).
pub(crate) fn http_agent(ca_file: Option<&Path>, timeout: Duration) -> Result<ureq::Agent> {
    let mut b = ureq::AgentBuilder::new().timeout(timeout);
    if let Some(ca) = ca_file {
        let pem = std::fs::read(ca).with_context(|| format!("--ca-file {}", ca.display()))?;
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pemfile::certs(&mut pem.as_slice()) {
            roots.add(c.context("--ca-file")?).context("--ca-file")?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        b = b.tls_config(Arc::new(tls));
    }
    Ok(b.build())
}

/// GET `path` with `If-None-Match: etag`: None on 304, else the ETag and
/// the body.
fn pull(
    cfg: &AgentConfig,
    agent: &ureq::Agent,
    path: &str,
    etag: Option<&str>,
) -> Result<Option<(Option<String>, Value)>> {
    let url = format!("{}{path}", cfg.control.trim_end_matches('/'));
    let mut req = agent
        .get(&url)
        .set("Authorization", &format!("Bearer {}", cfg.token));
    if let Some(e) = etag {
        req = req.set("If-None-Match", e);
    }
    match req.call() {
        Ok(r) if r.status() == 304 => Ok(None),
        Ok(r) => {
            let etag = r.header("ETag").map(str::to_owned);
            let v: Value = r.into_json().with_context(|| format!("GET {url}"))?;
            Ok(Some((etag, v)))
        }
        Err(ureq::Error::Status(code, r)) => {
            let text = r.into_string().unwrap_or_default();
            bail!("GET {url}: HTTP {code}: {text}")
        }
        Err(e) => bail!("GET {url}: {e}"),
    }
}

/// One pull; true when files changed and nginx was reloaded.
fn pass(cfg: &AgentConfig, agent: &ureq::Agent, applied: &mut Applied) -> Result<bool> {
    let config = pull(
        cfg,
        agent,
        "/api/v1/edge-nodes/me/config",
        applied.config_etag.as_deref(),
    )?;
    let certs = pull(
        cfg,
        agent,
        "/api/v1/edge-nodes/me/certificates",
        applied.certs_etag.as_deref(),
    )?;
    if config.is_none() && certs.is_none() {
        return Ok(false);
    }
    if let Some((_, certs)) = &certs {
        write_certs(&cfg.cert_dir, certs)?;
    }
    if let Some((_, config)) = &config {
        let map = nginx_map(config)?;
        write_file(&cfg.map_file, map.as_bytes(), 0o644)?;
    }
    reload(cfg)?;
    // Remembered only once applied: a failed reload is tried again.
    if let Some((etag, _)) = config {
        applied.config_etag = etag;
    }
    if let Some((etag, _)) = certs {
        applied.certs_etag = etag;
    }
    Ok(true)
}

/// Seed 004's map file from the config's `routes`.
pub fn nginx_map(config: &Value) -> Result<String> {
    let routes = config["routes"]
        .as_object()
        .context("the config has no routes object")?;
    let hash = config["config_hash"].as_str().unwrap_or_default();
    let mut out = format!(
        "# Written by slowpath edge-agent; config_hash {hash}.\nmap $host $kokoa_backend {{\n"
    );
    for (host, target) in routes {
        let target = target
            .as_str()
            .context("a route's target is not a string")?;
        // What reaches the file is checked: a hostname and an ip:port.
        let host_ok = !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        if !host_ok || target.parse::<std::net::SocketAddr>().is_err() {
            bail!("refusing route {host:?} -> {target:?}: not a hostname and an address");
        }
        out.push_str(&format!("    \"{host}\" \"{target}\";\n"));
    }
    out.push_str("    default \"\";\n}\n");
    Ok(out)
}

/// Each certificate into `dir/<hostname>/{fullchain,privkey}.pem`.
fn write_certs(dir: &Path, certs: &Value) -> Result<()> {
    let list = certs["certificates"]
        .as_array()
        .context("no certificates list")?;
    std::fs::create_dir_all(dir).with_context(|| format!("--cert-dir {}", dir.display()))?;
    for c in list {
        let host = c["hostname"]
            .as_str()
            .context("certificate without hostname")?;
        if host.is_empty()
            || host.starts_with('.')
            || !host
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        {
            bail!("refusing certificate for {host:?}: not a hostname");
        }
        let d = dir.join(host);
        std::fs::create_dir_all(&d)?;
        let chain = c["fullchain_pem"].as_str().context("no fullchain_pem")?;
        let key = c["privkey_pem"].as_str().context("no privkey_pem")?;
        // The key first: a chain never sits next to a key it does not match
        // for longer than the rename between them.
        write_file(&d.join("privkey.pem"), key.as_bytes(), 0o600)?;
        write_file(&d.join("fullchain.pem"), chain.as_bytes(), 0o644)?;
    }
    // A hostname no longer served: its key does not stay on disk. Only a
    // directory holding the files this agent writes is touched.
    let keep: std::collections::HashSet<&str> =
        list.iter().filter_map(|c| c["hostname"].as_str()).collect();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if keep.contains(name) || !entry.file_type()?.is_dir() {
            continue;
        }
        let d = entry.path();
        let ours = ["privkey.pem", "fullchain.pem"];
        if !ours.iter().any(|f| d.join(f).is_file()) {
            continue;
        }
        for f in ours {
            let _ = std::fs::remove_file(d.join(f));
        }
        // Left in place if the operator put something else there.
        let _ = std::fs::remove_dir(&d);
    }
    Ok(())
}

/// Write aside with `mode`, then rename over `path`.
fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let tmp = path.with_extension("tmp-edge-agent");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))?;
    Ok(())
}

fn reload(cfg: &AgentConfig) -> Result<()> {
    let Some((cmd, args)) = cfg.reload.split_first() else {
        return Ok(());
    };
    let out = Command::new(cmd)
        .args(args)
        .output()
        .with_context(|| format!("--reload {cmd}"))?;
    if !out.status.success() {
        bail!(
            "--reload {}: {}: {}",
            cfg.reload.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn certificates_of_hostnames_no_longer_served_are_removed() {
        let dir = std::env::temp_dir().join(format!("totoro-agent-certs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let set = |hosts: &[&str]| {
            let list: Vec<Value> = hosts
                .iter()
                .map(|h| json!({ "hostname": h, "fullchain_pem": "C", "privkey_pem": "K" }))
                .collect();
            write_certs(&dir, &json!({ "certificates": list })).unwrap();
        };
        set(&["a.hoge.test", "b.fuga.test"]);
        std::fs::create_dir_all(dir.join("operator-notes")).unwrap();
        std::fs::write(dir.join("operator-notes/readme"), "x").unwrap();
        set(&["a.hoge.test"]);
        assert!(dir.join("a.hoge.test/privkey.pem").is_file());
        assert!(!dir.join("b.fuga.test").exists());
        assert!(dir.join("operator-notes/readme").is_file());
        let mode = std::fs::metadata(dir.join("a.hoge.test/privkey.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_map_holds_checked_routes_only() {
        let cfg = serde_json::json!({
            "config_hash": "h",
            "routes": { "app.hoge.com": "10.100.1.1:8080", "wiki.fuga.com": "10.100.2.1:8000" },
        });
        let map = nginx_map(&cfg).unwrap();
        assert!(map.contains("map $host $kokoa_backend {\n"));
        assert!(map.contains("    \"app.hoge.com\" \"10.100.1.1:8080\";\n"));
        assert!(map.ends_with("    default \"\";\n}\n"));
        let bad = serde_json::json!({ "routes": { "a.com\"; evil": "10.0.0.1:80" } });
        assert!(nginx_map(&bad).is_err());
        let bad = serde_json::json!({ "routes": { "a.com": "10.0.0.1:80; evil" } });
        assert!(nginx_map(&bad).is_err());
    }
}
