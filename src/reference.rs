//! Repository names and manifest references, validated against the grammar
//! of the distribution spec before anything is looked up or sent upstream.

use std::fmt;

use crate::digest::{Digest, DigestError};

/// Longest repository name accepted; clients limit the whole reference
/// (host, `/`, name) to 255 characters.
const MAX_NAME_LEN: usize = 255;
const MAX_TAG_LEN: usize = 128;

/// Checks `name` against
/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(\/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`.
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(format!(
            "repository name must be 1 to {MAX_NAME_LEN} characters"
        ));
    }
    for component in name.split('/') {
        if !valid_component(component) {
            return Err(format!(
                "repository name component {component:?} must be lowercase letters and digits, separated by '.', '_', '__' or dashes"
            ));
        }
    }
    Ok(())
}

fn valid_component(component: &str) -> bool {
    let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = component.as_bytes();
    let mut i = 0;
    loop {
        // A run of [a-z0-9]+.
        let start = i;
        while i < bytes.len() && alnum(&bytes[i]) {
            i += 1;
        }
        if i == start {
            return false;
        }
        if i == bytes.len() {
            return true;
        }
        // A separator: '.', '_', '__' or '-'+.
        let sep_start = i;
        while i < bytes.len() && !alnum(&bytes[i]) {
            i += 1;
        }
        let separator = &component[sep_start..i];
        let valid = matches!(separator, "." | "_" | "__") || separator.bytes().all(|b| b == b'-');
        if !valid {
            return false;
        }
    }
}

/// Checks a tag against `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
pub fn validate_tag(tag: &str) -> bool {
    let mut bytes = tag.bytes();
    let first_ok = bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_');
    first_ok
        && tag.len() <= MAX_TAG_LEN
        && bytes.all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// What a manifest request names: a mutable tag or an immutable digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Reference {
    Tag(String),
    Digest(Digest),
}

/// Why a manifest reference is unusable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReferenceError {
    Digest(DigestError),
    Tag(String),
}

impl Reference {
    /// A reference with a `:` is a digest; anything else must be a tag.
    pub fn parse(s: &str) -> Result<Reference, ReferenceError> {
        if s.contains(':') {
            return s
                .parse()
                .map(Reference::Digest)
                .map_err(ReferenceError::Digest);
        }
        if validate_tag(s) {
            Ok(Reference::Tag(s.to_owned()))
        } else {
            Err(ReferenceError::Tag(format!(
                "{s:?} is neither a digest nor a valid tag"
            )))
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Tag(t) => f.write_str(t),
            Reference::Digest(d) => d.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_spec_grammar() {
        for ok in [
            "alpine",
            "library/alpine",
            "a/b/c",
            "my-app",
            "my--app",
            "a.b",
            "a_b",
            "a__b",
            "0",
        ] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", "Alpine", "a//b", "/a", "a/", "a___b", "a.-b", "-a", "a-", "a.b.", "a b", "a/../b",
            "a%2fb",
        ] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
        assert!(validate_name(&"a".repeat(256)).is_err());
    }

    #[test]
    fn tags_follow_the_spec_grammar() {
        assert!(validate_tag("latest"));
        assert!(validate_tag("_x.y-Z"));
        assert!(!validate_tag(".hidden"));
        assert!(!validate_tag("-x"));
        assert!(!validate_tag(&"a".repeat(129)));
        assert!(validate_tag(&"a".repeat(128)));
    }

    #[test]
    fn references_are_tags_or_digests() {
        assert_eq!(Reference::parse("1.0"), Ok(Reference::Tag("1.0".into())));
        assert!(matches!(
            Reference::parse(
                "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
            ),
            Ok(Reference::Digest(_))
        ));
        assert!(matches!(
            Reference::parse("sha256:nothex"),
            Err(ReferenceError::Digest(_))
        ));
        assert!(matches!(
            Reference::parse("bad tag"),
            Err(ReferenceError::Tag(_))
        ));
    }
}
