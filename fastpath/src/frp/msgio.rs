//! Reading and writing frp messages over a [`Conn`] or
//! one of its halves, in either wire protocol, optionally inside the
//! control channel's cipher:
//!
//! | wire | framing                          | control channel after Login |
//! |------|----------------------------------|-----------------------------|
//! | v1   | type u8, length i64, JSON        | AES-128-CFB, IV first       |
//! | v2   | magic, then type u16, flags, length u32, payload | AEAD records (hello-negotiated) |

use std::io;
use std::time::Duration;

use proto::cfb::{CfbStreamReader, CfbStreamWriter};
use proto::frame::{self, FrameError};
use proto::msg::Message;
use proto::wire_v2::{self, AeadAlgorithm, AeadReader, AeadWriter, FrameType, V2Error};

use crate::transport::conn::{Conn, ConnReader, ConnWriter};

/// Which frp wire protocol a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    /// The classic framing (every frpc).
    V1,
    /// frp 0.69+'s opt-in `transport.wireProtocol = "v2"`.
    V2,
}

impl Wire {
    /// For logs.
    pub fn name(self) -> &'static str {
        match self {
            Wire::V1 => "v1",
            Wire::V2 => "v2",
        }
    }
}

/// Something we can read bytes from, owned-buffer style.
#[allow(async_fn_in_trait)]
pub trait ByteRead {
    /// Append received bytes to `buf`; 0 is EOF.
    async fn read_into(&mut self, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>);
}

impl ByteRead for Conn {
    async fn read_into(&mut self, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        self.read(buf).await
    }
}

impl ByteRead for ConnReader {
    async fn read_into(&mut self, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        self.read(buf).await
    }
}

