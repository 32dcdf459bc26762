//! Manifests as an upstream serves them: validated before commit and (see `checks::manifest`).
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::manifest(data));
