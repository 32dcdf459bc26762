//! Repository names, tags and references: validated or refused, never a (see `checks::reference`).
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::reference(data));
