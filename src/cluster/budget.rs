//! The shared tier's budget (`[storage.s3] max_size` and watermarks), kept
//! by one replica at a time.
//!
//! Redis holds what the budget needs: every object's size
//! (`<prefix>:s3:size`, a hash), their total (`s3:bytes`) and their last
//! use (`s3:atime`, a sorted set scored in milliseconds). An upload adds
//! its object; every replica notes what it serves in a bounded map and
//! adds those times in one pipelined round trip every few seconds (only
//! for objects Redis knows, only ever later). Past the high watermark, the replica that wins the
//! eviction lease (`s3:evict`) removes the least recently used objects,
//! oldest first, down to the low watermark. A Redis that lost its keys (or
//! a bucket filled before the budget was set) is counted again from one
//! listing of the bucket, by the lease holder, once (`s3:seeded`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use super::{Claim, Cluster};
use crate::digest::Digest;
use crate::shared::{Listed, ObjectKind, SharedTier};

/// How often access times go to Redis and the total is looked at.
const ROUND: Duration = Duration::from_secs(5);
/// The most distinct objects noted between two rounds (about 100 bytes
/// each); past it, further ones wait for the next round.
const MAX_NOTED: usize = 65_536;
/// Objects counted per round trip when the bucket is counted again.
const SEED_BATCH: usize = 256;
/// Objects removed per look at the oldest.
const EVICT_BATCH: isize = 32;

/// Adds an object once: its size to the total, its time to the set.
const RECORD: &str = r"
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 1 then
  redis.call('INCRBY', KEYS[2], ARGV[2])
end
redis.call('ZADD', KEYS[3], 'GT', ARGV[3], ARGV[1])
return 1
";

