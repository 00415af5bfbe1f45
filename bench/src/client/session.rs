//! frp client sessions: login, the encrypted control channel, proxies and
//! work connections, as upstream frpc does them.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use proto::cfb::{CfbStreamReader, CfbStreamWriter};
use proto::frame;
use proto::msg::{
    ClientSpec, Login, Message, NewProxy, NewProxyResp, NewVisitorConn, NewWorkConn, Ping,
};
use proto::wire_v2::{
    self, AeadAlgorithm, AeadReader, AeadWriter, BootstrapInfo, ClientHello, FrameType, ServerHello,
};

use super::codec::{DecodeReader, EncodeWriter};
use super::mux::MuxClient;
use super::transport::{BoxRead, BoxWrite, Dial, WriteHalf};

/// Settings of a client, named after frpc.toml's.
#[derive(Debug, Clone)]
pub struct ClientOpts {
    /// serverAddr:serverPort.
    pub server: SocketAddr,
    /// auth.token.
    pub token: String,
    /// transport.tls.enable.
    pub tls: bool,
    /// !transport.tls.disableCustomTLSFirstByte.
    pub tls_custom_byte: bool,
    /// Offer TLS 1.2 only (frpc built with an old Go; tests the server's
    /// rustls record path).
    pub tls12_only: bool,
    /// transport.tcpMux.
    pub mux: bool,
    /// transport.poolCount.
    pub pool_count: i64,
    /// user.
    pub user: String,
    /// Version string sent in Login.
    pub version: String,
    /// Hostname sent in Login (frpc 0.67+).
    pub hostname: String,
    /// Timestamp override (tests); None = now.
    pub timestamp: Option<i64>,
    /// run_id to reclaim.
    pub run_id: String,
    /// App-level Ping interval; frpc 0.58+ uses 30 s without tcpMux, none with it.
    pub heartbeat: Option<Duration>,
    /// transport.wireProtocol = "v2" (frpc 0.69+).
    pub wire_v2: bool,
    /// AEAD algorithms offered in the v2 ClientHello, in preference order.
    pub v2_algorithms: Vec<AeadAlgorithm>,
    /// metadatas (sent as Login.metas), e.g. `ticket` for a Totoro invite.
    pub metas: std::collections::BTreeMap<String, String>,
    /// Proxy type sent in NewProxy (frpc.toml `type`); only tcp carries data.
    pub proxy_type: String,
    /// Limit on each step of the login: the TCP connect, each read and
    /// write of the TLS handshake, and the wait for LoginResp (a login
    /// that runs out fails with `io::ErrorKind::TimedOut`). Also applies to
    /// the connects of work connections without tcpMux. None: no limit, as
    /// frpc (whose dialServerTimeout covers only the connect).
    pub timeout: Option<Duration>,
}

impl ClientOpts {
    /// frpc 0.70.1 defaults for a server at `server` with `token`.
    pub fn new(server: SocketAddr, token: &str) -> Self {
        ClientOpts {
            server,
            token: token.to_string(),
            tls: true,
            tls_custom_byte: false,
            tls12_only: false,
            mux: true,
            pool_count: 1,
            user: String::new(),
            version: "0.70.1".into(),
            hostname: String::new(),
            timestamp: None,
            run_id: String::new(),
            heartbeat: None,
            wire_v2: false,
            v2_algorithms: vec![AeadAlgorithm::Aes256Gcm, AeadAlgorithm::XChaCha20Poly1305],
            metas: Default::default(),
            proxy_type: "tcp".into(),
            timeout: None,
        }
    }
}

impl ClientOpts {
    /// The Login message frpc sends with these settings, signed for
    /// `timestamp` (or now).
    pub fn login_message(&self) -> Login {
        let ts = self.timestamp.unwrap_or_else(now_secs);
        Login {
            version: self.version.clone(),
            hostname: self.hostname.clone(),
            os: "linux".into(),
            arch: "amd64".into(),
            user: self.user.clone(),
            privilege_key: proto::auth::privilege_key(&self.token, ts),
            timestamp: ts,
            run_id: self.run_id.clone(),
            client_spec: ClientSpec::default(),
            pool_count: self.pool_count,
            metas: self.metas.clone(),
            ..Default::default()
        }
    }
}

/// One proxy to register.
#[derive(Debug, Clone)]
pub struct ProxySpec {
    /// Proxy name (the `user.` prefix is added like frpc does).
    pub name: String,
    /// remotePort; 0 = server picks.
    pub remote_port: i64,
    /// localIP:localPort.
    pub local: SocketAddr,
    /// transport.useEncryption.
    pub use_encryption: bool,
    /// transport.useCompression.
    pub use_compression: bool,
    /// transport.bandwidthLimit with bandwidthLimitMode = "server" (the
    /// server enforces it); empty = none.
    pub server_bandwidth_limit: String,
}

