//! Referrers through an upstream without the referrers API: Debian's
//! docker-registry (distribution 2.8), where a spec-following client keeps
//! the list in an OCI index under the referrers tag `sha256-<hex>`; and the
//! in-process hostile upstream for a referrers tag past berth's bounds.

use futures_util::future::join_all;

use crate::common::berth::Berth;
use crate::common::content::{Fixture, Pusher, OCI_INDEX, OCI_MANIFEST};
use crate::common::hostile::Hostile;
use crate::common::referrers_upstream::ZERO_DIGEST;
use crate::common::registry::Registry;
use crate::common::sha256_digest;
use crate::support::{
    get_blob, get_manifest, list_referrers, listed, push_artifacts, referrers_header_until,
    referrers_index, referrers_tag, sorted, Signed, SBOM, SIGNATURE,
};

/// A docker-registry holding `signed`'s image, its signature and SBOM (not
/// its attestation), and the referrers tag listing those two, pushed as oras
/// and cosign push them; and `others`, with no referrers.
async fn registry_with(signed: &Signed, others: &[Fixture]) -> Registry {
    let registry = Registry::start();
    let pusher = Pusher::to(&registry);
    pusher.push_all(std::slice::from_ref(&signed.image)).await;
    pusher.push_all(others).await;
    push_artifacts(&pusher, signed.repo(), &[&signed.signature, &signed.sbom]).await;
    let index = referrers_index(&two_listed(signed));
    let tag = referrers_tag(signed.digest());
    if let Err(e) = pusher.push_manifest(signed.repo(), &tag, &index).await {
        panic!("push the referrers tag {tag}: {e}");
    }
    registry
}

