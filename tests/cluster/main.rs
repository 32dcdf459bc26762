//! A berth cluster (issue 16): three replicas sharing one bucket (a real
//! Garage) and coordinating through a real Redis, in front of a real
//! upstream (Debian's docker-registry, its access log counting requests)
//! or, for bodies that must take a while, the in-process upstream
//! throttled. Every byte a client gets is checked against its digest.
//!
//! - [`storm`]: 32 clients on three replicas pull one missing blob: one
//!   upstream GET, and the replicas that did not fetch it stream it live;
//! - [`takeover`]: the replica filling a blob is SIGKILLed mid-fill;
//! - [`outage`]: Redis stopped during a cold storm;
//! - [`tags`]: a stale tag pulled through every replica at once;
//! - [`budget`]: the bucket's own budget, kept by one replica at a time;
//! - [`peer`]: the peer endpoint answers the cluster only, on its own
//!   listener;
//! - [`readme`]: three replicas started from the README's configuration,
//!   against a Redis that requires a password;
//! - [`support`]: the cluster harness, clients, leases in Redis.
//!
//! Each test has the machine to itself (`.config/nextest.toml`): three
//! berths, Garage and Redis apiece.

#[path = "../common/mod.rs"]
mod common;

mod budget;
mod outage;
mod peer;
mod readme;
mod storm;
mod support;
mod tags;
mod takeover;
