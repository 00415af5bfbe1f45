//! Issue 3's two policy figures.
//!
//! 1. **Compile + publish at N invites** (target < 1 s): the slowpath library
//!    against a fresh SQLite file (and a fresh PostgreSQL database when
//!    `TOTORO_TEST_DATABASE_URL=postgres://…` is set), N realistic invite
//!    rows bulk-inserted in one transaction, then `Publisher::publish(true)`
//!    timed 10 times, plus the pieces (compile, encode, parse, write) timed
//!    on their own.
//! 2. **Propagation, "API call → enforced on every worker"** (target p99 <
//!    50 ms): the real `slowpath up` (which runs the real fastpath as its
//!    child); invite create and revoke calls timed one by one. Those calls
//!    return only once every live fastpath worker reports the new generation
//!    in its ring header, and the bench checks that independently by reading
//!    the ring headers itself right after each call returns. Run with a
//!    near-empty table and again after N invites were loaded into the
//!    running slowpath's database.
//!
//! Env: `POLICY_BENCH_INVITES` (N, default 100000), `POLICY_BENCH_ITERS`
//! (create+revoke pairs per propagation run, default 300),
//! `TOTORO_TEST_DATABASE_URL` (adds the PostgreSQL runs).
//!
//! `cargo bench -p totoro-slowpath --bench policy`

use bench::proc::free_port;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use proto::policy::{PolicyTable, PortSet};
use serde_json::{json, Value};
use shm::{RingHeader, ShmDir};
use slowpath::credentials;
use slowpath::domain::nodes::{self, NewNode};
use slowpath::domain::{invites, tickets};
use slowpath::policy::publish::{self, Publisher};
use slowpath::store::db::{self, Db};

// The tests' helpers for per-run PostgreSQL databases.
#[path = "../tests/harness/mod.rs"]
mod harness;
use harness::{admin_sql, drop_database, with_database};

/// The port pool of the node the library run registers.
const BENCH_POOL: (u16, u16) = (10000, 19999);
/// The default pool of the node `slowpath up` registers for itself.
const UP_POOL: (u16, u16) = (10000, 10999);
/// Rows per INSERT statement.
const BATCH: usize = 1000;
/// The query `invites::for_policy` runs (its column list), timed without
/// the row decoding.
fn for_policy_sql() -> String {
    format!(
        "SELECT {} FROM invites WHERE node_id = $1 AND expires_ms > $2",
        invites::POLICY_COLUMNS
    )
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}{}_{nanos}", std::process::id())
}

// ---------------------------------------------------------------- stats

/// Nearest-rank percentile of sorted samples.
fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn sorted(v: &[Duration]) -> Vec<Duration> {
    let mut s = v.to_vec();
    s.sort();
    s
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e3)
}

fn median(v: &[Duration]) -> Duration {
    pct(&sorted(v), 50.0)
}

// ---------------------------------------------------------------- rows

/// SplitMix64: varied but reproducible row contents.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }

    fn port(&mut self, (lo, hi): (u16, u16)) -> u16 {
        lo + self.below(u64::from(hi - lo) + 1) as u16
    }
}

/// A varied port pool inside `pool`, in its canonical text form.
fn port_pool(rng: &mut Rng, pool: (u16, u16)) -> String {
    let ranges = match rng.below(5) {
        0 => vec![pool],
        1 => {
            let a = rng.port(pool);
            let b = a.saturating_add(9 + rng.below(990) as u16).min(pool.1);
            vec![(a, b)]
        }
        2 => {
            let p = rng.port(pool);
            vec![(p, p)]
        }
        3 => {
            let a = rng.port(pool);
            let c = rng.port(pool);
            vec![
                (a, a.saturating_add(rng.below(50) as u16).min(pool.1)),
                (c, c.saturating_add(rng.below(200) as u16).min(pool.1)),
            ]
        }
        _ => (0..3)
            .map(|_| {
                let p = rng.port(pool);
                (p, p)
            })
            .collect(),
    };
    PortSet::from_ranges(ranges).to_string()
}

