//! Air-gapped sites: `berth warm` on the connected side, `berth export` to a
//! bundle, `berth import` on the disconnected side, and pulls there with
//! `offline = true` and no upstream at all.
//!
//! - [`round_trip`]: real content from Debian's docker-registry, through
//!   every command as an operator runs them (the built binary), to skopeo
//!   pulls from the offline berth; the bundle read by skopeo directly;
//! - [`refusals`]: flipped and truncated bundles refused with nothing
//!   imported; commands refused on a data directory a berth is serving;
//! - [`offline_referrers`]: what an offline berth says of referrers, and
//!   how a bundle names the referrers it did not bring;
//! - [`support`]: the bundle tooling they share.

#[path = "../common/mod.rs"]
mod common;
#[allow(dead_code)]
#[path = "../referrers/support.rs"]
mod referrers;

mod offline_referrers;
mod refusals;
mod round_trip;
mod support;
