//! Artifact fixtures (image manifests with `artifactType` and `subject`, as
//! cosign and oras push them) and the requests the referrers tests make of
//! berth.

use std::time::Duration;

use bytes::Bytes;
use serde_json::{json, Value};

use crate::common::berth::Berth;
use crate::common::content::{
    random_bytes, Blob, Fixture, Manifest, Pusher, ACCEPT_ALL_MANIFESTS, OCI_INDEX, OCI_MANIFEST,
};
use crate::common::http::{client, Reply};
use crate::common::{digest_hex, sha256_digest};

pub const SIGNATURE: &str = "application/vnd.dev.cosign.artifact.sig.v1+json";
pub const SBOM: &str = "application/spdx+json";
pub const ATTESTATION: &str = "application/vnd.in-toto+json";
/// The empty config artifacts carry: media type and the blob `{}`.
pub const EMPTY_CONFIG: &str = "application/vnd.oci.empty.v1+json";
const SIGNATURE_LAYER: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// Manifest GETs while waiting for what berth learns in the background, and
/// the pause between two: a bound on the wait, not a timing check.
const POLLS: usize = 400;
const POLL_PAUSE: Duration = Duration::from_millis(25);

/// An artifact that refers to an image: its manifest and its blobs (the
/// empty config and one layer).
#[derive(Clone, Debug)]
pub struct Artifact {
    pub manifest: Manifest,
    pub blobs: Vec<Blob>,
    pub artifact_type: &'static str,
    pub annotations: Value,
}

impl Artifact {
    /// A signature of `subject`.
    pub fn signature(subject: &Manifest) -> Artifact {
        Artifact::new(subject, SIGNATURE, SIGNATURE_LAYER)
    }

    /// An SPDX SBOM of `subject`.
    pub fn sbom(subject: &Manifest) -> Artifact {
        Artifact::new(subject, SBOM, SBOM)
    }

    /// An in-toto attestation about `subject`.
    pub fn attestation(subject: &Manifest) -> Artifact {
        Artifact::new(subject, ATTESTATION, ATTESTATION)
    }

    /// An OCI image manifest with `artifactType`, `subject`, the empty
    /// config, one layer of `layer_type` and annotations.
    fn new(subject: &Manifest, artifact_type: &'static str, layer_type: &'static str) -> Artifact {
        let config = Blob::new(EMPTY_CONFIG, Bytes::from_static(b"{}"));
        let label = format!("{artifact_type} of {}", subject.digest);
        let layer = Blob::new(layer_type, random_bytes(&label, 1, 700));
        let annotations = json!({
            "org.opencontainers.image.created": "2024-05-01T12:00:00Z",
            "org.example.artifact": artifact_type,
        });
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": artifact_type,
            "config": config.descriptor(),
            "layers": [layer.descriptor()],
            "subject": descriptor(subject),
            "annotations": annotations,
        });
        Artifact {
            manifest: manifest_of(OCI_MANIFEST, &manifest),
            blobs: vec![config, layer],
            artifact_type,
            annotations,
        }
    }

    /// Its entry in a referrers list, as the spec asks for it.
    pub fn descriptor(&self) -> Value {
        let mut d = descriptor(&self.manifest);
        d["artifactType"] = self.artifact_type.into();
        d["annotations"] = self.annotations.clone();
        d
    }
}

/// A manifest's descriptor: media type, digest and size.
pub fn descriptor(manifest: &Manifest) -> Value {
    json!({
        "mediaType": manifest.media_type,
        "digest": manifest.digest,
        "size": manifest.bytes.len(),
    })
}

/// `value` as a manifest of `media_type`: its exact bytes and their digest.
pub fn manifest_of(media_type: &'static str, value: &Value) -> Manifest {
    let bytes = Bytes::from(serde_json::to_vec(value).expect("serialize a manifest"));
    Manifest {
        media_type,
        digest: sha256_digest(&bytes),
        bytes,
    }
}

/// The referrers tag of `digest`: `sha256-<hex>`.
pub fn referrers_tag(digest: &str) -> String {
    format!("sha256-{}", digest_hex(digest))
}

/// An image, three artifacts that refer to it, and the image's referrers
/// list sorted by digest (the order berth serves it in).
pub struct Signed {
    pub image: Fixture,
    pub signature: Artifact,
    pub sbom: Artifact,
    pub attestation: Artifact,
}

impl Signed {
    pub fn new(repo: &str) -> Signed {
        let image = Fixture::oci_image(repo, "v1");
        Signed {
            signature: Artifact::signature(&image.root),
            sbom: Artifact::sbom(&image.root),
            attestation: Artifact::attestation(&image.root),
            image,
        }
    }

    pub fn repo(&self) -> &str {
        &self.image.repo
    }

