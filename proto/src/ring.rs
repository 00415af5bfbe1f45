//! A single-producer, single-consumer byte ring in shared memory: how a
//! fastpath worker hands events to the slowpath without ever waiting for it.
//!
//! The ring lives in memory both processes map (a file under /dev/shm). The
//! producer (one fastpath worker) only advances `head`; the consumer (the
//! slowpath) only advances `tail`. Both are monotonic byte counters, so
//! `head - tail` is the fill level and neither side ever writes the other's
//! index. A record is a `u32` length and its bytes, padded to 8; a record
//! that does not fit is **dropped and counted**, never waited for — a slow
//! or absent consumer cannot stall forwarding.
//!
//! ```text
//! 0    magic u64 "TOTORNG1"     8   capacity u64 (data bytes, power of two)
//! 16   dropped u64              24  pushed u64
//! 32   applied_generation u64   40  producer pid u64
//! 64   head u64 (own cache line)
//! 128  tail u64 (own cache line)
//! 256  data[capacity]
//! ```
//!
//! `applied_generation` is not part of the queue: it is where a worker says
//! which policy generation it enforces, read by the slowpath to measure how
//! long a change takes to reach every worker.
//!
//! ## Memory another process writes
//!
//! The region is shared with a process Rust's rules know nothing about, so
//! the ring never makes a reference to plain bytes of it: every header
//! word is an [`AtomicU64`] and every data byte is copied with an
//! [`AtomicU8`] load or store. A peer that breaks the protocol (two
//! producers, a consumer writing data, a process scribbling on the file)
//! can therefore only make records wrong — which the consumer's bounds
//! checks and the records' tags ([`crate::shm_auth`]) catch — never cause a
//! data race in this process. The `head` store (release) and load
//! (acquire) order the relaxed byte copies between the two sides.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};

/// Bytes before the data area.
pub const RING_HEADER: usize = 256;
const MAGIC: u64 = u64::from_le_bytes(*b"TOTORNG1");
const OFF_CAP: usize = 8;
const OFF_DROPPED: usize = 16;
const OFF_PUSHED: usize = 24;
const OFF_APPLIED: usize = 32;
const OFF_PID: usize = 40;
const OFF_HEAD: usize = 64;
const OFF_TAIL: usize = 128;

/// Why a region cannot be used as a ring.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    /// Too small for the header and a data area.
    #[error("ring region too small")]
    TooSmall,
    /// Not initialized by a producer (or not a ring).
    #[error("not an event ring (bad magic)")]
    BadMagic,
    /// The stated capacity does not fit the region.
    #[error("ring capacity does not match the region")]
    BadCapacity,
}

/// A view of a ring in memory owned by someone else (a mapping).
pub struct Ring {
    base: *mut u8,
    cap: u64,
}

// SAFETY: a Ring is a pointer to a region that, by the contract of its
// constructors, stays valid for as long as the Ring lives and is touched
// only atomically; the Ring itself only ever accesses it through atomics
// (header words and data bytes alike). So moving a Ring to another thread
// or using it from several threads at once cannot cause a data race: a
// caller breaking the one-producer/one-consumer protocol gets wrong records
// (bounds-checked on read), not undefined behaviour.
unsafe impl Send for Ring {}
// SAFETY: as for Send: every access through `&Ring` is atomic.
unsafe impl Sync for Ring {}

/// The data capacity a region of `len` bytes can hold.
pub fn capacity_for(len: usize) -> Option<u64> {
    let data = len.checked_sub(RING_HEADER)?;
    if data < 64 {
        return None;
    }
    // Largest power of two that fits.
    Some(1u64 << (63 - (data as u64).leading_zeros()))
}

