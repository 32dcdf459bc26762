//! A client's `Accept`, reduced to the manifest media types berth knows.
//!
//! Whatever a client sends (one type, twenty, or 300 KB of them), what berth
//! keeps and keys on is a set of at most six known types: so that single
//! flight and the memory of upstream answers merge every client that wants
//! the same thing, and no client can grow a map by varying its header.

use http::{header, HeaderMap, HeaderValue};

use super::{
    DOCKER_MANIFEST_LIST, DOCKER_MANIFEST_V1, DOCKER_MANIFEST_V1_SIGNED, DOCKER_MANIFEST_V2,
    OCI_INDEX, OCI_MANIFEST,
};

/// The manifest media types berth knows, in the order it prefers them.
const KNOWN: [&str; 6] = [
    OCI_INDEX,
    OCI_MANIFEST,
    DOCKER_MANIFEST_LIST,
    DOCKER_MANIFEST_V2,
    DOCKER_MANIFEST_V1_SIGNED,
    DOCKER_MANIFEST_V1,
];

/// A set of known manifest media types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MediaTypes(u8);

impl MediaTypes {
    /// What berth asks for on its own: every image type it serves (the
    /// schema 1 types only ever for a client that asks for them).
    pub const SERVED: MediaTypes = MediaTypes(0b1111);
    const ALL: MediaTypes = MediaTypes(0b11_1111);

    /// The known types a client's `Accept` headers admit. A wildcard admits
    /// them all; types berth does not know are dropped.
    pub fn from_accept(headers: &HeaderMap) -> MediaTypes {
        let mut set = 0u8;
        let ranges = headers
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','));
        for range in ranges {
            let range = range.split(';').next().unwrap_or("").trim();
            if range == "*/*" || range.eq_ignore_ascii_case("application/*") {
                return MediaTypes::ALL;
            }
            if let Some(i) = KNOWN.iter().position(|k| k.eq_ignore_ascii_case(range)) {
                set |= 1 << i;
            }
        }
        MediaTypes(set)
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn contains(self, media_type: &str) -> bool {
        KNOWN
            .iter()
            .position(|k| *k == media_type)
            .is_some_and(|i| self.0 & (1 << i) != 0)
    }

    /// The `Accept` berth sends upstream for this set; `None` for the empty
    /// set (the upstream then answers as it would a client that named
    /// nothing it knows).
    pub fn header_value(self) -> Option<HeaderValue> {
        let joined: Vec<&str> = KNOWN
            .iter()
            .enumerate()
            .filter(|(i, _)| self.0 & (1 << i) != 0)
            .map(|(_, k)| *k)
            .collect();
        if joined.is_empty() {
            return None;
        }
        HeaderValue::from_str(&joined.join(", ")).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(header::ACCEPT, v.parse().expect("header value"));
        }
        h
    }

    #[test]
    fn known_types_are_kept_and_others_dropped() {
        let set = MediaTypes::from_accept(&accept(&[
            &format!("{DOCKER_MANIFEST_V2};q=0.9, application/x-unknown"),
            OCI_INDEX,
        ]));
        assert!(set.contains(DOCKER_MANIFEST_V2));
        assert!(set.contains(OCI_INDEX));
        assert!(!set.contains(OCI_MANIFEST));
        assert_eq!(
            set.header_value().expect("value"),
            format!("{OCI_INDEX}, {DOCKER_MANIFEST_V2}").as_str()
        );
    }

    #[test]
    fn wildcards_admit_everything_and_nothing_known_is_empty() {
        assert_eq!(MediaTypes::from_accept(&accept(&["*/*"])), MediaTypes::ALL);
        let none = MediaTypes::from_accept(&accept(&["text/html"]));
        assert!(none.is_empty());
        assert_eq!(none.header_value(), None);
    }

    #[test]
    fn a_huge_accept_reduces_to_the_same_small_key() {
        let noise: String = (0..10_000)
            .map(|i| format!("application/x-{i}"))
            .collect::<Vec<_>>()
            .join(", ");
        let a = MediaTypes::from_accept(&accept(&[&noise, OCI_MANIFEST]));
        let b = MediaTypes::from_accept(&accept(&[OCI_MANIFEST]));
        assert_eq!(a, b, "one known type, whatever noise surrounds it");
        assert_eq!(std::mem::size_of::<MediaTypes>(), 1);
    }
}