/// Why reading a message failed.
#[derive(Debug, thiserror::Error)]
pub enum MsgError {
    #[error("connection closed")]
    Closed,
    #[error("timed out waiting for a message")]
    Timeout,
    #[error("read error: {0}")]
    Io(#[from] io::Error),
    #[error("malformed frame: {0}")]
    Frame(#[from] FrameError),
    #[error("malformed v2 frame: {0}")]
    V2(#[from] V2Error),
    #[error("unexpected v2 {0:?} frame")]
    UnexpectedFrame(FrameType),
}

impl MsgError {
    /// Whether the peer sent bytes we refuse (as opposed to going away).
    pub fn is_malformed(&self) -> bool {
        matches!(
            self,
            MsgError::Frame(_) | MsgError::V2(_) | MsgError::UnexpectedFrame(_)
        )
    }
}

/// The control channel's decryption, once Login is done.
// One per control channel; boxing the common (CFB) case would only add
// an indirection.
#[allow(clippy::large_enum_variant)]
enum Decrypt {
    None,
    Cfb(CfbStreamReader),
    Aead(Box<AeadReader>, Vec<u8>),
}

/// A v2 frame that is not a message (a hello).
pub struct RawFrame {
    /// Its type.
    pub ty: FrameType,
    /// Its payload.
    pub payload: Vec<u8>,
}

/// Accumulates bytes and yields complete messages.
pub struct MsgReader {
    buf: Vec<u8>,
    start: usize,
    wire: Wire,
    decrypt: Decrypt,
}

impl MsgReader {
    /// A reader that starts with `pending` plaintext bytes already received
    /// (after the v2 magic, for v2).
    pub fn new(pending: Vec<u8>, wire: Wire) -> Self {
        let mut buf = pending;
        buf.reserve(4096);
        MsgReader {
            buf,
            start: 0,
            wire,
            decrypt: Decrypt::None,
        }
    }

    /// The wire protocol in use.
    pub fn wire(&self) -> Wire {
        self.wire
    }

    /// From now on the stream is AES-CFB with this key (v1 control).
    /// Bytes already buffered past the last message are ciphertext too.
    pub fn set_cfb(&mut self, key: [u8; 16]) {
        let mut c = CfbStreamReader::new(key);
        self.compact();
        let plain = c.decrypt_in_place(&mut self.buf).to_vec();
        self.buf = plain;
        self.decrypt = Decrypt::Cfb(c);
    }

    /// From now on the stream is AEAD records (v2 control).
    pub fn set_aead(&mut self, alg: AeadAlgorithm, key: [u8; 32]) -> Result<(), V2Error> {
        let reader = AeadReader::new(alg, key)?;
        self.compact();
        let cipher = std::mem::take(&mut self.buf);
        self.decrypt = Decrypt::Aead(Box::new(reader), Vec::new());
        self.absorb_aead(&cipher)
    }

    fn absorb_aead(&mut self, data: &[u8]) -> Result<(), V2Error> {
        if let Decrypt::Aead(r, carry) = &mut self.decrypt {
            carry.extend_from_slice(data);
            let used = r.open(carry, &mut self.buf)?;
            carry.drain(..used);
        }
        Ok(())
    }

    /// Bytes received but not consumed as messages (plaintext).
    pub fn into_pending(mut self) -> Vec<u8> {
        self.compact();
        self.buf
    }

    fn compact(&mut self) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
    }

    /// Try to take one complete v2 frame of any type from what is buffered.
    fn try_frame_v2(&mut self) -> Result<Option<RawFrame>, MsgError> {
        match wire_v2::decode_frame(&self.buf[self.start..])? {
            Some((ty, range, used)) => {
                let payload = self.buf[self.start + range.start..self.start + range.end].to_vec();
                self.consume(used);
                Ok(Some(RawFrame { ty, payload }))
            }
            None => Ok(None),
        }
    }

    /// Try to take one complete message from what is buffered.
    pub fn try_next(&mut self) -> Result<Option<Message>, MsgError> {
        match self.wire {
            Wire::V1 => match frame::decode(&self.buf[self.start..])? {
                Some((msg, used)) => {
                    self.consume(used);
                    Ok(Some(msg))
                }
                None => Ok(None),
            },
            Wire::V2 => match self.try_frame_v2()? {
                Some(RawFrame {
                    ty: FrameType::Message,
                    payload,
                }) => Ok(Some(wire_v2::decode_message(&payload)?)),
                Some(RawFrame { ty, .. }) => Err(MsgError::UnexpectedFrame(ty)),
                None => Ok(None),
            },
        }
    }

    async fn fill<R: ByteRead>(&mut self, r: &mut R) -> Result<(), MsgError> {
        self.compact();
        let mut buf = if matches!(self.decrypt, Decrypt::Aead(..)) {
            Vec::with_capacity(16 * 1024)
        } else {
            std::mem::take(&mut self.buf)
        };
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(4096);
        }
        let before = buf.len();
        let (res, mut buf) = r.read_into(buf).await;
        let n = match res {
            Ok(n) => n,
            Err(e) => {
                if !matches!(self.decrypt, Decrypt::Aead(..)) {
                    self.buf = buf;
                }
                return Err(e.into());
            }
        };
        match &mut self.decrypt {
            Decrypt::None => self.buf = buf,
            Decrypt::Cfb(c) => {
                // The reader swallows the IV: keep only the plaintext.
                let plain_len = c.decrypt_in_place(&mut buf[before..before + n]).len();
                if plain_len < n {
                    buf.drain(before..before + (n - plain_len));
                }
                self.buf = buf;
            }
            Decrypt::Aead(..) => self.absorb_aead(&buf[before..before + n])?,
        }
        if n == 0 {
            return Err(MsgError::Closed);
        }
        Ok(())
    }

    /// Read until one whole message is here.
    pub async fn next<R: ByteRead>(&mut self, r: &mut R) -> Result<Message, MsgError> {
        loop {
            if let Some(m) = self.try_next()? {
                return Ok(m);
            }
            self.fill(r).await?;
        }
    }

    /// [`next`](Self::next) with a deadline.
    pub async fn next_within<R: ByteRead>(
        &mut self,
        r: &mut R,
        limit: Duration,
    ) -> Result<Message, MsgError> {
        match monoio::time::timeout(limit, self.next(r)).await {
            Ok(r) => r,
            Err(_) => Err(MsgError::Timeout),
        }
    }

    /// v2 only: read one frame of any type (the hellos), with a deadline.
    pub async fn next_frame_within<R: ByteRead>(
        &mut self,
        r: &mut R,
        limit: Duration,
    ) -> Result<RawFrame, MsgError> {
        let fut = async {
            loop {
                if let Some(f) = self.try_frame_v2()? {
                    return Ok(f);
                }
                self.fill(r).await?;
            }
        };
        match monoio::time::timeout(limit, fut).await {
            Ok(r) => r,
            Err(_) => Err(MsgError::Timeout),
        }
    }
}

/// Append `msg` as one plaintext frame of the given wire protocol.
pub fn encode_into(msg: &Message, wire: Wire, out: &mut Vec<u8>) {
    match wire {
        Wire::V1 => frame::encode(msg, out),
        Wire::V2 => {
            // Our messages are far below the 64 KiB frame limit; a failure
            // here would be a bug, and writes nothing.
            if let Err(e) = wire_v2::encode_message(msg, out) {
                tracing::error!(error = %e, msg = msg.name(), "cannot encode v2 message");
            }
        }
    }
}

/// Encode `msg` as one plaintext frame.
pub fn encode(msg: &Message, wire: Wire) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    encode_into(msg, wire, &mut out);
    out
}

