//! What sync rules leave in the store: the content each rule currently
//! selects, pinned against eviction, and each rule's last run (for
//! `berth du`, and so that a restarted berth keeps a rule's schedule).
//!
//! Pins live in the metadata database only, never in a map in memory: two trees keyed both
//! ways (`digest \0 rule` to answer `is_pinned` with one seek, `rule \0
//! digest` to replace a rule's set). A rule's new set is written before its
//! stale pins are removed, so an interruption leaves too much pinned (until
//! the rule's next run), never too little.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::records::encode_json;
use super::{kv, Kind, Store, StoreError};
use crate::digest::Digest;

/// A sync rule's last run, as the scheduler records it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncRecord {
    pub rule: String,
    /// Milliseconds since the Unix epoch.
    pub last_started_ms: Option<u64>,
    pub last_finished_ms: Option<u64>,
    /// The end of the last run without errors.
    pub last_success_ms: Option<u64>,
    /// When the next run is due (a berth serving the rule keeps it).
    pub next_run_ms: Option<u64>,
    /// Runs recorded, whatever their outcome.
    pub runs: u64,
    /// Runs in a row that failed (0 after a success): the back-off.
    pub failures: u32,
    /// Of the last run: tags selected, tags whose content was new to the
    /// cache, bytes fetched from upstream, and errors.
    pub tags_matched: u64,
    pub tags_fetched: u64,
    pub bytes: u64,
    pub errors: u64,
    pub last_error: Option<String>,
    /// What the rule pinned after its last run (counted then, so that
    /// `berth du` reads one record per rule, whatever the rules select).
    #[serde(default)]
    pub pinned_items: u64,
    #[serde(default)]
    pub pinned_bytes: u64,
}

/// How much a rule pins.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Pinned {
    pub items: u64,
    pub bytes: u64,
}

fn pin_key(first: &str, second: &str) -> Vec<u8> {
    [first.as_bytes(), second.as_bytes()].join(&0u8)
}

impl Store {
    /// Whether a sync rule pins `digest` (a blob or a manifest): eviction
    /// passes it by.
    pub fn is_pinned(&self, digest: &Digest) -> Result<bool, StoreError> {
        let prefix = pin_key(&digest.to_string(), "");
        let trees = self.trees()?;
        let first = trees.pins.scan_prefix(prefix).next().transpose()?;
        Ok(first.is_some())
    }

    /// Makes `digests` exactly what `rule` pins.
    pub fn pin(&self, rule: &str, digests: &BTreeSet<Digest>) -> Result<(), StoreError> {
        let old = self.pinned_by(rule)?;
        let (mut add, mut add_by_rule) = (kv::Batch::default(), kv::Batch::default());
        for d in digests.difference(&old) {
            let d = d.to_string();
            add.insert(pin_key(&d, rule), []);
            add_by_rule.insert(pin_key(rule, &d), []);
        }
        let trees = self.trees()?;
        self.wrote(trees.pins.apply_batch(add))?;
        self.wrote(trees.pins_by_rule.apply_batch(add_by_rule))?;
        self.drop_pins(rule, old.difference(digests))
    }

    /// Everything `rule` pins.
    pub fn pinned_by(&self, rule: &str) -> Result<BTreeSet<Digest>, StoreError> {
        let prefix = pin_key(rule, "");
        let mut out = BTreeSet::new();
        let trees = self.trees()?;
        for key in trees.pins_by_rule.scan_prefix(&prefix).keys() {
            let key = key?;
            if let Some(d) = std::str::from_utf8(&key[prefix.len()..])
                .ok()
                .and_then(|d| d.parse().ok())
            {
                out.insert(d);
            }
        }
        Ok(out)
    }

    /// The items and bytes `rule` pins that the store holds.
    pub fn pinned_usage(&self, rule: &str) -> Result<Pinned, StoreError> {
        let mut pinned = Pinned::default();
        for d in self.pinned_by(rule)? {
            let size = match self.record(Kind::Blob, &d)? {
                Some(record) => Some(record.size),
                None => self.record(Kind::Manifest, &d)?.map(|r| r.size),
            };
            if let Some(size) = size {
                pinned.items += 1;
                pinned.bytes += size;
            }
        }
        Ok(pinned)
    }

