//! The JSON payloads of seed 003's control messages (every type but DATA,
//! PING and PONG, and the UDP-only P2P probes). The seed fixes the frame,
//! the types and the tokens' claims; these bodies are this implementation's
//! choice, kept small and explicit: unknown fields are refused, so a typo
//! in a peer's message is a 2002 with the field named, not a silent default.
//!
//! Keys and signatures travel as standard base64 with padding (a 32-byte
//! key is 44 characters).

use serde::{Deserialize, Serialize};

use super::error::ErrorCode;

/// Domain separation for what a machine_key signs.
pub const SIGN_CONTEXT_AUTH: &[u8] = b"wss-mesh-auth-v1\0";
/// Domain separation for a node_key update.
pub const SIGN_CONTEXT_NODE_KEY: &[u8] = b"wss-mesh-node-key-v1\0";

/// AUTH_REQUEST. On `/ws/control` a node proves its machine_key (and
/// registers on first contact); on `/ws/data`, `/ws/server` and `/ws/mesh`
/// the token alone is checked.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthRequest {
    /// A token (relay_token on `/ws/data`, server_token on `/ws/server`
    /// and `/ws/mesh`, an earlier auth_token on `/ws/control`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub token: String,
    /// The node's Ed25519 machine_key, base64.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub machine_key: String,
    /// The node's current X25519 node_key, base64.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node_key: String,
    /// The network it joins (name).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub network: String,
    /// Its host name (shown to operators).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hostname: String,
    /// Its software version.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub version: String,
    /// Unix milliseconds when signed: within 5 minutes of the controller's
    /// clock and newer than any earlier message signed by this machine key
    /// (a replay is refused).
    #[serde(default)]
    pub timestamp: u64,
    /// Ed25519 signature by the machine_key over [`auth_signed_bytes`], base64.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub signature: String,
}

/// What a node's machine_key signs to authenticate: the context, the two
/// keys as sent, the timestamp (8 bytes, big endian) and the network name.
pub fn auth_signed_bytes(
    machine_key: &str,
    node_key: &str,
    timestamp: u64,
    network: &str,
) -> Vec<u8> {
    let mut m = Vec::with_capacity(SIGN_CONTEXT_AUTH.len() + 100 + network.len());
    m.extend_from_slice(SIGN_CONTEXT_AUTH);
    for part in [machine_key.as_bytes(), node_key.as_bytes()] {
        m.extend_from_slice(&(part.len() as u32).to_be_bytes());
        m.extend_from_slice(part);
    }
    m.extend_from_slice(&timestamp.to_be_bytes());
    m.extend_from_slice(network.as_bytes());
    m
}

/// A node_key rotation (sent by a node in CONFIG_UPDATE): the new key,
/// signed by the machine_key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeKeyUpdate {
    /// The new X25519 node_key, base64.
    pub node_key: String,
    /// Unix milliseconds when signed (newer than any earlier signed message).
    pub timestamp: u64,
    /// Ed25519 signature over [`node_key_signed_bytes`], base64.
    pub signature: String,
}

/// What a machine_key signs to rotate its node_key.
pub fn node_key_signed_bytes(node_id: u32, node_key: &str, timestamp: u64) -> Vec<u8> {
    let mut m = Vec::with_capacity(SIGN_CONTEXT_NODE_KEY.len() + 60);
    m.extend_from_slice(SIGN_CONTEXT_NODE_KEY);
    m.extend_from_slice(&node_id.to_be_bytes());
    m.extend_from_slice(node_key.as_bytes());
    m.extend_from_slice(&timestamp.to_be_bytes());
    m
}

/// AUTH_RESPONSE.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthResponse {
    /// Whether the channel is open.
    pub ok: bool,
    /// The node's id (0 for servers).
    #[serde(default)]
    pub node_id: u32,
    /// Its virtual IP ("" until authorized).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub virtual_ip: String,
    /// Its network's id.
    #[serde(default)]
    pub network_id: u32,
    /// auth_token for the next `/ws/control` connection.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub auth_token: String,
    /// Why not, when not ok.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
}

/// ERROR's payload, and the error of an AUTH_RESPONSE.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorBody {
    /// The seed's code.
    pub code: u16,
    /// A readable message.
    pub message: String,
    /// The node a routing error is about (3001/3002), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<u32>,
}

