//! What `up` adds to `serve`: the fastpath child (its config written from
//! the node unless one is given) and a demo invite whose frpc.toml is
//! printed and saved, so one command gives a working node.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context as _, Result};
use shm::InstanceDir;
use slowpath::domain::invites::{self, Invite, NewInvite};
use slowpath::domain::nodes::Node;
use slowpath::domain::tickets::TicketSigner;
use slowpath::frpc_config;
use slowpath::policy::publish::Publisher;
use slowpath::store::db::{self, Db};
use slowpath::store::{admin_key, private_files};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::node::fastpath_toml;
use super::supervisor::{self, Fastpath};
use crate::cli::{ServeArgs, UpArgs};

/// `meta` key of the demo invite's id.
const DEMO_INVITE_KEY: &str = "demo_invite_id";

/// What `up` starts and says, beyond `serve`.
pub struct Up<'a> {
    pub args: &'a ServeArgs,
    pub up: &'a UpArgs,
    pub data_dir: &'a Path,
    pub shm_dir: &'a Path,
    pub shm: &'a Arc<InstanceDir>,
    pub db: &'a Db,
    pub node: &'a Node,
    pub publisher: &'a Publisher,
    pub signer: &'a TicketSigner,
    /// The fastpath's mesh relay port (0 = none).
    pub mesh_relay_port: u16,
}

/// The demo invite and its frpc.toml, as printed.
struct Demo {
    id: String,
    /// The invite code, on the start that created it (shown once).
    code: Option<String>,
    limits: String,
    real_invite: String,
    frpc_toml: String,
    frpc_path: PathBuf,
    /// Where its own subdomain is reached, if it has one.
    reached_at: Option<String>,
}

