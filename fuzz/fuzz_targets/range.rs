//! `Range` headers against blobs of any size: whatever the header, what is (see `checks::range`).
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::range(data));
