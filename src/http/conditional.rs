//! What a client's request headers ask beyond the resource itself:
//! `If-None-Match` (answered with `304 Not Modified` when it names what berth
//! would send, or `*`) and `Accept` (so that a client is never handed a
//! manifest type it said it cannot read).
//!
//! Entity tags are read by the `headers` crate (RFC 9110's grammar and its
//! weak comparison, which `If-None-Match` uses); the one form it rightly
//! does not read, a bare digest without quotes that some clients send, is
//! still honoured.

use headers::{ETag, Header as _, IfNoneMatch};
use http::{header, HeaderMap};

use crate::digest::Digest;

/// Whether `If-None-Match` matches the entity tag berth gives `digest`
/// (`"<digest>"`), or is `*`. Weak tags compare by value, as RFC 9110 says
/// for `If-None-Match`; a bare digest without quotes is accepted too.
pub fn none_match(headers: &HeaderMap, digest: &Digest) -> bool {
    // Most requests carry no condition: nothing to build or parse then.
    if !headers.contains_key(header::IF_NONE_MATCH) {
        return false;
    }
    let Ok(ours) = entity_tag(digest).parse::<ETag>() else {
        return false;
    };
    // Each field line on its own: one a client garbled does not hide the
    // entity tags of the others (a list over several lines is the same
    // list as one line with commas).
    let matched = headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|line| IfNoneMatch::decode(&mut std::iter::once(line)).ok())
        .any(|condition| !condition.precondition_passes(&ours));
    matched || names_bare_digest(headers, digest)
}

/// The entity tag berth gives content: its digest, quoted.
pub fn entity_tag(digest: &Digest) -> String {
    let mut tag = String::with_capacity(digest.text_len() + 2);
    tag.push('"');
    digest.push_to(&mut tag);
    tag.push('"');
    tag
}

/// Whether an `If-None-Match` list holds `digest` itself, unquoted (not an
/// entity tag, so the typed header skips it).
fn names_bare_digest(headers: &HeaderMap, digest: &Digest) -> bool {
    let ours = digest.to_string();
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|tag| tag.trim())
        .any(|tag| tag.strip_prefix("W/").unwrap_or(tag) == ours)
}

/// Whether the client's `Accept` headers admit `media_type`. No `Accept`
/// at all admits anything.
pub fn accepts(headers: &HeaderMap, media_type: &str) -> bool {
    let mut ranges = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|r| r.split(';').next().unwrap_or("").trim())
        .filter(|r| !r.is_empty())
        .peekable();
    if ranges.peek().is_none() {
        return true;
    }
    let major = media_type.split('/').next().unwrap_or("");
    ranges.any(|range| match range.split_once('/') {
        Some(("*", "*")) => true,
        Some((m, "*")) => m.eq_ignore_ascii_case(major),
        _ => range.eq_ignore_ascii_case(media_type),
    })
}

/// All of the client's `Accept` headers as one value, to ask the upstream
/// for what this client can read.
pub fn accept_value(headers: &HeaderMap) -> Option<http::HeaderValue> {
    let joined: Vec<&str> = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    http::HeaderValue::from_str(&joined.join(", ")).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Algorithm;

    fn headers(name: header::HeaderName, values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(name.clone(), v.parse().expect("header value"));
        }
        h
    }

    #[test]
    fn if_none_match_forms() {
        let d = Algorithm::Sha256.digest(b"x");
        let quoted = format!("\"{d}\"");
        assert!(none_match(&headers(header::IF_NONE_MATCH, &[&quoted]), &d));
        assert!(none_match(&headers(header::IF_NONE_MATCH, &["*"]), &d));
        assert!(none_match(
            &headers(header::IF_NONE_MATCH, &[&format!("\"a\", W/{quoted}")]),
            &d
        ));
        assert!(none_match(
            &headers(header::IF_NONE_MATCH, &["\"a\"", &quoted]),
            &d
        ));
        assert!(!none_match(
            &headers(header::IF_NONE_MATCH, &["\"sha256:00\""]),
            &d
        ));
        assert!(!none_match(&HeaderMap::new(), &d));
        assert!(none_match(
            &headers(header::IF_NONE_MATCH, &[&d.to_string()]),
            &d
        ));
        assert!(none_match(
            &headers(header::IF_NONE_MATCH, &[&format!("\"x\", {d}")]),
            &d
        ));
        assert!(!none_match(
            &headers(header::IF_NONE_MATCH, &["\"unterminated"]),
            &d
        ));
    }

    #[test]
    fn accept_forms() {
        let index = "application/vnd.oci.image.index.v1+json";
        let v2 = "application/vnd.docker.distribution.manifest.v2+json";
        assert!(accepts(&HeaderMap::new(), index));
        assert!(accepts(&headers(header::ACCEPT, &[v2, index]), index));
        assert!(accepts(
            &headers(header::ACCEPT, &[&format!("{v2}, {index};q=0.5")]),
            index
        ));
        assert!(!accepts(&headers(header::ACCEPT, &[v2]), index));
        assert!(accepts(&headers(header::ACCEPT, &["*/*"]), index));
        assert!(accepts(&headers(header::ACCEPT, &["application/*"]), index));
        assert_eq!(
            accept_value(&headers(header::ACCEPT, &[v2, index])).expect("value"),
            format!("{v2}, {index}").as_str()
        );
    }
}
