//! A control connection driven by hand, for an attacker that never reads.
//!
//! The bench's [`Client`](crate::client::Client) always reads: its control
//! and yamux reader threads take whatever the server sends, which is what
//! keeps a server's queues towards it short. This one logs in as frpc does
//! (with tcpMux: on yamux stream 1, opened with a SYN), reads the LoginResp,
//! and from then on only writes: encrypted messages as frpc encrypts its
//! control stream (AES-CFB keyed by the token, IV first), inside yamux Data
//! frames with tcpMux. With tcpMux it ignores the stream's send window,
//! which it would only learn by reading: a server that stops reading will
//! find its window overrun.
//!
//! Plain TCP only (the attack systems run without TLS).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use proto::cfb::{derive_key, CfbStreamWriter};
use proto::frame;
use proto::msg::Message;
use proto::yamux::{Flags, FrameType, Header, HEADER_LEN};

use super::{dial, Target};
use crate::client::ClientError;

/// The yamux stream a tcpMux client's control runs on.
const CONTROL_STREAM: u32 = 1;

/// Largest yamux Data frame this sends.
const MAX_FRAME: usize = 16 * 1024;

/// A logged-in control connection that is never read again.
pub struct RawControl {
    sock: TcpStream,
    mux: bool,
    cipher: CfbStreamWriter,
}

impl RawControl {
    /// Connects from the attacker's address and logs in, `timeout` on the
    /// connect and on each read and write of the login.
    pub fn login(target: &Target, timeout: Duration) -> Result<RawControl, ClientError> {
        if target.tls {
            return Err(ClientError::Protocol(
                "the hand-driven control speaks plain TCP only".into(),
            ));
        }
        let mut sock = dial::connect(target.frp, timeout)?;
        sock.set_read_timeout(Some(timeout))?;
        sock.set_write_timeout(Some(timeout))?;
        let mut login = Vec::new();
        frame::encode(
            &Message::Login(target.client_opts(timeout).login_message()),
            &mut login,
        );
        let mut out = Vec::new();
        if target.mux {
            out.extend_from_slice(
                &Header::new(FrameType::WindowUpdate, Flags::SYN, CONTROL_STREAM, 0).to_bytes(),
            );
            data_frames(&login, &mut out);
        } else {
            out.extend_from_slice(&login);
        }
        sock.write_all(&out)?;
        let resp = match read_first_message(&mut sock, target.mux)? {
            Message::LoginResp(r) => r,
            other => {
                return Err(ClientError::Protocol(format!(
                    "expected LoginResp, got {}",
                    other.name()
                )))
            }
        };
        if !resp.error.is_empty() {
            return Err(ClientError::Refused(resp.error));
        }
        Ok(RawControl {
            sock,
            mux: target.mux,
            cipher: CfbStreamWriter::new(derive_key(target.token.as_bytes())),
        })
    }

    /// Appends `plain` (whole messages, framed) to `out` as it goes on the
    /// wire: encrypted, and in yamux Data frames with tcpMux.
    pub fn seal(&mut self, plain: &[u8], out: &mut Vec<u8>) {
        if !self.mux {
            self.cipher.encrypt_into(plain, out);
            return;
        }
        let mut enc = Vec::with_capacity(plain.len() + 16);
        self.cipher.encrypt_into(plain, &mut enc);
        data_frames(&enc, out);
    }

    /// The connection, to write to and to watch.
    pub fn socket(&self) -> &TcpStream {
        &self.sock
    }
}

/// `payload` as yamux Data frames of the control stream.
fn data_frames(payload: &[u8], out: &mut Vec<u8>) {
    for chunk in payload.chunks(MAX_FRAME) {
        let h = Header::new(
            FrameType::Data,
            Flags::NONE,
            CONTROL_STREAM,
            chunk.len() as u32,
        );
        out.extend_from_slice(&h.to_bytes());
        out.extend_from_slice(chunk);
    }
}

