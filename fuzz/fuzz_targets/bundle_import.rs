//! Whole bundles (tar streams) imported into a store: all of it or nothing, (see `checks::bundle_import`).
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::bundle_import(data));
