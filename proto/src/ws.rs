//! WebSocket (RFC 6455), sans-IO: the server side of the opening handshake
//! and the frame layer, as seed 003's relays speak them (`/ws/data`,
//! `/ws/mesh`: one seed frame per binary message).
//!
//! The handshake parser takes the bytes read so far and says whether the
//! request head is complete; the frame parser reads a frame's head and
//! leaves the payload where it is, so a relay unmasks it in place and hands
//! the same bytes on. Limits are the caller's: a head over
//! [`MAX_REQUEST_HEAD`], a frame over `max_payload`, an unmasked client
//! frame, set reserved bits, an unknown opcode or a fragmented or oversized
//! control frame are errors that name what was wrong.

use base64::Engine as _;

/// The GUID RFC 6455 appends to the client's key.
pub const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Largest request head accepted, bytes.
pub const MAX_REQUEST_HEAD: usize = 8 * 1024;

/// Largest control frame payload (RFC 6455 §5.5).
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key`.
pub fn accept_key(client_key: &str) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(client_key.trim().as_bytes());
    ctx.update(GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(ctx.finish())
}

/// A complete, valid upgrade request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upgrade {
    /// The request target's path (query removed).
    pub path: String,
    /// `Sec-WebSocket-Key`.
    pub key: String,
    /// Bytes of the head, the blank line included (anything after it is
    /// the first frame's).
    pub head_len: usize,
}

/// Why a request is not a WebSocket upgrade.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpgradeError {
    /// The head is longer than [`MAX_REQUEST_HEAD`].
    #[error("request head over {MAX_REQUEST_HEAD} bytes")]
    TooLarge,
    /// Not HTTP/1.1 at all.
    #[error("malformed request: {0}")]
    Malformed(String),
    /// HTTP, but not an upgrade to WebSocket version 13 by GET.
    #[error("not a WebSocket upgrade: {0}")]
    NotUpgrade(&'static str),
}

impl UpgradeError {
    /// The HTTP status to answer with.
    pub fn status(&self) -> u16 {
        match self {
            UpgradeError::TooLarge => 431,
            UpgradeError::Malformed(_) => 400,
            UpgradeError::NotUpgrade(_) => 426,
        }
    }
}

fn has_token(value: &[u8], token: &str) -> bool {
    std::str::from_utf8(value)
        .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}

/// Parse an upgrade request from the bytes read so far: `Ok(None)` while
/// the head is incomplete.
pub fn parse_upgrade(buf: &[u8]) -> Result<Option<Upgrade>, UpgradeError> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > MAX_REQUEST_HEAD => {
            return Err(UpgradeError::TooLarge)
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(UpgradeError::Malformed("more than 32 headers".into()))
        }
        Err(e) => return Err(UpgradeError::Malformed(e.to_string())),
    };
    if head_len > MAX_REQUEST_HEAD {
        return Err(UpgradeError::TooLarge);
    }
    if req.method != Some("GET") {
        return Err(UpgradeError::NotUpgrade("the method must be GET"));
    }
    if req.version != Some(1) {
        return Err(UpgradeError::NotUpgrade("the version must be HTTP/1.1"));
    }
    let (mut upgrade, mut connection, mut version, mut key) = (false, false, false, None);
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("upgrade") {
            upgrade |= has_token(h.value, "websocket");
        } else if h.name.eq_ignore_ascii_case("connection") {
            connection |= has_token(h.value, "upgrade");
        } else if h.name.eq_ignore_ascii_case("sec-websocket-version") {
            version = h.value == b"13";
        } else if h.name.eq_ignore_ascii_case("sec-websocket-key") {
            key = std::str::from_utf8(h.value)
                .ok()
                .map(|k| k.trim().to_owned());
        }
    }
    if !upgrade || !connection {
        return Err(UpgradeError::NotUpgrade(
            "Upgrade: websocket and Connection: Upgrade are required",
        ));
    }
    if !version {
        return Err(UpgradeError::NotUpgrade("Sec-WebSocket-Version must be 13"));
    }
    // 16 random bytes, base64: 24 characters.
    let key = key
        .filter(|k| {
            base64::engine::general_purpose::STANDARD
                .decode(k)
                .is_ok_and(|raw| raw.len() == 16)
        })
        .ok_or(UpgradeError::NotUpgrade(
            "Sec-WebSocket-Key must be 16 bytes in base64",
        ))?;
    // Origin form (`/ws/data?x`), or absolute form (`ws://host/ws/data`)
    // reduced to its path; anything else (`*`, `?x`) names no endpoint.
    let target = req.path.unwrap_or("/");
    let target = match target.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("/", |i| &rest[i..]),
        None => target,
    };
    if !target.starts_with('/') {
        return Err(UpgradeError::Malformed(format!(
            "request target {:?} is not a path",
            target.chars().take(64).collect::<String>()
        )));
    }
    let path = target.split('?').next().unwrap_or("/").to_owned();
    Ok(Some(Upgrade {
        path,
        key,
        head_len,
    }))
}

