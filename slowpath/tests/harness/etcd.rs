//! A real etcd for tests: `etcd` (Debian's `etcd-server`) on free ports
//! with a temporary data directory, killed and removed on drop.
//!
//! Without the binary the tests print a SKIPPED line, except under CI
//! (env `CI` set), where a missing etcd is a failure: `.ci/etcd.sh`
//! installs it. Keys are written through the same v3 HTTP/JSON gateway the
//! tenant source reads.

use bench::proc::free_port;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde_json::{json, Value};

/// The etcd binary: `TOTORO_ETCD_BIN`, else `etcd` on PATH.
fn etcd_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("TOTORO_ETCD_BIN") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("etcd"))
        .find(|p| p.is_file())
}

/// Certificates for an etcd that requires client certificates.
pub struct TlsFiles {
    /// CA that signed both certificates.
    pub ca: PathBuf,
    /// etcd's certificate (127.0.0.1; server and client use, since etcd's
    /// own gateway dials its gRPC server with it).
    pub server_cert: PathBuf,
    /// Its key.
    pub server_key: PathBuf,
    /// A client certificate.
    pub client_cert: PathBuf,
    /// Its key.
    pub client_key: PathBuf,
}

impl TlsFiles {
    /// Makes a CA and the two certificates in `dir`.
    pub fn generate(dir: &Path) -> TlsFiles {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        };
        std::fs::create_dir_all(dir).unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "totoro test CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let leaf = |name: &str, sans: Vec<String>, usages| {
            let key = KeyPair::generate().unwrap();
            let mut p = CertificateParams::new(sans).unwrap();
            p.distinguished_name.push(DnType::CommonName, name);
            p.extended_key_usages = usages;
            let cert = p.signed_by(&key, &ca, &ca_key).unwrap();
            (cert.pem(), key.serialize_pem())
        };
        let server = leaf(
            "etcd",
            vec!["127.0.0.1".into(), "localhost".into()],
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        );
        let client = leaf("totoro", vec![], vec![ExtendedKeyUsagePurpose::ClientAuth]);
        let files = TlsFiles {
            ca: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client.key"),
        };
        std::fs::write(&files.ca, ca.pem()).unwrap();
        std::fs::write(&files.server_cert, server.0).unwrap();
        std::fs::write(&files.server_key, server.1).unwrap();
        std::fs::write(&files.client_cert, client.0).unwrap();
        std::fs::write(&files.client_key, client.1).unwrap();
        files
    }

    /// The `[etcd.tls]` the tenant source uses to reach this etcd.
    pub fn client_tls(&self) -> slowpath::etcd::EtcdTls {
        slowpath::etcd::EtcdTls {
            cert_file: Some(self.client_cert.clone()),
            key_file: Some(self.client_key.clone()),
            ca_file: Some(self.ca.clone()),
        }
    }
}

/// A running etcd.
pub struct Etcd {
    child: Option<Child>,
    bin: PathBuf,
    /// Client port (the v3 gateway is served here too).
    pub client_port: u16,
    peer_port: u16,
    /// Data directory (and log, certificates).
    pub dir: PathBuf,
    /// `http://127.0.0.1:<client port>` (https with TLS).
    pub url: String,
    /// Certificates, when started with [`Etcd::start_tls`].
    pub tls: Option<TlsFiles>,
    agent: ureq::Agent,
    /// Root password once [`Etcd::enable_auth`] ran.
    root_password: Option<String>,
}

impl Etcd {
    /// Starts a plain-HTTP etcd; `None` (after a SKIPPED line naming
    /// `test`) when etcd is not installed and `CI` is not set.
    pub fn start(test: &str) -> Option<Etcd> {
        Self::launch(test, false)
    }

    /// Starts an etcd that serves HTTPS and requires client certificates.
    pub fn start_tls(test: &str) -> Option<Etcd> {
        Self::launch(test, true)
    }