    pub fn digest(&self) -> &str {
        &self.image.root.digest
    }

    pub fn artifacts(&self) -> [&Artifact; 3] {
        [&self.signature, &self.sbom, &self.attestation]
    }

    /// The descriptors of every artifact, sorted by digest.
    pub fn descriptors(&self) -> Vec<Value> {
        sorted(self.artifacts().map(Artifact::descriptor).to_vec())
    }
}

/// Push `artifacts` (blobs, then manifests by digest) to `repo`.
pub async fn push_artifacts(pusher: &Pusher, repo: &str, artifacts: &[&Artifact]) {
    for artifact in artifacts {
        for blob in &artifact.blobs {
            if let Err(e) = pusher.push_blob(repo, blob).await {
                panic!(
                    "push a blob of the {} artifact: {e}",
                    artifact.artifact_type
                );
            }
        }
        let manifest = &artifact.manifest;
        if let Err(e) = pusher.push_manifest(repo, &manifest.digest, manifest).await {
            panic!("push the {} artifact: {e}", artifact.artifact_type);
        }
    }
}

/// The referrers index a client keeps under the referrers tag: the OCI
/// index of `descriptors`.
pub fn referrers_index(descriptors: &[Value]) -> Manifest {
    let index = json!({ "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": descriptors });
    manifest_of(OCI_INDEX, &index)
}

/// Descriptors sorted by digest, for comparing lists whatever their order.
pub fn sorted(mut descriptors: Vec<Value>) -> Vec<Value> {
    descriptors.sort_by(|a, b| a["digest"].as_str().cmp(&b["digest"].as_str()));
    descriptors
}

/// `GET /v2/<repo>/referrers/<digest>[?artifactType=<filter>]` on berth.
pub async fn list_referrers(
    berth: &Berth,
    repo: &str,
    digest: &str,
    filter: Option<&str>,
) -> Reply {
    let url = format!("{}/v2/{repo}/referrers/{digest}", berth.url());
    let mut request = client().get(&url);
    if let Some(artifact_type) = filter {
        request = request.query(&[("artifactType", artifact_type)]);
    }
    Reply::of(request).await
}

/// The descriptors of a referrers answer, sorted by digest; panics unless
/// it is a 200 with an OCI image index as the spec describes it.
pub fn listed(reply: &Reply, what: &str) -> Vec<Value> {
    let body = String::from_utf8_lossy(&reply.body);
    assert_eq!(reply.status, 200, "{what}: {body}");
    assert_eq!(
        reply.header("content-type"),
        OCI_INDEX,
        "{what}: Content-Type"
    );
    let index: Value = serde_json::from_slice(&reply.body)
        .unwrap_or_else(|e| panic!("{what}: the body is not JSON ({e}): {body}"));
    assert_eq!(index["schemaVersion"], 2, "{what}: {body}");
    assert_eq!(index["mediaType"], OCI_INDEX, "{what}: {body}");
    let manifests = index["manifests"]
        .as_array()
        .unwrap_or_else(|| panic!("{what}: no manifests array: {body}"));
    sorted(manifests.clone())
}

/// `GET /v2/<repo>/manifests/<reference>` on berth, as a client that reads
/// every manifest type.
pub async fn get_manifest(berth: &Berth, repo: &str, reference: &str) -> Reply {
    let url = format!("{}/v2/{repo}/manifests/{reference}", berth.url());
    Reply::of(client().get(&url).header("accept", ACCEPT_ALL_MANIFESTS)).await
}

/// `GET /v2/<repo>/blobs/<digest>` on berth.
pub async fn get_blob(berth: &Berth, repo: &str, digest: &str) -> Reply {
    let url = format!("{}/v2/{repo}/blobs/{digest}", berth.url());
    Reply::of(client().get(&url)).await
}

/// GET the manifest until its `OCI-Referrers` header says `want` (berth
/// learns in the background, so the first answers may lack it); returns
/// every value seen, "" for none. Panics when it never does.
pub async fn referrers_header_until(
    berth: &Berth,
    repo: &str,
    reference: &str,
    want: &str,
) -> Vec<String> {
    let mut seen = Vec::new();
    for _ in 0..POLLS {
        let reply = get_manifest(berth, repo, reference).await;
        assert_eq!(reply.status, 200, "GET manifest {repo}:{reference}");
        let value = reply.header("oci-referrers").to_owned();
        let done = value == want;
        seen.push(value);
        if done {
            return seen;
        }
        tokio::time::sleep(POLL_PAUSE).await;
    }
    let distinct: std::collections::BTreeSet<_> = seen.iter().collect();
    panic!(
        "{repo}@{reference}: OCI-Referrers never said {want:?} in {POLLS} GETs; it said {distinct:?}"
    );
}
