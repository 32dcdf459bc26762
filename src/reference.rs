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

/// An image as an operator names it on the command line:
/// `[upstream/]repository[:tag|@digest]`, e.g. `ghcr.io/org/app:1.0`,
/// `library/alpine` (tag `latest`) or `registry.test/app@sha256:...`. The
/// name is routed like a request path (`Upstreams::resolve`), so every form
/// a client may pull by is accepted here too.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageRef {
    pub name: String,
    pub reference: Reference,
}

impl std::str::FromStr for ImageRef {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let (name, reference) = match s.split_once('@') {
            Some((name, digest)) => {
                let digest = digest
                    .parse()
                    .map_err(|e: DigestError| format!("{s}: {e}"))?;
                (name, Reference::Digest(digest))
            }
            // A `:` after the last `/` starts a tag; one before it is a port.
            None => match s.rsplit_once(':') {
                Some((name, tag)) if !tag.contains('/') => {
                    if !validate_tag(tag) {
                        return Err(format!("{s}: {tag:?} is not a valid tag"));
                    }
                    (name, Reference::Tag(tag.to_owned()))
                }
                _ => (s, Reference::Tag("latest".to_owned())),
            },
        };
        if name.is_empty() || name.starts_with('/') || name.ends_with('/') {
            return Err(format!("{s}: no repository name"));
        }
        Ok(ImageRef {
            name: name.to_owned(),
            reference,
        })
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.reference {
            Reference::Tag(t) => write!(f, "{}:{t}", self.name),
            Reference::Digest(d) => write!(f, "{}@{d}", self.name),
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

    #[test]
    fn image_refs_name_a_tag_or_a_digest() {
        let r: ImageRef = "ghcr.io/org/app:1.0".parse().expect("valid");
        assert_eq!(r.name, "ghcr.io/org/app");
        assert_eq!(r.reference, Reference::Tag("1.0".into()));
        let r: ImageRef = "registry.internal:5000/app".parse().expect("valid");
        assert_eq!(r.name, "registry.internal:5000/app");
        assert_eq!(r.reference, Reference::Tag("latest".into()));
        let digest = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let r: ImageRef = format!("alpine@{digest}").parse().expect("valid");
        assert_eq!(r.to_string(), format!("alpine@{digest}"));
        assert!("app:bad tag".parse::<ImageRef>().is_err());
        assert!("app@sha256:00".parse::<ImageRef>().is_err());
        assert!(":1.0".parse::<ImageRef>().is_err());
    }
}
