//! `Accept` headers reduced to the media types berth knows: whatever a (see `checks::accept`).
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::accept(data));
