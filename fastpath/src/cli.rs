//! The `fastpath` command line: config loading, logging, signals, stats
//! file. A library module so that `slowpath up` can run the same data plane
//! as its own child process from one binary.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use crate::config::Config;
use crate::runtime::server::{Launch, Server};
use crate::runtime::upgrade;
use clap::{Parser, Subcommand};

/// Totoro fastpath: an io_uring, thread-per-core frp server (drop-in frps).
#[derive(Parser, Debug)]
#[command(name = "fastpath", version, about)]
struct Cli {
    /// Config file (frps.toml keys plus a [fastpath] table). Without it,
    /// built-in defaults are used.
    #[arg(short = 'c', long = "config", global = true)]
    config: Option<PathBuf>,
    /// Take the listening sockets over from the fastpath running with this
    /// config (at fastpath.upgradeSocket), which then drains and exits.
    #[arg(long)]
    takeover: bool,
    /// Worker threads (overrides fastpath.workers; 0 = one per core).
    #[arg(long)]
    workers: Option<usize>,
    /// Pin worker i to CPU i (overrides fastpath.cpuPinning).
    #[arg(long)]
    pin_cpus: bool,
    /// Write per-worker counters as JSON to this file every second.
    #[arg(long)]
    stats_file: Option<PathBuf>,
    /// Policy directory of the slowpath governing this fastpath (overrides
    /// fastpath.policyDir; `slowpath up` passes its own).
    #[arg(long)]
    policy_dir: Option<PathBuf>,
    /// Log line format: text or json (overrides log.format).
    #[arg(long, env = "TOTORO_LOG_FORMAT")]
    log_format: Option<String>,
    /// This node's id on every JSON log line (overrides fastpath.nodeId).
    #[arg(long)]
    node_id: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Upgrade the fastpath running with this config without dropping a
    /// tunnel: it starts its binary again (as found on disk now), hands
    /// the new process its listening sockets, and drains (the same as
    /// sending it SIGUSR2). Prints the new pid.
    Upgrade,
}

fn init_logging(cfg: &Config) -> anyhow::Result<()> {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&cfg.log.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    if cfg.log.format == "json" {
        let lines = logfmt::JsonLines::new([("node_id", cfg.fastpath.node_id.clone())]);
        let builder = builder.event_format(lines);
        if cfg.log.to == "console" || cfg.log.to.is_empty() {
            builder.with_writer(std::io::stderr).init();
        } else {
            builder
                .with_writer(std::sync::Mutex::new(log_file(cfg)?))
                .init();
        }
        return Ok(());
    }
    if cfg.log.to == "console" || cfg.log.to.is_empty() {
        let color =
            !cfg.log.disable_print_color && std::io::IsTerminal::is_terminal(&std::io::stderr());
        builder.with_ansi(color).with_writer(std::io::stderr).init();
    } else {
        builder
            .with_ansi(false)
            .with_writer(std::sync::Mutex::new(log_file(cfg)?))
            .init();
    }
    Ok(())
}

fn log_file(cfg: &Config) -> anyhow::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&cfg.log.to)
        .map_err(|e| anyhow::anyhow!("log.to {}: {e}", cfg.log.to))
}