impl ProxySpec {
    /// A proxy `name` to `local` on `remote_port` (0: the server picks),
    /// without encryption, compression or a bandwidth limit.
    pub fn plain(name: &str, remote_port: u16, local: SocketAddr) -> ProxySpec {
        ProxySpec {
            name: name.into(),
            remote_port: i64::from(remote_port),
            local,
            use_encryption: false,
            use_compression: false,
            server_bandwidth_limit: String::new(),
        }
    }
}

/// Why a client operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    #[error("refused by server: {0}")]
    Refused(String),
    #[error("protocol: {0}")]
    Protocol(String),
}

/// Reads frames (v1, or v2 after the magic) from a byte stream, optionally
/// inside the control channel's cipher.
pub struct MsgStream<R> {
    inner: R,
    buf: Vec<u8>,
    cipher: Option<CfbStreamReader>,
    aead: Option<(AeadReader, Vec<u8>)>,
    v2: bool,
}

impl<R: Read> MsgStream<R> {
    /// Plaintext v1 reader.
    pub fn new(inner: R) -> Self {
        MsgStream {
            inner,
            buf: Vec::new(),
            cipher: None,
            aead: None,
            v2: false,
        }
    }

    /// Plaintext v2 reader (the magic has been sent, not read).
    pub fn new_v2(inner: R) -> Self {
        MsgStream {
            inner,
            buf: Vec::new(),
            cipher: None,
            aead: None,
            v2: true,
        }
    }

    /// Switch to AES-CFB (IV first) with `key`.
    pub fn encrypt(&mut self, key: [u8; 16]) {
        let mut c = CfbStreamReader::new(key);
        let plain = c.decrypt_in_place(&mut self.buf).to_vec();
        self.buf = plain;
        self.cipher = Some(c);
    }

    /// Switch to v2 AEAD records.
    pub fn encrypt_aead(&mut self, alg: AeadAlgorithm, key: [u8; 32]) -> Result<(), ClientError> {
        let r = AeadReader::new(alg, key).map_err(|e| ClientError::Protocol(e.to_string()))?;
        let carry = std::mem::take(&mut self.buf);
        self.aead = Some((r, Vec::new()));
        self.absorb(&carry)
    }

    fn absorb(&mut self, data: &[u8]) -> Result<(), ClientError> {
        match (&mut self.cipher, &mut self.aead) {
            (Some(c), _) => {
                let mut d = data.to_vec();
                let p = c.decrypt_in_place(&mut d);
                self.buf.extend_from_slice(p);
            }
            (None, Some((r, carry))) => {
                carry.extend_from_slice(data);
                let used = r
                    .open(carry, &mut self.buf)
                    .map_err(|e| ClientError::Protocol(e.to_string()))?;
                carry.drain(..used);
            }
            (None, None) => self.buf.extend_from_slice(data),
        }
        Ok(())
    }

    fn fill(&mut self) -> Result<(), ClientError> {
        let mut tmp = [0u8; 16 * 1024];
        let n = self.inner.read(&mut tmp)?;
        if n == 0 {
            return Err(ClientError::Io(io::ErrorKind::UnexpectedEof.into()));
        }
        self.absorb(&tmp[..n])
    }

    /// Read one v2 frame of any type.
    pub fn next_frame(&mut self) -> Result<(FrameType, Vec<u8>), ClientError> {
        loop {
            if let Some((ty, range, used)) = wire_v2::decode_frame(&self.buf)
                .map_err(|e| ClientError::Protocol(e.to_string()))?
            {
                let payload = self.buf[range].to_vec();
                self.buf.drain(..used);
                return Ok((ty, payload));
            }
            self.fill()?;
        }
    }

    /// Read one message.
    pub fn next_msg(&mut self) -> Result<Message, ClientError> {
        if self.v2 {
            let (ty, payload) = self.next_frame()?;
            if ty != FrameType::Message {
                return Err(ClientError::Protocol(format!("unexpected v2 {ty:?} frame")));
            }
            return wire_v2::decode_message(&payload)
                .map_err(|e| ClientError::Protocol(e.to_string()));
        }
        loop {
            match frame::decode(&self.buf).map_err(|e| ClientError::Protocol(e.to_string()))? {
                Some((m, used)) => {
                    self.buf.drain(..used);
                    return Ok(m);
                }
                None => self.fill()?,
            }
        }
    }

    /// Bytes buffered past the last message, and the reader.
    pub fn into_parts(self) -> (Vec<u8>, R) {
        (self.buf, self.inner)
    }
}

