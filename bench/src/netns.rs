//! Network namespaces for mesh tests and benches: a few "machines", each a
//! namespace joined to the root namespace by a veth pair, optionally a LAN
//! (a bridge in a namespace of its own) behind some of them. Needs root
//! and iproute2; everything made is removed on drop, with the processes
//! started in it.

use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

/// Why this machine cannot run namespace tests, if it cannot.
pub fn missing() -> Option<String> {
    // SAFETY: geteuid(2) has no arguments and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root".into());
    }
    if !Path::new("/dev/net/tun").exists() {
        return Some("no /dev/net/tun".into());
    }
    match Command::new("ip").arg("-V").output() {
        Ok(o) if o.status.success() => None,
        _ => Some("no iproute2 `ip`".into()),
    }
}

/// Run a command; panic with its error output when it fails.
pub fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Namespaces `<tag><name>`, each joined to the root namespace by a veth
/// pair: root side `<tag><name>` `10.<net>.<i>.1/24`, namespace side
/// `<tag><name>p` `10.<net>.<i>.2/24` with the root side as its default
/// route (i counts from 1 in the order given).
pub struct Lab {
    /// Prefix of every name made.
    pub tag: String,
    names: Vec<String>,
    children: Vec<(String, Child)>,
}

impl Lab {
    /// Labs side by side take their own `letter` and `net`.
    pub fn new(letter: char, net: u8, names: &[&str]) -> Lab {
        let tag = format!("tm{}{letter}", std::process::id() % 100_000);
        let mut all: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        all.push("lan".into());
        let lab = Lab {
            tag: tag.clone(),
            names: all,
            children: Vec::new(),
        };
        lab.cleanup();
        for (i, n) in names.iter().enumerate() {
            let (ns, link, peer) = (lab.ns(n), format!("{tag}{n}"), format!("{tag}{n}p"));
            let i = i + 1;
            sh(&["ip", "netns", "add", &ns]);
            sh(&[
                "ip", "link", "add", &link, "type", "veth", "peer", "name", &peer,
            ]);
            sh(&["ip", "link", "set", &peer, "netns", &ns]);
            sh(&[
                "ip",
                "addr",
                "add",
                &format!("10.{net}.{i}.1/24"),
                "dev",
                &link,
            ]);
            sh(&["ip", "link", "set", &link, "up"]);
            lab.inside(
                n,
                &[
                    "ip",
                    "addr",
                    "add",
                    &format!("10.{net}.{i}.2/24"),
                    "dev",
                    &peer,
                ],
            );
            lab.inside(n, &["ip", "link", "set", &peer, "up"]);
            lab.inside(n, &["ip", "link", "set", "lo", "up"]);
            lab.inside(
                n,
                &[
                    "ip",
                    "route",
                    "add",
                    "default",
                    "via",
                    &format!("10.{net}.{i}.1"),
                ],
            );
        }
        lab
    }

    /// The namespace of machine `n`.
    pub fn ns(&self, n: &str) -> String {
        format!("{}{n}", self.tag)
    }

    /// Run a command inside machine `n`; panic when it fails.
    pub fn inside(&self, n: &str, args: &[&str]) {
        let ns = self.ns(n);
        let mut v = vec!["ip", "netns", "exec", ns.as_str()];
        v.extend_from_slice(args);
        sh(&v);
    }

    /// Run `bin args` inside machine `n` and wait for it.
    pub fn exec(&self, n: &str, bin: &Path, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.ns(n)])
            .arg(bin)
            .args(args)
            .output()
            .unwrap()
    }

    /// Start `bin args` inside machine `n`, stderr to `log`; stopped on
    /// drop or by [`Lab::kill`].
    pub fn spawn(&mut self, n: &str, bin: &Path, args: &[&str], log: std::fs::File) {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns(n)])
            .arg(bin)
            .args(args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.children.push((n.to_owned(), child));
    }

    /// Kill what was started in machine `n`.
    pub fn kill(&mut self, n: &str) {
        for (name, c) in &mut self.children {
            if name == n {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }

    /// A LAN 192.168.77.0/24 behind `gateways`: namespace `<tag>lan` holds
    /// a bridge with the host 192.168.77.10; gateway i gets `192.168.77.<i>`
    /// on a veth into it.
    pub fn lan(&self, gateways: &[&str]) {
        let lan = self.ns("lan");
        sh(&["ip", "netns", "add", &lan]);
        self.inside("lan", &["ip", "link", "set", "lo", "up"]);
        self.inside("lan", &["ip", "link", "add", "br0", "type", "bridge"]);
        self.inside(
            "lan",
            &["ip", "addr", "add", "192.168.77.10/24", "dev", "br0"],
        );
        self.inside("lan", &["ip", "link", "set", "br0", "up"]);
        for (i, g) in gateways.iter().enumerate() {
            let (end, port) = (format!("{}{g}l", self.tag), format!("{}{g}b", self.tag));
            sh(&[
                "ip", "link", "add", &end, "type", "veth", "peer", "name", &port,
            ]);
            sh(&["ip", "link", "set", &end, "netns", &self.ns(g)]);
            sh(&["ip", "link", "set", &port, "netns", &lan]);
            self.inside("lan", &["ip", "link", "set", &port, "master", "br0"]);
            self.inside("lan", &["ip", "link", "set", &port, "up"]);
            let addr = format!("192.168.77.{}/24", i + 1);
            self.inside(g, &["ip", "addr", "add", &addr, "dev", &end]);
            self.inside(g, &["ip", "link", "set", &end, "up"]);
        }
    }

    fn cleanup(&self) {
        for n in &self.names {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(n)])
                .output();
            let _ = Command::new("ip")
                .args(["link", "del", &format!("{}{n}", self.tag)])
                .output();
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for (_, c) in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.cleanup();
    }
}

/// Run `f` on a thread inside namespace `ns`.
pub fn in_ns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap();
        // SAFETY: setns(2) with a namespace file we hold open; it moves
        // this thread only.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
}

/// The pid of a process whose command line contains `needle` (the first
/// found), e.g. a state directory only it was given.
pub fn pid_with(needle: &str) -> Option<u32> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        // Not `ip netns exec …` itself, which names the same arguments.
        if cmd.contains(needle) && !cmd.starts_with("ip ") {
            return Some(pid);
        }
    }
    None
}
