//! What an offline berth says of referrers: the list it holds, an empty
//! one only when it knows there are none, and "I do not know" (a 503, not
//! an empty index) for a digest it holds no list for. A bundle whose cache
//! knew of a referrer without holding it lists the referrer as left out,
//! so the site tells "not brought" from "none".

use serde_json::Value;

use crate::common::http::{client, Reply};
use crate::common::sha256_digest;
use crate::common::skopeo::copy_and_verify;
use crate::referrers::{list_referrers, listed};
use crate::support::{tar_entries, Site, Trap, Upstream};

/// `index.json` of the bundle at `path`.
fn bundle_index(path: &std::path::Path) -> Value {
    let file = std::fs::File::open(path).expect("open the bundle");
    let mut archive = tar::Archive::new(file);
    let entry = archive
        .entries()
        .expect("read the bundle")
        .map(|e| e.expect("a tar entry"))
        .find(|e| e.path().is_ok_and(|p| p.ends_with("index.json")))
        .expect("the bundle has an index.json");
    serde_json::from_reader(entry).expect("index.json is JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_referrers_are_what_berth_knows_never_an_invented_empty_list() {
    let up = Upstream::start().await;
    // The connected side pulls both images through a running berth and
    // lists their referrers, but never pulls the signature itself.
    let mut connected = Site::new("", &up.registry.url()).await;
    connected.berth.restart().await;
    let pulls = tempfile::tempdir().expect("tempdir for pulls");
    let host = connected.berth.host();
    copy_and_verify(&host, &up.app, pulls.path(), "connected").await;
    copy_and_verify(&host, &up.other, pulls.path(), "connected").await;
    let berth = &connected.berth;
    let signed = list_referrers(berth, &up.app.repo, &up.app.root.digest, None).await;
    assert_eq!(
        listed(&signed, "connected"),
        vec![up.signature.descriptor()]
    );
    let unsigned = list_referrers(berth, &up.other.repo, &up.other.root.digest, None).await;
    assert!(listed(&unsigned, "connected, unsigned").is_empty());
    connected.berth.stop().await;

    let dir = tempfile::tempdir().expect("tempdir for the bundle");
    let bundle = dir.path().join("bundle.tar");
    let exported = connected.ok(&["export", "--output", &bundle.display().to_string()]);
    let signature = &up.signature.manifest.digest;
    assert!(
        exported.contains(&format!("left out referrer {signature}")),
        "{exported}"
    );
    // The bundle says so: the list names the signature, and names it left out.
    let index = bundle_index(&bundle);
    let lists: Vec<&Value> = index["manifests"]
        .as_array()
        .expect("index.json lists manifests")
        .iter()
        .filter(|m| m["annotations"]["io.berth.referrers-of"].is_string())
        .collect();
    let of = |digest: &str| {
        lists
            .iter()
            .find(|m| m["annotations"]["io.berth.referrers-of"] == digest)
            .unwrap_or_else(|| panic!("no referrers list of {digest} in {index:#}"))
    };
    assert_eq!(
        of(&up.app.root.digest)["annotations"]["io.berth.omitted"],
        signature.as_str(),
        "the left-out signature is named: {index:#}"
    );
    assert!(
        of(&up.other.root.digest)["annotations"]["io.berth.omitted"].is_null(),
        "an empty list is complete: {index:#}"
    );
    let signature_blob = format!("blobs/sha256/{}", &signature["sha256:".len()..]);
    assert!(
        !tar_entries(&bundle)
            .iter()
            .any(|(name, ..)| name.ends_with(&signature_blob)),
        "the signature itself was not brought"
    );

    let trap = Trap::bind();
    let mut site = Site::new("offline = true", &trap.url()).await;
    site.ok(&["import", &bundle.display().to_string()]);
    site.berth.restart().await;
    let berth = &site.berth;

    let reply = list_referrers(berth, &up.app.repo, &up.app.root.digest, None).await;
    assert_eq!(
        listed(&reply, "offline, the signed image"),
        vec![up.signature.descriptor()],
        "the signature is listed, though not brought"
    );
    let url = format!("{}/v2/{}/manifests/{signature}", berth.url(), up.app.repo);
    let reply = Reply::of(client().get(url)).await;
    assert_eq!(reply.status, 404, "the signature was not brought");
    assert!(
        String::from_utf8_lossy(&reply.body).contains("offline"),
        "{:?}",
        reply.body
    );
    let reply = list_referrers(berth, &up.other.repo, &up.other.root.digest, None).await;
    assert!(
        listed(&reply, "offline, the unsigned image").is_empty(),
        "known to have none"
    );
    // A digest berth holds no list for: it does not know.
    let unknown = sha256_digest(b"never listed on the connected side");
    for (repo, digest) in [
        (up.app.repo.as_str(), unknown.as_str()),
        ("test/elsewhere", up.app.root.digest.as_str()),
    ] {
        let reply = list_referrers(berth, repo, digest, None).await;
        let body = String::from_utf8_lossy(&reply.body);
        assert_eq!(reply.status, 503, "{repo}@{digest}: {body}");
        assert_eq!(reply.oci_error().0, "UNAVAILABLE", "{body}");
        assert!(body.contains("offline"), "{body}");
    }
    trap.assert_untouched();
    site.berth.stop().await;
}
