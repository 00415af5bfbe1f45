//! frpc's work-connection wrappers: write path app → snappy → AES-CFB →
//! socket, read path the reverse. Keys: the auth token (PBKDF2 as frp does).

use std::io::{self, Read, Write};

use proto::cfb::{CfbStreamReader, CfbStreamWriter};
use proto::snappy::{SnappyDecoder, SnappyEncoder};

use super::transport::WriteHalf;

/// Encrypting/compressing writer.
pub struct EncodeWriter<W> {
    inner: W,
    snappy: Option<SnappyEncoder>,
    cipher: Option<CfbStreamWriter>,
    tmp: Vec<u8>,
    out: Vec<u8>,
}

impl<W: WriteHalf> EncodeWriter<W> {
    /// Wrap `inner`; `key` = Some for useEncryption.
    pub fn new(inner: W, key: Option<[u8; 16]>, compress: bool) -> Self {
        EncodeWriter {
            inner,
            snappy: compress.then(SnappyEncoder::new),
            cipher: key.map(CfbStreamWriter::new),
            tmp: Vec::new(),
            out: Vec::new(),
        }
    }
}

impl<W: WriteHalf> Write for EncodeWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut data = buf;
        if let Some(s) = &mut self.snappy {
            self.tmp.clear();
            s.encode(buf, &mut self.tmp);
            data = &self.tmp;
        }
        self.out.clear();
        match &mut self.cipher {
            Some(c) => c.encrypt_into(data, &mut self.out),
            None => self.out.extend_from_slice(data),
        }
        self.inner.write_all(&self.out)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<W: WriteHalf> WriteHalf for EncodeWriter<W> {
    fn shutdown_write(&mut self) {
        self.inner.shutdown_write()
    }
    fn abort(&mut self) {
        self.inner.abort()
    }
}

/// Decrypting/decompressing reader.
pub struct DecodeReader<R> {
    inner: R,
    snappy: Option<SnappyDecoder>,
    cipher: Option<CfbStreamReader>,
    raw: Vec<u8>,
    carry: Vec<u8>,
    plain: Vec<u8>,
    pos: usize,
}

impl<R: Read> DecodeReader<R> {
    /// Wrap `inner`; `key` = Some for useEncryption.
    pub fn new(inner: R, key: Option<[u8; 16]>, compress: bool) -> Self {
        DecodeReader {
            inner,
            snappy: compress.then(SnappyDecoder::new),
            cipher: key.map(CfbStreamReader::new),
            raw: vec![0u8; 64 * 1024],
            carry: Vec::new(),
            plain: Vec::new(),
            pos: 0,
        }
    }
}

impl<R: Read> Read for DecodeReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.snappy.is_none() && self.cipher.is_none() {
            return self.inner.read(buf);
        }
        while self.pos >= self.plain.len() {
            let n = self.inner.read(&mut self.raw)?;
            if n == 0 {
                return Ok(0);
            }
            let data: &[u8] = match &mut self.cipher {
                Some(c) => c.decrypt_in_place(&mut self.raw[..n]),
                None => &self.raw[..n],
            };
            self.plain.clear();
            self.pos = 0;
            match &mut self.snappy {
                Some(s) => {
                    self.carry.extend_from_slice(data);
                    let used = s
                        .decode(&self.carry, &mut self.plain)
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                    self.carry.drain(..used);
                }
                None => self.plain.extend_from_slice(data),
            }
        }
        let n = buf.len().min(self.plain.len() - self.pos);
        buf[..n].copy_from_slice(&self.plain[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}
