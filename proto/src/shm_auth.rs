//! Authentication of what the slowpath and the fastpath hand each other
//! through the shared-memory directory: policy tables and event records.
//!
//! A checksum only catches accidents. Anyone who can write a file into the
//! directory can also fix up a CRC, so each table and each event record
//! also carries an HMAC-SHA256 under a per-instance key ([`InstanceKey`])
//! that only the two processes can read (a 0600 file in the 0700
//! directory). A table or record that fails it is refused.
//!
//! ```text
//! table file:   table bytes (total_len from its header) | HMAC-SHA256 [32]
//! event record: record bytes | HMAC-SHA256 truncated [16]
//! ```
//!
//! The tags are computed over distinct domains (a table can never pass as
//! a record or the other way round).

use ring::hmac;

/// Bytes of the tag after a table.
pub const TABLE_TAG_LEN: usize = 32;
/// Bytes of the tag after an event record (truncated HMAC: enough against
/// forgery by guessing, small for records of a few dozen bytes).
pub const RECORD_TAG_LEN: usize = 16;
/// Length of the key in its file.
pub const KEY_LEN: usize = 32;

const TABLE_DOMAIN: &[u8] = b"totoro policy table v1\0";
const RECORD_DOMAIN: &[u8] = b"totoro event record v1\0";

/// Why sealed bytes were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// Too short to hold the content and its tag.
    #[error("too short to carry an authentication tag")]
    Truncated,
    /// The tag does not match: written without the instance key, or
    /// altered afterwards.
    #[error("authentication failed: not written with this instance's key")]
    BadTag,
}

/// The per-instance key both processes read from the shared-memory
/// directory.
#[derive(Clone)]
pub struct InstanceKey {
    key: hmac::Key,
}

impl std::fmt::Debug for InstanceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InstanceKey(..)")
    }
}

impl InstanceKey {
    /// A key from its raw bytes.
    pub fn new(raw: &[u8; KEY_LEN]) -> InstanceKey {
        InstanceKey {
            key: hmac::Key::new(hmac::HMAC_SHA256, raw),
        }
    }

    fn tag(&self, domain: &[u8], data: &[u8]) -> hmac::Tag {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(domain);
        ctx.update(data);
        ctx.sign()
    }

    /// Append the table tag to an encoded table.
    pub fn seal_table(&self, table: &mut Vec<u8>) {
        let tag = self.tag(TABLE_DOMAIN, table);
        table.extend_from_slice(tag.as_ref());
    }

    /// Check a table file and return the table part. The table's own
    /// `total_len` (header bytes 24..32) says where the tag starts; a file
    /// of any other length is refused.
    pub fn open_table<'a>(&self, file: &'a [u8]) -> Result<&'a [u8], SealError> {
        let total = file
            .get(24..32)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_le_bytes)
            .and_then(|t| usize::try_from(t).ok())
            .ok_or(SealError::Truncated)?;
        if total.checked_add(TABLE_TAG_LEN) != Some(file.len()) {
            return Err(SealError::Truncated);
        }
        let (table, tag) = file.split_at(total);
        if constant_time_eq(self.tag(TABLE_DOMAIN, table).as_ref(), tag) {
            Ok(table)
        } else {
            Err(SealError::BadTag)
        }
    }

    /// Append the record tag to an encoded event record.
    pub fn seal_record(&self, record: &mut Vec<u8>) {
        let tag = self.tag(RECORD_DOMAIN, record);
        record.extend_from_slice(&tag.as_ref()[..RECORD_TAG_LEN]);
    }

    /// Check a sealed record and return the record part.
    pub fn open_record<'a>(&self, sealed: &'a [u8]) -> Result<&'a [u8], SealError> {
        let at = sealed
            .len()
            .checked_sub(RECORD_TAG_LEN)
            .ok_or(SealError::Truncated)?;
        let (record, tag) = sealed.split_at(at);
        let want = self.tag(RECORD_DOMAIN, record);
        if constant_time_eq(&want.as_ref()[..RECORD_TAG_LEN], tag) {
            Ok(record)
        } else {
            Err(SealError::BadTag)
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table_of(len: usize) -> Vec<u8> {
        let mut t = vec![7u8; len];
        t[24..32].copy_from_slice(&(len as u64).to_le_bytes());
        t
    }

    #[test]
    fn a_sealed_table_opens_with_its_key_only() {
        let key = InstanceKey::new(&[1; 32]);
        let other = InstanceKey::new(&[2; 32]);
        let mut file = table_of(100);
        key.seal_table(&mut file);
        assert_eq!(file.len(), 100 + TABLE_TAG_LEN);
        assert_eq!(key.open_table(&file).map(<[u8]>::len), Ok(100));
        assert_eq!(other.open_table(&file), Err(SealError::BadTag));
        // An unsealed table (valid CRC or not) is refused.
        assert_eq!(key.open_table(&table_of(100)), Err(SealError::Truncated));
        // So is any change to content or tag.
        let mut bad = file.clone();
        bad[70] ^= 1;
        assert_eq!(key.open_table(&bad), Err(SealError::BadTag));
        let mut bad = file.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert_eq!(key.open_table(&bad), Err(SealError::BadTag));
        // Short or lying about its length.
        assert_eq!(key.open_table(&file[..20]), Err(SealError::Truncated));
        let mut long = file.clone();
        long.push(0);
        assert_eq!(key.open_table(&long), Err(SealError::Truncated));
        let mut huge = file;
        huge[24..32].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(key.open_table(&huge), Err(SealError::Truncated));
    }

    #[test]
    fn a_sealed_record_opens_with_its_key_only() {
        let key = InstanceKey::new(&[1; 32]);
        let mut rec = b"an event".to_vec();
        key.seal_record(&mut rec);
        assert_eq!(key.open_record(&rec), Ok(&b"an event"[..]));
        assert_eq!(
            InstanceKey::new(&[3; 32]).open_record(&rec),
            Err(SealError::BadTag)
        );
        rec[0] ^= 1;
        assert_eq!(key.open_record(&rec), Err(SealError::BadTag));
        assert_eq!(key.open_record(&[0; 5]), Err(SealError::Truncated));
    }

    #[test]
    fn a_table_tag_is_not_a_record_tag() {
        let key = InstanceKey::new(&[9; 32]);
        let mut t = table_of(64);
        key.seal_table(&mut t);
        // The first 16 bytes of a table tag over the same bytes must not
        // pass as that content's record tag.
        let mut as_record = t[..64].to_vec();
        as_record.extend_from_slice(&t[64..64 + RECORD_TAG_LEN]);
        assert_eq!(key.open_record(&as_record), Err(SealError::BadTag));
    }
}
