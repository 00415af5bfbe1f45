//! Test harness: starts the real `slowpath serve` on a free port against a
//! fresh SQLite file or a fresh PostgreSQL database, and talks HTTP to it.
//!
//! `TOTORO_TEST_DATABASE_URL` (postgres://…) enables the PostgreSQL runs;
//! without it they print a skip line.

#![allow(dead_code)]

pub mod agent;
pub mod dns;
pub mod etcd;
pub mod mesh;
pub mod report;
pub mod ring;

use bench::proc::free_port;
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Which database a run uses.
#[derive(Debug, Clone)]
pub enum Backend {
    /// SQLite file in the data directory.
    Sqlite,
    /// A fresh schema on this server.
    Postgres(String),
}

/// Runs `f` once per available backend.
pub fn each_backend(name: &str, f: impl Fn(Backend)) {
    eprintln!("[{name}] sqlite");
    f(Backend::Sqlite);
    match std::env::var("TOTORO_TEST_DATABASE_URL") {
        Ok(url) if !url.is_empty() => {
            eprintln!("[{name}] postgres");
            f(Backend::Postgres(url));
        }
        _ => eprintln!("[{name}] postgres: SKIPPED (TOTORO_TEST_DATABASE_URL not set)"),
    }
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn unique(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}{}_{n}_{nanos}", std::process::id())
}

/// `base` with its database name replaced by `db`.
pub fn with_database(base: &str, db: &str) -> String {
    let (url, query) = match base.split_once('?') {
        Some((u, q)) => (u, format!("?{q}")),
        None => (base, String::new()),
    };
    let prefix = url.rsplit_once('/').map(|(p, _)| p).unwrap_or(url);
    format!("{prefix}/{db}{query}")
}

/// Runs `f` to completion on a runtime of its own.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// A fresh connection to `url`.
async fn connect(url: &str) -> sqlx::AnyConnection {
    use sqlx::Connection as _;
    sqlx::any::install_default_drivers();
    sqlx::AnyConnection::connect(url).await.unwrap()
}

/// Runs one statement on `base` (outside a transaction).
pub fn admin_sql(base: &str, sql: &str) {
    block_on(async {
        use sqlx::Executor as _;
        connect(base).await.execute(sql).await.unwrap();
    });
}

