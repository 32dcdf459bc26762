//! What each fuzz target checks of one input, in one place: the
//! cargo-fuzz targets (`fuzz_targets/`) call these on what libFuzzer
//! generates, and berth's test suite (`tests/fuzz_inputs.rs`) calls them on
//! every seed and on every input that once failed (`regressions/`), so a
//! crash found once stays fixed without a fuzzer in CI.
//!
//! Each check panics on a failure: a crash, or a property broken.

#![allow(dead_code)]

use std::sync::OnceLock;

use berth::bundle::import::import;
use berth::bundle::layout;
use berth::config::Config;
use berth::digest::{Algorithm, Digest};
use berth::http::conditional::none_match;
use berth::http::range::{parse, ByteRange};
use berth::manifest::{validate, MediaTypes};
use berth::progress::Progress;
use berth::store::Store;
use berth::upstream::auth::{read_token_answer, Challenge};
use berth::upstream::routing::Upstreams;
use http::{header, HeaderMap, HeaderValue};

const METHODS: [&str; 6] = ["GET", "HEAD", "PUT", "DELETE", "POST", "PATCH"];

/// Route parsing: any method and path a client sends becomes a route or an
/// OCI error, never a panic.
pub fn route(data: &[u8]) {
    let Some((&m, path)) = data.split_first() else {
        return;
    };
    let method: http::Method = METHODS[m as usize % METHODS.len()]
        .parse()
        .expect("a known method");
    let path = String::from_utf8_lossy(path);
    let _ = berth::http::route::route(&method, &path);
}

/// Repository names, tags and references: validated or refused, never a
/// panic; a reference that parses prints back as itself.
pub fn reference(data: &[u8]) {
    let Ok(data) = std::str::from_utf8(data) else {
        return;
    };
    let _ = berth::reference::validate_name(data);
    let _ = berth::reference::validate_tag(data);
    if let Ok(reference) = berth::reference::Reference::parse(data) {
        let printed = reference.to_string();
        let again =
            berth::reference::Reference::parse(&printed).expect("a printed reference parses");
        assert_eq!(again.to_string(), printed);
    }
    let _ = data.parse::<berth::reference::ImageRef>();
}

/// Digests from text (paths, headers, documents) and from store keys: a
/// digest that parses prints back as itself and survives its key form.
pub fn digest(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(digest) = text.parse::<Digest>() {
            assert_eq!(
                digest.to_string().parse::<Digest>().ok(),
                Some(digest.clone())
            );
            let key = digest.to_key();
            let (back, rest) = Digest::from_key(&key).expect("a key reads back");
            assert_eq!(back, digest);
            assert!(rest.is_empty());
        }
    }
    let _ = Digest::from_key(data);
}

/// `Range` headers against blobs of any size: whatever the header, what is
/// sent lies inside the blob.
pub fn range(data: &[u8]) {
    if data.len() < 8 {
        return;
    }
    let (size, header) = data.split_at(8);
    let size = u64::from_le_bytes(size.try_into().expect("8 bytes")) >> (size[0] % 64);
    let header = String::from_utf8_lossy(header);
    match parse(Some(&header), size) {
        ByteRange::Partial { start, end } => {
            assert!(start < end, "{header:?} on {size}: {start}..{end}");
            assert!(end <= size, "{header:?} on {size}: {start}..{end}");
        }
        ByteRange::Full | ByteRange::Unsatisfiable => {}
    }
}

/// `If-None-Match` headers (one or several lines): answered, never a panic;
/// the entity tag berth sends always matches itself.
pub fn if_none_match(data: &[u8]) {
    let digest = Algorithm::Sha256.digest(b"berth");
    let mut headers = HeaderMap::new();
    for line in data.split(|b| *b == b'\n') {
        if let Ok(value) = HeaderValue::from_bytes(line) {
            headers.append(header::IF_NONE_MATCH, value);
        }
    }
    let _ = none_match(&headers, &digest);
    let ours = HeaderValue::from_str(&format!("\"{digest}\"")).expect("an entity tag");
    headers.append(header::IF_NONE_MATCH, ours);
    assert!(none_match(&headers, &digest));
}