/// The 101 answer that completes the handshake.
pub fn upgrade_response(key: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n\r\n",
        accept_key(key)
    )
    .into_bytes()
}

/// The client side: an upgrade request for `path` on `host` with a key
/// made from 16 random bytes; the key is returned to check the answer.
pub fn upgrade_request(host: &str, path: &str, random: [u8; 16]) -> (Vec<u8>, String) {
    let key = base64::engine::general_purpose::STANDARD.encode(random);
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    (req.into_bytes(), key)
}

/// The client side: the server's answer to [`upgrade_request`] with `key`
/// in `buf`. `Ok(Some(head_len))` once a valid 101 is complete (frames may
/// follow it in `buf`), `Ok(None)` while the head is incomplete, Err with
/// what was wrong (the status line and body of a refusal).
pub fn check_upgrade_answer(buf: &[u8], key: &str) -> Result<Option<usize>, String> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        if buf.len() > MAX_REQUEST_HEAD {
            return Err("upgrade answer head too long".into());
        }
        return Ok(None);
    };
    let head = String::from_utf8_lossy(&buf[..end]);
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or("");
    if status.split(' ').nth(1) != Some("101") {
        let body = String::from_utf8_lossy(&buf[end + 4..]);
        return Err(format!("upgrade refused: {status} {body}"));
    }
    let want = accept_key(key);
    let accepted = lines.any(|l| {
        l.split_once(':').is_some_and(|(name, value)| {
            name.trim().eq_ignore_ascii_case("sec-websocket-accept") && value.trim() == want
        })
    });
    if !accepted {
        return Err("upgrade answer without the right Sec-WebSocket-Accept".into());
    }
    Ok(Some(end + 4))
}

/// A refusal before the upgrade: `status` with `reason` as a plain body,
/// and the connection closed.
pub fn refusal_response(status: u16, reason: &str) -> Vec<u8> {
    let phrase = match status {
        400 => "Bad Request",
        404 => "Not Found",
        426 => "Upgrade Required",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    };
    let extra = if status == 426 {
        "Sec-WebSocket-Version: 13\r\nUpgrade: websocket\r\n"
    } else {
        ""
    };
    format!(
        "HTTP/1.1 {status} {phrase}\r\n{extra}Content-Type: text/plain\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{reason}",
        reason.len()
    )
    .into_bytes()
}

/// Frame opcodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opcode {
    /// A later fragment of a message.
    Continuation,
    /// A text message (not used by seed 003).
    Text,
    /// A binary message.
    Binary,
    /// Close.
    Close,
    /// Ping.
    Ping,
    /// Pong.
    Pong,
}

impl Opcode {
    fn from_bits(b: u8) -> Option<Opcode> {
        Some(match b {
            0 => Opcode::Continuation,
            1 => Opcode::Text,
            2 => Opcode::Binary,
            8 => Opcode::Close,
            9 => Opcode::Ping,
            10 => Opcode::Pong,
            _ => return None,
        })
    }

