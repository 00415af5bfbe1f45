//! The frpc.toml a resolve hands back: everything a stock frpc needs to log
//! in with its ticket, plus one example proxy to edit.
//!
//! Ticket carriage uses frpc settings only: `auth.token` is the node's frp
//! token (on invite nodes it is not the secret) and `metadatas.ticket` is
//! sent by frpc in Login's `metas["ticket"]`.

use proto::policy::{PortSet, ProxyTypes};

/// What goes into the file.
#[derive(Debug)]
pub struct FrpcConfig<'a> {
    /// Node address.
    pub server_addr: &'a str,
    /// Node frp port.
    pub server_port: u16,
    /// Node frp token.
    pub token: &'a str,
    /// The ticket.
    pub ticket: &'a str,
    /// Ticket expiry, RFC 3339 (a comment).
    pub ticket_expires: &'a str,
    /// Ports the ticket allows.
    pub port_pool: &'a PortSet,
    /// Types the ticket allows.
    pub proxy_types: ProxyTypes,
}

/// TOML basic-string quoting.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Renders the frpc.toml.
pub fn render(c: &FrpcConfig<'_>) -> String {
    let mut out = String::with_capacity(1024);
    out.push_str("# frpc.toml for a Totoro invite. The ticket expires at ");
    out.push_str(c.ticket_expires);
    out.push_str(";\n# resolve the invite again for a fresh one.\n");
    out.push_str(&format!("serverAddr = {}\n", quote(c.server_addr)));
    out.push_str(&format!("serverPort = {}\n", c.server_port));
    out.push_str(&format!("auth.token = {}\n", quote(c.token)));
    out.push_str(&format!("metadatas.ticket = {}\n", quote(c.ticket)));
    out.push_str(&format!(
        "\n# Allowed: types {}; remote ports {}.\n",
        c.proxy_types, c.port_pool
    ));
    if c.proxy_types.allows("tcp") {
        let port = c.port_pool.ranges().first().map(|r| r.0).unwrap_or(0);
        out.push_str("[[proxies]]\nname = \"example-tcp\"\ntype = \"tcp\"\n");
        out.push_str("localIP = \"127.0.0.1\"\n");
        out.push_str("localPort = 22 # change to the local service you want to share\n");
        out.push_str(&format!("remotePort = {port}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_lines_frpc_needs() {
        let pool = PortSet::parse("2000-3000").unwrap();
        let text = render(&FrpcConfig {
            server_addr: "relay.example",
            server_port: 7000,
            token: "tok\"en",
            ticket: "a.b.c",
            ticket_expires: "2030-01-01T00:00:00.000Z",
            port_pool: &pool,
            proxy_types: ProxyTypes::parse("tcp,udp").unwrap(),
        });
        assert!(text.contains("serverAddr = \"relay.example\"\n"));
        assert!(text.contains("serverPort = 7000\n"));
        assert!(text.contains("auth.token = \"tok\\\"en\"\n"));
        assert!(text.contains("metadatas.ticket = \"a.b.c\"\n"));
        assert!(text.contains("remotePort = 2000\n"));
    }
}