/// Read exactly one plaintext message and not a byte more, as frpc does on
/// work connections (the payload that follows belongs to the relay).
pub fn read_msg_exact(r: &mut dyn Read, v2: bool) -> Result<Message, ClientError> {
    let proto_err = |e: &dyn std::fmt::Display| ClientError::Protocol(e.to_string());
    if v2 {
        let mut head = [0u8; wire_v2::FRAME_HEADER_LEN];
        r.read_exact(&mut head)?;
        let len = u32::from_be_bytes([head[4], head[5], head[6], head[7]]) as usize;
        if len > wire_v2::MAX_FRAME_PAYLOAD {
            return Err(ClientError::Protocol(format!("bad v2 frame length {len}")));
        }
        let mut payload = vec![0u8; len];
        r.read_exact(&mut payload)?;
        return wire_v2::decode_message(&payload).map_err(|e| proto_err(&e));
    }
    let mut head = [0u8; frame::HEADER_LEN];
    r.read_exact(&mut head)?;
    let len = i64::from_be_bytes(head[1..9].try_into().unwrap_or([0; 8]));
    if !(0..=frame::MAX_MSG_LEN as i64).contains(&len) {
        return Err(ClientError::Protocol(format!("bad message length {len}")));
    }
    let mut whole = head.to_vec();
    whole.resize(frame::HEADER_LEN + len as usize, 0);
    r.read_exact(&mut whole[frame::HEADER_LEN..])?;
    match frame::decode(&whole).map_err(|e| proto_err(&e))? {
        Some((m, _)) => Ok(m),
        None => Err(ClientError::Protocol("short message".into())),
    }
}

/// One message, framed (v1, or v2 without the magic).
pub(super) fn encode_msg(msg: &Message, v2: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    encode_msg_into(msg, v2, &mut out);
    out
}

/// [`encode_msg`], appended to `out`.
pub(super) fn encode_msg_into(msg: &Message, v2: bool, out: &mut Vec<u8>) {
    if v2 {
        let _ = wire_v2::encode_message(msg, out);
    } else {
        frame::encode(msg, out);
    }
}

// One per control channel; boxing the common (CFB) case would only add
// an indirection.
#[allow(clippy::large_enum_variant)]
enum ControlCipher {
    Cfb(CfbStreamWriter),
    Aead(Box<AeadWriter>),
}

struct ControlWriter {
    w: BoxWrite,
    cipher: ControlCipher,
}

impl ControlWriter {
    fn send(&mut self, msg: &Message) -> io::Result<()> {
        let mut out = Vec::with_capacity(256);
        match &mut self.cipher {
            ControlCipher::Cfb(c) => c.encrypt_into(&encode_msg(msg, false), &mut out),
            ControlCipher::Aead(a) => {
                // Like Go: header and payload are two writes, two records.
                let plain = encode_msg(msg, true);
                let (h, b) = plain.split_at(wire_v2::FRAME_HEADER_LEN.min(plain.len()));
                a.seal(h, &mut out)
                    .and_then(|_| a.seal(b, &mut out))
                    .map_err(|e| io::Error::other(e.to_string()))?;
            }
        }
        self.w.write_all(&out)
    }
}

/// Shuts a socket down unless disarmed within a time limit: bounds a
/// login's wait for the server, whichever thread is blocked reading the
/// connection (the login itself, or the mux session's reader).
struct Deadline(Arc<(Mutex<DeadlineState>, Condvar)>);

#[derive(Clone, Copy, PartialEq, Eq)]
enum DeadlineState {
    Armed,
    Disarmed,
    Fired,
}

impl Deadline {
    fn arm(sock: TcpStream, limit: Duration) -> io::Result<Deadline> {
        let shared = Arc::new((Mutex::new(DeadlineState::Armed), Condvar::new()));
        let sh = shared.clone();
        std::thread::Builder::new()
            .name("frpc-deadline".into())
            .stack_size(64 * 1024)
            .spawn(move || {
                let (m, cond) = &*sh;
                let st = m.lock().unwrap_or_else(|e| e.into_inner());
                let (mut st, _) = cond
                    .wait_timeout_while(st, limit, |s| *s == DeadlineState::Armed)
                    .unwrap_or_else(|e| e.into_inner());
                if *st == DeadlineState::Armed {
                    *st = DeadlineState::Fired;
                    let _ = sock.shutdown(Shutdown::Both);
                }
            })?;
        Ok(Deadline(shared))
    }

