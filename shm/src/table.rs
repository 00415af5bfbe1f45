//! The policy table file: loaded as a private, validated copy
//! ([`LoadedTable`]), and its header read for a generation
//! ([`InstanceDir::table_generation`], [`ShmDir::table_header`]).
//!
//! The table is never mapped: see the crate docs for why a private copy
//! and not a sealed memfd.

use std::fmt;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt as _;
use std::ptr::NonNull;

use proto::policy::table::TableHeader;
use proto::policy::{PolicyTable, TableError};
use proto::shm_auth::{InstanceKey, SealError};

use crate::dir::{InstanceDir, ShmDir};
use crate::layout::TABLE_FILE;

/// Why a table file was not loaded.
#[derive(Debug)]
pub enum LoadError {
    /// The file could not be read.
    Read(io::Error),
    /// Not sealed with this instance's key (or not the length its header
    /// says).
    Seal(SealError),
    /// Sealed, but not a table this build can use.
    Table(TableError),
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::Read(e) => write!(f, "cannot read: {e}"),
            LoadError::Seal(e) => e.fmt(f),
            LoadError::Table(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for LoadError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            LoadError::Read(e) => Some(e),
            LoadError::Seal(e) => Some(e),
            LoadError::Table(e) => Some(e),
        }
    }
}

/// A validated table generation, in memory of its own.
///
/// The table is read from the file into a private buffer and checked once
/// (its tag under the instance key, then its structure) before it is used,
/// so nothing another process does to the file afterwards (truncate it,
/// write into it) can reach a table in force. A table is a few MB at most
/// and is loaded only when a new generation appears.
pub struct LoadedTable {
    /// Borrows `bytes` for as long as `self` lives (hence the `'static`,
    /// never handed out: [`LoadedTable::get`] shortens it to `&self`).
    table: PolicyTable<'static>,
    /// The heap buffer, from `Box::into_raw`, freed in `Drop`. A raw
    /// pointer and not a `Box`: moving a `Box` asserts it is the only way
    /// to its bytes, which `table`'s borrow would contradict.
    bytes: NonNull<[u8]>,
}

// SAFETY: the buffer is owned by this value alone, and neither it nor the
// table view is ever written after `from_file_bytes` returns, so sharing
// or sending it across threads only ever shares immutable bytes.
unsafe impl Send for LoadedTable {}
// SAFETY: as for Send: `&LoadedTable` gives read-only access to bytes that
// nothing writes.
unsafe impl Sync for LoadedTable {}

impl LoadedTable {
    /// Validate a table file's bytes: the tag under `key`, then the table.
    pub fn from_file_bytes(file: Vec<u8>, key: &InstanceKey) -> Result<LoadedTable, LoadError> {
        let len = key.open_table(&file).map_err(LoadError::Seal)?.len();
        let mut file = file;
        file.truncate(len);
        let bytes = NonNull::from(Box::leak(file.into_boxed_slice()));
        // SAFETY: `bytes` is a live heap allocation that this function
        // leaked and that only `Drop` frees; the view made here is kept
        // only in the returned value (or dropped right here on error), and
        // nothing writes the bytes, so reading them for as long as the
        // `LoadedTable` lives is sound.
        let view: &'static [u8] = unsafe { bytes.as_ref() };
        match PolicyTable::parse(view) {
            Ok(table) => Ok(LoadedTable { table, bytes }),
            Err(e) => {
                free(bytes);
                Err(LoadError::Table(e))
            }
        }
    }

    /// Read and validate the table in `dir`.
    pub fn load(dir: &ShmDir, key: &InstanceKey) -> Result<LoadedTable, LoadError> {
        let file = dir.read(TABLE_FILE).map_err(LoadError::Read)?;
        Self::from_file_bytes(file, key)
    }

    /// The table.
    pub fn get(&self) -> PolicyTable<'_> {
        self.table
    }
}

impl Drop for LoadedTable {
    fn drop(&mut self) {
        // `self.table` still holds the address but is never read again.
        free(self.bytes);
    }
}

impl fmt::Debug for LoadedTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.table.fmt(f)
    }
}

/// Free a buffer leaked by `from_file_bytes`.
fn free(bytes: NonNull<[u8]>) {
    // SAFETY: `bytes` came from `Box::leak` of a `Box<[u8]>`, and each one
    // is freed once: on the error path of `from_file_bytes` (where no
    // LoadedTable was made) or in LoadedTable's Drop (after which its view
    // is never read).
    drop(unsafe { Box::from_raw(bytes.as_ptr()) });
}

