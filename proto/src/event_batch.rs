//! Batches of event records as a node agent ships them to the control plane
//! (`POST /api/v1/nodes/events`) and keeps them in its disk spool meanwhile.
//!
//! A batch is numbered within its spool: the spool's random id, and a
//! sequence number that rises by at least one from batch to batch (batches
//! the spool dropped for room leave gaps, and the next batch says how many
//! records went with them). The control plane keeps, per node and spool,
//! the last sequence number it wrote, in the same transaction as the
//! records: a batch sent again (the answer was lost) is acknowledged and
//! not written twice.
//!
//! Layout, little-endian:
//!
//! ```text
//! "TEB1"  spool id (16)  seq u64  dropped u64  count u32
//! count × ( len u32, EventRecord (len bytes) )
//! ```
//!
//! A body is one or more batches back to back.

use crate::events::{EventError, EventRecord};

/// The first bytes of every batch.
pub const MAGIC: &[u8; 4] = b"TEB1";
/// Bytes before the first record.
pub const HEADER: usize = 4 + 16 + 8 + 8 + 4;
/// The longest record a batch may carry (the rings' records are far
/// smaller: strings are cut at 64 KiB, and a record has few of them).
pub const MAX_RECORD: usize = 1 << 20;

/// A numbered run of records from one spool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// The spool's id, made when it was created (a spool that was lost and
    /// made again numbers from 1 under a new id).
    pub spool: [u8; 16],
    /// Rises from batch to batch within a spool; never 0.
    pub seq: u64,
    /// Records the spool dropped for room since the batch before this one.
    pub dropped: u64,
    /// The records, oldest first.
    pub records: Vec<EventRecord>,
}

/// Why a body is not a run of batches.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// Empty, or ended inside a batch.
    #[error("event batch truncated at byte {0}")]
    Truncated(usize),
    /// Not a batch where one should start.
    #[error("no event batch at byte {0} (bad magic)")]
    Magic(usize),
    /// Sequence number 0.
    #[error("event batch at byte {0} has sequence number 0")]
    ZeroSeq(usize),
    /// A record longer than [`MAX_RECORD`].
    #[error("event record {record} of batch {seq} is {len} bytes, over {MAX_RECORD}")]
    TooLong {
        /// The batch's sequence number.
        seq: u64,
        /// The record's index in its batch.
        record: usize,
        /// Its stated length.
        len: usize,
    },
    /// A record that does not decode.
    #[error("event record {record} of batch {seq}: {error}")]
    Record {
        /// The batch's sequence number.
        seq: u64,
        /// The record's index in its batch.
        record: usize,
        /// Why.
        error: EventError,
    },
}

impl Batch {
    /// Appends the batch's bytes to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        encode_header(self.spool, self.seq, self.dropped, self.records.len(), out);
        let mut rec = Vec::with_capacity(128);
        for r in &self.records {
            rec.clear();
            r.encode(&mut rec);
            push_record(&rec, out);
        }
    }

    /// The batch's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER + 64 * self.records.len());
        self.encode(&mut out);
        out
    }
}

/// Writes a batch header: what comes next are `count` records, each
/// written with [`push_record`].
pub fn encode_header(spool: [u8; 16], seq: u64, dropped: u64, count: usize, out: &mut Vec<u8>) {
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&spool);
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&dropped.to_le_bytes());
    out.extend_from_slice(&u32::try_from(count).unwrap_or(u32::MAX).to_le_bytes());
}

/// Writes one encoded record after a header.
pub fn push_record(record: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(
        &u32::try_from(record.len())
            .unwrap_or(u32::MAX)
            .to_le_bytes(),
    );
    out.extend_from_slice(record);
}

/// Reads a body of one or more batches (the whole slice).
pub fn decode(body: &[u8]) -> Result<Vec<Batch>, BatchError> {
    if body.is_empty() {
        return Err(BatchError::Truncated(0));
    }
    let mut batches = Vec::new();
    let mut at = 0;
    while at < body.len() {
        let (batch, next) = decode_one(body, at)?;
        batches.push(batch);
        at = next;
    }
    Ok(batches)
}

fn take(body: &[u8], at: usize, n: usize) -> Result<&[u8], BatchError> {
    body.get(at..at.checked_add(n).ok_or(BatchError::Truncated(at))?)
        .ok_or(BatchError::Truncated(at))
}

