//! frp wire protocol v2 (frp ≥ 0.69, opt-in with `transport.wireProtocol = "v2"`).
//!
//! A v2 connection starts with [`MAGIC`]; after it everything is a binary
//! frame `type u16 | flags u16 (zero) | length u32 | payload`, all big-endian,
//! payload at most [`MAX_FRAME_PAYLOAD`] bytes. A control connection opens with
//! a [`ClientHello`] frame (JSON) that the server answers with a
//! [`ServerHello`]; both pick a message codec (only JSON exists) and an AEAD
//! algorithm and carry a 32-byte random each. Message frames carry a `u16`
//! type id and the same JSON bodies as v1 ([`crate::msg`]).
//!
//! Login and LoginResp travel in plaintext frames. After them the control
//! connection is wrapped, per direction, in an AEAD record stream
//! ([`AeadWriter`] / [`AeadReader`]) keyed by [`derive_keys`] from the token
//! and the [`transcript_hash`] of the two hello payloads, and the v2 frames
//! continue inside it. Work and visitor connections send the magic and then
//! plain message frames, with no hello and no AEAD.
//!
//! Go writes a frame as two writes (8-byte header, then payload), and on the
//! control connection each write becomes its own AEAD record. A peer that
//! wants frpc's exact record layout seals the header and the payload
//! separately; the Go reader accepts either layout.

use std::ops::Range;

use ring::{aead, digest, hmac};
use serde::{Deserialize, Serialize};

use crate::msg::{write_go_json, Message, MsgError};

/// The 7 bytes every v2 connection starts with: `FRP\0\x02\r\n`.
pub const MAGIC: [u8; 7] = *b"FRP\0\x02\r\n";

/// Bytes in a v2 frame header.
pub const FRAME_HEADER_LEN: usize = 8;

/// Largest v2 frame payload frp accepts.
pub const MAX_FRAME_PAYLOAD: usize = 64 * 1024;

/// Length of the client and server randoms in the hellos.
pub const RANDOM_LEN: usize = 32;

/// Largest plaintext in one AEAD record.
pub const MAX_RECORD_PLAINTEXT: usize = 64 * 1024;

/// The only message codec v2 defines.
pub const CODEC_JSON: &str = "json";

/// Authentication tag length of both AEADs.
const TAG_LEN: usize = 16;

/// Bytes of the record length prefix in the AEAD stream.
const RECORD_HEADER_LEN: usize = 4;

/// AES-GCM streams stop after 2^32 records, as Go's does.
const AES_GCM_MAX_RECORDS: u64 = 1 << 32;

const TRANSCRIPT_LABEL: &[u8] = b"frp wire v2 crypto transcript";

/// Why v2 bytes were refused.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum V2Error {
    /// A frame header names a type other than ClientHello, ServerHello, Message.
    #[error("unknown v2 frame type {0}")]
    UnknownFrameType(u16),
    /// A frame header has non-zero flags, which no version defines.
    #[error("v2 frame flags 0x{0:04x} are not zero")]
    Flags(u16),
    /// A frame payload is over [`MAX_FRAME_PAYLOAD`].
    #[error("v2 frame payload length {0} exceeds the {MAX_FRAME_PAYLOAD}-byte limit")]
    FrameTooLong(u64),
    /// A Message frame is too short to hold its 2-byte type id.
    #[error("v2 message payload is {0} bytes, too short for its 2-byte type id")]
    MessageTooShort(usize),
    /// The message inside a Message frame is unknown or malformed.
    #[error(transparent)]
    Message(#[from] MsgError),
    /// A ClientHello or ServerHello payload is not valid JSON for it.
    #[error("malformed {which}: {reason}")]
    Hello {
        /// `"ClientHello"` or `"ServerHello"`.
        which: &'static str,
        /// What the JSON parser objected to.
        reason: String,
    },
    /// An AEAD record announces less than a tag's worth of ciphertext.
    #[error("AEAD record length {0} is shorter than the {TAG_LEN}-byte tag")]
    RecordTooShort(u32),
    /// An AEAD record announces more than 64 KiB of plaintext.
    #[error("AEAD record length {0} exceeds the {max}-byte limit", max = MAX_RECORD_PLAINTEXT + TAG_LEN)]
    RecordTooLong(u32),
    /// An AEAD record did not authenticate.
    #[error("AEAD record failed authentication (wrong token, or the stream was altered)")]
    Authentication,
    /// The stream has used up its nonces or its record budget.
    #[error("AEAD stream reached its record limit")]
    RecordLimit,
    /// An earlier error already ended this AEAD stream.
    #[error("AEAD stream already failed; the connection must be closed")]
    StreamFailed,
    /// A nonce given to [`AeadWriter::with_nonce`] has the wrong length.
    #[error("AEAD nonce for {alg} must be {want} bytes, got {got}")]
    NonceLength {
        /// Algorithm name.
        alg: &'static str,
        /// Required length.
        want: usize,
        /// Length given.
        got: usize,
    },
    /// The system random number generator failed.
    #[error("the system random number generator failed")]
    Random,
    /// The crypto library refused a key or an operation.
    #[error("AEAD setup failed: {0}")]
    Crypto(&'static str),
}

/// The three v2 frame types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FrameType {
    /// Client's negotiation offer (JSON [`ClientHello`]).
    ClientHello,
    /// Server's negotiation answer (JSON [`ServerHello`]).
    ServerHello,
    /// A message: `u16` type id, then the JSON body.
    Message,
}

impl FrameType {
    /// The type's number on the wire.
    pub fn as_u16(self) -> u16 {
        match self {
            FrameType::ClientHello => 1,
            FrameType::ServerHello => 2,
            FrameType::Message => 16,
        }
    }

    /// The type a wire number names, if any.
    pub fn from_u16(ty: u16) -> Option<FrameType> {
        match ty {
            1 => Some(FrameType::ClientHello),
            2 => Some(FrameType::ServerHello),
            16 => Some(FrameType::Message),
            _ => None,
        }
    }
}

/// Tells v2 from v1 by the first bytes of a connection.
///
/// `Some(true)`: the 7 magic bytes are there. `Some(false)`: a byte differs,
/// so this is v1 (or something else) and nothing should be consumed. `None`:
/// the bytes so far match a prefix of the magic; wait for more.
pub fn detect_magic(buf: &[u8]) -> Option<bool> {
    let n = buf.len().min(MAGIC.len());
    if buf[..n] != MAGIC[..n] {
        Some(false)
    } else if n == MAGIC.len() {
        Some(true)
    } else {
        None
    }
}

