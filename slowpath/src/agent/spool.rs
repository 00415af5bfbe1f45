//! The node agent's event spool: what the agent took from the fastpath's
//! rings, on disk until a control plane has written it.
//!
//! Each pass over the rings that found records becomes one batch file,
//! `<seq>.batch` (20 digits), written aside, synced and renamed into place
//! before the rings are given their space back. A file holds, after a
//! short prefix, the batch as it is shipped ([`proto::event_batch`]), and
//! before it where the agent was in each ring once it had read the batch
//! ([`Cursor`]). After a crash between the rename and the rings' release
//! the agent reads on from those cursors, not again from what the rings
//! still hold: a record goes into the spool once. The newest file is kept
//! even when it was acknowledged, for its cursors; the control plane
//! acknowledges a batch sent twice without writing it twice.
//!
//! The spool has an id (`spool.id`, made with the spool) and numbers its
//! batches from 1; the control plane keeps the last number it wrote per
//! node and spool. Over its budget the spool drops its oldest batches,
//! counts their records and tells the control plane in the next batch it
//! writes; a batch being sent is not dropped.
//!
//! Layout of a file: `"TSP1"`, the cursors' JSON length (u32 LE), the
//! cursors as JSON, then the batch.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use anyhow::{anyhow, Context as _, Result};
use proto::event_batch::{self, Batch};
use proto::events::EventRecord;

use crate::store::private_files;
use crate::telemetry::events_drain::Cursor;

const PREFIX: &[u8; 4] = b"TSP1";
const ID_FILE: &str = "spool.id";
const SUFFIX: &str = ".batch";

/// What the heartbeat says of the spool.
#[derive(Debug, Default)]
pub struct SpoolStats {
    /// Batches not yet acknowledged.
    pub batches: AtomicU64,
    /// Bytes of batch files on disk.
    pub bytes: AtomicU64,
    /// Records dropped for room since the agent started.
    pub dropped: AtomicU64,
}

/// A batch file on disk.
#[derive(Debug, Clone, Copy)]
struct Entry {
    seq: u64,
    bytes: u64,
}

/// The spool directory.
pub struct Spool {
    dir: PathBuf,
    id: [u8; 16],
    /// Batch files on disk, oldest first.
    files: Vec<Entry>,
    next_seq: u64,
    /// Batches up to this one were acknowledged.
    acked: u64,
    /// Batches up to this one are being sent: not dropped for room.
    sending: u64,
    budget: u64,
    /// Records dropped for room and not yet told in a batch.
    dropped_untold: u64,
    stats: std::sync::Arc<SpoolStats>,
}

fn file_name(seq: u64) -> String {
    format!("{seq:020}{SUFFIX}")
}