fn u64_at(body: &[u8], at: usize) -> Result<u64, BatchError> {
    let b = take(body, at, 8)?;
    Ok(u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
}

fn u32_at(body: &[u8], at: usize) -> Result<usize, BatchError> {
    let b = take(body, at, 4)?;
    Ok(u32::from_le_bytes(b.try_into().unwrap_or([0; 4])) as usize)
}

/// One batch starting at `start`; returns it and where the next starts.
fn decode_one(body: &[u8], start: usize) -> Result<(Batch, usize), BatchError> {
    if take(body, start, 4)? != MAGIC {
        return Err(BatchError::Magic(start));
    }
    let mut spool = [0; 16];
    spool.copy_from_slice(take(body, start + 4, 16)?);
    let seq = u64_at(body, start + 20)?;
    if seq == 0 {
        return Err(BatchError::ZeroSeq(start));
    }
    let dropped = u64_at(body, start + 28)?;
    let count = u32_at(body, start + 36)?;
    let mut at = start + HEADER;
    // Each record takes at least its 4-byte length: a count the body
    // cannot hold is refused before anything is reserved for it.
    if count > body.len().saturating_sub(at) / 4 {
        return Err(BatchError::Truncated(body.len()));
    }
    let mut records = Vec::with_capacity(count);
    for record in 0..count {
        let len = u32_at(body, at)?;
        if len > MAX_RECORD {
            return Err(BatchError::TooLong { seq, record, len });
        }
        let bytes = take(body, at + 4, len)?;
        let r = EventRecord::decode(bytes).map_err(|error| BatchError::Record {
            seq,
            record,
            error,
        })?;
        records.push(r);
        at += 4 + len;
    }
    Ok((
        Batch {
            spool,
            seq,
            dropped,
            records,
        },
        at,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Event;

    fn record(n: u64) -> EventRecord {
        EventRecord {
            ts_ms: 1_700_000_000_000 + n,
            worker: 1,
            event: Event::TenantTraffic {
                run_id: format!("run{n}"),
                token: "tok".into(),
                proxy: "web".into(),
                bytes_in: n,
                bytes_out: 2 * n,
                closed: n.is_multiple_of(2),
            },
        }
    }

    #[test]
    fn batches_back_to_back_come_out_as_they_went_in() {
        let a = Batch {
            spool: [7; 16],
            seq: 1,
            dropped: 0,
            records: (0..3).map(record).collect(),
        };
        let b = Batch {
            spool: [7; 16],
            seq: 5,
            dropped: 12,
            records: Vec::new(),
        };
        let mut body = a.to_bytes();
        b.encode(&mut body);
        assert_eq!(decode(&body), Ok(vec![a.clone(), b]));
        // The header and push_record write what encode writes.
        let mut by_parts = Vec::new();
        encode_header(a.spool, a.seq, a.dropped, a.records.len(), &mut by_parts);
        for r in &a.records {
            push_record(&r.to_bytes(), &mut by_parts);
        }
        assert_eq!(by_parts, a.to_bytes());
    }

    #[test]
    fn what_is_cut_short_or_wrong_is_refused_with_where() {
        let a = Batch {
            spool: [1; 16],
            seq: 3,
            dropped: 0,
            records: (1..4).map(record).collect(),
        };
        let body = a.to_bytes();
        assert_eq!(decode(&[]), Err(BatchError::Truncated(0)));
        // Every cut is refused, never read as fewer records.
        for cut in 1..body.len() {
            assert!(decode(&body[..cut]).is_err(), "cut at {cut}");
        }
        let mut bad = body.clone();
        bad[0] = b'X';
        assert_eq!(decode(&bad), Err(BatchError::Magic(0)));
        let mut zero = body.clone();
        zero[20..28].copy_from_slice(&0u64.to_le_bytes());
        assert_eq!(decode(&zero), Err(BatchError::ZeroSeq(0)));
        // A count far larger than the body: refused before reserving.
        let mut huge = body.clone();
        huge[36..40].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(decode(&huge), Err(BatchError::Truncated(_))));
        // A record that says it is 2 MiB.
        let mut long = body.clone();
        long[HEADER..HEADER + 4].copy_from_slice(&(2u32 << 20).to_le_bytes());
        assert!(matches!(
            decode(&long),
            Err(BatchError::TooLong {
                seq: 3,
                record: 0,
                ..
            })
        ));
        // A record that does not decode names its batch and index.
        let mut rec = body.clone();
        rec[HEADER + 4 + 8 + 2] = 250;
        let e = decode(&rec).unwrap_err();
        assert!(
            matches!(
                e,
                BatchError::Record {
                    seq: 3,
                    record: 0,
                    ..
                }
            ),
            "{e}"
        );
        // Junk after a whole batch.
        let mut tail = body.clone();
        tail.push(0);
        assert!(decode(&tail).is_err());
    }
}
