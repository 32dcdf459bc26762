//! Leases in Redis: who does a piece of work for the whole cluster (fetch a
//! blob, revalidate a tag, evict from the shared tier).
//!
//! A lease is a key set with `NX PX` whose value names the holder (its peer
//! address and a random token). The holder renews it at a third of its
//! period while the work runs and releases it with a compare-and-delete, so
//! it never removes a lease another replica took after its own lapsed. A
//! replica killed mid-work stops renewing: its lease lapses after one
//! period and the next replica to ask wins it.

use std::time::Duration;

use tokio::task::JoinHandle;

use super::Cluster;

/// Takes the lease if it is free; answers `[1, value]` when taken, else
/// `[0, the holder's value]` (empty when it lapsed in between).
const CLAIM: &str = r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {1, ARGV[1]}
end
return {0, redis.call('GET', KEYS[1]) or ''}
";

/// Extends the lease only while it is still this holder's.
const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
";

/// Removes the lease only while it is still this holder's.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// What a lease's value says about its holder.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LeaseValue {
    /// The holder's peer address.
    pub peer: String,
    /// Tells this holding apart from a later one by the same replica.
    pub token: String,
    /// The upstream and repository the work was confirmed in (a fill's).
    #[serde(default)]
    pub upstream: String,
    #[serde(default)]
    pub repo: String,
}

/// The outcome of asking for a lease.
pub enum Claim {
    /// This replica holds it now.
    Won(Lease),
    /// Another holding (possibly this replica's own earlier one).
    Held(LeaseValue),
    /// Redis did not answer: act alone.
    Unavailable,
}

/// A lease this replica holds, renewed until dropped; dropping it releases
/// it (in the background).
pub struct Lease {
    cluster: Cluster,
    key: String,
    value: String,
    renewing: JoinHandle<()>,
    /// Left to lapse rather than released (`linger`).
    lingering: bool,
}

impl Cluster {
    /// Asks for the lease `<prefix>:<name>` (`kind` labels the metric),
    /// for work confirmed in `upstream`'s `repo` (empty when that means
    /// nothing).
    pub async fn claim(&self, kind: &'static str, name: &str, upstream: &str, repo: &str) -> Claim {
        let value = LeaseValue {
            peer: self.me().to_owned(),
            token: format!("{:016x}", fastrand::u64(..)),
            upstream: upstream.to_owned(),
            repo: repo.to_owned(),
        };
        let Ok(json) = serde_json::to_string(&value) else {
            return Claim::Unavailable;
        };
        let key = self.key(name);
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(CLAIM)
            .arg(1)
            .arg(&key)
            .arg(&json)
            .arg(millis(self.lease_period()));
        let answer: Option<(u8, String)> = self.query("lease_claim", cmd).await;
        let families = self.families();
        match answer {
            None => {
                families.lease(kind, "unavailable");
                Claim::Unavailable
            }
            Some((1, _)) => {
                families.lease(kind, "won");
                Claim::Won(Lease::start(self.clone(), key, json))
            }
            Some((_, held)) => {
                families.lease(kind, "held");
                match serde_json::from_str(&held) {
                    Ok(holder) => Claim::Held(holder),
                    // Lapsed in between, or not berth's: a holder nobody
                    // can join, waited out like a vanished one.
                    Err(_) => Claim::Held(LeaseValue {
                        peer: String::new(),
                        token: String::new(),
                        upstream: String::new(),
                        repo: String::new(),
                    }),
                }
            }
        }
    }

    /// The lease `<prefix>:<name>` as it is now: `Some(None)` when free,
    /// `None` when Redis does not answer.
    pub async fn holder(&self, name: &str) -> Option<Option<LeaseValue>> {
        let mut cmd = redis::cmd("GET");
        cmd.arg(self.key(name));
        let value: Option<Option<String>> = self.query("lease_get", cmd).await;
        value.map(|v| v.and_then(|json| serde_json::from_str(&json).ok()))
    }

    /// Waits until the holding `held` of lease `name` has ended (released,
    /// lapsed or replaced), or Redis stops answering, for at most one lease
    /// period (plus a little): the most a vanished holder costs.
    pub async fn wait_out(&self, name: &str, held: &LeaseValue) {
        let deadline = tokio::time::Instant::now() + self.lease_period() + POLL * 2;
        while tokio::time::Instant::now() < deadline {
            match self.holder(name).await {
                Some(Some(now)) if now.token == held.token => {}
                _ => return,
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

/// How often a waiting replica looks at a lease it waits out.
const POLL: Duration = Duration::from_millis(100);

impl Lease {
    fn start(cluster: Cluster, key: String, value: String) -> Lease {
        let renewing = tokio::spawn(renew(cluster.clone(), key.clone(), value.clone()));
        Lease {
            cluster,
            key,
            value,
            renewing,
            lingering: false,
        }
    }

    /// Ends the work without releasing the lease: it is renewed once more
    /// and then left to lapse, still naming this replica, which holds the
    /// result. A replica that missed the result by a hair (it looked in
    /// the bucket just before the upload, and asks for the lease just
    /// after) then asks this one for it, not the upstream.
    pub fn linger(mut self) {
        self.lingering = true;
        self.renewing.abort();
        let period = self.cluster.lease_period();
        let renew = renew_cmd(&self.key, &self.value, period);
        self.cluster.in_background("lease_renew", renew);
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.renewing.abort();
        if self.lingering {
            return;
        }
        let mut release = redis::cmd("EVAL");
        release.arg(RELEASE).arg(1).arg(&self.key).arg(&self.value);
        self.cluster.in_background("lease_release", release);
    }
}

/// Renews a lease at a third of its period until aborted; stops when the
/// lease turns out to be someone else's (it lapsed during an outage).
async fn renew(cluster: Cluster, key: String, value: String) {
    let period = cluster.lease_period();
    loop {
        tokio::time::sleep(period / 3).await;
        let renewed: Option<i64> = cluster
            .query("lease_renew", renew_cmd(&key, &value, period))
            .await;
        if renewed == Some(0) {
            tracing::warn!(key, "a lease this replica held lapsed and was taken by another; the work goes on here regardless");
            return;
        }
    }
}

fn renew_cmd(key: &str, value: &str, period: Duration) -> redis::Cmd {
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(RENEW)
        .arg(1)
        .arg(key)
        .arg(value)
        .arg(millis(period));
    cmd
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
