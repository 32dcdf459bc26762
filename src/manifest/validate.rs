//! The checks a manifest passes before berth commits it. The digest proves
//! the bytes are the ones asked for, not that they are a manifest: an
//! upstream could serve anything under a matching digest (a tag's digest is
//! whatever it announces). So berth parses what it keeps: a JSON object, of
//! a schema version it knows, whose declared `mediaType` agrees with the
//! type it is served as, and, for the image types, the shape the spec gives
//! them (oci-spec's typed manifest and index, descriptors with valid
//! digests and sizes).
//!
//! It stays as tolerant as the registries and clients it sits between:
//! Docker schema 2 documents, artifacts of media types it does not know
//! (checked as JSON objects only), empty configs and unknown fields pass.

use oci_spec::image::{ImageIndex, ImageManifest};
use serde_json::{Map, Value};

use super::{
    DOCKER_MANIFEST_LIST, DOCKER_MANIFEST_V1, DOCKER_MANIFEST_V1_SIGNED, DOCKER_MANIFEST_V2,
    OCI_INDEX, OCI_MANIFEST,
};

/// Why a document is not a manifest berth will commit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(String);

/// Checks a manifest served with `content_type`; returns the media type to
/// serve it with.
pub fn check(content_type: Option<&str>, bytes: &[u8]) -> Result<String, Invalid> {
    let doc = match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(doc)) => doc,
        Ok(_) => return Err(Invalid("the manifest is not a JSON object".into())),
        Err(e) => return Err(Invalid(format!("the manifest is not valid JSON: {e}"))),
    };
    let declared = match doc.get("mediaType") {
        None => None,
        Some(Value::String(m)) => Some(m.as_str()),
        Some(_) => return Err(Invalid("its mediaType is not a string".into())),
    };
    let served = content_type
        .map(|c| c.split(';').next().unwrap_or("").trim())
        .filter(|c| is_manifest_type(c));
    if let (Some(served), Some(declared)) = (served, declared) {
        if served != declared {
            return Err(Invalid(format!(
                "it was served as {served} but declares mediaType {declared}"
            )));
        }
    }
    let media_type = served
        .or(declared)
        .map(str::to_owned)
        .unwrap_or_else(|| by_shape(&doc).to_owned());
    check_shape(&media_type, doc)?;
    // What berth keeps, it must be able to walk (warm, sync, export): a
    // descriptor whose digest berth cannot read (an algorithm it does not
    // support) refuses the document, as a malformed one does.
    let digest = crate::digest::Algorithm::Sha256.digest(bytes);
    crate::graph::refs(&digest, bytes).map_err(|e| Invalid(e.to_string()))?;
    Ok(media_type)
}

/// Content types that name a manifest (the known ones, or any vendor type
/// an artifact may use); `application/json` and the like say nothing.
fn is_manifest_type(content_type: &str) -> bool {
    content_type.starts_with("application/vnd.")
}

/// What an OCI document without `mediaType` is, by its fields.
fn by_shape(doc: &Map<String, Value>) -> &'static str {
    if doc.contains_key("manifests") {
        OCI_INDEX
    } else {
        OCI_MANIFEST
    }
}

fn check_shape(media_type: &str, mut doc: Map<String, Value>) -> Result<(), Invalid> {
    let version = doc.get("schemaVersion").and_then(Value::as_u64);
    match media_type {
        OCI_INDEX | DOCKER_MANIFEST_LIST => {
            require_version(version, 2)?;
            serde_json::from_value::<ImageIndex>(Value::Object(doc))
                .map(drop)
                .map_err(|e| Invalid(format!("not a valid image index: {e}")))
        }
        OCI_MANIFEST | DOCKER_MANIFEST_V2 => {
            require_version(version, 2)?;
            // Artifacts without layers exist in the wild; the spec's type
            // requires the field, so an absent one reads as empty.
            doc.entry("layers")
                .or_insert_with(|| Value::Array(Vec::new()));
            serde_json::from_value::<ImageManifest>(Value::Object(doc))
                .map(drop)
                .map_err(|e| Invalid(format!("not a valid image manifest: {e}")))
        }
        DOCKER_MANIFEST_V1 | DOCKER_MANIFEST_V1_SIGNED => require_version(version, 1),
        // An artifact type berth does not know: a JSON object is all it asks.
        _ => Ok(()),
    }
}

