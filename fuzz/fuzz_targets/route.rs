//! Route parsing: any method and path a client sends becomes a route or an (see `checks::route`).
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::route(data));