/// The descriptors in the referrers tag [`registry_with`] pushes, sorted.
fn two_listed(signed: &Signed) -> Vec<serde_json::Value> {
    sorted(vec![
        signed.signature.descriptor(),
        signed.sbom.descriptor(),
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn referrers_are_listed_from_the_referrers_tag_of_a_registry_without_the_api() {
    let signed = Signed::new("test/signed");
    let plain = Fixture::oci_image("test/plain", "v1");
    let registry = registry_with(&signed, std::slice::from_ref(&plain)).await;
    let mut berth = Berth::start("", &registry.url()).await;

    // What berth learns in the background shows in OCI-Referrers.
    referrers_header_until(&berth, &plain.repo, &plain.root.digest, "absent").await;
    let seen = referrers_header_until(&berth, signed.repo(), &signed.image.tag, "present").await;
    assert!(
        !seen.iter().any(|v| v == "absent"),
        "an image with referrers was said to have none: {seen:?}"
    );

    let reply = list_referrers(&berth, signed.repo(), signed.digest(), None).await;
    assert_eq!(
        listed(&reply, "the whole list"),
        two_listed(&signed),
        "the referrers tag's descriptors, as pushed"
    );
    assert_eq!(
        reply.header("oci-filters-applied"),
        "",
        "no filter was asked for"
    );

    let reply = list_referrers(&berth, signed.repo(), signed.digest(), Some(SBOM)).await;
    assert_eq!(
        listed(&reply, "filtered by the SBOM type"),
        vec![signed.sbom.descriptor()]
    );
    assert_eq!(reply.header("oci-filters-applied"), "artifactType");
    let reply = list_referrers(&berth, signed.repo(), signed.digest(), Some(SIGNATURE)).await;
    assert_eq!(
        listed(&reply, "filtered by the signature type"),
        vec![signed.signature.descriptor()]
    );

    // A client that found them pulls the artifacts through berth.
    for artifact in [&signed.signature, &signed.sbom] {
        let manifest = &artifact.manifest;
        let reply = get_manifest(&berth, signed.repo(), &manifest.digest).await;
        assert_eq!(reply.status, 200, "the {} manifest", artifact.artifact_type);
        assert!(
            reply.body == manifest.bytes,
            "the {} manifest came back changed",
            artifact.artifact_type
        );
        assert_eq!(reply.digest(), manifest.digest);
        for blob in &artifact.blobs {
            let reply = get_blob(&berth, signed.repo(), &blob.digest).await;
            assert_eq!(
                reply.status, 200,
                "{} blob {}",
                artifact.artifact_type, blob.digest
            );
            assert!(
                reply.body == blob.bytes,
                "blob {} came back changed",
                blob.digest
            );
        }
    }
    berth.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_refers_to_an_unknown_digest_or_repository_and_a_bad_digest_is_refused() {
    let signed = Signed::new("test/known");
    let registry = registry_with(&signed, &[]).await;
    let mut berth = Berth::start("", &registry.url()).await;

    let unknown = sha256_digest(b"nothing refers to this");
    for (repo, digest) in [
        (signed.repo(), unknown.as_str()),
        ("test/unknown", signed.digest()),
    ] {
        let reply = list_referrers(&berth, repo, digest, None).await;
        assert!(
            listed(&reply, &format!("{repo}@{digest}")).is_empty(),
            "{repo}@{digest}: nothing refers to it"
        );
    }

    let short = format!("sha256:{}", "a".repeat(63));
    for bad in ["sha256:not-hex", short.as_str()] {
        let reply = list_referrers(&berth, signed.repo(), bad, None).await;
        assert_eq!(reply.status, 400, "{bad}: {:?}", reply.body);
        assert_eq!(reply.oci_error().0, "DIGEST_INVALID", "{bad}");
    }
    berth.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_without_the_api_is_probed_once_for_every_lookup() {
    let signed = Signed::new("test/probed");
    let plain = Fixture::oci_image("test/unsigned", "v1");
    let mut registry = registry_with(&signed, std::slice::from_ref(&plain)).await;
    let mut berth = Berth::start("", &registry.url()).await;

    // Lookups at once (one probe for them all), then one after the other.
    let unknown = sha256_digest(b"no such manifest");
    let lookups = [
        (signed.repo(), signed.digest()),
        (signed.repo(), unknown.as_str()),
        (plain.repo.as_str(), plain.root.digest.as_str()),
        ("test/elsewhere", signed.digest()),
    ];
    let replies = join_all(
        lookups
            .iter()
            .map(|(repo, digest)| list_referrers(&berth, repo, digest, None)),
    )
    .await;
    for ((repo, digest), reply) in lookups.iter().zip(&replies) {
        let listed = listed(reply, &format!("{repo}@{digest}"));
        let expected = if *digest == signed.digest() && *repo == signed.repo() {
            two_listed(&signed)
        } else {
            Vec::new()
        };
        assert_eq!(listed, expected, "{repo}@{digest}");
    }
    let sbom_digest = signed.sbom.manifest.digest.as_str();
    let reply = list_referrers(&berth, signed.repo(), sbom_digest, Some(SBOM)).await;
    assert!(listed(&reply, "the SBOM's own referrers").is_empty());
    // A manifest pulled by digest makes berth look its referrers up too.
    let signature_digest = &signed.signature.manifest.digest;
    referrers_header_until(&berth, signed.repo(), signature_digest, "absent").await;
    // Without the API there is no list to translate a missing tag from.
    let reply = get_manifest(&berth, &plain.repo, &referrers_tag(&plain.root.digest)).await;
    assert_eq!(reply.status, 404, "a missing referrers tag, no API");
    assert_eq!(reply.oci_error().0, "MANIFEST_UNKNOWN");
    berth.stop().await;

    registry.stop();
    let log = registry.log();
    let referrers: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("\"GET /v2/") && line.contains("/referrers/"))
        .collect();
    assert_eq!(
        referrers.len(),
        1,
        "one capability probe, and no other referrers request: {referrers:#?}"
    );
    assert!(
        referrers[0].contains(&format!("/referrers/{ZERO_DIGEST} ")),
        "the probe asks about the all-zero digest: {}",
        referrers[0]
    );
    let tag_path = format!(
        "/v2/{}/manifests/{}",
        signed.repo(),
        referrers_tag(signed.digest())
    );
    assert!(
        registry.requests_to("GET", &tag_path) >= 1,
        "berth read the referrers tag"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_list_outlives_its_ttl_while_the_registry_is_down() {
    let signed = Signed::new("test/resilient");
    let mut registry = registry_with(&signed, &[]).await;
    let mut berth = Berth::start("[upstream]\nreferrers_ttl = \"1s\"\n", &registry.url()).await;

    let reply = list_referrers(&berth, signed.repo(), signed.digest(), None).await;
    assert_eq!(
        listed(&reply, "while the registry is up"),
        two_listed(&signed)
    );

    registry.stop();
    // Past the list's referrers_ttl: berth must ask again, and cannot.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let reply = list_referrers(&berth, signed.repo(), signed.digest(), None).await;
    assert_eq!(
        listed(&reply, "while the registry is down"),
        two_listed(&signed),
        "the last known list, not an empty one"
    );
    let reply = list_referrers(&berth, signed.repo(), signed.digest(), Some(SBOM)).await;
    assert_eq!(
        listed(&reply, "filtered while down"),
        vec![signed.sbom.descriptor()]
    );

    let never_asked = &signed.signature.manifest.digest;
    let reply = list_referrers(&berth, signed.repo(), never_asked, None).await;
    assert_eq!(
        reply.status,
        503,
        "nothing known and the registry down: {:?}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(reply.oci_error().0, "UNAVAILABLE");
    assert_ne!(reply.header("content-type"), OCI_INDEX, "not a list");
    berth.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn referrers_are_learnt_with_heads_and_the_header_stays_once_known() {
    let signed = Signed::new("test/steady");
    let plain = Fixture::oci_image("test/bare", "v1");
    let mut registry = registry_with(&signed, std::slice::from_ref(&plain)).await;
    // Every stored list is stale at once: each pull refreshes it in the
    // background, and the header must not waver while it does.
    let mut berth = Berth::start("[upstream]\nreferrers_ttl = \"0s\"\n", &registry.url()).await;
    referrers_header_until(&berth, signed.repo(), signed.digest(), "present").await;
    referrers_header_until(&berth, &plain.repo, &plain.root.digest, "absent").await;

    let lookups = [
        (signed.repo(), signed.digest()),
        (plain.repo.as_str(), plain.root.digest.as_str()),
        (plain.repo.as_str(), plain.tag.as_str()),
    ];
    let headers = |berth| referrers_headers(berth, &lookups);
    for round in 0..20 {
        assert_eq!(
            headers(&berth).await,
            ["present", "absent", "absent"],
            "round {round}: stale lists still answer, while they refresh"
        );
    }
    registry.stop();
    for round in 0..5 {
        assert_eq!(
            headers(&berth).await,
            ["present", "absent", "absent"],
            "round {round} with the registry down: the last known lists"
        );
    }
    berth.stop().await;

    // A missing referrers tag costs HEADs only; an existing one is read
    // once, then confirmed unchanged by conditional HEADs (304).
    let tag_path =
        |repo: &str, digest: &str| format!("/v2/{repo}/manifests/{}", referrers_tag(digest));
    let plain_tag = tag_path(&plain.repo, &plain.root.digest);
    let signed_tag = tag_path(signed.repo(), signed.digest());
    assert_eq!(registry.requests_to("GET", &plain_tag), 0, "{plain_tag}");
    assert!(registry.requests_to("HEAD", &plain_tag) >= 2, "{plain_tag}");
    assert_eq!(registry.requests_to("GET", &signed_tag), 1, "{signed_tag}");
    let heads = registry.requests_to("HEAD", &signed_tag);
    assert!(heads >= 2, "{signed_tag}: {heads} HEADs");
    let not_modified = registry
        .log()
        .lines()
        .filter(|l| l.contains(&format!("\"HEAD {signed_tag} HTTP/")) && l.contains("\" 304 "))
        .count();
    assert!(
        not_modified >= 1,
        "the unchanged tag is confirmed with a conditional HEAD:\n{}",
        registry.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_referrers_tag_is_an_error_never_an_empty_list() {
    let hostile = Hostile::start().await;
    let image = Fixture::oci_image("test/crowded", "v1");
    hostile.add_fixture(&image);
    // A referrers tag past berth's 4 MiB bound on a list: 40,000 descriptors.
    let descriptors: Vec<serde_json::Value> = (0..40_000)
        .map(|i| {
            serde_json::json!({
                "mediaType": OCI_MANIFEST,
                "digest": sha256_digest(format!("referrer {i}").as_bytes()),
                "size": 1000 + i,
                "artifactType": "application/vnd.example.note",
            })
        })
        .collect();
    let index = referrers_index(&descriptors);
    assert!(index.bytes.len() > 4 * 1024 * 1024);
    let tag = referrers_tag(&image.root.digest);
    hostile.add_manifest_as(&image.repo, &tag, OCI_INDEX, index.bytes.clone());
    let mut berth = Berth::start("", &hostile.url()).await;

    let reply = list_referrers(&berth, &image.repo, &image.root.digest, None).await;
    let body = String::from_utf8_lossy(&reply.body).into_owned();
    assert_eq!(reply.status, 502, "{body}");
    assert_ne!(reply.header("content-type"), OCI_INDEX, "not a list");
    assert!(body.contains("partial list"), "{body}");

    // Nothing was kept as "none": a pull asks again in the background, and
    // no manifest response says `absent`.
    let reply = get_manifest(&berth, &image.repo, &image.root.digest).await;
    assert_eq!(reply.status, 200);
    hostile.wait_manifest_gets(&image.repo, &tag, 2).await;
    for _ in 0..10 {
        let reply = get_manifest(&berth, &image.repo, &image.root.digest).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.header("oci-referrers"), "", "berth does not know");
    }
    berth.stop().await;
}

/// The `OCI-Referrers` header of a GET of each (repository, reference).
async fn referrers_headers(berth: &Berth, lookups: &[(&str, &str)]) -> Vec<String> {
    let mut seen = Vec::new();
    for (repo, reference) in lookups {
        let reply = get_manifest(berth, repo, reference).await;
        assert_eq!(reply.status, 200, "{repo}@{reference}");
        seen.push(reply.header("oci-referrers").to_owned());
    }
    seen
}