/// Appends one frame. Fails, writing nothing, if `payload` is over the limit.
pub fn encode_frame(ty: FrameType, payload: &[u8], out: &mut Vec<u8>) -> Result<(), V2Error> {
    if payload.len() > MAX_FRAME_PAYLOAD {
        return Err(V2Error::FrameTooLong(payload.len() as u64));
    }
    out.extend_from_slice(&ty.as_u16().to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    Ok(())
}

/// Appends one Message frame holding `msg`, its JSON byte-identical to Go's.
///
/// Fails, writing nothing, if the body would make the payload over the limit.
pub fn encode_message(msg: &Message, out: &mut Vec<u8>) -> Result<(), V2Error> {
    let start = out.len();
    out.extend_from_slice(&FrameType::Message.as_u16().to_be_bytes());
    out.extend_from_slice(&[0; 6]);
    out.extend_from_slice(&msg.v2_type_id().to_be_bytes());
    msg.to_json(out);
    let payload_len = out.len() - start - FRAME_HEADER_LEN;
    if payload_len > MAX_FRAME_PAYLOAD {
        out.truncate(start);
        return Err(V2Error::FrameTooLong(payload_len as u64));
    }
    out[start + 4..start + FRAME_HEADER_LEN].copy_from_slice(&(payload_len as u32).to_be_bytes());
    Ok(())
}

/// Decodes one frame from the front of `buf`.
///
/// `Ok(None)` means more bytes are needed. `Ok(Some((ty, payload, consumed)))`
/// gives the frame type, where its payload sits in `buf`, and the frame's
/// total length. The header is checked as soon as its 8 bytes are there.
pub fn decode_frame(buf: &[u8]) -> Result<Option<(FrameType, Range<usize>, usize)>, V2Error> {
    let Some(header) = buf.get(..FRAME_HEADER_LEN) else {
        return Ok(None);
    };
    let raw_type = u16::from_be_bytes([header[0], header[1]]);
    let flags = u16::from_be_bytes([header[2], header[3]]);
    let len = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
    if flags != 0 {
        return Err(V2Error::Flags(flags));
    }
    if len as u64 > MAX_FRAME_PAYLOAD as u64 {
        return Err(V2Error::FrameTooLong(u64::from(len)));
    }
    let ty = FrameType::from_u16(raw_type).ok_or(V2Error::UnknownFrameType(raw_type))?;
    let end = FRAME_HEADER_LEN + len as usize;
    if buf.len() < end {
        return Ok(None);
    }
    Ok(Some((ty, FRAME_HEADER_LEN..end, end)))
}

/// Parses a Message frame's payload (type id and JSON body).
pub fn decode_message(payload: &[u8]) -> Result<Message, V2Error> {
    let Some((id, body)) = payload.split_first_chunk::<2>() else {
        return Err(V2Error::MessageTooShort(payload.len()));
    };
    Ok(Message::from_v2_json(u16::from_be_bytes(*id), body)?)
}

/// ClientHello `bootstrap`: how the client reached the server.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BootstrapInfo {
    /// `tcp`, `kcp`, `quic`, `websocket`, `wss`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub transport: String,
    /// Whether the connection runs inside TLS.
    #[serde(skip_serializing_if = "is_false")]
    pub tls: bool,
    /// Whether the connection is yamux-multiplexed.
    #[serde(rename = "tcpMux", skip_serializing_if = "is_false")]
    pub tcp_mux: bool,
}

/// ClientHello `capabilities.message`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct MessageCapabilities {
    /// Codecs offered; frpc sends `["json"]`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub codecs: Vec<String>,
}

/// ClientHello `capabilities.crypto`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CryptoCapabilities {
    /// AEAD names in the client's order of preference.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub algorithms: Vec<String>,
    /// 32 random bytes (base64 on the wire).
    #[serde(
        rename = "clientRandom",
        with = "crate::msg::go_bytes",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub client_random: Vec<u8>,
}

/// ClientHello `capabilities`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClientCapabilities {
    /// Message codecs offered.
    pub message: MessageCapabilities,
    /// AEADs offered and the client random.
    pub crypto: CryptoCapabilities,
}

/// The client's negotiation offer, first frame of a v2 control connection.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClientHello {
    /// How the client connected.
    pub bootstrap: BootstrapInfo,
    /// What the client can speak.
    pub capabilities: ClientCapabilities,
}

impl ClientHello {
    /// A hello as frpc builds it: JSON codec, `algorithms` in preference order.
    pub fn new(
        bootstrap: BootstrapInfo,
        algorithms: &[AeadAlgorithm],
        client_random: [u8; RANDOM_LEN],
    ) -> Self {
        ClientHello {
            bootstrap,
            capabilities: ClientCapabilities {
                message: MessageCapabilities {
                    codecs: vec![CODEC_JSON.to_string()],
                },
                crypto: CryptoCapabilities {
                    algorithms: algorithms.iter().map(|a| a.name().to_string()).collect(),
                    client_random: client_random.to_vec(),
                },
            },
        }
    }

    /// Parses a ClientHello frame payload.
    pub fn parse(payload: &[u8]) -> Result<Self, V2Error> {
        parse_hello("ClientHello", payload)
    }

    /// The exact JSON payload Go would send for this hello.
    pub fn to_payload(&self) -> Vec<u8> {
        let mut out = Vec::new();
        write_go_json(self, &mut out);
        out
    }
}

/// ServerHello `selected.message`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct MessageSelection {
    /// The chosen codec, `"json"`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub codec: String,
}

/// ServerHello `selected.crypto`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CryptoSelection {
    /// The chosen AEAD name.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub algorithm: String,
    /// 32 random bytes (base64 on the wire).
    #[serde(
        rename = "serverRandom",
        with = "crate::msg::go_bytes",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub server_random: Vec<u8>,
}

/// ServerHello `selected`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ServerSelection {
    /// Chosen codec.
    pub message: MessageSelection,
    /// Chosen AEAD and the server random.
    pub crypto: CryptoSelection,
}

/// The server's negotiation answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ServerHello {
    /// What the server picked.
    pub selected: ServerSelection,
    /// Non-empty when the server refuses; the client shows it and gives up.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub error: String,
}

impl ServerHello {
    /// Parses a ServerHello frame payload.
    pub fn parse(payload: &[u8]) -> Result<Self, V2Error> {
        parse_hello("ServerHello", payload)
    }

    /// The exact JSON payload Go would send for this hello.
    pub fn to_payload(&self) -> Vec<u8> {
        let mut out = Vec::new();
        write_go_json(self, &mut out);
        out
    }
}

