//! The Docker Engine pulls through berth configured as its
//! `registry-mirrors`, the way the README tells an operator to set it up.
//!
//! Each test starts a private `dockerd` (`common::docker`: its own
//! directories, socket, configuration and CAs, nothing of the machine's
//! Docker)
//! whose `daemon.json` names a berth the test runs in-process, in front of
//! a real upstream (Debian's docker-registry) registered as berth's default
//! upstream, `docker.io`. Docker sends a mirror Docker Hub pulls only,
//! with Hub names normalised (`app` is `library/app`), which is what the
//! upstream holds. Images are pulled with the docker CLI, checked by digest
//! (`RepoDigests`), and run: their layer holds a static program, so what
//! `docker run` prints proves the layers berth served make a working image.
//!
//! dockerd reaches nothing but loopback: its proxy is a stand-in for Docker
//! Hub that records a fallback and answers 502, so the tests see when
//! Docker gives up on the mirror and turns to Docker Hub.
//!
//! Needs root and Debian's docker.io, docker-registry, gcc, libc6-dev,
//! openssl and apache2-utils (`scripts/test` installs them).

mod common;

use serde_json::{json, Value};

use common::berth::Berth;
use common::content::{Fixture, Pusher};
use common::docker::Dockerd;
use common::registry::Registry;
use common::runnable::{self, Kind};
use common::tls::TestPki;

/// berth's default upstream, as Docker's mirror traffic needs it: named
/// `docker.io`, at `url`.
fn docker_io_upstream(url: &str) -> String {
    format!("[[upstream]]\nname = \"docker.io\"\nurl = \"{url}\"\ndefault = true\n")
}

/// The address every deploy snippet uses for berth.
const PLACEHOLDER_HOST: &str = "berth.internal:5000";

/// `deploy/runtimes/docker/<file>` with berth's address in place of the
/// placeholder: the daemon.json an operator installs.
fn deploy_daemon_json(file: &str, berth: &Berth) -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy/runtimes/docker")
        .join(file);
    let text = std::fs::read_to_string(&path).expect("read the deploy daemon.json");
    assert!(text.contains(PLACEHOLDER_HOST), "{}", path.display());
    serde_json::from_str(&text.replace(PLACEHOLDER_HOST, &berth.host()))
        .expect("daemon.json is JSON")
}

/// daemon.json for a plain-HTTP mirror at `berth`:
/// deploy/runtimes/docker/daemon.json.
fn http_mirror(berth: &Berth) -> Value {
    deploy_daemon_json("daemon.json", berth)
}

/// The images of the pull tests, with what each prints.
struct Images {
    /// `library/app:1.0`, Docker schema 2: pulled as `app:1.0`.
    app: Fixture,
    /// `team/app:1.0`, OCI.
    team: Fixture,
    /// `library/multi:1.0`, an OCI index for this machine and another.
    multi: Fixture,
}

const APP_SAYS: &str = "app 1.0 pulled through berth";
const TEAM_SAYS: &str = "team/app 1.0 pulled through berth";
const MULTI_SAYS: &str = "multi 1.0 pulled through berth";

impl Images {
    fn new() -> Images {
        Images {
            app: runnable::runnable(Kind::Docker, "library/app", "1.0", APP_SAYS),
            team: runnable::runnable(Kind::Oci, "team/app", "1.0", TEAM_SAYS),
            multi: runnable::multi_platform("library/multi", "1.0", MULTI_SAYS),
        }
    }

    fn all(&self) -> [&Fixture; 3] {
        [&self.app, &self.team, &self.multi]
    }
}

/// A real upstream holding `fixtures`.
async fn upstream_with(fixtures: &[&Fixture]) -> Registry {
    let registry = Registry::start();
    let pusher = Pusher::to(&registry);
    for fixture in fixtures {
        pusher
            .push(fixture)
            .await
            .unwrap_or_else(|e| panic!("push {}: {e}", fixture.reference()));
    }
    registry
}

