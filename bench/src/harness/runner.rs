//! The scenario runner: a named suite of metrics, run against every
//! available system, systems alternating within each repeat
//! (A B C, A B C, …), each system started fresh for each repeat.

use super::attacks::{self, AttackPlan};
use super::systems::{self, Backends, Running, SystemSpec, SystemsFile};
use crate::load::{self, bulk, connrate, http, idle, latency, login, proxies};
use crate::proc;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn one() -> usize {
    1
}

/// The shared secret every system is started with.
pub const TOKEN: &str = "totoro-bench-token";

/// What a suite measures and for how long.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Suite {
    pub name: String,
    /// Repeats of the whole round of systems.
    pub repeats: usize,
    /// Bulk runs: (streams, direction).
    pub bulk: Vec<(usize, bulk::Direction)>,
    pub bulk_secs: f64,
    pub bulk_warmup_secs: f64,
    /// Sequential 64 B echo (closed loop, one connection).
    pub rtt_secs: f64,
    /// Open-loop 64 B echo at these total rates (requests/s).
    pub open_rates: Vec<f64>,
    pub open_conns: usize,
    pub open_secs: f64,
    pub connrate_threads: usize,
    pub connrate_secs: f64,
    pub http_conns: usize,
    pub http_secs: f64,
    /// Idle connections held open (0: not measured). The full suite holds
    /// 2 000, which fits a hard open-file limit of 20 000 at eight
    /// descriptors per connection in the harness; `--idle-conns` asks for
    /// more where the limit allows.
    pub idle_conns: usize,
    /// Registered proxies: (clients, proxies per client); frp servers only.
    pub proxies: (usize, usize),
    pub login_threads: usize,
    pub login_secs: f64,
    /// Only bulk and connection rate, once per worker count (the scaling
    /// suite).
    pub scaling: bool,
    /// Bench-client sessions the load is spread over (scaling suite): one
    /// session's connections are relayed by one worker, so a single
    /// session cannot show more than one worker's worth.
    #[serde(default = "one")]
    pub sessions: usize,
    /// Only the metrics named here (`bulk1_up`, `open`, `connrate`, …; a
    /// name matches itself and every `name@…`, and `attack` every
    /// `attack_…`); all but the attack family when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metrics: Vec<String>,
    /// The sizes of the attack family (see [`attacks`]).
    #[serde(default)]
    pub attack: AttackPlan,
}

impl Suite {
    /// Whether the suite measures `metric` (see [`Suite::metrics`]).
    pub fn wants(&self, metric: &str) -> bool {
        let attack = attacks::is_attack(metric);
        if self.metrics.is_empty() {
            return !attack;
        }
        self.metrics.iter().any(|m| {
            metric == m
                || metric
                    .strip_prefix(m.as_str())
                    .is_some_and(|r| r.starts_with('@'))
                || (attack && m == attacks::FAMILY)
        })
    }

    /// Whether the suite measures anything outside the attack family.
    pub fn wants_regular(&self) -> bool {
        self.metrics.is_empty()
            || self
                .metrics
                .iter()
                .any(|m| m != attacks::FAMILY && !attacks::is_attack(m))
    }