    /// Stops the watchdog; false if it has already shut the socket down.
    fn disarm(&self) -> bool {
        let (m, cond) = &*self.0;
        let mut st = m.lock().unwrap_or_else(|e| e.into_inner());
        if *st == DeadlineState::Fired {
            return false;
        }
        *st = DeadlineState::Disarmed;
        cond.notify_all();
        true
    }

    /// Whether the watchdog has shut the socket down.
    fn fired(&self) -> bool {
        *self.0 .0.lock().unwrap_or_else(|e| e.into_inner()) == DeadlineState::Fired
    }
}

impl Drop for Deadline {
    fn drop(&mut self) {
        self.disarm();
    }
}

/// Closes a mux session when dropped, unless disarmed: a login that fails
/// after the session started must not leave its reader thread (and the
/// connection) behind until the server hangs up.
struct CloseOnFail(Option<MuxClient>);

impl CloseOnFail {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for CloseOnFail {
    fn drop(&mut self) {
        if let Some(m) = self.0.take() {
            m.close();
        }
    }
}

struct Inner {
    opts: ClientOpts,
    run_id: String,
    key: [u8; 16],
    dial: Dial,
    mux: Option<MuxClient>,
    ctl: Mutex<ControlWriter>,
    /// The connection to the server, for [`Client::kill`]: a writer blocked
    /// on a server that stopped reading holds `ctl` (or the mux session's
    /// writer) for as long as it blocks, so killing must not wait for it.
    conn: TcpStream,
    proxies: Mutex<HashMap<String, ProxySpec>>,
    /// The proxies registered as `udp`: their work connections carry
    /// messages ([`super::udp`]).
    udp_proxies: Mutex<std::collections::HashSet<String>>,
    /// The proxies registered as `xtcp`: their work connections bring a
    /// NatHoleSid.
    xtcp_proxies: Mutex<std::collections::HashSet<String>>,
    /// Messages no one waits for by name (NatHoleResp, NatHoleSid), for
    /// [`Client::next_message`].
    others: Mutex<std::collections::VecDeque<Message>>,
    others_cond: Condvar,
    /// Set by [`Client::pause_udp`]: udp work connections are not read.
    udp_paused: Arc<AtomicBool>,
    resps: Mutex<HashMap<String, NewProxyResp>>,
    resp_cond: Condvar,
    closed: AtomicBool,
    /// Set by [`Client::stop_heartbeat`]: the Ping thread sends no more.
    heartbeat_stopped: AtomicBool,
    work_conns: AtomicU64,
    pongs: AtomicU64,
}

/// A logged-in client.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl Inner {
    /// Keep a message for [`Client::next_message`].
    fn deliver(&self, m: Message) {
        let mut q = self.others.lock().unwrap_or_else(|e| e.into_inner());
        // Bounded: a test that never asks does not grow without end.
        if q.len() < 1024 {
            q.push_back(m);
        }
        self.others_cond.notify_all();
    }

    fn open_conn(&self) -> io::Result<(BoxRead, BoxWrite)> {
        match &self.mux {
            Some(m) => {
                let s = m.open()?;
                Ok((Box::new(s.clone()), Box::new(s)))
            }
            None => self.dial.connect(),
        }
    }
}

