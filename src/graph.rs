//! What a manifest refers to: the manifests an index lists (with their
//! platforms) and the blobs (config and layers) an image manifest needs.
//!
//! `warm`, `export` and `import` all walk images through this one reading,
//! so that they agree on what "an image with everything it references"
//! means. A manifest's `subject` is not followed: it points back at the
//! image an artifact is about, which the referrers lists cover.

use std::fmt;
use std::str::FromStr;

use serde_json::Value;

use crate::digest::Digest;

/// Why a manifest cannot be walked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GraphError {
    #[error("manifest {digest} is not JSON: {reason}")]
    NotJson { digest: Digest, reason: String },
    #[error("manifest {digest} has an unusable descriptor: {reason}")]
    BadDescriptor { digest: Digest, reason: String },
}

/// An operating system and architecture, as index entries and
/// `--platform` name them (`linux/amd64`, `linux/arm64/v8`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    /// Whether `self`, a filter, admits `other`: same OS and architecture,
    /// and the same variant when the filter names one.
    pub fn admits(&self, other: &Platform) -> bool {
        self.os == other.os
            && self.architecture == other.architecture
            && (self.variant.is_none() || self.variant == other.variant)
    }

    fn from_json(value: &Value) -> Option<Platform> {
        Some(Platform {
            os: value["os"].as_str()?.to_owned(),
            architecture: value["architecture"].as_str()?.to_owned(),
            variant: value["variant"].as_str().map(str::to_owned),
        })
    }
}

impl FromStr for Platform {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split('/').collect();
        match parts.as_slice() {
            [os, arch] if !os.is_empty() && !arch.is_empty() => Ok(Platform {
                os: (*os).to_owned(),
                architecture: (*arch).to_owned(),
                variant: None,
            }),
            [os, arch, variant] if !os.is_empty() && !arch.is_empty() && !variant.is_empty() => {
                Ok(Platform {
                    os: (*os).to_owned(),
                    architecture: (*arch).to_owned(),
                    variant: Some((*variant).to_owned()),
                })
            }
            _ => Err(format!(
                "{s:?} is not a platform (os/architecture[/variant], e.g. linux/amd64)"
            )),
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        match &self.variant {
            Some(v) => write!(f, "/{v}"),
            None => Ok(()),
        }
    }
}

/// One reference from a manifest to other content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    pub digest: Digest,
    pub media_type: Option<String>,
    pub size: Option<u64>,
    pub platform: Option<Platform>,
}

impl Descriptor {
    /// A non-distributable ("foreign") layer: registries do not serve it,
    /// so it is neither fetched nor required.
    pub fn is_foreign(&self) -> bool {
        self.media_type
            .as_deref()
            .is_some_and(|m| m.contains("nondistributable") || m.contains(".foreign."))
    }

    fn from_json(of: &Digest, value: &Value) -> Result<Descriptor, GraphError> {
        let bad = |reason: String| GraphError::BadDescriptor {
            digest: of.clone(),
            reason,
        };
        let digest = value["digest"]
            .as_str()
            .ok_or_else(|| bad("a descriptor without a digest".to_owned()))?
            .parse()
            .map_err(|e: crate::digest::DigestError| bad(e.to_string()))?;
        Ok(Descriptor {
            digest,
            media_type: value["mediaType"].as_str().map(str::to_owned),
            size: value["size"].as_u64(),
            platform: Platform::from_json(&value["platform"]),
        })
    }
}

/// What one manifest refers to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Refs {
    /// The manifests an index lists.
    pub manifests: Vec<Descriptor>,
    /// The config and layers of an image manifest.
    pub blobs: Vec<Descriptor>,
}

impl Refs {
    /// The blobs that must be present for the image to be pulled.
    pub fn required_blobs(&self) -> impl Iterator<Item = &Descriptor> {
        self.blobs.iter().filter(|d| !d.is_foreign())
    }
}

/// Reads what the manifest `bytes` (whose digest is `digest`) refers to.
/// Documents with neither `manifests` nor `config`/`layers` refer to nothing.
pub fn refs(digest: &Digest, bytes: &[u8]) -> Result<Refs, GraphError> {
    let doc: Value = serde_json::from_slice(bytes).map_err(|e| GraphError::NotJson {
        digest: digest.clone(),
        reason: e.to_string(),
    })?;
    let list = |field: &str| -> Result<Vec<Descriptor>, GraphError> {
        doc[field]
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .map(|d| Descriptor::from_json(digest, d))
                    .collect()
            })
            .unwrap_or_else(|| Ok(Vec::new()))
    };
    let manifests = list("manifests")?;
    let mut blobs = Vec::new();
    if doc["config"].is_object() {
        blobs.push(Descriptor::from_json(digest, &doc["config"])?);
    }
    blobs.extend(list("layers")?);
    Ok(Refs { manifests, blobs })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Algorithm;

    fn d(n: u8) -> String {
        Algorithm::Sha256.digest(&[n]).to_string()
    }

    #[test]
    fn an_index_lists_manifests_with_platforms() {
        let index = serde_json::json!({
            "schemaVersion": 2,
            "manifests": [
                {"mediaType": "m", "digest": d(1), "size": 10,
                 "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
                {"mediaType": "m", "digest": d(2), "size": 10},
            ],
        });
        let bytes = serde_json::to_vec(&index).expect("json");
        let refs = refs(&Algorithm::Sha256.digest(&bytes), &bytes).expect("refs");
        assert_eq!(refs.manifests.len(), 2);
        assert!(refs.blobs.is_empty());
        let arm = refs.manifests[0].platform.clone().expect("platform");
        assert!("linux/arm64".parse::<Platform>().expect("p").admits(&arm));
        assert!("linux/arm64/v8"
            .parse::<Platform>()
            .expect("p")
            .admits(&arm));
        assert!(!"linux/arm64/v7"
            .parse::<Platform>()
            .expect("p")
            .admits(&arm));
        assert!(!"linux/amd64".parse::<Platform>().expect("p").admits(&arm));
        assert_eq!(refs.manifests[1].platform, None);
    }

    #[test]
    fn an_image_needs_its_config_and_distributable_layers() {
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "config": {"mediaType": "c", "digest": d(1), "size": 2},
            "layers": [
                {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d(2), "size": 3},
                {"mediaType": "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
                 "digest": d(3), "size": 4},
            ],
            "subject": {"mediaType": "m", "digest": d(4), "size": 5},
        });
        let bytes = serde_json::to_vec(&manifest).expect("json");
        let refs = refs(&Algorithm::Sha256.digest(&bytes), &bytes).expect("refs");
        assert_eq!(refs.blobs.len(), 3);
        let required: Vec<String> = refs
            .required_blobs()
            .map(|b| b.digest.to_string())
            .collect();
        assert_eq!(required, vec![d(1), d(2)]);
    }

    #[test]
    fn bad_documents_are_named() {
        let digest = Algorithm::Sha256.digest(b"x");
        assert!(matches!(
            refs(&digest, b"not json"),
            Err(GraphError::NotJson { .. })
        ));
        let bad = br#"{"layers":[{"digest":"md5:00"}]}"#;
        assert!(matches!(
            refs(&digest, bad),
            Err(GraphError::BadDescriptor { .. })
        ));
        assert!("linux".parse::<Platform>().is_err());
        assert_eq!(refs(&digest, b"{}").expect("refs"), Refs::default());
    }
}