fn parse_hello<'a, T: Deserialize<'a>>(
    which: &'static str,
    payload: &'a [u8],
) -> Result<T, V2Error> {
    crate::msg::parse_object(payload).map_err(|reason| V2Error::Hello { which, reason })
}

/// The AEADs v2 defines for the control channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AeadAlgorithm {
    /// `aes-256-gcm`: 12-byte nonce.
    Aes256Gcm,
    /// `xchacha20-poly1305`: 24-byte nonce.
    XChaCha20Poly1305,
}

impl AeadAlgorithm {
    /// The name used in the hellos and the key-derivation label.
    pub fn name(self) -> &'static str {
        match self {
            AeadAlgorithm::Aes256Gcm => "aes-256-gcm",
            AeadAlgorithm::XChaCha20Poly1305 => "xchacha20-poly1305",
        }
    }

    /// The algorithm a hello name refers to, if we support it.
    pub fn from_name(name: &str) -> Option<AeadAlgorithm> {
        match name {
            "aes-256-gcm" => Some(AeadAlgorithm::Aes256Gcm),
            "xchacha20-poly1305" => Some(AeadAlgorithm::XChaCha20Poly1305),
            _ => None,
        }
    }

    /// Nonce length, which is also the length of the stream's nonce prefix.
    pub fn nonce_len(self) -> usize {
        match self {
            AeadAlgorithm::Aes256Gcm => 12,
            AeadAlgorithm::XChaCha20Poly1305 => 24,
        }
    }

    fn max_records(self) -> Option<u64> {
        match self {
            AeadAlgorithm::Aes256Gcm => Some(AES_GCM_MAX_RECORDS),
            AeadAlgorithm::XChaCha20Poly1305 => None,
        }
    }
}

/// Why hello negotiation failed. On the server the text goes into
/// [`ServerHello::error`], which frpc prints.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum NegotiationError {
    /// The client did not offer the JSON codec.
    #[error("client offers no json message codec")]
    UnsupportedCodec,
    /// The client random is not 32 bytes.
    #[error("client random is {0} bytes, expected 32")]
    ClientRandomLength(usize),
    /// None of the client's algorithms is one we support.
    #[error("client offers no AEAD algorithm this server supports")]
    NoAlgorithm,
    /// The server's hello carries an error.
    #[error("server refused the hello: {0}")]
    Refused(String),
    /// The server picked a codec other than JSON.
    #[error("server selected unsupported message codec {0:?}")]
    SelectedCodec(String),
    /// The server picked an algorithm we do not know.
    #[error("server selected unknown AEAD algorithm {0:?}")]
    SelectedAlgorithm(String),
    /// The server picked an algorithm the client did not offer.
    #[error("server selected AEAD algorithm {0:?}, which the client did not offer")]
    NotOffered(String),
    /// The server random is not 32 bytes.
    #[error("server random is {0} bytes, expected 32")]
    ServerRandomLength(usize),
}

/// The server's answer to a ClientHello, ready to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerHelloReply {
    /// The hello itself.
    pub hello: ServerHello,
    /// Its exact JSON payload: send it in a ServerHello frame and feed it to
    /// [`transcript_hash`].
    pub payload: Vec<u8>,
    /// The agreed algorithm, or why the server refuses (then close after
    /// sending, as frps does).
    pub outcome: Result<AeadAlgorithm, NegotiationError>,
}

/// Server-side negotiation, as frps does it.
///
/// Checks the codec and the client random, picks the first algorithm in the
/// client's list that we support, and answers with `server_random` (32 fresh
/// random bytes; see [`random_bytes`]). A refusal still produces a hello to
/// send: codec `json`, empty crypto, and the reason in `error`.
pub fn server_hello(client: &ClientHello, server_random: [u8; RANDOM_LEN]) -> ServerHelloReply {
    let outcome = negotiate(client);
    let mut hello = ServerHello {
        selected: ServerSelection {
            message: MessageSelection {
                codec: CODEC_JSON.to_string(),
            },
            crypto: CryptoSelection::default(),
        },
        error: String::new(),
    };
    match &outcome {
        Ok(alg) => {
            hello.selected.crypto = CryptoSelection {
                algorithm: alg.name().to_string(),
                server_random: server_random.to_vec(),
            }
        }
        Err(e) => hello.error = e.to_string(),
    }
    let payload = hello.to_payload();
    ServerHelloReply {
        hello,
        payload,
        outcome,
    }
}

fn negotiate(client: &ClientHello) -> Result<AeadAlgorithm, NegotiationError> {
    let caps = &client.capabilities;
    if !caps.message.codecs.iter().any(|c| c == CODEC_JSON) {
        return Err(NegotiationError::UnsupportedCodec);
    }
    if caps.crypto.client_random.len() != RANDOM_LEN {
        return Err(NegotiationError::ClientRandomLength(
            caps.crypto.client_random.len(),
        ));
    }
    caps.crypto
        .algorithms
        .iter()
        .find_map(|name| AeadAlgorithm::from_name(name))
        .ok_or(NegotiationError::NoAlgorithm)
}

/// Client-side check of a ServerHello against the ClientHello we sent, as frpc
/// does it; returns the algorithm to use.
pub fn check_server_hello(
    client: &ClientHello,
    server: &ServerHello,
) -> Result<AeadAlgorithm, NegotiationError> {
    if !server.error.is_empty() {
        return Err(NegotiationError::Refused(server.error.clone()));
    }
    let sel = &server.selected;
    if sel.message.codec != CODEC_JSON {
        return Err(NegotiationError::SelectedCodec(sel.message.codec.clone()));
    }
    let name = &sel.crypto.algorithm;
    let alg = AeadAlgorithm::from_name(name)
        .ok_or_else(|| NegotiationError::SelectedAlgorithm(name.clone()))?;
    if !client.capabilities.crypto.algorithms.contains(name) {
        return Err(NegotiationError::NotOffered(name.clone()));
    }
    if sel.crypto.server_random.len() != RANDOM_LEN {
        return Err(NegotiationError::ServerRandomLength(
            sel.crypto.server_random.len(),
        ));
    }
    Ok(alg)
}

/// Fills an array from the system random number generator.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], V2Error> {
    let mut out = [0u8; N];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut out)
        .map_err(|_| V2Error::Random)?;
    Ok(out)
}