impl ErrorBody {
    /// `code` with its message, and `detail` after it when not empty.
    pub fn new(code: ErrorCode, detail: &str) -> ErrorBody {
        let message = if detail.is_empty() {
            code.message().to_owned()
        } else {
            format!("{}: {detail}", code.message())
        };
        ErrorBody {
            code: code.code(),
            message,
            node_id: None,
        }
    }
}

/// One peer of a node, as CONFIG lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Peer {
    /// Node id.
    pub node_id: u32,
    /// Name.
    pub name: String,
    /// Virtual IP.
    pub virtual_ip: String,
    /// X25519 node_key, base64.
    pub node_key: String,
    /// Whether it has a control channel open.
    pub online: bool,
}

/// A relay a node connects to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Relay {
    /// Server id.
    pub server_id: u32,
    /// Name.
    pub name: String,
    /// `wss://host:port/ws/data` (or `ws://` on a test network).
    pub url: String,
    /// Region label.
    #[serde(default)]
    pub region: String,
}

/// A subnet route advertised by a gateway node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Route id.
    pub id: u32,
    /// The subnet, e.g. `192.168.1.0/24`.
    pub cidr: String,
    /// The gateway node.
    pub node_id: u32,
    /// Lower wins.
    pub priority: u32,
    /// Among equal priorities, share by weight.
    pub weight: u32,
    /// Whether it is in use.
    pub enabled: bool,
}

/// CONFIG: everything a node needs, pushed on connect and when a change
/// is too large for CONFIG_UPDATE.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Monotonic version of the network's configuration.
    pub version: u64,
    /// This node's id.
    pub node_id: u32,
    /// Its virtual IP.
    pub virtual_ip: String,
    /// The network's subnet, e.g. `10.100.0.0/16`.
    pub subnet: String,
    /// The other authorized nodes.
    pub peers: Vec<Peer>,
    /// The relays to connect to.
    pub relays: Vec<Relay>,
    /// Subnet routes.
    pub routes: Vec<Route>,
    /// relay_token for `/ws/data`.
    pub relay_token: String,
    /// Its expiry, unix seconds.
    pub relay_token_exp: u64,
}

/// CONFIG_UPDATE from the controller: what changed since `version - 1`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigUpdate {
    /// The version this update brings the node to.
    pub version: u64,
    /// Peers added or changed (a new node_key, online state).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<Peer>,
    /// Peers removed (deauthorized or deleted).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<u32>,
    /// The whole route list, when it changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routes: Option<Vec<Route>>,
    /// The whole relay list, when it changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relays: Option<Vec<Relay>>,
    /// A fresh relay_token and its expiry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay_token: Option<(String, u64)>,
    /// A fresh auth_token and its expiry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_token: Option<(String, u64)>,
}

/// SERVER_REGISTER: a relay or STUN server opens `/ws/server`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerRegister {
    /// Its server_token.
    pub token: String,
    /// Its software version.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub version: String,
}

/// CONFIG on `/ws/server`: who the server is and the relays it links to
/// over `/ws/mesh` (the one with the lower id dials).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Its own id (the one relay tokens' `allowed_relays` name).
    pub server_id: u32,
    /// Its name.
    pub name: String,
    /// Every enabled relay, itself included.
    pub relays: Vec<Relay>,
    /// The Ed25519 keys mesh tokens are signed with: (kid, base64 public
    /// key). In HS256 mode the server is configured with the secret.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub token_keys: Vec<(String, String)>,
    /// Link tokens for the relays this one dials (the lower id dials):
    /// (relay id, token). Re-sent when renewed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub links: Vec<(u32, String)>,
}

/// A set's change sent in pieces of at most `per` items, additions first,
/// then removals: (full, added, removed) per piece. With `full` (the whole
/// set, first time), the first piece says it replaces everything, and
/// there is one, empty, when the set is.
pub fn pieces<T: Clone>(
    added: &[T],
    removed: &[T],
    per: usize,
    full: bool,
) -> Vec<(bool, Vec<T>, Vec<T>)> {
    let per = per.max(1);
    let mut out: Vec<(bool, Vec<T>, Vec<T>)> = added
        .chunks(per)
        .map(|c| (false, c.to_vec(), Vec::new()))
        .chain(removed.chunks(per).map(|c| (false, Vec::new(), c.to_vec())))
        .collect();
    if full {
        match out.first_mut() {
            Some(p) => p.0 = true,
            None => out.push((true, Vec::new(), Vec::new())),
        }
    }
    out
}

