//! A site (a berth data directory with its configuration file, served
//! in-process when needed and handed to the `berth` binary for the
//! operator's commands), an upstream trap, and bundle surgery.

use std::io::{Read, Seek, SeekFrom, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::Value;
use tempfile::TempDir;

use crate::common::berth::{command, Berth};
use crate::common::content::{Fixture, Pusher};
use crate::common::digest_hex;
use crate::common::registry::Registry;
use crate::referrers::{push_artifacts, referrers_index, referrers_tag, Artifact};

/// The name the tests' berth gives its one upstream.
pub const UPSTREAM: &str = "registry.test";

/// One berth's data directory and configuration. The berth is stopped
/// unless a test starts it: the commands open the data directory
/// themselves.
pub struct Site {
    pub berth: Berth,
    config: PathBuf,
    _config_dir: TempDir,
}

impl Site {
    /// A site whose one upstream (the default) is `upstream_url`, with
    /// `extra` TOML over the generated config.
    pub async fn new(extra: &str, upstream_url: &str) -> Site {
        let mut berth = Berth::start(extra, upstream_url).await;
        berth.stop().await;
        let dir = tempfile::tempdir().expect("tempdir for the config");
        let config = dir.path().join("berth.toml");
        std::fs::write(&config, berth.config()).expect("write the site's config");
        Site {
            berth,
            config,
            _config_dir: dir,
        }
    }

    /// `berth --config <site> <args>`, as an operator runs it.
    pub fn run(&self, args: &[&str]) -> Output {
        command()
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("run berth {args:?}: {e}"))
    }

    /// [`Site::run`] that must succeed; its stdout and stderr together.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        let text = both(&out);
        assert!(out.status.success(), "berth {args:?} failed: {text}");
        text
    }

    /// [`Site::run`] that must fail; its stdout and stderr together.
    pub fn refused(&self, args: &[&str]) -> String {
        let out = self.run(args);
        let text = both(&out);
        assert!(!out.status.success(), "berth {args:?} succeeded: {text}");
        text
    }

    /// What `berth du --json` reports: the whole of what the store holds.
    pub fn holdings(&self) -> Value {
        let out = self.ok(&["du", "--json"]);
        let start = out.find('{').expect("du --json prints an object");
        let mut report: Value = serde_json::Deserializer::from_str(&out[start..])
            .into_iter()
            .next()
            .expect("a JSON document")
            .expect("du --json parses");
        // Request counts and the hit ratio are the server's, and the bytes
        // on disk include the metadata database's log, which grows with
        // every write; everything else is what the store holds.
        if let Some(map) = report.as_object_mut() {
            map.retain(|k, _| !matches!(k.as_str(), "activity" | "hit_ratio" | "bytes"));
        }
        report
    }
}

fn both(out: &Output) -> String {
    format!(
        "status {}\n--- stdout\n{}--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A bound port that stands where an upstream would be and must never see
/// a connection: the disconnected site has no upstream, and this proves
/// berth did not try one.
pub struct Trap(TcpListener);

impl Trap {
    pub fn bind() -> Trap {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the trap");
        listener.set_nonblocking(true).expect("nonblocking trap");
        Trap(listener)
    }

    pub fn url(&self) -> String {
        let addr = self.0.local_addr().expect("trap address");
        format!("http://{addr}")
    }

    /// Panics if anything connected, even a connection since closed (it
    /// still waits in the accept queue).
    pub fn assert_untouched(&self) {
        match self.0.accept() {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Ok((_, peer)) => panic!("berth connected to the upstream's address (from {peer})"),
            Err(e) => panic!("accept on the trap: {e}"),
        }
    }
}

/// The connected side's upstream: `app` (an index of two platforms) with
/// a signature listed under its referrers tag, as cosign pushes it to a
/// registry without the referrers API, and `other`, a plain image.
pub struct Upstream {
    pub registry: Registry,
    pub app: Fixture,
    pub other: Fixture,
    pub signature: Artifact,
}

impl Upstream {
    pub async fn start() -> Upstream {
        let app = Fixture::multi_platform("test/app", "v1");
        let other = Fixture::oci_image("test/other", "v2");
        let signature = Artifact::signature(&app.root);
        let registry = Registry::start();
        let pusher = Pusher::to(&registry);
        pusher.push_all(std::slice::from_ref(&app)).await;
        pusher.push_all(std::slice::from_ref(&other)).await;
        push_artifacts(&pusher, &app.repo, &[&signature]).await;
        let list = referrers_index(&[signature.descriptor()]);
        let tag = referrers_tag(&app.root.digest);
        if let Err(e) = pusher.push_manifest(&app.repo, &tag, &list).await {
            panic!("push the referrers tag {tag}: {e}");
        }
        Upstream {
            registry,
            app,
            other,
            signature,
        }
    }
}

/// `fixture`'s tag as `berth warm` and `berth export` name it, in the path
/// form (`registry.test/test/app:v1`), which is also the name skopeo finds
/// it by in a bundle.
pub fn path_form(fixture: &Fixture) -> String {
    format!("{UPSTREAM}/{}", fixture.reference())
}

/// Each entry of the tar at `path`: its name, where its data starts and
/// its size.
pub fn tar_entries(path: &Path) -> Vec<(String, u64, u64)> {
    let file = std::fs::File::open(path).expect("open the bundle");
    let mut archive = tar::Archive::new(file);
    archive
        .entries()
        .expect("read the bundle as a tar")
        .map(|entry| {
            let entry = entry.expect("a tar entry");
            let name = entry.path().expect("an entry's path").display().to_string();
            (name, entry.raw_file_position(), entry.size())
        })
        .collect()
}

/// The tar entry of `digest`'s blob.
pub fn blob_entry(bundle: &Path, digest: &str) -> (String, u64, u64) {
    let name = format!("blobs/sha256/{}", digest_hex(digest));
    tar_entries(bundle)
        .into_iter()
        .find(|(n, _, _)| n.trim_start_matches("./") == name)
        .unwrap_or_else(|| panic!("the bundle has no {name}"))
}

/// Flips every bit of the byte at `offset` of the file at `path`.
pub fn flip_byte(path: &Path, offset: u64) {
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open the bundle for writing");
    let mut byte = [0u8];
    file.seek(SeekFrom::Start(offset)).expect("seek");
    file.read_exact(&mut byte).expect("read the byte");
    byte[0] ^= 0xff;
    file.seek(SeekFrom::Start(offset)).expect("seek back");
    file.write_all(&byte).expect("write the flipped byte");
}