/// SHA-256 over the two hello payloads, binding the keys to this negotiation.
///
/// Input: the label `frp wire v2 crypto transcript`, then for each hello
/// `0x00 ‖ "client hello" / "server hello" ‖ 0x00 ‖ u64 BE length ‖ payload`.
/// The payloads are the exact bytes that were sent in the hello frames.
pub fn transcript_hash(client_hello_payload: &[u8], server_hello_payload: &[u8]) -> [u8; 32] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(TRANSCRIPT_LABEL);
    for (label, payload) in [
        (&b"client hello"[..], client_hello_payload),
        (&b"server hello"[..], server_hello_payload),
    ] {
        ctx.update(&[0]);
        ctx.update(label);
        ctx.update(&[0]);
        ctx.update(&(payload.len() as u64).to_be_bytes());
        ctx.update(payload);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// The two control-channel keys.
#[derive(Clone, PartialEq, Eq)]
pub struct ControlKeys {
    /// Key for frpc → frps records.
    pub c2s: [u8; 32],
    /// Key for frps → frpc records.
    pub s2c: [u8; 32],
}

impl std::fmt::Debug for ControlKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ControlKeys { .. }")
    }
}

/// Derives both directions' keys:
/// HKDF-SHA256(IKM = token, salt = transcript,
/// info = `frp wire v2 control aead <alg> client-to-server` / `server-to-client`).
pub fn derive_keys(token: &[u8], transcript: &[u8; 32], alg: AeadAlgorithm) -> ControlKeys {
    // HKDF written out with HMAC (RFC 5869): one 32-byte output block is
    // T(1) = HMAC(PRK, info ‖ 0x01). Unlike ring::hkdf this cannot fail, so
    // the function needs no error path; a test checks it against ring::hkdf.
    let prk = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, transcript), token);
    let prk = hmac::Key::new(hmac::HMAC_SHA256, prk.as_ref());
    let expand = |direction: &str| {
        let mut ctx = hmac::Context::with_key(&prk);
        ctx.update(b"frp wire v2 control aead ");
        ctx.update(alg.name().as_bytes());
        ctx.update(b" ");
        ctx.update(direction.as_bytes());
        ctx.update(&[1]);
        let mut key = [0u8; 32];
        key.copy_from_slice(ctx.sign().as_ref());
        key
    };
    ControlKeys {
        c2s: expand("client-to-server"),
        s2c: expand("server-to-client"),
    }
}

/// One direction's AEAD state shared by writer and reader: the cipher, the
/// stream nonce (fixed, authenticated in every record) and the running
/// per-record nonce.
struct RecordCipher {
    alg: AeadAlgorithm,
    key: CipherKey,
    stream_nonce: Vec<u8>,
    nonce: Vec<u8>,
    records: u64,
}

enum CipherKey {
    Aes(Box<aead::LessSafeKey>),
    XChaCha(chacha20poly1305::XChaCha20Poly1305),
}

impl RecordCipher {
    fn new(alg: AeadAlgorithm, key: &[u8; 32], nonce: Vec<u8>) -> Result<Self, V2Error> {
        let key = match alg {
            AeadAlgorithm::Aes256Gcm => CipherKey::Aes(Box::new(aead::LessSafeKey::new(
                aead::UnboundKey::new(&aead::AES_256_GCM, key)
                    .map_err(|_| V2Error::Crypto("aes-256-gcm key rejected"))?,
            ))),
            AeadAlgorithm::XChaCha20Poly1305 => {
                use chacha20poly1305::KeyInit;
                CipherKey::XChaCha(chacha20poly1305::XChaCha20Poly1305::new(&(*key).into()))
            }
        };
        Ok(RecordCipher {
            alg,
            key,
            stream_nonce: nonce.clone(),
            nonce,
            records: 0,
        })
    }

    fn check_budget(&self) -> Result<(), V2Error> {
        match self.alg.max_records() {
            Some(max) if self.records >= max => Err(V2Error::RecordLimit),
            _ => Ok(()),
        }
    }

    /// AAD of a record: stream nonce ‖ the record's 4-byte length.
    fn aad(&self, header: [u8; RECORD_HEADER_LEN]) -> Vec<u8> {
        let mut aad = Vec::with_capacity(self.stream_nonce.len() + RECORD_HEADER_LEN);
        aad.extend_from_slice(&self.stream_nonce);
        aad.extend_from_slice(&header);
        aad
    }

    /// Moves to the next record's nonce (big-endian increment over the whole
    /// nonce); wrapping around is the end of the stream.
    fn advance(&mut self) -> Result<(), V2Error> {
        self.records += 1;
        for byte in self.nonce.iter_mut().rev() {
            *byte = byte.wrapping_add(1);
            if *byte != 0 {
                return Ok(());
            }
        }
        Err(V2Error::RecordLimit)
    }

    /// Encrypts `buf` in place and returns the tag.
    fn seal(&self, aad: &[u8], buf: &mut [u8]) -> Result<[u8; TAG_LEN], V2Error> {
        match &self.key {
            CipherKey::Aes(key) => {
                let nonce = aead::Nonce::try_assume_unique_for_key(&self.nonce)
                    .map_err(|_| V2Error::Crypto("aes-256-gcm nonce length"))?;
                let tag = key
                    .seal_in_place_separate_tag(nonce, aead::Aad::from(aad), buf)
                    .map_err(|_| V2Error::Crypto("aes-256-gcm seal"))?;
                let mut out = [0u8; TAG_LEN];
                out.copy_from_slice(tag.as_ref());
                Ok(out)
            }
            CipherKey::XChaCha(cipher) => {
                use chacha20poly1305::AeadInPlace;
                let nonce = xnonce(&self.nonce)?;
                let tag = cipher
                    .encrypt_in_place_detached(&nonce, aad, buf)
                    .map_err(|_| V2Error::Crypto("xchacha20-poly1305 seal"))?;
                Ok(tag.into())
            }
        }
    }

    /// Decrypts `ciphertext ‖ tag` in place; the plaintext is the first
    /// `len - TAG_LEN` bytes afterwards.
    fn open(&self, aad: &[u8], buf: &mut [u8]) -> Result<(), V2Error> {
        match &self.key {
            CipherKey::Aes(key) => {
                let nonce = aead::Nonce::try_assume_unique_for_key(&self.nonce)
                    .map_err(|_| V2Error::Crypto("aes-256-gcm nonce length"))?;
                key.open_in_place(nonce, aead::Aad::from(aad), buf)
                    .map(|_| ())
                    .map_err(|_| V2Error::Authentication)
            }
            CipherKey::XChaCha(cipher) => {
                use chacha20poly1305::AeadInPlace;
                let nonce = xnonce(&self.nonce)?;
                let split = buf.len().saturating_sub(TAG_LEN);
                let (text, tag) = buf.split_at_mut(split);
                let tag: [u8; TAG_LEN] = (&*tag).try_into().map_err(|_| V2Error::Authentication)?;
                cipher
                    .decrypt_in_place_detached(&nonce, aad, text, &tag.into())
                    .map_err(|_| V2Error::Authentication)
            }
        }
    }
}