/// Forgets an object: its size off the total; answers the size (0 when
/// it was not counted).
const FORGET: &str = r"
local size = redis.call('HGET', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
if size then
  redis.call('DECRBY', KEYS[2], size)
  return tonumber(size)
end
return 0
";

/// Accesses noted since the last round: member → milliseconds since the
/// epoch (the sorted set's scores; exact in a double).
#[derive(Default)]
pub struct Touched(Mutex<HashMap<String, u64>>);

/// The loop that shares access times and, when this replica wins the
/// lease, keeps the bucket within its budget.
pub struct Budget {
    cluster: Cluster,
    shared: SharedTier,
}

fn member(kind: ObjectKind, digest: &Digest) -> String {
    format!("{}/{}", kind.label(), digest)
}

impl Cluster {
    fn budget_keys(&self) -> [String; 3] {
        [
            self.key("s3:size"),
            self.key("s3:bytes"),
            self.key("s3:atime"),
        ]
    }

    /// Counts an object just uploaded to the shared tier (in the background).
    pub fn record_upload(&self, kind: ObjectKind, digest: &Digest, size: u64) {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(RECORD).arg(3).arg(self.budget_keys().as_slice());
        cmd.arg(member(kind, digest)).arg(size).arg(super::now_ms());
        self.in_background("budget_record", cmd);
    }

    /// Notes that this replica served `digest` (for the shared tier's
    /// least-recently-used order); sent with the next round.
    pub fn touch(&self, kind: ObjectKind, digest: &Digest) {
        let mut noted = self
            .inner
            .touched
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if noted.len() < MAX_NOTED {
            noted.insert(member(kind, digest), super::now_ms());
        }
    }

    /// Sends the noted access times in one round trip; only objects the
    /// budget knows are updated, and only to a later time.
    async fn flush_touched(&self) {
        let noted = std::mem::take(
            &mut *self
                .inner
                .touched
                .0
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        if noted.is_empty() {
            return;
        }
        let mut cmd = redis::cmd("ZADD");
        cmd.arg(self.key("s3:atime")).arg("XX").arg("GT");
        for (member, at) in &noted {
            cmd.arg(*at).arg(member);
        }
        let _: Option<i64> = self.query("budget_touch", cmd).await;
    }
}

impl Budget {
    pub fn new(cluster: Cluster, shared: SharedTier) -> Self {
        Budget { cluster, shared }
    }

    /// Every round: access times out; and, over budget, evict under the
    /// lease. Runs until aborted.
    pub async fn run(self) {
        loop {
            tokio::time::sleep(ROUND).await;
            self.cluster.flush_touched().await;
            if let Some(max) = self.shared.max_size() {
                self.keep_within(max).await;
            }
        }
    }

    async fn keep_within(&self, max: u64) {
        let (high, low) = self.shared.watermarks();
        let over = |total: u64| total as f64 > max as f64 * high;
        let seeded = self.cluster.key("s3:seeded");
        let mut cmd = redis::cmd("MGET");
        cmd.arg(self.cluster.key("s3:bytes")).arg(&seeded);
        let Some((total, is_seeded)): Option<(Option<u64>, Option<String>)> =
            self.cluster.query("budget_get", cmd).await
        else {
            return;
        };
        if !over(total.unwrap_or(0)) && is_seeded.is_some() {
            return;
        }
        let Claim::Won(_lease) = self.cluster.claim("evict", "s3:evict", "", "").await else {
            return;
        };
        if is_seeded.is_none() {
            self.seed(&seeded).await;
        }
        // Counted again (or by another replica meanwhile): evict only if
        // the total is over the high watermark now.
        match self.total().await {
            Some(total) if over(total) => {
                self.evict_down_to(total, (max as f64 * low) as u64).await;
            }
            _ => {}
        }
    }

    /// The bucket's content in bytes, as Redis counts it.
    async fn total(&self) -> Option<u64> {
        let mut cmd = redis::cmd("GET");
        cmd.arg(self.cluster.key("s3:bytes"));
        let total: Option<Option<u64>> = self.cluster.query("budget_get", cmd).await;
        total.map(|t| t.unwrap_or(0))
    }

    /// Counts what the bucket holds (a Redis that lost its keys, or a
    /// bucket filled before the budget): objects Redis does not know are
    /// added with the time they were written.
    async fn seed(&self, seeded: &str) {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<Listed>>(2);
        let counting = async {
            let mut counted = 0usize;
            while let Some(found) = rx.recv().await {
                if !self.record_listed(&found).await {
                    return None;
                }
                counted += found.len();
            }
            Some(counted)
        };
        let (listed, counted) = tokio::join!(self.shared.each_object(SEED_BATCH, tx), counting);
        let counted = match (listed, counted) {
            (Ok(()), Some(counted)) => counted,
            (Err(e), _) => {
                tracing::warn!(error = %e, "cannot count the shared tier for its budget; trying again later");
                return;
            }
            (_, None) => return,
        };
        let mut cmd = redis::cmd("SET");
        cmd.arg(seeded).arg(1);
        let _: Option<()> = self.cluster.query("budget_seed", cmd).await;
        tracing::info!(
            objects = counted,
            "counted the shared tier's content for its budget"
        );
    }

    /// Adds listed objects Redis does not know (one round trip); false
    /// when Redis did not answer.
    async fn record_listed(&self, found: &[Listed]) -> bool {
        let mut pipe = redis::pipe();
        for (kind, digest, size, written) in found {
            pipe.cmd("EVAL")
                .arg(RECORD)
                .arg(3)
                .arg(self.cluster.budget_keys().as_slice())
                .arg(member(*kind, digest))
                .arg(*size)
                .arg(written.saturating_mul(1000))
                .ignore();
        }
        self.cluster
            .pipeline::<()>("budget_seed", pipe)
            .await
            .is_some()
    }

    /// Removes the least recently used objects, oldest first, one at a
    /// time, until the total (`total` now) is at most `target`; or until
    /// Redis or the store fails, or nothing is left to remove.
    async fn evict_down_to(&self, mut total: u64, target: u64) {
        let families = self.cluster.families();
        while total > target {
            let mut cmd = redis::cmd("ZRANGE");
            cmd.arg(self.cluster.key("s3:atime"))
                .arg(0)
                .arg(EVICT_BATCH - 1);
            let Some(oldest): Option<Vec<String>> = self.cluster.query("budget_oldest", cmd).await
            else {
                return;
            };
            if oldest.is_empty() {
                return;
            }
            for member in oldest {
                if total <= target {
                    return;
                }
                let parsed = parse_member(&member);
                if let Some((kind, digest)) = &parsed {
                    if !self.shared.remove(*kind, digest).await {
                        return;
                    }
                }
                let Some(size) = self.forget(&member).await else {
                    return;
                };
                total = total.saturating_sub(size);
                if let Some((kind, digest)) = parsed {
                    families.evicted_objects.inc();
                    families.evicted_bytes.inc_by(size);
                    tracing::debug!(%digest, kind = kind.label(), size, "evicted from the shared tier");
                }
            }
        }
    }

    /// Takes an object out of the budget: its size (0 when Redis did not
    /// know it), `None` when Redis did not answer.
    async fn forget(&self, member: &str) -> Option<u64> {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(FORGET)
            .arg(3)
            .arg(self.cluster.budget_keys().as_slice())
            .arg(member);
        self.cluster.query("budget_forget", cmd).await
    }
}

fn parse_member(member: &str) -> Option<(ObjectKind, Digest)> {
    let (kind, digest) = member.split_once('/')?;
    let kind = match kind {
        "blob" => ObjectKind::Blob,
        "manifest" => ObjectKind::Manifest,
        _ => return None,
    };
    Some((kind, digest.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_name_the_kind_and_digest_and_read_back() {
        let digest = crate::digest::Algorithm::Sha256.digest(b"x");
        let blob = member(ObjectKind::Blob, &digest);
        assert_eq!(blob, format!("blob/{digest}"));
        assert_eq!(
            parse_member(&blob),
            Some((ObjectKind::Blob, digest.clone()))
        );
        let manifest = member(ObjectKind::Manifest, &digest);
        assert_eq!(
            parse_member(&manifest),
            Some((ObjectKind::Manifest, digest))
        );
        assert_eq!(parse_member("link/sha256:00"), None);
        assert_eq!(parse_member("blob/not-a-digest"), None);
    }
}
