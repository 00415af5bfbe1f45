//! frp control messages: the JSON bodies, their v1 type bytes and v2 type ids.
//!
//! Each message is a plain struct whose fields appear in the order of the Go
//! struct in frp's `pkg/msg/msg.go`, because Go's `encoding/json` emits keys in
//! struct order and our own client must produce the very bytes frpc does.
//!
//! On input every field is optional and unknown keys are ignored, as in Go.
//! On output the rules of Go's `omitempty` apply: `""`, `0`, `false`, empty
//! maps and lists and absent pointers are left out, while nested structs
//! (`client_spec`, `detect_behavior`) are always written, `{}` when empty.
//! Maps are `BTreeMap`s because Go sorts map keys when it encodes them.
//!
//! [`Message::to_json`] writes exactly what Go's `json.Marshal` writes,
//! including its HTML-safe escaping of `<`, `>`, `&`, U+2028 and U+2029.
//!
//! Known differences on *input* (they never matter for bytes frpc sends):
//! Go matches keys case-insensitively and lets a repeated key win, accepts
//! `null` for any field and replaces invalid UTF-8; here keys are exact, a
//! repeated key, `null` for a non-optional field or invalid UTF-8 is an error.

use std::collections::BTreeMap;
use std::io;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// Why a message body could not be understood.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum MsgError {
    /// The v1 type byte names no frp message.
    #[error("unknown message type byte 0x{0:02x}")]
    UnknownType(u8),
    /// The v2 type id names no frp message.
    #[error("unknown v2 message type id {0}")]
    UnknownV2Type(u16),
    /// The body is not valid JSON for the message its type names.
    #[error("malformed {msg} message: {reason}")]
    Json {
        /// Go name of the message whose body failed, e.g. `"Login"`.
        msg: &'static str,
        /// What the JSON parser objected to.
        reason: String,
    },
}

/// Login body's `client_spec`: set only by frps-internal virtual clients.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClientSpec {
    /// Client kind; only `"ssh-tunnel"` exists.
    #[serde(rename = "type", skip_serializing_if = "String::is_empty")]
    pub kind: String,
    /// Skip authentication for this client (virtual clients only).
    #[serde(skip_serializing_if = "is_false")]
    pub always_auth_pass: bool,
}

/// `Login` (`'o'`): first message of a control connection, client to server.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Login {
    /// frpc version, e.g. `"0.70.1"`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub version: String,
    /// Client host name (frpc ≥ 0.67).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub hostname: String,
    /// Go `GOOS` of the client.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub os: String,
    /// Go `GOARCH` of the client.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub arch: String,
    /// Client `user`; proxy names arrive prefixed with `user.`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub user: String,
    /// Token auth: `hex(md5(token ‖ timestamp))`; OIDC: the access token.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub privilege_key: String,
    /// Unix seconds the privilege key was computed for.
    #[serde(skip_serializing_if = "is_zero_i64")]
    pub timestamp: i64,
    /// Previous run id on reconnect, empty on first login.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub run_id: String,
    /// Configured client id (frpc ≥ 0.67).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub client_id: String,
    /// Client `metadatas`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub metas: BTreeMap<String, String>,
    /// Always present on the wire, normally `{}`.
    pub client_spec: ClientSpec,
    /// Work connections the client wants pre-opened.
    #[serde(skip_serializing_if = "is_zero_i64")]
    pub pool_count: i64,
}

/// `LoginResp` (`'1'`): the server's answer to [`Login`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LoginResp {
    /// Server version.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub version: String,
    /// Run id assigned to this client session.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub run_id: String,
    /// Non-empty when the login was refused.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub error: String,
}

/// `NewProxy` (`'p'`): the client asks the server to run a proxy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NewProxy {
    /// Proxy name (already `user.`-prefixed when a user is set).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub proxy_name: String,
    /// `tcp`, `udp`, `http`, `https`, `tcpmux`, `stcp`, `sudp`, `xtcp`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub proxy_type: String,
    /// Work-connection payload wrapped in AES-CFB.
    #[serde(skip_serializing_if = "is_false")]
    pub use_encryption: bool,
    /// Work-connection payload wrapped in snappy.
    #[serde(skip_serializing_if = "is_false")]
    pub use_compression: bool,
    /// Bytes per second, `"<float>MB"` or `"<float>KB"`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub bandwidth_limit: String,
    /// `"server"`, or empty meaning the client enforces the limit.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub bandwidth_limit_mode: String,
    /// Load-balancing group name.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub group: String,
    /// Load-balancing group secret.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub group_key: String,
    /// Proxy `metadatas`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub metas: BTreeMap<String, String>,
    /// Proxy `annotations` (frpc ≥ 0.55).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// tcp/udp public port; 0 lets the server pick.
    #[serde(skip_serializing_if = "is_zero_i64")]
    pub remote_port: i64,
    /// http/https/tcpmux custom domains.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub custom_domains: Vec<String>,
    /// http/https/tcpmux subdomain of the server's `subDomainHost`.
    #[serde(rename = "subdomain", skip_serializing_if = "String::is_empty")]
    pub sub_domain: String,
    /// http URL path prefixes.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub locations: Vec<String>,
    /// http basic-auth user / tcpmux proxy-auth user.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub http_user: String,
    /// http basic-auth password / tcpmux proxy-auth password.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub http_pwd: String,
    /// http `Host` header rewrite.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub host_header_rewrite: String,
    /// http request headers to set.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// http response headers to set (frpc ≥ 0.58).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub response_headers: BTreeMap<String, String>,
    /// http/tcpmux routing by authenticated user.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub route_by_http_user: String,
    /// stcp/sudp/xtcp secret key.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub sk: String,
    /// stcp/sudp/xtcp visitor users allowed; `"*"` = any.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allow_users: Vec<String>,
    /// tcpmux multiplexer; only `"httpconnect"` exists.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub multiplexer: String,
}