    /// The built-in suites: `smoke` (CI, under a minute), `full` (the
    /// side-by-side table) and `scaling` (fastpath at several worker counts).
    pub fn named(name: &str) -> Option<Suite> {
        use bulk::Direction::{Down, Up};
        let full = Suite {
            name: "full".into(),
            repeats: 3,
            bulk: vec![(1, Up), (1, Down), (8, Up), (8, Down)],
            bulk_secs: 4.0,
            bulk_warmup_secs: 1.0,
            rtt_secs: 3.0,
            open_rates: vec![2_000.0, 5_000.0, 10_000.0, 20_000.0, 40_000.0],
            open_conns: 16,
            open_secs: 2.0,
            connrate_threads: 32,
            connrate_secs: 4.0,
            http_conns: 64,
            http_secs: 4.0,
            idle_conns: 2_000,
            proxies: (10, 100),
            login_threads: 8,
            login_secs: 3.0,
            scaling: false,
            sessions: 1,
            metrics: Vec::new(),
            attack: AttackPlan::full(),
        };
        match name {
            "full" => Some(full),
            "smoke" => Some(Suite {
                name: "smoke".into(),
                repeats: 1,
                bulk: vec![(1, Up), (2, Down)],
                bulk_secs: 1.0,
                bulk_warmup_secs: 0.3,
                rtt_secs: 1.0,
                open_rates: vec![500.0, 2_000.0],
                open_conns: 4,
                open_secs: 1.0,
                connrate_threads: 4,
                connrate_secs: 1.0,
                http_conns: 4,
                http_secs: 1.0,
                idle_conns: 200,
                proxies: (2, 10),
                login_threads: 2,
                login_secs: 1.0,
                scaling: false,
                sessions: 1,
                metrics: Vec::new(),
                attack: AttackPlan::smoke(),
            }),
            // One stream per session, 32 sessions: enough for the kernel's
            // reuseport hash to give each of 16 workers some.
            "scaling" => Some(Suite {
                name: "scaling".into(),
                bulk: vec![(32, Up)],
                scaling: true,
                sessions: 32,
                ..full
            }),
            _ => None,
        }
    }
}

/// The machine a run was made on.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub mem_gib: f64,
    pub kernel: String,
}

impl Machine {
    /// Reads /proc.
    pub fn here() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|x| x.1.trim().to_string())
            .unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_kib: f64 = meminfo
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        Machine {
            cpu,
            cores: proc::online_cpus(),
            mem_gib: (mem_kib / 1048576.0 * 10.0).round() / 10.0,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_string(),
        }
    }
}

/// CPUs this process may run on.
pub fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// One measurement of one metric on one system.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sample {
    pub system: String,
    pub workers: usize,
    pub repeat: usize,
    pub metric: String,
    /// Named numbers (the report's cells), e.g. `gbit_s`, `p99_us`.
    pub figures: BTreeMap<String, f64>,
    /// The generator's full result.
    pub detail: serde_json::Value,
    /// Why the metric produced no figures.
    pub error: Option<String>,
}

/// Everything a run produced; `run.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    pub suite: Suite,
    /// Seconds since the epoch at the start.
    pub started: u64,
    /// UTC date, YYYY-MM-DD.
    pub date: String,
    pub machine: Machine,
    /// The command line as given.
    pub command: String,
    /// `git describe` of the harness's source tree, when available.
    pub commit: Option<String>,
    /// Systems that ran.
    pub systems: Vec<SystemSpec>,
    /// Systems skipped, with the reason.
    pub skipped: Vec<(String, String)>,
    /// Worker counts the run used (`{workers}`).
    pub workers: Vec<usize>,
    /// CPUs the servers were confined to (`--server-cpus`; empty: none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub server_cpus: Vec<usize>,
    /// CPUs the harness (load, bench clients, backends, stock clients)
    /// was confined to (`--load-cpus`; empty: none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub load_cpus: Vec<usize>,
    /// `--version` of each program that ran, keyed by path.
    pub versions: BTreeMap<String, String>,
    pub samples: Vec<Sample>,
    /// Wall time of the whole run in seconds.
    pub wall_s: f64,
}

/// How the runner was asked to run.
#[derive(Debug, Clone)]
pub struct RunOpts {
    pub suite: Suite,
    pub systems_file: PathBuf,
    pub out: PathBuf,
    /// Only these systems (all when empty).
    pub only: Vec<String>,
    /// `{workers}` for the side-by-side suites.
    pub workers: usize,
    /// Worker counts for the scaling suite (filtered to the cores here).
    pub scale_workers: Vec<usize>,
    /// CPUs for the server (see [`server_cpus_for`]; empty: not confined).
    pub server_cpus: Vec<usize>,
    /// CPUs for this process and what it starts other than the server.
    pub load_cpus: Vec<usize>,
    pub command: String,
}