fn sql_text(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Inserts `n` invite rows for `node_id` in one transaction, [`BATCH`] rows
/// per statement. Every row falls inside the policy horizon (so the table
/// carries all of them): ~5% revoked, ~2% expired in the last 30 minutes
/// (still carried: a ticket issued before may still be live), the rest
/// valid for 1 hour to 1 year; port pools, types and caps vary.
async fn insert_invites(db: &Db, node_id: &str, n: usize, pool: (u16, u16), seed: u64) {
    let now = slowpath::clock::now_ms();
    let mut rng = Rng(seed);
    let types = [
        "tcp",
        "tcp,udp",
        "tcp,udp,http,https",
        "http,https",
        "tcp,stcp",
        "udp",
    ];
    let mut tx = db.begin().await.unwrap();
    let mut done = 0;
    while done < n {
        let rows = BATCH.min(n - done);
        let mut sql = String::with_capacity(rows * 300);
        sql.push_str(
            "INSERT INTO invites (id, node_id, code_hash, created_ms, expires_ms, max_uses, used, \
             revoked, revoked_ms, proxy_types, port_pool, max_conns, max_proxies, domain_suffix, \
             ticket_ttl_s, note) VALUES ",
        );
        for i in 0..rows {
            let created = now - rng.below(30 * 86_400_000) as i64;
            let kind = rng.below(100);
            let (revoked, revoked_ms) = if kind < 5 {
                (1, (created + now) / 2)
            } else {
                (0, 0)
            };
            let expires = if (5..7).contains(&kind) {
                now - 60_000 - rng.below(29 * 60_000) as i64
            } else {
                now + 3_600_000 + rng.below(364 * 86_400_000) as i64
            };
            let max_uses = rng.pick(&[0i64, 1, 1, 1, 5, 10, 100]);
            let used = if max_uses == 0 {
                rng.below(50) as i64
            } else {
                rng.below(max_uses as u64 + 1) as i64
            };
            let suffix = if rng.below(10) < 3 {
                format!("u{:06x}.tunnels.example.com", rng.below(1 << 24))
            } else {
                String::new()
            };
            let note = if rng.below(5) == 0 {
                format!("bench row {}", done + i)
            } else {
                String::new()
            };
            if i > 0 {
                sql.push(',');
            }
            let _ = write!(
                sql,
                "({id},{node},{code},{created},{expires},{max_uses},{used},{revoked},{revoked_ms},\
                 {types},{ports},{conns},{proxies},{suffix},{ttl},{note})",
                id = sql_text(&format!("inv_{}", credentials::random_hex(16))),
                node = sql_text(node_id),
                code = sql_text(&credentials::random_hex(32)),
                types = sql_text(rng.pick(&types)),
                ports = sql_text(&port_pool(&mut rng, pool)),
                conns = rng.pick(&[0, 1, 2, 5, 10]),
                proxies = rng.pick(&[0, 1, 3, 10, 50]),
                suffix = sql_text(&suffix),
                ttl = rng.pick(&[600, 1800, 3600]),
                note = sql_text(&note),
            );
        }
        sqlx::raw_sql(&sql).execute(&mut *tx).await.unwrap();
        done += rows;
    }
    tx.commit().await.unwrap();
}

// ---------------------------------------------------------------- databases

/// Which database a run uses.
#[derive(Clone)]
enum Backend {
    Sqlite,
    Postgres(String),
}

impl Backend {
    fn name(&self) -> &'static str {
        match self {
            Backend::Sqlite => "SQLite",
            Backend::Postgres(_) => "PostgreSQL",
        }
    }
}

fn backends() -> Vec<Backend> {
    let mut v = vec![Backend::Sqlite];
    match std::env::var("TOTORO_TEST_DATABASE_URL") {
        Ok(url) if url.starts_with("postgres") => v.push(Backend::Postgres(url)),
        _ => eprintln!("PostgreSQL: SKIPPED (TOTORO_TEST_DATABASE_URL not set)"),
    }
    v
}

/// A fresh PostgreSQL database, dropped with this value.
struct PgDb {
    base: String,
    name: String,
    url: String,
}

