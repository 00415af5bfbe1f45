//! The TOML files the slowpath writes for frp programs: the frpc.toml a
//! resolve hands back (everything a stock frpc needs to log in with its
//! ticket, plus one example proxy to edit) and the frps-style
//! `fastpath.toml` that `slowpath up` runs its fastpath with.
//!
//! Both are serde structs written by the `toml` serializer, never by format
//! strings (`fastpath.toml` is a [`proto::config::Config`], the very type
//! the fastpath parses it into): tokens, tickets, addresses and paths come
//! from the API and the command line and must reach the file as the same
//! strings (a token with a control character, written with Rust's debug
//! escaping, once made `fastpath.toml` unreadable and the fastpath exit in
//! a restart loop).
//! Comments are the only hand-written text, and [`comment`] keeps each on
//! its line.
//!
//! Ticket carriage uses frpc settings only: `auth.token` is the node's frp
//! token (on invite nodes it is not the secret) and `metadatas.ticket` is
//! sent by frpc in Login's `metas["ticket"]`.

use proto::config::Config;
use proto::policy::{PortSet, ProxyTypes};
use serde::Serialize;

/// What goes into an invitee's frpc.toml.
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
    /// The invite's own subdomain: its label and where it is reached (the
    /// URL, or the domain when the node has no HTTP port).
    pub subdomain: Option<(&'a str, &'a str)>,
}

/// What goes into the fastpath config `slowpath up` writes for its node.
#[derive(Debug)]
pub struct FastpathFile<'a> {
    /// The node it serves (a comment).
    pub node_id: &'a str,
    /// frp bind port (`bindPort`).
    pub bind_port: u16,
    /// The node's frp token (`auth.token`).
    pub token: &'a str,
    /// The node's port pool (`allowPorts`).
    pub allow_ports: &'a PortSet,
    /// The slowpath's shared-memory directory (`fastpath.policyDir`).
    pub policy_dir: &'a str,
    /// `vhostHTTPPort` (0 = none).
    pub vhost_http_port: u16,
    /// `vhostHTTPSPort` (0 = none).
    pub vhost_https_port: u16,
    /// `subDomainHost` ("" = none).
    pub sub_domain_host: &'a str,
    /// `fastpath.meshRelayPort` (0 = none).
    pub mesh_relay_port: u16,
}

#[derive(Serialize)]
struct Auth<'a> {
    token: &'a str,
}

#[derive(Serialize)]
struct Metadatas<'a> {
    ticket: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct FrpcLogin<'a> {
    server_addr: &'a str,
    server_port: u16,
    auth: Auth<'a>,
    metadatas: Metadatas<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct FrpcProxy<'a> {
    name: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(rename = "localIP")]
    local_ip: &'a str,
    local_port: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    remote_port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    subdomain: Option<&'a str>,
}

#[derive(Serialize)]
struct FrpcProxies<'a> {
    proxies: Vec<FrpcProxy<'a>>,
}

/// Appends `# text` as one comment line: control characters (a newline
/// would end the comment and start TOML) become spaces.
pub fn comment(out: &mut String, text: &str) {
    out.push_str("# ");
    out.extend(text.chars().map(|c| if c.is_control() { ' ' } else { c }));
    out.push('\n');
}

/// Renders an invitee's frpc.toml.
pub fn render(c: &FrpcConfig<'_>) -> Result<String, toml::ser::Error> {
    let mut out = String::with_capacity(1024);
    comment(
        &mut out,
        &format!(
            "frpc.toml for a Totoro invite. The ticket expires at {};",
            c.ticket_expires
        ),
    );
    comment(&mut out, "resolve the invite again for a fresh one.");
    out.push_str(&toml::to_string(&FrpcLogin {
        server_addr: c.server_addr,
        server_port: c.server_port,
        auth: Auth { token: c.token },
        metadatas: Metadatas { ticket: c.ticket },
    })?);
    out.push('\n');
    comment(
        &mut out,
        &format!(
            "Allowed: types {}; remote ports {}.",
            c.proxy_types, c.port_pool
        ),
    );
    if c.proxy_types.allows("tcp") {
        comment(
            &mut out,
            "localPort: change to the local service you want to share.",
        );
        out.push_str(&toml::to_string(&FrpcProxies {
            proxies: vec![FrpcProxy {
                name: "example-tcp",
                kind: "tcp",
                local_ip: "127.0.0.1",
                local_port: 22,
                remote_port: Some(c.port_pool.ranges().first().map(|r| r.0).unwrap_or(0)),
                subdomain: None,
            }],
        })?);
    }
    if let Some((label, at)) = c.subdomain {
        out.push('\n');
        let kind = if c.proxy_types.allows("http") {
            "http"
        } else {
            "https"
        };
        comment(
            &mut out,
            &format!("This invite's own subdomain: example-{kind} is reached at {at}"),
        );
        out.push_str(&toml::to_string(&FrpcProxies {
            proxies: vec![FrpcProxy {
                name: if kind == "http" {
                    "example-http"
                } else {
                    "example-https"
                },
                kind,
                local_ip: "127.0.0.1",
                local_port: if kind == "http" { 80 } else { 443 },
                remote_port: None,
                subdomain: Some(label),
            }],
        })?);
    }
    Ok(out)
}