/// `Accept` headers reduced to the media types berth knows: whatever a
/// client sends, the set is one of 64, and the `Accept` berth sends for it
/// reads back as the same set.
pub fn accept(data: &[u8]) {
    let mut headers = HeaderMap::new();
    for line in data.split(|b| *b == b'\n') {
        if let Ok(value) = HeaderValue::from_bytes(line) {
            headers.append(header::ACCEPT, value);
        }
    }
    let set = MediaTypes::from_accept(&headers);
    let _ = berth::http::conditional::accepts(&headers, "application/vnd.oci.image.index.v1+json");
    match set.header_value() {
        Some(value) => {
            let mut again = HeaderMap::new();
            again.insert(header::ACCEPT, value);
            assert_eq!(MediaTypes::from_accept(&again), set);
        }
        None => assert!(set.is_empty()),
    }
}

/// `WWW-Authenticate` challenges from an upstream: parsed or not, never a
/// panic, and a parsed scheme is lower case.
pub fn challenge(data: &[u8]) {
    let Ok(data) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(challenge) = Challenge::parse(data) {
        assert_eq!(challenge.scheme, challenge.scheme.to_ascii_lowercase());
        assert!(!challenge.scheme.is_empty());
    }
}

/// Token servers' answers: a token and a lifetime, or a refusal; never a
/// panic, and never a lifetime past a day.
pub fn token_answer(data: &[u8]) {
    if let Ok((token, lifetime)) = read_token_answer(data) {
        assert!(!token.expose().is_empty());
        assert!(lifetime <= std::time::Duration::from_secs(24 * 3600));
    }
}

const TYPES: [Option<&str>; 8] = [
    None,
    Some("application/vnd.oci.image.manifest.v1+json"),
    Some("application/vnd.oci.image.index.v1+json"),
    Some("application/vnd.docker.distribution.manifest.v2+json"),
    Some("application/vnd.docker.distribution.manifest.list.v2+json"),
    Some("application/vnd.docker.distribution.manifest.v1+prettyjws"),
    Some("application/json"),
    Some("application/vnd.example.artifact+json; charset=utf-8"),
];

/// Manifests as an upstream serves them: validated before commit and
/// walked as a graph, neither ever panicking; what validation keeps, the
/// graph reads.
pub fn manifest(data: &[u8]) {
    let Some((&t, bytes)) = data.split_first() else {
        return;
    };
    let content_type = TYPES[t as usize % TYPES.len()];
    let kept = validate::check(content_type, bytes);
    let digest = Algorithm::Sha256.digest(bytes);
    let walked = berth::graph::refs(&digest, bytes);
    if kept.is_ok() {
        assert!(walked.is_ok(), "validated but not walkable: {walked:?}");
    }
}

/// Referrers pages and fallback tag indexes: their descriptors, or none;
/// never a panic, and every descriptor kept names a digest.
pub fn referrers(data: &[u8]) {
    if let Some(descriptors) = berth::referrers::index_descriptors(data) {
        assert!(descriptors.iter().all(|d| d["digest"].is_string()));
    }
}

/// A bundle's `index.json` and `oci-layout`, as a disconnected site reads
/// them from a tar it was handed: read or refused, never a panic.
pub fn bundle_index(data: &[u8]) {
    let _ = layout::check_layout_file(data);
    if let Ok(index) = layout::parse_index(data) {
        let _ = format!("{index:?}");
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = layout::parse_blob_path(text);
    }
}

struct Site {
    _dir: tempfile::TempDir,
    store: Store,
    upstreams: Upstreams,
}

fn site() -> &'static Site {
    static SITE: OnceLock<Site> = OnceLock::new();
    SITE.get_or_init(|| {
        let dir = tempfile::tempdir().expect("a temp dir");
        let config = Config::from_toml(&format!(
            "data_dir = \"{}\"\n[[upstream]]\nname = \"docker.io\"\nurl = \"https://registry-1.docker.io\"\n",
            dir.path().display()
        ))
        .expect("a config");
        let (store, _) = Store::open(&config.data_dir, &config.cache).expect("a store");
        let upstreams = Upstreams::new(&config.upstreams).expect("upstreams");
        Site {
            _dir: dir,
            store,
            upstreams,
        }
    })
}

/// Whole bundles (tar streams) imported into a store: all of it or nothing,
/// never a panic, whatever the tar holds (bad headers, names, sizes, a
/// truncated end, an index that lies).
pub fn bundle_import(data: &[u8]) {
    let site = site();
    let _ = import(&site.store, &site.upstreams, data, &Progress::hidden());
}
