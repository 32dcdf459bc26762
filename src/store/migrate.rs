//! Bringing a data directory of an older format up to this one.
//!
//! Format 1 kept manifests and small blobs inside the database (which never
//! gave their space back to the disk budget), keyed links and referrers
//! lists by repository first, and kept access times apart from the records.
//! Format 2 keeps all content as files, one compact record per object with
//! its last use, an access index ordered by time, and digest-first keys.
//! Converting is done once, at the first start of this version; every step
//! can be repeated, and the format number changes only once all of it is
//! written, so a crash part way through converts again on the next start.

use serde::Deserialize;

use super::files::Files;
use super::keys::{self, Kind};
use super::kv;
use super::meta::{Meta, Trees};
use super::records::{now_ms, ObjectRecord, TagMapping};
use super::{io_err, StoreError, SCHEMA_VERSION};
use crate::digest::Digest;

const SCHEMA_KEY: &[u8] = b"schema_version";
/// The trees of format 1 that format 2 replaces.
const V1_TREES: [&str; 6] = [
    "manifests",
    "blobs",
    "blob_data",
    "links",
    "referrers",
    "access",
];

/// A format 1 blob record.
#[derive(Deserialize)]
struct V1Blob {
    size: u64,
    inline: bool,
    stored_at_ms: u64,
}

/// Checks the format and converts an older one; whether it converted.
pub(super) fn to_current(meta: &Meta, files: &Files) -> Result<bool, StoreError> {
    let trees = meta.trees()?;
    let found = match trees.db.get(SCHEMA_KEY)? {
        None => {
            meta.wrote(
                trees
                    .db
                    .insert(SCHEMA_KEY, SCHEMA_VERSION.to_string().as_bytes()),
            )?;
            return Ok(false);
        }
        Some(raw) => std::str::from_utf8(&raw)
            .ok()
            .and_then(|s| s.parse::<u32>().ok())
            .ok_or_else(|| StoreError::Corrupt {
                key: "schema_version".into(),
                reason: "not a number".into(),
            })?,
    };
    if found > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew {
            found,
            supported: SCHEMA_VERSION,
        });
    }
    let converted = found < SCHEMA_VERSION;
    if converted {
        tracing::info!(
            from = found,
            to = SCHEMA_VERSION,
            "converting the data directory to the current format"
        );
        from_v1(meta, &trees, files)?;
        meta.flush()?;
        meta.wrote(
            trees
                .db
                .insert(SCHEMA_KEY, SCHEMA_VERSION.to_string().as_bytes()),
        )?;
        meta.flush()?;
    }
    for name in V1_TREES {
        if trees.db.has_tree(name) {
            meta.wrote(trees.db.drop_tree(name))?;
        }
    }
    Ok(converted)
}

fn from_v1(meta: &Meta, trees: &Trees, files: &Files) -> Result<(), StoreError> {
    let db = &trees.db;
    let access = db.open_tree("access")?;
    let last_use = |prefix: &str, digest: &str| -> Result<Option<u64>, StoreError> {
        Ok(access
            .get(format!("{prefix}{digest}"))?
            .and_then(|raw| raw.as_ref().try_into().ok().map(u64::from_be_bytes)))
    };
    let record = |kind: Kind,
                  digest: &Digest,
                  size: u64,
                  disk: u64,
                  stored: u64,
                  used: Option<u64>,
                  media_type: &str| {
        let record = ObjectRecord {
            size,
            disk,
            stored_at_ms: stored,
            used_at_ms: used.unwrap_or(stored),
            media_type: media_type.to_owned(),
        };
        meta.wrote(
            trees
                .objects
                .insert(keys::object(kind, digest), record.encode()),
        )?;
        meta.wrote(
            trees
                .lru
                .insert(keys::lru(record.used_at_ms, kind, digest), []),
        )?;
        Ok::<(), StoreError>(())
    };
    let now = now_ms();
    for entry in db.open_tree("manifests")?.iter() {
        let (key, raw) = entry?;
        let Some(digest) = std::str::from_utf8(&key)
            .ok()
            .and_then(|k| k.parse::<Digest>().ok())
        else {
            continue;
        };
        let Some(split) = raw.iter().position(|b| *b == b'\n') else {
            continue;
        };
        let media_type = String::from_utf8_lossy(&raw[..split]).into_owned();
        let bytes = &raw[split + 1..];
        let disk = files
            .write_small(Kind::Manifest, &digest, bytes)
            .map_err(io_err(format!("cannot write manifest {digest}")))?;
        let used = last_use("m:", &digest.to_string())?;
        record(
            Kind::Manifest,
            &digest,
            bytes.len() as u64,
            disk,
            now,
            used,
            &media_type,
        )?;
    }
    let blob_data = db.open_tree("blob_data")?;
    for entry in db.open_tree("blobs")?.iter() {
        let (key, raw) = entry?;
        let (Some(digest), Ok(old)) = (
            std::str::from_utf8(&key)
                .ok()
                .and_then(|k| k.parse::<Digest>().ok()),
            serde_json::from_slice::<V1Blob>(&raw),
        ) else {
            continue;
        };
        let disk = if old.inline {
            let Some(bytes) = blob_data.get(&key)? else {
                continue;
            };
            let temp = files.temp().map_err(io_err("cannot create a temp file"))?;
            std::io::Write::write_all(&mut &**temp.file(), &bytes)
                .map_err(io_err(format!("cannot write blob {digest}")))?;
            files
                .commit(temp, Kind::Blob, &digest)
                .map_err(io_err(format!("cannot commit blob {digest}")))?
        } else {
            match std::fs::metadata(files.path_of(Kind::Blob, &digest)) {
                Ok(m) if m.len() == old.size => super::files::disk_bytes(&m),
                _ => continue,
            }
        };
        let used = last_use("b:", &digest.to_string())?;
        record(
            Kind::Blob,
            &digest,
            old.size,
            disk,
            old.stored_at_ms,
            used,
            "",
        )?;
    }
    rekey(meta, &db.open_tree("links")?, &trees.links)?;
    rekey(meta, &db.open_tree("referrers")?, &trees.referrers)?;
    for entry in trees.tags.iter() {
        let (key, raw) = entry?;
        let (Some((upstream, repo, tag)), Ok(mapping)) = (
            keys::split_scoped(&key),
            serde_json::from_slice::<TagMapping>(&raw),
        ) else {
            continue;
        };
        if let Ok(digest) = mapping.digest.parse::<Digest>() {
            meta.wrote(
                trees
                    .tag_refs
                    .insert(keys::tag_ref(&digest, &upstream, &repo, &tag), []),
            )?;
        }
    }
    Ok(())
}

/// `upstream \0 repository \0 digest` keys to digest-first ones, values kept.
fn rekey(meta: &Meta, from: &kv::Tree, to: &kv::Tree) -> Result<(), StoreError> {
    for entry in from.iter() {
        let (key, value) = entry?;
        let Some((upstream, repo, digest)) = keys::split_scoped(&key) else {
            continue;
        };
        let Ok(digest) = digest.parse::<Digest>() else {
            continue;
        };
        meta.wrote(to.insert(keys::by_digest(&digest, &upstream, &repo), value))?;
    }
    Ok(())
}
