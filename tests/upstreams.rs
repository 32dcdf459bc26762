//! One berth in front of two real registries (Debian's docker-registry), one
//! of them behind htpasswd credentials, reached the three ways runtimes are
//! configured: Docker's `registry-mirrors` (the default upstream, with Docker
//! Hub's `library/`), containerd's `?ns=<host>`, and the path form. Requests
//! for registries berth does not mirror, and denied repositories, never leave
//! berth.

mod common;

use std::path::Path;

use common::berth::Berth;
use common::content::{Fixture, Pusher};
use common::http::{client, header, oci_error};
use common::registry::Registry;
use common::skopeo::{copy_all, copy_and_verify, verify_dir};
use common::{committed, digest_hex, files_under, sha256_digest};
use reqwest::StatusCode;

const USER: &str = "mirror";
const PASS: &str = "s3cret-for-b";

struct Site {
    /// Plays Docker Hub: named `docker.io`, the default upstream.
    hub: Registry,
    /// A private registry with credentials, `b.test` (alias `bee`).
    private: Registry,
    berth: Berth,
    _dir: tempfile::TempDir,
}

async fn site() -> Site {
    let hub = Registry::start();
    let private = Registry::start_with_htpasswd(USER, PASS);
    let dir = tempfile::tempdir().expect("temp dir");
    let password = dir.path().join("b-password");
    std::fs::write(&password, PASS).expect("write password file");
    let config = format!(
        r#"
        [[upstream]]
        name = "docker.io"
        url = "{hub}"
        default = true

        [[upstream]]
        name = "b.test"
        url = "{private}"
        aliases = ["bee"]
        username = "{USER}"
        password_file = "{password}"
        deny = ["secret/**"]
        "#,
        hub = hub.url(),
        private = private.url(),
        password = password.display(),
    );
    let berth = Berth::start(&config, &hub.url()).await;
    Site {
        hub,
        private,
        berth,
        _dir: dir,
    }
}

