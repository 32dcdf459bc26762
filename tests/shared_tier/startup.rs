//! `[storage.s3]` at start-up, as an operator meets it: a store that
//! refuses the key or has no such bucket stops berth with exit 64 naming
//! the section; bad fields are named one by one; `check-config` prints the
//! section without a secret; a store that cannot be reached yet leaves
//! berth serving, degraded, until it comes up.

use std::time::Duration;

use crate::common::berth::Process;
use crate::common::content::{Fixture, Pusher};
use crate::common::garage::{Garage, S3Access};
use crate::common::registry::Registry;
use crate::common::skopeo::copy_and_verify;
use crate::support::{
    metric, s3_table, s3_toml_env, shared_readiness, wait_for_image, wait_for_readiness, Shared,
    GUARD,
};

/// Where the upstream "is" when none is needed: the discard port, where
/// nothing listens.
const NO_UPSTREAM: &str = "http://127.0.0.1:9";
const KEY_VAR: &str = "BERTH_TEST_S3_ACCESS_KEY_ID";
const SECRET_VAR: &str = "BERTH_TEST_S3_SECRET_ACCESS_KEY";
/// Long enough for berth to try the store and give up: a hang guard for a
/// berth that serves instead of refusing.
const REFUSAL_GUARD: Duration = Duration::from_secs(60);

