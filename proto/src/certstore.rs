//! The edge's certificate store file: the managed certificates, with their
//! private keys, that the slowpath hands the fastpath next to the policy
//! table (seed 004, TLS termination by SNI).
//!
//! The file is written aside and renamed into the policy directory (mode
//! 0600, like the table). The table that goes with it names its SHA-256
//! ([`digest`]); the table is sealed under the instance key, so a store
//! that does not hash to what the table says — truncated, corrupt, or
//! planted — is refused and the last good one stays in force.
//!
//! ```text
//! magic "TOTOCRT\0" [8] | version u32 (1) | count u32
//! count x entry:
//!   name_count u16 | name_count x (len u16, hostname bytes)
//!   chain_count u16 | chain_count x (len u32, certificate DER)
//!   key_len u32 | private key DER (PKCS#8, SEC1 or PKCS#1)
//! ```
//!
//! Little-endian throughout. Hostnames are canonical (lowercase ASCII);
//! `*.example.com` is a wildcard for one label.

/// First eight bytes of every store.
pub const MAGIC: &[u8; 8] = b"TOTOCRT\0";
/// Layout version this code writes and reads.
pub const VERSION: u32 = 1;
/// Most hostnames one certificate may carry.
pub const MAX_NAMES: usize = 100;
/// Most certificates in one chain.
pub const MAX_CHAIN: usize = 10;
/// Largest certificate or key, in bytes.
pub const MAX_DER: usize = 64 * 1024;
/// Longest hostname.
pub const MAX_NAME: usize = 253;

/// One certificate with its key, borrowed from the file's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry<'a> {
    /// The hostnames it serves.
    pub names: Vec<&'a str>,
    /// The chain, leaf first, DER.
    pub chain: Vec<&'a [u8]>,
    /// The private key, DER.
    pub key: &'a [u8],
}

/// Why a store was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// Not a certificate store.
    #[error("not a certificate store (bad magic)")]
    BadMagic,
    /// A layout version this build does not read.
    #[error("unsupported certificate store version {0}")]
    Version(u32),
    /// Ends inside an entry.
    #[error("certificate store truncated in entry {0}")]
    Truncated(usize),
    /// A field over its bound, or not what it must be.
    #[error("certificate store entry {0}: {1}")]
    Bad(usize, &'static str),
    /// Bytes after the last entry.
    #[error("certificate store has trailing bytes")]
    Trailing,
}

/// SHA-256 of a store's bytes, as the table names it.
pub fn digest(bytes: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Encode a store. Entries over the bounds of [`decode`] are the caller's
/// mistake; the slowpath checks certificates before it keeps them.
pub fn encode(entries: &[Entry<'_>]) -> Vec<u8> {
    let size: usize = entries
        .iter()
        .map(|e| {
            8 + e.names.iter().map(|n| 2 + n.len()).sum::<usize>()
                + e.chain.iter().map(|c| 4 + c.len()).sum::<usize>()
                + e.key.len()
        })
        .sum();
    let mut out = Vec::with_capacity(16 + size);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for e in entries {
        out.extend_from_slice(&(e.names.len() as u16).to_le_bytes());
        for n in &e.names {
            out.extend_from_slice(&(n.len() as u16).to_le_bytes());
            out.extend_from_slice(n.as_bytes());
        }
        out.extend_from_slice(&(e.chain.len() as u16).to_le_bytes());
        for c in &e.chain {
            out.extend_from_slice(&(c.len() as u32).to_le_bytes());
            out.extend_from_slice(c);
        }
        out.extend_from_slice(&(e.key.len() as u32).to_le_bytes());
        out.extend_from_slice(e.key);
    }
    out
}

/// Read a store in place, checking every bound.
pub fn decode(bytes: &[u8]) -> Result<Vec<Entry<'_>>, StoreError> {
    if bytes.len() < 16 || &bytes[..8] != MAGIC {
        return Err(StoreError::BadMagic);
    }
    let version = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    if version != VERSION {
        return Err(StoreError::Version(version));
    }
    let count = u32::from_le_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]) as usize;
    let mut r = Reader {
        bytes,
        at: 16,
        entry: 0,
    };
    // Each entry takes at least 8 bytes: a count is not trusted further.
    let mut out = Vec::with_capacity(count.min(bytes.len() / 8));
    for i in 0..count {
        r.entry = i;
        let names = r.u16()? as usize;
        if names == 0 || names > MAX_NAMES {
            return Err(StoreError::Bad(i, "name count"));
        }
        let mut list = Vec::with_capacity(names);
        for _ in 0..names {
            let len = r.u16()? as usize;
            if len == 0 || len > MAX_NAME {
                return Err(StoreError::Bad(i, "hostname length"));
            }
            let name = std::str::from_utf8(r.take(len)?)
                .map_err(|_| StoreError::Bad(i, "hostname is not UTF-8"))?;
            if !valid_name(name) {
                return Err(StoreError::Bad(i, "hostname is not canonical"));
            }
            list.push(name);
        }
        let chain = r.u16()? as usize;
        if chain == 0 || chain > MAX_CHAIN {
            return Err(StoreError::Bad(i, "chain length"));
        }
        let mut certs = Vec::with_capacity(chain);
        for _ in 0..chain {
            let len = r.u32()? as usize;
            if len == 0 || len > MAX_DER {
                return Err(StoreError::Bad(i, "certificate size"));
            }
            certs.push(r.take(len)?);
        }
        let len = r.u32()? as usize;
        if len == 0 || len > MAX_DER {
            return Err(StoreError::Bad(i, "key size"));
        }
        let key = r.take(len)?;
        out.push(Entry {
            names: list,
            chain: certs,
            key,
        });
    }
    if r.at != bytes.len() {
        return Err(StoreError::Trailing);
    }
    Ok(out)
}

