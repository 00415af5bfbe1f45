//! Remote relay hosts for the node agent's tests (issue 17): a directory
//! with `slowpath agent` and, once its first table is in place, a fastpath
//! on the agent's policy directory; and invites made, resolved and revoked
//! through a control plane's API.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bench::proc::{wait_listening, Daemon};
use serde_json::{json, Value};

use super::{wait_within, Slowpath};

const BIN: &str = env!("CARGO_BIN_EXE_slowpath");

/// A remote relay host: its directory, agent and fastpath.
pub struct Host {
    pub dir: PathBuf,
    /// The agent's event spool.
    pub spool: PathBuf,
    agent_args: Vec<String>,
    pub shm: PathBuf,
    pub agent: Daemon,
    pub fastpath: Option<Daemon>,
    pub frp: std::net::SocketAddr,
}

impl Host {
    /// Starts the agent for `key` against the control planes `controls`
    /// (the first is `sp`, whose directory the host's goes next to); the
    /// fastpath once the first table is in place (when `fastpath` is set).
    pub fn start(
        controls: &[&Slowpath],
        name: &str,
        key: &str,
        port: u16,
        token: &str,
        fastpath: bool,
    ) -> Host {
        let urls: Vec<&str> = controls.iter().map(|c| c.base.as_str()).collect();
        Host::start_at(controls[0], &urls, name, key, port, token, fastpath)
    }

    /// [`Host::start`] with the agent pointed at `urls` (any servers), its
    /// directory next to `sp`'s.
    pub fn start_at(
        sp: &Slowpath,
        urls: &[&str],
        name: &str,
        key: &str,
        port: u16,
        token: &str,
        fastpath: bool,
    ) -> Host {
        Host::start_with(sp, urls, name, key, port, token, fastpath, &[])
    }

    /// [`Host::start_at`] with `extra` flags for the agent.
    #[allow(clippy::too_many_arguments)]
    pub fn start_with(
        sp: &Slowpath,
        urls: &[&str],
        name: &str,
        key: &str,
        port: u16,
        token: &str,
        fastpath: bool,
        extra: &[&str],
    ) -> Host {
        let dir = sp.dir.with_file_name(format!(
            "{}-{name}",
            sp.dir.file_name().unwrap().to_string_lossy()
        ));
        let shm = dir.join("shm");
        std::fs::create_dir_all(&dir).unwrap();
        let key_file = dir.join("node.key");
        std::fs::write(&key_file, key).unwrap();
        let mut args = vec!["agent"];
        for url in urls {
            args.extend_from_slice(&["--control", url]);
        }
        let (key_file, shm_text) = (key_file.to_str().unwrap(), shm.to_str().unwrap());
        let stats = dir.join("stats.json");
        let stats_text = stats.to_str().unwrap().to_owned();
        let spool = dir.join("spool");
        let spool_text = spool.to_str().unwrap().to_owned();
        args.extend_from_slice(&[
            "--spool-dir",
            &spool_text,
            "--node-key-file",
            key_file,
            "--shm-dir",
            shm_text,
            "--wait-secs",
            "5",
            "--stats-file",
            &stats_text,
            "--heartbeat-secs",
            "1",
        ]);
        args.extend_from_slice(extra);
        let agent = Daemon::spawn_logging(Path::new(BIN), &args, "info").expect("start the agent");
        let agent_args = args.iter().map(|a| a.to_string()).collect();
        let frp = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let mut host = Host {
            agent_args,
            spool,
            dir,
            shm,
            agent,
            fastpath: None,
            frp,
        };
        if fastpath {
            wait_within(Duration::from_secs(10), "the agent's first table", || {
                host.shm.join(shm::TABLE_FILE).exists()
            });
            let cfg = host.dir.join("fastpath.toml");
            std::fs::write(
                &cfg,
                format!(
                    "bindAddr = \"127.0.0.1\"\nbindPort = {port}\nauth.token = \"{token}\"\n\
                     fastpath.workers = 1\nfastpath.policyDir = \"{}\"\n",
                    host.shm.display()
                ),
            )
            .unwrap();
            let fp = Daemon::spawn_logging(
                Path::new(BIN),
                &[
                    "fastpath",
                    "-c",
                    cfg.to_str().unwrap(),
                    "--stats-file",
                    &stats_text,
                ],
                "info",
            )
            .expect("start the fastpath");
            assert!(
                wait_listening(frp, Duration::from_secs(10)),
                "fastpath did not start: {:?}",
                fp.log()
            );
            host.fastpath = Some(fp);
        }
        host
    }

    /// Kills the agent (SIGKILL, as a crash) and starts it again with the
    /// same flags.
    pub fn restart_agent(&mut self) {
        self.agent.signal(9);
        self.agent.wait_exit(Duration::from_secs(5));
        let args: Vec<&str> = self.agent_args.iter().map(String::as_str).collect();
        self.agent =
            Daemon::spawn_logging(Path::new(BIN), &args, "info").expect("restart the agent");
    }

    pub fn agent_log(&self) -> String {
        self.agent.log().join("\n")
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.fastpath.take();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Client options for a resolved invite of the remote node at `frp`.
pub fn opts(frp: std::net::SocketAddr, resolved: &Value) -> bench::client::ClientOpts {
    let cfg: toml::Table = toml::from_str(resolved["frpc_toml"].as_str().unwrap()).unwrap();
    let mut o = bench::client::ClientOpts::new(frp, cfg["auth"]["token"].as_str().unwrap());
    o.metas.insert(
        "ticket".into(),
        cfg["metadatas"]["ticket"].as_str().unwrap().into(),
    );
    o
}

/// An invite on `node` through `sp`'s admin API, resolved: (id, options).
pub fn invite(
    sp: &Slowpath,
    node: &str,
    frp: std::net::SocketAddr,
) -> (String, bench::client::ClientOpts) {
    let (st, inv) = sp.admin_call(
        "POST",
        &format!("/api/v1/admin/nodes/{node}/invites"),
        Some(json!({ "max_uses": 1, "ttl_s": 600, "scope": { "proxy_types": ["tcp"] } })),
    );
    assert_eq!(st, 201, "{inv}");
    let (st, resolved) = sp.resolve(inv["code"].as_str().unwrap());
    assert_eq!(st, 200, "{resolved}");
    (inv["id"].as_str().unwrap().to_owned(), opts(frp, &resolved))
}

pub fn revoke(sp: &Slowpath, id: &str) {
    let (st, v) = sp.admin_call("POST", &format!("/api/v1/admin/invites/{id}/revoke"), None);
    assert_eq!(st, 200, "{v}");
}

/// How long `client`'s session took to end from `t0`; panics with `what`
/// and the agent's log after `limit`.
pub fn ended_within(
    client: &bench::client::Client,
    t0: std::time::Instant,
    limit: Duration,
    what: &str,
    host: &Host,
) -> Duration {
    while !client.is_closed() {
        assert!(
            t0.elapsed() < limit,
            "{what}: the session was alive {limit:?} after the change\n{}",
            host.agent_log()
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    t0.elapsed()
}
