//! `slowpath`: the Totoro control-plane daemon and its operator CLI.

mod cli;
mod client;
mod daemon;

use std::process::ExitCode;

use clap::Parser as _;
use cli::{Cli, Command};

fn main() -> ExitCode {
    // Owner-only files for this process and the fastpath it runs.
    shm::owner_only_umask();
    // The data plane runs from this same binary (`up` starts it as a child
    // process): hand its flags to it untouched, before anything of the
    // control plane (logging, tokio) exists in this process.
    let mut args = std::env::args_os();
    if args.nth(1).is_some_and(|a| a == "fastpath") {
        return run_fastpath(args);
    }
    let cli = Cli::parse();
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn")),
        )
        .with_writer(std::io::stderr);
    if cli.log_format == "json" {
        // `up`'s fastpath child logs the same way (its --log-format reads
        // this variable). Set before any thread exists.
        std::env::set_var("TOTORO_LOG_FORMAT", "json");
        logs.event_format(logfmt::JsonLines::default()).init();
    } else {
        logs.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
    let result = match cli.command {
        Command::Up(up) => serve(up.serve.clone(), Some(up)),
        Command::Serve(args) => serve(args, None),
        Command::Node(cmd) => client::node(cmd),
        Command::Invite(cmd) => client::invite(cmd),
        Command::Audit(args) => client::audit(args),
        Command::Stats(args) => client::stats(args),
        Command::Mesh(cmd) => client::mesh(cmd),
        Command::EdgeAgent(args) => edge_agent(args),
        Command::Agent(args) => node_agent(args),
        Command::Route(cmd) => client::route(cmd),
        Command::Domain(cmd) => client::domain(cmd),
        Command::Origin(cmd) => client::origin(cmd),
        Command::Cert(cmd) => client::cert(cmd),
        Command::EdgeNode(cmd) => client::edge_node(cmd),
        Command::Relay(args) => relay(args),
        Command::Fastpath { .. } => unreachable!("dispatched before parsing"),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("slowpath: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `slowpath fastpath …`: the data plane, linked into this binary so one
/// installed file is a whole node (the feature `embedded-fastpath`, on by
/// default; the library never links the fastpath).
#[cfg(feature = "embedded-fastpath")]
fn run_fastpath(args: std::env::ArgsOs) -> ExitCode {
    fastpath::cli::main(std::iter::once("fastpath".into()).chain(args))
}

#[cfg(not(feature = "embedded-fastpath"))]
fn run_fastpath(_args: std::env::ArgsOs) -> ExitCode {
    eprintln!(
        "slowpath: built without the fastpath (feature `embedded-fastpath`); \
         run a fastpath binary instead"
    );
    ExitCode::from(2)
}

fn relay(args: cli::RelayArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(daemon::relay::run(args));
    // The controller channel runs on a blocking thread that never returns
    // by itself: a plain drop of the runtime would wait for it for ever.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    result
}

/// A secret given as `--<flag>` (or its environment variable `env`) or in
/// `--<flag>-file`: trimmed, and not empty.
fn secret(
    value: &Option<String>,
    file: &Option<std::path::PathBuf>,
    flag: &str,
    env: &str,
) -> anyhow::Result<String> {
    use anyhow::Context as _;
    let text = match (value, file) {
        (Some(v), _) => v.trim().to_owned(),
        (None, Some(f)) => std::fs::read_to_string(f)
            .with_context(|| format!("--{flag}-file {}", f.display()))?
            .trim()
            .to_owned(),
        (None, None) => anyhow::bail!("--{flag} (or {env}, or --{flag}-file) is required"),
    };
    if text.is_empty() {
        anyhow::bail!("--{flag} is empty");
    }
    Ok(text)
}

fn node_agent(a: cli::AgentArgs) -> anyhow::Result<()> {
    let node_key = secret(&a.node_key, &a.node_key_file, "node-key", "TOTORO_NODE_KEY")?;
    slowpath::agent::run(slowpath::agent::AgentConfig {
        control: a.control,
        node_key,
        ca_file: a.ca_file,
        shm_dir: a.shm_dir,
        wait_s: a.wait_secs,
        stats_file: a.stats_file,
        heartbeat: std::time::Duration::from_secs(a.heartbeat_secs),
        spool_dir: a.spool_dir,
        spool_budget: a.spool_max_kib.saturating_mul(1024),
    })
}

fn edge_agent(a: cli::EdgeAgentArgs) -> anyhow::Result<()> {
    let token = secret(&a.token, &a.token_file, "token", "TOTORO_EDGE_TOKEN")?;
    slowpath::edge_agent::run(slowpath::edge_agent::AgentConfig {
        control: a.control,
        token,
        ca_file: a.ca_file,
        map_file: a.map_file,
        cert_dir: a.cert_dir,
        reload: a.reload.split_whitespace().map(str::to_owned).collect(),
        interval: std::time::Duration::from_secs(a.interval_secs.max(1)),
        once: a.once,
    })
}

fn serve(args: cli::ServeArgs, up: Option<cli::UpArgs>) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(daemon::run(args, up))
}
