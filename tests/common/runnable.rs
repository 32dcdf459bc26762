//! Images a container runtime can run: one layer holding a statically
//! linked program (built here with `gcc -static`) that prints a message,
//! and a config whose entrypoint runs it. `docker run` of an image pulled
//! through berth printing that message shows that the layers berth served
//! unpack into a working root filesystem.
//!
//! Needs Debian's gcc and libc6-dev (for the static libc) and gzip.

use std::fs;
use std::io::Write as _;
use std::process::{Command, Stdio};

use bytes::Bytes;
use serde_json::{json, Value};

use super::content::{
    Blob, Fixture, Manifest, DOCKER_CONFIG, DOCKER_LAYER, DOCKER_MANIFEST, OCI_CONFIG, OCI_INDEX,
    OCI_LAYER, OCI_MANIFEST,
};
use super::sha256_digest;

/// Where the program is in the image, and its entrypoint.
pub const PROGRAM: &str = "/hello";

/// This machine's architecture as OCI names it (`amd64`, `arm64`).
pub fn native_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// An architecture that is not this machine's, for the other half of a
/// multi-platform image.
pub fn foreign_arch() -> &'static str {
    if native_arch() == "arm64" {
        "amd64"
    } else {
        "arm64"
    }
}

/// A statically linked program that prints `message` and a newline.
pub fn static_program(message: &str) -> Vec<u8> {
    assert!(
        message
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || " .,:/-_".contains(c)),
        "keep the message plain: {message:?}"
    );
    let dir = tempfile::tempdir().expect("temp dir for gcc");
    let source = dir.path().join("hello.c");
    fs::write(
        &source,
        format!("#include <stdio.h>\nint main(void) {{ puts(\"{message}\"); return 0; }}\n"),
    )
    .expect("write hello.c");
    let binary = dir.path().join("hello");
    let out = Command::new("gcc")
        .args(["-static", "-O2", "-s", "-o"])
        .arg(&binary)
        .arg(&source)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run gcc ({e}): install Debian's gcc and libc6-dev (apt-get install gcc libc6-dev)")
        });
    assert!(
        out.status.success(),
        "gcc -static failed (libc6-dev provides the static libc):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    fs::read(&binary).expect("read the static program")
}

/// An uncompressed layer: a tar holding `files` (`(path, mode, bytes)`),
/// owned by root.
pub fn layer_tar(files: &[(&str, u32, &[u8])]) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    for (path, mode, bytes) in files {
        let mut header = tar::Header::new_ustar();
        header
            .set_path(path.trim_start_matches('/'))
            .expect("a tar path");
        header.set_size(bytes.len() as u64);
        header.set_mode(*mode);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_cksum();
        tar.append(&header, *bytes).expect("append to the tar");
    }
    tar.into_inner().expect("finish the tar")
}

/// `bytes` gzipped (`gzip -n`: no name or time, the same bytes each run).
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut child = Command::new("gzip")
        .args(["-n", "-c"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run gzip ({e})"));
    let mut stdin = child.stdin.take().expect("gzip's stdin");
    let input = bytes.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().expect("gzip's output");
    writer
        .join()
        .expect("the gzip writer thread")
        .expect("write to gzip");
    assert!(out.status.success(), "gzip failed");
    out.stdout
}

/// The image kinds Docker pulls.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    /// Docker image manifest, schema 2; a gzipped layer.
    Docker,
    /// OCI image manifest; an uncompressed tar layer.
    Oci,
}

/// One image for `arch` whose layer holds `program` at [`PROGRAM`], the
/// entrypoint.
fn image(kind: Kind, arch: &str, program: &[u8]) -> (Manifest, Vec<Blob>) {
    let tar = layer_tar(&[(PROGRAM, 0o755, program)]);
    let diff_id = sha256_digest(&tar);
    let (manifest_type, config_type, layer) = match kind {
        Kind::Docker => (
            DOCKER_MANIFEST,
            DOCKER_CONFIG,
            Blob::new(DOCKER_LAYER, gzip(&tar)),
        ),
        Kind::Oci => (OCI_MANIFEST, OCI_CONFIG, Blob::new(OCI_LAYER, tar)),
    };
    let config = json!({
        "architecture": arch,
        "os": "linux",
        "config": { "Entrypoint": [PROGRAM] },
        "rootfs": { "type": "layers", "diff_ids": [diff_id] },
        "history": [{ "created_by": "berth's tests: a static program" }],
    });
    let config = Blob::new(
        config_type,
        serde_json::to_vec(&config).expect("config JSON"),
    );
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": manifest_type,
        "config": config.descriptor(),
        "layers": [layer.descriptor()],
    });
    (manifest_of(manifest_type, &manifest), vec![config, layer])
}

fn manifest_of(media_type: &'static str, value: &Value) -> Manifest {
    let bytes = Bytes::from(serde_json::to_vec_pretty(value).expect("manifest JSON"));
    Manifest {
        media_type,
        digest: sha256_digest(&bytes),
        bytes,
    }
}

/// `repo:tag`, an image of `kind` for this machine that prints `message`.
pub fn runnable(kind: Kind, repo: &str, tag: &str, message: &str) -> Fixture {
    let (root, blobs) = image(kind, native_arch(), &static_program(message));
    Fixture {
        repo: repo.to_owned(),
        tag: tag.to_owned(),
        root,
        children: Vec::new(),
        blobs,
    }
}

/// `repo:tag`, an OCI index of two images: this machine's, which prints
/// `message`, and one for [`foreign_arch`] (whose program, built for this
/// machine all the same, prints `message` and the architecture's name; it
/// is pulled, not run).
pub fn multi_platform(repo: &str, tag: &str, message: &str) -> Fixture {
    let mut children = Vec::new();
    let mut blobs = Vec::new();
    let mut descriptors = Vec::new();
    for arch in [native_arch(), foreign_arch()] {
        let program = if arch == native_arch() {
            static_program(message)
        } else {
            static_program(&format!("{message} {arch}"))
        };
        let (manifest, image_blobs) = image(Kind::Oci, arch, &program);
        descriptors.push(json!({
            "mediaType": manifest.media_type,
            "digest": manifest.digest,
            "size": manifest.bytes.len(),
            "platform": { "architecture": arch, "os": "linux" },
        }));
        children.push(manifest);
        blobs.extend(image_blobs);
    }
    let index = json!({ "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": descriptors });
    Fixture {
        repo: repo.to_owned(),
        tag: tag.to_owned(),
        root: manifest_of(OCI_INDEX, &index),
        children,
        blobs,
    }
}

/// The digest of the image manifest for `arch` in a multi-platform fixture.
pub fn child_for(fixture: &Fixture, arch: &str) -> String {
    let index: Value = serde_json::from_slice(&fixture.root.bytes).expect("an index");
    index["manifests"]
        .as_array()
        .and_then(|list| {
            list.iter()
                .find(|m| m["platform"]["architecture"] == arch)
                .and_then(|m| m["digest"].as_str())
        })
        .unwrap_or_else(|| panic!("no {arch} image in {}", fixture.reference()))
        .to_owned()
}
