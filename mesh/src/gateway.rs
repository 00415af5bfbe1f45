//! Gateway mode: this node forwards packets between the mesh and the
//! networks of its host. IPv4 forwarding is switched on (in the node's
//! network namespace) and nftables masquerades what comes from the mesh
//! subnet and leaves by another interface, so that hosts behind the
//! gateway answer to the gateway and need no route to the mesh.

use std::io::Write;
use std::process::{Command, Stdio};

/// The nftables table this node owns (replaced whole at each start).
pub const TABLE: &str = "totoro_mesh";

/// Switch forwarding on and install the masquerade for `subnet`.
pub fn enable(tun: &str, subnet: &str) -> Result<(), String> {
    std::fs::write("/proc/sys/net/ipv4/ip_forward", b"1")
        .map_err(|e| format!("gateway: cannot switch IPv4 forwarding on: {e}"))?;
    // Deleting a table that is not there fails; that is fine.
    let _ = Command::new("nft")
        .args(["delete", "table", "ip", TABLE])
        .stderr(Stdio::null())
        .status();
    let script = format!(
        "table ip {TABLE} {{\n  chain post {{\n    type nat hook postrouting priority srcnat; policy accept;\n    \
         ip saddr {subnet} oifname != \"{tun}\" masquerade\n  }}\n}}\n"
    );
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("gateway: nft (nftables) is needed for SNAT: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| format!("gateway: nft: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("gateway: nft: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "gateway: nft refused the masquerade: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}