impl Ring {
    /// Initialize a ring in `len` bytes at `ptr` (producer side), zeroing
    /// its indices and counters.
    ///
    /// # Safety
    /// `ptr` must be 8-byte aligned and valid for reads and writes of `len`
    /// bytes for as long as the returned value lives (a writable mapping
    /// that is not unmapped, and whose file is not truncated, before the
    /// ring is dropped), and every other access to those bytes while it
    /// lives — from this process or another one mapping the same memory —
    /// must be atomic (another [`Ring`]'s are) or must not race with the
    /// ring's own.
    pub unsafe fn create(ptr: *mut u8, len: usize) -> Result<Ring, RingError> {
        let cap = capacity_for(len).ok_or(RingError::TooSmall)?;
        let r = Ring { base: ptr, cap };
        for off in [OFF_DROPPED, OFF_PUSHED, OFF_APPLIED, OFF_HEAD, OFF_TAIL] {
            r.atomic(off).store(0, Ordering::Relaxed);
        }
        r.atomic(OFF_PID)
            .store(std::process::id() as u64, Ordering::Relaxed);
        r.atomic(OFF_CAP).store(cap, Ordering::Relaxed);
        r.atomic(0).store(MAGIC, Ordering::Release);
        Ok(r)
    }

    /// Use a ring a producer initialized (consumer side). The memory must
    /// be writable: the consumer advances `tail` (a read-only mapping is
    /// read with [`HeaderSnapshot`] from a copy instead).
    ///
    /// # Safety
    /// As for [`Ring::create`].
    pub unsafe fn attach(ptr: *mut u8, len: usize) -> Result<Ring, RingError> {
        if len < RING_HEADER + 64 {
            return Err(RingError::TooSmall);
        }
        let probe = Ring { base: ptr, cap: 0 };
        if probe.atomic(0).load(Ordering::Acquire) != MAGIC {
            return Err(RingError::BadMagic);
        }
        let cap = probe.atomic(OFF_CAP).load(Ordering::Relaxed);
        if !cap.is_power_of_two() || cap > (len - RING_HEADER) as u64 || cap < 64 {
            return Err(RingError::BadCapacity);
        }
        Ok(Ring { base: ptr, cap })
    }

    fn atomic(&self, off: usize) -> &AtomicU64 {
        debug_assert!(off & 7 == 0 && off + 8 <= RING_HEADER);
        // SAFETY: `off` is one of the header offsets (8-aligned, inside the
        // header); the region is 8-aligned, at least RING_HEADER bytes,
        // valid while `self` lives and accessed only atomically by
        // everyone (constructor contract), so a shared `&AtomicU64` to it
        // for the life of `&self` is sound.
        unsafe { &*self.base.add(off).cast::<AtomicU64>() }
    }

    /// Data byte `i` (`i < cap`).
    fn byte(&self, i: usize) -> &AtomicU8 {
        debug_assert!((i as u64) < self.cap);
        // SAFETY: `cap` was checked against the region's length when the
        // ring was made (`capacity_for`, or the checks in `attach`), so
        // RING_HEADER + i < len is inside the region, which is valid while
        // `self` lives and accessed only atomically (constructor contract);
        // AtomicU8 needs no alignment.
        unsafe { &*self.base.add(RING_HEADER + i).cast::<AtomicU8>() }
    }

    /// Copy `src` into the data area at logical position `pos`, wrapping.
    /// Relaxed: the producer's release store of `head` publishes them.
    fn write_at(&self, pos: u64, src: &[u8]) {
        let mask = (self.cap - 1) as usize;
        let at = pos as usize;
        for (i, &b) in src.iter().enumerate() {
            self.byte(at.wrapping_add(i) & mask)
                .store(b, Ordering::Relaxed);
        }
    }

    /// Copy from logical position `pos` into `dst`, wrapping. Relaxed: the
    /// consumer's acquire load of `head` came first.
    fn read_at(&self, pos: u64, dst: &mut [u8]) {
        let mask = (self.cap - 1) as usize;
        let at = pos as usize;
        for (i, b) in dst.iter_mut().enumerate() {
            *b = self.byte(at.wrapping_add(i) & mask).load(Ordering::Relaxed);
        }
    }