    fn bits(self) -> u8 {
        match self {
            Opcode::Continuation => 0,
            Opcode::Text => 1,
            Opcode::Binary => 2,
            Opcode::Close => 8,
            Opcode::Ping => 9,
            Opcode::Pong => 10,
        }
    }

    /// Close, Ping and Pong.
    pub fn is_control(self) -> bool {
        matches!(self, Opcode::Close | Opcode::Ping | Opcode::Pong)
    }
}

/// A frame's head; its payload follows in the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHead {
    /// Last fragment of its message.
    pub fin: bool,
    /// What it is.
    pub opcode: Opcode,
    /// The masking key (frames from clients carry one).
    pub mask: Option<[u8; 4]>,
    /// Payload bytes.
    pub len: usize,
    /// Bytes of the head.
    pub head_len: usize,
}

/// Why a frame is refused (the connection is closed with 1002 or 1009).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// RSV1-3 set without an extension that defines them.
    #[error("reserved bits set")]
    Reserved,
    /// An opcode RFC 6455 does not define.
    #[error("unknown opcode {0}")]
    Opcode(u8),
    /// A client frame without a mask.
    #[error("client frames must be masked")]
    Unmasked,
    /// A control frame that is fragmented or over 125 bytes.
    #[error("control frames must be whole and at most 125 bytes")]
    Control,
    /// Over the caller's limit.
    #[error("frame of {0} bytes is over the limit of {1}")]
    TooLarge(u64, usize),
}

impl FrameError {
    /// The close code to send (1009 for too large, 1002 otherwise).
    pub fn close_code(&self) -> u16 {
        match self {
            FrameError::TooLarge(..) => 1009,
            _ => 1002,
        }
    }
}

/// Read a frame head from `buf`: `Ok(None)` while incomplete (the payload
/// need not be there yet). `masked` says whether frames must carry a mask
/// (a server reads client frames: true).
pub fn parse_head(
    buf: &[u8],
    masked: bool,
    max_payload: usize,
) -> Result<Option<FrameHead>, FrameError> {
    let (Some(&b0), Some(&b1)) = (buf.first(), buf.get(1)) else {
        return Ok(None);
    };
    if b0 & 0x70 != 0 {
        return Err(FrameError::Reserved);
    }
    let fin = b0 & 0x80 != 0;
    let opcode = Opcode::from_bits(b0 & 0x0F).ok_or(FrameError::Opcode(b0 & 0x0F))?;
    let has_mask = b1 & 0x80 != 0;
    if masked && !has_mask {
        return Err(FrameError::Unmasked);
    }
    let (len, mut at) = match b1 & 0x7F {
        126 => {
            let Some(b) = buf.get(2..4) else {
                return Ok(None);
            };
            (u64::from(u16::from_be_bytes([b[0], b[1]])), 4)
        }
        127 => {
            let Some(b) = buf.get(2..10) else {
                return Ok(None);
            };
            let mut a = [0; 8];
            a.copy_from_slice(b);
            (u64::from_be_bytes(a), 10)
        }
        n => (u64::from(n), 2),
    };
    if opcode.is_control() && (!fin || len > MAX_CONTROL_PAYLOAD as u64) {
        return Err(FrameError::Control);
    }
    if len > max_payload as u64 {
        return Err(FrameError::TooLarge(len, max_payload));
    }
    let mask = if has_mask {
        let Some(m) = buf.get(at..at + 4) else {
            return Ok(None);
        };
        at += 4;
        Some([m[0], m[1], m[2], m[3]])
    } else {
        None
    };
    Ok(Some(FrameHead {
        fin,
        opcode,
        mask,
        // Bounded by max_payload above.
        len: len as usize,
        head_len: at,
    }))
}

