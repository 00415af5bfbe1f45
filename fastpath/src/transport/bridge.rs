//! A byte stream between two tasks, possibly on two workers: the two
//! ends of a [`pair`] behave as a connection each (read what the other
//! wrote; a half-close is an EOF there; an abort fails both).
//!
//! What joins a visitor's connection to a work connection of the proxy it
//! visits: each leg is a relay of its own, wrapped the way its peer asked
//! (the visitor's secret key on one, the proxy's token key on the other),
//! with a bridge as the "user" side of both. The visitor's connection
//! lives on the worker it arrived on (a yamux stream cannot leave its
//! session), the work connection on the proxy's session's worker; the
//! bridge carries the plaintext between them.
//!
//! Each direction holds at most [`CAP`] bytes; a writer past it waits for
//! the reader, so a slow side slows the other instead of growing a queue.

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;
use std::task::{Poll, Waker};

use parking_lot::Mutex;

/// Bytes one direction holds before its writer waits.
pub const CAP: usize = 256 * 1024;

/// One direction.
#[derive(Default)]
struct Pipe {
    st: Mutex<PipeState>,
}

#[derive(Default)]
struct PipeState {
    chunks: VecDeque<Vec<u8>>,
    queued: usize,
    /// The writer half-closed (or went away): EOF once drained.
    eof: bool,
    /// The reader went away: writes fail.
    reader_gone: bool,
    /// Aborted: both sides fail at once.
    aborted: bool,
    reader: Option<Waker>,
    writer: Option<Waker>,
}

impl PipeState {
    fn wake_all(&mut self) {
        if let Some(w) = self.reader.take() {
            w.wake();
        }
        if let Some(w) = self.writer.take() {
            w.wake();
        }
    }
}

fn reset() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionReset, "bridge aborted")
}

/// Two connected ends.
pub fn pair() -> (BridgeEnd, BridgeEnd) {
    let (ab, ba) = (Arc::new(Pipe::default()), Arc::new(Pipe::default()));
    (
        BridgeEnd {
            r: BridgeReader {
                pipe: ba.clone(),
                other: ab.clone(),
            },
            w: BridgeWriter {
                pipe: ab.clone(),
                other: ba.clone(),
            },
        },
        BridgeEnd {
            r: BridgeReader {
                pipe: ab.clone(),
                other: ba.clone(),
            },
            w: BridgeWriter {
                pipe: ba,
                other: ab,
            },
        },
    )
}

/// One end: sendable to another worker.
pub struct BridgeEnd {
    r: BridgeReader,
    w: BridgeWriter,
}

impl BridgeEnd {
    /// Append what the other end wrote to `buf`; 0 is its half-close.
    pub async fn read(&mut self, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        self.r.read(buf).await
    }

    /// Send all of `buf` to the other end.
    pub async fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.w.write_all(buf).await
    }

    /// The two halves.
    pub fn into_split(self) -> (BridgeReader, BridgeWriter) {
        (self.r, self.w)
    }

    /// What aborts both directions.
    pub fn aborter(&self) -> BridgeAborter {
        BridgeAborter(self.r.pipe.clone(), self.w.pipe.clone())
    }
}

/// Reading half of a [`BridgeEnd`].
pub struct BridgeReader {
    pipe: Arc<Pipe>,
    other: Arc<Pipe>,
}

impl BridgeReader {
    /// See [`BridgeEnd::read`].
    pub async fn read(&mut self, mut buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        let r = std::future::poll_fn(|cx| {
            let mut st = self.pipe.st.lock();
            if st.aborted {
                return Poll::Ready(Err(reset()));
            }
            if let Some(chunk) = st.chunks.pop_front() {
                st.queued -= chunk.len();
                if let Some(w) = st.writer.take() {
                    w.wake();
                }
                drop(st);
                let n = chunk.len();
                if buf.is_empty() && buf.capacity() < n {
                    buf = chunk;
                } else {
                    buf.extend_from_slice(&chunk);
                }
                return Poll::Ready(Ok(n));
            }
            if st.eof {
                return Poll::Ready(Ok(0));
            }
            st.reader = Some(cx.waker().clone());
            Poll::Pending
        })
        .await;
        (r, buf)
    }

