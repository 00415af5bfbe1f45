//! `totoro-mesh`: seed 003's node client.
//!
//! ```text
//! totoro-mesh up --controller http://HOST:7400 [--network default] [--state-dir DIR]
//!                [--tun totoro0] [--mtu 1400] [--accept-routes] [--gateway]
//! totoro-mesh status | peers | routes   (read DIR/status.json of a running `up`)
//! totoro-mesh ping IP [--count N]       (ICMP echo through the mesh)
//! totoro-mesh down                      (stop the `up` of DIR)
//! ```

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "totoro-mesh",
    version,
    about = "Seed 003's mesh node: a TUN device whose packets travel end-to-end encrypted through relays"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args, Clone)]
struct State {
    /// Where the machine key, the pid and status files live.
    #[arg(long, default_value = "/var/lib/totoro-mesh")]
    state_dir: PathBuf,
}

#[derive(Subcommand)]
enum Cmd {
    /// Join a network and run (in the foreground).
    Up {
        #[command(flatten)]
        state: State,
        /// The controller (the slowpath's API), e.g. http://10.0.0.1:7400.
        #[arg(long)]
        controller: String,
        /// The network to join.
        #[arg(long, default_value = "default")]
        network: String,
        /// TUN interface name.
        #[arg(long, default_value = "totoro0")]
        tun: String,
        /// TUN MTU.
        #[arg(long, default_value_t = 1400)]
        mtu: u32,
        /// Install the subnet routes gateways advertise.
        #[arg(long)]
        accept_routes: bool,
        /// Act as a gateway: forward between the mesh and this host's
        /// networks, with SNAT (needs nftables).
        #[arg(long)]
        gateway: bool,
        /// Replace the node key this often, hours (0: never).
        #[arg(long, default_value_t = 24.0)]
        key_rotation_hours: f64,
        /// The name operators see (default: the host name).
        #[arg(long)]
        hostname: Option<String>,
        /// The relay to use first (its name or id); default: the first
        /// of the controller's list. Another is tried when it fails.
        #[arg(long)]
        relay: Option<String>,
        /// Trust the certificates in this PEM file for wss:// (relays, the
        /// controller) instead of the web PKI's roots.
        #[arg(long)]
        ca_file: Option<PathBuf>,
    },
    /// Stop the `up` of --state-dir.
    Down(State),
    /// This node: address, relay, counters.
    Status(State),
    /// The other nodes of the network.
    Peers(State),
    /// The subnet routes.
    Routes(State),
    /// ICMP echo to a virtual IP (or an address behind a gateway).
    Ping {
        /// The address.
        ip: std::net::Ipv4Addr,
        /// How many echoes.
        #[arg(long, default_value_t = 3)]
        count: u32,
    },
}

fn status(state: &State) -> Result<serde_json::Value, String> {
    let path = state.state_dir.join("status.json");
    let text = std::fs::read_to_string(&path).map_err(|e| {
        format!(
            "{}: {e} (is `totoro-mesh up` running with this --state-dir?)",
            path.display()
        )
    })?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

fn print(v: &serde_json::Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Up {
            state,
            controller,
            network,
            tun,
            mtu,
            accept_routes,
            gateway,
            key_rotation_hours,
            hostname,
            relay,
            ca_file,
        } => match ca_file.map(|f| mesh::tls::set_ca_file(&f)) {
            Some(Err(e)) => Err(format!("--ca-file: {e}")),
            _ => up(mesh::node::Options {
                relay,
                controller,
                network,
                state_dir: state.state_dir,
                tun,
                mtu,
                hostname: hostname.unwrap_or_else(|| {
                    std::fs::read_to_string("/etc/hostname")
                        .map(|h| h.trim().to_owned())
                        .unwrap_or_else(|_| "node".into())
                }),
                accept_routes,
                gateway,
                // Out of range (negative, NaN, over a year) is refused in up().
                key_rotation: Duration::try_from_secs_f64(key_rotation_hours * 3600.0)
                    .ok()
                    .filter(|d| *d <= Duration::from_secs(365 * 86_400))
                    .unwrap_or(Duration::MAX),
            }),
        },
        Cmd::Down(state) => down(&state),
        Cmd::Status(s) => status(&s).map(|v| print(&v)),
        Cmd::Peers(s) => status(&s).map(|v| print(&v["peers"])),
        Cmd::Routes(s) => status(&s).map(|v| print(&v["routes"])),
        Cmd::Ping { ip, count } => mesh::icmp::ping(ip, count, Duration::from_secs(2)),
    };
    if let Err(e) = result {
        eprintln!("totoro-mesh: {e}");
        std::process::exit(1);
    }
}

fn up(opts: mesh::node::Options) -> Result<(), String> {
    if !(576..=9000).contains(&opts.mtu) {
        return Err(format!("--mtu {} must be 576 to 9000", opts.mtu));
    }
    if opts.key_rotation == Duration::MAX {
        return Err("--key-rotation-hours must be 0 (never) to 8760".into());
    }
    let node = mesh::node::Node::new(opts.clone())?;
    let pid = opts.state_dir.join("pid");
    mesh::files::private_write(&pid, std::process::id().to_string().as_bytes())
        .map_err(|e| format!("{}: {e}", pid.display()))?;
    node.run();
    Ok(())
}

fn down(state: &State) -> Result<(), String> {
    let path = state.state_dir.join("pid");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let pid: i32 = text
        .trim()
        .parse()
        .map_err(|_| format!("{}: not a pid", path.display()))?;
    // SAFETY: kill(2) takes plain integers.
    if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
        return Err(format!("pid {pid}: {}", std::io::Error::last_os_error()));
    }
    let _ = std::fs::remove_file(path);
    println!("stopped {pid}");
    Ok(())
}