/// `NewProxyResp` (`'2'`): the server's answer to [`NewProxy`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NewProxyResp {
    /// Name of the proxy this answers.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub proxy_name: String,
    /// Informational public address, e.g. `":16000"`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub remote_addr: String,
    /// Non-empty when the proxy was refused.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub error: String,
}

/// `CloseProxy` (`'c'`): the client stops a proxy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CloseProxy {
    /// Name of the proxy to stop.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub proxy_name: String,
}

/// `NewWorkConn` (`'w'`): first message of a work connection.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NewWorkConn {
    /// Run id from the client's [`LoginResp`].
    #[serde(skip_serializing_if = "String::is_empty")]
    pub run_id: String,
    /// Present only with the `NewWorkConns` auth scope.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub privilege_key: String,
    /// Present only with the `NewWorkConns` auth scope.
    #[serde(skip_serializing_if = "is_zero_i64")]
    pub timestamp: i64,
}

/// `ReqWorkConn` (`'r'`): the server asks for one more work connection.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReqWorkConn {}

/// `StartWorkConn` (`'s'`): the server hands a user connection to a work conn.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StartWorkConn {
    /// Proxy the user connection arrived on.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub proxy_name: String,
    /// User's IP as text.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub src_addr: String,
    /// Address the user connected to, as text.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub dst_addr: String,
    /// User's port.
    #[serde(skip_serializing_if = "is_zero_u16")]
    pub src_port: u16,
    /// Port the user connected to.
    #[serde(skip_serializing_if = "is_zero_u16")]
    pub dst_port: u16,
    /// Non-empty when the server could not start the connection.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub error: String,
}

/// `NewVisitorConn` (`'v'`): first message of a visitor connection.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NewVisitorConn {
    /// Visitor client's run id.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub run_id: String,
    /// Proxy the visitor wants to reach.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub proxy_name: String,
    /// `hex(md5(sk ‖ timestamp))`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub sign_key: String,
    /// Unix seconds the sign key was computed for.
    #[serde(skip_serializing_if = "is_zero_i64")]
    pub timestamp: i64,
    /// Payload wrapped in AES-CFB.
    #[serde(skip_serializing_if = "is_false")]
    pub use_encryption: bool,
    /// Payload wrapped in snappy.
    #[serde(skip_serializing_if = "is_false")]
    pub use_compression: bool,
}

/// `NewVisitorConnResp` (`'3'`): the server's answer to [`NewVisitorConn`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NewVisitorConnResp {
    /// Proxy this answers.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub proxy_name: String,
    /// Non-empty when the visitor was refused.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub error: String,
}

/// `Ping` (`'h'`): client heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Ping {
    /// Present only with the `HeartBeats` auth scope.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub privilege_key: String,
    /// Present only with the `HeartBeats` auth scope.
    #[serde(skip_serializing_if = "is_zero_i64")]
    pub timestamp: i64,
}

/// `Pong` (`'4'`): the server's answer to [`Ping`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Pong {
    /// Non-empty when the heartbeat was refused.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub error: String,
}

/// A Go `net.UDPAddr` as `encoding/json` writes it: `{"IP":..,"Port":..,"Zone":..}`.
///
/// Go has no tags on this struct, so all three keys are always written; a nil
/// IP is written as `""`. An IPv4-mapped IPv6 address is stored (and written)
/// as IPv4, as Go does.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct UdpAddr {
    /// The address; `None` is Go's nil IP.
    #[serde(rename = "IP", with = "go_ip")]
    pub ip: Option<IpAddr>,
    /// The port (Go `int`).
    #[serde(rename = "Port")]
    pub port: i64,
    /// IPv6 zone, usually empty.
    #[serde(rename = "Zone")]
    pub zone: String,
}

impl From<std::net::SocketAddr> for UdpAddr {
    fn from(addr: std::net::SocketAddr) -> Self {
        UdpAddr {
            ip: Some(addr.ip().to_canonical()),
            port: i64::from(addr.port()),
            zone: String::new(),
        }
    }
}

/// `UDPPacket` (`'u'`): one datagram on a udp/sudp work or visitor conn.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct UdpPacket {
    /// The datagram; standard padded base64 on the wire.
    #[serde(rename = "c", with = "go_bytes", skip_serializing_if = "Vec::is_empty")]
    pub content: Vec<u8>,
    /// Local address; frp leaves it nil.
    #[serde(rename = "l", skip_serializing_if = "Option::is_none")]
    pub local_addr: Option<UdpAddr>,
    /// The user's address.
    #[serde(rename = "r", skip_serializing_if = "Option::is_none")]
    pub remote_addr: Option<UdpAddr>,
}

impl UdpPacket {
    /// Writes the JSON body as Go's `json.Marshal` would, byte for byte the
    /// same as the serde path (`write_go_json`), without it: the content's
    /// base64 goes straight into `out`, and since the base64 alphabet needs
    /// no JSON escape, the scan for escapes is skipped. A udp proxy writes
    /// one of these per datagram.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        out.push(b'{');
        let mut first = true;
        if !self.content.is_empty() {
            out.extend_from_slice(b"\"c\":\"");
            go_bytes::encode_into(&self.content, out);
            out.push(b'"');
            first = false;
        }
        for (key, addr) in [
            (b"\"l\":", &self.local_addr),
            (b"\"r\":", &self.remote_addr),
        ] {
            if let Some(addr) = addr {
                if !first {
                    out.push(b',');
                }
                out.extend_from_slice(key);
                write_go_json(addr, out);
                first = false;
            }
        }
        out.push(b'}');
    }
}