impl Client {
    /// Connect and log in. A LoginResp with an error is `ClientError::Refused`.
    ///
    /// The returned client keeps background threads (control reader, mux
    /// session) until its connection ends: end it with [`Client::kill`]
    /// rather than just dropping the handle. A failed login leaves nothing
    /// running (bar a mux timer that notices within half a second).
    pub fn login(opts: ClientOpts) -> Result<Client, ClientError> {
        let dial = Dial {
            addr: opts.server,
            tls: opts.tls,
            tls_custom_byte: opts.tls_custom_byte,
            tls12_only: opts.tls12_only,
            timeout: opts.timeout,
        };
        let (r, w, sock) = dial.connect_with_handle()?;
        let conn = sock.try_clone()?;
        let deadline = match opts.timeout {
            Some(t) => Some(Deadline::arm(sock, t)?),
            None => None,
        };
        // An error once the deadline has shut the socket is its doing.
        let timed_out = |e: ClientError| -> ClientError {
            if deadline.as_ref().is_some_and(Deadline::fired) {
                ClientError::Io(io::Error::new(io::ErrorKind::TimedOut, "login timed out"))
            } else {
                e
            }
        };
        let (mux, mut r, mut w): (Option<MuxClient>, BoxRead, BoxWrite) = if opts.mux {
            let m = MuxClient::start_on(r, w, conn.try_clone()?);
            let s = match m.open() {
                Ok(s) => s,
                Err(e) => {
                    m.close();
                    return Err(e.into());
                }
            };
            (Some(m), Box::new(s.clone()), Box::new(s))
        } else {
            (None, r, w)
        };
        let mux_guard = CloseOnFail(mux.clone());
        let login = opts.login_message();
        let v2 = opts.wire_v2;
        let mut hello_payload = Vec::new();
        let mut first = Vec::new();
        if v2 {
            let random = wire_v2::random_bytes::<{ wire_v2::RANDOM_LEN }>()
                .map_err(|e| ClientError::Protocol(e.to_string()))?;
            let boot = BootstrapInfo {
                transport: "tcp".into(),
                tls: opts.tls,
                tcp_mux: opts.mux,
            };
            let hello = ClientHello::new(boot, &opts.v2_algorithms, random);
            hello_payload = hello.to_payload();
            first.extend_from_slice(&wire_v2::MAGIC);
            wire_v2::encode_frame(FrameType::ClientHello, &hello_payload, &mut first)
                .map_err(|e| ClientError::Protocol(e.to_string()))?;
        }
        first.extend_from_slice(&encode_msg(&Message::Login(login), v2));
        w.write_all(&first).map_err(|e| timed_out(e.into()))?;
        let mut ms = if v2 {
            MsgStream::new_v2(&mut r)
        } else {
            MsgStream::new(&mut r)
        };
        let mut v2_keys = None;
        if v2 {
            let (ty, server_payload) = ms.next_frame().map_err(timed_out)?;
            if ty != FrameType::ServerHello {
                return Err(ClientError::Protocol(format!(
                    "expected ServerHello, got {ty:?}"
                )));
            }
            let server = ServerHello::parse(&server_payload)
                .map_err(|e| ClientError::Protocol(e.to_string()))?;
            let client = ClientHello::parse(&hello_payload)
                .map_err(|e| ClientError::Protocol(e.to_string()))?;
            match wire_v2::check_server_hello(&client, &server) {
                Ok(alg) => {
                    let t = wire_v2::transcript_hash(&hello_payload, &server_payload);
                    v2_keys = Some((alg, wire_v2::derive_keys(opts.token.as_bytes(), &t, alg)));
                }
                Err(e) => return Err(ClientError::Refused(e.to_string())),
            }
        }
        let resp = match ms.next_msg().map_err(timed_out)? {
            Message::LoginResp(r) => r,
            other => return Err(unexpected("LoginResp", &other)),
        };
        if !resp.error.is_empty() {
            return Err(ClientError::Refused(resp.error));
        }
        if let Some(d) = &deadline {
            if !d.disarm() {
                // Fired just as the answer came: the connection is gone.
                return Err(timed_out(ClientError::Protocol(String::new())));
            }
        }
        let key = proto::cfb::derive_key(opts.token.as_bytes());
        let (pending, _) = ms.into_parts();
        let cipher = match &v2_keys {
            Some((alg, keys)) => ControlCipher::Aead(Box::new(
                AeadWriter::new(*alg, keys.c2s)
                    .map_err(|e| ClientError::Protocol(e.to_string()))?,
            )),
            None => ControlCipher::Cfb(CfbStreamWriter::new(key)),
        };
        let inner = Arc::new(Inner {
            run_id: resp.run_id,
            key,
            dial,
            mux,
            ctl: Mutex::new(ControlWriter { w, cipher }),
            conn,
            proxies: Mutex::new(HashMap::new()),
            udp_proxies: Mutex::new(std::collections::HashSet::new()),
            udp_paused: Arc::new(AtomicBool::new(false)),
            xtcp_proxies: Mutex::new(std::collections::HashSet::new()),
            others: Mutex::new(std::collections::VecDeque::new()),
            others_cond: Condvar::new(),
            resps: Mutex::new(HashMap::new()),
            resp_cond: Condvar::new(),
            closed: AtomicBool::new(false),
            heartbeat_stopped: AtomicBool::new(false),
            work_conns: AtomicU64::new(0),
            pongs: AtomicU64::new(0),
            opts,
        });
        let rd = inner.clone();
        std::thread::Builder::new()
            .name("frpc-control".into())
            .stack_size(256 * 1024)
            .spawn(move || {
                let mut ms = MsgStream {
                    inner: r,
                    buf: pending,
                    cipher: None,
                    aead: None,
                    v2,
                };
                match &v2_keys {
                    Some((alg, keys)) => {
                        if ms.encrypt_aead(*alg, keys.s2c).is_err() {
                            rd.closed.store(true, Ordering::Release);
                            rd.resp_cond.notify_all();
                            return;
                        }
                    }
                    None => ms.encrypt(rd.key),
                }
                while let Ok(msg) = ms.next_msg() {
                    match msg {
                        Message::ReqWorkConn(_) => {
                            let c = rd.clone();
                            let _ = std::thread::Builder::new()
                                .stack_size(256 * 1024)
                                .spawn(move || work_conn(c));
                        }
                        Message::NewProxyResp(r) => {
                            rd.resps
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .insert(r.proxy_name.clone(), r);
                            rd.resp_cond.notify_all();
                        }
                        Message::Pong(_) => {
                            rd.pongs.fetch_add(1, Ordering::Relaxed);
                        }
                        other => rd.deliver(other),
                    }
                }
                rd.closed.store(true, Ordering::Release);
                rd.resp_cond.notify_all();
            })?;
        if let Some(every) = inner.opts.heartbeat {
            let hb = Arc::downgrade(&inner);
            std::thread::Builder::new()
                .stack_size(64 * 1024)
                .spawn(move || loop {
                    let Some(c) = hb.upgrade() else { break };
                    if c.closed.load(Ordering::Acquire)
                        || c.heartbeat_stopped.load(Ordering::Acquire)
                    {
                        break;
                    }
                    let r = c
                        .ctl
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .send(&Message::Ping(Ping::default()));
                    drop(c);
                    if r.is_err() {
                        break;
                    }
                    std::thread::sleep(every);
                })?;
        }
        mux_guard.disarm();
        Ok(Client { inner })
    }

