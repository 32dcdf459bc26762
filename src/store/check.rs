//! `berth check`: re-hash everything the store holds and report (or, with
//! repair, remove) whatever does not match its digest, so that it is fetched
//! again from upstream on the next pull. It can run beside a serving berth
//! (`check --online`, through the admin listener) at a bounded rate, so a
//! large cache is verified without downtime and without starving clients.

use std::io::Read;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::keys::{self, Kind};
use super::records::ObjectRecord;
use super::{Store, StoreError};
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

/// Reads at most this many bytes a second (`None`: as fast as the disk).
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    bytes_per_second: Option<u64>,
    started: Instant,
}

impl Pace {
    pub fn new(bytes_per_second: Option<u64>) -> Pace {
        Pace {
            bytes_per_second: bytes_per_second.filter(|r| *r > 0),
            started: Instant::now(),
        }
    }

    /// Sleeps as long as reading `done` bytes so far is ahead of the pace.
    fn wait(&self, done: u64) {
        if let Some(rate) = self.bytes_per_second {
            let due = Duration::from_secs_f64(done as f64 / rate as f64);
            if let Some(ahead) = due.checked_sub(self.started.elapsed()) {
                std::thread::sleep(ahead);
            }
        }
    }
}

impl Store {
    /// Bytes `check` will read: the total for a progress display.
    pub fn stored_bytes(&self) -> u64 {
        self.inner.totals.snapshot().content
    }

    /// Re-hashes every blob and manifest; `progress` is told the bytes read
    /// so far. With `repair`, mismatches are removed (record first).
    pub fn check(&self, repair: bool, progress: impl Fn(u64)) -> Result<CheckReport, StoreError> {
        self.check_paced(repair, Pace::new(None), progress)
    }

    /// `check` at a bounded rate. Blocking.
    pub fn check_paced(
        &self,
        repair: bool,
        pace: Pace,
        progress: impl Fn(u64),
    ) -> Result<CheckReport, StoreError> {
        let mut report = CheckReport::default();
        let trees = self.trees()?;
        for entry in trees.objects.iter() {
            let (key, raw) = entry?;
            report.checked += 1;
            let Some((kind, digest)) = keys::parse_object(&key) else {
                self.wrote(trees.objects.remove(&key))?;
                continue;
            };
            let verdict = match ObjectRecord::decode(&raw) {
                Some(record) => {
                    report.bytes += record.size;
                    self.verify(kind, &digest, &record)
                }
                None => Err("unreadable record".to_owned()),
            };
            progress(report.bytes);
            pace.wait(report.bytes);
            if let Err(reason) = verdict {
                report.problems.push(Problem {
                    kind: kind.name(),
                    digest: digest.to_string(),
                    reason,
                });
                if repair {
                    self.forget(kind, &digest)?;
                    report.repaired += 1;
                }
            }
        }
        Ok(report)
    }

    fn verify(&self, kind: Kind, digest: &Digest, record: &ObjectRecord) -> Result<(), String> {
        let mut hasher = Hasher::new(digest.algorithm());
        let mut file = self
            .inner
            .files
            .open_file(kind, digest)
            .map_err(|e| format!("cannot open its file: {e}"))?;
        let size = hash_reader(&mut file, &mut hasher)
            .map_err(|e| format!("cannot read its file: {e}"))?;
        if size != record.size {
            return Err(format!("{size} bytes stored, {} recorded", record.size));
        }
        let actual = hasher.finish();
        if actual != *digest {
            return Err(format!("content hashes to {actual}"));
        }
        Ok(())
    }
}

fn hash_reader(file: &mut std::fs::File, hasher: &mut Hasher) -> std::io::Result<u64> {
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
            ..CacheConfig::default()
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

        let path = store.inner.files.path_of(Kind::Blob, &digest);
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
