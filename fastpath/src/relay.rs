//! Moving bytes between a user connection and a work connection.
//!
//! Two paths:
//! - **splice**: both ends are plain TCP sockets and the proxy neither
//!   encrypts nor compresses: the kernel moves pages socket → pipe → socket,
//!   the bytes never enter user space.
//! - **buffered**: anything else (TLS, yamux, `useEncryption`,
//!   `useCompression`). One buffer per direction, reused for the life of the
//!   connection; no allocation per chunk in steady state.
//!
//! Either direction reaching EOF half-closes the other side's writer, as a
//! TCP proxy should; an error in either direction aborts both connections
//! so that the other direction's pending I/O wakes up and the relay ends.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::AtomicU64;

use monoio::io::splice::{SpliceDestination, SpliceSource};
use monoio::io::{AsyncWriteRent, OwnedReadHalf, OwnedWriteHalf, Splitable};
use monoio::net::TcpStream;
use proto::cfb::{CfbStreamReader, CfbStreamWriter};
use proto::snappy::{SnappyDecoder, SnappyEncoder};

use crate::conn::{Aborter, Conn, ConnReader, ConnWriter};
use crate::stats::WorkerStats;
use crate::worker::WorkerCtx;

/// How a work connection's payload is wrapped.
#[derive(Debug, Clone, Copy)]
pub struct RelayOpts {
    /// `useEncryption`: AES-CFB with this key, IV first, per direction.
    pub encryption_key: Option<[u8; 16]>,
    /// `useCompression`: snappy framing (inside the encryption).
    pub compression: bool,
    /// Buffer size per direction.
    pub buffer: usize,
    /// Whether splice may be used.
    pub splice: bool,
}

impl RelayOpts {
    fn plain(&self) -> bool {
        self.encryption_key.is_none() && !self.compression
    }
}

/// Relay until both directions are done.
pub async fn run(ctx: &WorkerCtx, user: TcpStream, work: Conn, opts: RelayOpts) {
    let stats = ctx.stats();
    let aborters = [Aborter::Fd(user.as_raw_fd()), work.aborter()];
    if opts.splice && opts.plain() {
        if let Conn::Tcp(work) = work {
            let (ur, uw) = user.into_split();
            let (wr, ww) = work.into_split();
            let up = splice_pump(ur, ww, &stats.bytes_in, &aborters);
            let down = splice_pump(wr, uw, &stats.bytes_out, &aborters);
            monoio::join!(up, down);
            return;
        }
    }
    let (ur, uw) = Conn::Tcp(user).into_split();
    let (wr, ww) = work.into_split();
    if opts.plain() {
        if let ConnReader::Mux(mr) = wr {
            // yamux → user without a copy: received chunks go out as they are.
            let up = pump(
                ur,
                ww,
                Transform::None,
                &stats.bytes_in,
                &aborters,
                opts.buffer,
            );
            let down = mux_pump(mr, uw, &stats.bytes_out, &aborters);
            monoio::join!(up, down);
            return;
        }
    }
    let up_t = Transform::encoder(&opts);
    let down_t = Transform::decoder(&opts);
    let up = pump(ur, ww, up_t, &stats.bytes_in, &aborters, opts.buffer);
    let down = pump(wr, uw, down_t, &stats.bytes_out, &aborters, opts.buffer);
    monoio::join!(up, down);
}

fn abort_all(aborters: &[Aborter; 2]) {
    for a in aborters {
        a.abort();
    }
}

async fn splice_pump(
    mut src: OwnedReadHalf<TcpStream>,
    mut dst: OwnedWriteHalf<TcpStream>,
    counter: &AtomicU64,
    aborters: &[Aborter; 2],
) {
    let r: io::Result<()> = async {
        // monoio does not expose the pipe's descriptor, so the pipe keeps
        // its default 64 KiB capacity; ask for no more than that per splice.
        let (mut pr, mut pw) = monoio::net::unix::new_pipe()?;
        loop {
            let mut n = src.splice_to_pipe(&mut pw, 1 << 16).await?;
            if n == 0 {
                return Ok(());
            }
            WorkerStats::bump(counter, n as u64);
            while n > 0 {
                let m = dst.splice_from_pipe(&mut pr, n).await?;
                if m == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "peer stopped accepting data",
                    ));
                }
                n -= m;
            }
        }
    }
    .await;
    match r {
        Ok(()) => {
            let _ = dst.shutdown().await;
        }
        Err(_) => abort_all(aborters),
    }
}