    /// The run_id the server assigned.
    pub fn run_id(&self) -> &str {
        &self.inner.run_id
    }

    /// Register a proxy and wait for NewProxyResp. Ok(remote_addr) or the
    /// server's error string.
    pub fn add_proxy(&self, spec: ProxySpec) -> Result<String, ClientError> {
        self.register_proxy(spec, |_| {})
    }

    /// Register a virtual-host proxy (`proxy_type` "https", say) reached
    /// by `custom_domains` and/or `subdomain`; as [`Client::add_proxy`].
    pub fn add_vhost_proxy(
        &self,
        spec: ProxySpec,
        proxy_type: &str,
        custom_domains: &[&str],
        subdomain: &str,
    ) -> Result<String, ClientError> {
        self.register_proxy(spec, |np| {
            np.proxy_type = proxy_type.into();
            np.custom_domains = custom_domains.iter().map(|d| d.to_string()).collect();
            np.sub_domain = subdomain.into();
        })
    }

    /// Register a proxy whose NewProxy `adjust` completes (type, domains,
    /// users, ...); as [`Client::add_proxy`].
    pub fn register_proxy(
        &self,
        spec: ProxySpec,
        adjust: impl FnOnce(&mut NewProxy),
    ) -> Result<String, ClientError> {
        let name = if self.inner.opts.user.is_empty() {
            spec.name.clone()
        } else {
            format!("{}.{}", self.inner.opts.user, spec.name)
        };
        self.inner
            .proxies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.clone(), spec.clone());
        let mut np = NewProxy {
            proxy_name: name.clone(),
            proxy_type: self.inner.opts.proxy_type.clone(),
            use_encryption: spec.use_encryption,
            use_compression: spec.use_compression,
            remote_port: spec.remote_port,
            bandwidth_limit: spec.server_bandwidth_limit.clone(),
            bandwidth_limit_mode: if spec.server_bandwidth_limit.is_empty() {
                String::new()
            } else {
                "server".into()
            },
            ..Default::default()
        };
        adjust(&mut np);
        if np.proxy_type == "xtcp" {
            self.inner
                .xtcp_proxies
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(name.clone());
        }
        if np.proxy_type == "udp" || np.proxy_type == "sudp" {
            self.inner
                .udp_proxies
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(name.clone());
        }
        self.send(&Message::NewProxy(np))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut resps = self.inner.resps.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(r) = resps.remove(&name) {
                if r.error.is_empty() {
                    return Ok(r.remote_addr);
                }
                self.inner
                    .proxies
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&name);
                return Err(ClientError::Refused(r.error));
            }
            if self.inner.closed.load(Ordering::Acquire) {
                return Err(ClientError::Io(io::ErrorKind::ConnectionAborted.into()));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ClientError::Protocol("no NewProxyResp within 10 s".into()));
            }
            resps = self
                .inner
                .resp_cond
                .wait_timeout(resps, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Register a plain proxy (no encryption or compression) to `local` and
    /// return the public port the server gave it.
    pub fn add_plain_proxy(
        &self,
        name: &str,
        remote_port: u16,
        local: std::net::SocketAddr,
    ) -> Result<u16, ClientError> {
        let addr = self.add_proxy(ProxySpec::plain(name, remote_port, local))?;
        addr.trim_start_matches(':')
            .parse()
            .map_err(|_| ClientError::Protocol(format!("remote_addr {addr:?} is not :port")))
    }

    /// Send CloseProxy.
    pub fn close_proxy(&self, name: &str) -> Result<(), ClientError> {
        self.inner
            .proxies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
        self.send(&Message::CloseProxy(proto::msg::CloseProxy {
            proxy_name: name.to_string(),
        }))
    }

    /// Send any control message (encrypted).
    pub fn send(&self, msg: &Message) -> Result<(), ClientError> {
        Ok(self
            .inner
            .ctl
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(msg)?)
    }

    /// Open a visitor connection to the secret proxy `proxy` (its full
    /// name, `user.name`) as frpc's stcp/sudp visitor does: NewVisitorConn
    /// signed with `sk` at `timestamp` (None: now), then the stream,
    /// wrapped in `useEncryption` (key: `sk`) and `useCompression` as
    /// asked. The server's refusal is `ClientError::Refused`.
    pub fn visit(
        &self,
        proxy: &str,
        sk: &str,
        timestamp: Option<i64>,
        use_encryption: bool,
        use_compression: bool,
    ) -> Result<(DecodeReader<BoxRead>, EncodeWriter<BoxWrite>), ClientError> {
        let (mut r, mut w) = self.inner.open_conn()?;
        let v2 = self.inner.opts.wire_v2;
        let ts = timestamp.unwrap_or_else(now_secs);
        let mut first = Vec::new();
        if v2 {
            first.extend_from_slice(&wire_v2::MAGIC);
        }
        let nvc = Message::NewVisitorConn(NewVisitorConn {
            run_id: self.inner.run_id.clone(),
            proxy_name: proxy.to_string(),
            sign_key: proto::auth::privilege_key(sk, ts),
            timestamp: ts,
            use_encryption,
            use_compression,
        });
        first.extend_from_slice(&encode_msg(&nvc, v2));
        w.write_all(&first)?;
        match read_msg_exact(&mut r, v2)? {
            Message::NewVisitorConnResp(resp) if resp.error.is_empty() => {}
            Message::NewVisitorConnResp(resp) => return Err(ClientError::Refused(resp.error)),
            other => return Err(unexpected("NewVisitorConnResp", &other)),
        }
        let key = use_encryption.then(|| proto::cfb::derive_key(sk.as_bytes()));
        Ok((
            DecodeReader::new(r, key, use_compression),
            EncodeWriter::new(w, key, use_compression),
        ))
    }

    /// The first message the server sent that nothing else took (a
    /// NatHoleResp on the control, a NatHoleSid on an xtcp proxy's work
    /// connection) for which `pick` holds, waiting up to `limit`.
    pub fn next_message(
        &self,
        limit: Duration,
        pick: impl Fn(&Message) -> bool,
    ) -> Option<Message> {
        let deadline = Instant::now() + limit;
        let mut q = self.inner.others.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(i) = q.iter().position(&pick) {
                return q.remove(i);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            q = self
                .inner
                .others_cond
                .wait_timeout(q, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Stop reading (true) or read again (false) the work connections of
    /// `udp` proxies: a frpc too slow for what its users send.
    pub fn pause_udp(&self, paused: bool) {
        self.inner.udp_paused.store(paused, Ordering::Release);
    }

    /// Pongs received so far.
    pub fn pongs(&self) -> u64 {
        self.inner.pongs.load(Ordering::Relaxed)
    }

    /// Work connections opened so far.
    pub fn work_conns(&self) -> u64 {
        self.inner.work_conns.load(Ordering::Relaxed)
    }

    /// Whether the control channel has ended.
    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::Acquire)
    }

    /// Send no more Pings (a client that hangs without its connection
    /// going away); the server's heartbeat timeout then ends the session.
    pub fn stop_heartbeat(&self) {
        self.inner.heartbeat_stopped.store(true, Ordering::Release);
    }

    /// End the session as an exiting frpc does: a TLS close_notify (with
    /// TLS) and a FIN on the connection; the server then hangs up, which
    /// ends the background threads.
    pub fn close(&self) {
        self.inner.closed.store(true, Ordering::Release);
        match &self.inner.mux {
            Some(m) => m.shutdown(),
            None => self
                .inner
                .ctl
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .w
                .shutdown_write(),
        }
    }

    /// Drop the connection abruptly, like a killed frpc; returns at once
    /// even while a write to a server that stopped reading is blocked.
    pub fn kill(&self) {
        self.inner.closed.store(true, Ordering::Release);
        match &self.inner.mux {
            Some(m) => m.close(),
            None => {
                let _ = self.inner.conn.shutdown(Shutdown::Both);
            }
        }
    }
}

fn work_conn(c: Arc<Inner>) {
    let _ = (|| -> Result<(), ClientError> {
        // A client killed since the request dials nothing more.
        if c.closed.load(Ordering::Acquire) {
            return Ok(());
        }
        let (mut r, mut w) = c.open_conn()?;
        c.work_conns.fetch_add(1, Ordering::Relaxed);
        let v2 = c.opts.wire_v2;
        let mut hello = Vec::new();
        if v2 {
            hello.extend_from_slice(&wire_v2::MAGIC);
        }
        let nwc = Message::NewWorkConn(NewWorkConn {
            run_id: c.run_id.clone(),
            ..Default::default()
        });
        hello.extend_from_slice(&encode_msg(&nwc, v2));
        w.write_all(&hello)?;
        let start = match read_msg_exact(&mut r, v2)? {
            Message::StartWorkConn(s) => s,
            other => return Err(unexpected("StartWorkConn", &other)),
        };
        if !start.error.is_empty() {
            w.abort();
            return Err(ClientError::Refused(start.error));
        }
        let spec = c
            .proxies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&start.proxy_name)
            .cloned();
        let Some(spec) = spec else {
            w.abort();
            return Err(ClientError::Protocol(format!(
                "unknown proxy {}",
                start.proxy_name
            )));
        };
        let xtcp = c
            .xtcp_proxies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&start.proxy_name);
        if xtcp {
            // The broker's sid, then the server closes the connection.
            let sid = read_msg_exact(&mut r, v2)?;
            c.deliver(sid);
            return Ok(());
        }
        let key = spec.use_encryption.then_some(c.key);
        let udp = c
            .udp_proxies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&start.proxy_name);
        if udp {
            let work = super::udp::UdpWork {
                local: spec.local,
                key,
                compress: spec.use_compression,
                v2,
                paused: c.udp_paused.clone(),
            };
            super::udp::serve(work, r, w);
            return Ok(());
        }
        let local = TcpStream::connect(spec.local)?;
        local.set_nodelay(true)?;
        join(local, r, w, key, spec.use_compression);
        Ok(())
    })();
}

