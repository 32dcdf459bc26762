//! Digests from text (paths, headers, documents) and from store keys: a (see `checks::digest`).
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::digest(data));