/// `docker image inspect` of `reference`: (RepoDigests, Architecture).
async fn inspect(docker: &Dockerd, reference: &str) -> (Vec<String>, String) {
    let out = docker
        .docker_ok(&["image", "inspect", "--format", "{{json .}}", reference])
        .await;
    let image: Value = serde_json::from_str(out.trim()).expect("docker image inspect is JSON");
    let digests = image["RepoDigests"]
        .as_array()
        .map(|list| {
            list.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    let arch = image["Architecture"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    (digests, arch)
}

/// `reference` is in Docker's store as `name@digest`.
async fn assert_repo_digest(docker: &Dockerd, reference: &str, name: &str, digest: &str) {
    let (digests, _) = inspect(docker, reference).await;
    let wanted = format!("{name}@{digest}");
    assert!(
        digests.contains(&wanted),
        "{reference}: RepoDigests {digests:?} do not hold {wanted}"
    );
}

/// `docker run --rm --network none <reference>` prints `says`.
async fn assert_runs(docker: &Dockerd, reference: &str, says: &str) {
    let out = docker
        .docker_ok(&["run", "--rm", "--network", "none", reference])
        .await;
    assert_eq!(out.trim(), says, "docker run {reference}");
}

/// Every pull of the README's Docker section, then every image run.
async fn pull_and_run_everything(docker: &Dockerd, images: &Images) {
    // A one-component name: Docker asks the mirror for library/app.
    docker.docker_ok(&["pull", "app:1.0"]).await;
    assert_repo_digest(docker, "app:1.0", "app", &images.app.root.digest).await;

    // By digest first, while Docker holds nothing of the image.
    let by_digest = format!("team/app@{}", images.team.root.digest);
    docker.docker_ok(&["pull", &by_digest]).await;
    assert_repo_digest(docker, &by_digest, "team/app", &images.team.root.digest).await;
    docker.docker_ok(&["pull", "team/app:1.0"]).await;
    assert_repo_digest(docker, "team/app:1.0", "team/app", &images.team.root.digest).await;

    // Docker picks its own platform from the index...
    docker.docker_ok(&["pull", "multi:1.0"]).await;
    let (digests, arch) = inspect(docker, "multi:1.0").await;
    assert_eq!(arch, runnable::native_arch(), "multi:1.0 for this machine");
    assert!(
        digests.contains(&format!("multi@{}", images.multi.root.digest)),
        "multi:1.0: RepoDigests {digests:?} do not name the index"
    );
    assert_runs(docker, "multi:1.0", MULTI_SAYS).await;
    assert_runs(docker, "app:1.0", APP_SAYS).await;
    assert_runs(docker, "team/app:1.0", TEAM_SAYS).await;
    assert_runs(docker, &by_digest, TEAM_SAYS).await;

    // ...and takes another one when told to.
    let foreign = runnable::foreign_arch();
    docker
        .docker_ok(&[
            "pull",
            "--platform",
            &format!("linux/{foreign}"),
            "multi:1.0",
        ])
        .await;
    let (_, arch) = inspect(docker, "multi:1.0").await;
    assert_eq!(arch, foreign, "multi:1.0 --platform linux/{foreign}");
}

/// Remove every image from Docker's store.
async fn remove_all_images(docker: &Dockerd) {
    let ids = docker.docker_ok(&["image", "ls", "--quiet", "--all"]).await;
    let ids: Vec<&str> = ids.split_whitespace().collect();
    if ids.is_empty() {
        return;
    }
    let mut args = vec!["image", "rm", "--force"];
    args.extend(ids);
    docker.docker_ok(&args).await;
    let left = docker.docker_ok(&["image", "ls", "--quiet", "--all"]).await;
    assert_eq!(left.trim(), "", "docker image rm left images");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_pulls_hub_images_through_berth_and_again_with_the_upstream_stopped() {
    let images = Images::new();
    let mut registry = upstream_with(&images.all()).await;
    let mut berth = Berth::start(&docker_io_upstream(&registry.url()), &registry.url()).await;
    let docker = Dockerd::start(&http_mirror(&berth)).await;

    pull_and_run_everything(&docker, &images).await;
    assert!(
        !docker.tried_docker_hub(),
        "Docker went to Docker Hub: {:?}",
        docker.hub_requests()
    );

    // The upstream goes away; Docker forgets the images; berth's cache
    // serves every pull again.
    registry.stop();
    remove_all_images(&docker).await;
    pull_and_run_everything(&docker, &images).await;
    assert!(
        !docker.tried_docker_hub(),
        "Docker went to Docker Hub: {:?}",
        docker.hub_requests()
    );

    // berth fetched each blob from the upstream once, for both rounds.
    for fixture in images.all() {
        for blob in &fixture.blobs {
            assert_eq!(
                registry.blob_gets(&blob.digest),
                1,
                "{}: upstream GETs of {}; its log:\n{}",
                fixture.reference(),
                blob.digest,
                registry.log()
            );
        }
    }
    berth.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_docker_takes_a_new_mirror_on_sighup() {
    let app = runnable::runnable(Kind::Docker, "library/app", "1.0", APP_SAYS);
    let registry = upstream_with(&[&app]).await;
    let upstream = docker_io_upstream(&registry.url());
    let mut first = Berth::start(&upstream, &registry.url()).await;
    let mut second = Berth::start(&upstream, &registry.url()).await;
    let docker = Dockerd::start(&http_mirror(&first)).await;
    docker.docker_ok(&["pull", "app:1.0"]).await;
    let layer = &app.blobs[1];
    common::committed(first.data_dir(), &layer.digest).await;

    // The operator edits daemon.json and sends SIGHUP to the (test's own)
    // daemon: no restart, the new mirror is used.
    let mut both = http_mirror(&second);
    both["insecure-registries"] = json!([first.host(), second.host()]);
    docker.reload(&both).await;
    assert_eq!(docker.mirrors().await, [second.url()]);
    first.stop().await;
    remove_all_images(&docker).await;
    docker.docker_ok(&["pull", "app:1.0"]).await;
    assert_runs(&docker, "app:1.0", APP_SAYS).await;
    common::committed(second.data_dir(), &layer.digest).await;
    assert!(
        !docker.tried_docker_hub(),
        "Docker went to Docker Hub: {:?}",
        docker.hub_requests()
    );
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_falls_back_to_docker_hub_when_the_mirror_fails() {
    let app = runnable::runnable(Kind::Docker, "library/app", "1.0", APP_SAYS);
    let registry = upstream_with(&[&app]).await;
    let mut berth = Berth::start(&docker_io_upstream(&registry.url()), &registry.url()).await;
    let docker = Dockerd::start(&http_mirror(&berth)).await;

    // What berth does not have upstream (NAME_UNKNOWN): Docker asks
    // Docker Hub next.
    let error = docker.docker_fails(&["pull", "nothere:1.0"]).await;
    assert!(
        docker.tried_docker_hub(),
        "Docker did not turn to Docker Hub after the mirror's 404: {error}\n{:?}",
        docker.hub_requests()
    );

    // berth down: the same.
    docker.forget_hub();
    berth.stop().await;
    let error = docker.docker_fails(&["pull", "app:1.0"]).await;
    assert!(
        docker.tried_docker_hub(),
        "Docker did not turn to Docker Hub with the mirror down: {error}\n{:?}",
        docker.hub_requests()
    );
    assert!(
        error.contains("registry-1.docker.io"),
        "the error names Docker Hub, the last endpoint Docker tried: {error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_pulls_through_an_https_mirror_whose_ca_it_trusts() {
    let app = runnable::runnable(Kind::Docker, "library/app", "1.0", APP_SAYS);
    let registry = upstream_with(&[&app]).await;
    let pki = TestPki::generate();
    let tls = format!(
        "[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        pki.server_cert().display(),
        pki.server_key().display()
    );
    // On ::1: Docker treats 127.0.0.0/8 as insecure whatever daemon.json
    // says (it would skip certificate checks there), never ::1.
    let mut berth = Berth::start_at(
        "[::1]:0",
        &format!("{}{tls}", docker_io_upstream(&registry.url())),
        &registry.url(),
    )
    .await;
    let mut docker = Dockerd::start(&deploy_daemon_json("daemon-https.json", &berth)).await;

    // Without the CA, Docker refuses berth's certificate and turns to
    // Docker Hub: the certificate is checked.
    let error = docker.docker_fails(&["pull", "app:1.0"]).await;
    assert!(
        docker.tried_docker_hub(),
        "the pull failed without Docker trying Docker Hub: {error}"
    );
    assert!(
        docker.log().contains("x509"),
        "dockerd did not refuse berth's certificate: {error}\n{}",
        common::docker::tail(&docker.log(), 30)
    );

    // With the CA trusted, the same pull goes through berth over TLS.
    docker.forget_hub();
    docker.trust_ca(&pki.ca_cert()).await;
    docker.docker_ok(&["pull", "app:1.0"]).await;
    assert_repo_digest(&docker, "app:1.0", "app", &app.root.digest).await;
    assert_runs(&docker, "app:1.0", APP_SAYS).await;
    assert!(
        !docker.tried_docker_hub(),
        "Docker went to Docker Hub: {:?}",
        docker.hub_requests()
    );
    berth.stop().await;
}

/// Where the docker CLI keeps Docker Hub's credentials in config.json.
const DOCKER_HUB_AUTH_KEY: &str = "https://index.docker.io/v1/";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_authenticates_to_a_mirror_with_the_credentials_it_holds_for_docker_hub() {
    let (user, password) = ("puller", "mirror secret");
    let app = runnable::runnable(Kind::Docker, "library/app", "1.0", APP_SAYS);
    let registry = upstream_with(&[&app]).await;
    let dir = tempfile::tempdir().expect("temp dir for htpasswd");
    let htpasswd = dir.path().join("htpasswd");
    common::registry::write_htpasswd(&htpasswd, user, password);
    let auth = format!("[auth]\nhtpasswd_file = \"{}\"\n", htpasswd.display());
    let mut berth = Berth::start(
        &format!("{}{auth}", docker_io_upstream(&registry.url())),
        &registry.url(),
    )
    .await;
    let docker = Dockerd::start(&http_mirror(&berth)).await;

    // No credentials: berth answers 401 and Docker turns to Docker Hub.
    docker.docker_fails(&["pull", "app:1.0"]).await;
    assert!(docker.tried_docker_hub(), "{:?}", docker.hub_requests());

    // `docker login <mirror>` succeeds (berth checks the password), but
    // Docker never sends those credentials to a mirror.
    docker.forget_hub();
    let login = docker
        .docker_ok(&[
            "login",
            "--username",
            user,
            "--password",
            password,
            &berth.host(),
        ])
        .await;
    assert!(login.contains("Login Succeeded"), "{login}");
    docker.docker_fails(&["pull", "app:1.0"]).await;
    assert!(docker.tried_docker_hub(), "{:?}", docker.hub_requests());

    // What Docker sends a mirror is what it holds for Docker Hub: the
    // config.json entry for https://index.docker.io/v1/.
    docker.forget_hub();
    let token = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        format!("{user}:{password}"),
    );
    let config = json!({ "auths": { DOCKER_HUB_AUTH_KEY: { "auth": token } } });
    std::fs::write(
        docker.cli_config().join("config.json"),
        serde_json::to_vec_pretty(&config).expect("config.json"),
    )
    .expect("write the CLI's config.json");
    docker.docker_ok(&["pull", "app:1.0"]).await;
    assert_runs(&docker, "app:1.0", APP_SAYS).await;
    assert!(
        !docker.tried_docker_hub(),
        "Docker went to Docker Hub: {:?}",
        docker.hub_requests()
    );
    berth.stop().await;
}