    fn launch(test: &str, tls: bool) -> Option<Etcd> {
        let Some(bin) = etcd_binary() else {
            if std::env::var_os("CI").is_some() {
                panic!("[{test}] etcd is not installed; CI must have it (.ci/etcd.sh)");
            }
            eprintln!("[{test}] etcd: SKIPPED (no etcd on PATH; .ci/etcd.sh installs it)");
            return None;
        };
        let dir = std::env::temp_dir().join(format!(
            "totoro-etcd-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let tls = tls.then(|| TlsFiles::generate(&dir.join("certs")));
        let mut agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(10));
        if let Some(t) = &tls {
            let cfg = t.client_tls().client_config().unwrap();
            agent = agent.tls_config(Arc::clone(&cfg));
        }
        let client_port = free_port();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let mut etcd = Etcd {
            child: None,
            bin,
            client_port,
            peer_port: free_port(),
            url: format!("{scheme}://127.0.0.1:{client_port}"),
            dir,
            tls,
            agent: agent.build(),
            root_password: None,
        };
        etcd.restart();
        Some(etcd)
    }

    /// The endpoint as an frps.toml would name it (`127.0.0.1:<port>`).
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// Moves etcd to another client port (and restarts it there), e.g. to
    /// change keys where a tenant source pointed at the old port cannot
    /// see them; `restart_on(old port)` moves it back.
    pub fn restart_on(&mut self, client_port: u16) {
        self.kill();
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        self.client_port = client_port;
        self.url = format!("{scheme}://127.0.0.1:{client_port}");
        self.restart();
    }

    /// A port nothing listens on now.
    pub fn unused_port() -> u16 {
        free_port()
    }

    /// SIGKILL etcd (the data directory stays).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// (Re)starts etcd on the same ports and data directory and waits
    /// until it serves.
    pub fn restart(&mut self) {
        self.kill();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--name=totoro-test")
            .arg(format!("--data-dir={}", self.dir.join("data").display()))
            .arg(format!("--listen-client-urls={}", self.url))
            .arg(format!("--advertise-client-urls={}", self.url))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=totoro-test={peer}"))
            .arg("--logger=zap")
            .arg("--log-outputs=stderr")
            .arg("--log-level=warn");
        if let Some(t) = &self.tls {
            cmd.arg(format!("--cert-file={}", t.server_cert.display()))
                .arg(format!("--key-file={}", t.server_key.display()))
                .arg(format!("--trusted-ca-file={}", t.ca.display()))
                .arg("--client-cert-auth");
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("etcd.log"))
            .unwrap();
        let child = cmd
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        self.child = Some(child);
        self.wait_ready();
    }

    /// Waits until a range through the gateway succeeds.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            // /health answers before the gateway does; a range proves both.
            let probe = self.try_post(
                "/v3/kv/range",
                json!({ "key": B64.encode("/totoro-probe") }),
            );
            if probe.is_ok() {
                return;
            }
            if let Some(c) = &mut self.child {
                if let Ok(Some(status)) = c.try_wait() {
                    panic!("etcd exited ({status}); log:\n{}", self.log());
                }
            }
            assert!(
                Instant::now() < deadline,
                "etcd did not come up: {probe:?}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// etcd's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("etcd.log")).unwrap_or_default()
    }

    fn try_post(&self, path: &str, body: Value) -> Result<Value, String> {
        let mut req = self.agent.post(&format!("{}{path}", self.url));
        if let Some(pw) = &self.root_password {
            let auth = self
                .agent
                .post(&format!("{}/v3/auth/authenticate", self.url))
                .send_json(json!({ "name": "root", "password": pw }))
                .map_err(|e| e.to_string())?
                .into_json::<Value>()
                .map_err(|e| e.to_string())?;
            let token = auth["token"].as_str().unwrap_or_default().to_owned();
            req = req.set("Authorization", &token);
        }
        match req.send_json(body) {
            Ok(r) => r.into_json().map_err(|e| e.to_string()),
            Err(ureq::Error::Status(code, r)) => Err(format!(
                "HTTP {code}: {}",
                r.into_string().unwrap_or_default()
            )),
            Err(e) => Err(e.to_string()),
        }
    }

    /// POST to the gateway (as root once auth is on); panics on failure.
    pub fn post(&self, path: &str, body: Value) -> Value {
        self.try_post(path, body)
            .unwrap_or_else(|e| panic!("etcd {path}: {e}"))
    }

    /// `etcdctl put key value`; returns the new revision.
    pub fn put(&self, key: &str, value: &str) -> i64 {
        let v = self.post(
            "/v3/kv/put",
            json!({ "key": B64.encode(key), "value": B64.encode(value) }),
        );
        revision(&v)
    }

    /// `etcdctl del key`; returns the new revision.
    pub fn delete(&self, key: &str) -> i64 {
        let v = self.post("/v3/kv/deleterange", json!({ "key": B64.encode(key) }));
        revision(&v)
    }

    /// Creates user `root` with `password`, grants it the root role and
    /// turns authentication on; later helper calls authenticate as root.
    pub fn enable_auth(&mut self, password: &str) {
        self.post(
            "/v3/auth/user/add",
            json!({ "name": "root", "password": password }),
        );
        self.post(
            "/v3/auth/user/grant",
            json!({ "user": "root", "role": "root" }),
        );
        self.post("/v3/auth/enable", json!({}));
        self.root_password = Some(password.to_owned());
    }
}

fn revision(v: &Value) -> i64 {
    v["header"]["revision"]
        .as_str()
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("no revision in {v}"))
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