/// Files anywhere under berth's data directory whose name is `digest`'s
/// hex: one however many upstreams and repositories share the blob.
fn stored_copies(dir: &Path, digest: &str) -> usize {
    let hex = digest_hex(digest);
    files_under(dir)
        .iter()
        .filter(|(path, _)| path.file_name().is_some_and(|name| name == hex))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_routing_form_reaches_its_upstream_and_shared_digests_are_stored_once() {
    let mut site = site().await;
    let busybox = Fixture::docker_image("library/busybox", "1");
    // The same image in both registries: one digest, two upstreams.
    let shared_hub = Fixture::big_image("team/app", "1", 2 << 20);
    let shared_private = shared_hub.clone();
    Pusher::to(&site.hub)
        .push_all(&[busybox.clone(), shared_hub.clone()])
        .await;
    Pusher::to(&site.private)
        .push_all(std::slice::from_ref(&shared_private))
        .await;
    let out = tempfile::tempdir().expect("temp dir for skopeo output");
    let host = site.berth.host();

    // Docker's form: the default upstream; the name as Docker sends it.
    copy_and_verify(&host, &busybox, out.path(), "docker-form").await;
    copy_and_verify(&host, &shared_hub, out.path(), "docker-form").await;

    // The path form, by name and by alias, into the credentialed registry.
    for prefix in ["b.test", "bee"] {
        let dest = out.path().join(format!("path-{prefix}"));
        copy_all(
            &format!("{host}/{prefix}/{}", shared_private.reference()),
            &dest,
        )
        .await
        .unwrap_or_else(|e| panic!("path form {prefix}: {e}"));
        verify_dir(&dest, &shared_private).unwrap_or_else(|e| panic!("path form {prefix}: {e}"));
    }

    // containerd's form: `?ns=`, and the spec's OCI-Namespace answer.
    let http = client();
    let url = format!("{}/v2/team/app/manifests/1?ns=b.test", site.berth.url());
    let resp = http.get(&url).send().await.expect("GET with ns");
    assert_eq!(resp.status(), StatusCode::OK, "{url}");
    assert_eq!(header(&resp, "oci-namespace"), "b.test");
    assert_eq!(
        header(&resp, "docker-content-digest"),
        shared_private.root.digest
    );

    // The shared layer was fetched once, by the hub fill, and is stored
    // once; the private registry was only asked to confirm it holds it.
    let layer = shared_hub.largest_blob().digest.clone();
    committed(site.berth.data_dir(), &layer).await;
    assert_eq!(stored_copies(site.berth.data_dir(), &layer), 1);
    site.hub.stop();
    site.private.stop();
    assert_eq!(
        site.hub.blob_gets(&layer),
        1,
        "hub log:\n{}",
        site.hub.log()
    );
    assert_eq!(
        site.private.blob_gets(&layer),
        0,
        "private log:\n{}",
        site.private.log()
    );
    assert!(
        site.private
            .log()
            .contains(&format!("\"HEAD /v2/team/app/blobs/{layer} ")),
        "the private registry confirmed the layer:\n{}",
        site.private.log()
    );
    site.berth.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_hub_names_get_library_in_every_form() {
    let mut site = site().await;
    let busybox = Fixture::docker_image("library/busybox", "1");
    Pusher::to(&site.hub)
        .push_all(std::slice::from_ref(&busybox))
        .await;
    let http = client();
    let base = site.berth.url();
    for path in [
        "/v2/busybox/manifests/1",
        "/v2/library/busybox/manifests/1",
        "/v2/busybox/manifests/1?ns=docker.io",
        "/v2/docker.io/busybox/manifests/1",
    ] {
        let resp = http.get(format!("{base}{path}")).send().await.expect("GET");
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
        let digest = header(&resp, "docker-content-digest").to_owned();
        let body = resp.bytes().await.expect("body");
        assert_eq!(digest, busybox.root.digest, "{path}");
        assert_eq!(sha256_digest(&body), busybox.root.digest, "{path}");
    }
    // Four spellings, one cache entry: the hub saw the tag fetched once.
    site.hub.stop();
    let gets = site
        .hub
        .log()
        .lines()
        .filter(|l| l.contains("\"GET /v2/library/busybox/manifests/1 "))
        .count();
    assert_eq!(gets, 1, "{}", site.hub.log());
    site.berth.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmirrored_hosts_and_denied_repositories_cause_no_upstream_traffic() {
    let mut site = site().await;
    let http = client();
    let base = site.berth.url();
    let refusals = [
        ("/v2/team/app/manifests/1?ns=quay.io", StatusCode::NOT_FOUND, "NAME_UNKNOWN"),
        ("/v2/quay.io/team/app/manifests/1", StatusCode::NOT_FOUND, "NAME_UNKNOWN"),
        ("/v2/localhost/app/manifests/1", StatusCode::NOT_FOUND, "NAME_UNKNOWN"),
        ("/v2/bee/secret/keys/manifests/1", StatusCode::FORBIDDEN, "DENIED"),
        ("/v2/secret/keys/blobs/sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855?ns=b.test", StatusCode::FORBIDDEN, "DENIED"),
        ("/v2/secret/keys/tags/list?ns=b.test", StatusCode::FORBIDDEN, "DENIED"),
    ];
    for (path, status, code) in refusals {
        let resp = http.get(format!("{base}{path}")).send().await.expect("GET");
        let (got_status, codes) = oci_error(resp).await;
        assert_eq!(
            (got_status, codes),
            (status, vec![code.to_owned()]),
            "{path}"
        );
    }
    site.hub.stop();
    site.private.stop();
    for registry in [&site.hub, &site.private] {
        let log = registry.log();
        for word in ["quay.io", "localhost/app", "secret"] {
            assert!(!log.contains(word), "{word} reached an upstream:\n{log}");
        }
    }
    // The check above can only fail if the logs record requests at all.
    assert!(
        site.hub.log().contains("GET /v2/"),
        "the hub log records requests"
    );
    site.berth.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_of_one_upstream_never_reach_another() {
    let private = Registry::start_with_htpasswd(USER, PASS);
    let open = common::hostile::Hostile::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let password = dir.path().join("b-password");
    std::fs::write(&password, PASS).expect("write password file");
    let config = format!(
        r#"
        [[upstream]]
        name = "open.test"
        url = "{open}"
        default = true

        [[upstream]]
        name = "b.test"
        url = "{private}"
        username = "{USER}"
        password_file = "{password}"
        "#,
        open = open.url(),
        private = private.url(),
        password = password.display(),
    );
    let mut berth = Berth::start(&config, &open.url()).await;
    let image = Fixture::oci_image("team/app", "1");
    Pusher::to(&private)
        .push(&image)
        .await
        .expect("push to the private registry");
    open.add_fixture(&image);
    let out = tempfile::tempdir().expect("temp dir for skopeo output");
    let host = berth.host();
    copy_and_verify(&host, &image, out.path(), "open").await;
    let dest = out.path().join("private");
    copy_all(&format!("{host}/b.test/{}", image.reference()), &dest)
        .await
        .expect("pull from the private registry");
    verify_dir(&dest, &image).expect("private image intact");

    let seen = open.requests();
    assert!(
        seen.iter().any(|r| r.path.contains("/manifests/")),
        "the open upstream served the pull"
    );
    let leaked: Vec<_> = seen.iter().filter(|r| r.authorization.is_some()).collect();
    assert!(
        leaked.is_empty(),
        "credentials reached the open upstream: {leaked:?}"
    );
    berth.stop().await;
}
