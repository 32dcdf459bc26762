//! Token servers' answers: a token and a lifetime, or a refusal; never a (see `checks::token_answer`).
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::token_answer(data));