/// The civil date (UTC) of `secs` since 1970-01-01.
pub fn date_of(secs: u64) -> String {
    let (y, m, d) = logfmt::civil_from_days((secs / 86_400) as i64);
    format!("{y:04}-{m:02}-{d:02}")
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.0))
}

fn version_of(path: &str) -> String {
    for flag in ["--version", "-v"] {
        if let Ok(o) = std::process::Command::new(path).arg(flag).output() {
            let text = String::from_utf8_lossy(&o.stdout).trim().to_string();
            if o.status.success() && !text.is_empty() {
                return text.lines().next().unwrap_or_default().to_string();
            }
        }
    }
    "unknown".into()
}

/// The CPUs a server with `workers` workers runs on: the first `workers`
/// of `server` (one per worker, so the scaling table reads per core), or
/// all of `server` and `load` together when `server` has fewer (then
/// server and load share cores, and the report says so); empty when
/// `server` is.
pub fn server_cpus_for(workers: usize, server: &[usize], load: &[usize]) -> Vec<usize> {
    if server.is_empty() {
        return Vec::new();
    }
    if workers <= server.len() {
        return server[..workers.max(1)].to_vec();
    }
    let mut all: Vec<usize> = server.iter().chain(load).copied().collect();
    all.sort_unstable();
    all.dedup();
    all
}

/// Runs the suite and writes `run.json` into `opts.out`; returns the record.
pub fn run(opts: &RunOpts) -> anyhow::Result<RunRecord> {
    let machine = Machine::here();
    if !opts.load_cpus.is_empty() {
        // Before any thread starts, so that every one of them inherits it.
        proc::pin_this_thread(&opts.load_cpus)
            .map_err(|e| anyhow::anyhow!("--load-cpus {:?}: {e}", opts.load_cpus))?;
    }
    let file = SystemsFile::load(&opts.systems_file)?;
    let started = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let t0 = std::time::Instant::now();
    let mut skipped = Vec::new();
    let mut chosen = Vec::new();
    for s in file.systems {
        if !opts.only.is_empty() && !opts.only.contains(&s.name) {
            continue;
        }
        if !s.in_suite(&opts.suite.name) {
            continue;
        }
        if opts.suite.scaling && !s.scales && s.kind != "direct" {
            continue;
        }
        if let Some(why) = s.unavailable() {
            eprintln!("skipped: {} ({why})", s.name);
            skipped.push((s.name.clone(), why));
            continue;
        }
        chosen.push(s);
    }
    if chosen.is_empty() {
        anyhow::bail!("no system can run (see the skipped lines above)");
    }
    let mut versions = BTreeMap::new();
    for s in &chosen {
        let cmds = s
            .server
            .iter()
            .chain(s.client.iter().filter_map(|c| c.command.as_ref()));
        for c in cmds {
            if let Ok(p) = systems::expand_env(&c.cmd) {
                versions.entry(p.clone()).or_insert_with(|| version_of(&p));
            }
        }
    }
    let nofile = load::idle::raise_nofile().unwrap_or(0);
    // An idle connection through the in-process client costs the harness
    // eight descriptors (visitor; backend socket and its clone for the
    // writer; work connection, local dial and their clones).
    if opts.suite.idle_conns > 0 && nofile < (opts.suite.idle_conns as u64) * 8 + 1000 {
        eprintln!(
            "note: open-file limit is {nofile}; {} idle connections may not all open (raise the hard limit, or lower --idle-conns)",
            opts.suite.idle_conns
        );
    }
    std::fs::create_dir_all(&opts.out)?;
    let scratch = opts.out.join("scratch");
    std::fs::create_dir_all(&scratch)?;
    let backends = Backends::start()?;
    let workers: Vec<usize> = if opts.suite.scaling {
        let here = proc::online_cpus();
        let w: Vec<usize> = opts
            .scale_workers
            .iter()
            .copied()
            .filter(|&w| w >= 1 && w <= here)
            .collect();
        if w.len() < opts.scale_workers.len() {
            eprintln!("note: this machine has {here} cores; scaling runs with workers {w:?} only");
        }
        w
    } else {
        vec![opts.workers]
    };
    let mut samples = Vec::new();
    for repeat in 0..opts.suite.repeats {
        for &w in &workers {
            for s in &chosen {
                if opts.suite.scaling && s.kind == "direct" && w != workers[0] {
                    continue; // the loopback limit does not depend on workers
                }
                eprintln!(
                    "== {} (workers {w}, repeat {}/{})",
                    s.name,
                    repeat + 1,
                    opts.suite.repeats
                );
                let place = systems::Placement {
                    workers: w,
                    server_cpus: server_cpus_for(w, &opts.server_cpus, &opts.load_cpus),
                    extra_sessions: match &s.client {
                        Some(c) if c.kind == "bench" => opts.suite.sessions.saturating_sub(1),
                        _ => 0,
                    },
                };
                let got = run_system(&opts.suite, s, &backends, &place, repeat, &scratch);
                for x in &got {
                    eprintln!("   {:<18} {}", x.metric, brief(x));
                }
                samples.extend(got);
            }
        }
    }
    let record = RunRecord {
        suite: opts.suite.clone(),
        started,
        date: date_of(started),
        machine,
        command: opts.command.clone(),
        commit: git_describe(),
        systems: chosen,
        skipped,
        workers,
        server_cpus: opts.server_cpus.clone(),
        load_cpus: opts.load_cpus.clone(),
        versions,
        samples,
        wall_s: t0.elapsed().as_secs_f64(),
    };
    let json = serde_json::to_string_pretty(&record)?;
    std::fs::write(opts.out.join("run.json"), json)?;
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(record)
}

