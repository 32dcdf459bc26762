//! `berth check`: re-hash everything the store holds and report (or, with
//! repair, remove) whatever does not match its digest, so that it is fetched
//! again from upstream on the next pull.

use std::io::Read;

use serde::Serialize;

use super::lifecycle::Kind;
use super::{decode_manifest, BlobRecord, Store, StoreError};
use crate::digest::{Digest, Hasher};

/// One stored item that is not what its digest says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub kind: &'static str,
    pub digest: String,
    pub reason: String,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct CheckReport {
    pub checked: usize,
    pub bytes: u64,
    pub problems: Vec<Problem>,
    pub repaired: usize,
}

impl Store {
    /// Bytes `check` will read: the total for a progress display.
    pub fn stored_bytes(&self) -> u64 {
        self.usage().0
    }

    /// Re-hashes every blob and manifest; `progress` is told the bytes read
    /// so far. With `repair`, mismatches are removed (record first).
    pub fn check(&self, repair: bool, progress: impl Fn(u64)) -> Result<CheckReport, StoreError> {
        let mut report = CheckReport::default();
        let mut bad = Vec::new();
        for entry in self.inner.blobs.iter() {
            let (key, raw) = entry?;
            let name = String::from_utf8_lossy(&key).into_owned();
            let verdict = match (
                name.parse::<Digest>(),
                serde_json::from_slice::<BlobRecord>(&raw),
            ) {
                (Ok(digest), Ok(record)) => {
                    report.bytes += record.size;
                    let result = self.verify_blob(&digest, &record);
                    result
                        .err()
                        .map(|reason| (Kind::Blob, Some(digest), reason))
                }
                _ => Some((Kind::Blob, None, "unreadable record".to_owned())),
            };
            report.checked += 1;
            progress(report.bytes);
            if let Some((kind, digest, reason)) = verdict {
                bad.push((kind, digest, name, reason));
            }
        }
        for entry in self.inner.manifests.iter() {
            let (key, raw) = entry?;
            let name = String::from_utf8_lossy(&key).into_owned();
            report.bytes += raw.len() as u64;
            report.checked += 1;
            progress(report.bytes);
            let verdict = match name.parse::<Digest>() {
                Ok(digest) => match decode_manifest(&digest, &raw) {
                    Ok(m) if digest.algorithm().digest(&m.bytes) == digest => None,
                    Ok(m) => Some((
                        Some(digest.clone()),
                        format!("content hashes to {}", digest.algorithm().digest(&m.bytes)),
                    )),
                    Err(e) => Some((Some(digest), e.to_string())),
                },
                Err(_) => Some((None, "key is not a digest".to_owned())),
            };
            if let Some((digest, reason)) = verdict {
                bad.push((Kind::Manifest, digest, name, reason));
            }
        }
        for (kind, digest, name, reason) in bad {
            report.problems.push(Problem {
                kind: match kind {
                    Kind::Blob => "blob",
                    Kind::Manifest => "manifest",
                },
                digest: name.clone(),
                reason,
            });
            if repair {
                self.remove_item(kind, digest.as_ref(), &name)?;
                report.repaired += 1;
            }
        }
        Ok(report)
    }

    fn verify_blob(&self, digest: &Digest, record: &BlobRecord) -> Result<(), String> {
        let mut hasher = Hasher::new(digest.algorithm());
        let size = if record.inline {
            let data = self
                .inner
                .blob_data
                .get(digest.to_string())
                .map_err(|e| e.to_string())?
                .ok_or("inline blob without data")?;
            hasher.update(&data);
            data.len() as u64
        } else {
            hash_file(
                &mut self
                    .inner
                    .files
                    .open_blob(digest)
                    .map_err(|e| format!("cannot open its file: {e}"))?,
                &mut hasher,
            )
            .map_err(|e| format!("cannot read its file: {e}"))?
        };
        if size != record.size {
            return Err(format!("{size} bytes stored, {} recorded", record.size));
        }
        let actual = hasher.finish();
        if actual != *digest {
            return Err(format!("content hashes to {actual}"));
        }
        Ok(())
    }

    fn remove_item(
        &self,
        kind: Kind,
        digest: Option<&Digest>,
        key: &str,
    ) -> Result<(), StoreError> {
        match (kind, digest) {
            (Kind::Blob, Some(d)) => self.forget(Kind::Blob, d),
            (Kind::Manifest, Some(d)) => self.forget(Kind::Manifest, d),
            (Kind::Blob, None) => self.inner.blobs.remove(key).map(drop).map_err(Into::into),
            (Kind::Manifest, None) => self
                .inner
                .manifests
                .remove(key)
                .map(drop)
                .map_err(Into::into),
        }
    }
}

fn hash_file(file: &mut std::fs::File, hasher: &mut Hasher) -> std::io::Result<u64> {
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(total);
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CacheConfig;
    use crate::digest::Algorithm;
    use std::io::Write;

    #[test]
    fn a_flipped_byte_is_found_and_repaired() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = CacheConfig {
            hot_size: 1 << 20,
            inline_max: 4,
        };
        let (store, _) = Store::open(dir.path(), &cache).expect("open");
        let bytes = b"some blob content";
        let temp = store.temp_file().expect("temp");
        (&**temp.file()).write_all(bytes).expect("write");
        let digest = Algorithm::Sha256.digest(bytes);
        store
            .commit_blob(&digest, temp, bytes.len() as u64)
            .expect("commit");
        store.add_link("u", "r", &digest).expect("link");
        assert!(store
            .check(false, |_| {})
            .expect("check")
            .problems
            .is_empty());

        let path = store.inner.files.path_of(&digest);
        let mut content = std::fs::read(&path).expect("read");
        content[3] ^= 1;
        std::fs::write(&path, content).expect("write");
        let report = store.check(false, |_| {}).expect("check");
        assert_eq!(report.problems.len(), 1);
        assert_eq!(report.problems[0].digest, digest.to_string());
        assert!(path.exists(), "a check without repair changes nothing");

        let report = store.check(true, |_| {}).expect("check");
        assert_eq!(report.repaired, 1);
        assert!(!path.exists());
        assert!(store.blob(&digest).expect("read").is_none());
        assert!(!store.has_link("u", "r", &digest).expect("link"));
        assert!(store
            .check(false, |_| {})
            .expect("check")
            .problems
            .is_empty());
    }
}