async fn mux_pump(
    mut r: crate::mux::MuxReader,
    mut w: ConnWriter,
    counter: &AtomicU64,
    aborters: &[Aborter; 2],
) {
    let result: io::Result<()> = async {
        while let Some(chunk) = r.read_chunk().await? {
            WorkerStats::bump(counter, chunk.len() as u64);
            w.write_all(chunk).await.0?;
        }
        Ok(())
    }
    .await;
    match result {
        Ok(()) => w.shutdown().await,
        Err(_) => abort_all(aborters),
    }
}

/// What a direction does to the bytes between read and write.
// One per relay direction, built once: the size difference does not matter.
#[allow(clippy::large_enum_variant)]
enum Transform {
    /// Nothing: write what was read.
    None,
    /// Towards frpc: compress, then encrypt.
    Encode {
        snappy: Option<SnappyEncoder>,
        cipher: Option<CfbStreamWriter>,
        tmp: Vec<u8>,
        out: Vec<u8>,
    },
    /// From frpc: decrypt, then decompress.
    Decode {
        cipher: Option<CfbStreamReader>,
        snappy: Option<SnappyDecoder>,
        carry: Vec<u8>,
        out: Vec<u8>,
    },
}

impl Transform {
    fn encoder(o: &RelayOpts) -> Self {
        if o.plain() {
            return Transform::None;
        }
        Transform::Encode {
            snappy: o.compression.then(SnappyEncoder::new),
            cipher: o.encryption_key.map(CfbStreamWriter::new),
            tmp: Vec::new(),
            out: Vec::with_capacity(o.buffer + 64),
        }
    }

    fn decoder(o: &RelayOpts) -> Self {
        if o.plain() {
            return Transform::None;
        }
        Transform::Decode {
            cipher: o.encryption_key.map(CfbStreamReader::new),
            snappy: o.compression.then(SnappyDecoder::new),
            carry: Vec::new(),
            out: Vec::with_capacity(o.buffer),
        }
    }
}

async fn pump(
    mut r: ConnReader,
    mut w: ConnWriter,
    mut t: Transform,
    counter: &AtomicU64,
    aborters: &[Aborter; 2],
    bufsize: usize,
) {
    let mut buf = Vec::with_capacity(bufsize);
    let result: io::Result<()> = async {
        loop {
            buf.clear();
            let (res, b) = r.read(buf).await;
            buf = b;
            let n = res?;
            if n == 0 {
                return Ok(());
            }
            match &mut t {
                Transform::None => {
                    WorkerStats::bump(counter, n as u64);
                    let (res, b) = w.write_all(buf).await;
                    buf = b;
                    res?;
                }
                Transform::Encode {
                    snappy,
                    cipher,
                    tmp,
                    out,
                } => {
                    WorkerStats::bump(counter, n as u64);
                    let mut data: &[u8] = &buf;
                    if let Some(s) = snappy {
                        tmp.clear();
                        s.encode(data, tmp);
                        data = tmp;
                    }
                    out.clear();
                    match cipher {
                        Some(c) => c.encrypt_into(data, out),
                        None => out.extend_from_slice(data),
                    }
                    let (res, o) = w.write_all(std::mem::take(out)).await;
                    *out = o;
                    res?;
                }
                Transform::Decode {
                    cipher,
                    snappy,
                    carry,
                    out,
                } => {
                    // Decrypt in place; the first bytes of the stream are the
                    // IV, which the reader swallows.
                    let plain_len = match cipher {
                        Some(c) => c.decrypt_in_place(&mut buf[..]).len(),
                        None => n,
                    };
                    let iv_bytes = n - plain_len;
                    match snappy {
                        Some(s) => {
                            carry.extend_from_slice(&buf[iv_bytes..]);
                            out.clear();
                            let used = s.decode(carry, out).map_err(|e| {
                                io::Error::new(io::ErrorKind::InvalidData, e.to_string())
                            })?;
                            carry.drain(..used);
                            if out.is_empty() {
                                continue;
                            }
                            WorkerStats::bump(counter, out.len() as u64);
                            let (res, o) = w.write_all(std::mem::take(out)).await;
                            *out = o;
                            res?;
                        }
                        None => {
                            if iv_bytes > 0 {
                                buf.drain(..iv_bytes);
                            }
                            if buf.is_empty() {
                                continue;
                            }
                            WorkerStats::bump(counter, buf.len() as u64);
                            let (res, b) = w.write_all(buf).await;
                            buf = b;
                            res?;
                        }
                    }
                }
            }
        }
    }
    .await;
    match result {
        Ok(()) => w.shutdown().await,
        Err(e) => {
            tracing::debug!(error = %e, "relay direction failed; aborting both sides");
            abort_all(aborters);
        }
    }
}