impl FastpathFile<'_> {
    /// The config the fastpath is to run with: these keys, every other one
    /// at its default.
    pub fn config(&self) -> Config {
        let mut c = Config {
            bind_port: self.bind_port,
            allow_ports: self.allow_ports.entries(),
            vhost_http_port: self.vhost_http_port,
            vhost_https_port: self.vhost_https_port,
            sub_domain_host: self.sub_domain_host.to_owned(),
            ..Config::default()
        };
        c.auth.token = self.token.to_owned();
        c.fastpath.policy_dir = self.policy_dir.to_owned();
        c.fastpath.mesh_relay_port = self.mesh_relay_port;
        c
    }
}

/// Renders the fastpath config `slowpath up` writes for its node: the
/// [`Config`] serialized, so the fastpath reads back exactly that config.
pub fn render_fastpath(f: &FastpathFile<'_>) -> Result<String, toml::ser::Error> {
    let mut out = String::with_capacity(1024);
    comment(
        &mut out,
        &format!(
            "Written by `slowpath up` for node {}; it is rewritten at every start.",
            f.node_id
        ),
    );
    comment(
        &mut out,
        "Pass --fastpath-config to run with your own file instead.",
    );
    out.push_str(&f.config().to_toml()?);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Strings a format string gets wrong: quotes of both kinds,
    /// backslashes, newlines and other control characters, TOML syntax,
    /// non-ASCII (a combining accent is `\u{301}` in Rust's debug output,
    /// which TOML cannot read), and the empty string.
    const HOSTILE: &[&str] = &[
        "plain",
        "",
        "tok\"en",
        "it's",
        "'''",
        "\"\"\"",
        "back\\slash\\",
        "line\nbreak\r\n",
        "tab\there",
        "nul\u{0}bell\u{7}esc\u{1b}del\u{7f}c1\u{85}",
        "ab\u{1}cd",
        "e\u{301} \u{2603} 日本 \u{1f600}",
        "\u{feff}bom\u{200b}zwsp\u{2028}ls",
        "]]\n[[proxies]]\nname = \"evil\"",
        "# not a comment",
        "x = 1\n[fastpath]\npolicyDir = \"/tmp/evil\"",
        "{{ .Envs.HOME }}",
        "${HOME}",
    ];

    fn frpc(token: &str, ticket: &str, addr: &str) -> toml::Table {
        let pool = PortSet::parse("2000-3000,4000").unwrap();
        let text = render(&FrpcConfig {
            server_addr: addr,
            server_port: 7000,
            token,
            ticket,
            ticket_expires: "2030-01-01T00:00:00.000Z",
            port_pool: &pool,
            proxy_types: ProxyTypes::parse("tcp,udp").unwrap(),
            subdomain: None,
        })
        .unwrap();
        toml::from_str(&text).unwrap_or_else(|e| panic!("not TOML ({e}):\n{text}"))
    }

    #[test]
    fn frpc_toml_has_what_frpc_needs() {
        let cfg = frpc("tok\"en", "a.b.c", "relay.example");
        assert_eq!(cfg["serverAddr"].as_str(), Some("relay.example"));
        assert_eq!(cfg["serverPort"].as_integer(), Some(7000));
        assert_eq!(cfg["auth"]["token"].as_str(), Some("tok\"en"));
        assert_eq!(cfg["metadatas"]["ticket"].as_str(), Some("a.b.c"));
        let proxies = cfg["proxies"].as_array().unwrap();
        assert_eq!(proxies.len(), 1);
        assert_eq!(proxies[0]["type"].as_str(), Some("tcp"));
        assert_eq!(proxies[0]["localIP"].as_str(), Some("127.0.0.1"));
        assert_eq!(proxies[0]["remotePort"].as_integer(), Some(2000));
    }

    #[test]
    fn an_assigned_subdomain_gets_an_http_proxy() {
        let pool = PortSet::parse("2000").unwrap();
        let text = render(&FrpcConfig {
            server_addr: "relay.example",
            server_port: 7000,
            token: "t",
            ticket: "a.b.c",
            ticket_expires: "2030-01-01T00:00:00.000Z",
            port_pool: &pool,
            proxy_types: ProxyTypes::parse("tcp,http").unwrap(),
            subdomain: Some(("k3x9q2ab", "http://k3x9q2ab.node.example:8080/")),
        })
        .unwrap();
        assert!(
            text.contains("# This invite's own subdomain: example-http is reached at http://k3x9q2ab.node.example:8080/\n"),
            "{text}"
        );
        let cfg: toml::Table = toml::from_str(&text).unwrap();
        let proxies = cfg["proxies"].as_array().unwrap();
        assert_eq!(proxies.len(), 2);
        assert_eq!(proxies[1]["type"].as_str(), Some("http"));
        assert_eq!(proxies[1]["subdomain"].as_str(), Some("k3x9q2ab"));
        assert_eq!(proxies[1]["localPort"].as_integer(), Some(80));
        assert!(proxies[1].get("remotePort").is_none());
    }

    #[test]
    fn hostile_strings_round_trip_through_frpc_toml() {
        for s in HOSTILE {
            let cfg = frpc(s, s, s);
            assert_eq!(cfg["serverAddr"].as_str(), Some(*s), "{s:?}");
            assert_eq!(cfg["auth"]["token"].as_str(), Some(*s), "{s:?}");
            assert_eq!(cfg["metadatas"]["ticket"].as_str(), Some(*s), "{s:?}");
            // Nothing injected: the same keys and the one example proxy.
            let mut keys: Vec<&str> = cfg.keys().map(String::as_str).collect();
            keys.sort_unstable();
            assert_eq!(
                keys,
                ["auth", "metadatas", "proxies", "serverAddr", "serverPort"],
                "{s:?}"
            );
            assert_eq!(cfg["proxies"].as_array().map(Vec::len), Some(1), "{s:?}");
        }
    }

    fn fastpath_file<'a>(token: &'a str, dir: &'a str, pool: &'a PortSet) -> FastpathFile<'a> {
        FastpathFile {
            node_id: "node_0123\nbindPort = 1",
            bind_port: 7001,
            token,
            allow_ports: pool,
            policy_dir: dir,
            vhost_http_port: 8080,
            vhost_https_port: 0,
            sub_domain_host: "node.example.com",
            mesh_relay_port: 8444,
        }
    }

    fn fastpath(token: &str, dir: &str, pool: &str) -> String {
        let pool = PortSet::parse(pool).unwrap();
        render_fastpath(&fastpath_file(token, dir, &pool)).unwrap()
    }

    #[test]
    fn hostile_strings_round_trip_through_fastpath_toml() {
        let pool = PortSet::parse("2000-3000,4000").unwrap();
        for s in HOSTILE {
            let dir = format!("/dev/shm/totoro-{s}");
            let file = fastpath_file(s, &dir, &pool);
            let text = render_fastpath(&file).unwrap();
            // The fastpath's own parser reads back the very config written:
            // nothing injected (no unknown key, no other value), nothing lost.
            let (fp, unknown) = Config::from_toml(&text)
                .unwrap_or_else(|e| panic!("the fastpath refuses it ({e}):\n{text}"));
            assert!(unknown.is_empty(), "{unknown:?}");
            assert_eq!(fp, file.config(), "{s:?}");
            assert_eq!(fp.auth.token, *s);
            assert_eq!(fp.fastpath.policy_dir, dir);
            assert_eq!(fp.bind_port, 7001);
            let ports: Vec<(u16, u16)> = fp.allow_ports.iter().map(|r| r.bounds()).collect();
            assert_eq!(ports, [(2000, 3000), (4000, 4000)]);
        }
    }

    #[test]
    fn comments_stay_on_their_line() {
        let mut out = String::new();
        comment(&mut out, "a\nb = 1\r\n[c]");
        assert_eq!(out, "# a b = 1  [c]\n");
        let text = fastpath("t", "/d", "5000");
        assert!(text.starts_with("# Written by `slowpath up` for node node_0123 bindPort = 1;"));
        let cfg: toml::Table = toml::from_str(&text).unwrap();
        assert_eq!(cfg["bindPort"].as_integer(), Some(7001));
    }
}
