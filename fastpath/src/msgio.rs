//! Reading and writing frp v1 messages over a [`Conn`](crate::conn::Conn)
//! or one of its halves, optionally inside the control channel's AES-CFB
//! stream.

use std::io;
use std::time::Duration;

use proto::cfb::{CfbStreamReader, CfbStreamWriter};
use proto::frame::{self, FrameError};
use proto::msg::Message;

use crate::conn::{Conn, ConnReader, ConnWriter};

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
}

/// Accumulates bytes and yields complete v1 messages.
pub struct MsgReader {
    buf: Vec<u8>,
    start: usize,
    cipher: Option<CfbStreamReader>,
}

impl MsgReader {
    /// A reader that starts with `pending` plaintext bytes already received.
    pub fn new(pending: Vec<u8>) -> Self {
        let mut buf = pending;
        buf.reserve(4096);
        MsgReader {
            buf,
            start: 0,
            cipher: None,
        }
    }

    /// From now on the stream is AES-CFB with this key (IV first). Bytes
    /// already buffered past the last message are ciphertext too.
    pub fn set_cipher(&mut self, key: [u8; 16]) {
        let mut c = CfbStreamReader::new(key);
        self.compact();
        let plain = c.decrypt_in_place(&mut self.buf).to_vec();
        self.buf = plain;
        self.cipher = Some(c);
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

    /// Try to take one complete message from what is buffered.
    pub fn try_next(&mut self) -> Result<Option<Message>, FrameError> {
        match frame::decode(&self.buf[self.start..])? {
            Some((msg, used)) => {
                self.start += used;
                if self.start == self.buf.len() {
                    self.buf.clear();
                    self.start = 0;
                }
                Ok(Some(msg))
            }
            None => Ok(None),
        }
    }

    /// Read until one whole message is here.
    pub async fn next<R: ByteRead>(&mut self, r: &mut R) -> Result<Message, MsgError> {
        loop {
            if let Some(m) = self.try_next()? {
                return Ok(m);
            }
            self.compact();
            if self.buf.capacity() - self.buf.len() < 1024 {
                self.buf.reserve(4096);
            }
            let before = self.buf.len();
            let (res, mut buf) = r.read_into(std::mem::take(&mut self.buf)).await;
            let n = match res {
                Ok(0) => {
                    self.buf = buf;
                    return Err(MsgError::Closed);
                }
                Ok(n) => n,
                Err(e) => {
                    self.buf = buf;
                    return Err(e.into());
                }
            };
            if let Some(c) = &mut self.cipher {
                // The reader may swallow the IV: keep only the plaintext.
                let plain_len = c.decrypt_in_place(&mut buf[before..before + n]).len();
                if plain_len < n {
                    let skip = n - plain_len;
                    buf.drain(before..before + skip);
                }
            }
            self.buf = buf;
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
}

/// Encode `msg` as a plaintext v1 frame.
pub fn encode(msg: &Message) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    frame::encode(msg, &mut out);
    out
}

/// Write one plaintext message to an unsplit connection.
pub async fn write_plain(conn: &mut Conn, msg: &Message) -> io::Result<()> {
    conn.write_all(encode(msg)).await.0
}

/// Writes messages on the control channel, encrypted after login.
pub struct MsgWriter {
    cipher: CfbStreamWriter,
    plain: Vec<u8>,
    out: Vec<u8>,
}

impl MsgWriter {
    /// An encrypting writer with the control key.
    pub fn new(key: [u8; 16]) -> Self {
        MsgWriter {
            cipher: CfbStreamWriter::new(key),
            plain: Vec::with_capacity(512),
            out: Vec::with_capacity(512),
        }
    }

    /// Queue one message (encrypted) for the next flush.
    pub fn push(&mut self, msg: &Message) {
        self.plain.clear();
        frame::encode(msg, &mut self.plain);
        self.cipher.encrypt_into(&self.plain, &mut self.out);
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
