//! WebSocket frames read off a connection into one buffer that holds at
//! most the frame being read and what came after it: what was used is
//! dropped before every read (a partial frame kept at a growing offset
//! would let a busy sender grow the buffer without bound), and the room
//! made is what the next frame needs.

use std::ops::Range;

use proto::ws;

use crate::transport::conn::ConnReader;

/// Frames from one connection.
pub struct FrameReader {
    buf: Vec<u8>,
    start: usize,
    /// Bytes of the frame that begins at `start`, when it is not all there.
    whole: usize,
    /// Whether frames must be masked (a server reading a client).
    masked: bool,
    /// Largest payload accepted.
    max: usize,
}

impl FrameReader {
    /// A reader over the bytes already read (`pending`).
    pub fn new(pending: Vec<u8>, masked: bool, max: usize) -> FrameReader {
        FrameReader {
            buf: pending,
            start: 0,
            whole: 0,
            masked,
            max,
        }
    }

    /// The next whole frame in the buffer, unmasked in place: its head and
    /// where its payload is ([`FrameReader::payload`]); None until more is
    /// read.
    pub fn next_frame(&mut self) -> Result<Option<(ws::FrameHead, Range<usize>)>, ws::FrameError> {
        let Some(h) = ws::parse_head(&self.buf[self.start..], self.masked, self.max)? else {
            return Ok(None);
        };
        let body = self.start + h.head_len;
        if self.buf.len() < body + h.len {
            self.whole = body + h.len - self.start;
            return Ok(None);
        }
        ws::apply_mask(
            &mut self.buf[body..body + h.len],
            h.mask.unwrap_or_default(),
            0,
        );
        self.start = body + h.len;
        Ok(Some((h, body..body + h.len)))
    }

    /// A payload [`FrameReader::next_frame`] gave.
    pub fn payload(&self, at: Range<usize>) -> &[u8] {
        &self.buf[at]
    }

    /// Drop what was used and read more; Ok(0) at the end of the stream.
    pub async fn fill(&mut self, reader: &mut ConnReader) -> std::io::Result<usize> {
        self.buf.drain(..self.start);
        self.start = 0;
        let room = self.whole.max(self.buf.len() + 16 * 1024).max(64 * 1024);
        if self.buf.capacity() < room {
            self.buf.reserve(room - self.buf.len());
        }
        self.whole = 0;
        let (r, b) = reader.read(std::mem::take(&mut self.buf)).await;
        self.buf = b;
        r
    }
}
