//! Real DNS servers for the edge tests: `pebble-challtestsrv` (Debian's
//! `pebble` package), a mock-able resolver whose TXT records are set over
//! its management API, and Debian's `knotd`, an authoritative server that
//! takes RFC 2136 updates signed with TSIG.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bench::proc::free_port;

/// `name` on PATH (or /usr/sbin).
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Missing `tools` are a failure under CI (`.ci/edge.sh` installs them)
/// and a SKIPPED line elsewhere: true when the test can run.
pub fn have(tools: &[&str]) -> bool {
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| which(t).is_none())
        .collect();
    if missing.is_empty() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{missing:?} not installed (.ci/edge.sh installs them)"
    );
    println!("SKIPPED: {missing:?} not installed");
    false
}

/// A running `pebble-challtestsrv`: every A query answers 127.0.0.1, TXT
/// records are what [`ChallTestSrv::set_txt`] put there.
pub struct ChallTestSrv {
    child: Child,
    /// Its DNS port (UDP and TCP, 127.0.0.1).
    pub dns: u16,
    management: u16,
}

impl ChallTestSrv {
    /// Start one, logging under `dir`.
    pub fn start(dir: &Path) -> ChallTestSrv {
        let (dns, management) = (free_port(), free_port());
        let log = |name: &str| std::fs::File::create(dir.join(name)).unwrap();
        let child = Command::new("pebble-challtestsrv")
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .args(["-dns01", &format!("127.0.0.1:{dns}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-management", &format!("127.0.0.1:{management}")])
            .stdout(Stdio::from(log("challtestsrv.log")))
            .stderr(Stdio::from(log("challtestsrv.err")))
            .spawn()
            .expect("pebble-challtestsrv");
        let s = ChallTestSrv {
            child,
            dns,
            management,
        };
        super::wait_within(Duration::from_secs(20), "challtestsrv listening", || {
            TcpStream::connect(("127.0.0.1", management)).is_ok()
        });
        s
    }

    /// Publish a TXT record.
    pub fn set_txt(&self, host: &str, value: &str) {
        let body = serde_json::json!({ "host": format!("{host}."), "value": value });
        ureq::post(&format!("http://127.0.0.1:{}/set-txt", self.management))
            .send_string(&body.to_string())
            .expect("challtestsrv set-txt");
    }
}

impl Drop for ChallTestSrv {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running `knotd` serving one zone that takes updates signed with one
/// TSIG key.
pub struct Knot {
    child: Child,
    /// Its port (UDP and TCP, 127.0.0.1).
    pub port: u16,
    /// The key in nsupdate's `-y` form.
    pub key: String,
    dir: PathBuf,
}

impl Knot {
    /// Serve `zone` (SOA and NS only) from `dir`.
    pub fn start(dir: &Path, zone: &str) -> Knot {
        std::fs::create_dir_all(dir.join("db")).unwrap();
        let port = free_port();
        let secret = "c2VjcmV0LWZvci10b3Rvcm8tdGVzdHMtMzItYnl0ZXMhIQ==";
        std::fs::write(
            dir.join(format!("{zone}.zone")),
            format!(
                "$ORIGIN {zone}.\n$TTL 300\n\
                 @ SOA ns.{zone}. admin.{zone}. 1 3600 900 604800 60\n\
                 @ NS ns.{zone}.\nns A 127.0.0.1\n"
            ),
        )
        .unwrap();
        let conf = format!(
            "server:\n    rundir: \"{d}\"\n    listen: 127.0.0.1@{port}\n\
             database:\n    storage: \"{d}/db\"\n\
             control:\n    listen: \"{d}/knot.sock\"\n\
             log:\n  - target: stderr\n    any: info\n\
             key:\n  - id: totoro-key\n    algorithm: hmac-sha256\n    secret: {secret}\n\
             acl:\n  - id: update\n    key: totoro-key\n    action: update\n\
             zone:\n  - domain: {zone}\n    storage: \"{d}\"\n    file: \"{zone}.zone\"\n    \
             acl: update\n    zonefile-sync: -1\n",
            d = dir.display()
        );
        std::fs::write(dir.join("knot.conf"), conf).unwrap();
        let log = |name: &str| std::fs::File::create(dir.join(name)).unwrap();
        let child = Command::new(which("knotd").expect("knotd"))
            .arg("-c")
            .arg(dir.join("knot.conf"))
            .stdout(Stdio::from(log("knot.log")))
            .stderr(Stdio::from(log("knot.err")))
            .spawn()
            .expect("knotd");
        let k = Knot {
            child,
            port,
            key: format!("hmac-sha256:totoro-key:{secret}"),
            dir: dir.to_owned(),
        };
        super::wait_within(Duration::from_secs(20), "knotd listening", || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        k
    }

    /// `kdig`'s short answer for `name`'s `rtype` records, sorted.
    pub fn query(&self, name: &str, rtype: &str) -> Vec<String> {
        let o = Command::new(which("kdig").expect("kdig"))
            .args(["@127.0.0.1", "-p", &self.port.to_string(), "+short", "+tcp"])
            .args([name, rtype])
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "kdig: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let mut v: Vec<String> = String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(|l| l.trim().to_owned())
            .filter(|l| !l.is_empty())
            .collect();
        v.sort();
        v
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("knot.err")).unwrap_or_default()
    }
}

impl Drop for Knot {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
