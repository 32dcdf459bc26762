//! Sync rules against a real upstream (Debian's docker-registry): content
//! kept fresh ahead of need, with no client asking for it.
//!
//! - [`fresh`]: a rule's releases cached after its first run and within a
//!   run of a push, nothing else fetched, all of it served once the
//!   upstream is gone;
//! - [`failures`]: a rule whose upstream is down backs off while others
//!   run; client pulls during a long sync;
//! - [`pins`]: what a rule selects survives eviction;
//! - [`once`]: `berth sync --once`, then `berth export --since`; `du`;
//!   refusals;
//! - [`support`]: releases, the rule, metrics and pulls.

#[path = "../common/mod.rs"]
mod common;
#[allow(dead_code)]
#[path = "../referrers/support.rs"]
mod referrers;
#[allow(dead_code)]
#[path = "../airgap/support.rs"]
mod site;

mod failures;
mod fresh;
mod once;
mod pins;
mod support;