/// The header of an open table file, read with one `pread` of its first
/// bytes. Not authenticated: for observers (benches, tests) that only want
/// the generation on disk. What the publisher trusts comes from
/// [`InstanceDir::table_generation`].
pub fn read_table_header(file: &File) -> io::Result<TableHeader> {
    let mut head = [0u8; TableHeader::LEN];
    file.read_exact_at(&mut head, 0)?;
    TableHeader::parse(&head).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

impl ShmDir {
    /// The header of the table in the directory (see
    /// [`read_table_header`]: not authenticated).
    pub fn table_header(&self) -> io::Result<TableHeader> {
        read_table_header(&self.open_file(TABLE_FILE, false)?)
    }
}

impl InstanceDir {
    /// Puts an encoded policy table in place: stamped with `generation`
    /// and `created_ms`, sealed under the instance key, written aside and
    /// renamed over the last one (a reader sees one or the other, whole).
    /// Returns the file's length. The slowpath's publisher and the node
    /// agent both write tables this way.
    pub fn write_table(
        &self,
        mut table: Vec<u8>,
        generation: u64,
        created_ms: u64,
    ) -> io::Result<usize> {
        proto::policy::table::stamp(&mut table, generation, created_ms);
        self.key.seal_table(&mut table);
        self.dir.write_replacing(TABLE_FILE, &table)?;
        Ok(table.len())
    }

    /// The generation of the table in the directory; None when there is
    /// none, or it is unreadable, or not sealed with this instance's key (a
    /// planted table must not push the generation counter to its end).
    /// Only the header is needed, but the tag covers the whole file, so
    /// all of it is read.
    pub fn table_generation(&self) -> Option<u64> {
        let file = self.dir.read(TABLE_FILE).ok()?;
        let table = self.key.open_table(&file).ok()?;
        Some(TableHeader::parse(table).ok()?.generation)
    }

    /// Read and validate the table in the directory.
    pub fn load_table(&self) -> Result<LoadedTable, LoadError> {
        LoadedTable::load(&self.dir, &self.key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::policy::{NodePolicy, PolicySpec, PortSet, ProxyTypes};

    pub(crate) fn spec(generation: u64) -> PolicySpec {
        PolicySpec {
            edge: Default::default(),
            mesh: Default::default(),
            generation,
            created_ms: 1,
            node: NodePolicy {
                node_id: "n".into(),
                region: "eu".into(),
                public: true,
                port_pool: PortSet::parse("20000-20010").unwrap(),
                proxy_types: ProxyTypes::parse("tcp").unwrap(),
                max_proxies_per_session: 0,
                sub_domain_host: String::new(),
            },
            keys: Vec::new(),
            invites: Vec::new(),
            tenants: Vec::new(),
        }
    }

    #[test]
    fn a_table_is_loaded_as_a_private_copy_and_its_generation_read_safely() {
        let p = std::env::temp_dir().join(format!("totoro-shm-table-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        let inst = InstanceDir::open(&p).unwrap();
        assert_eq!(inst.table_generation(), None);
        let mut file = spec(5).encode();
        inst.key.seal_table(&mut file);
        inst.dir.write_replacing(TABLE_FILE, &file).unwrap();
        assert_eq!(inst.table_generation(), Some(5));
        assert_eq!(inst.dir.table_header().unwrap().generation, 5);
        let loaded = inst.load_table().unwrap();
        // Writing into the file (in place, which no Totoro process does)
        // cannot reach the copy in force.
        let f = inst.dir.open_file(TABLE_FILE, true).unwrap();
        f.write_all_at(&[0xff; 64], 0).unwrap();
        f.set_len(10).unwrap();
        assert_eq!(loaded.get().generation(), 5);
        assert_eq!(loaded.get().node().node_id(), "n");
        assert!(matches!(inst.load_table(), Err(LoadError::Seal(_))));
        assert_eq!(inst.table_generation(), None);
        // A table under another key is not trusted for its generation.
        let other = InstanceKey::new(&[7; 32]);
        let mut planted = spec(u64::MAX - 1).encode();
        other.seal_table(&mut planted);
        inst.dir.write_replacing(TABLE_FILE, &planted).unwrap();
        assert_eq!(inst.table_generation(), None);
        assert_eq!(inst.dir.table_header().unwrap().generation, u64::MAX - 1);
        // A sealed file that is not a table is refused after its tag.
        let mut junk = vec![0u8; 64];
        junk[24..32].copy_from_slice(&64u64.to_le_bytes());
        inst.key.seal_table(&mut junk);
        let e = LoadedTable::from_file_bytes(junk, &inst.key).unwrap_err();
        assert!(matches!(e, LoadError::Table(TableError::BadMagic)), "{e}");
        std::fs::remove_dir_all(&p).unwrap();
    }
}