/// `NatHoleVisitor` (`'i'`): an xtcp visitor asks the server to broker a hole punch.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NatHoleVisitor {
    /// Visitor's transaction id (decimal seconds + 16 hex).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub transaction_id: String,
    /// xtcp proxy to reach.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub proxy_name: String,
    /// Only check that the proxy exists.
    #[serde(skip_serializing_if = "is_false")]
    pub pre_check: bool,
    /// `quic` or `kcp`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub protocol: String,
    /// `hex(md5(sk ‖ timestamp))`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub sign_key: String,
    /// Unix seconds the sign key was computed for.
    #[serde(skip_serializing_if = "is_zero_i64")]
    pub timestamp: i64,
    /// STUN-mapped `ip:port` addresses.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mapped_addrs: Vec<String>,
    /// Local `ip:port` addresses.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub assisted_addrs: Vec<String>,
}

/// `NatHoleClient` (`'n'`): the xtcp proxy owner's half of a hole punch.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NatHoleClient {
    /// Owner's transaction id.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub transaction_id: String,
    /// xtcp proxy name.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub proxy_name: String,
    /// Session id from the server's [`NatHoleSid`].
    #[serde(skip_serializing_if = "String::is_empty")]
    pub sid: String,
    /// STUN-mapped `ip:port` addresses.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mapped_addrs: Vec<String>,
    /// Local `ip:port` addresses.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub assisted_addrs: Vec<String>,
}

/// An inclusive port range inside [`NatHoleDetectBehavior`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PortsRange {
    /// First port.
    #[serde(skip_serializing_if = "is_zero_i64")]
    pub from: i64,
    /// Last port.
    #[serde(skip_serializing_if = "is_zero_i64")]
    pub to: i64,
}

impl From<crate::policy::PortRange> for PortsRange {
    fn from(r: crate::policy::PortRange) -> PortsRange {
        let (from, to) = r.bounds();
        PortsRange {
            from: from.into(),
            to: to.into(),
        }
    }
}

impl TryFrom<&PortsRange> for crate::policy::PortRange {
    type Error = ();

    /// The range frp sent, if it is one (1 <= from <= to <= 65535).
    fn try_from(r: &PortsRange) -> Result<Self, ()> {
        let from = u16::try_from(r.from).map_err(|_| ())?;
        let to = u16::try_from(r.to).map_err(|_| ())?;
        crate::policy::PortRange::span(from, to).ok_or(())
    }
}

/// How a peer should punch, inside [`NatHoleResp`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NatHoleDetectBehavior {
    /// `sender` or `receiver`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub role: String,
    /// Punch mode 0, 1, 2…
    #[serde(skip_serializing_if = "is_zero_i64")]
    pub mode: i64,
    /// IP TTL for the punch packets.
    #[serde(skip_serializing_if = "is_zero_i64")]
    pub ttl: i64,
    /// Delay before sending, ms.
    #[serde(skip_serializing_if = "is_zero_i64")]
    pub send_delay_ms: i64,
    /// Read timeout in ms; the key is `read_timeout`, not `read_timeout_ms`.
    #[serde(rename = "read_timeout", skip_serializing_if = "is_zero_i64")]
    pub read_timeout_ms: i64,
    /// Port ranges to try.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub candidate_ports: Vec<PortsRange>,
    /// Random ports to send from.
    #[serde(skip_serializing_if = "is_zero_i64")]
    pub send_random_ports: i64,
    /// Random ports to listen on.
    #[serde(skip_serializing_if = "is_zero_i64")]
    pub listen_random_ports: i64,
}

/// `NatHoleResp` (`'m'`): the server's brokered hole-punch instructions.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NatHoleResp {
    /// Transaction id being answered.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub transaction_id: String,
    /// Session id.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub sid: String,
    /// `quic` or `kcp`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub protocol: String,
    /// The peer's `ip:port` candidates.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub candidate_addrs: Vec<String>,
    /// The peer's local `ip:port` addresses.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub assisted_addrs: Vec<String>,
    /// Always present on the wire.
    pub detect_behavior: NatHoleDetectBehavior,
    /// Non-empty when brokering failed.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub error: String,
}

/// `NatHoleSid` (`'5'`): session id handed to the xtcp owner, also peer to peer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NatHoleSid {
    /// Transaction id.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub transaction_id: String,
    /// Session id.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub sid: String,
    /// Set on the peer's reply.
    #[serde(skip_serializing_if = "is_false")]
    pub response: bool,
    /// Random nonce.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub nonce: String,
}

/// `NatHoleReport` (`'6'`): the client reports how a hole punch went.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NatHoleReport {
    /// Session id.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub sid: String,
    /// Whether the punch worked.
    #[serde(skip_serializing_if = "is_false")]
    pub success: bool,
}

