//! Image fixtures, built in memory from a seeded PRNG, and pushing them to a
//! registry over the distribution HTTP API.
//!
//! Tests compare what comes out of berth with the exact bytes and digests
//! kept here, so nothing large lives on disk and every fixture is the same on
//! every run.

use bytes::Bytes;
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};

use super::sha256_digest;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// What a client that understands every manifest kind sends as `Accept`.
pub const ACCEPT_ALL_MANIFESTS: &str = "application/vnd.oci.image.manifest.v1+json, \
     application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.docker.distribution.manifest.list.v2+json";

/// The digest of the empty blob.
pub const EMPTY_DIGEST: &str =
    "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// A blob (config or layer) with its media type as the manifest names it.
#[derive(Clone, Debug)]
pub struct Blob {
    pub media_type: &'static str,
    pub bytes: Bytes,
    pub digest: String,
}

impl Blob {
    pub fn new(media_type: &'static str, bytes: impl Into<Bytes>) -> Blob {
        let bytes = bytes.into();
        let digest = sha256_digest(&bytes);
        Blob {
            media_type,
            bytes,
            digest,
        }
    }

    pub fn descriptor(&self) -> Value {
        json!({ "mediaType": self.media_type, "digest": self.digest, "size": self.bytes.len() })
    }
}

/// A manifest or index: exact bytes, their digest and media type.
#[derive(Clone, Debug)]
pub struct Manifest {
    pub media_type: &'static str,
    pub bytes: Bytes,
    pub digest: String,
}

impl Manifest {
    fn from_json(media_type: &'static str, value: &Value) -> Manifest {
        let bytes = Bytes::from(serde_json::to_vec_pretty(value).expect("serialize manifest"));
        let digest = sha256_digest(&bytes);
        Manifest {
            media_type,
            bytes,
            digest,
        }
    }
}

/// Something pushed under `repo:tag`: the root manifest (an image manifest
/// or an index), the image manifests an index lists, and every blob.
#[derive(Clone, Debug)]
pub struct Fixture {
    pub repo: String,
    pub tag: String,
    pub root: Manifest,
    pub children: Vec<Manifest>,
    pub blobs: Vec<Blob>,
}

impl Fixture {
    /// An OCI image: config and two layers, one small enough to be stored
    /// inline by berth and one larger than the default inline limit.
    pub fn oci_image(repo: &str, tag: &str) -> Fixture {
        let layers = vec![
            Blob::new(OCI_LAYER, random_bytes(repo, 1, 1024)),
            Blob::new(OCI_LAYER, random_bytes(repo, 2, 100 * 1024)),
        ];
        let (root, config) = image(OCI_MANIFEST, OCI_CONFIG, "amd64", &layers);
        Fixture::single(repo, tag, root, config, layers)
    }

    /// A Docker image manifest, schema 2, with Docker media types.
    pub fn docker_image(repo: &str, tag: &str) -> Fixture {
        let layers = vec![
            Blob::new(DOCKER_LAYER, random_bytes(repo, 1, 2048)),
            Blob::new(DOCKER_LAYER, random_bytes(repo, 2, 80 * 1024)),
        ];
        let (root, config) = image(DOCKER_MANIFEST, DOCKER_CONFIG, "amd64", &layers);
        Fixture::single(repo, tag, root, config, layers)
    }

    /// An OCI index for linux/amd64 and linux/arm64, each its own image.
    pub fn multi_platform(repo: &str, tag: &str) -> Fixture {
        let mut children = Vec::new();
        let mut blobs = Vec::new();
        let mut descriptors = Vec::new();
        for (n, arch) in [(10, "amd64"), (20, "arm64")] {
            let layers = vec![
                Blob::new(OCI_LAYER, random_bytes(repo, n, 4096)),
                Blob::new(OCI_LAYER, random_bytes(repo, n + 1, 70 * 1024)),
            ];
            let (manifest, config) = image(OCI_MANIFEST, OCI_CONFIG, arch, &layers);
            descriptors.push(json!({
                "mediaType": manifest.media_type,
                "digest": manifest.digest,
                "size": manifest.bytes.len(),
                "platform": { "architecture": arch, "os": "linux" },
            }));
            children.push(manifest);
            blobs.push(config);
            blobs.extend(layers);
        }
        let index = json!({ "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": descriptors });
        Fixture {
            repo: repo.to_owned(),
            tag: tag.to_owned(),
            root: Manifest::from_json(OCI_INDEX, &index),
            children,
            blobs,
        }
    }