fn xnonce(nonce: &[u8]) -> Result<chacha20poly1305::XNonce, V2Error> {
    let n: [u8; 24] = nonce
        .try_into()
        .map_err(|_| V2Error::Crypto("xchacha20-poly1305 nonce length"))?;
    Ok(n.into())
}

/// Encrypting half of the v2 control channel.
///
/// Output: the stream nonce (sent once, before the first record), then
/// records `u32 BE ciphertext length ‖ ciphertext ‖ tag`, each holding at most
/// [`MAX_RECORD_PLAINTEXT`] bytes. After an error the writer stays failed.
pub struct AeadWriter {
    cipher: RecordCipher,
    nonce_sent: bool,
    failed: bool,
}

impl AeadWriter {
    /// A writer with a fresh random stream nonce.
    pub fn new(alg: AeadAlgorithm, key: [u8; 32]) -> Result<Self, V2Error> {
        let nonce = random_bytes::<24>()?;
        Self::with_nonce(alg, key, &nonce[..alg.nonce_len()])
    }

    /// A writer with a given stream nonce (for tests and replays; a nonce must
    /// never be reused with the same key).
    pub fn with_nonce(alg: AeadAlgorithm, key: [u8; 32], nonce: &[u8]) -> Result<Self, V2Error> {
        check_nonce_len(alg, nonce)?;
        Ok(AeadWriter {
            cipher: RecordCipher::new(alg, &key, nonce.to_vec())?,
            nonce_sent: false,
            failed: false,
        })
    }

    /// Encrypts `plaintext` and appends the bytes to send, as Go's writer
    /// does for one `Write`: nothing for empty input, the stream nonce before
    /// the first record, one record per 64 KiB. On error `out` is unchanged.
    pub fn seal(&mut self, plaintext: &[u8], out: &mut Vec<u8>) -> Result<(), V2Error> {
        if self.failed {
            return Err(V2Error::StreamFailed);
        }
        let start = out.len();
        let result = self.seal_records(plaintext, out);
        if result.is_err() {
            self.failed = true;
            out.truncate(start);
        }
        result
    }

    fn seal_records(&mut self, plaintext: &[u8], out: &mut Vec<u8>) -> Result<(), V2Error> {
        for chunk in plaintext.chunks(MAX_RECORD_PLAINTEXT) {
            self.cipher.check_budget()?;
            if !self.nonce_sent {
                out.extend_from_slice(&self.cipher.stream_nonce);
                self.nonce_sent = true;
            }
            let header = ((chunk.len() + TAG_LEN) as u32).to_be_bytes();
            out.extend_from_slice(&header);
            let body = out.len();
            out.extend_from_slice(chunk);
            let aad = self.cipher.aad(header);
            let tag = self.cipher.seal(&aad, &mut out[body..])?;
            out.extend_from_slice(&tag);
            self.cipher.advance()?;
        }
        Ok(())
    }
}

/// Decrypting half of the v2 control channel; see [`AeadWriter`] for the format.
pub struct AeadReader {
    cipher: RecordCipher,
    nonce_read: bool,
    failed: bool,
}

impl AeadReader {
    /// A reader; the stream nonce is taken from the first bytes it is fed.
    pub fn new(alg: AeadAlgorithm, key: [u8; 32]) -> Result<Self, V2Error> {
        Ok(AeadReader {
            cipher: RecordCipher::new(alg, &key, vec![0; alg.nonce_len()])?,
            nonce_read: false,
            failed: false,
        })
    }

