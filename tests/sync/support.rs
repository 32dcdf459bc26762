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

    /// Pushes the image, its signature and the referrers tag listing it,
    /// the image's tag last: a rule that sees the tag sees it signed (a
    /// signature pushed later is found once berth's `referrers_ttl` has
    /// passed, which these tests do not wait for).
    pub async fn push(&self, registry: &Registry) {
        let pusher = Pusher::to(registry);
        let (image, repo) = (&self.image, self.image.repo.as_str());
        let fail = |what: &str, e: String| panic!("push {what} of {}: {e}", image.reference());
        for blob in &image.blobs {
            pusher
                .push_blob(repo, blob)
                .await
                .unwrap_or_else(|e| fail("a blob", e));
        }
        for child in &image.children {
            pusher
                .push_manifest(repo, &child.digest, child)
                .await
                .unwrap_or_else(|e| fail("a child manifest", e));
        }
        pusher
            .push_manifest(repo, &image.root.digest, &image.root)
            .await
            .unwrap_or_else(|e| fail("the root by digest", e));
        push_artifacts(&pusher, repo, &[&self.signature]).await;
        let list = referrers_index(&[self.signature.descriptor()]);
        let tag = referrers_tag(&image.root.digest);
        pusher
            .push_manifest(repo, &tag, &list)
            .await
            .unwrap_or_else(|e| fail("the referrers tag", e));
        pusher
            .push_manifest(repo, &image.tag, &image.root)
            .await
            .unwrap_or_else(|e| fail("the tag", e));
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
    let url = format!("{}/metrics", berth.url());
    let text = match client().get(&url).send().await {
        Ok(resp) => resp.text().await,
        Err(e) => Err(e),
    }
    .unwrap_or_else(|e| panic!("GET {url}: {}", error_chain(&e)));
    text.lines()
        .filter_map(|line| line.rsplit_once(' '))
        .find(|(name, _)| *name == series)
        .map_or(0.0, |(_, value)| value.parse().unwrap_or(0.0))
}

/// Waits (60 s at most, a hang guard) until `series` is at least `n`.
pub async fn wait_for_metric(berth: &Berth, series: &str, n: f64) -> f64 {
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let now = metric(berth, series).await;
        if now >= n {
            return now;
        }
        assert!(Instant::now() < until, "{series} is {now}, never {n}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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
    let series = format!("berth_sync_runs_total{{rule=\"{rule}\",outcome=\"{outcome}\"}}");
    wait_for_metric(berth, &series, n).await
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

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}
