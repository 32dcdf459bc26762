//! A bundle's `index.json` and `oci-layout`, as a disconnected site reads (see `checks::bundle_index`).
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::bundle_index(data));
