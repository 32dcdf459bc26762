//! Referrers through an upstream that has the referrers API: the in-process
//! upstream of tests/common/referrers_upstream.rs, which pages its answers
//! and never filters them, so berth must merge the pages and filter itself.

use futures_util::future::join_all;
use http::StatusCode;

use crate::common::berth::Berth;
use crate::common::content::{Fixture, EMPTY_DIGEST, OCI_INDEX, OCI_MANIFEST};
use crate::common::referrers_upstream::ReferrersUpstream;
use crate::common::sha256_digest;
use crate::support::{
    descriptor, get_manifest, list_referrers, listed, referrers_header_until, referrers_tag,
    sorted, Artifact, Signed, ATTESTATION, EMPTY_CONFIG, SBOM, SIGNATURE,
};

/// An upstream with the API, holding `signed`'s image and its three
/// artifacts, answering in pages of `page_size` descriptors; and `others`.
async fn upstream_with(signed: &Signed, others: &[Fixture], page_size: usize) -> ReferrersUpstream {
    let upstream = ReferrersUpstream::start().await;
    upstream.set_page_size(page_size);
    for fixture in std::iter::once(&signed.image).chain(others) {
        add_fixture(&upstream, fixture);
    }
    for artifact in signed.artifacts() {
        add_artifact(&upstream, signed.repo(), artifact);
    }
    upstream
}

fn add_fixture(upstream: &ReferrersUpstream, fixture: &Fixture) {
    for blob in &fixture.blobs {
        upstream.add_blob(blob.bytes.clone());
    }
    for child in &fixture.children {
        upstream.add_manifest(&fixture.repo, None, child.media_type, child.bytes.clone());
    }
    let root = &fixture.root;
    upstream.add_manifest(
        &fixture.repo,
        Some(&fixture.tag),
        root.media_type,
        root.bytes.clone(),
    );
}