/// Reads until the first frp message of the control (on yamux stream 1
/// with tcpMux) is complete; the socket's read timeout bounds each read.
fn read_first_message(sock: &mut TcpStream, mux: bool) -> Result<Message, ClientError> {
    let mut raw = Vec::new();
    let mut msg = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if mux {
            take_control_data(&mut raw, &mut msg)?;
        } else {
            msg.append(&mut raw);
        }
        if let Some((m, _)) =
            frame::decode(&msg).map_err(|e| ClientError::Protocol(e.to_string()))?
        {
            return Ok(m);
        }
        let n = sock.read(&mut buf)?;
        if n == 0 {
            return Err(ClientError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
        raw.extend_from_slice(&buf[..n]);
    }
}

/// Moves the payload of complete yamux frames for the control stream from
/// `raw` to `msg`, dropping every other frame; a GoAway or a reset of the
/// control stream is the server's refusal.
fn take_control_data(raw: &mut Vec<u8>, msg: &mut Vec<u8>) -> Result<(), ClientError> {
    let mut at = 0;
    while let Some(head) = raw.get(at..at + HEADER_LEN) {
        let mut b = [0u8; HEADER_LEN];
        b.copy_from_slice(head);
        let h = Header::decode(&b).map_err(|e| ClientError::Protocol(e.to_string()))?;
        if h.frame_type == FrameType::GoAway {
            return Err(ClientError::Refused(format!("yamux GoAway({})", h.length)));
        }
        if h.stream_id == CONTROL_STREAM && h.flags.contains(Flags::RST) {
            return Err(ClientError::Refused("control stream reset".into()));
        }
        let body = if h.frame_type == FrameType::Data {
            h.length as usize
        } else {
            0
        };
        let Some(payload) = raw.get(at + HEADER_LEN..at + HEADER_LEN + body) else {
            break;
        };
        if h.stream_id == CONTROL_STREAM {
            msg.extend_from_slice(payload);
        }
        at += HEADER_LEN + body;
    }
    raw.drain(..at);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::msg::LoginResp;

    fn frame_of(stream: u32, ty: FrameType, flags: Flags, payload: &[u8]) -> Vec<u8> {
        let len = if ty == FrameType::Data {
            payload.len() as u32
        } else {
            0
        };
        let mut v = Header::new(ty, flags, stream, len).to_bytes().to_vec();
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn control_data_is_picked_out_of_other_frames_in_pieces() {
        let mut m = Vec::new();
        frame::encode(
            &Message::LoginResp(LoginResp {
                run_id: "r".into(),
                ..Default::default()
            }),
            &mut m,
        );
        let mut wire = frame_of(1, FrameType::WindowUpdate, Flags::ACK, &[]);
        wire.extend(frame_of(3, FrameType::Data, Flags::NONE, b"other"));
        wire.extend(frame_of(1, FrameType::Data, Flags::NONE, &m[..5]));
        wire.extend(frame_of(0, FrameType::Ping, Flags::SYN, &[]));
        wire.extend(frame_of(1, FrameType::Data, Flags::NONE, &m[5..]));
        let (mut raw, mut msg) = (Vec::new(), Vec::new());
        // Byte by byte: frames cut anywhere wait for the rest.
        for b in wire {
            raw.push(b);
            take_control_data(&mut raw, &mut msg).unwrap();
        }
        assert!(raw.is_empty());
        assert_eq!(msg, m);
    }

    #[test]
    fn go_away_and_reset_are_refusals() {
        let (mut msg, mut raw) = (Vec::new(), frame_of(0, FrameType::GoAway, Flags::NONE, &[]));
        assert!(matches!(
            take_control_data(&mut raw, &mut msg),
            Err(ClientError::Refused(_))
        ));
        let mut raw = frame_of(1, FrameType::WindowUpdate, Flags::RST, &[]);
        assert!(matches!(
            take_control_data(&mut raw, &mut msg),
            Err(ClientError::Refused(_))
        ));
    }
}