impl PgDb {
    fn create(base: &str) -> PgDb {
        let name = unique("totoro_bench_");
        admin_sql(base, &format!("CREATE DATABASE {name}"));
        PgDb {
            base: base.to_owned(),
            url: with_database(base, &name),
            name,
        }
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        drop_database(&self.base, &self.name);
    }
}

// ---------------------------------------------------------------- part 1

struct PublishRun {
    backend: &'static str,
    invites_table: usize,
    table_bytes: usize,
    storage: String,
    insert: Duration,
    first_publish: Duration,
    publish: Vec<Duration>,
    publish_us: Vec<Duration>,
    server_compile_us: Vec<Duration>,
    server_encode_us: Vec<Duration>,
    incremental: Vec<Duration>,
    incremental_bytes: usize,
    compile: Vec<Duration>,
    for_policy: Vec<Duration>,
    fetch: Vec<Duration>,
    encode: Vec<Duration>,
    parse: Vec<Duration>,
    write: Vec<Duration>,
    meta_set: Vec<Duration>,
}

async fn publish_run(backend: &Backend, url: &str, dir: &Path, shm: &Path, n: usize) -> PublishRun {
    let db = db::open(url).await.unwrap();
    tickets::ensure_signer(&db, dir).await.unwrap();
    let (node, _key) = nodes::register(
        &db,
        NewNode {
            name: "bench".into(),
            server_addr: "127.0.0.1".into(),
            server_port: 7000,
            region: "eu-bench".into(),
            tags: vec!["bench".into()],
            public: false,
            port_pool: Some(format!("{}-{}", BENCH_POOL.0, BENCH_POOL.1)),
            proxy_types: Some(
                ["tcp", "udp", "http", "https", "stcp"]
                    .iter()
                    .map(|s| (*s).to_owned())
                    .collect(),
            ),
            max_proxies_per_session: 0,
            token: None,
            sub_domain_host: String::new(),
            vhost_http_port: 0,
            vhost_https_port: 0,
        },
    )
    .await
    .unwrap();

    let t = Instant::now();
    insert_invites(&db, &node.id, n, BENCH_POOL, 0x7070_0001).await;
    let insert = t.elapsed();

    let instance = std::sync::Arc::new(shm::InstanceDir::open(shm).unwrap());
    let publisher = Publisher::new(db.clone(), instance, node.id.clone());
    let t = Instant::now();
    publisher.publish(true).await.unwrap();
    let first_publish = t.elapsed();
    let mut publish = Vec::new();
    let mut publish_us = Vec::new();
    let mut server_compile_us = Vec::new();
    let mut server_encode_us = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        publisher.publish(true).await.unwrap();
        publish.push(t.elapsed());
        let status = publisher.status();
        publish_us.push(Duration::from_micros(status.publish_us));
        server_compile_us.push(Duration::from_micros(status.compile_us));
        server_encode_us.push(Duration::from_micros(status.encode_us));
    }

    let full_status = publisher.status();

    // The per-invite path the API uses: one invite created (or revoked),
    // that row re-read, the table re-encoded from the kept state, written.
    let mut incremental = Vec::new();
    for i in 0..10 {
        let (inv, _code) = invites::create(&db, &node, invites::NewInvite::default())
            .await
            .unwrap();
        if i % 2 == 1 {
            invites::revoke(&db, &inv.id.to_string(), None, "bench")
                .await
                .unwrap();
        }
        let t = Instant::now();
        publisher.publish_invite(inv.id).await.unwrap();
        incremental.push(t.elapsed());
    }
    let incremental_bytes = publisher.status().bytes;

    // The pieces, each on its own.
    let mut compile = Vec::new();
    let mut for_policy = Vec::new();
    let mut fetch = Vec::new();
    let mut encode = Vec::new();
    let mut parse = Vec::new();
    let mut write = Vec::new();
    let mut meta_set = Vec::new();
    let mut spec = None;
    for _ in 0..10 {
        let now = slowpath::clock::now_ms();
        let t = Instant::now();
        let s = publish::compile(&db, &node.id, now).await.unwrap();
        compile.push(t.elapsed());
        let t = Instant::now();
        let rows = invites::for_policy(&db, &node.id, now).await.unwrap();
        for_policy.push(t.elapsed());
        assert_eq!(rows.len(), s.invites.len());
        let t = Instant::now();
        let raw = sqlx::query(&for_policy_sql())
            .bind(&node.id)
            .bind(now - tickets::MAX_TICKET_TTL_S as i64 * 1000)
            .fetch_all(&db)
            .await
            .unwrap();
        fetch.push(t.elapsed());
        assert_eq!(raw.len(), rows.len());
        spec = Some(s);
    }
    let mut spec = spec.unwrap();
    spec.generation = 1_000_000;
    let mut bytes = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        bytes = spec.encode();
        encode.push(t.elapsed());
    }
    for _ in 0..10 {
        let t = Instant::now();
        let table = PolicyTable::parse(&bytes).unwrap();
        parse.push(t.elapsed());
        assert_eq!(table.invite_count(), spec.invites.len());
    }
    let split_tmp = shm.join("split.tbl.tmp");
    let split = shm.join("split.tbl");
    for _ in 0..10 {
        let t = Instant::now();
        tokio::fs::write(&split_tmp, &bytes).await.unwrap();
        tokio::fs::rename(&split_tmp, &split).await.unwrap();
        write.push(t.elapsed());
    }
    for i in 0..10 {
        let t = Instant::now();
        db::meta_set(&db, "bench_key", &i.to_string())
            .await
            .unwrap();
        meta_set.push(t.elapsed());
    }

    let storage = match backend {
        Backend::Sqlite => {
            let size = std::fs::metadata(dir.join("totoro.db"))
                .map(|m| m.len())
                .unwrap_or(0);
            format!("{:.1} MiB (whole file)", size as f64 / 1048576.0)
        }
        Backend::Postgres(_) => {
            use sqlx::Row as _;
            let row = sqlx::query("SELECT CAST(pg_total_relation_size('invites') AS BIGINT)")
                .fetch_one(&db)
                .await
                .unwrap();
            let size: i64 = row.try_get(0).unwrap();
            format!("{:.1} MiB (invites + indexes)", size as f64 / 1048576.0)
        }
    };
    db.close().await;
    PublishRun {
        backend: backend.name(),
        invites_table: full_status.invites,
        table_bytes: full_status.bytes,
        storage,
        insert,
        first_publish,
        publish,
        publish_us,
        server_compile_us,
        server_encode_us,
        incremental,
        incremental_bytes,
        compile,
        for_policy,
        fetch,
        encode,
        parse,
        write,
        meta_set,
    }
}

