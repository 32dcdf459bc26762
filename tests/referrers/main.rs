//! berth's referrers support (OCI distribution-spec 1.1): signatures, SBOMs
//! and attestations attached to an image through `subject`, listed through
//! berth whatever the upstream speaks.
//!
//! - [`fallback`]: Debian's docker-registry, which has no referrers API,
//!   holding the referrers tag (`sha256-<hex>`) that oras and cosign push;
//! - [`api`]: an in-process upstream with the API and paginated answers
//!   (tests/common/referrers_upstream.rs);
//! - [`support`]: artifact fixtures and the requests both share.
//!
//! The harness is `tests/common`, as for every other test binary.

#[path = "../common/mod.rs"]
mod common;

mod api;
mod fallback;
mod support;
