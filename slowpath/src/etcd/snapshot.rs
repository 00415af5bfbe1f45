//! The tenants under the prefix as of one etcd revision, kept current by
//! applying watch batches. Pure: no I/O, so the rules below are tested
//! with plain values.
//!
//! A key whose value does not parse is skipped (named in
//! [`Snapshot::skipped`] with the reason) and the other keys keep working.
//! A key that held a good record and is overwritten with a bad one loses
//! its tenant: etcd says what the record is now, and serving a record etcd
//! no longer holds would leave the operator no way to see what is enforced.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;

use super::gateway::{Change, KeyValue, WatchBatch};
use crate::domain::tenants::Tenant;

/// A key whose value was not loaded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SkippedKey {
    /// The full key (non-UTF-8 bytes shown as U+FFFD).
    pub key: String,
    /// Why, naming the field when a field is to blame.
    pub reason: String,
}

/// The tenants under one prefix.
#[derive(Debug, Clone)]
pub struct Snapshot {
    prefix: Vec<u8>,
    revision: i64,
    tenants: Arc<BTreeMap<String, Tenant>>,
    skipped: BTreeMap<String, String>,
}

impl Snapshot {
    /// Empty, before any load.
    pub fn new(prefix: &[u8]) -> Snapshot {
        Snapshot {
            prefix: prefix.to_vec(),
            revision: 0,
            tenants: Arc::new(BTreeMap::new()),
            skipped: BTreeMap::new(),
        }
    }

    /// Replaces everything with a full listing at `revision`.
    pub fn load(&mut self, revision: i64, kvs: Vec<KeyValue>) {
        self.revision = revision;
        self.skipped.clear();
        let mut tenants = BTreeMap::new();
        for kv in kvs {
            if let Some((token, tenant)) =
                read_record(&self.prefix, &kv.key, &kv.value, &mut self.skipped)
            {
                tenants.insert(token, tenant);
            }
        }
        self.tenants = Arc::new(tenants);
    }

    /// Applies one watch batch; true when it changed any key.
    pub fn apply(&mut self, batch: WatchBatch) -> bool {
        if batch.revision > self.revision {
            self.revision = batch.revision;
        }
        if batch.changes.is_empty() {
            return false;
        }
        let tenants = Arc::make_mut(&mut self.tenants);
        for change in batch.changes {
            let key = match &change {
                Change::Put(kv) => &kv.key,
                Change::Delete(key) => key,
            };
            let name = String::from_utf8_lossy(key).into_owned();
            self.skipped.remove(&name);
            if let Some(token) = token_of(&self.prefix, key) {
                tenants.remove(token);
            }
            if let Change::Put(kv) = &change {
                let read = read_record(&self.prefix, &kv.key, &kv.value, &mut self.skipped);
                if let Some((token, tenant)) = read {
                    tenants.insert(token, tenant);
                }
            }
        }
        true
    }

    /// The revision this snapshot reflects (0 before the first load).
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// The tenants, by token.
    pub fn tenants(&self) -> Arc<BTreeMap<String, Tenant>> {
        self.tenants.clone()
    }

    /// The keys not loaded, in key order.
    pub fn skipped(&self) -> Vec<SkippedKey> {
        self.skipped
            .iter()
            .map(|(key, reason)| SkippedKey {
                key: key.clone(),
                reason: reason.clone(),
            })
            .collect()
    }
}

/// The token a key names: the key without the prefix, when UTF-8.
fn token_of<'k>(prefix: &[u8], key: &'k [u8]) -> Option<&'k str> {
    key.strip_prefix(prefix)
        .and_then(|t| std::str::from_utf8(t).ok())
}

/// Parses one record; a failure is logged and noted in `skipped`.
fn read_record(
    prefix: &[u8],
    key: &[u8],
    value: &[u8],
    skipped: &mut BTreeMap<String, String>,
) -> Option<(String, Tenant)> {
    let name = String::from_utf8_lossy(key).into_owned();
    let parsed = match token_of(prefix, key) {
        None if !key.starts_with(prefix) => Err("key is outside the prefix".to_owned()),
        None => Err("the token in the key is not UTF-8".to_owned()),
        Some(token) => Tenant::parse_json(value, Some(token)).map(|t| (token.to_owned(), t)),
    };
    match parsed {
        Ok(ok) => Some(ok),
        Err(reason) => {
            tracing::warn!(key = %name, %reason, "etcd: tenant record skipped");
            skipped.insert(name, reason);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: &[u8] = b"/frp/tokens/";

    fn kv(token: &str, value: &str) -> KeyValue {
        KeyValue {
            key: [P, token.as_bytes()].concat(),
            value: value.as_bytes().to_vec(),
        }
    }

    fn record(region: &str) -> String {
        format!(r#"{{"region":"{region}","enabled":true}}"#)
    }

    #[test]
    fn bad_records_are_skipped_and_named() {
        let mut s = Snapshot::new(P);
        s.load(
            7,
            vec![
                kv("a", &record("cd")),
                kv("b", r#"{"region":"cd","enabled":"yes"}"#),
                kv("c", r#"{"token":"x","region":"cd"}"#),
                KeyValue {
                    key: [P, b"\xff".as_slice()].concat(),
                    value: record("cd").into_bytes(),
                },
            ],
        );
        assert_eq!(s.revision(), 7);
        assert_eq!(s.tenants().keys().collect::<Vec<_>>(), ["a"]);
        assert_eq!(s.tenants()["a"].record.token, "a", "token from the key");
        let skipped = s.skipped();
        assert_eq!(skipped.len(), 3, "{skipped:?}");
        assert_eq!(skipped[0].key, "/frp/tokens/b");
        assert!(skipped[0].reason.starts_with("enabled"), "{skipped:?}");
        assert!(skipped[1].reason.starts_with("token"), "{skipped:?}");
        assert!(skipped[2].reason.contains("UTF-8"), "{skipped:?}");
    }

    #[test]
    fn watch_batches_put_replace_and_delete() {
        let mut s = Snapshot::new(P);
        s.load(1, vec![kv("a", &record("cd"))]);
        let before = s.tenants();
        let changed = s.apply(WatchBatch {
            revision: 2,
            changes: vec![
                Change::Put(kv("b", &record("sh"))),
                Change::Put(kv("a", &record("bj"))),
            ],
        });
        assert!(changed);
        assert_eq!(before.len(), 1, "earlier maps are not changed in place");
        assert_eq!(s.tenants()["a"].record.region, "bj");
        assert_eq!(s.tenants()["b"].record.region, "sh");
        // A bad value replaces a good one: the tenant goes, the key is named.
        s.apply(WatchBatch {
            revision: 3,
            changes: vec![Change::Put(kv("a", "{"))],
        });
        assert!(!s.tenants().contains_key("a"));
        assert_eq!(s.skipped()[0].key, "/frp/tokens/a");
        // Fixing it clears the skip.
        s.apply(WatchBatch {
            revision: 4,
            changes: vec![Change::Put(kv("a", &record("cd")))],
        });
        assert!(s.tenants().contains_key("a") && s.skipped().is_empty());
        s.apply(WatchBatch {
            revision: 5,
            changes: vec![Change::Delete(kv("b", "").key)],
        });
        assert_eq!(s.tenants().keys().collect::<Vec<_>>(), ["a"]);
        // A progress notification moves the revision only.
        assert!(!s.apply(WatchBatch {
            revision: 9,
            changes: vec![]
        }));
        assert_eq!(s.revision(), 9);
    }
}