fn require_version(found: Option<u64>, wanted: u64) -> Result<(), Invalid> {
    match found {
        Some(v) if v == wanted => Ok(()),
        Some(v) => Err(Invalid(format!("its schemaVersion is {v}, not {wanted}"))),
        None => Err(Invalid("it has no schemaVersion".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae";

    fn manifest(media_type: Option<&str>) -> Vec<u8> {
        let mut doc = serde_json::json!({
            "schemaVersion": 2,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": DIGEST, "size": 3},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": DIGEST, "size": 3}],
            "unknownField": {"kept": true}
        });
        if let Some(m) = media_type {
            doc["mediaType"] = m.into();
        }
        serde_json::to_vec(&doc).expect("json")
    }

    #[test]
    fn image_manifests_and_indexes_pass() {
        assert_eq!(
            check(Some(OCI_MANIFEST), &manifest(Some(OCI_MANIFEST))),
            Ok(OCI_MANIFEST.into())
        );
        assert_eq!(
            check(Some(OCI_MANIFEST), &manifest(None)),
            Ok(OCI_MANIFEST.into())
        );
        assert_eq!(
            check(
                Some(DOCKER_MANIFEST_V2),
                &manifest(Some(DOCKER_MANIFEST_V2))
            ),
            Ok(DOCKER_MANIFEST_V2.into())
        );
        assert_eq!(
            check(Some("application/json"), &manifest(None)),
            Ok(OCI_MANIFEST.into())
        );
        let index = serde_json::json!({"schemaVersion": 2, "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": DIGEST, "size": 3,
             "platform": {"architecture": "riscv64", "os": "plan9", "features": ["x"]}}]});
        let index = serde_json::to_vec(&index).expect("json");
        assert_eq!(check(None, &index), Ok(OCI_INDEX.into()));
        assert_eq!(
            check(Some(DOCKER_MANIFEST_LIST), &index),
            Ok(DOCKER_MANIFEST_LIST.into())
        );
    }

    #[test]
    fn artifacts_and_empty_layers_pass() {
        let artifact = serde_json::json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "artifactType": "application/vnd.example.sbom",
            "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": DIGEST, "size": 2}});
        let artifact = serde_json::to_vec(&artifact).expect("json");
        assert!(check(Some(OCI_MANIFEST), &artifact).is_ok());
        assert!(check(
            Some("application/vnd.example.thing+json"),
            br#"{"anything": 1}"#
        )
        .is_ok());
    }

    #[test]
    fn what_is_not_a_manifest_is_refused() {
        assert!(check(Some(OCI_MANIFEST), b"not json").is_err());
        assert!(check(Some(OCI_MANIFEST), b"[1, 2]").is_err());
        let mismatch = check(Some(DOCKER_MANIFEST_V2), &manifest(Some(OCI_INDEX)));
        assert!(mismatch.is_err_and(|e| e.0.contains("declares")));
        assert!(check(Some(OCI_MANIFEST), br#"{"schemaVersion": 3, "config": {}}"#).is_err());
        let bad_digest = String::from_utf8(manifest(None))
            .expect("utf8")
            .replace(DIGEST, "sha256:nothex");
        assert!(check(Some(OCI_MANIFEST), bad_digest.as_bytes()).is_err());
        let negative = String::from_utf8(manifest(None))
            .expect("utf8")
            .replace("\"size\":3", "\"size\":-3");
        assert!(check(Some(OCI_MANIFEST), negative.as_bytes()).is_err());
        assert!(
            check(Some(OCI_INDEX), br#"{"schemaVersion": 2}"#).is_err(),
            "an index needs manifests"
        );
    }
}