/// Declares the message table once: enum variants, v1 type bytes, v2 type ids
/// and Go names all come from this list, so they cannot drift apart.
macro_rules! messages {
    ($( $variant:ident($ty:ident) = $byte:literal, $v2:literal, $name:literal, $konst:ident; )*) => {
        /// v1 type bytes, as frp's `pkg/msg/msg.go` registers them.
        pub mod type_byte {
            $(
                #[doc = concat!("Type byte of `", $name, "`.")]
                pub const $konst: u8 = $byte;
            )*
        }

        /// v2 message type ids (the u16 in front of a v2 Message frame's JSON).
        pub mod v2_type {
            $(
                #[doc = concat!("v2 type id of `", $name, "`.")]
                pub const $konst: u16 = $v2;
            )*
        }

        /// Any frp control message.
        // NewProxy is several times bigger than the rest; boxing it would
        // cost an allocation per message to save a few hundred bytes of move
        // on the control path, where messages are few and short-lived.
        #[allow(clippy::large_enum_variant)]
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub enum Message {
            $(
                #[doc = concat!("`", $name, "` (type byte `", stringify!($byte), "`).")]
                $variant($ty),
            )*
        }

        $(
            impl From<$ty> for Message {
                fn from(m: $ty) -> Self {
                    Message::$variant(m)
                }
            }
        )*

        impl Message {
            /// The v1 type byte of this message.
            pub fn type_byte(&self) -> u8 {
                match self { $( Message::$variant(_) => type_byte::$konst, )* }
            }

            /// The v2 type id of this message.
            pub fn v2_type_id(&self) -> u16 {
                match self { $( Message::$variant(_) => $v2, )* }
            }

            /// The Go struct name, e.g. `"Login"`, `"UDPPacket"`.
            pub fn name(&self) -> &'static str {
                match self { $( Message::$variant(_) => $name, )* }
            }

            /// Parses a JSON body for the message the v1 `type_byte` names.
            pub fn from_json(type_byte: u8, body: &[u8]) -> Result<Message, MsgError> {
                match type_byte {
                    $( type_byte::$konst => parse::<$ty>($name, body).map(Message::$variant), )*
                    other => Err(MsgError::UnknownType(other)),
                }
            }

            /// Writes the JSON body exactly as Go's `json.Marshal` would.
            pub fn to_json(&self, out: &mut Vec<u8>) {
                #[allow(unreachable_patterns)]
                match self {
                    // One per datagram on a udp proxy: written by hand.
                    Message::UdpPacket(p) => p.write_json(out),
                    $( Message::$variant(m) => write_go_json(m, out), )*
                }
            }
        }

        /// Whether `type_byte` names a message (the v1 reader checks this first).
        pub fn is_known_type_byte(type_byte: u8) -> bool {
            matches!(type_byte, $( type_byte::$konst )|*)
        }

        /// The v1 type byte for a v2 type id, if the id names a message.
        pub fn type_byte_from_v2_id(id: u16) -> Option<u8> {
            match id {
                $( $v2 => Some(type_byte::$konst), )*
                _ => None,
            }
        }

        /// The v2 type id for a v1 type byte, if the byte names a message.
        pub fn v2_id_from_type_byte(type_byte: u8) -> Option<u16> {
            match type_byte {
                $( type_byte::$konst => Some($v2), )*
                _ => None,
            }
        }
    };
}

messages! {
    Login(Login) = b'o', 1, "Login", LOGIN;
    LoginResp(LoginResp) = b'1', 2, "LoginResp", LOGIN_RESP;
    NewProxy(NewProxy) = b'p', 3, "NewProxy", NEW_PROXY;
    NewProxyResp(NewProxyResp) = b'2', 4, "NewProxyResp", NEW_PROXY_RESP;
    CloseProxy(CloseProxy) = b'c', 5, "CloseProxy", CLOSE_PROXY;
    NewWorkConn(NewWorkConn) = b'w', 6, "NewWorkConn", NEW_WORK_CONN;
    ReqWorkConn(ReqWorkConn) = b'r', 7, "ReqWorkConn", REQ_WORK_CONN;
    StartWorkConn(StartWorkConn) = b's', 8, "StartWorkConn", START_WORK_CONN;
    NewVisitorConn(NewVisitorConn) = b'v', 9, "NewVisitorConn", NEW_VISITOR_CONN;
    NewVisitorConnResp(NewVisitorConnResp) = b'3', 10, "NewVisitorConnResp", NEW_VISITOR_CONN_RESP;
    Ping(Ping) = b'h', 11, "Ping", PING;
    Pong(Pong) = b'4', 12, "Pong", PONG;
    UdpPacket(UdpPacket) = b'u', 13, "UDPPacket", UDP_PACKET;
    NatHoleVisitor(NatHoleVisitor) = b'i', 14, "NatHoleVisitor", NAT_HOLE_VISITOR;
    NatHoleClient(NatHoleClient) = b'n', 15, "NatHoleClient", NAT_HOLE_CLIENT;
    NatHoleResp(NatHoleResp) = b'm', 16, "NatHoleResp", NAT_HOLE_RESP;
    NatHoleSid(NatHoleSid) = b'5', 17, "NatHoleSid", NAT_HOLE_SID;
    NatHoleReport(NatHoleReport) = b'6', 18, "NatHoleReport", NAT_HOLE_REPORT;
}

impl Message {
    /// Parses a JSON body for the message the v2 type `id` names.
    pub fn from_v2_json(id: u16, body: &[u8]) -> Result<Message, MsgError> {
        let byte = type_byte_from_v2_id(id).ok_or(MsgError::UnknownV2Type(id))?;
        Message::from_json(byte, body)
    }
}

fn parse<'a, T: Deserialize<'a>>(name: &'static str, body: &'a [u8]) -> Result<T, MsgError> {
    parse_object(body).map_err(|reason| MsgError::Json { msg: name, reason })
}

/// Parses a JSON object into `T`.
///
/// serde would also build a struct from a JSON array (fields by position)
/// or from `null`; Go refuses both for a message, so we check that the body
/// is an object before handing it to serde.
pub(crate) fn parse_object<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, String> {
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => serde_json::from_slice(body).map_err(|e| e.to_string()),
        Some(_) => Err("expected a JSON object".to_string()),
        None => Err("empty body".to_string()),
    }
}

/// Serializes `value` as Go's `json.Marshal` does (compact, HTML-safe escaping).
///
/// Used for message bodies and the v2 hello payloads.
pub(crate) fn write_go_json<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) {
    let start = out.len();
    let mut ser = serde_json::Serializer::with_formatter(&mut *out, GoFormatter);
    // Our types hold only strings, integers, bools, string-keyed maps and
    // lists, which serde_json cannot fail on, and writing to a Vec cannot
    // fail either. Should that ever change, drop the partial output rather
    // than hand a peer half a body.
    if value.serialize(&mut ser).is_err() {
        debug_assert!(false, "serializing a message cannot fail");
        out.truncate(start);
    }
}