fn part1(rt: &tokio::runtime::Runtime, backend: &Backend, n: usize) -> PublishRun {
    let dir = std::env::temp_dir().join(unique("totoro-bench-policy-"));
    let shm = PathBuf::from("/dev/shm").join(unique("totoro-bench-policy-"));
    std::fs::create_dir_all(&dir).unwrap();
    let pg = match backend {
        Backend::Sqlite => None,
        Backend::Postgres(base) => Some(PgDb::create(base)),
    };
    let url = match &pg {
        Some(pg) => pg.url.clone(),
        None => db::sqlite_url(&dir),
    };
    eprintln!("[publish] {}: {n} invites", backend.name());
    let run = rt.block_on(publish_run(backend, &url, &dir, &shm, n));
    drop(pg);
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&shm);
    run
}

// ---------------------------------------------------------------- part 2

/// One HTTP request; returns status and JSON.
fn call(
    agent: &ureq::Agent,
    method: &str,
    url: &str,
    key: &str,
    body: Option<&Value>,
) -> (u16, Value) {
    let req = agent
        .request(method, url)
        .timeout(Duration::from_secs(60))
        .set("Authorization", &format!("Bearer {key}"));
    let resp = match body {
        Some(b) => req
            .set("Content-Type", "application/json")
            .send_string(&b.to_string()),
        None => req.call(),
    };
    let resp = match resp {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{method} {url}: {e}"),
    };
    let status = resp.status();
    let text = resp.into_string().unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// A running `slowpath up` with its fastpath child; both killed on drop.
struct Up {
    child: Child,
    dir: PathBuf,
    shm: PathBuf,
    base: String,
    admin: String,
    node: String,
    db_url: String,
    agent: ureq::Agent,
    /// Ring files whose producer is alive (their headers are read afresh
    /// each time, with pread: no mapping).
    rings: Vec<String>,
    fastpath_pid: i32,
}

impl Up {
    fn start(db_url: Option<&str>) -> Up {
        let dir = std::env::temp_dir().join(unique("totoro-bench-up-"));
        let shm = PathBuf::from("/dev/shm").join(unique("totoro-bench-up-"));
        std::fs::create_dir_all(&dir).unwrap();
        let port = free_port();
        let frp = free_port();
        let mut args: Vec<std::ffi::OsString> = vec![
            "up".into(),
            "--data-dir".into(),
            dir.clone().into(),
            "--shm-dir".into(),
            shm.clone().into(),
            "--listen".into(),
            format!("127.0.0.1:{port}").into(),
            "--frp-port".into(),
            frp.to_string().into(),
            "--public-addr".into(),
            "127.0.0.1".into(),
            "--mesh-relay-port".into(),
            "0".into(),
        ];
        if let Some(url) = db_url {
            args.push("--database-url".into());
            args.push(url.into());
        }
        let log = std::fs::File::create(dir.join("slowpath.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_slowpath"))
            .args(&args)
            .env_remove("ADMIN_API_KEY")
            .env_remove("TOTORO_DATABASE_URL")
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        let mut up = Up {
            child,
            base: format!("http://127.0.0.1:{port}"),
            db_url: db_url
                .map(str::to_owned)
                .unwrap_or_else(|| format!("sqlite://{}", dir.join("totoro.db").display())),
            dir,
            shm,
            admin: String::new(),
            node: String::new(),
            agent: ureq::AgentBuilder::new().build(),
            rings: Vec::new(),
            fastpath_pid: 0,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while up
            .agent
            .get(&format!("{}/healthz", up.base))
            .call()
            .is_err()
        {
            assert!(
                Instant::now() < deadline,
                "slowpath did not come up:\n{}",
                up.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        up.admin = std::fs::read_to_string(up.dir.join("admin.key"))
            .unwrap()
            .trim()
            .to_owned();
        let stats = up.stats();
        up.node = stats["local_node_id"].as_str().unwrap().to_owned();
        // Wait for the fastpath: one ring per worker, each from a live
        // process, each enforcing the current table.
        let workers = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            up.map_rings();
            let generation = up.stats()["policy"]["generation"].as_u64().unwrap();
            if up.rings.len() >= workers && up.applied().iter().all(|&g| g >= generation) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "fastpath rings not ready ({} of {workers}):\n{}",
                up.rings.len(),
                up.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        up.fastpath_pid = ShmDir::open(&up.shm)
            .ok()
            .and_then(|d| d.holder(shm::LOCK_FILE))
            .unwrap_or(0);
        for h in up.headers() {
            assert_eq!(
                h.producer_pid, up.fastpath_pid,
                "a ring whose producer is not the fastpath holding fastpath.lock"
            );
        }
        up
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("slowpath.log")).unwrap_or_default()
    }

    /// Finds every `events-*.ring` whose producer is alive.
    fn map_rings(&mut self) {
        self.rings = self
            .ring_headers()
            .into_iter()
            .filter(|(_, h)| {
                // SAFETY: signal 0 only checks that the process exists.
                h.producer_pid > 0 && unsafe { libc::kill(h.producer_pid, 0) } == 0
            })
            .map(|(name, _)| name)
            .collect();
    }

    fn ring_headers(&self) -> Vec<(String, RingHeader)> {
        let Ok(dir) = ShmDir::open(&self.shm) else {
            return Vec::new();
        };
        let mut out: Vec<(String, RingHeader)> = dir
            .names()
            .unwrap_or_default()
            .into_iter()
            .filter(|n| shm::ring_worker(n).is_some())
            .filter_map(|n| {
                let h = RingHeader::read(&dir.open_file(&n, false).ok()?)?;
                Some((n, h))
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// The headers of the rings found by `map_rings`, read now.
    fn headers(&self) -> Vec<RingHeader> {
        self.ring_headers()
            .into_iter()
            .filter(|(n, _)| self.rings.contains(n))
            .map(|(_, h)| h)
            .collect()
    }

    /// Every worker's applied generation, read from the ring headers.
    fn applied(&self) -> Vec<u64> {
        self.headers()
            .iter()
            .map(|h| h.applied_generation)
            .collect()
    }

    fn admin(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        call(
            &self.agent,
            method,
            &format!("{}{path}", self.base),
            &self.admin,
            body,
        )
    }

    fn stats(&self) -> Value {
        let (status, v) = self.admin("GET", "/api/v1/admin/stats", None);
        assert_eq!(status, 200, "{v}");
        v
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        harness::kill_instance_fastpath(&self.shm);
        self.rings.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_dir_all(&self.shm);
    }
}

struct PropRun {
    backend: &'static str,
    invites_table: u64,
    workers: usize,
    /// HTTP round trip of each call.
    create: Vec<Duration>,
    revoke: Vec<Duration>,
    /// From sending the call until the bench saw every worker's ring header
    /// at or past the generation on disk when the call returned.
    create_enforced: Vec<Duration>,
    revoke_enforced: Vec<Duration>,
    /// The server's own figures for each call's publish (`policy` in stats).
    publish_us: Vec<Duration>,
    compile_us: Vec<Duration>,
    encode_us: Vec<Duration>,
    /// Ring headers right after the call vs `policy.generation` in stats.
    checked: usize,
    behind: usize,
    first_behind: Option<String>,
    /// "policy change not applied" lines the slowpath logged.
    enforce_timeouts: usize,
}

/// The generation in the header of the table on disk.
fn disk_generation(shm: &Path) -> u64 {
    ShmDir::open(shm)
        .and_then(|d| d.table_header())
        .unwrap()
        .generation
}

fn enforce_timeouts(up: &Up) -> usize {
    up.log().matches("policy change not applied").count()
}

/// `iters` create + revoke pairs, each call timed, each checked against the
/// ring headers right after it returns.
fn propagation(up: &Up, backend: &'static str, iters: usize) -> PropRun {
    let create_path = format!("/api/v1/admin/nodes/{}/invites", up.node);
    let body = json!({ "ttl_s": 3600, "max_uses": 1, "scope": { "port_pool": "10000-10009" } });
    let timeouts_before = enforce_timeouts(up);
    let mut run = PropRun {
        backend,
        invites_table: 0,
        workers: up.rings.len(),
        create: Vec::with_capacity(iters),
        revoke: Vec::with_capacity(iters),
        create_enforced: Vec::with_capacity(iters),
        revoke_enforced: Vec::with_capacity(iters),
        publish_us: Vec::with_capacity(iters * 2),
        compile_us: Vec::with_capacity(iters * 2),
        encode_us: Vec::with_capacity(iters * 2),
        checked: 0,
        behind: 0,
        first_behind: None,
        enforce_timeouts: 0,
    };
    // After a call returned at `returned` (started at `t0`): the ring
    // snapshot taken then, and the time until every worker enforces the
    // generation on disk (polled if the call returned early).
    let settle = |t0: Instant, returned: Duration| -> (Vec<u64>, Duration) {
        let applied = up.applied();
        let target = disk_generation(&up.shm);
        if applied.iter().all(|&g| g >= target) {
            return (applied, returned);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while up.applied().iter().any(|&g| g < target) {
            assert!(
                Instant::now() < deadline,
                "generation {target} never applied"
            );
            std::thread::sleep(Duration::from_micros(100));
        }
        (applied, t0.elapsed())
    };
    let check = |run: &mut PropRun, applied: Vec<u64>, what: &str| {
        let stats = up.stats();
        let policy = &stats["policy"];
        let generation = policy["generation"].as_u64().unwrap();
        run.invites_table = policy["invites"].as_u64().unwrap();
        let us = |k: &str| Duration::from_micros(policy[k].as_u64().unwrap());
        run.publish_us.push(us("publish_us"));
        run.compile_us.push(us("compile_us"));
        run.encode_us.push(us("encode_us"));
        run.checked += 1;
        if applied.len() != run.workers || applied.iter().any(|&g| g < generation) {
            run.behind += 1;
            run.first_behind.get_or_insert_with(|| {
                format!("{what}: published {generation}, applied {applied:?}")
            });
        }
    };
    for _ in 0..iters {
        let t0 = Instant::now();
        let (status, v) = up.admin("POST", &create_path, Some(&body));
        let returned = t0.elapsed();
        let (applied, enforced) = settle(t0, returned);
        run.create.push(returned);
        run.create_enforced.push(enforced);
        assert_eq!(status, 201, "{v}");
        check(&mut run, applied, "create");
        let id = v["id"].as_str().unwrap().to_owned();
        let t0 = Instant::now();
        let (status, v) = up.admin("POST", &format!("/api/v1/admin/invites/{id}/revoke"), None);
        let returned = t0.elapsed();
        let (applied, enforced) = settle(t0, returned);
        run.revoke.push(returned);
        run.revoke_enforced.push(enforced);
        assert_eq!(status, 200, "{v}");
        check(&mut run, applied, "revoke");
    }
    run.enforce_timeouts = enforce_timeouts(up) - timeouts_before;
    run
}

fn part2(rt: &tokio::runtime::Runtime, backend: &Backend, n: usize, iters: usize) -> Vec<PropRun> {
    let pg = match backend {
        Backend::Sqlite => None,
        Backend::Postgres(base) => Some(PgDb::create(base)),
    };
    let up = Up::start(pg.as_ref().map(|p| p.url.as_str()));
    eprintln!(
        "[propagation] {}: near-empty table, {} workers",
        backend.name(),
        up.rings.len()
    );
    let empty = propagation(&up, backend.name(), iters);

    eprintln!("[propagation] {}: loading {n} invites", backend.name());
    rt.block_on(async {
        sqlx::any::install_default_drivers();
        let pool = sqlx::any::AnyPoolOptions::new()
            .max_connections(1)
            .connect(&up.db_url)
            .await
            .unwrap();
        insert_invites(&pool, &up.node, n, UP_POOL, 0x7070_0002).await;
        pool.close().await;
    });
    // Rows written behind the API's back reach the table at the next full
    // compile: a node edit triggers one now (instead of the 30 s refresh).
    let t = Instant::now();
    let (status, v) = up.admin(
        "PATCH",
        &format!("/api/v1/admin/nodes/{}", up.node),
        Some(&json!({ "region": "bench" })),
    );
    let first = t.elapsed();
    assert_eq!(status, 200, "{v}");
    let stats = up.stats();
    eprintln!(
        "[propagation] {}: node edit (full compile) after the load took {} ms; table now {} invites, {} bytes, publish {} µs (compile {} µs, encode {} µs)",
        backend.name(),
        ms(first),
        stats["policy"]["invites"],
        stats["policy"]["bytes"],
        stats["policy"]["publish_us"],
        stats["policy"]["compile_us"],
        stats["policy"]["encode_us"],
    );
    assert!(stats["policy"]["invites"].as_u64().unwrap() >= n as u64);
    let loaded = propagation(&up, backend.name(), iters);
    drop(up);
    drop(pg);
    vec![empty, loaded]
}

// ---------------------------------------------------------------- main

fn main() {
    let n = env_usize("POLICY_BENCH_INVITES", 100_000);
    let iters = env_usize("POLICY_BENCH_ITERS", 300);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let backends = backends();

    let publish: Vec<PublishRun> = backends.iter().map(|b| part1(&rt, b, n)).collect();
    let prop: Vec<PropRun> = backends
        .iter()
        .flat_map(|b| part2(&rt, b, n, iters))
        .collect();

    let row = |d: &[Duration]| {
        let s = sorted(d);
        format!(
            "{} | {} | {} | {}",
            ms(s[0]),
            ms(pct(&s, 50.0)),
            ms(pct(&s, 99.0)),
            ms(s[s.len() - 1])
        )
    };
    println!("\n### 1. Compile + publish at {n} invites (10 runs each, ms)\n");
    println!("| backend | what | min | median | p99 | max |");
    println!("|---|---|---|---|---|---|");
    for r in &publish {
        println!(
            "| {} | full compile + publish: `publish(force = true)` (after 1 warm-up of {} ms) | {} |",
            r.backend,
            ms(r.first_publish),
            row(&r.publish)
        );
        println!(
            "| {} | per-invite publish: `publish_invite(id)` (what create/revoke calls use) | {} |",
            r.backend,
            row(&r.incremental)
        );
    }
    println!(
        "\n| backend | invites in table | table bytes | DB size | bulk insert of {n} rows (1 tx) |"
    );
    println!("|---|---|---|---|---|");
    for r in &publish {
        println!(
            "| {} | {} | {} (per-invite runs: {}) | {} | {} ms |",
            r.backend,
            r.invites_table,
            r.table_bytes,
            r.incremental_bytes,
            r.storage,
            ms(r.insert)
        );
    }
    println!("\nSplit of the full publish, median of 10, ms. Server-reported = `PublishStatus` compile_us / encode_us / publish_us of the 10 `publish(true)` runs; the rest is each piece timed on its own:\n");
    println!("| backend | server: compile | server: encode | server: total | `compile()` | `invites::for_policy` | of which raw `fetch_all` | row decode (difference) | `PolicySpec::encode` | `PolicyTable::parse` | write + rename (/dev/shm) | `meta_set` |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in &publish {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.backend,
            ms(median(&r.server_compile_us)),
            ms(median(&r.server_encode_us)),
            ms(median(&r.publish_us)),
            ms(median(&r.compile)),
            ms(median(&r.for_policy)),
            ms(median(&r.fetch)),
            ms(median(&r.for_policy).saturating_sub(median(&r.fetch))),
            ms(median(&r.encode)),
            ms(median(&r.parse)),
            ms(median(&r.write)),
            ms(median(&r.meta_set)),
        );
    }

    println!("\n### 2. Propagation: API call → enforced on every worker ({iters} create + revoke pairs per run, `slowpath up`, ms)\n");
    println!("| backend | invites in table | call | HTTP p50 | p99 | max | enforced (rings) p50 | p99 | max | server publish p50 / p99 (compile p50, encode p50) | returned before enforced |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for r in &prop {
        let publish = sorted(&r.publish_us);
        for (what, http, enforced) in [
            ("create", &r.create, &r.create_enforced),
            ("revoke", &r.revoke, &r.revoke_enforced),
        ] {
            let h = sorted(http);
            let e = sorted(enforced);
            println!(
                "| {} | {} | {what} | {} | {} | {} | {} | {} | {} | {} / {} ({}, {}) | {} of {} |",
                r.backend,
                r.invites_table,
                ms(pct(&h, 50.0)),
                ms(pct(&h, 99.0)),
                ms(h[h.len() - 1]),
                ms(pct(&e, 50.0)),
                ms(pct(&e, 99.0)),
                ms(e[e.len() - 1]),
                ms(pct(&publish, 50.0)),
                ms(pct(&publish, 99.0)),
                ms(median(&r.compile_us)),
                ms(median(&r.encode_us)),
                http.iter()
                    .zip(enforced.iter())
                    .filter(|(h, e)| e > h)
                    .count(),
                http.len(),
            );
        }
    }
    println!();
    for r in &prop {
        println!(
            "- {} at {} invites: {} workers; ring headers right after each call vs `policy.generation` in stats: {}/{} at or past it; slowpath logged {} enforce-wait timeouts.{}",
            r.backend,
            r.invites_table,
            r.workers,
            r.checked - r.behind,
            r.checked,
            r.enforce_timeouts,
            r.first_behind
                .as_ref()
                .map(|b| format!(" First behind: {b}."))
                .unwrap_or_default()
        );
    }
}