/// A canonical hostname or a one-label wildcard: lowercase letters,
/// digits, `-` and `.`, no empty label.
fn valid_name(name: &str) -> bool {
    let rest = name.strip_prefix("*.").unwrap_or(name);
    !rest.is_empty()
        && rest.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
    entry: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], StoreError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or(StoreError::Truncated(self.entry))?;
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn u16(&mut self) -> Result<u16, StoreError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, StoreError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        encode(&[
            Entry {
                names: vec!["app.hoge.com", "*.hoge.com"],
                chain: vec![b"leaf", b"issuer"],
                key: b"key1",
            },
            Entry {
                names: vec!["wiki.fuga.com"],
                chain: vec![b"leaf2"],
                key: b"key2",
            },
        ])
    }

    #[test]
    fn round_trip() {
        let bytes = sample();
        let e = decode(&bytes).unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].names, vec!["app.hoge.com", "*.hoge.com"]);
        assert_eq!(e[0].chain, vec![&b"leaf"[..], &b"issuer"[..]]);
        assert_eq!(e[1].key, b"key2");
        assert_eq!(digest(&bytes), digest(&sample()));
        assert_eq!(decode(&encode(&[])).unwrap(), vec![]);
    }

    #[test]
    fn every_cut_and_bad_field_is_refused() {
        let bytes = sample();
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut long = bytes.clone();
        long.push(0);
        assert_eq!(decode(&long), Err(StoreError::Trailing));
        let mut upper = bytes.clone();
        upper[20] = b'A';
        assert_eq!(
            decode(&upper),
            Err(StoreError::Bad(0, "hostname is not canonical"))
        );
        let mut version = bytes.clone();
        version[8] = 2;
        assert_eq!(decode(&version), Err(StoreError::Version(2)));
        // A count far larger than the bytes is refused, not allocated.
        let mut count = bytes;
        count[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(decode(&count), Err(StoreError::Truncated(2))));
    }
}

/// The validity of an X.509 certificate (DER): `notBefore` and `notAfter`
/// in unix ms. None when the bytes are not a certificate this reads
/// (only the path to the validity is walked; nothing else is checked).
pub fn validity(der: &[u8]) -> Option<(i64, i64)> {
    // Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version
    // OPTIONAL, serialNumber, signature, issuer, validity, ... }, ... }
    let (_, cert, _) = der_item(der)?;
    let (_, tbs, _) = der_item(cert)?;
    let mut rest = tbs;
    let (tag, _, after) = der_item(rest)?;
    if tag == 0xa0 {
        rest = after;
    }
    for _ in 0..3 {
        // serialNumber, signature, issuer
        let (_, _, after) = der_item(rest)?;
        rest = after;
    }
    let (tag, validity, _) = der_item(rest)?;
    if tag != 0x30 {
        return None;
    }
    let (t1, nb, after) = der_item(validity)?;
    let (t2, na, _) = der_item(after)?;
    Some((der_time(t1, nb)?, der_time(t2, na)?))
}

/// One DER item: (tag, contents, what follows). Short and long definite
/// lengths only.
fn der_item(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let tag = *b.first()?;
    let first = *b.get(1)? as usize;
    let (len, head) = if first < 0x80 {
        (first, 2)
    } else {
        let n = first & 0x7f;
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for i in 0..n {
            len = (len << 8) | *b.get(2 + i)? as usize;
        }
        (len, 2 + n)
    };
    let end = head.checked_add(len)?;
    let contents = b.get(head..end)?;
    Some((tag, contents, &b[end..]))
}

/// UTCTime (0x17, YYMMDDHHMMSSZ) or GeneralizedTime (0x18,
/// YYYYMMDDHHMMSSZ) in unix ms.
fn der_time(tag: u8, t: &[u8]) -> Option<i64> {
    let digits = |s: &[u8]| -> Option<i64> {
        s.iter().try_fold(0i64, |acc, &c| {
            c.is_ascii_digit().then(|| acc * 10 + i64::from(c - b'0'))
        })
    };
    let (year, rest) = match (tag, t.len()) {
        (0x17, 13) => {
            let yy = digits(&t[..2])?;
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, &t[2..])
        }
        (0x18, 15) => (digits(&t[..4])?, &t[4..]),
        _ => return None,
    };
    if rest.last() != Some(&b'Z') {
        return None;
    }
    let (mo, d, h, mi, s) = (
        digits(&rest[0..2])?,
        digits(&rest[2..4])?,
        digits(&rest[4..6])?,
        digits(&rest[6..8])?,
        digits(&rest[8..10])?,
    );
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if mo <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 86_400) + h * 3600 + mi * 60 + s) * 1000)
}

#[cfg(test)]
mod validity_tests {
    use super::*;

    #[test]
    fn times_convert_to_unix_ms() {
        assert_eq!(der_time(0x17, b"700101000000Z"), Some(0));
        assert_eq!(der_time(0x17, b"240229120000Z"), Some(1_709_208_000_000));
        assert_eq!(der_time(0x18, b"20500101000000Z"), Some(2_524_608_000_000));
        assert_eq!(der_time(0x17, b"241329120000Z"), None);
        assert_eq!(der_time(0x17, b"2402291200Z"), None);
        assert_eq!(validity(b"\x30\x03\x30\x01"), None);
        assert_eq!(validity(&[]), None);
    }
}