impl Spool {
    /// Opens (or makes) the spool in `dir` with a budget of `budget` bytes;
    /// returns it and the ring cursors its newest batch was written with.
    pub fn open(dir: &Path, budget: u64) -> Result<(Spool, Vec<Cursor>)> {
        private_files::ensure_dir(dir, "--spool-dir")?;
        let id_path = dir.join(ID_FILE);
        let mut fresh = [0u8; 16];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut fresh)
            .map_err(|_| anyhow!("no randomness for the spool id"))?;
        private_files::create_new(&id_path, hex::encode(fresh).as_bytes())?;
        let text = private_files::read(&id_path)?.unwrap_or_default();
        let id: [u8; 16] = hex::decode(text.trim())
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| anyhow!("{} is not a spool id (32 hex digits)", id_path.display()))?;
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir).with_context(|| format!("{}", dir.display()))? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(seq) = name
                .strip_suffix(SUFFIX)
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            let bytes = entry.metadata().map(|m| m.len()).unwrap_or(0);
            files.push(Entry { seq, bytes });
        }
        files.sort_by_key(|e| e.seq);
        let cursors = match files.last() {
            Some(newest) => match read_file(&dir.join(file_name(newest.seq))) {
                Ok((cursors, _)) => cursors,
                Err(e) => {
                    tracing::warn!(error = %e, "the newest spool file is unreadable; reading the rings from where they were released");
                    Vec::new()
                }
            },
            None => Vec::new(),
        };
        let next_seq = files.last().map_or(1, |e| e.seq + 1);
        let spool = Spool {
            dir: dir.to_owned(),
            id,
            files,
            next_seq,
            acked: 0,
            sending: 0,
            budget,
            dropped_untold: 0,
            stats: std::sync::Arc::default(),
        };
        spool.update_stats();
        Ok((spool, cursors))
    }

    /// The figures the heartbeat reads.
    pub fn stats(&self) -> std::sync::Arc<SpoolStats> {
        std::sync::Arc::clone(&self.stats)
    }

    fn update_stats(&self) {
        let pending = self.files.iter().filter(|e| e.seq > self.acked);
        self.stats.batches.store(pending.count() as u64, Relaxed);
        self.stats
            .bytes
            .store(self.files.iter().map(|e| e.bytes).sum(), Relaxed);
    }

    /// Writes `records` as the next batch, with the ring `cursors` after
    /// them, dropping the oldest batches first when over the budget;
    /// returns its sequence number. Once this returns the batch is on disk
    /// (synced), and the rings may be released.
    pub fn append(&mut self, records: &[EventRecord], cursors: &[Cursor]) -> Result<u64> {
        let seq = self.next_seq;
        let state = serde_json::to_vec(cursors)?;
        let mut recs = Vec::with_capacity(96 * records.len());
        let mut rec = Vec::with_capacity(128);
        for r in records {
            rec.clear();
            r.encode(&mut rec);
            event_batch::push_record(&rec, &mut recs);
        }
        // Room first: what is dropped now is told in this batch's header.
        let len = 8 + state.len() + event_batch::HEADER + recs.len();
        self.make_room(len as u64);
        let mut bytes = Vec::with_capacity(len);
        bytes.extend_from_slice(PREFIX);
        bytes.extend_from_slice(&u32::try_from(state.len())?.to_le_bytes());
        bytes.extend_from_slice(&state);
        event_batch::encode_header(self.id, seq, self.dropped_untold, records.len(), &mut bytes);
        bytes.extend_from_slice(&recs);
        let path = self.dir.join(file_name(seq));
        private_files::write(&path, &bytes)?;
        // The rename is durable once the directory is.
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("syncing {}", self.dir.display()))?;
        self.files.push(Entry {
            seq,
            bytes: bytes.len() as u64,
        });
        self.next_seq += 1;
        self.dropped_untold = 0;
        self.update_stats();
        Ok(seq)
    }

    /// Drops the oldest batches (not one being sent) until `incoming` more
    /// bytes fit in the budget.
    fn make_room(&mut self, incoming: u64) {
        let mut total: u64 = self.files.iter().map(|e| e.bytes).sum();
        while total + incoming > self.budget {
            let Some(pos) = self.files.iter().position(|e| e.seq > self.sending) else {
                break;
            };
            let victim = self.files.remove(pos);
            let path = self.dir.join(file_name(victim.seq));
            // A dropped batch that told of earlier drops passes that on.
            let (records, told) = if victim.seq > self.acked {
                read_file(&path).map(|(_, b)| count(&b)).unwrap_or((0, 0))
            } else {
                (0, 0)
            };
            self.dropped_untold += told;
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove a spool file");
            }
            total -= victim.bytes;
            if records > 0 {
                self.dropped_untold += records;
                self.stats.dropped.fetch_add(records, Relaxed);
                tracing::warn!(
                    seq = victim.seq,
                    records,
                    budget = self.budget,
                    "the event spool is over its budget: dropped its oldest batch"
                );
            }
        }
    }

    /// Up to `max_bytes` of batches not yet acknowledged (at least one when
    /// there is one), oldest first, as one body; marks them as being sent.
    /// A file that cannot be read is set aside (renamed `.unreadable`) and
    /// its place skipped.
    pub fn take_unacked(&mut self, max_bytes: usize) -> Option<(u64, Vec<u8>)> {
        let mut body = Vec::new();
        let mut last = 0;
        let wanted: Vec<Entry> = self
            .files
            .iter()
            .filter(|e| e.seq > self.acked)
            .copied()
            .collect();
        for e in wanted {
            let path = self.dir.join(file_name(e.seq));
            match read_file(&path) {
                Ok((_, batch)) => {
                    if !body.is_empty() && body.len() + batch.len() > max_bytes {
                        break;
                    }
                    body.extend_from_slice(&batch);
                    last = e.seq;
                }
                Err(err) => {
                    self.set_aside(e.seq, &err.to_string());
                }
            }
        }
        if body.is_empty() {
            return None;
        }
        self.sending = last;
        Some((last, body))
    }

    /// A batch the control plane refuses, or a file that does not read:
    /// renamed `<seq>.unreadable` (kept for whoever looks), not sent again.
    pub fn set_aside(&mut self, seq: u64, why: &str) {
        let path = self.dir.join(file_name(seq));
        let aside = self.dir.join(format!("{seq:020}.unreadable"));
        tracing::error!(seq, reason = %why, path = %aside.display(), "event batch set aside; not sent again");
        let (records, told) = read_file(&path).map(|(_, b)| count(&b)).unwrap_or((0, 0));
        self.dropped_untold += records + told;
        if let Err(e) = std::fs::rename(&path, &aside) {
            tracing::warn!(error = %e, "cannot set the batch aside; removing it");
            let _ = std::fs::remove_file(&path);
        }
        self.files.retain(|e| e.seq != seq);
        self.stats.dropped.fetch_add(records, Relaxed);
        self.update_stats();
    }

    /// Batches up to `seq` were written by the control plane: remove
    /// their files, all but the newest (it holds the cursors).
    pub fn acked(&mut self, seq: u64) {
        self.acked = self.acked.max(seq);
        self.sending = 0;
        let newest = self.files.last().map_or(0, |e| e.seq);
        let dir = &self.dir;
        self.files.retain(|e| {
            if e.seq <= seq && e.seq != newest {
                let _ = std::fs::remove_file(dir.join(file_name(e.seq)));
                false
            } else {
                true
            }
        });
        self.update_stats();
    }

    /// A send failed: the batches being sent may be dropped for room again.
    pub fn not_sent(&mut self) {
        self.sending = 0;
    }
}

