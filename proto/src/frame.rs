//! frp's v1 message framing (golib `msg/json`): `type u8 | length i64 BE | JSON`.
//!
//! Every control, work and visitor connection speaks this framing unless the
//! client opted into [`wire_v2`](crate::wire_v2). The reader checks the type
//! byte as soon as it arrives and the length as soon as the 9-byte header is
//! complete, so a hostile length is refused before any of its body is
//! buffered. Bodies are capped at [`MAX_MSG_LEN`] bytes, as in Go.

use crate::msg::{is_known_type_byte, Message, MsgError};

/// Bytes in a frame header: type byte plus the 8-byte length.
pub const HEADER_LEN: usize = 9;

/// Largest body frp accepts (golib's default, never changed by frp).
pub const MAX_MSG_LEN: usize = 10240;

/// Why a v1 frame was refused.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// The first byte names no frp message.
    #[error("unknown message type byte 0x{0:02x}")]
    UnknownType(u8),
    /// The header announces a body over [`MAX_MSG_LEN`].
    #[error("message length {0} exceeds the {MAX_MSG_LEN}-byte limit")]
    TooLong(i64),
    /// The header announces a negative body length.
    #[error("message length {0} is negative")]
    NegativeLength(i64),
    /// The body is not valid JSON for its type.
    #[error(transparent)]
    Body(#[from] MsgError),
}

/// Appends one framed message to `out` (one contiguous run, as Go writes it).
///
/// Like Go, this does not enforce [`MAX_MSG_LEN`]; a peer refuses a body
/// longer than that, so callers building large messages must keep them under.
pub fn encode(msg: &Message, out: &mut Vec<u8>) {
    let start = out.len();
    out.push(msg.type_byte());
    out.extend_from_slice(&[0; 8]);
    msg.to_json(out);
    let body_len = (out.len() - start - HEADER_LEN) as i64;
    out[start + 1..start + HEADER_LEN].copy_from_slice(&body_len.to_be_bytes());
}

/// Decodes one message from the front of `buf`.
///
/// `Ok(None)` means more bytes are needed; `Ok(Some((msg, consumed)))` hands
/// back the message and how many bytes of `buf` it took.
pub fn decode(buf: &[u8]) -> Result<Option<(Message, usize)>, FrameError> {
    let Some((_, total)) = check_header(buf)? else {
        return Ok(None);
    };
    let Some(frame) = buf.get(..total) else {
        return Ok(None);
    };
    let msg = Message::from_json(frame[0], &frame[HEADER_LEN..])?;
    Ok(Some((msg, total)))
}

