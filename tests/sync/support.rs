//! What the sync tests share: releases of one repository (each with its
//! own content and a signature listed under the referrers tag, as cosign
//! pushes it to a registry without the referrers API), the rule a new user
//! writes for them, berth's metrics, and a client pull.

use std::time::{Duration, Instant};

use crate::common::berth::Berth;
use crate::common::content::{Fixture, Pusher, ACCEPT_ALL_MANIFESTS};
use crate::common::http::{client, get_digest};
use crate::common::registry::Registry;
use crate::referrers::{push_artifacts, referrers_index, referrers_tag, Artifact};

/// The repository the rules keep fresh.
pub const REPO: &str = "team/app";

/// A release of `repo`: an index of two platforms whose blobs belong to
/// this tag alone (fixtures are seeded by the label), signed.
pub struct Release {
    pub image: Fixture,
    pub signature: Artifact,
}

impl Release {
    pub fn new(repo: &str, tag: &str) -> Release {
        let mut image = Fixture::multi_platform(&format!("{repo}:{tag}"), tag);
        image.repo = repo.to_owned();
        let signature = Artifact::signature(&image.root);
        Release { image, signature }
    }

    /// Pushes the image, its signature and the referrers tag listing it.
    pub async fn push(&self, registry: &Registry) {
        let pusher = Pusher::to(registry);
        pusher.push_all(std::slice::from_ref(&self.image)).await;
        push_artifacts(&pusher, &self.image.repo, &[&self.signature]).await;
        let list = referrers_index(&[self.signature.descriptor()]);
        let tag = referrers_tag(&self.image.root.digest);
        if let Err(e) = pusher.push_manifest(&self.image.repo, &tag, &list).await {
            panic!("push the referrers tag {tag}: {e}");
        }
    }

    pub fn tag(&self) -> &str {
        &self.image.tag
    }

    /// The blobs only this release has (its layers, larger than berth's
    /// inline limit, so they are files once cached).
    pub fn layer_files(&self) -> Vec<&str> {
        self.image
            .blobs
            .iter()
            .filter(|b| b.bytes.len() > 64 * 1024)
            .map(|b| b.digest.as_str())
            .collect()
    }
}

/// The rule of the README's example: `team/app`, every 1.x release.
pub fn rule(interval: &str) -> String {
    format!(
        "[[sync]]\nname = \"app\"\nrepository = \"{REPO}\"\nsemver = \">=1.0 <2\"\ninterval = \"{interval}\"\njitter = \"0s\"\n"
    )
}

/// The value of one series of berth's `/metrics` (exactly as exposed,
/// labels included), 0 when absent.
pub async fn metric(berth: &Berth, series: &str) -> f64 {
    let text = client()
        .get(format!("{}/metrics", berth.url()))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("read /metrics");
    text.lines()
        .filter_map(|line| line.rsplit_once(' '))
        .find(|(name, _)| *name == series)
        .map_or(0.0, |(_, value)| value.parse().unwrap_or(0.0))
}

/// Runs of `rule` that ended with `outcome` (ok, partial, failed).
pub async fn runs(berth: &Berth, rule: &str, outcome: &str) -> f64 {
    metric(
        berth,
        &format!("berth_sync_runs_total{{rule=\"{rule}\",outcome=\"{outcome}\"}}"),
    )
    .await
}

/// Waits (60 s at most, a hang guard) until `rule` has `n` runs ending
/// with `outcome`, and returns how many it has.
pub async fn wait_for_runs(berth: &Berth, rule: &str, outcome: &str, n: f64) -> f64 {
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let now = runs(berth, rule, outcome).await;
        if now >= n {
            return now;
        }
        assert!(
            Instant::now() < until,
            "rule {rule} has {now} {outcome} runs, never {n}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Pulls `fixture` through berth the way a client does (manifests, then
/// every blob), checking every digest; how long it took, or why it failed.
pub async fn pull(berth: &Berth, fixture: &Fixture) -> Result<Duration, String> {
    let started = Instant::now();
    let http = client();
    let base = format!("{}/v2/{}", berth.url(), fixture.repo);
    let manifest = http
        .get(format!("{base}/manifests/{}", fixture.tag))
        .header("accept", ACCEPT_ALL_MANIFESTS)
        .send()
        .await
        .map_err(|e| format!("GET the manifest of {}: {e}", fixture.reference()))?;
    if manifest.status() != 200 {
        return Err(format!(
            "GET the manifest of {}: {}",
            fixture.reference(),
            manifest.status()
        ));
    }
    manifest.bytes().await.map_err(|e| e.to_string())?;
    for blob in &fixture.blobs {
        let (digest, _) = get_digest(&http, &format!("{base}/blobs/{}", blob.digest)).await?;
        if digest != blob.digest {
            return Err(format!("{}: got {digest}", blob.digest));
        }
    }
    Ok(started.elapsed())
}
