//! `If-None-Match` headers (one or several lines): answered, never a panic; (see `checks::if_none_match`).
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::if_none_match(data));
