//! The systems under test, as described in a systems TOML, and starting
//! one of them: its server, its client, and the tunnels to the harness's
//! backends.
//!
//! A system is either `kind = "direct"` (the backends themselves: the
//! loopback limit) or a server command plus a client, which is either the
//! in-process frp client (`kind = "bench"`) or another command. Commands,
//! arguments and config templates may use these placeholders, which the
//! harness fills in for every start:
//!
//! | placeholder | value |
//! |---|---|
//! | `{dir}` | a fresh directory for this start (configs are written there) |
//! | `{bind_port}` | the server's control port |
//! | `{token}` | the shared secret |
//! | `{workers}` | worker threads for servers that take a count |
//! | `{echo_port}` `{sink_port}` `{source_port}` `{http_port}` | the backends' local ports |
//! | `{echo_remote}` `{sink_remote}` `{source_remote}` `{http_remote}` | the public ports of the four tunnels |
//! | `{frpc_proxies}` | the four `[[proxies]]` tables of an frpc.toml |
//! | `{rathole_server_services}` `{rathole_client_services}` | the four services of a rathole config |
//!
//! `${VAR}` in `cmd` and `args` is taken from the environment. A system
//! whose command names an unset variable is skipped with a line saying
//! which; `FASTPATH_BIN` defaults to the `fastpath` binary next to the
//! harness's own executable.

use crate::backend::Backend;
use crate::client::{Client, ClientOpts};
use crate::proc::{free_port, wait_listening, Daemon};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The whole systems file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SystemsFile {
    /// Systems in the order they run (and appear in tables).
    #[serde(rename = "system")]
    pub systems: Vec<SystemSpec>,
}

/// One system under test.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SystemSpec {
    /// Short unique name used in tables, e.g. `fastpath+frpc-tls`.
    pub name: String,
    /// A sentence for the report.
    #[serde(default)]
    pub description: String,
    /// `direct` for the loopback baseline; otherwise `tunnel`.
    #[serde(default = "default_kind")]
    pub kind: String,
    /// The server speaks frp and accepts `{token}` logins: the login-storm
    /// and registered-proxies metrics run against it with the bench client.
    #[serde(default)]
    pub frp: bool,
    /// The server honours `{workers}`: it takes part in the scaling suite.
    #[serde(default)]
    pub scales: bool,
    /// Another system to quote ratios against (the same client with a
    /// different server, usually).
    #[serde(default)]
    pub compare: Option<String>,
    /// Only in these suites (all suites when empty).
    #[serde(default)]
    pub suites: Vec<String>,
    /// How to start the server.
    pub server: Option<CommandSpec>,
    /// How to start the client.
    pub client: Option<ClientSpec>,
}

fn default_kind() -> String {
    "tunnel".into()
}

/// A process to start.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CommandSpec {
    /// Program path (may be `${VAR}`).
    pub cmd: String,
    /// Arguments (placeholders allowed).
    #[serde(default)]
    pub args: Vec<String>,
    /// Config files to write into `{dir}` first: file name → template.
    #[serde(default)]
    pub files: BTreeMap<String, String>,
}

/// The client side of a tunnel.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClientSpec {
    /// `bench` (the in-process frp client) or `command`.
    pub kind: String,
    /// bench: TLS to the server.
    #[serde(default)]
    pub tls: bool,
    /// bench: yamux multiplexing.
    #[serde(default = "yes")]
    pub mux: bool,
    /// bench: work-connection pool size.
    #[serde(default)]
    pub pool: i64,
    /// command: what to run.
    #[serde(default)]
    pub command: Option<CommandSpec>,
}

fn yes() -> bool {
    true
}