    /// An OCI image whose only layer is `size` bytes of noise: big enough
    /// that a transfer is observably in progress and memory use would show.
    pub fn big_image(repo: &str, tag: &str, size: usize) -> Fixture {
        let layers = vec![Blob::new(OCI_LAYER, random_bytes(repo, 1, size))];
        let (root, config) = image(OCI_MANIFEST, OCI_CONFIG, "amd64", &layers);
        Fixture::single(repo, tag, root, config, layers)
    }

    /// An OCI image (linux/amd64) over `layers`, whatever they hold.
    pub fn with_layers(repo: &str, tag: &str, layers: Vec<Blob>) -> Fixture {
        let (root, config) = image(OCI_MANIFEST, OCI_CONFIG, "amd64", &layers);
        Fixture::single(repo, tag, root, config, layers)
    }

    /// An OCI image with the empty blob (size 0) as one of its layers.
    pub fn empty_layer_image(repo: &str, tag: &str) -> Fixture {
        let layers = vec![
            Blob::new(OCI_LAYER, Bytes::new()),
            Blob::new(OCI_LAYER, random_bytes(repo, 1, 512)),
        ];
        assert_eq!(layers[0].digest, EMPTY_DIGEST);
        let (root, config) = image(OCI_MANIFEST, OCI_CONFIG, "amd64", &layers);
        Fixture::single(repo, tag, root, config, layers)
    }

    /// The set every end-to-end pull test copies: one of each kind, a
    /// Docker Hub style `library/` repository, and a 40 MiB layer.
    pub fn standard_set() -> Vec<Fixture> {
        vec![
            Fixture::oci_image("test/oci", "v1"),
            Fixture::docker_image("test/docker", "v1"),
            Fixture::multi_platform("test/multi", "v1"),
            Fixture::big_image("test/big", "v1", 40 << 20),
            Fixture::empty_layer_image("test/empty", "v1"),
            Fixture::docker_image("library/busybox", "latest"),
        ]
    }

    fn single(repo: &str, tag: &str, root: Manifest, config: Blob, layers: Vec<Blob>) -> Fixture {
        let mut blobs = vec![config];
        blobs.extend(layers);
        Fixture {
            repo: repo.to_owned(),
            tag: tag.to_owned(),
            root,
            children: Vec::new(),
            blobs,
        }
    }

    /// `repo:tag`.
    pub fn reference(&self) -> String {
        format!("{}:{}", self.repo, self.tag)
    }

    /// The largest blob (the layer a test is most interested in).
    pub fn largest_blob(&self) -> &Blob {
        self.blobs
            .iter()
            .max_by_key(|b| b.bytes.len())
            .expect("a fixture has blobs")
    }
}

/// An image manifest over `layers` and the config blob it references.
fn image(
    manifest_type: &'static str,
    config_type: &'static str,
    arch: &str,
    layers: &[Blob],
) -> (Manifest, Blob) {
    // Layers are stored uncompressed, so a diff ID is the layer digest.
    let diff_ids: Vec<&str> = layers.iter().map(|l| l.digest.as_str()).collect();
    let config = json!({
        "architecture": arch,
        "os": "linux",
        "config": {},
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
    });
    let config = Blob::new(
        config_type,
        serde_json::to_vec(&config).expect("serialize image config"),
    );
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": manifest_type,
        "config": config.descriptor(),
        "layers": layers.iter().map(Blob::descriptor).collect::<Vec<_>>(),
    });
    (Manifest::from_json(manifest_type, &manifest), config)
}

/// `len` deterministic pseudo-random bytes, different for every (label, n).
pub fn random_bytes(label: &str, n: u64, len: usize) -> Bytes {
    // FNV-1a of the label, mixed with n, seeds a xorshift64*.
    let mut state = label.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    }) ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    if state == 0 {
        state = 1;
    }
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    Bytes::from(out)
}

