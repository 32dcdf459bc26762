//! Bundles: moving a cache's content to a site without network access.
//!
//! `export` writes what a cache holds (all of it, some images, or what
//! changed since a time) as an OCI image layout in a tar, streaming each
//! blob from the store into the archive, so memory does not grow with the
//! bundle. `import` reads such a tar on the other side, verifies every blob
//! and manifest against its digest and the whole graph for completeness
//! while it stages blobs in the store's `tmp/`, and only then commits
//! content, repository links, tag mappings and referrers lists. A bundle
//! that is corrupt, truncated or incomplete is refused whole.
//!
//! The format (`layout`) is plain enough for other tools: `skopeo copy
//! oci-archive:bundle.tar:<upstream>/<repo>:<tag> ...` reads an image out
//! of it.

pub mod export;
pub mod import;
pub mod layout;
mod select;
mod verify;

use crate::store::StoreError;
use crate::upstream::routing::RoutingError;

pub use self::select::since_ms;

/// Why a bundle could not be written or was refused.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// Something in the bundle is not what it claims; nothing was imported.
    #[error("the bundle is refused and nothing was imported: {entry}: {reason}")]
    Refused { entry: String, reason: String },
    #[error("{0} is not in the cache; warm it first")]
    NotCached(String),
    /// Content in the cache does not match its digest.
    #[error("{0} in the cache does not match its digest; run `berth check --repair`, then warm it again")]
    CacheCorrupt(String),
    #[error(transparent)]
    Routing(#[from] RoutingError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Usage(String),
}

impl BundleError {
    fn refused(entry: impl Into<String>, reason: impl Into<String>) -> Self {
        BundleError::Refused {
            entry: printable(&entry.into()),
            reason: printable(&reason.into()),
        }
    }

    fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BundleError {
        let what = what.into();
        move |source| BundleError::Io { what, source }
    }
}

/// What a damaged bundle put in a message (a name, bytes a tar reader
/// quoted), fit for a terminal: anything but printable ASCII (which every
/// name berth writes is) shown as `?`, and at most [`MAX_QUOTED`]
/// characters.
fn printable(text: &str) -> String {
    let mut out: String = text
        .chars()
        .take(MAX_QUOTED)
        .map(|c| {
            if !(c == ' ' || c.is_ascii_graphic()) {
                '?'
            } else {
                c
            }
        })
        .collect();
    if text.chars().nth(MAX_QUOTED).is_some() {
        out.push('…');
    }
    out
}

/// The longest text from a bundle repeated in a message.
const MAX_QUOTED: usize = 160;