impl SystemsFile {
    /// Reads and checks a systems file.
    pub fn load(path: &Path) -> anyhow::Result<SystemsFile> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let f: SystemsFile =
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let mut seen = std::collections::BTreeSet::new();
        for s in &f.systems {
            let at =
                |what: &str| anyhow::anyhow!("{}: system {:?}: {what}", path.display(), s.name);
            if !seen.insert(s.name.clone()) {
                return Err(at("name used twice"));
            }
            match s.kind.as_str() {
                "direct" => {}
                "tunnel" => {
                    if s.server.is_none() {
                        return Err(at("server is required for kind = \"tunnel\""));
                    }
                    let c = s.client.as_ref().ok_or_else(|| at("client is required"))?;
                    match c.kind.as_str() {
                        "bench" if !s.frp => {
                            return Err(at("client.kind = \"bench\" needs frp = true"))
                        }
                        "bench" => {}
                        "command" if c.command.is_none() => {
                            return Err(at("client.command is required for kind = \"command\""))
                        }
                        "command" => {}
                        other => {
                            return Err(at(&format!(
                                "client.kind {other:?} is not bench or command"
                            )))
                        }
                    }
                }
                other => return Err(at(&format!("kind {other:?} is not direct or tunnel"))),
            }
            if let Some(c) = &s.compare {
                if !f.systems.iter().any(|o| &o.name == c) {
                    return Err(at(&format!("compare names unknown system {c:?}")));
                }
            }
        }
        Ok(f)
    }
}

/// The binary `name` next to `current_exe` (or one directory up, for test
/// executables in `deps/`), if it exists.
pub fn sibling_binary(name: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    [dir.join(name), dir.parent()?.join(name)]
        .into_iter()
        .find(|p| p.is_file())
}