/// Drops the test database `name`, ending its sessions. PostgreSQL may
/// refuse while an autovacuum worker is inside it (FORCE cannot end
/// workers that belong to no role unless the caller has
/// `pg_signal_backend`), so it tries again for a few seconds and then only
/// warns: a leftover database must not fail the test that made it.
pub fn drop_database(base: &str, name: &str) {
    let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
    let mut last = String::new();
    for _ in 0..50 {
        let r = block_on(async {
            use sqlx::Executor as _;
            connect(base).await.execute(sql.as_str()).await.map(|_| ())
        });
        match r {
            Ok(()) => return,
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("warning: test database {name} left behind: {last}");
}

/// Sends `len` bytes through the echo tunnel at `port`, checks they come
/// back intact, and returns the bytes moved (both directions).
pub fn echo(port: u16, len: usize) -> u64 {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
    let mut w = s.try_clone().unwrap();
    let sent = data.clone();
    let t = std::thread::spawn(move || w.write_all(&sent).unwrap());
    let mut got = vec![0u8; len];
    s.read_exact(&mut got).unwrap();
    t.join().unwrap();
    assert!(got == data, "echoed bytes differ");
    2 * len as u64
}

/// Polls `f` every 20 ms until it holds; panics naming `what` once `limit`
/// has passed.
pub fn wait_within(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// [`wait_within`] ten seconds.
pub fn wait_until(what: &str, f: impl FnMut() -> bool) {
    wait_within(Duration::from_secs(10), what, f)
}

/// The string `key` of every element of the JSON array `list`.
pub fn strings_at<'a>(list: &'a Value, key: &str) -> Vec<&'a str> {
    list.as_array()
        .unwrap_or_else(|| panic!("not an array: {list}"))
        .iter()
        .map(|v| v[key].as_str().unwrap_or_else(|| panic!("no {key}: {v}")))
        .collect()
}

/// Options for a client that follows a resolved invite's frpc.toml: its
/// token, and its ticket (the one the response names) in the metas.
pub fn ticket_opts(sp: &Slowpath, resolved: &Value) -> bench::client::ClientOpts {
    let toml_text = resolved["frpc_toml"].as_str().unwrap();
    let cfg: toml::Table = toml::from_str(toml_text).expect("frpc_toml parses as TOML");
    let token = cfg["auth"]["token"].as_str().unwrap();
    let ticket = cfg["metadatas"]["ticket"].as_str().unwrap();
    assert_eq!(ticket, resolved["connection_ticket"].as_str().unwrap());
    assert_eq!(cfg["serverPort"].as_integer().unwrap() as u16, sp.frp_port);
    let mut o = bench::client::ClientOpts::new(sp.frp_addr(), token);
    o.metas.insert("ticket".into(), ticket.into());
    o
}

/// Log in with the in-repo frp client; a refusal comes back as its reason.
pub fn login(o: &bench::client::ClientOpts) -> Result<bench::client::Client, String> {
    bench::client::Client::login(o.clone()).map_err(|e| match e {
        bench::client::ClientError::Refused(r) => r,
        e => format!("error: {e}"),
    })
}

/// The first login once the fastpath has a table with the invite in it
/// (a refusal other than a missing invite fails at once).
pub fn first_login(o: &bench::client::ClientOpts) -> bench::client::Client {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match login(o) {
            Ok(c) => return c,
            Err(r) if Instant::now() < deadline && !r.contains("max_conns") => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(r) => panic!("ticket login: {r}"),
        }
    }
}

/// The audit rows `query` (`&kind=…` and so on) selects, newest first.
pub fn audit(sp: &Slowpath, query: &str) -> Vec<Value> {
    let (status, v) = sp.admin_call(
        "GET",
        &format!("/api/v1/admin/audit?limit=500{query}"),
        None,
    );
    assert_eq!(status, 200, "{v}");
    v.as_array().cloned().unwrap_or_default()
}