/// XOR `data` with `mask`, starting at byte `offset` of the payload (so a
/// payload may be unmasked in pieces).
pub fn apply_mask(data: &mut [u8], mask: [u8; 4], offset: usize) {
    // A zero key changes nothing (relay-to-relay links use it: the mask
    // guards HTTP caches against a browser's frames, and a relay is none).
    if mask == [0; 4] {
        return;
    }
    // Rotate the key so that data[0] pairs with the payload's byte offset.
    let k = u32::from_ne_bytes([
        mask[offset % 4],
        mask[(offset + 1) % 4],
        mask[(offset + 2) % 4],
        mask[(offset + 3) % 4],
    ]);
    let mut chunks = data.chunks_exact_mut(4);
    for c in &mut chunks {
        let v = u32::from_ne_bytes([c[0], c[1], c[2], c[3]]) ^ k;
        c.copy_from_slice(&v.to_ne_bytes());
    }
    let kb = k.to_ne_bytes();
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= kb[i];
    }
}

/// Append a frame head for a payload of `len` bytes (with `mask`, the
/// caller masks the payload with [`apply_mask`]).
pub fn encode_head(
    opcode: Opcode,
    fin: bool,
    len: usize,
    mask: Option<[u8; 4]>,
    out: &mut Vec<u8>,
) {
    out.push(if fin { 0x80 } else { 0 } | opcode.bits());
    let m = if mask.is_some() { 0x80 } else { 0 };
    if len < 126 {
        out.push(m | len as u8);
    } else if len <= usize::from(u16::MAX) {
        out.push(m | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(m | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    if let Some(k) = mask {
        out.extend_from_slice(&k);
    }
}

/// A Close frame's payload: the code and a reason (cut to fit 125 bytes
/// at a character boundary).
pub fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut out = code.to_be_bytes().to_vec();
    let mut end = reason.len().min(MAX_CONTROL_PAYLOAD - 2);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    out.extend_from_slice(&reason.as_bytes()[..end]);
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_client_handshake_meets_the_server_one() {
        let (req, key) = super::upgrade_request("r1:8444", "/ws/mesh", [7; 16]);
        let up = super::parse_upgrade(&req).unwrap().unwrap();
        assert_eq!(
            (up.path.as_str(), up.key.as_str()),
            ("/ws/mesh", key.as_str())
        );
        let mut answer = super::upgrade_response(&up.key);
        let head = answer.len();
        assert_eq!(
            super::check_upgrade_answer(&answer[..head - 1], &key),
            Ok(None)
        );
        answer.extend_from_slice(b"\x82\x00");
        assert_eq!(super::check_upgrade_answer(&answer, &key), Ok(Some(head)));
        let other = super::upgrade_response("dGhlIHNhbXBsZSBub25jZQ==");
        assert!(super::check_upgrade_answer(&other, &key).is_err());
        let refused = super::refusal_response(404, "no such endpoint");
        let e = super::check_upgrade_answer(&refused, &key).unwrap_err();
        assert!(e.contains("404") && e.contains("no such endpoint"), "{e}");
    }

    use super::*;

    #[test]
    fn the_rfc_example_key_is_accepted() {
        // RFC 6455 §1.3.
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    const REQ: &str = "GET /ws/data?x=1 HTTP/1.1\r\nHost: r\r\nUpgrade: websocket\r\n\
        Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Sec-WebSocket-Version: 13\r\n\r\n";

    #[test]
    fn upgrade_requests_are_parsed_in_pieces_and_checked() {
        let b = REQ.as_bytes();
        for cut in 0..b.len() {
            assert_eq!(parse_upgrade(&b[..cut]), Ok(None), "{cut}");
        }
        let mut with_frame = b.to_vec();
        with_frame.extend_from_slice(&[0x82, 0x80, 1, 2, 3, 4]);
        let u = parse_upgrade(&with_frame).unwrap().unwrap();
        assert_eq!(
            (u.path.as_str(), u.key.as_str(), u.head_len),
            ("/ws/data", "dGhlIHNhbXBsZSBub25jZQ==", b.len())
        );
        let resp = String::from_utf8(upgrade_response(&u.key)).unwrap();
        assert!(resp.starts_with("HTTP/1.1 101 "));
        assert!(resp.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));

        for (bad, status) in [
            (REQ.replace("GET", "POST"), 426),
            (REQ.replace("Version: 13", "Version: 8"), 426),
            (REQ.replace("Upgrade: websocket", "Upgrade: h2c"), 426),
            (REQ.replace("keep-alive, Upgrade", "close"), 426),
            (REQ.replace("dGhlIHNhbXBsZSBub25jZQ==", "short"), 426),
            (REQ.replace("HTTP/1.1", "HTTP/1.0"), 426),
            ("GARBAGE\0\r\n\r\n".to_string(), 400),
            (REQ.replace("/ws/data?x=1", "????ws/data"), 400),
            (REQ.replace("/ws/data?x=1", "*"), 400),
        ] {
            let e = parse_upgrade(bad.as_bytes()).unwrap_err();
            assert_eq!(e.status(), status, "{bad:?}: {e}");
        }
        let long = format!("GET / HTTP/1.1\r\nX: {}\r\n", "a".repeat(MAX_REQUEST_HEAD));
        assert_eq!(parse_upgrade(long.as_bytes()), Err(UpgradeError::TooLarge));
        let absolute = REQ.replace("/ws/data?x=1", "ws://relay.example:8444/ws/data?y");
        assert_eq!(
            parse_upgrade(absolute.as_bytes()).unwrap().unwrap().path,
            "/ws/data"
        );
        let r = String::from_utf8(refusal_response(426, "no")).unwrap();
        assert!(r.contains("Sec-WebSocket-Version: 13") && r.ends_with("\r\n\r\nno"));
    }

    #[test]
    fn frames_round_trip_at_every_length_class() {
        for len in [0usize, 1, 125, 126, 65535, 65536, 100_000] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let mask = [0xA1, 0xB2, 0xC3, 0xD4];
            let mut wire = Vec::new();
            encode_head(Opcode::Binary, true, len, Some(mask), &mut wire);
            let head_len = wire.len();
            let mut masked = payload.clone();
            apply_mask(&mut masked, mask, 0);
            wire.extend_from_slice(&masked);
            for cut in 0..head_len {
                assert_eq!(parse_head(&wire[..cut], true, 1 << 20), Ok(None));
            }
            let h = parse_head(&wire, true, 1 << 20).unwrap().unwrap();
            assert_eq!(
                (h.fin, h.opcode, h.mask, h.len, h.head_len),
                (true, Opcode::Binary, Some(mask), len, head_len)
            );
            // Unmasked in two pieces at an odd offset.
            let body = &mut wire[head_len..];
            let split = len / 3;
            let (a, b) = body.split_at_mut(split);
            apply_mask(a, mask, 0);
            apply_mask(b, mask, split);
            assert_eq!(body, &payload[..]);
        }
    }

    #[test]
    fn bad_frames_are_named() {
        assert_eq!(
            parse_head(&[0x82, 0x05], true, 100),
            Err(FrameError::Unmasked)
        );
        assert_eq!(
            parse_head(&[0xC2, 0x80], true, 100),
            Err(FrameError::Reserved)
        );
        assert_eq!(
            parse_head(&[0x83, 0x80], true, 100),
            Err(FrameError::Opcode(3))
        );
        assert_eq!(
            parse_head(&[0x09, 0x80], true, 100),
            Err(FrameError::Control)
        );
        assert_eq!(
            parse_head(&[0x89, 0xFE, 0, 126], true, 1000),
            Err(FrameError::Control)
        );
        assert_eq!(
            parse_head(
                &[0x82, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF],
                true,
                100
            ),
            Err(FrameError::TooLarge(u64::MAX, 100))
        );
        assert_eq!(FrameError::TooLarge(1, 0).close_code(), 1009);
        // Server frames come unmasked.
        let h = parse_head(&[0x8A, 0x00], false, 100).unwrap().unwrap();
        assert_eq!((h.opcode, h.mask, h.len), (Opcode::Pong, None, 0));
        let c = close_payload(1000, &"é".repeat(100));
        assert!(c.len() <= MAX_CONTROL_PAYLOAD);
        assert!(std::str::from_utf8(&c[2..]).is_ok());
    }
}
