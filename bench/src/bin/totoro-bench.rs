//! `totoro-bench`: runs a suite of load generators against the systems in a
//! systems TOML and writes run.json, results.md and SVG plots.

use bench::harness::{report, runner};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "totoro-bench",
    about = "Side-by-side benchmark harness: fastpath vs frps vs rathole vs direct loopback"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a suite and write run.json, results.md and plots into --out.
    Run {
        /// smoke (under a minute), full (the side-by-side table) or scaling
        /// (fastpath at several worker counts).
        #[arg(long, default_value = "full")]
        suite: String,
        /// The systems file.
        #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/systems.toml"))]
        systems: PathBuf,
        /// Output directory (default: bench/runs/SUITE-UNIXTIME).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Only these systems (comma-separated names).
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
        /// Workers for servers that take a count (default: the cores here).
        #[arg(long)]
        workers: Option<usize>,
        /// Worker counts for the scaling suite; counts above the cores here
        /// are left out with a note.
        #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16")]
        scale_workers: Vec<usize>,
        /// Override the suite's repeat count.
        #[arg(long)]
        repeats: Option<usize>,
        /// Confine each server to these CPUs (`0-7`): with N workers the
        /// first N of them, or these and --load-cpus together when there
        /// are fewer than N.
        #[arg(long)]
        server_cpus: Option<String>,
        /// Confine the harness (load generators, bench clients, backends,
        /// stock clients) to these CPUs (`8-15`).
        #[arg(long)]
        load_cpus: Option<String>,
        /// Spread the bench client's load over this many sessions
        /// (default: the suite's; scaling 32, others 1).
        #[arg(long)]
        sessions: Option<usize>,
        /// Override the idle-connection count (e.g. 10000, 50000; needs an
        /// open-file limit of about eight per connection).
        #[arg(long)]
        idle_conns: Option<usize>,
        /// Only these metrics (comma-separated: bulk1_up, rtt, open,
        /// connrate, http, idle, idle_http, proxies, login; `open` is every open@…).
        /// The attack family runs only when named: `attack` is every
        /// attack_… (attack_preauth_streams, attack_stalled_conns, …).
        #[arg(long, value_delimiter = ',')]
        metrics: Vec<String>,
        /// The scaled variant of the pre-login stream attack,
        /// attack_preauth_streams_xN, opens N times the connections
        /// (default 10; 1: no variant).
        #[arg(long)]
        attack_scale: Option<usize>,
    },
    /// Time the vhost route table (build, memory, one lookup by kind) at
    /// the size of a large node, in this process; prints a markdown table.
    Routes {
        /// Hostnames in the table.
        #[arg(long, default_value_t = 100_000)]
        hosts: usize,
        /// Lookups timed per kind (exact, wildcard, miss).
        #[arg(long, default_value_t = 100_000)]
        lookups: usize,
    },
    /// Node agents at scale (issue 17): N nodes with a long poll open each
    /// on one `slowpath serve`; an invite made on one node at a time; the
    /// time until its poll answers, and the control plane's CPU per change.
    Agents {
        /// The `slowpath` binary (SLOWPATH_BIN).
        #[arg(long, env = "SLOWPATH_BIN")]
        slowpath: PathBuf,
        /// Node counts, comma-separated, one run each.
        #[arg(long, value_delimiter = ',', default_value = "10,100,300")]
        nodes: Vec<usize>,
        /// Changes per run.
        #[arg(long, default_value_t = 100)]
        changes: usize,
        /// A PostgreSQL URL with a fresh database (default: SQLite).
        #[arg(long)]
        database_url: Option<String>,
    },
    /// Seed 003's mesh in network namespaces (root): TCP with 1 and 8
    /// streams and RTT between two nodes through the built-in relay, the
    /// relay's frames/s at 64 and 1400 bytes, CPU-s per GB; anchors: the
    /// bare veth and, with --boringtun, a direct userspace WireGuard.
    Mesh {
        /// The `slowpath` binary (SLOWPATH_BIN).
        #[arg(long, env = "SLOWPATH_BIN")]
        slowpath: PathBuf,
        /// The `totoro-mesh` binary (MESH_BIN).
        #[arg(long, env = "MESH_BIN")]
        mesh: PathBuf,
        /// `boringtun-cli` (BORINGTUN_BIN; needs `wg` from wireguard-tools).
        #[arg(long, env = "BORINGTUN_BIN")]
        boringtun: Option<PathBuf>,
        /// MiB per throughput measurement.
        #[arg(long, default_value_t = 512)]
        mib: u64,
        /// Seconds per frame-rate measurement.
        #[arg(long, default_value_t = 3)]
        seconds: u64,
    },
    /// UDP datagrams through a `udp` proxy, fastpath against frps with the
    /// same client, open loop at each offered rate; prints a markdown
    /// table (medians over the repeats).
    Udp {
        /// frps (FRPS_BIN).
        #[arg(long, env = "FRPS_BIN")]
        frps: PathBuf,
        /// frpc (FRPC_BIN); needed with `--client frpc`.
        #[arg(long, env = "FRPC_BIN")]
        frpc: Option<PathBuf>,
        /// Which client serves the proxy for both servers: `frpc` (stock,
        /// TLS + tcpMux) or `bench` (this bench's own frp client in a
        /// process of its own: plain TCP, no mux).
        #[arg(long, default_value = "frpc", value_parser = ["frpc", "bench"])]
        client: String,
        /// The fastpath (default: the one built next to this binary).
        #[arg(long, env = "FASTPATH_BIN")]
        fastpath: Option<PathBuf>,
        /// Datagram sizes, bytes.
        #[arg(long, value_delimiter = ',', default_value = "64,1200")]
        sizes: Vec<usize>,
        /// Offered rates, datagrams/s (0: as fast as the sender goes).
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "10000,20000,40000,80000,160000,0"
        )]
        rates: Vec<f64>,
        /// Seconds per run.
        #[arg(long, default_value_t = 3.0)]
        secs: f64,
        /// Rounds (systems alternate which goes first).
        #[arg(long, default_value_t = 2)]
        repeats: usize,
        /// Run the harness's sender and receiver on these CPUs (a list as
        /// taskset takes it) and the servers, clients and echo service on
        /// the others, so that an unpaced sender cannot take CPU from the
        /// system it measures.
        #[arg(long)]
        load_cpus: Option<String>,
    },
    /// Rewrite results.md and the plots from a run directory's run.json.
    Report {
        /// A directory holding run.json.
        dir: PathBuf,
    },
    /// The bench client serving one udp proxy (`udp --client bench` runs
    /// it), until the server closes the session.
    #[command(hide = true)]
    UdpClient {
        /// The server's frp address.
        #[arg(long)]
        server: std::net::SocketAddr,
        /// auth.token.
        #[arg(long)]
        token: String,
        /// The local service.
        #[arg(long)]
        local: std::net::SocketAddr,
        /// remotePort.
        #[arg(long)]
        remote_port: u16,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let res = match cli.cmd {
        Cmd::Run {
            suite,
            systems,
            out,
            only,
            workers,
            scale_workers,
            repeats,
            server_cpus,
            load_cpus,
            sessions,
            idle_conns,
            metrics,
            attack_scale,
        } => (|| -> anyhow::Result<()> {
            let mut suite = runner::Suite::named(&suite).ok_or_else(|| {
                anyhow::anyhow!("--suite {suite:?}: expected smoke, full or scaling")
            })?;
            if let Some(n) = repeats {
                if n == 0 {
                    anyhow::bail!("--repeats must be at least 1");
                }
                suite.repeats = n;
            }
            if let Some(n) = idle_conns {
                suite.idle_conns = n;
            }
            suite.metrics = metrics;
            if let Some(n) = sessions {
                if n == 0 {
                    anyhow::bail!("--sessions must be at least 1");
                }
                suite.sessions = n;
            }
            let cpus = |flag: &str, v: Option<String>| match v {
                None => Ok(Vec::new()),
                Some(v) => bench::proc::parse_cpu_list(&v)
                    .and_then(|c| {
                        if c.is_empty() {
                            Err("no CPUs".into())
                        } else {
                            Ok(c)
                        }
                    })
                    .map_err(|e| anyhow::anyhow!("{flag}: {e}")),
            };
            let server_cpus = cpus("--server-cpus", server_cpus)?;
            let load_cpus = cpus("--load-cpus", load_cpus)?;
            if let Some(n) = attack_scale {
                suite.attack.scale = n;
            }
            let out = out.unwrap_or_else(|| {
                let t = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                    .join("runs")
                    .join(format!("{}-{t}", suite.name))
            });
            let opts = runner::RunOpts {
                suite,
                systems_file: systems,
                out: out.clone(),
                only,
                workers: workers.unwrap_or_else(runner::cores).max(1),
                scale_workers,
                server_cpus,
                load_cpus,
                command: std::env::args().collect::<Vec<_>>().join(" "),
            };
            let record = runner::run(&opts)?;
            for p in report::write(&out, &record)? {
                eprintln!("wrote {}", p.display());
            }
            print!("{}", report::markdown(&record));
            Ok(())
        })(),
        Cmd::Agents {
            slowpath,
            nodes,
            changes,
            database_url,
        } => {
            let o = bench::agents::AgentsOpts {
                slowpath,
                nodes,
                changes: changes.max(1),
                database_url,
            };
            bench::agents::run(&o)
                .map(|rows| print!("{}", bench::agents::markdown(&rows)))
                .map_err(|e| anyhow::anyhow!("agents: {e}"))
        }
        Cmd::Mesh {
            slowpath,
            mesh,
            boringtun,
            mib,
            seconds,
        } => {
            let o = bench::mesh::MeshOpts {
                slowpath,
                mesh,
                boringtun,
                bytes: mib << 20,
                seconds,
            };
            bench::mesh::run(&o)
                .map(|md| print!("{md}"))
                .map_err(|e| anyhow::anyhow!("mesh: {e}"))
        }
        Cmd::Routes { hosts, lookups } => {
            let r = bench::micro::routes(hosts, lookups);
            println!("| hostnames | routes | build, ms | RSS per route, bytes | exact, ns | wildcard, ns | miss, ns |");
            println!("|---|---|---|---|---|---|---|");
            println!(
                "| {} | {} | {:.1} | {} | {:.0} | {:.0} | {:.0} |",
                r.hosts,
                r.routes,
                r.build_ms,
                r.bytes_per_route.map_or("—".into(), |b| format!("{b:.0}")),
                r.exact_ns,
                r.wildcard_ns,
                r.miss_ns
            );
            eprintln!("{} lookups of each kind, mean per lookup", r.lookups);
            Ok(())
        }
        Cmd::Udp {
            frps,
            frpc,
            client,
            fastpath,
            sizes,
            rates,
            secs,
            repeats,
            load_cpus,
        } => (|| -> anyhow::Result<()> {
            let load_cpus = match load_cpus {
                Some(list) => bench::proc::parse_cpu_list(&list)
                    .map_err(|e| anyhow::anyhow!("--load-cpus: {e}"))?,
                None => Vec::new(),
            };
            let system_cpus: Vec<usize> = bench::proc::allowed_cpus()
                .into_iter()
                .filter(|c| !load_cpus.contains(c))
                .collect();
            anyhow::ensure!(
                load_cpus.is_empty() || !system_cpus.is_empty(),
                "--load-cpus leaves no CPU for the systems"
            );
            let fastpath = fastpath
                .or_else(|| bench::harness::systems::sibling_binary("fastpath"))
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "no fastpath binary next to this one: build it, or give --fastpath"
                    )
                })?;
            let client =
                match client.as_str() {
                    "bench" => bench::load::udp::UdpClient::Bench(std::env::current_exe()?),
                    _ => bench::load::udp::UdpClient::Frpc(frpc.ok_or_else(|| {
                        anyhow::anyhow!("--client frpc needs --frpc (or FRPC_BIN)")
                    })?),
                };
            let scratch =
                std::env::temp_dir().join(format!("totoro-bench-udp-{}", std::process::id()));
            let c = bench::load::udp::Compare {
                fastpath,
                frps,
                client,
                sizes,
                rates,
                secs,
                repeats: repeats.max(1),
                scratch: scratch.clone(),
                cpus: (!load_cpus.is_empty()).then_some((load_cpus, system_cpus)),
            };
            let cells = bench::load::udp::compare(&c);
            let _ = std::fs::remove_dir_all(&scratch);
            print!("{}", bench::load::udp::markdown(&c, &cells?));
            Ok(())
        })(),
        Cmd::UdpClient {
            server,
            token,
            local,
            remote_port,
        } => bench::load::udp::serve_bench_client(server, &token, local, remote_port),
        Cmd::Report { dir } => (|| -> anyhow::Result<()> {
            let p = dir.join("run.json");
            let text =
                std::fs::read_to_string(&p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
            let record: runner::RunRecord =
                serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
            for p in report::write(&dir, &record)? {
                eprintln!("wrote {}", p.display());
            }
            print!("{}", report::markdown(&record));
            Ok(())
        })(),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