/// CONFIG_UPDATE to a relay: the authorized nodes and their networks (a
/// relay serves only these; a deauthorized node is in `removed` and is cut
/// off). Sent in pieces, as SERVER_NODE_LOC is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerNodes {
    /// Replaces everything known.
    pub full: bool,
    /// (node_id, network_id) pairs that hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<(u32, u32)>,
    /// (node_id, network_id) pairs that no longer hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<(u32, u32)>,
}

/// SERVER_NODE_LOC: which relay holds which node. A relay reports its own
/// nodes; the controller tells every relay all of them. A node may be
/// connected to several relays at once.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeLocations {
    /// Replaces everything known (from a relay: everything it reported).
    pub full: bool,
    /// (node_id, server_id) pairs that hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub locations: Vec<(u32, u32)>,
    /// (node_id, server_id) pairs that no longer hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<(u32, u32)>,
}

/// SERVER_BLACKLIST: revoked token ids with the expiry of their token
/// (after which the entry is dropped).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Blacklist {
    /// Replaces the list (true) or adds to it (false).
    pub full: bool,
    /// (jti, exp unix seconds).
    pub entries: Vec<(String, u64)>,
}

/// Decode a control payload, naming the field that is wrong.
pub fn decode<'a, T: Deserialize<'a>>(payload: &'a [u8]) -> Result<T, ErrorBody> {
    let de = &mut serde_json::Deserializer::from_slice(payload);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        ErrorBody::new(ErrorCode::InvalidMessage, &format!("{path}: {}", e.inner()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip_and_unknown_fields_are_named() {
        let cfg = Config {
            version: 3,
            node_id: 2,
            virtual_ip: "10.100.0.2".into(),
            subnet: "10.100.0.0/16".into(),
            peers: vec![Peer {
                node_id: 1,
                name: "a".into(),
                virtual_ip: "10.100.0.1".into(),
                node_key: "k".into(),
                online: true,
            }],
            relays: vec![],
            routes: vec![Route {
                id: 1,
                cidr: "192.168.1.0/24".into(),
                node_id: 1,
                priority: 100,
                weight: 100,
                enabled: true,
            }],
            relay_token: "t".into(),
            relay_token_exp: 9,
        };
        let bytes = serde_json::to_vec(&cfg).unwrap();
        assert_eq!(decode::<Config>(&bytes).unwrap(), cfg);
        let up = ConfigUpdate {
            version: 4,
            removed: vec![7],
            ..ConfigUpdate::default()
        };
        let text = serde_json::to_string(&up).unwrap();
        assert_eq!(text, r#"{"version":4,"removed":[7]}"#);
        assert_eq!(decode::<ConfigUpdate>(text.as_bytes()).unwrap(), up);

        let e = decode::<AuthRequest>(br#"{"token":"x","tokne":"y"}"#).unwrap_err();
        assert_eq!(e.code, 2002);
        assert!(e.message.contains("tokne"), "{}", e.message);
        let e = decode::<NodeLocations>(br#"{"full":true,"locations":[[1,"x"]]}"#).unwrap_err();
        assert!(
            e.message
                .starts_with("invalid message format: locations[0]"),
            "{}",
            e.message
        );
        assert_eq!(decode::<Blacklist>(b"not json").unwrap_err().code, 2002);
    }

    #[test]
    fn signed_bytes_bind_every_part() {
        let a = auth_signed_bytes("m", "n", 1, "net");
        assert!(a.starts_with(SIGN_CONTEXT_AUTH));
        // The length prefixes keep ("mn", "") and ("m", "n") apart.
        assert_ne!(auth_signed_bytes("mn", "", 1, "net"), a);
        assert_ne!(auth_signed_bytes("m", "n", 2, "net"), a);
        assert_ne!(auth_signed_bytes("m", "n", 1, "net2"), a);
        let k = node_key_signed_bytes(5, "key", 1);
        assert_ne!(node_key_signed_bytes(6, "key", 1), k);
        assert_ne!(node_key_signed_bytes(5, "key", 2), k);
        assert!(k.starts_with(SIGN_CONTEXT_NODE_KEY));
        assert_eq!(
            ErrorBody::new(ErrorCode::NodeOffline, "node 4").message,
            "destination node is offline: node 4"
        );
    }
}
