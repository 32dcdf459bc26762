//! The shared tier (`[storage.s3]`) against a real S3 store (Garage, one
//! node or three with replication factor 3), a real upstream (Debian's
//! docker-registry) and a real client (skopeo): several berths, each on an
//! empty data directory of its own, sharing one bucket.
//!
//! - [`replicas`]: what one replica pulled, another serves with the
//!   upstream gone, byte for byte, then from its near cache without asking
//!   the store again; a client's `Range` on a blob only the store holds;
//! - [`outages`]: the store stopped (near cache, pass-through, readiness,
//!   metrics), and one node of three stopped;
//! - [`crash`]: a replica killed in the middle of a multipart upload;
//! - [`audit`]: `berth du --shared` and `berth check --shared [--repair]`,
//!   and a spoiled object never served whole;
//! - [`startup`]: what a replica does with a wrong key, a missing bucket
//!   and a store it cannot reach yet;
//! - [`support`]: configuration, object keys, metrics, pulls.

#[path = "../common/mod.rs"]
mod common;

mod audit;
mod crash;
mod outages;
mod replicas;
mod startup;
mod support;