    /// Consumes the stream nonce and every complete record at the front of
    /// `input`, appending their plaintext to `out`; returns the bytes
    /// consumed. A record length is checked as soon as its 4 bytes are there.
    ///
    /// Any error (bad length, failed authentication, exhausted nonce) ends the
    /// stream: plaintext of records before the bad one may already be in
    /// `out`, and every later call fails with [`V2Error::StreamFailed`].
    pub fn open(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, V2Error> {
        if self.failed {
            return Err(V2Error::StreamFailed);
        }
        let result = self.open_records(input, out);
        if result.is_err() {
            self.failed = true;
        }
        result
    }

    fn open_records(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, V2Error> {
        let mut used = 0;
        if !self.nonce_read {
            let n = self.cipher.alg.nonce_len();
            let Some(nonce) = input.get(..n) else {
                return Ok(0);
            };
            self.cipher.stream_nonce.copy_from_slice(nonce);
            self.cipher.nonce.copy_from_slice(nonce);
            self.nonce_read = true;
            used = n;
        }
        loop {
            let rest = &input[used..];
            let Some(header) = rest.first_chunk::<RECORD_HEADER_LEN>() else {
                return Ok(used);
            };
            self.cipher.check_budget()?;
            let len = u32::from_be_bytes(*header);
            if (len as usize) < TAG_LEN {
                return Err(V2Error::RecordTooShort(len));
            }
            if len as usize > MAX_RECORD_PLAINTEXT + TAG_LEN {
                return Err(V2Error::RecordTooLong(len));
            }
            let Some(sealed) = rest.get(RECORD_HEADER_LEN..RECORD_HEADER_LEN + len as usize) else {
                return Ok(used);
            };
            let aad = self.cipher.aad(*header);
            let start = out.len();
            out.extend_from_slice(sealed);
            if let Err(e) = self.cipher.open(&aad, &mut out[start..]) {
                out.truncate(start);
                return Err(e);
            }
            if let Err(e) = self.cipher.advance() {
                out.truncate(start);
                return Err(e);
            }
            out.truncate(out.len() - TAG_LEN);
            used += RECORD_HEADER_LEN + len as usize;
        }
    }
}

fn check_nonce_len(alg: AeadAlgorithm, nonce: &[u8]) -> Result<(), V2Error> {
    if nonce.len() != alg.nonce_len() {
        return Err(V2Error::NonceLength {
            alg: alg.name(),
            want: alg.nonce_len(),
            got: nonce.len(),
        });
    }
    Ok(())
}

fn is_false(b: &bool) -> bool {
    !*b
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msg;

    const TOKEN: &[u8] = b"test-token";

    /// Payload bytes of yamux stream 1 (the control stream) in one direction
    /// of a captured TCP connection.
    fn control_stream(hex_text: &str) -> Vec<u8> {
        let raw = hex::decode(hex_text.trim()).unwrap();
        let mut out = Vec::new();
        let mut at = 0;
        while at < raw.len() {
            let h = &raw[at..at + 12];
            let (ty, stream) = (h[1], u32::from_be_bytes([h[4], h[5], h[6], h[7]]));
            let len = u32::from_be_bytes([h[8], h[9], h[10], h[11]]) as usize;
            at += 12;
            if ty == 0 {
                if stream == 1 {
                    out.extend_from_slice(&raw[at..at + len]);
                }
                at += len;
            }
        }
        out
    }

    fn c2s() -> Vec<u8> {
        control_stream(include_str!(
            "../tests/vectors/v2-notls-mux-port27000.tcp0.c2s.hex"
        ))
    }

    fn s2c() -> Vec<u8> {
        control_stream(include_str!(
            "../tests/vectors/v2-notls-mux-port27000.tcp0.s2c.hex"
        ))
    }

    fn frame(buf: &[u8]) -> (FrameType, &[u8], usize) {
        let (ty, range, used) = decode_frame(buf).unwrap().expect("whole frame");
        (ty, &buf[range], used)
    }

    /// Decodes every v2 message frame in `buf`, checking each re-encodes
    /// byte for byte.
    fn messages(mut buf: &[u8]) -> Vec<Message> {
        let mut out = Vec::new();
        while !buf.is_empty() {
            let (ty, payload, used) = frame(buf);
            assert_eq!(ty, FrameType::Message);
            let m = decode_message(payload).unwrap();
            let mut again = Vec::new();
            encode_message(&m, &mut again).unwrap();
            assert_eq!(again, buf[..used], "re-encoding {} changed bytes", m.name());
            out.push(m);
            buf = &buf[used..];
        }
        out
    }

    struct Captured {
        client_hello: Vec<u8>,
        server_hello: Vec<u8>,
        /// c2s bytes after Login: the client's AEAD stream.
        c2s_sealed: Vec<u8>,
        /// s2c bytes after LoginResp: the server's AEAD stream.
        s2c_sealed: Vec<u8>,
        login: Message,
        login_resp: Message,
    }

    fn captured() -> Captured {
        let c2s = c2s();
        assert_eq!(detect_magic(&c2s), Some(true));
        let mut at = MAGIC.len();
        let (ty, client_hello, used) = frame(&c2s[at..]);
        assert_eq!(ty, FrameType::ClientHello);
        let client_hello = client_hello.to_vec();
        at += used;
        let (ty, payload, used) = frame(&c2s[at..]);
        assert_eq!(ty, FrameType::Message);
        let login = decode_message(payload).unwrap();
        messages(&c2s[at..at + used]);
        at += used;
        let c2s_sealed = c2s[at..].to_vec();

        let s2c = s2c();
        let (ty, server_hello, mut at) = frame(&s2c);
        assert_eq!(ty, FrameType::ServerHello);
        let server_hello = server_hello.to_vec();
        let (ty, payload, used) = frame(&s2c[at..]);
        assert_eq!(ty, FrameType::Message);
        let login_resp = decode_message(payload).unwrap();
        messages(&s2c[at..at + used]);
        at += used;
        Captured {
            client_hello,
            server_hello,
            c2s_sealed,
            s2c_sealed: s2c[at..].to_vec(),
            login,
            login_resp,
        }
    }

    #[test]
    fn captured_hellos_parse_and_reencode_exactly() {
        let cap = captured();
        let client = ClientHello::parse(&cap.client_hello).unwrap();
        assert_eq!(client.to_payload(), cap.client_hello);
        assert_eq!(
            String::from_utf8(cap.client_hello.clone()).unwrap(),
            r#"{"bootstrap":{"transport":"tcp","tcpMux":true},"capabilities":{"message":{"codecs":["json"]},"crypto":{"algorithms":["aes-256-gcm","xchacha20-poly1305"],"clientRandom":"B72QxCtBbjF+WrZ/woCyP4E+WWJkZTOiQPASB6fyW9U="}}}"#
        );
        assert_eq!(client.capabilities.crypto.client_random.len(), 32);
        let server = ServerHello::parse(&cap.server_hello).unwrap();
        assert_eq!(server.to_payload(), cap.server_hello);
        assert_eq!(
            check_server_hello(&client, &server),
            Ok(AeadAlgorithm::Aes256Gcm)
        );

        // Our server, given frps's random, answers with frps's exact bytes.
        let random: [u8; 32] = server
            .selected
            .crypto
            .server_random
            .clone()
            .try_into()
            .unwrap();
        let reply = server_hello(&client, random);
        assert_eq!(reply.payload, cap.server_hello);
        assert_eq!(reply.outcome, Ok(AeadAlgorithm::Aes256Gcm));

        // A ClientHello built like frpc builds it is byte-identical too.
        let client_random: [u8; 32] = client
            .capabilities
            .crypto
            .client_random
            .clone()
            .try_into()
            .unwrap();
        let ours = ClientHello::new(
            BootstrapInfo {
                transport: "tcp".into(),
                tls: false,
                tcp_mux: true,
            },
            &[AeadAlgorithm::Aes256Gcm, AeadAlgorithm::XChaCha20Poly1305],
            client_random,
        );
        assert_eq!(ours.to_payload(), cap.client_hello);
    }

    #[test]
    fn captured_login_frames() {
        let cap = captured();
        let Message::Login(login) = &cap.login else {
            panic!("want Login, got {:?}", cap.login)
        };
        assert_eq!(login.version, "0.70.1");
        assert_eq!(login.timestamp, 1795383974);
        assert_eq!(login.privilege_key, "c4d6dce911b0d9336c5efc817f5237b0");
        let Message::LoginResp(resp) = &cap.login_resp else {
            panic!("want LoginResp, got {:?}", cap.login_resp)
        };
        assert_eq!(resp.run_id, "0865ad53945f2e54");
    }

    /// The real proof the crypto is right: with token `test-token` we decrypt
    /// what frpc and frps v0.70.1 sent each other, and re-seal it to the
    /// very same ciphertext.
    #[test]
    fn captured_aead_control_stream_decrypts() {
        let cap = captured();
        let transcript = transcript_hash(&cap.client_hello, &cap.server_hello);
        let keys = derive_keys(TOKEN, &transcript, AeadAlgorithm::Aes256Gcm);

        let mut c2s_plain = Vec::new();
        let mut reader = AeadReader::new(AeadAlgorithm::Aes256Gcm, keys.c2s).unwrap();
        let used = reader.open(&cap.c2s_sealed, &mut c2s_plain).unwrap();
        assert_eq!(used, cap.c2s_sealed.len());
        let c2s_msgs = messages(&c2s_plain);
        assert_eq!(
            c2s_msgs,
            vec![Message::NewProxy(msg::NewProxy {
                proxy_name: "web".into(),
                proxy_type: "tcp".into(),
                remote_port: 26000,
                ..Default::default()
            })]
        );

        let mut s2c_plain = Vec::new();
        let mut reader = AeadReader::new(AeadAlgorithm::Aes256Gcm, keys.s2c).unwrap();
        let used = reader.open(&cap.s2c_sealed, &mut s2c_plain).unwrap();
        assert_eq!(used, cap.s2c_sealed.len());
        let s2c_msgs = messages(&s2c_plain);
        let names: Vec<&str> = s2c_msgs.iter().map(|m| m.name()).collect();
        assert_eq!(
            names,
            ["ReqWorkConn", "NewProxyResp", "ReqWorkConn"],
            "{s2c_msgs:?}"
        );
        assert_eq!(
            s2c_msgs[1],
            Message::NewProxyResp(msg::NewProxyResp {
                proxy_name: "web".into(),
                remote_addr: ":26000".into(),
                error: String::new(),
            })
        );

        // Re-seal with the captured stream nonce, one record per Go write
        // (frame header, then payload): identical ciphertext.
        for (sealed, key) in [(&cap.c2s_sealed, keys.c2s), (&cap.s2c_sealed, keys.s2c)] {
            let nonce = &sealed[..12];
            let mut reader = AeadReader::new(AeadAlgorithm::Aes256Gcm, key).unwrap();
            let mut writer = AeadWriter::with_nonce(AeadAlgorithm::Aes256Gcm, key, nonce).unwrap();
            let mut resealed = Vec::new();
            // Feed the reader one record at a time to learn the record layout.
            let mut at = reader.open(&sealed[..12], &mut Vec::new()).unwrap();
            while at < sealed.len() {
                let len = u32::from_be_bytes(sealed[at..at + 4].try_into().unwrap()) as usize;
                let mut plain = Vec::new();
                let n = reader.open(&sealed[at..at + 4 + len], &mut plain).unwrap();
                assert_eq!(n, 4 + len);
                writer.seal(&plain, &mut resealed).unwrap();
                at += n;
            }
            assert_eq!(&resealed, sealed);
        }

        // The wrong token fails authentication on the first record.
        let bad = derive_keys(b"other-token", &transcript, AeadAlgorithm::Aes256Gcm);
        let mut reader = AeadReader::new(AeadAlgorithm::Aes256Gcm, bad.s2c).unwrap();
        assert_eq!(
            reader.open(&cap.s2c_sealed, &mut Vec::new()),
            Err(V2Error::Authentication)
        );
        assert_eq!(
            reader.open(&cap.s2c_sealed, &mut Vec::new()),
            Err(V2Error::StreamFailed)
        );
    }

    #[test]
    fn hkdf_matches_ring() {
        struct Len32;
        impl ring::hkdf::KeyType for Len32 {
            fn len(&self) -> usize {
                32
            }
        }
        let transcript = transcript_hash(b"{}", b"{\"error\":\"x\"}");
        for alg in [AeadAlgorithm::Aes256Gcm, AeadAlgorithm::XChaCha20Poly1305] {
            let keys = derive_keys(TOKEN, &transcript, alg);
            let prk = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, &transcript).extract(TOKEN);
            for (dir, want) in [
                ("client-to-server", keys.c2s),
                ("server-to-client", keys.s2c),
            ] {
                let info = format!("frp wire v2 control aead {} {dir}", alg.name());
                let info = [info.as_bytes()];
                let okm = prk.expand(&info, Len32).unwrap();
                let mut got = [0u8; 32];
                okm.fill(&mut got).unwrap();
                assert_eq!(got, want, "{} {dir}", alg.name());
            }
            assert_ne!(keys.c2s, keys.s2c);
        }
    }

    #[test]
    fn transcript_layout() {
        // Recompute the hash by hand from the documented layout.
        let (c, s) = (b"ab".as_slice(), b"xyz".as_slice());
        let mut input = b"frp wire v2 crypto transcript".to_vec();
        input.extend_from_slice(b"\0client hello\0\0\0\0\0\0\0\0\x02ab");
        input.extend_from_slice(b"\0server hello\0\0\0\0\0\0\0\0\x03xyz");
        let want = digest::digest(&digest::SHA256, &input);
        assert_eq!(transcript_hash(c, s).as_slice(), want.as_ref());
    }

    #[test]
    fn xchacha_and_aes_round_trip_in_pieces() {
        for alg in [AeadAlgorithm::XChaCha20Poly1305, AeadAlgorithm::Aes256Gcm] {
            let key = [7u8; 32];
            let mut writer = AeadWriter::new(alg, key).unwrap();
            let mut wire = Vec::new();
            writer.seal(b"", &mut wire).unwrap();
            assert!(wire.is_empty(), "empty write sends nothing");
            writer.seal(b"hello", &mut wire).unwrap();
            assert_eq!(wire.len(), alg.nonce_len() + 4 + 5 + 16);
            let big = vec![0xabu8; MAX_RECORD_PLAINTEXT * 2 + 3];
            writer.seal(&big, &mut wire).unwrap();

            let mut reader = AeadReader::new(alg, key).unwrap();
            let mut plain = Vec::new();
            let mut pending = Vec::new();
            // Feed in odd-sized pieces like a socket would.
            for piece in wire.chunks(997) {
                pending.extend_from_slice(piece);
                let used = reader.open(&pending, &mut plain).unwrap();
                pending.drain(..used);
            }
            assert!(pending.is_empty());
            assert_eq!(&plain[..5], b"hello");
            assert_eq!(&plain[5..], &big[..]);
        }
    }

    #[test]
    fn record_lengths_refused_from_header() {
        let mut reader = AeadReader::new(AeadAlgorithm::Aes256Gcm, [0; 32]).unwrap();
        let mut input = vec![0u8; 12];
        input.extend_from_slice(&15u32.to_be_bytes());
        assert_eq!(
            reader.open(&input, &mut Vec::new()),
            Err(V2Error::RecordTooShort(15))
        );
        let mut reader = AeadReader::new(AeadAlgorithm::XChaCha20Poly1305, [0; 32]).unwrap();
        let mut input = vec![0u8; 24];
        input.extend_from_slice(&(65536u32 + 17).to_be_bytes());
        let err = reader.open(&input, &mut Vec::new()).unwrap_err();
        assert_eq!(err, V2Error::RecordTooLong(65553));
        assert_eq!(
            err.to_string(),
            "AEAD record length 65553 exceeds the 65552-byte limit"
        );
        // A partial nonce or record just waits.
        let mut reader = AeadReader::new(AeadAlgorithm::Aes256Gcm, [0; 32]).unwrap();
        assert_eq!(reader.open(&[0; 11], &mut Vec::new()), Ok(0));
        let mut partial = vec![0u8; 12];
        partial.extend_from_slice(&36u32.to_be_bytes());
        partial.extend_from_slice(&[0; 35]);
        assert_eq!(reader.open(&partial, &mut Vec::new()), Ok(12));
        assert_eq!(reader.open(&partial[12..], &mut Vec::new()), Ok(0));
    }

    #[test]
    fn tampering_is_detected() {
        let key = [3u8; 32];
        let mut nonce = [0xff; 12];
        nonce[11] = 0xfe;
        let mut wire = Vec::new();
        // Like Go, a record whose nonce cannot be advanced is not sent.
        let mut last = AeadWriter::with_nonce(AeadAlgorithm::Aes256Gcm, key, &[0xff; 12]).unwrap();
        assert_eq!(last.seal(b"one", &mut wire), Err(V2Error::RecordLimit));
        assert!(wire.is_empty());
        let mut writer = AeadWriter::with_nonce(AeadAlgorithm::Aes256Gcm, key, &nonce).unwrap();
        writer.seal(b"one", &mut wire).unwrap();
        // The nonce wraps after the next record: the writer refuses to go on.
        assert_eq!(writer.seal(b"two", &mut wire), Err(V2Error::RecordLimit));
        assert_eq!(writer.seal(b"three", &mut wire), Err(V2Error::StreamFailed));
        assert_eq!(wire.len(), 12 + 4 + 3 + 16);
        for i in 0..wire.len() {
            let mut bad = wire.clone();
            bad[i] ^= 1;
            let mut reader = AeadReader::new(AeadAlgorithm::Aes256Gcm, key).unwrap();
            let mut out = Vec::new();
            // Either refused, or (a flipped length) still waiting for bytes.
            match reader.open(&bad, &mut out) {
                Err(_) => {}
                Ok(used) => assert!(used < bad.len(), "flip at {i} undetected"),
            }
            assert!(out.is_empty());
        }
        assert!(AeadWriter::with_nonce(AeadAlgorithm::XChaCha20Poly1305, key, &[0; 12]).is_err());
    }

    #[test]
    fn frames_round_trip_and_refuse_bad_headers() {
        let mut buf = MAGIC.to_vec();
        assert_eq!(detect_magic(&buf[..3]), None);
        assert_eq!(detect_magic(b"o\0\0"), Some(false));
        assert_eq!(detect_magic(b""), None);
        encode_frame(FrameType::ClientHello, b"{}", &mut buf).unwrap();
        encode_message(&msg::ReqWorkConn {}.into(), &mut buf).unwrap();
        let at = MAGIC.len();
        assert_eq!(&buf[at..at + 10], b"\0\x01\0\0\0\0\0\x02{}");
        assert_eq!(
            &buf[at + 10..],
            b"\0\x10\0\0\0\0\0\x04\0\x07{}",
            "ReqWorkConn is type 16, length 4, id 7"
        );
        for cut in at..at + 10 {
            assert_eq!(decode_frame(&buf[at..cut]).unwrap(), None);
        }
        assert_eq!(
            decode_frame(b"\0\x10\0\x01\0\0\0\0"),
            Err(V2Error::Flags(1))
        );
        assert_eq!(
            decode_frame(b"\0\x03\0\0\0\0\0\0"),
            Err(V2Error::UnknownFrameType(3))
        );
        assert_eq!(
            decode_frame(b"\0\x10\0\0\0\x01\0\x01"),
            Err(V2Error::FrameTooLong(65537))
        );
        assert_eq!(decode_frame(b"\0\x10\0\0\0\x01\0\0").unwrap(), None);
        assert!(encode_frame(FrameType::Message, &[0; 65537], &mut Vec::new()).is_err());
        let huge = msg::Pong {
            error: "x".repeat(70000),
        };
        let mut out = vec![1];
        assert!(encode_message(&huge.into(), &mut out).is_err());
        assert_eq!(out, [1]);

        assert_eq!(decode_message(b"\0"), Err(V2Error::MessageTooShort(1)));
        assert_eq!(
            decode_message(b"\0\x13{}"),
            Err(V2Error::Message(MsgError::UnknownV2Type(19)))
        );
        assert!(matches!(
            decode_message(b"\0\x01{bad"),
            Err(V2Error::Message(MsgError::Json { msg: "Login", .. }))
        ));
    }

    #[test]
    fn negotiation_refusals() {
        let good = ClientHello::new(
            BootstrapInfo::default(),
            &[AeadAlgorithm::XChaCha20Poly1305],
            [9; 32],
        );
        let reply = server_hello(&good, [1; 32]);
        assert_eq!(reply.outcome, Ok(AeadAlgorithm::XChaCha20Poly1305));

        let mut unknown_first = good.clone();
        unknown_first.capabilities.crypto.algorithms = vec!["rot13".into(), "aes-256-gcm".into()];
        assert_eq!(
            server_hello(&unknown_first, [1; 32]).outcome,
            Ok(AeadAlgorithm::Aes256Gcm)
        );

        let mut none = good.clone();
        none.capabilities.crypto.algorithms = vec!["rot13".into()];
        let reply = server_hello(&none, [1; 32]);
        assert_eq!(reply.outcome, Err(NegotiationError::NoAlgorithm));
        // As frps: codec still json, crypto empty, reason in error.
        assert_eq!(
            String::from_utf8(reply.payload).unwrap(),
            r#"{"selected":{"message":{"codec":"json"},"crypto":{}},"error":"client offers no AEAD algorithm this server supports"}"#
        );

        let mut short = good.clone();
        short.capabilities.crypto.client_random.pop();
        assert_eq!(
            server_hello(&short, [1; 32]).outcome,
            Err(NegotiationError::ClientRandomLength(31))
        );
        let mut codec = good.clone();
        codec.capabilities.message.codecs = vec!["msgpack".into()];
        assert_eq!(
            server_hello(&codec, [1; 32]).outcome,
            Err(NegotiationError::UnsupportedCodec)
        );

        let server = server_hello(&good, [1; 32]).hello;
        let mut other = good.clone();
        other.capabilities.crypto.algorithms = vec!["aes-256-gcm".into()];
        assert_eq!(
            check_server_hello(&other, &server),
            Err(NegotiationError::NotOffered("xchacha20-poly1305".into()))
        );
        assert!(ClientHello::parse(b"[]").is_err());
        assert!(ServerHello::parse(b"{\"error\":1}").is_err());
    }
}
