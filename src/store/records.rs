//! The records the store keeps about content, tags and referrers, and the
//! compact encoding of the one it keeps per object (a million of them must
//! stay small: four numbers and, for a manifest, its media type).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::digest::Digest;

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// What the store knows of one stored blob or manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectRecord {
    /// Bytes of content.
    pub size: u64,
    /// Bytes its file takes on disk (whole blocks), what the budget counts.
    pub disk: u64,
    pub stored_at_ms: u64,
    /// When it was last used (or stored, if never used since); the key of
    /// its entry in the access index.
    pub used_at_ms: u64,
    /// The media type a manifest is served with; empty for a blob.
    pub media_type: String,
}

/// The encoding's version byte, so a later layout can be told apart.
const RECORD_V1: u8 = 1;
const FIXED: usize = 1 + 4 * 8;

impl ObjectRecord {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(FIXED + self.media_type.len());
        out.push(RECORD_V1);
        for n in [self.size, self.disk, self.stored_at_ms, self.used_at_ms] {
            out.extend_from_slice(&n.to_be_bytes());
        }
        out.extend_from_slice(self.media_type.as_bytes());
        out
    }

    pub fn decode(raw: &[u8]) -> Option<ObjectRecord> {
        if raw.len() < FIXED || raw[0] != RECORD_V1 {
            return None;
        }
        let n = |i: usize| {
            let at = 1 + i * 8;
            raw[at..at + 8].try_into().ok().map(u64::from_be_bytes)
        };
        Some(ObjectRecord {
            size: n(0)?,
            disk: n(1)?,
            stored_at_ms: n(2)?,
            used_at_ms: n(3)?,
            media_type: String::from_utf8(raw[FIXED..].to_vec()).ok()?,
        })
    }
}

/// A manifest as stored: its bytes and the media type to serve them with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub digest: Digest,
    pub media_type: String,
    pub bytes: Bytes,
}

/// A cached blob, ready to be sent.
#[derive(Debug, Clone)]
pub enum BlobContent {
    /// Small enough to be held in memory by the hot tier.
    Inline(Bytes),
    File {
        file: Arc<std::fs::File>,
        size: u64,
    },
}

impl BlobContent {
    pub fn size(&self) -> u64 {
        match self {
            BlobContent::Inline(b) => b.len() as u64,
            BlobContent::File { size, .. } => *size,
        }
    }
}

/// Where a tag pointed when berth last asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagMapping {
    pub digest: String,
    /// Milliseconds since the Unix epoch.
    pub fetched_at_ms: u64,
    /// The upstream's `ETag` for the tag, for conditional revalidation.
    #[serde(default)]
    pub etag: Option<String>,
}

impl TagMapping {
    pub fn new(digest: &Digest, etag: Option<String>) -> Self {
        TagMapping {
            digest: digest.to_string(),
            fetched_at_ms: now_ms(),
            etag,
        }
    }

    /// The same mapping, confirmed by the upstream just now.
    pub fn renewed(&self) -> Self {
        TagMapping {
            fetched_at_ms: now_ms(),
            ..self.clone()
        }
    }

    pub fn age(&self) -> Duration {
        Duration::from_millis(now_ms().saturating_sub(self.fetched_at_ms))
    }
}

/// The manifests that refer to a digest (their descriptors, as the
/// referrers API lists them), and when berth learnt them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReferrersRecord {
    pub descriptors: Vec<serde_json::Value>,
    pub fetched_at_ms: u64,
    /// The digest of the referrers tag's index the list was read from (the
    /// tag schema), so that a `HEAD` of the tag can tell it is unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag_digest: Option<String>,
}

impl ReferrersRecord {
    pub fn new(descriptors: Vec<serde_json::Value>) -> Self {
        ReferrersRecord {
            descriptors,
            fetched_at_ms: now_ms(),
            tag_digest: None,
        }
    }

    /// The same list, confirmed by the upstream just now.
    pub fn renewed(&self) -> Self {
        ReferrersRecord {
            fetched_at_ms: now_ms(),
            ..self.clone()
        }
    }

    pub fn age(&self) -> Duration {
        Duration::from_millis(now_ms().saturating_sub(self.fetched_at_ms))
    }
}

pub fn encode_json<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing these plain structs cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_records_round_trip_compactly() {
        let r = ObjectRecord {
            size: 1,
            disk: 4096,
            stored_at_ms: 3,
            used_at_ms: 4,
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
        };
        let raw = r.encode();
        assert_eq!(raw.len(), FIXED + r.media_type.len());
        assert_eq!(ObjectRecord::decode(&raw), Some(r));
        assert_eq!(ObjectRecord::decode(b"short"), None);
        assert_eq!(ObjectRecord::decode(&[9; 40]), None, "another version");
    }
}