/// The cursors and the batch bytes of a spool file.
fn read_file(path: &Path) -> Result<(Vec<Cursor>, Vec<u8>)> {
    let bytes = std::fs::read(path).with_context(|| format!("{}", path.display()))?;
    let bad = || anyhow!("{} is not a spool file", path.display());
    if bytes.get(..4) != Some(PREFIX.as_slice()) {
        return Err(bad());
    }
    let len = bytes
        .get(4..8)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_le_bytes)
        .ok_or_else(bad)? as usize;
    let state = bytes.get(8..8 + len).ok_or_else(bad)?;
    let cursors: Vec<Cursor> = serde_json::from_slice(state).map_err(|_| bad())?;
    let batch = bytes.get(8 + len..).ok_or_else(bad)?.to_vec();
    // The batch must be whole: a torn file is not sent.
    event_batch::decode(&batch).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    Ok((cursors, batch))
}

/// Records in one batch's bytes, and the drops it tells of.
fn count(batch: &[u8]) -> (u64, u64) {
    event_batch::decode(batch)
        .map(|b: Vec<Batch>| {
            b.iter().fold((0, 0), |(n, d), b| {
                (n + b.records.len() as u64, d + b.dropped)
            })
        })
        .unwrap_or((0, 0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::events::Event;

    fn records(n: usize, tag: &str) -> Vec<EventRecord> {
        (0..n)
            .map(|i| EventRecord {
                ts_ms: 1_700_000_000_000,
                worker: 0,
                event: Event::AuthFailed {
                    peer: format!("192.0.2.1:{i}"),
                    invite: None,
                    reason: format!("{tag} {}", "x".repeat(200)),
                    refusal: None,
                },
            })
            .collect()
    }

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("totoro-spool-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn batches_are_numbered_sent_in_order_and_the_newest_keeps_the_cursors() {
        let dir = tmp("order");
        let cursor = Cursor {
            name: "events-0.ring".into(),
            identity: (7, 4096),
            producer: 42,
            read_to: 1234,
        };
        let (mut s, c) = Spool::open(&dir, 1 << 20).unwrap();
        assert!(c.is_empty());
        assert_eq!(s.append(&records(3, "a"), &[]).unwrap(), 1);
        assert_eq!(
            s.append(&records(2, "b"), std::slice::from_ref(&cursor))
                .unwrap(),
            2
        );
        let (last, body) = s.take_unacked(1 << 20).unwrap();
        assert_eq!(last, 2);
        let batches = event_batch::decode(&body).unwrap();
        assert_eq!(
            batches
                .iter()
                .map(|b| (b.seq, b.records.len()))
                .collect::<Vec<_>>(),
            [(1, 3), (2, 2)]
        );
        s.acked(2);
        assert!(s.take_unacked(1 << 20).is_none());
        // Reopened: numbering goes on, and the newest file's cursors come
        // back even though it was acknowledged.
        let id = s.id;
        drop(s);
        let (mut s, c) = Spool::open(&dir, 1 << 20).unwrap();
        assert_eq!(c, vec![cursor]);
        assert_eq!(s.id, id);
        assert_eq!(s.append(&records(1, "c"), &[]).unwrap(), 3);
        // Acknowledged before the restart, so sent again after it: the
        // control plane acknowledges it without writing it twice.
        let (_, body) = s.take_unacked(1 << 20).unwrap();
        let seqs: Vec<u64> = event_batch::decode(&body)
            .unwrap()
            .iter()
            .map(|b| b.seq)
            .collect();
        assert_eq!(seqs, [2, 3]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn over_its_budget_the_spool_drops_the_oldest_and_says_how_many() {
        let dir = tmp("budget");
        // About 2.5 batches of 10 records fit.
        let one = {
            let (mut s, _) = Spool::open(&dir, 1 << 20).unwrap();
            s.append(&records(10, "probe"), &[]).unwrap();
            let b = s.files[0].bytes;
            drop(s);
            std::fs::remove_dir_all(&dir).unwrap();
            b
        };
        let (mut s, _) = Spool::open(&dir, one * 5 / 2).unwrap();
        for i in 0..5 {
            s.append(&records(10, &format!("n{i}")), &[]).unwrap();
        }
        assert_eq!(s.stats().dropped.load(Relaxed), 30);
        let (_, body) = s.take_unacked(1 << 20).unwrap();
        let batches = event_batch::decode(&body).unwrap();
        assert_eq!(
            batches
                .iter()
                .map(|b| (b.seq, b.dropped))
                .collect::<Vec<_>>(),
            [(4, 10), (5, 20)]
        );
        // Every dropped record is told once: 10 + 20 in the batches left
        // (batch 3, which told of batch 1, was dropped and passed it on).
        // A batch being sent is not dropped: 4 and 5 stay, 6 is written
        // over the budget.
        s.append(&records(10, "n5"), &[]).unwrap();
        assert!(s.files.iter().any(|e| e.seq == 4));
        s.acked(5);
        assert_eq!(s.stats().batches.load(Relaxed), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_torn_file_is_set_aside_not_sent() {
        let dir = tmp("torn");
        let (mut s, _) = Spool::open(&dir, 1 << 20).unwrap();
        s.append(&records(2, "a"), &[]).unwrap();
        s.append(&records(2, "b"), &[]).unwrap();
        let path = dir.join(file_name(1));
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
        let (last, body) = s.take_unacked(1 << 20).unwrap();
        assert_eq!(last, 2);
        assert_eq!(event_batch::decode(&body).unwrap().len(), 1);
        assert!(dir.join(format!("{:020}.unreadable", 1)).exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
