//! The bundle's format: an OCI image layout (`oci-layout`, `index.json`,
//! `blobs/<algorithm>/<hex>`) in a tar, with berth's annotations on the
//! entries of `index.json` saying where each one belongs in a cache.
//!
//! Every manifest and blob is a file under `blobs/`, named by its digest.
//! `index.json` lists three kinds of entries:
//!
//! - a tag: `org.opencontainers.image.ref.name` = `<upstream>/<repo>:<tag>`
//!   (unique in the bundle, and what `skopeo copy oci-archive:bundle.tar:<that>`
//!   asks for), plus `io.berth.upstream`, `io.berth.repository`,
//!   `io.berth.tag` and when berth learnt the tag;
//! - a manifest cached by digest only: upstream and repository, no name;
//! - a referrers list: an OCI index of the referrers of
//!   `io.berth.referrers-of` in that repository (the list the referrers API
//!   answers; the same shape as the referrers tag schema).
//!
//! An entry may also name (`io.berth.omitted`) the manifests of its index
//! that the bundle leaves out on purpose (platforms not warmed, referrers
//! the exporting cache did not hold), so that an import can tell them from
//! content that is missing. A referrers list always names every referrer
//! berth knew of, and lists none only when there are none: the site can
//! tell "no referrers" from "not brought".

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};

use crate::digest::Digest;
use crate::reference::{validate_name, validate_tag};

pub const LAYOUT_FILE: &str = "oci-layout";
pub const INDEX_FILE: &str = "index.json";
const LAYOUT_VERSION: &str = "1.0.0";
const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";

pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
const CREATED: &str = "org.opencontainers.image.created";
pub const UPSTREAM: &str = "io.berth.upstream";
pub const REPOSITORY: &str = "io.berth.repository";
pub const TAG: &str = "io.berth.tag";
pub const REFERRERS_OF: &str = "io.berth.referrers-of";
const FETCHED_AT: &str = "io.berth.fetched-at";
const ETAG: &str = "io.berth.etag";
const OMITTED: &str = "io.berth.omitted";
/// On the index itself: how many `blobs/` entries the bundle holds, so that
/// an import notices entries lost whole, not only cut ones.
const BLOB_COUNT: &str = "io.berth.bundle.blobs";
const SINCE: &str = "io.berth.bundle.since";

/// A repository of an upstream: where an entry belongs.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Place {
    pub upstream: String,
    pub repo: String,
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.upstream, self.repo)
    }
}

/// What an `index.json` entry stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Tag {
        tag: String,
        fetched_at_ms: u64,
        etag: Option<String>,
    },
    Digest,
    Referrers {
        subject: Digest,
        fetched_at_ms: u64,
    },
}

/// One entry of `index.json`: a descriptor and where it belongs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub place: Place,
    pub kind: Kind,
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
    /// Manifests of this entry's index left out on purpose.
    pub omitted: BTreeSet<Digest>,
}

/// `index.json` as read back.
#[derive(Debug, Default)]
pub struct Index {
    pub entries: Vec<Entry>,
    /// The number of blobs the bundle says it holds.
    pub blob_count: Option<usize>,
    /// Entries without berth's annotations (another tool's): skipped.
    pub foreign: usize,
}

/// The path of a blob in the layout.
pub fn blob_path(digest: &Digest) -> String {
    format!("blobs/{}/{}", digest.algorithm().name(), digest.hex())
}

/// The digest a `blobs/<algorithm>/<hex>` path names: `None` for paths
/// outside `blobs/`, an error for a malformed name under it.
pub fn parse_blob_path(path: &str) -> Option<Result<Digest, String>> {
    let rest = path.strip_prefix("blobs/")?;
    let (alg, hex) = rest.split_once('/')?;
    Some(
        format!("{alg}:{hex}")
            .parse()
            .map_err(|e: crate::digest::DigestError| e.to_string()),
    )
}

pub fn layout_file() -> Vec<u8> {
    json!({ "imageLayoutVersion": LAYOUT_VERSION })
        .to_string()
        .into_bytes()
}

/// Accepts any 1.x layout.
pub fn check_layout_file(bytes: &[u8]) -> Result<(), String> {
    let doc: Value = serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
    match doc["imageLayoutVersion"].as_str() {
        Some(v) if v.starts_with("1.") => Ok(()),
        Some(v) => Err(format!("image layout version {v} is not supported")),
        None => Err("no imageLayoutVersion".to_owned()),
    }
}