/// Expands `${VAR}`; `Err(VAR)` names the first unset one.
pub fn expand_env(s: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let Some(j) = rest[i..].find('}') else {
            out.push_str(&rest[i..]);
            return Ok(out);
        };
        let var = &rest[i + 2..i + j];
        let val = match std::env::var(var) {
            Ok(v) if !v.is_empty() => v,
            _ if var == "FASTPATH_BIN" => sibling_binary("fastpath")
                .map(|p| p.display().to_string())
                .ok_or_else(|| var.to_string())?,
            _ => return Err(var.to_string()),
        };
        out.push_str(&val);
        rest = &rest[i + j + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

impl SystemSpec {
    /// Why this system cannot run here (an unset variable, a missing
    /// program), or `None` when it can.
    pub fn unavailable(&self) -> Option<String> {
        let mut cmds = Vec::new();
        if let Some(s) = &self.server {
            cmds.push(s);
        }
        if let Some(c) = self.client.as_ref().and_then(|c| c.command.as_ref()) {
            cmds.push(c);
        }
        for c in cmds {
            match expand_env(&c.cmd) {
                Err(var) => return Some(format!("{var} not set")),
                Ok(p) if !Path::new(&p).is_file() => return Some(format!("{p} does not exist")),
                Ok(_) => {}
            }
            for a in &c.args {
                if let Err(var) = expand_env(a) {
                    return Some(format!("{var} not set"));
                }
            }
        }
        None
    }

    /// Whether the system takes part in `suite`.
    pub fn in_suite(&self, suite: &str) -> bool {
        self.suites.is_empty() || self.suites.iter().any(|s| s == suite)
    }
}

/// The harness's local services, started once per run and shared by all
/// systems.
pub struct Backends {
    pub echo: Backend,
    pub sink: Backend,
    pub source: Backend,
    pub http: Backend,
}

impl Backends {
    /// Starts the four backends (the HTTP one answers with 1 KiB bodies).
    pub fn start() -> std::io::Result<Backends> {
        Ok(Backends {
            echo: Backend::echo()?,
            sink: Backend::sink()?,
            source: Backend::source()?,
            http: Backend::http(1024)?,
        })
    }

    fn names(&self) -> [(&'static str, SocketAddr); 4] {
        [
            ("echo", self.echo.addr()),
            ("sink", self.sink.addr()),
            ("source", self.source.addr()),
            ("http", self.http.addr()),
        ]
    }
}

/// Where the load generators aim for one system.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Targets {
    pub echo: SocketAddr,
    pub sink: SocketAddr,
    pub source: SocketAddr,
    pub http: SocketAddr,
    /// The server's frp control port (frp servers only).
    pub frp: Option<SocketAddr>,
}

/// A started system; stops its processes when dropped.
pub struct Running {
    pub targets: Targets,
    pub server: Option<Daemon>,
    pub client: Option<Daemon>,
    /// Keeps the in-process client's session (and its tunnels) alive.
    pub bench_client: Option<Client>,
    /// Further bench-client sessions ([`Placement::extra_sessions`]).
    pub more_sessions: Vec<Session>,
    pub dir: PathBuf,
}

/// A further bench-client session and its two tunnels.
pub struct Session {
    pub client: Client,
    pub echo: SocketAddr,
    pub sink: SocketAddr,
}

impl Running {
    /// Server pid, if the system has a server process.
    pub fn server_pid(&self) -> Option<u32> {
        self.server.as_ref().map(|d| d.pid())
    }

    /// Every echo tunnel: the first session's, then the further ones'.
    pub fn echos(&self) -> Vec<SocketAddr> {
        let more = self.more_sessions.iter().map(|s| s.echo);
        std::iter::once(self.targets.echo).chain(more).collect()
    }

    /// Every sink tunnel, as [`Running::echos`].
    pub fn sinks(&self) -> Vec<SocketAddr> {
        let more = self.more_sessions.iter().map(|s| s.sink);
        std::iter::once(self.targets.sink).chain(more).collect()
    }

    /// Client pid, if the client is a separate process.
    pub fn client_pid(&self) -> Option<u32> {
        self.client.as_ref().map(|d| d.pid())
    }

    /// The last lines the processes logged (for error messages).
    pub fn log_tail(&self) -> String {
        let mut out = String::new();
        for (who, d) in [("server", &self.server), ("client", &self.client)] {
            if let Some(d) = d {
                let log = d.log();
                let from = log.len().saturating_sub(8);
                for l in &log[from..] {
                    out.push_str(&format!("  [{who}] {l}\n"));
                }
            }
        }
        out
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(c) = self.bench_client.take() {
            c.kill();
        }
        for s in self.more_sessions.drain(..) {
            s.client.kill();
        }
        // Client first, so the server does not log a storm of reconnects.
        for d in [self.client.take(), self.server.take()]
            .into_iter()
            .flatten()
        {
            let mut d = d;
            d.signal(15);
            if d.wait_exit(Duration::from_secs(3)).is_none() {
                d.signal(9);
                d.wait_exit(Duration::from_secs(2));
            }
        }
    }
}

/// Fills `{placeholder}`s from `vars` (anything else in braces is left).
pub fn fill(template: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = template.to_string();
    for (k, v) in vars {
        out = out.replace(&format!("{{{k}}}"), v);
    }
    out
}

/// Where and how wide a system runs.
#[derive(Debug, Clone, Default)]
pub struct Placement {
    /// `{workers}` for servers that take a count.
    pub workers: usize,
    /// CPUs the server process is confined to (empty: not confined).
    pub server_cpus: Vec<usize>,
    /// Bench-client sessions beyond the first, each with an echo and a
    /// sink tunnel of its own ([`Running::echos`], [`Running::sinks`]);
    /// only for systems whose client is the bench's.
    pub extra_sessions: usize,
}

/// Starts `spec` against `backends` with `workers` worker threads (for
/// servers that take `{workers}`), in a fresh directory under `scratch`.
pub fn start(
    spec: &SystemSpec,
    backends: &Backends,
    workers: usize,
    scratch: &Path,
    token: &str,
) -> anyhow::Result<Running> {
    let place = Placement {
        workers,
        ..Placement::default()
    };
    start_placed(spec, backends, &place, scratch, token)
}

/// [`start`] with a [`Placement`].
pub fn start_placed(
    spec: &SystemSpec,
    backends: &Backends,
    place: &Placement,
    scratch: &Path,
    token: &str,
) -> anyhow::Result<Running> {
    let workers = place.workers;
    if spec.kind == "direct" {
        return Ok(Running {
            targets: Targets {
                echo: backends.echo.addr(),
                sink: backends.sink.addr(),
                source: backends.source.addr(),
                http: backends.http.addr(),
                frp: None,
            },
            server: None,
            client: None,
            bench_client: None,
            more_sessions: Vec::new(),
            dir: scratch.to_path_buf(),
        });
    }
    let dir = scratch.join(format!(
        "{}-{}",
        spec.name.replace(|c: char| !c.is_ascii_alphanumeric(), "_"),
        std::process::id() as u64 * 1000 + next_seq()
    ));
    std::fs::create_dir_all(&dir)?;
    let bind_port = free_port();
    let mut vars: BTreeMap<String, String> = BTreeMap::new();
    vars.insert("dir".into(), dir.display().to_string());
    vars.insert("bind_port".into(), bind_port.to_string());
    vars.insert("token".into(), token.to_string());
    vars.insert("workers".into(), workers.to_string());
    let mut remotes = BTreeMap::new();
    let mut frpc = String::new();
    let mut rs = String::new();
    let mut rc = String::new();
    for (name, addr) in backends.names() {
        let remote = free_port();
        remotes.insert(name, remote);
        vars.insert(format!("{name}_port"), addr.port().to_string());
        vars.insert(format!("{name}_remote"), remote.to_string());
        frpc.push_str(&format!(
            "\n[[proxies]]\nname = \"{name}\"\ntype = \"tcp\"\nlocalIP = \"127.0.0.1\"\nlocalPort = {}\nremotePort = {remote}\n",
            addr.port()
        ));
        rs.push_str(&format!(
            "\n[server.services.{name}]\nbind_addr = \"127.0.0.1:{remote}\"\n"
        ));
        rc.push_str(&format!(
            "\n[client.services.{name}]\nlocal_addr = \"{addr}\"\n"
        ));
    }
    vars.insert("frpc_proxies".into(), frpc);
    vars.insert("rathole_server_services".into(), rs);
    vars.insert("rathole_client_services".into(), rc);

    let server_spec = spec
        .server
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("{}: no server", spec.name))?;
    let server = launch(server_spec, &vars, &dir, &place.server_cpus)?;
    let control: SocketAddr = ([127, 0, 0, 1], bind_port).into();
    let mut running = Running {
        targets: Targets {
            echo: ([127, 0, 0, 1], remotes["echo"]).into(),
            sink: ([127, 0, 0, 1], remotes["sink"]).into(),
            source: ([127, 0, 0, 1], remotes["source"]).into(),
            http: ([127, 0, 0, 1], remotes["http"]).into(),
            frp: spec.frp.then_some(control),
        },
        server: Some(server),
        client: None,
        bench_client: None,
        more_sessions: Vec::new(),
        dir: dir.clone(),
    };
    if !wait_listening(control, Duration::from_secs(10)) {
        anyhow::bail!(
            "{}: the server did not listen on {control} within 10 s\n{}",
            spec.name,
            running.log_tail()
        );
    }
    let client = spec
        .client
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("{}: no client", spec.name))?;
    if client.kind == "bench" {
        let mut opts = ClientOpts::new(control, token);
        opts.tls = client.tls;
        opts.mux = client.mux;
        opts.pool_count = client.pool;
        let c = Client::login(opts).map_err(|e| anyhow::anyhow!("{}: login: {e}", spec.name))?;
        for (name, addr) in backends.names() {
            c.add_plain_proxy(name, remotes[name], addr)
                .map_err(|e| anyhow::anyhow!("{}: proxy {name}: {e}", spec.name))?;
        }
        running.bench_client = Some(c);
        for i in 0..place.extra_sessions {
            let mut opts = ClientOpts::new(control, token);
            opts.tls = client.tls;
            opts.mux = client.mux;
            opts.pool_count = client.pool;
            let c = Client::login(opts)
                .map_err(|e| anyhow::anyhow!("{}: session {}: login: {e}", spec.name, i + 2))?;
            let tunnel = |name: &str, backend: SocketAddr| {
                let remote = free_port();
                c.add_plain_proxy(&format!("{name}-{}", i + 2), remote, backend)
                    .map_err(|e| anyhow::anyhow!("{}: session {}: {e}", spec.name, i + 2))?;
                anyhow::Ok(SocketAddr::from(([127, 0, 0, 1], remote)))
            };
            let echo = tunnel("echo", backends.echo.addr())?;
            let sink = tunnel("sink", backends.sink.addr())?;
            running.more_sessions.push(Session {
                client: c,
                echo,
                sink,
            });
        }
    } else if let Some(cmd) = &client.command {
        if place.extra_sessions > 0 {
            anyhow::bail!("{}: more sessions need the bench client", spec.name);
        }
        running.client = Some(launch(cmd, &vars, &dir, &[])?);
    }
    // Ready when an echo goes through the tunnel (a listening public port
    // is not enough: rathole listens before its client has connected).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if echo_once(running.targets.echo).is_ok() {
            break;
        }
        if Instant::now() > deadline {
            anyhow::bail!(
                "{}: no echo through the tunnel within 20 s\n{}",
                spec.name,
                running.log_tail()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    for s in &running.more_sessions {
        if !wait_listening(s.sink, Duration::from_secs(10)) || echo_once(s.echo).is_err() {
            anyhow::bail!(
                "{}: a further session's tunnels ({}, {}) do not work\n{}",
                spec.name,
                s.echo,
                s.sink,
                running.log_tail()
            );
        }
    }
    for t in [
        running.targets.sink,
        running.targets.source,
        running.targets.http,
    ] {
        if !wait_listening(t, Duration::from_secs(10)) {
            anyhow::bail!(
                "{}: tunnel port {t} never listened\n{}",
                spec.name,
                running.log_tail()
            );
        }
    }
    Ok(running)
}

fn next_seq() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    SEQ.fetch_add(1, Ordering::Relaxed)
}

