//! A real registry client: `skopeo copy --all` from a registry (berth, or the
//! upstream directly) into a `dir:` layout, and checks of that layout against
//! a fixture's exact bytes.
//!
//! skopeo runs with its own empty configuration (registries.conf,
//! registries.d, policy, HOME), so nothing on the machine can redirect,
//! authenticate or proxy its traffic.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::process::Stdio;

use tokio::process::Command;

use super::content::Fixture;
use super::{digest_hex, sha256_digest};

const BINARY: &str = "skopeo";

/// `skopeo copy --all docker://<source> dir:<dest>`, where `source` is
/// `127.0.0.1:PORT/repo:tag` (or `@digest`). Plain HTTP, no credentials, no
/// retries. Returns skopeo's output, or an error that includes its stderr.
pub async fn copy_all(source: &str, dest: &Path) -> Result<String, String> {
    copy_all_with(source, dest, &["--src-tls-verify=false", "--src-no-creds"]).await
}

/// [`copy_all`] with the source's TLS and credential options given by the
/// caller (`--src-cert-dir`, `--src-creds`, ...).
pub async fn copy_all_with(
    source: &str,
    dest: &Path,
    src_options: &[&str],
) -> Result<String, String> {
    let mut args = vec!["copy", "--all", "--retry-times", "0"];
    args.extend_from_slice(src_options);
    let source = format!("docker://{source}");
    let dest = format!("dir:{}", dest.display());
    args.extend([source.as_str(), dest.as_str()]);
    run(&args).await
}

/// skopeo with `args`, in a configuration of its own; its stdout, or an
/// error with the command and its output.
pub async fn run(args: &[&str]) -> Result<String, String> {
    let config = tempfile::Builder::new()
        .prefix("berth-skopeo-")
        .tempdir()
        .map_err(|e| format!("create skopeo's config dir: {e}"))?;
    let root = config.path();
    let registries_conf = root.join("registries.conf");
    let registries_d = root.join("registries.d");
    let policy = root.join("policy.json");
    let tmp = root.join("tmp");
    fs::write(&registries_conf, "").map_err(|e| format!("write registries.conf: {e}"))?;
    fs::create_dir(&registries_d).map_err(|e| format!("create registries.d: {e}"))?;
    fs::create_dir(&tmp).map_err(|e| format!("create skopeo tmp dir: {e}"))?;
    fs::write(
        &policy,
        r#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
    )
    .map_err(|e| format!("write policy.json: {e}"))?;

    let output = Command::new(BINARY)
        .arg("--registries-conf")
        .arg(&registries_conf)
        .arg("--registries.d")
        .arg(&registries_d)
        .arg("--policy")
        .arg(&policy)
        .arg("--tmpdir")
        .arg(&tmp)
        // A hang guard, far above any copy here, so a stuck berth fails the
        // test instead of hanging it.
        .args(["--command-timeout", "300s"])
        .args(args)
        .env("HOME", root)
        .env("XDG_CONFIG_HOME", root)
        .env("XDG_RUNTIME_DIR", root)
        .env("CONTAINERS_REGISTRIES_CONF", &registries_conf)
        .env("REGISTRY_AUTH_FILE", root.join("auth.json"))
        .env_remove("HTTP_PROXY")
        .env_remove("HTTPS_PROXY")
        .env_remove("http_proxy")
        .env_remove("https_proxy")
        .env_remove("ALL_PROXY")
        .env_remove("all_proxy")
        .env_remove("DOCKER_CONFIG")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| {
            format!(
                "cannot run `{BINARY}` ({e}): install Debian's skopeo package \
                 (apt-get install skopeo); the tests need a real client"
            )
        })?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    if output.status.success() {
        Ok(stdout)
    } else {
        Err(format!(
            "skopeo {} failed ({}):\n{stderr}{stdout}",
            args.join(" "),
            output.status
        ))
    }
}

/// Check that a `dir:` layout written by [`copy_all`] holds exactly the
/// fixture: the root manifest byte for byte as `manifest.json`, every child
/// manifest as `<hex>.manifest.json`, every blob as `<hex>` with the right
/// digest, and nothing else but `version`.
pub fn verify_dir(dest: &Path, fixture: &Fixture) -> Result<(), String> {
    let what = fixture.reference();
    let mut expected = BTreeSet::from(["version".to_owned(), "manifest.json".to_owned()]);
    check_file(dest, "manifest.json", &fixture.root.digest, &what)?;
    for child in &fixture.children {
        let name = format!("{}.manifest.json", digest_hex(&child.digest));
        check_file(dest, &name, &child.digest, &what)?;
        expected.insert(name);
    }
    for blob in &fixture.blobs {
        let name = digest_hex(&blob.digest).to_owned();
        check_file(dest, &name, &blob.digest, &what)?;
        expected.insert(name);
    }
    let present: BTreeSet<String> = fs::read_dir(dest)
        .map_err(|e| format!("{what}: read {}: {e}", dest.display()))?
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    if present != expected {
        return Err(format!(
            "{what}: {} holds {present:?}, expected {expected:?}",
            dest.display()
        ));
    }
    Ok(())
}

fn check_file(dir: &Path, name: &str, digest: &str, what: &str) -> Result<(), String> {
    let path = dir.join(name);
    let bytes = fs::read(&path).map_err(|e| format!("{what}: read {}: {e}", path.display()))?;
    let actual = sha256_digest(&bytes);
    if actual != digest {
        return Err(format!(
            "{what}: {name} has digest {actual} ({} bytes), expected {digest}",
            bytes.len()
        ));
    }
    Ok(())
}

/// Copy `fixture` from the registry at `host` (`127.0.0.1:PORT`) into a
/// fresh directory under `parent` and verify it; panics with skopeo's
/// output or the mismatch.
pub async fn copy_and_verify(host: &str, fixture: &Fixture, parent: &Path, label: &str) {
    let dest = parent.join(format!(
        "{label}-{}",
        fixture.reference().replace(['/', ':'], "_")
    ));
    let source = format!("{host}/{}", fixture.reference());
    if let Err(e) = copy_all(&source, &dest).await {
        panic!("[{label}] {e}");
    }
    if let Err(e) = verify_dir(&dest, fixture) {
        panic!("[{label}] {e}");
    }
}