/// Wait (at most 5 s) until the audit log has a row of `kind` matching
/// `pred`.
pub fn wait_audit(sp: &Slowpath, kind: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(row) = audit(sp, &format!("&kind={kind}"))
            .into_iter()
            .find(|r| pred(r))
        {
            return row;
        }
        assert!(
            Instant::now() < deadline,
            "no {kind} row; audit: {:#?}",
            audit(sp, "")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `slowpath serve` with `extra` must refuse to start: its stderr, once it
/// has exited (non-zero) within 30 s.
pub fn start_fails(extra: &[&str]) -> String {
    let dir = std::env::temp_dir().join(unique("totoro-fail-"));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let mut child = Command::new(env!("CARGO_BIN_EXE_slowpath"))
        .arg("serve")
        .arg("--data-dir")
        .arg(&dir)
        .arg("--shm-dir")
        .arg(dir.join("shm"))
        .args(["--listen", &listen])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("slowpath serve {extra:?} did not refuse to start");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!status.success(), "slowpath serve {extra:?} started: {err}");
    err
}

/// The first column of every row `sql` returns, as text.
pub fn query_strings(url: &str, sql: &str) -> Vec<String> {
    block_on(async {
        use sqlx::Row as _;
        let rows = sqlx::query(sql)
            .fetch_all(&mut connect(url).await)
            .await
            .unwrap();
        rows.iter()
            .map(|r| r.try_get::<String, _>(0).unwrap())
            .collect()
    })
}

/// Creates a database for one test; returns its name and URL. The role in
/// `base` needs CREATEDB (.ci/postgres.sh makes it so).
fn fresh_database(base: &str) -> (String, String) {
    let name = unique("totoro_t_");
    admin_sql(base, &format!("CREATE DATABASE {name}"));
    let url = with_database(base, &name);
    (name, url)
}

/// A running `slowpath serve` (or `up`, see [`Slowpath::up`]).
pub struct Slowpath {
    child: Child,
    cmd_args: Vec<std::ffi::OsString>,
    /// frp port of the fastpath `up` started (0 for `serve`).
    pub frp_port: u16,
    /// Its mesh relay port (0: none, or `serve`).
    pub mesh_port: u16,
    /// Data directory.
    pub dir: PathBuf,
    /// Shared-memory directory (a plain temp directory in tests).
    pub shm: PathBuf,
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    /// Admin key.
    pub admin: String,
    /// The local node id.
    pub local_node: String,
    /// PostgreSQL server URL and the per-test database to drop afterwards.
    pg: Option<(String, String)>,
}

impl Slowpath {
    /// Starts one with extra flags.
    pub fn start(backend: &Backend, extra: &[&str]) -> Slowpath {
        Self::launch("serve", backend, extra)
    }

    /// `slowpath up` on a free frp port: the fastpath runs as its child.
    pub fn up(backend: &Backend, extra: &[&str]) -> Slowpath {
        let frp = free_port().to_string();
        let mesh = free_port().to_string();
        let mut args = vec!["--frp-port", frp.as_str()];
        if !extra.contains(&"--public-addr") {
            args.extend_from_slice(&["--public-addr", "127.0.0.1"]);
        }
        // Tests run side by side: no two on the default relay port.
        if !extra.contains(&"--mesh-relay-port") {
            args.extend_from_slice(&["--mesh-relay-port", mesh.as_str()]);
        }
        args.extend_from_slice(extra);
        let mut sp = Self::launch("up", backend, &args);
        sp.frp_port = frp.parse().unwrap();
        sp.mesh_port = match extra.iter().position(|a| *a == "--mesh-relay-port") {
            Some(i) => extra[i + 1].parse().unwrap(),
            None => mesh.parse().unwrap(),
        };
        sp
    }

    /// A second `slowpath up` on `first`'s PostgreSQL database, with its
    /// own data and shm directories (so its own node and fastpath); the
    /// database stays `first`'s, dropped with it.
    pub fn up_sharing(first: &Slowpath, extra: &[&str]) -> Slowpath {
        Self::up(&Backend::Sqlite, &Self::sharing(first, extra))
    }

    /// [`Slowpath::up_sharing`] for `slowpath serve` (no fastpath).
    pub fn start_sharing(first: &Slowpath, extra: &[&str]) -> Slowpath {
        Self::start(&Backend::Sqlite, &Self::sharing(first, extra))
    }

    /// `extra` after `--database-url` of `first`'s database.
    fn sharing<'a>(first: &Slowpath, extra: &[&'a str]) -> Vec<&'a str> {
        let url = first
            .database_url()
            .expect("a database to share: the first run is on PostgreSQL");
        // Leaked: a few bytes per test, for flags borrowed like the rest.
        let mut args = vec!["--database-url", &*String::leak(url)];
        args.extend_from_slice(extra);
        args
    }

    fn launch(mode: &str, backend: &Backend, extra: &[&str]) -> Slowpath {
        let dir = std::env::temp_dir().join(unique("totoro-sp-"));
        let shm = dir.join("shm");
        // Owner-only, as an operator's data directory is (one open to
        // others is repaired with a warning, which tests of a clean start
        // would see).
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .unwrap();
        // `--listen` in `extra` (say 0.0.0.0:PORT) replaces the default.
        let listen = extra
            .iter()
            .position(|a| *a == "--listen")
            .map(|i| extra[i + 1].to_owned());
        let port = match &listen {
            Some(l) => l.rsplit_once(':').unwrap().1.parse().unwrap(),
            None => free_port(),
        };
        let mut args: Vec<std::ffi::OsString> = vec![
            mode.into(),
            "--data-dir".into(),
            dir.clone().into(),
            "--shm-dir".into(),
            shm.clone().into(),
        ];
        if listen.is_none() {
            args.push("--listen".into());
            args.push(format!("127.0.0.1:{port}").into());
        }
        args.extend(extra.iter().map(Into::into));
        let mut pg = None;
        if let Backend::Postgres(base) = backend {
            let (name, url) = fresh_database(base);
            args.push("--database-url".into());
            args.push(url.into());
            pg = Some((base.clone(), name));
        }
        let child = spawn(&args, &dir);
        let base = format!("http://127.0.0.1:{port}");
        Self::wait_healthy(&base, &dir);
        let admin = std::fs::read_to_string(dir.join("admin.key"))
            .unwrap()
            .trim()
            .to_owned();
        let mut sp = Slowpath {
            child,
            cmd_args: args,
            frp_port: 0,
            mesh_port: 0,
            dir,
            shm,
            base,
            admin,
            local_node: String::new(),
            pg,
        };
        let (status, stats) = sp.admin_call("GET", "/api/v1/admin/stats", None);
        assert_eq!(status, 200, "{stats}");
        sp.local_node = stats["local_node_id"].as_str().unwrap().to_owned();
        sp
    }

    fn wait_healthy(base: &str, dir: &std::path::Path) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if ureq::get(&format!("{base}/healthz")).call().is_ok() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "slowpath did not come up; log:\n{}",
                std::fs::read_to_string(dir.join("slowpath.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL the slowpath process (not its fastpath child, which must go
    /// on serving).
    pub fn kill_hard(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, as systemd stops it; how long it took to exit (None: not
    /// within `limit`, then it is killed).
    pub fn terminate(&mut self, limit: Duration) -> Option<Duration> {
        let t0 = Instant::now();
        // SAFETY: kill(2) touches no memory of ours; the pid is our child's,
        // not reaped yet (only this struct waits for it).
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        while t0.elapsed() < limit {
            if let Ok(Some(_)) = self.child.try_wait() {
                return Some(t0.elapsed());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.kill_hard();
        None
    }

    /// Start it again with the same flags, data directory and database.
    pub fn restart(&mut self) {
        self.child = spawn(&self.cmd_args, &self.dir);
        Self::wait_healthy(&self.base, &self.dir);
    }

    /// The frp address of the fastpath `up` started.
    pub fn frp_addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.frp_port))
    }

    /// Wait (at most 20 s) until the fastpath `up` started accepts.
    pub fn wait_frp(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(self.frp_addr()).is_err() {
            assert!(
                Instant::now() < deadline,
                "fastpath did not start:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The PostgreSQL URL of this run's database (None on SQLite).
    pub fn database_url(&self) -> Option<String> {
        if let Some((base, name)) = &self.pg {
            return Some(with_database(base, name));
        }
        // A second control plane on another run's database
        // ([`Slowpath::up_sharing`]).
        let args = &self.cmd_args;
        args.iter()
            .position(|a| a == "--database-url")
            .and_then(|i| args.get(i + 1))
            .map(|u| u.to_string_lossy().into_owned())
    }

    /// The slowpath's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("slowpath.log")).unwrap_or_default()
    }

    /// A request with an optional bearer key and JSON body; returns status and JSON.
    pub fn call(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Option<&str>,
    ) -> (u16, Value) {
        call(&format!("{}{path}", self.base), method, key, body).0
    }

    /// A request with the admin key.
    pub fn admin_call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let body = body.map(|b| b.to_string());
        self.call(method, path, Some(&self.admin), body.as_deref())
    }

    /// Registers a node; returns (node json, node key).
    pub fn node(&self, body: Value) -> (Value, String) {
        let (status, v) = self.admin_call("POST", "/api/v1/admin/nodes", Some(body));
        assert_eq!(status, 201, "{v}");
        let key = v["node_key"].as_str().unwrap().to_owned();
        (v, key)
    }

    /// Creates an invite with a node key; returns the response.
    pub fn invite(&self, node_key: &str, body: Value) -> (u16, Value) {
        self.call(
            "POST",
            "/api/v1/nodes/invites",
            Some(node_key),
            Some(&body.to_string()),
        )
    }

    /// Creates an invite for the local node with the admin key (`body` as
    /// the API takes it); returns the invite, code included.
    pub fn admin_invite(&self, body: Value) -> Value {
        let path = format!("/api/v1/admin/nodes/{}/invites", self.local_node);
        let (status, inv) = self.admin_call("POST", &path, Some(body));
        assert_eq!(status, 201, "{inv}");
        inv
    }

    /// Resolves a code.
    pub fn resolve(&self, code: &str) -> (u16, Value) {
        let body = serde_json::json!({ "code": code }).to_string();
        self.call("POST", "/api/v1/invites/resolve", None, Some(&body))
    }
}

/// One HTTP request; returns ((status, json), Retry-After).
pub fn call(
    url: &str,
    method: &str,
    key: Option<&str>,
    body: Option<&str>,
) -> ((u16, Value), Option<String>) {
    let mut req = ureq::request(method, url).timeout(Duration::from_secs(30));
    if let Some(k) = key {
        req = req.set("Authorization", &format!("Bearer {k}"));
    }
    let resp = match body {
        Some(b) => req.set("Content-Type", "application/json").send_string(b),
        None => req.call(),
    };
    let resp = match resp {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{method} {url}: {e}"),
    };
    let status = resp.status();
    let retry = resp.header("Retry-After").map(str::to_owned);
    let text = resp.into_string().unwrap_or_default();
    let json = serde_json::from_str(&text).unwrap_or(Value::String(text));
    ((status, json), retry)
}

fn spawn(args: &[std::ffi::OsString], dir: &std::path::Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("slowpath.log"))
        .unwrap();
    Command::new(env!("CARGO_BIN_EXE_slowpath"))
        .args(args)
        .env_remove("ADMIN_API_KEY")
        .env_remove("TOTORO_DATABASE_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap()
}

/// SIGKILL the fastpath holding the instance lock in `shm`, if any: a
/// fastpath child (from `up`) outlives a killed slowpath by design.
pub fn kill_instance_fastpath(shm: &std::path::Path) {
    if let Some(pid) = instance_fastpath(shm) {
        // SAFETY: signalling the process the kernel says holds the lock.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
}

/// The pid of the fastpath holding the instance lock in `shm` (from the
/// kernel's lock table, not the file).
pub fn instance_fastpath(shm: &std::path::Path) -> Option<i32> {
    shm::ShmDir::open(shm).ok()?.holder(shm::LOCK_FILE)
}

impl Drop for Slowpath {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        kill_instance_fastpath(&self.shm);
        let _ = std::fs::remove_dir_all(&self.dir);
        if let Some((base, name)) = &self.pg {
            drop_database(base, name);
        }
    }
}

/// A fresh database for tests that use the library in-process: a SQLite
/// file in a temporary directory, or a new PostgreSQL database. Removed on
/// drop, which must happen outside any tokio runtime, after its pools are
/// closed.
pub struct TestDb {
    /// The URL to open.
    pub url: String,
    dir: PathBuf,
    pg: Option<(String, String)>,
}

impl TestDb {
    /// A new, empty database on `backend`.
    pub fn new(backend: &Backend) -> TestDb {
        let dir = std::env::temp_dir().join(unique("totoro-db-"));
        std::fs::create_dir_all(&dir).unwrap();
        let (url, pg) = match backend {
            Backend::Sqlite => (
                format!("sqlite://{}?mode=rwc", dir.join("test.db").display()),
                None,
            ),
            Backend::Postgres(base) => {
                let (name, url) = fresh_database(base);
                (url, Some((base.clone(), name)))
            }
        };
        TestDb { url, dir, pg }
    }

    /// A directory that goes with the database (for shm files and such).
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        if let Some((base, name)) = &self.pg {
            drop_database(base, name);
        }
    }
}