/// The name skopeo and other OCI-layout tools find a tag by.
pub fn ref_name(place: &Place, tag: &str) -> String {
    format!("{}/{}:{tag}", place.upstream, place.repo)
}

fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

fn parse_ms(s: &str) -> Option<u64> {
    let at = humantime::parse_rfc3339(s).ok()?;
    Some(at.duration_since(UNIX_EPOCH).ok()?.as_millis() as u64)
}

impl Entry {
    pub fn to_json(&self) -> Value {
        let mut notes = Map::new();
        let mut note = |k: &str, v: String| notes.insert(k.to_owned(), Value::String(v));
        note(UPSTREAM, self.place.upstream.clone());
        note(REPOSITORY, self.place.repo.clone());
        match &self.kind {
            Kind::Tag {
                tag,
                fetched_at_ms,
                etag,
            } => {
                note(REF_NAME, ref_name(&self.place, tag));
                note(TAG, tag.clone());
                note(FETCHED_AT, rfc3339(*fetched_at_ms));
                if let Some(etag) = etag {
                    note(ETAG, etag.clone());
                }
            }
            Kind::Digest => {}
            Kind::Referrers {
                subject,
                fetched_at_ms,
            } => {
                note(REFERRERS_OF, subject.to_string());
                note(FETCHED_AT, rfc3339(*fetched_at_ms));
            }
        }
        if !self.omitted.is_empty() {
            let list: Vec<String> = self.omitted.iter().map(Digest::to_string).collect();
            note(OMITTED, list.join(","));
        }
        json!({
            "mediaType": self.media_type,
            "digest": self.digest.to_string(),
            "size": self.size,
            "annotations": notes,
        })
    }

    /// Reads an entry; `Ok(None)` for one without berth's annotations.
    pub fn from_json(value: &Value) -> Result<Option<Entry>, String> {
        let notes = &value["annotations"];
        let note = |k: &str| notes[k].as_str();
        let (Some(upstream), Some(repo)) = (note(UPSTREAM), note(REPOSITORY)) else {
            return Ok(None);
        };
        validate_name(repo)?;
        if upstream.is_empty() || upstream.contains('/') {
            return Err(format!("{upstream:?} is not an upstream name"));
        }
        let digest: Digest = value["digest"]
            .as_str()
            .ok_or("an entry without a digest")?
            .parse()
            .map_err(|e: crate::digest::DigestError| e.to_string())?;
        let fetched_at_ms = note(FETCHED_AT).and_then(parse_ms).unwrap_or(0);
        let kind = match (note(TAG), note(REFERRERS_OF)) {
            (Some(tag), None) if validate_tag(tag) => Kind::Tag {
                tag: tag.to_owned(),
                fetched_at_ms,
                etag: note(ETAG).map(str::to_owned),
            },
            (Some(tag), None) => return Err(format!("{tag:?} is not a valid tag")),
            (None, Some(subject)) => Kind::Referrers {
                subject: subject
                    .parse()
                    .map_err(|e: crate::digest::DigestError| e.to_string())?,
                fetched_at_ms,
            },
            (None, None) => Kind::Digest,
            (Some(_), Some(_)) => return Err("both a tag and a referrers list".to_owned()),
        };
        let omitted = note(OMITTED)
            .unwrap_or("")
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse()
                    .map_err(|e: crate::digest::DigestError| e.to_string())
            })
            .collect::<Result<_, _>>()?;
        Ok(Some(Entry {
            place: Place {
                upstream: upstream.to_owned(),
                repo: repo.to_owned(),
            },
            kind,
            digest,
            media_type: value["mediaType"].as_str().unwrap_or_default().to_owned(),
            size: value["size"].as_u64().ok_or("an entry without a size")?,
            omitted,
        }))
    }

    /// How the entry is named in messages.
    pub fn describe(&self) -> String {
        match &self.kind {
            Kind::Tag { tag, .. } => ref_name(&self.place, tag),
            Kind::Digest => format!("{}@{}", self.place, self.digest),
            Kind::Referrers { subject, .. } => format!("referrers of {}@{subject}", self.place),
        }
    }
}

