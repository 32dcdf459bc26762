//! Referrers pages and fallback tag indexes: their descriptors, or none; (see `checks::referrers`).
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::referrers(data));