    /// Forgets the pins and records of rules no longer configured.
    pub fn retain_sync_rules(&self, rules: &[&str]) -> Result<(), StoreError> {
        let mut gone = BTreeSet::new();
        for record in self.sync_records()? {
            if !rules.contains(&record.rule.as_str()) {
                gone.insert(record.rule);
            }
        }
        let trees = self.trees()?;
        for key in trees.pins_by_rule.iter().keys() {
            let key = key?;
            let rule = key.split(|b| *b == 0).next().unwrap_or_default();
            let rule = String::from_utf8_lossy(rule).into_owned();
            if !rules.contains(&rule.as_str()) {
                gone.insert(rule);
            }
        }
        for rule in gone {
            tracing::info!(
                rule,
                "sync rule no longer configured: its content is unpinned"
            );
            let pins = self.pinned_by(&rule)?;
            self.drop_pins(&rule, pins.iter())?;
            self.wrote(trees.sync_rules.remove(rule.as_bytes()))?;
        }
        Ok(())
    }

    fn drop_pins<'a>(
        &self,
        rule: &str,
        digests: impl Iterator<Item = &'a Digest>,
    ) -> Result<(), StoreError> {
        let (mut drop, mut drop_by_rule) = (kv::Batch::default(), kv::Batch::default());
        for d in digests {
            let d = d.to_string();
            drop.remove(pin_key(&d, rule));
            drop_by_rule.remove(pin_key(rule, &d));
        }
        let trees = self.trees()?;
        self.wrote(trees.pins_by_rule.apply_batch(drop_by_rule))?;
        self.wrote(trees.pins.apply_batch(drop))?;
        Ok(())
    }

    pub fn put_sync_record(&self, record: &SyncRecord) -> Result<(), StoreError> {
        let trees = self.trees()?;
        self.wrote(
            trees
                .sync_rules
                .insert(record.rule.as_bytes(), encode_json(record)),
        )?;
        Ok(())
    }

    pub fn sync_record(&self, rule: &str) -> Result<Option<SyncRecord>, StoreError> {
        let Some(raw) = self.trees()?.sync_rules.get(rule.as_bytes())? else {
            return Ok(None);
        };
        serde_json::from_slice(&raw)
            .map(Some)
            .map_err(|e| StoreError::Corrupt {
                key: format!("sync rule {rule}"),
                reason: e.to_string(),
            })
    }

    /// Every rule's record, by name.
    pub fn sync_records(&self) -> Result<Vec<SyncRecord>, StoreError> {
        let mut out = Vec::new();
        let trees = self.trees()?;
        for entry in trees.sync_rules.iter() {
            let (key, raw) = entry?;
            match serde_json::from_slice(&raw) {
                Ok(record) => out.push(record),
                Err(e) => tracing::warn!(
                    rule = %String::from_utf8_lossy(&key),
                    error = %e,
                    "unreadable sync record skipped"
                ),
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CacheConfig;
    use crate::digest::Algorithm;

    fn digests(items: &[&[u8]]) -> BTreeSet<Digest> {
        items.iter().map(|b| Algorithm::Sha256.digest(b)).collect()
    }

    #[test]
    fn a_rule_pins_exactly_its_latest_set() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, _) = Store::open(dir.path(), &CacheConfig::default()).expect("open");
        let [a, b, c] = [b"a", b"b", b"c"].map(|x| Algorithm::Sha256.digest(x));
        store.pin("one", &digests(&[b"a", b"b"])).expect("pin");
        store.pin("two", &digests(&[b"b"])).expect("pin");
        assert!(store.is_pinned(&a).expect("read") && store.is_pinned(&b).expect("read"));
        assert!(!store.is_pinned(&c).expect("read"));
        store.pin("one", &digests(&[b"c"])).expect("repin");
        assert!(!store.is_pinned(&a).expect("read"), "dropped from the set");
        assert!(store.is_pinned(&b).expect("read"), "still pinned by two");
        assert!(store.is_pinned(&c).expect("read"));
        assert_eq!(store.pinned_by("one").expect("read"), digests(&[b"c"]));
        store
            .put_sync_record(&SyncRecord {
                rule: "two".into(),
                runs: 3,
                ..Default::default()
            })
            .expect("record");
        store.retain_sync_rules(&["one"]).expect("retain");
        assert!(!store.is_pinned(&b).expect("read"), "two is gone");
        assert!(store.sync_records().expect("records").is_empty());
        assert!(store.is_pinned(&c).expect("read"));
    }
}