fn launch(
    c: &CommandSpec,
    vars: &BTreeMap<String, String>,
    dir: &Path,
    cpus: &[usize],
) -> anyhow::Result<Daemon> {
    for (file, template) in &c.files {
        std::fs::write(dir.join(file), fill(template, vars))?;
    }
    let cmd = expand_env(&c.cmd).map_err(|v| anyhow::anyhow!("{v} not set"))?;
    let args: Vec<String> = c
        .args
        .iter()
        .map(|a| expand_env(&fill(a, vars)).map_err(|v| anyhow::anyhow!("{v} not set")))
        .collect::<Result<_, _>>()?;
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let level = std::env::var("TOTORO_BENCH_LOG").unwrap_or_else(|_| "warn".into());
    Daemon::spawn_logging_on(Path::new(&cmd), &argv, &level, cpus)
        .map_err(|e| anyhow::anyhow!("{cmd}: {e}"))
}

/// One 64-byte round trip to an echo service.
pub fn echo_once(addr: SocketAddr) -> std::io::Result<()> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    s.set_read_timeout(Some(Duration::from_millis(1000)))?;
    let msg = [0x5au8; 64];
    s.write_all(&msg)?;
    let mut got = [0u8; 64];
    s.read_exact(&mut got)?;
    if got != msg {
        return Err(std::io::Error::other("echo returned different bytes"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_replaces_known_placeholders_only() {
        let mut v = BTreeMap::new();
        v.insert("bind_port".to_string(), "7000".to_string());
        let t = "bindPort = {bind_port}\nallowPorts = [{ start = 1, end = 2 }]\n{unknown}";
        assert_eq!(
            fill(t, &v),
            "bindPort = 7000\nallowPorts = [{ start = 1, end = 2 }]\n{unknown}"
        );
    }

    #[test]
    fn env_expansion_names_the_unset_variable() {
        assert_eq!(expand_env("plain"), Ok("plain".into()));
        assert_eq!(
            expand_env("${TOTORO_BENCH_SURELY_UNSET_VAR}/x"),
            Err("TOTORO_BENCH_SURELY_UNSET_VAR".into())
        );
        let home = std::env::var("PATH").expect("PATH is set");
        assert_eq!(expand_env("a${PATH}b"), Ok(format!("a{home}b")));
    }

    #[test]
    fn the_shipped_systems_file_loads() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("systems.toml");
        let f = SystemsFile::load(&p).expect("bench/systems.toml loads");
        assert!(f.systems.iter().any(|s| s.kind == "direct"));
        assert!(f.systems.iter().any(|s| s.scales));
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("before-after.toml");
        let f = SystemsFile::load(&p).expect("bench/before-after.toml loads");
        assert!(f
            .systems
            .iter()
            .any(|s| s.name == "fastpath-before+frpc-tls"));
    }

    #[test]
    fn bad_systems_files_say_what_is_wrong() {
        let dir = std::env::temp_dir().join(format!("totoro-systems-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let p = dir.join("s.toml");
        for (text, want) in [
            ("[[system]]\nname = \"a\"\n", "server is required"),
            ("[[system]]\nname = \"a\"\nkind = \"direct\"\n[[system]]\nname = \"a\"\nkind = \"direct\"\n", "name used twice"),
            ("[[system]]\nname = \"a\"\nkind = \"direct\"\ncompare = \"zz\"\n", "unknown system \"zz\""),
            ("[[system]]\nname = \"a\"\nkind = \"sideways\"\n", "kind \"sideways\""),
            ("[[system]]\nname = \"a\"\n[system.server]\ncmd = \"x\"\n[system.client]\nkind = \"bench\"\n", "needs frp = true"),
        ] {
            std::fs::write(&p, text).expect("write");
            let e = SystemsFile::load(&p).expect_err(text).to_string();
            assert!(e.contains(want), "{text}: {e}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
