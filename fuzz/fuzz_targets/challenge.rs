//! `WWW-Authenticate` challenges from an upstream: parsed or not, never a (see `checks::challenge`).
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::challenge(data));
