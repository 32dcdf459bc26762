//! The fuzz targets' checks (`fuzz/checks.rs`) on every seed (`fuzz/seeds/`)
//! and on every input a fuzzer once found failing (`fuzz/regressions/`):
//! what a fuzzer found stays fixed, and the seeds stay meaningful, with no
//! fuzzer in the test run. `fuzz/run` is what runs the fuzzers themselves.

#[path = "../fuzz/checks.rs"]
mod checks;

use std::path::Path;

/// Runs `check` on every input kept for `target`; panics naming the file
/// that fails. The seeds must exist: a target without any would replay
/// nothing.
fn replay(target: &str, check: fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut replayed = 0;
    for kind in ["seeds", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(kind).join(target)) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let outcome = std::panic::catch_unwind(|| check(&bytes));
            assert!(
                outcome.is_ok(),
                "{target}: {} fails its check",
                path.display()
            );
            replayed += 1;
        }
    }
    assert!(replayed > 0, "no seeds for the fuzz target {target}");
}

#[test]
fn route() {
    replay("route", checks::route);
}

#[test]
fn reference() {
    replay("reference", checks::reference);
}

#[test]
fn digest() {
    replay("digest", checks::digest);
}

#[test]
fn range() {
    replay("range", checks::range);
}

#[test]
fn if_none_match() {
    replay("if_none_match", checks::if_none_match);
}

#[test]
fn accept() {
    replay("accept", checks::accept);
}

#[test]
fn challenge() {
    replay("challenge", checks::challenge);
}

#[test]
fn token_answer() {
    replay("token_answer", checks::token_answer);
}

#[test]
fn manifest() {
    replay("manifest", checks::manifest);
}

#[test]
fn referrers() {
    replay("referrers", checks::referrers);
}

#[test]
fn bundle_index() {
    replay("bundle_index", checks::bundle_index);
}

#[test]
fn bundle_import() {
    replay("bundle_import", checks::bundle_import);
}
