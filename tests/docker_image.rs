//! berth's own container image, built and run for real the way the README
//! documents it: `deploy/build-image.sh` builds `deploy/Dockerfile`, and
//! `docker run` with a published port, a named data volume, a mounted
//! configuration and a read-only root filesystem serves pulls, to a Docker
//! Engine among others; it runs as 65532, becomes healthy by its
//! HEALTHCHECK, drains a transfer in flight on `docker stop` and exits 0,
//! and keeps its cache in the volume.
//!
//! The daemon is a private one (`common::docker`) whose containers sit on a
//! bridge of the test's own, so that `-p` publishes berth's port on
//! loopback; the upstream (Debian's docker-registry) listens on the host's
//! address on that bridge, which is how the container reaches it. The one
//! difference from the README's command is the binary: the image is built
//! with `--binary` from the test build of berth, not from a release build,
//! which would take minutes; the Dockerfile and the script are the same.
//!
//! Needs root and Debian's docker.io, docker-registry, iproute2, gcc and
//! libc6-dev (`scripts/test` installs them).

mod common;

use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::content::{Fixture, Pusher};
use common::docker::{describe, Bridge, Dockerd};
use common::registry::Registry;
use common::runnable::{self, Kind};

/// The image the test builds (its daemon is private: no clash).
const TAG: &str = "berth";
/// The name the containers know the upstream by (`--add-host`), so that
/// berth in the image resolves a name, as it does Docker Hub's.
const UPSTREAM_HOST: &str = "upstream.test";
/// The named volume of the README's `docker run`.
const VOLUME: &str = "berth-cache";
/// The uid/gid the Dockerfile runs berth as.
const UID: &str = "65532";
/// How long a container may take to serve, and to become healthy (its
/// first health check runs 10 s after the start).
const SERVING_DEADLINE: Duration = Duration::from_secs(60);
const HEALTHY_DEADLINE: Duration = Duration::from_secs(90);

fn deploy() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

/// `deploy/build-image.sh --tag TAG --binary <the test build of berth>`.
async fn build_image(docker: &Dockerd) {
    let script = deploy().join("build-image.sh");
    let mut cmd = docker.command("sh");
    cmd.arg(&script)
        .args(["--tag", TAG, "--binary", env!("CARGO_BIN_EXE_berth")]);
    let out = tokio::time::timeout(Duration::from_secs(300), cmd.output())
        .await
        .expect("build-image.sh hung")
        .expect("run deploy/build-image.sh");
    assert!(
        out.status.success(),
        "deploy/build-image.sh: {}\ndockerd's log (end):\n{}",
        describe(&out),
        common::docker::tail(&docker.log(), 30)
    );
}

async fn inspect(docker: &Dockerd, what: &str, name: &str) -> Value {
    let out = docker
        .docker_ok(&[what, "inspect", "--format", "{{json .}}", name])
        .await;
    serde_json::from_str(out.trim()).expect("docker inspect is JSON")
}

/// deploy/berth.toml with its upstreams replaced by one: `docker.io`, the
/// default, at `upstream_url`; in a temporary directory, to be mounted over
/// /etc/berth/berth.toml as the README says.
fn config_file(dir: &Path, upstream_url: &str) -> std::path::PathBuf {
    let text = std::fs::read_to_string(deploy().join("berth.toml")).expect("deploy/berth.toml");
    let mut config: toml::Table = text.parse().expect("deploy/berth.toml is TOML");
    let upstream = toml::Table::from_iter([
        ("name".to_owned(), toml::Value::from("docker.io")),
        ("url".to_owned(), toml::Value::from(upstream_url)),
        ("default".to_owned(), toml::Value::from(true)),
    ]);
    config.insert(
        "upstream".to_owned(),
        toml::Value::Array(vec![upstream.into()]),
    );
    let path = dir.join("berth.toml");
    std::fs::write(&path, toml::to_string(&config).expect("serialize")).expect("write berth.toml");
    path
}

/// The README's `docker run`, with the port published on loopback only,
/// the configuration mounted, and [`UPSTREAM_HOST`] naming `upstream`.
async fn run_berth(docker: &Dockerd, name: &str, port: u16, config: &Path, upstream: IpAddr) {
    docker
        .docker_ok(&[
            "run",
            "--detach",
            "--name",
            name,
            "--add-host",
            &format!("{UPSTREAM_HOST}:{upstream}"),
            "--publish",
            &format!("127.0.0.1:{port}:5000"),
            "--volume",
            &format!("{VOLUME}:/var/lib/berth"),
            "--volume",
            &format!("{}:/etc/berth/berth.toml:ro", config.display()),
            "--read-only",
            "--stop-timeout",
            "45",
            TAG,
        ])
        .await;
}