/// Pushes fixtures to a registry with the distribution API: monolithic
/// blob uploads (POST, then PUT `?digest=`) and manifest PUTs.
pub struct Pusher {
    client: Client,
    base: String,
    credentials: Option<(String, String)>,
}

impl Pusher {
    /// A pusher for the registry at `base` (`http://127.0.0.1:PORT`).
    pub fn new(base: &str, credentials: Option<(&str, &str)>) -> Pusher {
        Pusher::with_client(super::http::client(), base, credentials)
    }

    /// A pusher that sends its requests with `client` (one that trusts a
    /// test CA, say).
    pub fn with_client(client: Client, base: &str, credentials: Option<(&str, &str)>) -> Pusher {
        Pusher {
            client,
            base: base.trim_end_matches('/').to_owned(),
            credentials: credentials.map(|(u, p)| (u.to_owned(), p.to_owned())),
        }
    }

    /// A pusher for a [`super::registry::Registry`], with its credentials
    /// and, for an HTTPS registry, its CA.
    pub fn to(registry: &super::registry::Registry) -> Pusher {
        Pusher::with_client(registry.client(), &registry.url(), registry.credentials())
    }

    /// Push blobs, then child manifests by digest, then the root by tag.
    pub async fn push(&self, fixture: &Fixture) -> Result<(), String> {
        for blob in &fixture.blobs {
            self.push_blob(&fixture.repo, blob).await?;
        }
        for child in &fixture.children {
            self.push_manifest(&fixture.repo, &child.digest, child)
                .await?;
        }
        self.push_manifest(&fixture.repo, &fixture.tag, &fixture.root)
            .await
    }

    /// Push every fixture, panicking with the registry's answer on failure.
    pub async fn push_all(&self, fixtures: &[Fixture]) {
        for fixture in fixtures {
            if let Err(e) = self.push(fixture).await {
                panic!("pushing fixture {} failed: {e}", fixture.reference());
            }
        }
    }

    pub async fn push_blob(&self, repo: &str, blob: &Blob) -> Result<(), String> {
        let start = format!("{}/v2/{repo}/blobs/uploads/", self.base);
        let response = self.send(self.client.post(&start)).await?;
        expect_status(&response, StatusCode::ACCEPTED, "start blob upload")?;
        let location = response
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .ok_or("blob upload answered without a Location header")?;
        let mut url = if location.starts_with('/') {
            format!("{}{location}", self.base)
        } else {
            location.to_owned()
        };
        url.push(if url.contains('?') { '&' } else { '?' });
        url.push_str(&format!("digest={}", blob.digest));
        let request = self
            .client
            .put(&url)
            .header("content-type", "application/octet-stream")
            .body(blob.bytes.clone());
        let response = self.send(request).await?;
        expect_status(&response, StatusCode::CREATED, "finish blob upload")?;
        Ok(())
    }

    pub async fn push_manifest(
        &self,
        repo: &str,
        reference: &str,
        manifest: &Manifest,
    ) -> Result<(), String> {
        let url = format!("{}/v2/{repo}/manifests/{reference}", self.base);
        let request = self
            .client
            .put(&url)
            .header("content-type", manifest.media_type)
            .body(manifest.bytes.clone());
        let response = self.send(request).await?;
        if response.status() != StatusCode::CREATED {
            let status = response.status();
            let body = response.text().await.unwrap_or_default();
            return Err(format!("PUT {url}: expected 201, got {status}: {body}"));
        }
        Ok(())
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<reqwest::Response, String> {
        let request = match &self.credentials {
            Some((user, pass)) => request.basic_auth(user, Some(pass)),
            None => request,
        };
        request
            .send()
            .await
            .map_err(|e| format!("request to the registry failed: {e}"))
    }
}

fn expect_status(
    response: &reqwest::Response,
    expected: StatusCode,
    what: &str,
) -> Result<(), String> {
    if response.status() == expected {
        Ok(())
    } else {
        Err(format!(
            "{what} ({}): expected {expected}, got {}",
            response.url(),
            response.status()
        ))
    }
}