fn git_describe() -> Option<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let o = std::process::Command::new("git")
        .args(["describe", "--always", "--dirty"])
        .current_dir(dir)
        .output()
        .ok()?;
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).trim().to_string())
}

fn brief(s: &Sample) -> String {
    if let Some(e) = &s.error {
        return format!("error: {e}");
    }
    s.figures
        .iter()
        .map(|(k, v)| format!("{k}={}", super::report::num(*v)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs every metric of the suite on one system: the regular ones on one
/// start of it, then each attack on a start of its own.
fn run_system(
    suite: &Suite,
    spec: &SystemSpec,
    backends: &Backends,
    place: &systems::Placement,
    repeat: usize,
    scratch: &Path,
) -> Vec<Sample> {
    let mut rec = Recorder {
        system: spec.name.clone(),
        workers: place.workers,
        repeat,
        server_pid: None,
        out: Vec::new(),
    };
    if suite.wants_regular() {
        run_regular(suite, spec, backends, place, scratch, &mut rec);
    }
    // Only frp servers are attacked: the attacks speak frp to the bind port.
    if spec.frp {
        for (metric, attack) in attacks::planned(&suite.attack) {
            if !suite.wants(&metric) {
                continue;
            }
            eprintln!("   {metric} …");
            let mut running = match systems::start_placed(spec, backends, place, scratch, TOKEN) {
                Ok(r) => r,
                Err(e) => {
                    rec.server_pid = None;
                    rec.push(&metric, Err(e));
                    continue;
                }
            };
            rec.server_pid = running.server_pid();
            let r = match (running.targets.frp, running.server_pid()) {
                (Some(frp), Some(pid)) => within_limit(
                    &mut running.server,
                    attacks::time_limit(&suite.attack),
                    || attacks::measure(&suite.attack, attack, spec, frp, pid, TOKEN),
                ),
                _ => Err(anyhow::anyhow!("no frp server process to attack")),
            };
            // What the server said about it (it runs at `warn`): the
            // report's reader wants to know what it refused and why.
            let r = r.map(|(f, mut d)| {
                if let Some(o) = d.as_object_mut() {
                    o.insert("log_tail".into(), running.log_tail().into());
                }
                (f, d)
            });
            rec.push(&metric, r);
            drop(running);
            proc::trim_own_heap();
        }
    }
    rec.out
}

/// Runs `measure`, and kills `server` if it has not returned within
/// `limit`: every wait in an attack has a limit of its own, and this is
/// the one behind them that ends an attack whatever the server does.
fn within_limit(
    server: &mut Option<proc::Daemon>,
    limit: Duration,
    measure: impl FnOnce() -> Measured,
) -> Measured {
    use std::sync::mpsc::{channel, RecvTimeoutError};
    let (done, wait) = channel::<()>();
    std::thread::scope(|scope| {
        let dog = scope.spawn(move || {
            let late = wait.recv_timeout(limit) == Err(RecvTimeoutError::Timeout);
            if late {
                if let Some(d) = server.as_mut() {
                    d.signal(9);
                }
            }
            late
        });
        let r = measure();
        drop(done);
        if dog.join().unwrap_or(false) {
            return Err(anyhow::anyhow!(
                "the attack did not end within {} s; the server was killed to end it",
                limit.as_secs()
            ));
        }
        r
    })
}

/// Turns one system's measurements into [`Sample`]s.
struct Recorder {
    system: String,
    workers: usize,
    repeat: usize,
    /// The server now measured: each metric also records its peak RSS so
    /// far, so a jump in memory can be traced to the load that caused it.
    server_pid: Option<u32>,
    out: Vec<Sample>,
}

impl Recorder {
    fn push(&mut self, metric: &str, r: Measured) {
        let (figures, detail, error) = match r {
            Ok((mut f, d)) => {
                if let Some(pid) = self.server_pid {
                    if metric != "server" {
                        f.insert("server_hwm_kib".into(), proc::peak_rss_kib(pid) as f64);
                    }
                }
                (f, d, None)
            }
            Err(e) => (
                BTreeMap::new(),
                serde_json::Value::Null,
                Some(format!("{e:#}")),
            ),
        };
        self.out.push(Sample {
            system: self.system.clone(),
            workers: self.workers,
            repeat: self.repeat,
            metric: metric.into(),
            figures,
            detail,
            error,
        });
    }
}

/// Starts one system and runs every metric of the suite but the attacks
/// on it.
fn run_regular(
    suite: &Suite,
    spec: &SystemSpec,
    backends: &Backends,
    place: &systems::Placement,
    scratch: &Path,
    rec: &mut Recorder,
) {
    let running = match systems::start_placed(spec, backends, place, scratch, TOKEN) {
        Ok(r) => r,
        Err(e) => {
            rec.push("start", Err(e));
            return;
        }
    };
    rec.server_pid = running.server_pid();
    let m = Measure {
        running: &running,
        backends,
    };
    if let Some(pid) = running.server_pid() {
        rec.push(
            "server",
            Ok((
                figs(&[("rss_start_kib", proc::rss_kib(pid) as f64)]),
                serde_json::Value::Null,
            )),
        );
    }
    for &(streams, dir) in &suite.bulk {
        let name = format!(
            "bulk{streams}_{}",
            match dir {
                bulk::Direction::Up => "up",
                bulk::Direction::Down => "down",
                bulk::Direction::Echo => "echo",
            }
        );
        if suite.wants(&name) {
            rec.push(&name, m.bulk(suite, streams, dir));
        }
    }
    if !suite.scaling {
        if suite.wants("rtt") {
            rec.push("rtt", m.latency(None, 1, suite.rtt_secs));
        }
        for &rate in suite.open_rates.iter().filter(|_| suite.wants("open")) {
            rec.push(
                &format!("open@{}", rate as u64),
                m.latency(Some(rate), suite.open_conns, suite.open_secs),
            );
        }
    }
    if suite.wants("connrate") {
        rec.push("connrate", m.connrate(suite));
    }
    if suite.scaling {
        return;
    }
    if suite.wants("http") {
        rec.push("http", m.http(suite));
    }
    if let Some(pid) = running.server_pid() {
        // Peak RSS under load: after throughput and latency, before the
        // idle-connection and proxy counts (which are memory tests).
        rec.push(
            "server",
            Ok((
                figs(&[("peak_rss_kib", proc::peak_rss_kib(pid) as f64)]),
                serde_json::Value::Null,
            )),
        );
        if suite.idle_conns > 0 && suite.wants("idle") {
            rec.push("idle", m.idle(suite, pid, false));
        }
        if suite.idle_conns > 0 && suite.wants("idle_http") {
            rec.push("idle_http", m.idle(suite, pid, true));
        }
        if let Some(frp) = running.targets.frp {
            // The bench client logs in as the system's own client does
            // (frps refuses a yamux login when its tcpMux is off, and the
            // other way round); frpc's defaults are TLS and yamux.
            let (tls, mux) = match &spec.client {
                Some(c) if c.kind == "bench" => (c.tls, c.mux),
                _ => (false, true),
            };
            if suite.wants("proxies") {
                rec.push("proxies", m.proxies(suite, frp, pid, tls, mux));
            }
            if suite.wants("login") {
                rec.push("login", m.login(suite, frp, tls, mux));
            }
        }
    }
}

fn figs(pairs: &[(&str, f64)]) -> BTreeMap<String, f64> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

struct Measure<'a> {
    running: &'a Running,
    backends: &'a Backends,
}

type Measured = anyhow::Result<(BTreeMap<String, f64>, serde_json::Value)>;

impl Measure<'_> {
    fn cpu(&self) -> (f64, f64) {
        (
            self.running
                .server_pid()
                .map(proc::cpu_seconds)
                .unwrap_or(0.0),
            self.running
                .client_pid()
                .map(proc::cpu_seconds)
                .unwrap_or(0.0),
        )
    }

    /// Adds server (and external client) CPU-seconds per GB relayed.
    fn cpu_per_gb(&self, f: &mut BTreeMap<String, f64>, before: (f64, f64), bytes: u64) {
        let after = self.cpu();
        let gb = bytes as f64 / 1e9;
        if gb <= 0.0 {
            return;
        }
        if self.running.server_pid().is_some() {
            f.insert("server_cpu_s_per_gb".into(), (after.0 - before.0) / gb);
        }
        if self.running.client_pid().is_some() {
            f.insert("client_cpu_s_per_gb".into(), (after.1 - before.1) / gb);
        }
    }

    fn bulk(&self, suite: &Suite, streams: usize, dir: bulk::Direction) -> Measured {
        let (targets, counter) = match dir {
            bulk::Direction::Down => (vec![self.running.targets.source], &self.backends.source),
            _ => (self.running.sinks(), &self.backends.sink),
        };
        let cpu0 = self.cpu();
        let bytes0 = counter.bytes();
        let r = bulk::run_spread(
            &targets,
            bulk::BulkOpts {
                streams,
                direction: dir,
                duration: secs(suite.bulk_secs),
                warmup: secs(suite.bulk_warmup_secs),
                ..Default::default()
            },
        )?;
        // CPU over the whole call (warm-up included) against every byte the
        // backend handled in that time, so both cover the same interval.
        let relayed = counter.bytes().saturating_sub(bytes0);
        let mut f = figs(&[
            ("gbit_s", r.gbit_per_s),
            ("errors", r.errors as f64),
            ("stream_min_gbit_s", r.stream_gbit_min),
            ("stream_max_gbit_s", r.stream_gbit_max),
        ]);
        self.cpu_per_gb(&mut f, cpu0, relayed);
        if r.errors > 0 {
            anyhow::bail!("{} of {streams} streams failed", r.errors);
        }
        Ok((f, serde_json::to_value(&r)?))
    }

    fn latency(&self, rate: Option<f64>, conns: usize, secs_: f64) -> Measured {
        let r = latency::run(
            self.running.targets.echo,
            latency::LatencyOpts {
                connections: conns,
                payload: 64,
                rate,
                duration: secs(secs_),
                warmup: secs((secs_ / 4.0).min(1.0)),
                timeout: Duration::from_secs(5),
            },
        )?;
        let p = r.latency;
        let f = figs(&[
            ("p50_us", p.p50_us as f64),
            ("p99_us", p.p99_us as f64),
            ("p999_us", p.p999_us as f64),
            ("max_us", p.max_us as f64),
            ("achieved_per_s", r.achieved_rate),
            ("errors", r.errors as f64),
        ]);
        Ok((f, serde_json::to_value(&r)?))
    }

    fn connrate(&self, suite: &Suite) -> Measured {
        let r = connrate::run_spread(
            &self.running.echos(),
            connrate::ConnRateOpts {
                threads: suite.connrate_threads,
                duration: secs(suite.connrate_secs),
                ..Default::default()
            },
        );
        let f = figs(&[
            ("conns_per_s", r.conns_per_sec),
            ("failures", r.failures as f64),
            ("p99_us", r.latency.p99_us as f64),
        ]);
        Ok((f, serde_json::to_value(&r)?))
    }

    fn http(&self, suite: &Suite) -> Measured {
        let r = http::run(
            self.running.targets.http,
            http::HttpOpts {
                connections: suite.http_conns,
                duration: secs(suite.http_secs),
                warmup: secs((suite.http_secs / 4.0).min(1.0)),
                timeout: Duration::from_secs(5),
            },
        )?;
        let f = figs(&[
            ("req_per_s", r.req_per_sec),
            ("errors", r.errors as f64),
            ("p99_us", r.latency.p99_us as f64),
        ]);
        Ok((f, serde_json::to_value(&r)?))
    }

    /// Idle connections to the echo tunnel, or (`http`) keep-alive
    /// connections to the HTTP tunnel that each made one request.
    fn idle(&self, suite: &Suite, pid: u32, http: bool) -> Measured {
        let target = if http {
            self.running.targets.http
        } else {
            self.running.targets.echo
        };
        let r = idle::run(
            target,
            idle::IdleOpts {
                conns: suite.idle_conns,
                pid_to_measure: Some(pid),
                http,
                ..Default::default()
            },
        )?;
        if r.failed * 100 > r.conns as u64 {
            anyhow::bail!(
                "{} of {} idle connections failed to open (open-file limit {})",
                r.failed,
                suite.idle_conns,
                r.nofile_limit
            );
        }
        let mut f = figs(&[("opened", r.opened as f64), ("failed", r.failed as f64)]);
        if let Some(b) = r.bytes_per_conn {
            f.insert("bytes_per_conn".into(), b);
        }
        Ok((f, serde_json::to_value(&r)?))
    }

    fn proxies(
        &self,
        suite: &Suite,
        frp: std::net::SocketAddr,
        pid: u32,
        tls: bool,
        mux: bool,
    ) -> Measured {
        let r = proxies::run(
            frp,
            proxies::ProxiesOpts {
                clients: suite.proxies.0,
                proxies_per_client: suite.proxies.1,
                token: TOKEN.into(),
                tls,
                mux,
                local: self.backends.echo.addr(),
                pid_to_measure: Some(pid),
                settle: Duration::from_millis(500),
            },
        )?;
        // A stray failure (a port taken meanwhile) leaves the per-proxy
        // figure meaningful; more than 1% does not.
        if r.failed * 100 > (suite.proxies.0 * suite.proxies.1) as u64 {
            anyhow::bail!(
                "{} of {} proxies failed: {}",
                r.failed,
                suite.proxies.0 * suite.proxies.1,
                r.first_error.as_deref().unwrap_or("?")
            );
        }
        let mut f = figs(&[
            ("registered", r.registered as f64),
            ("failed", r.failed as f64),
        ]);
        if let Some(b) = r.bytes_per_proxy {
            f.insert("bytes_per_proxy".into(), b);
        }
        Ok((f, serde_json::to_value(&r)?))
    }

    fn login(&self, suite: &Suite, frp: std::net::SocketAddr, tls: bool, mux: bool) -> Measured {
        let r = login::run(
            frp,
            login::LoginOpts {
                threads: suite.login_threads,
                duration: secs(suite.login_secs),
                token: TOKEN.into(),
                tls,
                mux,
                ..Default::default()
            },
        );
        if r.logins == 0 {
            anyhow::bail!(
                "no login succeeded ({} refused, {} failed)",
                r.refused,
                r.failures
            );
        }
        let f = figs(&[
            ("logins_per_s", r.logins_per_sec),
            ("failures", r.failures as f64),
            ("p99_us", r.latency.p99_us as f64),
        ]);
        Ok((f, serde_json::to_value(&r)?))
    }
}

#[cfg(test)]
mod tests {
    use super::Suite;

    #[test]
    fn metrics_filter_matches_names_and_their_rates() {
        let mut s = Suite::named("smoke").unwrap();
        assert!(s.wants("http") && s.wants("open@500"));
        s.metrics = vec!["bulk1_up".into(), "open".into()];
        assert!(s.wants("bulk1_up") && s.wants("open@500") && s.wants("open@2000"));
        assert!(!s.wants("bulk1_down") && !s.wants("http") && !s.wants("openx"));
    }

    #[test]
    fn an_attack_past_its_limit_is_an_error() {
        use std::time::Duration;
        let ok = || Ok((Default::default(), serde_json::Value::Null));
        assert!(super::within_limit(&mut None, Duration::from_secs(5), ok).is_ok());
        let slow = || {
            std::thread::sleep(Duration::from_millis(300));
            ok()
        };
        let e = super::within_limit(&mut None, Duration::from_millis(50), slow).unwrap_err();
        assert!(e.to_string().contains("did not end within"), "{e}");
    }

    #[test]
    fn attacks_run_only_when_named() {
        let mut s = Suite::named("full").unwrap();
        assert!(!s.wants("attack_ping_flood") && s.wants_regular());
        s.metrics = vec!["attack".into()];
        assert!(s.wants("attack_ping_flood") && s.wants("attack_preauth_streams_x10"));
        assert!(!s.wants("http") && !s.wants_regular());
        s.metrics = vec!["attack_preauth_streams".into(), "login".into()];
        assert!(s.wants("attack_preauth_streams") && !s.wants("attack_preauth_streams_x10"));
        assert!(s.wants_regular());
    }

    #[test]
    fn servers_get_one_cpu_per_worker_until_the_set_runs_out() {
        let (srv, load) = (vec![0, 1, 2, 3], vec![4, 5, 6, 7]);
        assert_eq!(super::server_cpus_for(1, &srv, &load), vec![0]);
        assert_eq!(super::server_cpus_for(4, &srv, &load), vec![0, 1, 2, 3]);
        assert_eq!(
            super::server_cpus_for(8, &srv, &load),
            (0..8).collect::<Vec<_>>()
        );
        assert!(super::server_cpus_for(2, &[], &load).is_empty());
    }

    #[test]
    fn cpu_lists_parse_as_taskset_writes_them() {
        assert_eq!(
            crate::proc::parse_cpu_list("0-3,7, 5"),
            Ok(vec![0, 1, 2, 3, 5, 7])
        );
        assert!(crate::proc::parse_cpu_list("3-1").is_err());
        assert!(crate::proc::parse_cpu_list("x").is_err());
        assert!(crate::proc::parse_cpu_list("99999").is_err());
    }

    #[test]
    fn a_pinned_child_runs_only_on_its_cpus() {
        let d = crate::proc::Daemon::spawn_logging_on(
            std::path::Path::new("/bin/sh"),
            &["-c", "grep Cpus_allowed_list /proc/self/status"],
            "warn",
            &[0],
        )
        .expect("spawn");
        let mut d = d;
        d.wait_exit(std::time::Duration::from_secs(5));
        let log = d.log().join("\n");
        assert!(log.contains("Cpus_allowed_list:\t0"), "{log}");
    }
}