/// berth, as a process, configured for `access` with its credentials in
/// the environment, serving (or refusing to): its exit status and stderr.
fn serve(access: &S3Access) -> (Option<i32>, String) {
    let process = Process::configure(
        &s3_toml_env(access, (KEY_VAR, SECRET_VAR), ""),
        NO_UPSTREAM,
        &[
            (KEY_VAR, &access.access_key_id),
            (SECRET_VAR, &access.secret_access_key),
        ],
    );
    let out = process.run(&[], REFUSAL_GUARD);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_secret_or_a_missing_bucket_stops_berth_with_exit_64_naming_storage_s3() {
    let garage = Garage::start();
    let mut wrong_secret = garage.access().clone();
    wrong_secret.secret_access_key = "0".repeat(64);
    let mut no_bucket = garage.access().clone();
    no_bucket.bucket = "no-such-bucket".to_owned();
    for (what, access) in [
        ("a wrong secret key", wrong_secret),
        ("a missing bucket", no_bucket),
    ] {
        let (code, stderr) = tokio::task::spawn_blocking({
            let access = access.clone();
            move || serve(&access)
        })
        .await
        .expect("run berth");
        assert_eq!(code, Some(64), "{what}: exit status; stderr:\n{stderr}");
        assert!(
            stderr.contains("storage.s3"),
            "{what}: storage.s3 not named in:\n{stderr}"
        );
        assert!(
            !stderr.contains(&access.secret_access_key),
            "{what}: the secret is in berth's output:\n{stderr}"
        );
    }
    // The right key and bucket: berth serves, the shared tier ready.
    let access = garage.access();
    let berth = Process::start(
        &s3_toml_env(access, (KEY_VAR, SECRET_VAR), ""),
        NO_UPSTREAM,
        &[
            (KEY_VAR, &access.access_key_id),
            (SECRET_VAR, &access.secret_access_key),
        ],
    )
    .await;
    let said = wait_for_readiness(&berth.url(), |s| s == "ok").await;
    assert_eq!(said, "ok", "berth's log:\n{}", berth.log());
    // In use from the start, before any client asked for anything.
    assert_eq!(metric(&berth.url(), "berth_objectstore_up", &[]).await, 1.0);
}

#[test]
fn bad_storage_s3_fields_are_each_named() {
    let access = S3Access {
        endpoint: "http://127.0.0.1:9".to_owned(),
        region: "garage".to_owned(),
        bucket: "berth".to_owned(),
        access_key_id: String::new(),
        secret_access_key: String::new(),
    };
    let table = s3_table(&access)
        .replace("bucket = \"berth\"\n", "")
        .replace("path_style = true", "path_style = \"yes\"")
        .replace("request_timeout = \"30s\"", "request_timeout = \"soon\"");
    let text = format!(
        "{table}access_key_id_env = \"BERTH_TEST_SURELY_UNSET_VARIABLE\"\n\
         secret_access_key_file = \"/nonexistent/secret\"\n\
         part_size = \"1MiB\"\nuploads = 0\n"
    );
    let process = Process::configure(&text, NO_UPSTREAM, &[]);
    let out = process.run(&["check-config"], REFUSAL_GUARD);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    for field in [
        "storage.s3.bucket",
        "storage.s3.path_style",
        "storage.s3.access_key_id_env",
        "storage.s3.secret_access_key_file",
        "storage.s3.part_size",
        "storage.s3.uploads",
        "storage.s3.request_timeout",
    ] {
        assert!(
            stderr.contains(&format!("{field}:")),
            "{field} not named in:\n{stderr}"
        );
    }
}

#[test]
fn check_config_prints_storage_s3_without_a_secret() {
    let access = S3Access {
        endpoint: "http://127.0.0.1:9".to_owned(),
        region: "garage".to_owned(),
        bucket: "berth".to_owned(),
        access_key_id: "GK31c2f218a2e44f485b94239e".to_owned(),
        secret_access_key: "b892c0665f0ada8a4755dae98baa3b133590e11dae3bcc1f".to_owned(),
    };
    // From the environment...
    let from_env = Process::configure(
        &s3_toml_env(&access, (KEY_VAR, SECRET_VAR), "part_size = \"8MiB\"\n"),
        NO_UPSTREAM,
        &[
            (KEY_VAR, &access.access_key_id),
            (SECRET_VAR, &access.secret_access_key),
        ],
    );
    let printed = check_config(&from_env);
    assert!(
        printed.contains("endpoint = \"http://127.0.0.1:9"),
        "check-config does not print the endpoint:\n{printed}"
    );
    for line in [
        "[storage.s3]".to_owned(),
        "bucket = \"berth\"".to_owned(),
        "path_style = true".to_owned(),
        format!("access_key_id_env = \"{KEY_VAR}\""),
        format!("secret_access_key_env = \"{SECRET_VAR}\""),
        "part_size = \"8MiB\"".to_owned(),
    ] {
        assert!(
            printed.lines().any(|l| l.trim() == line),
            "check-config does not print {line}:\n{printed}"
        );
    }
    // ...and from files: the paths are printed, never what they hold.
    let shared = Shared::new(&access);
    let from_files = Process::configure(&shared.toml(""), NO_UPSTREAM, &[]);
    let printed_files = check_config(&from_files);
    assert!(
        printed_files.contains("secret_access_key_file = "),
        "{printed_files}"
    );
    for printed in [printed, printed_files] {
        for secret in [&access.access_key_id, &access.secret_access_key] {
            assert!(
                !printed.contains(secret.as_str()),
                "check-config prints a credential:\n{printed}"
            );
        }
    }
}

fn check_config(process: &Process) -> String {
    let out = process.run(&["check-config"], REFUSAL_GUARD);
    assert!(
        out.status.success(),
        "check-config: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A free loopback port whose number holds "403" or "404": what a store
/// answers must tell a refusal, not the digits of an address in an error.
fn free_port_like_a_status() -> u16 {
    (10_000..=65_535u16)
        .filter(|p| {
            let text = p.to_string();
            text.contains("403") || text.contains("404")
        })
        .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .expect("a free port with 403 or 404 in its number")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_nothing_listens_on_is_a_degraded_start_not_a_refusal() {
    let access = S3Access {
        endpoint: format!("http://127.0.0.1:{}", free_port_like_a_status()),
        region: "garage".to_owned(),
        bucket: "berth".to_owned(),
        access_key_id: "GK0000000000000000000000".to_owned(),
        secret_access_key: "0".repeat(64),
    };
    // Process::start panics if berth exits before it serves.
    let mut berth = Process::start(
        &s3_toml_env(&access, (KEY_VAR, SECRET_VAR), ""),
        NO_UPSTREAM,
        &[
            (KEY_VAR, &access.access_key_id),
            (SECRET_VAR, &access.secret_access_key),
        ],
    )
    .await;
    let until = tokio::time::Instant::now() + GUARD;
    loop {
        if let Some(status) = berth.exit_status() {
            panic!(
                "berth gave up on {} ({status}) instead of starting degraded:\n{}",
                access.endpoint,
                berth.log()
            );
        }
        if shared_readiness(&berth.url()).await != "ok" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "/readyz says the shared tier is ok with nothing at {}",
            access.endpoint
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The probe's failure was not fatal: still serving, still degraded.
    assert!(berth.exit_status().is_none(), "{}", berth.log());
    assert_ne!(shared_readiness(&berth.url()).await, "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_unreachable_at_start_leaves_berth_serving_degraded_until_it_comes_up() {
    let mut garage = Garage::start();
    garage.stop();
    let registry = Registry::start();
    let early = Fixture::oci_image("test/early", "v1");
    let image = Fixture::docker_image("test/late", "v1");
    Pusher::to(&registry)
        .push_all(&[early.clone(), image.clone()])
        .await;
    let out = tempfile::tempdir().expect("temp dir");

    let berth = Shared::new(garage.access())
        .replica(&registry.url(), "")
        .await;
    let said = wait_for_readiness(&berth.url(), |s| s != "ok").await;
    assert_ne!(said, "ok", "/readyz with the store unreachable since start");
    assert_eq!(metric(&berth.url(), "berth_objectstore_up", &[]).await, 0.0);
    // Clients are served meanwhile.
    copy_and_verify(&berth.host(), &early, out.path(), "degraded").await;

    garage.restart();
    let said = wait_for_readiness(&berth.url(), |s| s == "ok").await;
    assert_eq!(said, "ok", "/readyz once the store is up");
    assert_eq!(metric(&berth.url(), "berth_objectstore_up", &[]).await, 1.0);
    copy_and_verify(&berth.host(), &image, out.path(), "up").await;
    wait_for_image(garage.access(), &image).await;
}