    /// Data capacity in bytes.
    pub fn capacity(&self) -> u64 {
        self.cap
    }

    /// Append a record (producer). False when it did not fit: the record is
    /// dropped and the drop counter says so.
    pub fn push(&self, rec: &[u8]) -> bool {
        let need = padded(rec.len());
        let head = self.atomic(OFF_HEAD).load(Ordering::Relaxed);
        let tail = self.atomic(OFF_TAIL).load(Ordering::Acquire);
        let used = head.wrapping_sub(tail);
        if rec.len() > u32::MAX as usize || used > self.cap || self.cap - used < need {
            self.atomic(OFF_DROPPED).fetch_add(1, Ordering::Relaxed);
            return false;
        }
        self.write_at(head, &(rec.len() as u32).to_le_bytes());
        self.write_at(head + 4, rec);
        self.atomic(OFF_HEAD).store(head + need, Ordering::Release);
        self.atomic(OFF_PUSHED).fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Take the oldest record into `out` (consumer); false when empty. A
    /// length that cannot be right (a producer that died mid-write, or
    /// memory someone scribbled on) discards everything up to `head`.
    pub fn pop(&self, out: &mut Vec<u8>) -> bool {
        let mut cursor = self.tail();
        let got = self.peek(&mut cursor, out);
        self.release(cursor);
        got
    }

    /// Where the consumer has read up to (what it has given back).
    pub fn tail(&self) -> u64 {
        self.atomic(OFF_TAIL).load(Ordering::Relaxed)
    }

    /// Read the record at `*cursor` into `out` and move the cursor past it,
    /// without giving its space back to the producer (consumer; `cursor`
    /// starts at [`Ring::tail`]). A consumer that must not lose a record
    /// before it is stored elsewhere reads with `peek` and calls
    /// [`Ring::release`] once it is. False when there is nothing at the
    /// cursor; a length that cannot be right moves the cursor to `head`
    /// (see [`Ring::pop`]).
    pub fn peek(&self, cursor: &mut u64, out: &mut Vec<u8>) -> bool {
        let at = *cursor;
        let head = self.atomic(OFF_HEAD).load(Ordering::Acquire);
        let avail = head.wrapping_sub(at);
        if avail == 0 {
            return false;
        }
        let mut len = [0; 4];
        self.read_at(at, &mut len);
        let len = u32::from_le_bytes(len) as usize;
        let need = padded(len);
        if avail > self.cap || need > avail {
            *cursor = head;
            self.atomic(OFF_DROPPED).fetch_add(1, Ordering::Relaxed);
            return false;
        }
        out.clear();
        out.resize(len, 0);
        self.read_at(at + 4, out);
        *cursor = at + need;
        true
    }

    /// Give the space before `cursor` back to the producer (consumer).
    pub fn release(&self, cursor: u64) {
        self.atomic(OFF_TAIL).store(cursor, Ordering::Release);
    }

    /// Records dropped because the ring was full (or found corrupt).
    pub fn dropped(&self) -> u64 {
        self.atomic(OFF_DROPPED).load(Ordering::Relaxed)
    }

    /// Records pushed since the producer created the ring.
    pub fn pushed(&self) -> u64 {
        self.atomic(OFF_PUSHED).load(Ordering::Relaxed)
    }

    /// Bytes waiting to be consumed.
    pub fn pending_bytes(&self) -> u64 {
        let head = self.atomic(OFF_HEAD).load(Ordering::Acquire);
        head.wrapping_sub(self.atomic(OFF_TAIL).load(Ordering::Acquire))
    }

    /// Say which policy generation this worker enforces (producer).
    pub fn set_applied_generation(&self, generation: u64) {
        self.atomic(OFF_APPLIED)
            .store(generation, Ordering::Release);
    }

    /// The policy generation the producer enforces.
    pub fn applied_generation(&self) -> u64 {
        self.atomic(OFF_APPLIED).load(Ordering::Acquire)
    }

    /// Process id of the producer that created the ring.
    pub fn producer_pid(&self) -> u64 {
        self.atomic(OFF_PID).load(Ordering::Relaxed)
    }
}

/// The header fields a reader outside the ring needs, from a copy of the
/// header's bytes (read with `pread`, no mapping): which policy generation
/// the producer enforces and who the producer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderSnapshot {
    /// See [`Ring::applied_generation`].
    pub applied_generation: u64,
    /// See [`Ring::producer_pid`].
    pub producer_pid: u64,
}

