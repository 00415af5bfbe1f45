//! `tunnel_check`: one tunnel through a running relay, as an invitee's frpc
//! would open it, checked end to end. For deployments without a stock frpc
//! at hand (deploy/compose/offline-test.sh runs it against the compose
//! stack): it reads the frpc.toml an invite resolves to, logs in with its
//! token and ticket, registers a tcp proxy (remotePort 0: the relay picks
//! from the invite's pool) to a local echo server, sends data through the
//! public port and checks every byte comes back.
//!
//!   cargo run -p totoro-bench --example tunnel_check -- frpc.toml
//!   cargo run -p totoro-bench --example tunnel_check -- \
//!       --server 127.0.0.1:7000 --token TOKEN --ticket TICKET
//!
//! Exits 0 only when the echo came back whole.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bench::backend::Backend;
use bench::client::{Client, ClientOpts};
use clap::Parser;

#[derive(Parser)]
#[command(
    name = "tunnel_check",
    about = "Log in with an invite's frpc.toml, tunnel to a local echo server and check the bytes"
)]
struct Cli {
    /// The frpc.toml a resolve returned (serverAddr, serverPort, auth.token,
    /// metadatas.ticket, and transport.* if it sets them).
    frpc_toml: Option<PathBuf>,
    /// serverAddr:serverPort, instead of (or over) the file's.
    #[arg(long)]
    server: Option<String>,
    /// auth.token, instead of (or over) the file's.
    #[arg(long)]
    token: Option<String>,
    /// metadatas.ticket, instead of (or over) the file's.
    #[arg(long)]
    ticket: Option<String>,
    /// Bytes to send through the tunnel and expect back.
    #[arg(long, default_value_t = 1 << 20)]
    bytes: usize,
    /// Limit on the login and on the whole echo, in seconds.
    #[arg(long, default_value_t = 30)]
    timeout_s: u64,
}

/// What frpc would take from its config: the settings that change how it
/// talks to the server, at frpc's defaults where the file is silent.
struct Settings {
    server: String,
    token: String,
    ticket: String,
    tls: bool,
    tls_custom_byte: bool,
    mux: bool,
}

fn settings(cli: &Cli) -> Result<Settings> {
    let table: toml::Table = match &cli.frpc_toml {
        Some(p) => {
            let text = std::fs::read_to_string(p).with_context(|| format!("{}", p.display()))?;
            toml::from_str(&text).with_context(|| format!("{}: not TOML", p.display()))?
        }
        None => toml::Table::new(),
    };
    let get = |path: &[&str]| -> Option<&toml::Value> {
        let mut v = table.get(path[0])?;
        for k in &path[1..] {
            v = v.get(k)?;
        }
        Some(v)
    };
    let text = |path: &[&str]| get(path).and_then(|v| v.as_str()).map(str::to_owned);
    // frpc's defaults (0.52 and later): TLS on, without the 0x17 first
    // byte, over one yamux session.
    let flag =
        |path: &[&str], default: bool| get(path).and_then(|v| v.as_bool()).unwrap_or(default);
    let server = match &cli.server {
        Some(s) => s.clone(),
        None => {
            let addr = text(&["serverAddr"]).unwrap_or_else(|| "127.0.0.1".into());
            let port = get(&["serverPort"])
                .and_then(|v| v.as_integer())
                .unwrap_or(7000);
            // serverAddr may be an IPv6 literal.
            if addr.contains(':') {
                format!("[{addr}]:{port}")
            } else {
                format!("{addr}:{port}")
            }
        }
    };
    let token = cli
        .token
        .clone()
        .or_else(|| text(&["auth", "token"]))
        .unwrap_or_default();
    let ticket = cli
        .ticket
        .clone()
        .or_else(|| text(&["metadatas", "ticket"]))
        .ok_or_else(|| anyhow!("no ticket: give --ticket or an frpc.toml with metadatas.ticket"))?;
    Ok(Settings {
        server,
        token,
        ticket,
        tls: flag(&["transport", "tls", "enable"], true),
        tls_custom_byte: !flag(&["transport", "tls", "disableCustomTLSFirstByte"], true),
        mux: flag(&["transport", "tcpMux"], true),
    })
}

fn run(cli: &Cli) -> Result<()> {
    let s = settings(cli)?;
    let server: SocketAddr = s
        .server
        .to_socket_addrs()
        .with_context(|| format!("server {}", s.server))?
        .next()
        .ok_or_else(|| anyhow!("server {}: no address", s.server))?;
    let limit = Duration::from_secs(cli.timeout_s);

    let echo = Backend::echo().context("local echo server")?;
    println!("tunnel_check: local echo server on {}", echo.addr());

    let mut opts = ClientOpts::new(server, &s.token);
    opts.metas.insert("ticket".into(), s.ticket.clone());
    opts.tls = s.tls;
    opts.tls_custom_byte = s.tls_custom_byte;
    opts.mux = s.mux;
    opts.timeout = Some(limit);
    let t0 = Instant::now();
    let client = Client::login(opts).map_err(|e| anyhow!("login to {server}: {e}"))?;
    println!(
        "tunnel_check: logged in to {server} (tls={}, tcpMux={}) as run_id {} in {:?}",
        s.tls,
        s.mux,
        client.run_id(),
        t0.elapsed()
    );

    let port = client
        .add_plain_proxy("tunnel-check", 0, echo.addr())
        .map_err(|e| anyhow!("registering the tcp proxy: {e}"))?;
    let public = SocketAddr::new(server.ip(), port);
    println!("tunnel_check: tcp proxy tunnel-check registered, public port {port}");

    let t1 = Instant::now();
    let sent: Vec<u8> = (0..cli.bytes).map(|i| (i % 251) as u8).collect();
    let mut conn = TcpStream::connect_timeout(&public, limit)
        .with_context(|| format!("connecting to the public port {public}"))?;
    conn.set_read_timeout(Some(limit))?;
    conn.set_write_timeout(Some(limit))?;
    // Written from another thread: the echo comes back while we send, and
    // neither side may wait for the other's buffers to drain.
    let mut writer = conn.try_clone()?;
    let payload = sent.clone();
    let write = std::thread::spawn(move || writer.write_all(&payload));
    let mut got = vec![0u8; sent.len()];
    conn.read_exact(&mut got)
        .with_context(|| format!("reading the echo back through {public}"))?;
    write
        .join()
        .map_err(|_| anyhow!("the writer panicked"))?
        .with_context(|| format!("writing through {public}"))?;
    if got != sent {
        let at = got.iter().zip(&sent).position(|(a, b)| a != b).unwrap_or(0);
        bail!("the echo differs from what was sent at byte {at}");
    }
    let took = t1.elapsed();
    println!(
        "tunnel_check: {} bytes sent through {public} and echoed back intact in {took:?}; \
         the echo server saw {} bytes",
        sent.len(),
        echo.bytes()
    );
    drop(conn);
    client.close();
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => {
            println!("tunnel_check: OK");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tunnel_check: FAILED: {e:#}");
            ExitCode::FAILURE
        }
    }
}