fn add_artifact(upstream: &ReferrersUpstream, repo: &str, artifact: &Artifact) {
    for blob in &artifact.blobs {
        upstream.add_blob(blob.bytes.clone());
    }
    let manifest = &artifact.manifest;
    upstream.add_manifest(repo, None, manifest.media_type, manifest.bytes.clone());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_are_merged_and_filtered_by_berth_with_one_capability_probe() {
    let signed = Signed::new("test/paged");
    let plain = Fixture::oci_image("test/lonely", "v1");
    // One descriptor a page: three referrers take three pages.
    let upstream = upstream_with(&signed, std::slice::from_ref(&plain), 1).await;
    let mut berth = Berth::start("", &upstream.url()).await;

    let reply = list_referrers(&berth, signed.repo(), signed.digest(), None).await;
    assert_eq!(listed(&reply, "every page"), signed.descriptors());
    assert_eq!(reply.header("oci-filters-applied"), "", "no filter asked");
    assert_eq!(
        upstream.referrers_gets(signed.repo(), signed.digest()),
        3,
        "one GET per page: {:#?}",
        upstream.requests()
    );

    for (artifact_type, artifact) in [
        (SIGNATURE, &signed.signature),
        (SBOM, &signed.sbom),
        (ATTESTATION, &signed.attestation),
    ] {
        let reply =
            list_referrers(&berth, signed.repo(), signed.digest(), Some(artifact_type)).await;
        assert_eq!(
            listed(&reply, artifact_type),
            vec![artifact.descriptor()],
            "filtered by {artifact_type}"
        );
        assert_eq!(reply.header("oci-filters-applied"), "artifactType");
    }
    let reply = list_referrers(&berth, signed.repo(), signed.digest(), Some("text/none")).await;
    assert!(listed(&reply, "a type nothing has").is_empty());
    assert_eq!(reply.header("oci-filters-applied"), "artifactType");
    assert_eq!(
        upstream.referrers_gets(signed.repo(), signed.digest()),
        3,
        "filtered answers come from the stored list, within its TTL"
    );

    // Lookups at once, for digests and repositories with nothing.
    let unknown = sha256_digest(b"nobody signed this");
    let lookups = [
        (plain.repo.as_str(), plain.root.digest.as_str()),
        (signed.repo(), unknown.as_str()),
        ("test/nowhere", signed.digest()),
    ];
    let replies = join_all(
        lookups
            .iter()
            .map(|(repo, digest)| list_referrers(&berth, repo, digest, None)),
    )
    .await;
    for ((repo, digest), reply) in lookups.iter().zip(&replies) {
        assert!(
            listed(reply, &format!("{repo}@{digest}")).is_empty(),
            "{repo}@{digest}"
        );
    }
    assert_eq!(
        upstream.probes(),
        1,
        "the capability is asked once: {:#?}",
        upstream.requests()
    );
    berth.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_referrers_header_tells_which_manifests_have_referrers() {
    let signed = Signed::new("test/headed");
    let plain = Fixture::oci_image("test/bare", "v1");
    let upstream = upstream_with(&signed, std::slice::from_ref(&plain), 2).await;
    let mut berth = Berth::start("", &upstream.url()).await;

    referrers_header_until(&berth, &plain.repo, &plain.tag, "absent").await;
    let seen = referrers_header_until(&berth, signed.repo(), signed.digest(), "present").await;
    assert!(
        !seen.iter().any(|v| v == "absent"),
        "an image with referrers was said to have none: {seen:?}"
    );
    berth.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_referrers_tag_is_answered_from_the_api() {
    let signed = Signed::new("test/translated");
    let upstream = upstream_with(&signed, &[], 2).await;
    let mut berth = Berth::start("", &upstream.url()).await;

    let tag = referrers_tag(signed.digest());
    let reply = get_manifest(&berth, signed.repo(), &tag).await;
    assert_eq!(
        reply.status,
        200,
        "the referrers tag, built from the API: {}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(reply.header("content-type"), OCI_INDEX);
    assert_eq!(reply.digest(), sha256_digest(&reply.body), "its digest");
    let index: serde_json::Value = serde_json::from_slice(&reply.body).expect("an index");
    assert_eq!(index["schemaVersion"], 2);
    let manifests = index["manifests"].as_array().expect("a manifests list");
    assert_eq!(sorted(manifests.clone()), signed.descriptors());

    // The translated index is pullable by the digest berth gave it.
    let by_digest = get_manifest(&berth, signed.repo(), reply.digest()).await;
    assert_eq!(by_digest.status, 200, "the index by its digest");
    assert!(by_digest.body == reply.body, "the same bytes by digest");

    // Translation is an option.
    berth
        .restart_with(
            "[upstream]\nreferrers_tag_translation = false\n",
            &upstream.url(),
        )
        .await;
    let other = referrers_tag(&signed.sbom.manifest.digest);
    let reply = get_manifest(&berth, signed.repo(), &other).await;
    assert_eq!(reply.status, 404, "translation off: the tag is missing");
    assert_eq!(reply.oci_error().0, "MANIFEST_UNKNOWN");
    berth.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_upstream_gets_the_stored_list_or_a_retryable_error() {
    let signed = Signed::new("test/outage");
    let upstream = upstream_with(&signed, &[], 10).await;
    let mut berth = Berth::start("[upstream]\nreferrers_ttl = \"1s\"\n", &upstream.url()).await;

    let reply = list_referrers(&berth, signed.repo(), signed.digest(), None).await;
    assert_eq!(
        listed(&reply, "while the upstream is up"),
        signed.descriptors()
    );

    upstream.fail_with(Some(StatusCode::SERVICE_UNAVAILABLE));
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let reply = list_referrers(&berth, signed.repo(), signed.digest(), Some(SBOM)).await;
    assert_eq!(
        listed(&reply, "past the TTL, upstream failing"),
        vec![signed.sbom.descriptor()],
        "the last known list, filtered"
    );
    let before = upstream.referrers_gets(signed.repo(), signed.digest());
    assert!(before >= 2, "berth asked again after the TTL");

    let never_asked = &signed.signature.manifest.digest;
    let reply = list_referrers(&berth, signed.repo(), never_asked, None).await;
    assert_eq!(
        reply.status,
        503,
        "nothing stored and the upstream failing: {}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_ne!(
        reply.header("content-type"),
        OCI_INDEX,
        "never a false list"
    );
    let (code, message) = reply.oci_error();
    assert!(!code.is_empty(), "an OCI error code");
    assert!(!message.is_empty(), "a message");

    upstream.fail_with(None);
    let reply = list_referrers(&berth, signed.repo(), never_asked, None).await;
    assert!(listed(&reply, "upstream back").is_empty());
    berth.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_of_more_pages_than_berth_follows_is_an_error_never_a_shorter_list() {
    let image = Fixture::oci_image("test/crowded", "v1");
    let upstream = ReferrersUpstream::start().await;
    upstream.set_page_size(1);
    add_fixture(&upstream, &image);
    // 21 referrers, one a page: one page more than berth follows.
    for i in 0..21 {
        let note = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": format!("application/vnd.example.note.{i}"),
            "config": {"mediaType": EMPTY_CONFIG, "digest": EMPTY_DIGEST, "size": 0},
            "layers": [],
            "subject": descriptor(&image.root),
        });
        let bytes = serde_json::to_vec(&note).expect("serialize a note");
        upstream.add_manifest(&image.repo, None, OCI_MANIFEST, bytes.into());
    }
    let mut berth = Berth::start("", &upstream.url()).await;

    let reply = list_referrers(&berth, &image.repo, &image.root.digest, None).await;
    let body = String::from_utf8_lossy(&reply.body).into_owned();
    assert_eq!(reply.status, 502, "{body}");
    assert!(body.contains("more than 20 pages"), "{body}");
    assert_eq!(upstream.referrers_gets(&image.repo, &image.root.digest), 20);

    // Not kept as a list: a pull looks again in the background, and the
    // manifest never says `absent`.
    let reply = get_manifest(&berth, &image.repo, &image.root.digest).await;
    assert_eq!(reply.status, 200);
    let looked_again = crate::common::eventually(std::time::Duration::from_secs(30), || {
        upstream.referrers_gets(&image.repo, &image.root.digest) >= 40
    })
    .await;
    assert!(looked_again, "the pull made berth look again");
    for _ in 0..10 {
        let reply = get_manifest(&berth, &image.repo, &image.root.digest).await;
        assert_eq!(reply.header("oci-referrers"), "", "berth does not know");
    }
    berth.stop().await;
}