fn block_signals() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data (all-zero is a valid value, and
    // sigemptyset initializes it anyway); the calls read and write only this
    // local set and the calling thread's signal mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGUSR2);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// Wait up to `wait` for SIGINT/SIGTERM/SIGUSR2; returns the signal number.
fn wait_signal(set: &libc::sigset_t, wait: Duration) -> Option<i32> {
    let ts = libc::timespec {
        tv_sec: wait.as_secs() as _,
        tv_nsec: wait.subsec_nanos() as _,
    };
    // SAFETY: `set` and `ts` are valid for reads for the call; a null
    // siginfo pointer is allowed (nothing is written).
    let sig = unsafe { libc::sigtimedwait(set, std::ptr::null_mut(), &ts) };
    (sig > 0).then_some(sig)
}

/// Run the fastpath with these command-line arguments (argv\[0\] first)
/// until SIGINT/SIGTERM; the exit code follows the binary's conventions
/// (2 = bad config or flags). Everything it writes is for its own user only
/// ([`shm::owner_only_umask`]).
pub fn main<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    shm::owner_only_umask();
    let args: Vec<std::ffi::OsString> = args.into_iter().map(Into::into).collect();
    let cli = match Cli::try_parse_from(&args) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    let (mut cfg, unknown) = match &cli.config {
        Some(path) => match crate::config::load(path) {
            Ok(x) => x,
            Err(e) => {
                eprintln!("fastpath: {e}");
                return ExitCode::from(2);
            }
        },
        None => (Config::default(), Vec::new()),
    };
    if let Some(w) = cli.workers {
        cfg.fastpath.workers = w;
    }
    if cli.pin_cpus {
        cfg.fastpath.cpu_pinning = true;
    }
    if let Some(d) = &cli.policy_dir {
        cfg.fastpath.policy_dir = d.display().to_string();
    }
    if let Some(f) = &cli.log_format {
        cfg.log.format = f.clone();
    }
    if let Some(n) = &cli.node_id {
        cfg.fastpath.node_id = n.clone();
    }
    if let Err(e) = cfg.validate() {
        eprintln!("fastpath: {e}");
        return ExitCode::from(2);
    }
    if let Some(Command::Upgrade) = cli.command {
        let path = &cfg.fastpath.upgrade_socket;
        if path.is_empty() {
            eprintln!("fastpath: fastpath.upgradeSocket is not set in the config");
            return ExitCode::from(2);
        }
        return match upgrade::request(path) {
            Ok(pid) => {
                println!("upgraded: the new fastpath is pid {pid}; the old one drains");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("fastpath: upgrade failed: {e:#}");
                ExitCode::from(1)
            }
        };
    }
    // The one key that names a file the parser cannot check: unreadable
    // is a config error, as a bad value is.
    if !cfg.custom_404_page.is_empty() {
        if let Err(e) = std::fs::File::open(&cfg.custom_404_page) {
            eprintln!(
                "fastpath: custom404Page: cannot read {:?}: {e}",
                cfg.custom_404_page
            );
            return ExitCode::from(2);
        }
    }
    if let Err(e) = init_logging(&cfg) {
        eprintln!("fastpath: {e}");
        return ExitCode::from(2);
    }
    // seed 002's [etcd] section lives in the same frps-style file; the
    // slowpath reads it (the data plane never talks to etcd), and refuses
    // the unknown keys in it.
    let unknown: Vec<String> = unknown
        .into_iter()
        .filter(|k| !k.starts_with("etcd."))
        .collect();
    if cfg.etcd.is_some() {
        tracing::info!(
            "[etcd] is read by the slowpath, which compiles etcd's tenants into the policy table"
        );
    }
    if !unknown.is_empty() {
        tracing::warn!(keys = ?unknown, "unknown config keys ignored");
    }
    if cli.config.is_none() {
        tracing::info!("no config file given (-c): running on built-in defaults");
    }
    if cfg.auth.token.is_empty() {
        tracing::warn!("auth.token is empty: any client can log in");
    }
    let signals = block_signals();
    let mut launch = Launch {
        takeover: None,
        exe: own_binary(),
    };
    if cli.takeover {
        let path = cfg.fastpath.upgrade_socket.clone();
        if path.is_empty() {
            eprintln!("fastpath: --takeover needs fastpath.upgradeSocket in the config");
            return ExitCode::from(2);
        }
        match upgrade::Inherited::take(&path) {
            Ok(i) => launch.takeover = Some(i),
            Err(e) => {
                tracing::error!("{e:#}");
                eprintln!("fastpath: {e:#}");
                return ExitCode::from(1);
            }
        }
    }
    let drain_for = Duration::from_secs(cfg.fastpath.drain_secs);
    let server = match Server::launch(cfg, launch) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("fastpath: {e:#}");
            return ExitCode::from(1);
        }
    };
    upgrade::notify_systemd(&format!("MAINPID={}\nREADY=1", std::process::id()));
    // The stats file is the successor's once it took over.
    let stats_file = |server: &Server| {
        cli.stats_file
            .as_ref()
            .filter(|_| server.draining_since().is_none())
            .cloned()
    };
    loop {
        if let Some(path) = stats_file(&server) {
            write_stats(&server, &path);
        }
        if let Some(since) = server.draining_since() {
            let live = server.live();
            if live == 0 {
                tracing::info!("drained: every session and transfer ended");
                break;
            }
            if since.elapsed() >= drain_for {
                tracing::info!(
                    live,
                    "fastpath.drainSecs passed: closing what is left (clients reconnect to the new process)"
                );
                break;
            }
        }
        match wait_signal(&signals, Duration::from_secs(1)) {
            Some(libc::SIGUSR2) => match server.upgrade() {
                Ok(pid) => tracing::info!(pid, "upgrade: the new fastpath took over"),
                Err(e) => tracing::warn!("upgrade not done: {e}"),
            },
            Some(sig) => {
                tracing::info!(
                    signal = sig,
                    "stopping: no new connections, closing sessions"
                );
                break;
            }
            None => {}
        }
    }
    let totals = server.stats();
    if let Some(path) = stats_file(&server) {
        write_stats(&server, &path);
    }
    let clean = server.stop(Duration::from_millis(4500));
    tracing::info!(stats = ?totals, clean, "stopped");
    ExitCode::SUCCESS
}

/// This binary as it was started (the path, so that a binary replaced on
/// disk is the one an upgrade starts) and its arguments, for a successor.
/// The process's own argv, not the arguments given to [`main`]: under
/// `slowpath fastpath …` the binary is the slowpath and its first argument
/// the subcommand.
fn own_binary() -> Option<(PathBuf, Vec<std::ffi::OsString>)> {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let exe = std::env::current_exe().ok()?;
    // /proc/self/exe names a replaced binary "<path> (deleted)".
    let shown = exe.to_string_lossy();
    let exe = PathBuf::from(
        shown
            .strip_suffix(" (deleted)")
            .unwrap_or(&shown)
            .to_string(),
    );
    let rest: Vec<_> = args
        .iter()
        .skip(1)
        .filter(|a| a.as_os_str() != "--takeover")
        .cloned()
        .collect();
    Some((exe, rest))
}

fn write_stats(server: &Server, path: &std::path::Path) {
    let json = serde_json::json!({ "workers": server.stats() });
    let tmp = path.with_extension("tmp");
    if std::fs::write(&tmp, json.to_string()).is_ok() {
        let _ = std::fs::rename(&tmp, path);
    }
}