    /// See [`BridgeEnd::aborter`].
    pub fn aborter(&self) -> BridgeAborter {
        BridgeAborter(self.pipe.clone(), self.other.clone())
    }
}

impl Drop for BridgeReader {
    fn drop(&mut self) {
        let mut st = self.pipe.st.lock();
        st.reader_gone = true;
        st.chunks.clear();
        st.queued = 0;
        st.wake_all();
    }
}

/// Writing half of a [`BridgeEnd`].
pub struct BridgeWriter {
    pipe: Arc<Pipe>,
    other: Arc<Pipe>,
}

impl BridgeWriter {
    /// See [`BridgeEnd::write_all`]: waits while the direction is full.
    pub async fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        let mut at = 0;
        while at < buf.len() {
            at += std::future::poll_fn(|cx| {
                let mut st = self.pipe.st.lock();
                if st.aborted {
                    return Poll::Ready(Err(reset()));
                }
                if st.reader_gone || st.eof {
                    return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
                }
                let room = CAP.saturating_sub(st.queued);
                if room == 0 {
                    st.writer = Some(cx.waker().clone());
                    return Poll::Pending;
                }
                let n = room.min(buf.len() - at);
                st.chunks.push_back(buf[at..at + n].to_vec());
                st.queued += n;
                if let Some(w) = st.reader.take() {
                    w.wake();
                }
                Poll::Ready(Ok(n))
            })
            .await?;
        }
        Ok(())
    }

    /// Half-close: the other end reads EOF once it has what was written.
    pub fn shutdown(&mut self) {
        let mut st = self.pipe.st.lock();
        st.eof = true;
        st.wake_all();
    }

    /// See [`BridgeEnd::aborter`].
    pub fn aborter(&self) -> BridgeAborter {
        BridgeAborter(self.other.clone(), self.pipe.clone())
    }
}

impl Drop for BridgeWriter {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Aborts both directions of a bridge, from either end.
#[derive(Clone)]
pub struct BridgeAborter(Arc<Pipe>, Arc<Pipe>);

impl BridgeAborter {
    /// Abort now: every pending and later read or write fails.
    pub fn abort(&self) {
        for p in [&self.0, &self.1] {
            let mut st = p.st.lock();
            st.aborted = true;
            st.wake_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        rt.block_on(f)
    }

    #[test]
    fn bytes_cross_in_order_and_a_half_close_is_eof() {
        block_on(async {
            let (mut a, mut b) = pair();
            a.write_all(b"hello ").await.unwrap();
            a.write_all(b"world").await.unwrap();
            let (ar, mut aw) = a.into_split();
            aw.shutdown();
            let mut got = Vec::new();
            loop {
                let (r, g) = b.read(got).await;
                got = g;
                if r.unwrap() == 0 {
                    break;
                }
            }
            assert_eq!(got, b"hello world");
            // The other direction still works.
            b.write_all(b"back").await.unwrap();
            let mut ar = ar;
            let (r, g) = ar.read(Vec::new()).await;
            assert_eq!((r.unwrap(), &g[..]), (4, &b"back"[..]));
        });
    }

    #[test]
    fn a_full_direction_waits_for_its_reader_and_an_abort_fails_both() {
        block_on(async {
            let (a, b) = pair();
            let (_ar, mut aw) = a.into_split();
            let (mut br, _bw) = b.into_split();
            let big = vec![7u8; CAP + 1000];
            let writer = monoio::spawn(async move { aw.write_all(&big).await.map(|()| aw) });
            // The writer cannot finish until the reader takes some.
            monoio::time::sleep(std::time::Duration::from_millis(20)).await;
            let mut total = 0;
            while total < CAP + 1000 {
                let (r, _) = br.read(Vec::new()).await;
                total += r.unwrap();
            }
            let aw = writer.await.unwrap();
            let abort = aw.aborter();
            abort.abort();
            assert!(br.read(Vec::new()).await.0.is_err());
        });
    }

    #[test]
    fn a_dropped_reader_fails_the_writer() {
        block_on(async {
            let (a, b) = pair();
            let (_ar, mut aw) = a.into_split();
            drop(b);
            assert!(aw.write_all(b"x").await.is_err());
        });
    }
}