/// Waits until berth answers `/v2/` through the published port.
async fn wait_serving(docker: &Dockerd, name: &str, port: u16) {
    let url = format!("http://127.0.0.1:{port}/v2/");
    let http = common::http::client();
    let deadline = Instant::now() + SERVING_DEADLINE;
    loop {
        if let Ok(response) = http.get(&url).send().await {
            if response.status() == 200 {
                return;
            }
        }
        let logs = docker.docker(&["logs", name]).await;
        assert!(
            Instant::now() < deadline,
            "{name} does not serve {url}; its logs:\n{}",
            describe(&logs)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until Docker's HEALTHCHECK calls the container healthy.
async fn wait_healthy(docker: &Dockerd, name: &str) {
    let deadline = Instant::now() + HEALTHY_DEADLINE;
    loop {
        let state = inspect(docker, "container", name).await;
        let health = &state["State"]["Health"];
        if health["Status"] == "healthy" {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} is not healthy: {health:#}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Docker pulls `fixture` from the containerized berth (path form, as any
/// registry) and runs it.
async fn pull_and_run(docker: &Dockerd, port: u16, fixture: &Fixture, says: &str) {
    let reference = format!("127.0.0.1:{port}/{}", fixture.reference());
    docker.docker_ok(&["pull", &reference]).await;
    let image = inspect(docker, "image", &reference).await;
    let wanted = format!("127.0.0.1:{port}/{}@{}", fixture.repo, fixture.root.digest);
    assert!(
        image["RepoDigests"]
            .as_array()
            .is_some_and(|list| list.iter().any(|d| d == wanted.as_str())),
        "{reference}: RepoDigests {} do not hold {wanted}",
        image["RepoDigests"]
    );
    let out = docker
        .docker_ok(&["run", "--rm", "--network", "none", &reference])
        .await;
    assert_eq!(out.trim(), says, "docker run {reference}");
    docker.docker_ok(&["image", "rm", &reference]).await;
}

/// `docker stop` (SIGTERM): berth drains, flushes its store and exits 0.
async fn stop_cleanly(docker: &Dockerd, name: &str) {
    docker.docker_ok(&["stop", name]).await;
    exited_cleanly(docker, name).await;
}

/// The container exited 0 after flushing its store; removes it.
async fn exited_cleanly(docker: &Dockerd, name: &str) {
    let state = inspect(docker, "container", name).await;
    let logs = docker.docker(&["logs", name]).await;
    assert_eq!(
        state["State"]["ExitCode"],
        0,
        "{name} did not exit 0 on docker stop; its logs:\n{}",
        describe(&logs)
    );
    assert!(
        String::from_utf8_lossy(&logs.stderr).contains("store flushed"),
        "{name} did not flush its store: {}",
        describe(&logs)
    );
    docker.docker_ok(&["rm", name]).await;
}

/// `docker stop` while a client is in the middle of a large blob, held
/// there by not reading (TCP backpressure): berth gets SIGTERM, still
/// sends the whole blob, then exits 0.
async fn stop_during_a_transfer(docker: &Dockerd, name: &str, port: u16, big: &Fixture) {
    let blob = big.largest_blob();
    let url = format!(
        "http://127.0.0.1:{port}/v2/{}/blobs/{}",
        big.repo, blob.digest
    );
    let mut response = common::http::client()
        .get(&url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    assert_eq!(response.status(), 200, "GET {url}");
    let mut body = Vec::with_capacity(blob.bytes.len());
    let first = response.chunk().await.expect("the first bytes");
    body.extend_from_slice(&first.expect("a first chunk"));

    let mut stop = docker.command("docker");
    let stop = stop.args(["stop", name]).spawn().expect("run docker stop");
    let deadline = Instant::now() + SERVING_DEADLINE;
    loop {
        let logs = docker.docker(&["logs", name]).await;
        if String::from_utf8_lossy(&logs.stderr).contains("SIGTERM received") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "docker stop never reached berth: {}",
            describe(&logs)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        body.len() < blob.bytes.len(),
        "the transfer ended before berth was stopped: choose a larger blob"
    );
    while let Some(chunk) = response
        .chunk()
        .await
        .unwrap_or_else(|e| panic!("{url} was cut after {} bytes: {e}", body.len()))
    {
        body.extend_from_slice(&chunk);
    }
    assert_eq!(
        common::sha256_digest(&body),
        blob.digest,
        "the blob sent while berth stopped"
    );
    let stopped = tokio::time::timeout(SERVING_DEADLINE, stop.wait_with_output())
        .await
        .expect("docker stop hung")
        .expect("docker stop's status");
    assert!(
        stopped.status.success(),
        "docker stop: {}",
        describe(&stopped)
    );
    // berth logged the transfer, complete, after the signal: it drained.
    let logs = docker.docker(&["logs", name]).await;
    let logs = String::from_utf8_lossy(&logs.stderr).into_owned();
    let lines: Vec<&str> = logs.lines().collect();
    let signal = lines.iter().position(|l| l.contains("SIGTERM received"));
    let sent = lines.iter().position(|l| {
        l.contains(&format!("/blobs/{}", blob.digest)) && l.contains("body=\"complete\"")
    });
    assert!(
        matches!((signal, sent), (Some(signal), Some(sent)) if sent > signal),
        "berth did not finish the transfer after SIGTERM; its logs:\n{logs}"
    );
    exited_cleanly(docker, name).await;
}

/// The uid and gid of the container's main process (from /proc on the
/// host).
fn process_ids(pid: u64) -> (String, String) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/PID/status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_default()
            .to_owned()
    };
    (field("Uid:"), field("Gid:"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_image_builds_and_serves_pulls_as_a_non_root_read_only_container() {
    let bridge = Bridge::create();
    let docker = Dockerd::start_on_bridge(&json!({}), &bridge).await;
    build_image(&docker).await;

    // What the Dockerfile declares.
    let image = inspect(&docker, "image", TAG).await;
    let config = &image["Config"];
    assert_eq!(config["User"], format!("{UID}:{UID}"), "USER");
    assert!(config["ExposedPorts"]["5000/tcp"].is_object(), "{config:#}");
    assert!(
        config["Volumes"]["/var/lib/berth"].is_object(),
        "{config:#}"
    );
    assert!(
        config["Healthcheck"]["Test"]
            .as_array()
            .is_some_and(|t| t.iter().any(|a| a == "health")),
        "HEALTHCHECK: {config:#}"
    );
    // The image holds deploy/berth.toml as /etc/berth/berth.toml: berth
    // reads the same configuration in the image as on the host.
    let in_image = docker
        .docker_ok(&["run", "--rm", TAG, "check-config"])
        .await;
    let on_host = common::berth::command()
        .arg("--config")
        .arg(deploy().join("berth.toml"))
        .arg("check-config")
        .output()
        .expect("run berth check-config");
    assert_eq!(in_image, String::from_utf8_lossy(&on_host.stdout));

    // An upstream the container reaches: the host's address on the bridge,
    // by name (the image resolves it from /etc/hosts).
    let app = runnable::runnable(
        Kind::Docker,
        "library/app",
        "1.0",
        "app from berth in Docker",
    );
    let tool = runnable::runnable(Kind::Oci, "team/tool", "2.0", "tool from berth in Docker");
    // Far more than the socket buffers between berth and the test hold.
    let big = Fixture::big_image("library/big", "1.0", 64 << 20);
    let mut registry = Registry::start_on(bridge.gateway());
    Pusher::to(&registry)
        .push_all(&[app.clone(), tool.clone(), big.clone()])
        .await;
    let dir = tempfile::tempdir().expect("temp dir for the config");
    let upstream_url = format!("http://{UPSTREAM_HOST}:{}", registry.port());
    let config = config_file(dir.path(), &upstream_url);

    let port = common::free_port();
    run_berth(&docker, "berth", port, &config, bridge.gateway()).await;
    wait_serving(&docker, "berth", port).await;
    let state = inspect(&docker, "container", "berth").await;
    assert_eq!(state["HostConfig"]["ReadonlyRootfs"], true);
    let pid = state["State"]["Pid"].as_u64().expect("the container's PID");
    assert_eq!(process_ids(pid), (UID.to_owned(), UID.to_owned()));

    pull_and_run(&docker, port, &app, "app from berth in Docker").await;
    pull_and_run(&docker, port, &tool, "tool from berth in Docker").await;
    wait_healthy(&docker, "berth").await;
    stop_during_a_transfer(&docker, "berth", port, &big).await;

    // The cache is in the volume: a new container on it serves both
    // images with the upstream gone, and `berth du` lists them.
    registry.stop();
    let du = docker
        .docker_ok(&[
            "run",
            "--rm",
            "--volume",
            &format!("{VOLUME}:/var/lib/berth"),
            TAG,
            "du",
        ])
        .await;
    for fixture in [&app, &tool] {
        assert!(du.contains(&fixture.repo), "berth du:\n{du}");
    }
    let port = common::free_port();
    run_berth(&docker, "berth-again", port, &config, bridge.gateway()).await;
    wait_serving(&docker, "berth-again", port).await;
    pull_and_run(&docker, port, &app, "app from berth in Docker").await;
    pull_and_run(&docker, port, &tool, "tool from berth in Docker").await;
    stop_cleanly(&docker, "berth-again").await;
}