/// The bytes of `index.json`.
pub fn index_json(entries: &[Entry], blob_count: usize, since_ms: Option<u64>) -> Vec<u8> {
    let mut notes = Map::new();
    notes.insert(BLOB_COUNT.into(), blob_count.to_string().into());
    notes.insert(
        CREATED.into(),
        humantime::format_rfc3339_seconds(SystemTime::now())
            .to_string()
            .into(),
    );
    if let Some(ms) = since_ms {
        notes.insert(SINCE.into(), rfc3339(ms).into());
    }
    let index = json!({
        "schemaVersion": 2,
        "mediaType": INDEX_MEDIA_TYPE,
        "manifests": entries.iter().map(Entry::to_json).collect::<Vec<_>>(),
        "annotations": notes,
    });
    serde_json::to_vec_pretty(&index).unwrap_or_default()
}

pub fn parse_index(bytes: &[u8]) -> Result<Index, String> {
    let doc: Value = serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
    let list = doc["manifests"]
        .as_array()
        .ok_or("not an image index (no manifests)")?;
    let mut index = Index {
        blob_count: match doc["annotations"][BLOB_COUNT].as_str() {
            Some(n) => Some(
                n.parse()
                    .map_err(|_| format!("{BLOB_COUNT} is not a number"))?,
            ),
            None => None,
        },
        ..Index::default()
    };
    for (i, value) in list.iter().enumerate() {
        match Entry::from_json(value).map_err(|e| format!("entry {i}: {e}"))? {
            Some(entry) => index.entries.push(entry),
            None => index.foreign += 1,
        }
    }
    Ok(index)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Algorithm;

    fn place() -> Place {
        Place {
            upstream: "ghcr.io".into(),
            repo: "org/app".into(),
        }
    }

    #[test]
    fn entries_round_trip_through_index_json() {
        let digest = Algorithm::Sha256.digest(b"index");
        let entries = vec![
            Entry {
                place: place(),
                kind: Kind::Tag {
                    tag: "1.0".into(),
                    fetched_at_ms: 1_700_000_000_123,
                    etag: Some("\"x\"".into()),
                },
                digest: digest.clone(),
                media_type: INDEX_MEDIA_TYPE.into(),
                size: 5,
                omitted: BTreeSet::from([Algorithm::Sha256.digest(b"arm")]),
            },
            Entry {
                place: place(),
                kind: Kind::Referrers {
                    subject: digest.clone(),
                    fetched_at_ms: 1_700_000_000_000,
                },
                digest: Algorithm::Sha256.digest(b"referrers"),
                media_type: INDEX_MEDIA_TYPE.into(),
                size: 9,
                omitted: BTreeSet::new(),
            },
            Entry {
                place: place(),
                kind: Kind::Digest,
                digest,
                media_type: INDEX_MEDIA_TYPE.into(),
                size: 5,
                omitted: BTreeSet::new(),
            },
        ];
        let bytes = index_json(&entries, 7, None);
        let doc: Value = serde_json::from_slice(&bytes).expect("json");
        assert_eq!(
            doc["manifests"][0]["annotations"][REF_NAME],
            "ghcr.io/org/app:1.0"
        );
        let index = parse_index(&bytes).expect("parse");
        assert_eq!(index.entries, entries);
        assert_eq!(index.blob_count, Some(7));
        assert_eq!(index.foreign, 0);
    }

    #[test]
    fn blob_paths_name_digests() {
        let digest = Algorithm::Sha512.digest(b"x");
        let path = blob_path(&digest);
        assert_eq!(parse_blob_path(&path), Some(Ok(digest)));
        assert_eq!(parse_blob_path("index.json"), None);
        assert!(matches!(parse_blob_path("blobs/sha256/zz"), Some(Err(_))));
    }

    #[test]
    fn other_tools_entries_are_skipped_and_bad_ones_refused() {
        let foreign = json!({"manifests": [{"digest": "x", "annotations": {REF_NAME: "v1"}}]});
        let index = parse_index(foreign.to_string().as_bytes()).expect("parse");
        assert_eq!((index.entries.len(), index.foreign), (0, 1));
        let bad = json!({"manifests": [{"digest": "sha256:00", "size": 1,
            "annotations": {UPSTREAM: "u", REPOSITORY: "Bad Name"}}]});
        assert!(parse_index(bad.to_string().as_bytes()).is_err());
        assert!(check_layout_file(&layout_file()).is_ok());
        assert!(check_layout_file(br#"{"imageLayoutVersion":"2.0.0"}"#).is_err());
    }
}