/// serde_json's compact output plus the escapes Go adds by default:
/// `<`, `>`, `&` as `\u003c`, `\u003e`, `\u0026`, and U+2028/U+2029.
/// Control characters already match Go ≥ 1.22 (`\b \f \n \r \t`, else `\u00xx`).
struct GoFormatter;

impl serde_json::ser::Formatter for GoFormatter {
    fn write_string_fragment<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        // A byte scan: U+2028 and U+2029 are E2 80 A8 and E2 80 A9 in
        // UTF-8, and no other character's encoding holds those bytes in a
        // row.
        let bytes = fragment.as_bytes();
        let (mut plain, mut at) = (0, 0);
        while at < bytes.len() {
            let escape: &[u8] = match bytes[at] {
                b'<' => b"\\u003c",
                b'>' => b"\\u003e",
                b'&' => b"\\u0026",
                0xE2 if bytes.get(at + 1) == Some(&0x80) => match bytes.get(at + 2) {
                    Some(0xA8) => b"\\u2028",
                    Some(0xA9) => b"\\u2029",
                    _ => {
                        at += 1;
                        continue;
                    }
                },
                _ => {
                    at += 1;
                    continue;
                }
            };
            writer.write_all(&bytes[plain..at])?;
            writer.write_all(escape)?;
            at += if bytes[at] == 0xE2 { 3 } else { 1 };
            plain = at;
        }
        writer.write_all(&bytes[plain..])
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_zero_i64(v: &i64) -> bool {
    *v == 0
}

fn is_zero_u16(v: &u16) -> bool {
    *v == 0
}

/// Go `[]byte` in JSON: standard base64 with padding, `null` for nil.
///
/// Go's decoder is lenient in two ways we copy: non-zero trailing bits are
/// accepted, and `\r`/`\n` anywhere in the text are skipped.
pub(crate) mod go_bytes {
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    use base64::Engine as _;
    use serde::de::Visitor;
    use serde::{Deserializer, Serializer};

    const GO_STD: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new()
            .with_decode_allow_trailing_bits(true)
            .with_decode_padding_mode(DecodePaddingMode::RequireCanonical),
    );

    /// Encodes as Go does.
    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&GO_STD.encode(bytes))
    }

    /// Appends the base64 text of `bytes` (no quotes) to `out`.
    pub fn encode_into(bytes: &[u8], out: &mut Vec<u8>) {
        let start = out.len();
        // Padded output of n bytes: 4 per started 3.
        out.resize(start + bytes.len().div_ceil(3) * 4, 0);
        match GO_STD.encode_slice(bytes, &mut out[start..]) {
            Ok(n) => out.truncate(start + n),
            // Cannot happen: the room is exactly the padded length.
            Err(_) => {
                out.truncate(start);
                out.extend_from_slice(GO_STD.encode(bytes).as_bytes());
            }
        }
    }

    /// Decodes as Go does.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        d.deserialize_option(Text)
    }

    /// `null` or a string, decoded from the text serde hands over (borrowed
    /// from the body where it has no escapes) without copying it first.
    struct Text;

    impl<'de> Visitor<'de> for Text {
        type Value = Vec<u8>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a base64 string or null")
        }

        fn visit_none<E: serde::de::Error>(self) -> Result<Vec<u8>, E> {
            Ok(Vec::new())
        }

        fn visit_unit<E: serde::de::Error>(self) -> Result<Vec<u8>, E> {
            Ok(Vec::new())
        }

        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Vec<u8>, D::Error> {
            d.deserialize_str(Text)
        }

        fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Vec<u8>, E> {
            // `\r` and `\n` are outside the alphabet, so text holding
            // them fails the first decode; only then is it looked at
            // (a scan of every datagram cost as much as the decoding).
            let decoded = GO_STD.decode(text).or_else(|e| {
                if text.bytes().any(|b| b == b'\r' || b == b'\n') {
                    let cleaned: String =
                        text.chars().filter(|c| !matches!(c, '\r' | '\n')).collect();
                    GO_STD.decode(cleaned)
                } else {
                    Err(e)
                }
            });
            decoded.map_err(|e| E::custom(format!("invalid base64: {e}")))
        }
    }
}