/// Answer with one last plaintext message (a refusal) and close the
/// connection in order; see [`Conn::finish`].
pub async fn refuse(conn: Conn, msg: &Message, wire: Wire) {
    conn.finish(encode(msg, wire)).await
}

// One per control channel; boxing the common (CFB) case would only add
// an indirection.
#[allow(clippy::large_enum_variant)]
enum Encrypt {
    Cfb(CfbStreamWriter),
    Aead(Box<AeadWriter>),
}

/// Writes messages on the control channel, encrypted after login.
pub struct MsgWriter {
    wire: Wire,
    cipher: Encrypt,
    plain: Vec<u8>,
    out: Vec<u8>,
}

impl MsgWriter {
    /// v1: AES-CFB with the token key.
    pub fn cfb(key: [u8; 16]) -> Self {
        MsgWriter {
            wire: Wire::V1,
            cipher: Encrypt::Cfb(CfbStreamWriter::new(key)),
            plain: Vec::with_capacity(512),
            out: Vec::with_capacity(512),
        }
    }

    /// v2: AEAD records with the negotiated algorithm and server-to-client key.
    pub fn aead(alg: AeadAlgorithm, key: [u8; 32]) -> Result<Self, V2Error> {
        Ok(MsgWriter {
            wire: Wire::V2,
            cipher: Encrypt::Aead(Box::new(AeadWriter::new(alg, key)?)),
            plain: Vec::with_capacity(512),
            out: Vec::with_capacity(512),
        })
    }

    /// Queue one message (encrypted) for the next flush.
    pub fn push(&mut self, msg: &Message) {
        self.plain.clear();
        encode_into(msg, self.wire, &mut self.plain);
        match &mut self.cipher {
            Encrypt::Cfb(c) => c.encrypt_into(&self.plain, &mut self.out),
            Encrypt::Aead(a) => {
                // frpc's record layout: header and payload sealed separately,
                // as Go writes them in two calls.
                let split = wire_v2::FRAME_HEADER_LEN.min(self.plain.len());
                let (head, body) = self.plain.split_at(split);
                if a.seal(head, &mut self.out)
                    .and_then(|_| a.seal(body, &mut self.out))
                    .is_err()
                {
                    tracing::warn!("v2 control stream cannot seal more records");
                }
            }
        }
    }

    /// Write everything queued.
    pub async fn flush(&mut self, w: &mut ConnWriter) -> io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let out = std::mem::take(&mut self.out);
        let (r, mut out) = w.write_all(out).await;
        out.clear();
        self.out = out;
        r
    }
}