impl HeaderSnapshot {
    /// Parse a copy of the first [`RING_HEADER`] bytes; None when they are
    /// not a ring's.
    pub fn parse(header: &[u8]) -> Option<HeaderSnapshot> {
        let word = |off: usize| {
            header
                .get(off..off + 8)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map(u64::from_le_bytes)
        };
        if word(0)? != MAGIC {
            return None;
        }
        Some(HeaderSnapshot {
            applied_generation: word(OFF_APPLIED)?,
            producer_pid: word(OFF_PID)?,
        })
    }
}

fn padded(len: usize) -> u64 {
    ((len as u64 + 4) + 7) & !7
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region(len: usize) -> Vec<u64> {
        vec![0u64; len / 8]
    }

    // The tests' regions are `Vec<u64>`s (8-aligned) of at least the length
    // passed, declared before (so dropped after) the rings made over them,
    // and touched only by rings (or, in one test, by a write made while no
    // other thread runs), so each `Ring::create`/`attach` below keeps the
    // constructors' contract.

    #[test]
    fn fifo_wraps_and_drops_when_full() {
        let mut mem = region(RING_HEADER + 256);
        let p = mem.as_mut_ptr() as *mut u8;
        // SAFETY: see the note above `region`.
        let prod = unsafe { Ring::create(p, RING_HEADER + 256) }.unwrap();
        // SAFETY: see the note above `region`.
        let cons = unsafe { Ring::attach(p, RING_HEADER + 256) }.unwrap();
        assert_eq!(prod.capacity(), 256);
        let mut out = Vec::new();
        let mut next_in = 0u32;
        let mut next_out = 0u32;
        for round in 0..200 {
            // Fill until it refuses.
            loop {
                let rec = vec![next_in as u8; (next_in % 37) as usize];
                let mut r = next_in.to_le_bytes().to_vec();
                r.extend_from_slice(&rec);
                if !prod.push(&r) {
                    break;
                }
                next_in += 1;
            }
            // Drain some (all on even rounds).
            let take = if round % 2 == 0 { usize::MAX } else { 2 };
            for _ in 0..take {
                if !cons.pop(&mut out) {
                    break;
                }
                assert_eq!(u32::from_le_bytes(out[..4].try_into().unwrap()), next_out);
                assert!(out[4..].iter().all(|&b| b == next_out as u8));
                next_out += 1;
            }
        }
        assert!(prod.dropped() >= 200);
        while cons.pop(&mut out) {
            next_out += 1;
        }
        assert_eq!(next_in, next_out);
        assert_eq!(prod.pushed(), next_in as u64);
    }

    #[test]
    fn oversized_record_is_dropped() {
        let mut mem = region(RING_HEADER + 128);
        let p = mem.as_mut_ptr() as *mut u8;
        // SAFETY: see the note above `region`.
        let r = unsafe { Ring::create(p, RING_HEADER + 128) }.unwrap();
        assert!(!r.push(&[0; 200]));
        assert_eq!(r.dropped(), 1);
        assert!(r.push(&[1; 50]));
    }

    #[test]
    fn peeked_records_stay_until_released() {
        let mut mem = region(RING_HEADER + 256);
        let p = mem.as_mut_ptr() as *mut u8;
        // SAFETY: see the note above `region`.
        let prod = unsafe { Ring::create(p, RING_HEADER + 256) }.unwrap();
        // SAFETY: see the note above `region`.
        let cons = unsafe { Ring::attach(p, RING_HEADER + 256) }.unwrap();
        assert!(prod.push(b"one"));
        assert!(prod.push(b"two"));
        let mut out = Vec::new();
        let mut cursor = cons.tail();
        assert!(cons.peek(&mut cursor, &mut out));
        assert_eq!(out, b"one");
        assert!(cons.peek(&mut cursor, &mut out));
        assert_eq!(out, b"two");
        assert!(!cons.peek(&mut cursor, &mut out));
        // Not released: a consumer starting over (after a crash) reads
        // them again, and the producer has not got the space back.
        assert_eq!(cons.pending_bytes(), 16);
        let mut again = cons.tail();
        assert!(cons.peek(&mut again, &mut out));
        assert_eq!(out, b"one");
        cons.release(cursor);
        assert_eq!(cons.pending_bytes(), 0);
        assert!(!cons.pop(&mut out));
    }

    #[test]
    fn attach_refuses_garbage() {
        let mut mem = region(RING_HEADER + 128);
        let p = mem.as_mut_ptr() as *mut u8;
        assert_eq!(
            // SAFETY: see the note above `region`.
            unsafe { Ring::attach(p, RING_HEADER + 128) }.err(),
            Some(RingError::BadMagic)
        );
        assert_eq!(
            // SAFETY: see the note above `region`.
            unsafe { Ring::create(p, 100) }.err(),
            Some(RingError::TooSmall)
        );
    }

    #[test]
    fn corrupt_length_discards_instead_of_reading_out_of_bounds() {
        let mut mem = region(RING_HEADER + 128);
        let p = mem.as_mut_ptr() as *mut u8;
        // SAFETY: see the note above `region`.
        let r = unsafe { Ring::create(p, RING_HEADER + 128) }.unwrap();
        assert!(r.push(b"hello"));
        // Scribble a huge length over the record.
        // SAFETY: inside the region (header + 128 bytes); no other thread
        // runs, so this plain write races with none of the ring's atomic
        // accesses.
        unsafe { std::ptr::write_bytes(p.add(RING_HEADER), 0xff, 4) };
        let mut out = Vec::new();
        assert!(!r.pop(&mut out));
        assert_eq!(r.pending_bytes(), 0);
        assert!(r.push(b"again"));
        assert!(r.pop(&mut out));
        assert_eq!(out, b"again");
    }

    #[test]
    fn two_threads() {
        let mut mem = region(RING_HEADER + 4096);
        let p = mem.as_mut_ptr() as *mut u8;
        // SAFETY: see the note above `region`.
        let prod = unsafe { Ring::create(p, RING_HEADER + 4096) }.unwrap();
        // SAFETY: see the note above `region`.
        let cons = unsafe { Ring::attach(p, RING_HEADER + 4096) }.unwrap();
        let n = 200_000u64;
        let t = std::thread::spawn(move || {
            let mut sent = 0u64;
            let mut i = 0u64;
            while i < n {
                if prod.push(&i.to_le_bytes()) {
                    sent += 1;
                }
                i += 1;
            }
            (sent, prod.dropped())
        });
        let mut out = Vec::new();
        let mut got = 0u64;
        let mut last: Option<u64> = None;
        loop {
            if cons.pop(&mut out) {
                let v = u64::from_le_bytes(out[..8].try_into().unwrap());
                assert!(last.is_none_or(|l| v > l), "order");
                last = Some(v);
                got += 1;
            } else if t.is_finished() && cons.pending_bytes() == 0 {
                break;
            }
        }
        let (sent, dropped) = t.join().unwrap();
        assert_eq!(got, sent);
        assert_eq!(sent + dropped, n);
    }
}