/// Go `net.IP` in JSON: its text form, `""` for nil.
mod go_ip {
    use std::net::IpAddr;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(ip: &Option<IpAddr>, s: S) -> Result<S::Ok, S::Error> {
        match ip {
            // Go prints an IPv4-mapped IPv6 address in dotted form.
            Some(ip) => s.collect_str(&ip.to_canonical()),
            None => s.serialize_str(""),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<IpAddr>, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(None),
            Some(text) if text.is_empty() => Ok(None),
            Some(text) => text
                .parse::<IpAddr>()
                .map(|ip| Some(ip.to_canonical()))
                .map_err(|_| serde::de::Error::custom(format!("invalid IP address: {text}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(m: &Message) -> String {
        let mut out = Vec::new();
        m.to_json(&mut out);
        String::from_utf8(out).unwrap()
    }

    /// Parses `body`, checks it re-encodes to exactly `body`, returns the message.
    fn exact(type_byte: u8, body: &str) -> Message {
        let m = Message::from_json(type_byte, body.as_bytes()).unwrap();
        assert_eq!(m.type_byte(), type_byte);
        assert_eq!(json(&m), body, "re-encoding {} changed bytes", m.name());
        m
    }

    #[test]
    fn login_from_frpc_0_70_1_is_byte_exact() {
        let body = r#"{"version":"0.70.1","hostname":"vm","os":"linux","arch":"amd64","privilege_key":"f46948c4330a5294aa37186da62edea8","timestamp":1795383782,"client_spec":{},"pool_count":1}"#;
        let Message::Login(login) = exact(type_byte::LOGIN, body) else {
            panic!("not a Login");
        };
        assert_eq!(login.version, "0.70.1");
        assert_eq!(login.hostname, "vm");
        assert_eq!(login.timestamp, 1795383782);
        assert_eq!(login.pool_count, 1);
        assert_eq!(login.client_spec, ClientSpec::default());
    }

    #[test]
    fn captured_bodies_are_byte_exact() {
        // From the decoded captures of frpc/frps v0.70.1.
        exact(
            type_byte::LOGIN_RESP,
            r#"{"version":"0.70.1","run_id":"55e2c9e45f9e9131"}"#,
        );
        exact(
            type_byte::NEW_PROXY,
            r#"{"proxy_name":"web","proxy_type":"tcp","remote_port":16000}"#,
        );
        exact(
            type_byte::NEW_PROXY_RESP,
            r#"{"proxy_name":"web","remote_addr":":16000"}"#,
        );
        exact(type_byte::NEW_WORK_CONN, r#"{"run_id":"55e2c9e45f9e9131"}"#);
        exact(
            type_byte::START_WORK_CONN,
            r#"{"proxy_name":"web","src_addr":"127.0.0.1","dst_addr":"127.0.0.1","src_port":43520,"dst_port":16000}"#,
        );
        exact(type_byte::REQ_WORK_CONN, "{}");
        exact(type_byte::PING, "{}");
        exact(type_byte::PONG, "{}");
    }

    #[test]
    fn every_field_in_go_order() {
        let mut metas = BTreeMap::new();
        metas.insert("z".to_string(), "1".to_string());
        metas.insert("a".to_string(), "2".to_string());
        let login = Message::Login(Login {
            version: "v".into(),
            hostname: "h".into(),
            os: "o".into(),
            arch: "a".into(),
            user: "u".into(),
            privilege_key: "k".into(),
            timestamp: -1,
            run_id: "r".into(),
            client_id: "c".into(),
            metas,
            client_spec: ClientSpec {
                kind: "ssh-tunnel".into(),
                always_auth_pass: true,
            },
            pool_count: 5,
        });
        assert_eq!(
            json(&login),
            r#"{"version":"v","hostname":"h","os":"o","arch":"a","user":"u","privilege_key":"k","timestamp":-1,"run_id":"r","client_id":"c","metas":{"a":"2","z":"1"},"client_spec":{"type":"ssh-tunnel","always_auth_pass":true},"pool_count":5}"#
        );

        let one = |k: &str| BTreeMap::from([(k.to_string(), "v".to_string())]);
        let proxy = Message::NewProxy(NewProxy {
            proxy_name: "n".into(),
            proxy_type: "http".into(),
            use_encryption: true,
            use_compression: true,
            bandwidth_limit: "1MB".into(),
            bandwidth_limit_mode: "server".into(),
            group: "g".into(),
            group_key: "gk".into(),
            metas: one("m"),
            annotations: one("an"),
            remote_port: 80,
            custom_domains: vec!["a.com".into(), "b.com".into()],
            sub_domain: "s".into(),
            locations: vec!["/".into()],
            http_user: "hu".into(),
            http_pwd: "hp".into(),
            host_header_rewrite: "hhr".into(),
            headers: one("h"),
            response_headers: one("rh"),
            route_by_http_user: "rbu".into(),
            sk: "sk".into(),
            allow_users: vec!["*".into()],
            multiplexer: "httpconnect".into(),
        });
        assert_eq!(
            json(&proxy),
            r#"{"proxy_name":"n","proxy_type":"http","use_encryption":true,"use_compression":true,"bandwidth_limit":"1MB","bandwidth_limit_mode":"server","group":"g","group_key":"gk","metas":{"m":"v"},"annotations":{"an":"v"},"remote_port":80,"custom_domains":["a.com","b.com"],"subdomain":"s","locations":["/"],"http_user":"hu","http_pwd":"hp","host_header_rewrite":"hhr","headers":{"h":"v"},"response_headers":{"rh":"v"},"route_by_http_user":"rbu","sk":"sk","allow_users":["*"],"multiplexer":"httpconnect"}"#
        );

        let resp = Message::NatHoleResp(NatHoleResp {
            transaction_id: "t".into(),
            sid: "s".into(),
            protocol: "quic".into(),
            candidate_addrs: vec!["1.2.3.4:5".into()],
            assisted_addrs: vec!["10.0.0.1:5".into()],
            detect_behavior: NatHoleDetectBehavior {
                role: "sender".into(),
                mode: 1,
                ttl: 7,
                send_delay_ms: 10,
                read_timeout_ms: 500,
                candidate_ports: vec![PortsRange { from: 1, to: 2 }, PortsRange::default()],
                send_random_ports: 3,
                listen_random_ports: 4,
            },
            error: "e".into(),
        });
        assert_eq!(
            json(&resp),
            r#"{"transaction_id":"t","sid":"s","protocol":"quic","candidate_addrs":["1.2.3.4:5"],"assisted_addrs":["10.0.0.1:5"],"detect_behavior":{"role":"sender","mode":1,"ttl":7,"send_delay_ms":10,"read_timeout":500,"candidate_ports":[{"from":1,"to":2},{}],"send_random_ports":3,"listen_random_ports":4},"error":"e"}"#
        );
        assert_eq!(
            json(&NatHoleResp::default().into()),
            r#"{"detect_behavior":{}}"#
        );
        assert_eq!(json(&Login::default().into()), r#"{"client_spec":{}}"#);
    }

    #[test]
    fn udp_packet_matches_go() {
        let pkt = Message::UdpPacket(UdpPacket {
            content: b"hello".to_vec(),
            local_addr: None,
            remote_addr: Some(
                "1.2.3.4:5353"
                    .parse::<std::net::SocketAddr>()
                    .unwrap()
                    .into(),
            ),
        });
        let body = r#"{"c":"aGVsbG8=","r":{"IP":"1.2.3.4","Port":5353,"Zone":""}}"#;
        assert_eq!(json(&pkt), body);
        assert_eq!(exact(type_byte::UDP_PACKET, body), pkt);

        exact(
            type_byte::UDP_PACKET,
            r#"{"c":"AA==","l":{"IP":"","Port":0,"Zone":""},"r":{"IP":"fe80::1","Port":1,"Zone":"eth0"}}"#,
        );
        // Go prints an IPv4-mapped IPv6 address in dotted form.
        let mapped =
            Message::from_json(b'u', br#"{"r":{"IP":"::ffff:10.1.2.3","Port":9}}"#).unwrap();
        assert_eq!(
            json(&mapped),
            r#"{"r":{"IP":"10.1.2.3","Port":9,"Zone":""}}"#
        );
        // Lenient base64 like Go: trailing bits, embedded newlines, null.
        let Message::UdpPacket(p) =
            Message::from_json(b'u', br#"{"c":"aGVs\nbG9=","l":null}"#).unwrap()
        else {
            panic!()
        };
        assert_eq!(p.content, b"hello");
        assert!(Message::from_json(b'u', br#"{"c":"!!"}"#).is_err());
        assert!(Message::from_json(b'u', br#"{"c":"aGVsbG8"}"#).is_err());
        assert!(Message::from_json(b'u', br#"{"r":{"IP":"1.2.3"}}"#).is_err());
    }

    #[test]
    fn udp_packet_written_by_hand_is_the_serde_body() {
        let addrs = [
            None,
            Some(UdpAddr::default()),
            Some(
                "1.2.3.4:5353"
                    .parse::<std::net::SocketAddr>()
                    .unwrap()
                    .into(),
            ),
            Some(UdpAddr {
                ip: Some("fe80::1".parse().unwrap()),
                port: 65535,
                zone: "eth<0>&\u{2028}".into(),
            }),
        ];
        let mut contents: Vec<Vec<u8>> = (0..8).map(|n| (0..n as u8).collect()).collect();
        contents.push((0..1200).map(|i| (i * 7 % 256) as u8).collect());
        contents.push(vec![0xff; 65507]);
        let mut cases = 0;
        for content in &contents {
            for l in &addrs {
                for r in &addrs {
                    let p = UdpPacket {
                        content: content.clone(),
                        local_addr: l.clone(),
                        remote_addr: r.clone(),
                    };
                    let (mut by_hand, mut by_serde) = (Vec::new(), Vec::new());
                    p.write_json(&mut by_hand);
                    write_go_json(&p, &mut by_serde);
                    assert_eq!(
                        String::from_utf8_lossy(&by_hand),
                        String::from_utf8_lossy(&by_serde)
                    );
                    assert_eq!(Message::from_json(b'u', &by_hand).unwrap(), p.into());
                    cases += 1;
                }
            }
        }
        assert_eq!(cases, 10 * 4 * 4);
        // Appended after what is already there, as to_json does.
        let mut out = b"xyz".to_vec();
        Message::UdpPacket(UdpPacket {
            content: b"hi".to_vec(),
            ..Default::default()
        })
        .to_json(&mut out);
        assert_eq!(out, br#"xyz{"c":"aGk="}"#);
        // `"c":null` is no content, as in Go.
        let Message::UdpPacket(p) = Message::from_json(b'u', br#"{"c":null}"#).unwrap() else {
            panic!()
        };
        assert!(p.content.is_empty());
        assert!(Message::from_json(b'u', br#"{"c":5}"#).is_err());
    }

    #[test]
    fn go_html_escaping_leaves_other_three_byte_characters() {
        // U+2027, U+202A and the euro sign share the lead byte E2 with
        // U+2028/U+2029; only those two are escaped.
        let m = Message::Pong(Pong {
            error: "\u{2027}\u{202a}€\u{2028}x\u{2029}\u{20ac}<".into(),
        });
        assert_eq!(
            json(&m),
            "{\"error\":\"\u{2027}\u{202a}€\\u2028x\\u2029€\\u003c\"}"
        );
        assert_eq!(Message::from_json(b'4', json(&m).as_bytes()).unwrap(), m);
    }

    #[test]
    fn go_html_escaping() {
        let m = Message::Pong(Pong {
            error: "<a&b>\u{2028}\u{2029}\"\\\n\u{8}\u{c}\u{1}é\u{7f}".into(),
        });
        assert_eq!(
            json(&m),
            r#"{"error":"\u003ca\u0026b\u003e\u2028\u2029\"\\\n\b\f\u0001é"#.to_string()
                + "\u{7f}\"}"
        );
        let back = Message::from_json(b'4', json(&m).as_bytes()).unwrap();
        assert_eq!(back, m);
    }

    #[test]
    fn unknown_keys_ignored_and_fields_optional() {
        let m = Message::from_json(b'o', br#"{"future":[1,{"x":2}],"version":"1"}"#).unwrap();
        assert_eq!(
            m,
            Message::Login(Login {
                version: "1".into(),
                ..Login::default()
            })
        );
        for (byte, _) in all() {
            let m = Message::from_json(byte, b" {} ").unwrap();
            assert_eq!(m.type_byte(), byte);
        }
    }

    #[test]
    fn bad_bodies_are_errors() {
        assert_eq!(
            Message::from_json(b'x', b"{}"),
            Err(MsgError::UnknownType(b'x'))
        );
        for body in [
            &b""[..],
            b"{",
            b"[]",
            b"null",
            b"{} x",
            br#"{"timestamp":"1"}"#,
            br#"{"timestamp":1.5}"#,
            br#"{"pool_count":true}"#,
        ] {
            let err = Message::from_json(b'o', body).unwrap_err();
            assert!(matches!(err, MsgError::Json { msg: "Login", .. }), "{err}");
        }
        let err = Message::from_json(b's', br#"{"src_port":70000}"#).unwrap_err();
        assert!(err
            .to_string()
            .starts_with("malformed StartWorkConn message"));
    }

    fn all() -> Vec<(u8, Message)> {
        let msgs: Vec<Message> = vec![
            Login::default().into(),
            LoginResp::default().into(),
            NewProxy::default().into(),
            NewProxyResp::default().into(),
            CloseProxy::default().into(),
            NewWorkConn::default().into(),
            ReqWorkConn::default().into(),
            StartWorkConn::default().into(),
            NewVisitorConn::default().into(),
            NewVisitorConnResp::default().into(),
            Ping::default().into(),
            Pong::default().into(),
            UdpPacket::default().into(),
            NatHoleVisitor::default().into(),
            NatHoleClient::default().into(),
            NatHoleResp::default().into(),
            NatHoleSid::default().into(),
            NatHoleReport::default().into(),
        ];
        msgs.into_iter().map(|m| (m.type_byte(), m)).collect()
    }

    #[test]
    fn type_table_is_consistent() {
        let all = all();
        assert_eq!(all.len(), 18);
        let bytes: Vec<u8> = all.iter().map(|(b, _)| *b).collect();
        assert_eq!(bytes, b"o1p2cwrsv3h4uinm56");
        for (i, (byte, m)) in all.iter().enumerate() {
            assert_eq!(m.v2_type_id() as usize, i + 1);
            assert_eq!(type_byte_from_v2_id(m.v2_type_id()), Some(*byte));
            assert_eq!(v2_id_from_type_byte(*byte), Some(m.v2_type_id()));
            assert!(is_known_type_byte(*byte));
        }
        assert_eq!(type_byte_from_v2_id(0), None);
        assert_eq!(type_byte_from_v2_id(19), None);
        assert_eq!(
            Message::from_v2_json(19, b"{}"),
            Err(MsgError::UnknownV2Type(19))
        );
        let names: Vec<&str> = all.iter().map(|(_, m)| m.name()).collect();
        assert_eq!(names[12], "UDPPacket");
        assert_eq!(type_byte::NAT_HOLE_REPORT, b'6');
        assert_eq!(v2_type::NAT_HOLE_REPORT, 18);
    }

    #[test]
    fn every_message_round_trips_with_all_fields() {
        let s = |v: &str| v.to_string();
        let msgs: Vec<Message> = vec![
            LoginResp {
                version: s("1"),
                run_id: s("r"),
                error: s("e"),
            }
            .into(),
            NewProxyResp {
                proxy_name: s("p"),
                remote_addr: s(":1"),
                error: s("e"),
            }
            .into(),
            CloseProxy { proxy_name: s("p") }.into(),
            NewWorkConn {
                run_id: s("r"),
                privilege_key: s("k"),
                timestamp: 9,
            }
            .into(),
            StartWorkConn {
                proxy_name: s("p"),
                src_addr: s("a"),
                dst_addr: s("b"),
                src_port: 65535,
                dst_port: 1,
                error: s("e"),
            }
            .into(),
            NewVisitorConn {
                run_id: s("r"),
                proxy_name: s("p"),
                sign_key: s("k"),
                timestamp: 1,
                use_encryption: true,
                use_compression: true,
            }
            .into(),
            NewVisitorConnResp {
                proxy_name: s("p"),
                error: s("e"),
            }
            .into(),
            Ping {
                privilege_key: s("k"),
                timestamp: 2,
            }
            .into(),
            NatHoleVisitor {
                transaction_id: s("t"),
                proxy_name: s("p"),
                pre_check: true,
                protocol: s("kcp"),
                sign_key: s("k"),
                timestamp: 3,
                mapped_addrs: vec![s("1.1.1.1:1")],
                assisted_addrs: vec![s("2.2.2.2:2")],
            }
            .into(),
            NatHoleClient {
                transaction_id: s("t"),
                proxy_name: s("p"),
                sid: s("s"),
                mapped_addrs: vec![s("m")],
                assisted_addrs: vec![s("a")],
            }
            .into(),
            NatHoleSid {
                transaction_id: s("t"),
                sid: s("s"),
                response: true,
                nonce: s("n"),
            }
            .into(),
            NatHoleReport {
                sid: s("s"),
                success: true,
            }
            .into(),
        ];
        let expected = [
            r#"{"version":"1","run_id":"r","error":"e"}"#,
            r#"{"proxy_name":"p","remote_addr":":1","error":"e"}"#,
            r#"{"proxy_name":"p"}"#,
            r#"{"run_id":"r","privilege_key":"k","timestamp":9}"#,
            r#"{"proxy_name":"p","src_addr":"a","dst_addr":"b","src_port":65535,"dst_port":1,"error":"e"}"#,
            r#"{"run_id":"r","proxy_name":"p","sign_key":"k","timestamp":1,"use_encryption":true,"use_compression":true}"#,
            r#"{"proxy_name":"p","error":"e"}"#,
            r#"{"privilege_key":"k","timestamp":2}"#,
            r#"{"transaction_id":"t","proxy_name":"p","pre_check":true,"protocol":"kcp","sign_key":"k","timestamp":3,"mapped_addrs":["1.1.1.1:1"],"assisted_addrs":["2.2.2.2:2"]}"#,
            r#"{"transaction_id":"t","proxy_name":"p","sid":"s","mapped_addrs":["m"],"assisted_addrs":["a"]}"#,
            r#"{"transaction_id":"t","sid":"s","response":true,"nonce":"n"}"#,
            r#"{"sid":"s","success":true}"#,
        ];
        for (m, want) in msgs.iter().zip(expected) {
            assert_eq!(json(m), want);
            assert_eq!(&exact(m.type_byte(), want), m);
        }
    }
}