impl Up<'_> {
    /// Writes the fastpath config if needed, makes the demo invite, starts
    /// the fastpath's supervisor (it stops the child when `stop` turns
    /// true) and prints where everything is.
    pub async fn start(&self, stop: watch::Receiver<bool>) -> Result<JoinHandle<()>> {
        let fp = self.fastpath()?;
        let demo = self.demo().await?;
        let config = fp.config.clone();
        let child = tokio::spawn(supervisor::run(
            Arc::new(fp),
            Some(self.db.clone()),
            self.node.id.clone(),
            stop,
        ));
        self.print(&config, &demo);
        Ok(child)
    }

    /// The fastpath to run: the config given, or one written from the node;
    /// the binary given, or this one's `fastpath` subcommand.
    fn fastpath(&self) -> Result<Fastpath> {
        let config = match &self.args.fastpath_config {
            Some(p) => p.clone(),
            None => {
                let p = self.data_dir.join("fastpath.toml");
                private_files::write(
                    &p,
                    fastpath_toml(self.node, self.shm_dir, self.mesh_relay_port)?.as_bytes(),
                )?;
                p
            }
        };
        let (bin, prefix) = match &self.up.fastpath_bin {
            Some(b) => (b.clone(), Vec::new()),
            None if !cfg!(feature = "embedded-fastpath") => bail!(
                "this slowpath is built without its own fastpath (feature \
                 `embedded-fastpath`): name one with --fastpath-bin"
            ),
            None => (
                std::env::current_exe().context("cannot find this executable")?,
                vec!["fastpath".to_string()],
            ),
        };
        if !bin.is_file() {
            bail!("--fastpath-bin {}: no such file", bin.display());
        }
        Ok(Fastpath {
            bin,
            prefix,
            config,
            shm: Arc::clone(self.shm),
        })
    }

    /// The demo invite, published, resolved into an frpc.toml that says its
    /// limits, saved as DATA_DIR/frpc-demo.toml.
    async fn demo(&self) -> Result<Demo> {
        let (demo, code) = ensure_demo_invite(self.db, self.node).await?;
        let id = demo.id.to_string();
        self.publisher.publish(false).await?;
        let mut resolved = invites::resolve_id(self.db, self.signer, &id, "slowpath up").await?;
        // The limits go into the file too: the file is what gets copied.
        let demo = invites::get(self.db, &id).await?;
        let limits = format!("Demo invite: {}.", demo.limits_line());
        let real_invite = format!(
            "For a real one: slowpath invite create (defaults {} days, {} use, \
             {} sessions, {} proxies; see --help).",
            invites::DEFAULT_TTL_S / 86_400,
            invites::DEFAULT_MAX_USES,
            invites::DEFAULT_MAX_CONNS,
            invites::DEFAULT_MAX_PROXIES,
        );
        let mut header = String::new();
        frpc_config::comment(&mut header, &limits);
        frpc_config::comment(&mut header, &real_invite);
        resolved.frpc_toml.insert_str(0, &header);
        let frpc_path = self.data_dir.join("frpc-demo.toml");
        private_files::write(&frpc_path, resolved.frpc_toml.as_bytes())?;
        Ok(Demo {
            reached_at: resolved.url.or(resolved.domain),
            id,
            code,
            limits,
            real_invite,
            frpc_toml: resolved.frpc_toml,
            frpc_path,
        })
    }

    fn print(&self, config: &Path, demo: &Demo) {
        let node = self.node;
        println!("Totoro is up.");
        println!(
            "  API        http://{}  (admin key: {})",
            self.args.listen,
            admin_key::path(self.data_dir).display()
        );
        println!(
            "  node       {} at {}:{} (ports {}; private)",
            node.id, node.server_addr, node.server_port, node.port_pool
        );
        println!(
            "  fastpath   {} -c {}",
            self.up
                .fastpath_bin
                .as_deref()
                .unwrap_or(Path::new("slowpath fastpath"))
                .display(),
            config.display()
        );
        if node.vhost_http_port != 0 || node.vhost_https_port != 0 {
            println!(
                "  vhosts     http :{} https :{} (0 = off); subDomainHost {:?}",
                node.vhost_http_port, node.vhost_https_port, node.sub_domain_host
            );
        }
        if self.mesh_relay_port != 0 {
            println!(
                "  mesh relay ws://{}:{}/ws/data (seed 003; networks: slowpath mesh network list)",
                node.server_addr, self.mesh_relay_port
            );
        }
        println!("  policy     {}", self.shm_dir.display());
        if let Some(code) = &demo.code {
            println!("  demo invite code (shown once): {code}");
        }
        println!(
            "  demo invite {}; frpc.toml below is also in {}",
            demo.id,
            demo.frpc_path.display()
        );
        println!("  {} {}", demo.limits, demo.real_invite);
        if let Some(at) = &demo.reached_at {
            println!("  demo subdomain: its http proxy is reached at {at}");
        }
        println!(
            "----- frpc.toml -----\n{}---------------------",
            demo.frpc_toml
        );
    }
}

/// A usable demo invite on the local node (reused across starts while it
/// stays within the demo limits; one made with wider limits, as older
/// versions did, is revoked and replaced).
async fn ensure_demo_invite(db: &Db, node: &Node) -> Result<(Invite, Option<String>)> {
    if let Some(id) = db::meta_get(db, DEMO_INVITE_KEY).await? {
        if let Ok(inv) = invites::get(db, &id).await {
            let usable =
                inv.node_id == node.id && inv.unusable_reason(slowpath::clock::now_ms()).is_none();
            if usable && inv.within_demo_limits(node) {
                return Ok((inv, None));
            }
            if usable {
                invites::revoke(
                    db,
                    &id,
                    None,
                    "slowpath up (not a demo invite for this node)",
                )
                .await?;
                println!(
                    "Revoked the old demo invite {id}: it was wider than a demo invite, \
                     or the node's vhost settings changed."
                );
            }
        }
    }
    let (inv, code) = invites::create(db, node, NewInvite::demo(node)).await?;
    db::meta_set(db, DEMO_INVITE_KEY, &inv.id.to_string()).await?;
    Ok((inv, Some(code)))
}