/// Copies `from` to `to` in 64 KiB reads until either ends or fails.
fn copy_until_end(from: &mut impl Read, to: &mut impl Write) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
}

/// The error for a message other than the one the protocol expects next.
fn unexpected(want: &str, got: &Message) -> ClientError {
    ClientError::Protocol(format!("expected {want}, got {}", got.name()))
}

/// Relay like frp's `Join`: copy both ways; when either direction ends,
/// close both connections.
fn join(local: TcpStream, r: BoxRead, w: BoxWrite, key: Option<[u8; 16]>, compress: bool) {
    let mut work_r = DecodeReader::new(r, key, compress);
    let mut work_w = EncodeWriter::new(w, key, compress);
    let mut local_r = match local.try_clone() {
        Ok(l) => l,
        Err(_) => return,
    };
    let mut local_w = local;
    let done = Arc::new(AtomicBool::new(false));
    let local_shut = match local_w.try_clone() {
        Ok(l) => l,
        Err(_) => return,
    };
    let d2 = done.clone();
    let t = std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(move || {
            copy_until_end(&mut local_r, &mut work_w);
            work_w.shutdown_write();
            d2.store(true, Ordering::Release);
        });
    copy_until_end(&mut work_r, &mut local_w);
    let _ = local_shut.shutdown(Shutdown::Both);
    if let Ok(t) = t {
        let _ = t.join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// Logs in to a server that accepts (through its backlog) and never
    /// says a word, with a 200 ms limit.
    fn login_silent(tls: bool, mux: bool) -> (Result<Client, ClientError>, Duration) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut opts = ClientOpts::new(l.local_addr().unwrap(), "t");
        opts.tls = tls;
        opts.mux = mux;
        opts.timeout = Some(Duration::from_millis(200));
        let t = Instant::now();
        let r = Client::login(opts);
        (r, t.elapsed())
    }

    fn assert_timed_out(r: Result<Client, ClientError>, took: Duration) {
        match r {
            Err(ClientError::Io(e)) => assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}"),
            Err(e) => panic!("expected a timeout, got {e}"),
            Ok(_) => panic!("logged in to a silent server"),
        }
        assert!(
            took >= Duration::from_millis(150) && took < Duration::from_secs(3),
            "{took:?}"
        );
    }

    #[test]
    fn login_timeout_bounds_the_wait_for_login_resp() {
        for mux in [false, true] {
            let (r, took) = login_silent(false, mux);
            assert_timed_out(r, took);
        }
    }

    #[test]
    fn login_timeout_bounds_the_tls_handshake() {
        let (r, took) = login_silent(true, true);
        assert_timed_out(r, took);
    }
}