/// Validates as much of the header as `buf` holds.
///
/// Returns `Ok(None)` while the header is incomplete, else the body length
/// and the whole frame's length.
pub fn check_header(buf: &[u8]) -> Result<Option<(usize, usize)>, FrameError> {
    let Some(&type_byte) = buf.first() else {
        return Ok(None);
    };
    if !is_known_type_byte(type_byte) {
        return Err(FrameError::UnknownType(type_byte));
    }
    let Some(len_bytes) = buf.get(1..HEADER_LEN) else {
        return Ok(None);
    };
    let mut be = [0u8; 8];
    be.copy_from_slice(len_bytes);
    let len = i64::from_be_bytes(be);
    if len < 0 {
        return Err(FrameError::NegativeLength(len));
    }
    if len > MAX_MSG_LEN as i64 {
        return Err(FrameError::TooLong(len));
    }
    let body_len = len as usize;
    Ok(Some((body_len, HEADER_LEN + body_len)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msg::{self, type_byte};

    fn hex_file(text: &str) -> Vec<u8> {
        hex::decode(text.trim()).unwrap()
    }

    /// Decodes every frame in `bytes`, checking each re-encodes to the same bytes.
    fn decode_all(bytes: &[u8]) -> Vec<Message> {
        let mut out = Vec::new();
        let mut rest = bytes;
        while !rest.is_empty() {
            let (m, n) = decode(rest).unwrap().expect("truncated frame");
            let mut again = Vec::new();
            encode(&m, &mut again);
            assert_eq!(again, rest[..n], "re-encoding {} changed bytes", m.name());
            out.push(m);
            rest = &rest[n..];
        }
        out
    }

    #[test]
    fn captured_nomux_work_conn() {
        let c2s = hex_file(include_str!("../tests/vectors/nomux.tcp1.c2s.hex"));
        let s2c = hex_file(include_str!("../tests/vectors/nomux.tcp1.s2c.hex"));
        let msgs = decode_all(&c2s[..38]);
        assert_eq!(
            msgs,
            vec![Message::NewWorkConn(msg::NewWorkConn {
                run_id: "55e2c9e45f9e9131".into(),
                ..Default::default()
            })]
        );
        // StartWorkConn, then the raw user bytes follow on the same stream.
        let (m, n) = decode(&s2c).unwrap().unwrap();
        assert_eq!(n, 109);
        assert_eq!(&s2c[n..], b"FRP-ANCHOR-PING-0123456789\n");
        let Message::StartWorkConn(start) = m else {
            panic!("want StartWorkConn, got {m:?}")
        };
        assert_eq!(start.proxy_name, "web");
        assert_eq!(start.src_addr, "127.0.0.1");
        assert_eq!(start.src_port, 43520);
        assert_eq!(start.dst_port, 16000);
        decode_all(&s2c[..n]);
    }

    #[test]
    fn captured_nomux_login() {
        let c2s = hex_file(include_str!("../tests/vectors/nomux.tcp0.c2s.hex"));
        let s2c = hex_file(include_str!("../tests/vectors/nomux.tcp0.s2c.hex"));
        // Login and LoginResp are the plaintext prefix; AES-CFB follows.
        let (login, n) = decode(&c2s).unwrap().unwrap();
        assert_eq!(n, 179);
        let mut body = Vec::new();
        login.to_json(&mut body);
        assert_eq!(
            body,
            br#"{"version":"0.70.1","hostname":"vm","os":"linux","arch":"amd64","privilege_key":"f46948c4330a5294aa37186da62edea8","timestamp":1795383782,"client_spec":{},"pool_count":1}"#
        );
        decode_all(&c2s[..n]);
        let (resp, n) = decode(&s2c).unwrap().unwrap();
        assert_eq!(n, 57);
        assert_eq!(
            resp,
            Message::LoginResp(msg::LoginResp {
                version: "0.70.1".into(),
                run_id: "55e2c9e45f9e9131".into(),
                error: String::new(),
            })
        );
        decode_all(&s2c[..n]);
    }

    #[test]
    fn req_work_conn_bytes() {
        let mut out = Vec::new();
        encode(&msg::ReqWorkConn {}.into(), &mut out);
        assert_eq!(out, [0x72, 0, 0, 0, 0, 0, 0, 0, 2, b'{', b'}']);
    }

    #[test]
    fn partial_input_needs_more() {
        let mut frame = Vec::new();
        encode(&msg::NewProxy::default().into(), &mut frame);
        encode(&msg::Ping::default().into(), &mut frame);
        let first = 9 + 2;
        for cut in 0..first {
            assert_eq!(decode(&frame[..cut]).unwrap(), None, "cut at {cut}");
        }
        let (m, n) = decode(&frame).unwrap().unwrap();
        assert_eq!((m.type_byte(), n), (type_byte::NEW_PROXY, first));
        let (m, n) = decode(&frame[first..]).unwrap().unwrap();
        assert_eq!((m.type_byte(), n), (type_byte::PING, 11));
    }

    #[test]
    fn header_is_refused_before_body() {
        let mut big = vec![b'o'];
        big.extend_from_slice(&99999i64.to_be_bytes());
        let err = decode(&big).unwrap_err();
        assert_eq!(err, FrameError::TooLong(99999));
        assert_eq!(
            err.to_string(),
            "message length 99999 exceeds the 10240-byte limit"
        );

        let mut neg = vec![b'o'];
        neg.extend_from_slice(&(-1i64).to_be_bytes());
        assert_eq!(decode(&neg).unwrap_err(), FrameError::NegativeLength(-1));
        let mut min = vec![b'o'];
        min.extend_from_slice(&i64::MIN.to_be_bytes());
        assert_eq!(
            decode(&min).unwrap_err(),
            FrameError::NegativeLength(i64::MIN)
        );

        // Exactly the limit is allowed; the body is still awaited.
        let mut max = vec![b'o'];
        max.extend_from_slice(&(MAX_MSG_LEN as i64).to_be_bytes());
        assert_eq!(decode(&max).unwrap(), None);
        let mut over = vec![b'o'];
        over.extend_from_slice(&(MAX_MSG_LEN as i64 + 1).to_be_bytes());
        assert!(decode(&over).is_err());
    }

    #[test]
    fn unknown_type_refused_on_first_byte() {
        assert_eq!(decode(b"x").unwrap_err(), FrameError::UnknownType(b'x'));
        assert_eq!(
            decode(b"\x00").unwrap_err().to_string(),
            "unknown message type byte 0x00"
        );
        // 0x17 / 0x16 (TLS) are not frp types either.
        assert!(decode(b"\x16\x03\x01").is_err());
    }

    #[test]
    fn garbage_json_is_a_body_error() {
        let mut buf = vec![b'p'];
        buf.extend_from_slice(&5i64.to_be_bytes());
        buf.extend_from_slice(b"{oops");
        let err = decode(&buf).unwrap_err();
        assert!(matches!(
            err,
            FrameError::Body(MsgError::Json {
                msg: "NewProxy",
                ..
            })
        ));
        assert!(err.to_string().starts_with("malformed NewProxy message:"));

        let mut empty = vec![b'r'];
        empty.extend_from_slice(&0i64.to_be_bytes());
        assert!(decode(&empty).is_err());
    }
}
