//! Which tags a sync rule selects: globs, a regular expression and a
//! semantic-version range, all of which a tag must pass, then at most
//! `max_tags` of them, newest first.
//!
//! Image tags are rarely strict semantic versions (`v1.2`, `1`, `1.2.3-rc.1`),
//! so a tag is read as a version leniently: a leading `v` is dropped and
//! missing minor and patch numbers count as zero. Ranges follow the `semver`
//! crate's (Cargo's) rules, written with spaces or commas between
//! comparators (`>=1.2 <2`, `>=1.2, <2`) and `||` between alternatives; as
//! in every semver implementation, a pre-release (`1.3.0-rc.1`) matches only
//! a range that names a pre-release of the same version.
//!
//! Referrers-schema tags (`sha256-<hex>`) are never selected: they list an
//! image's signatures and SBOMs, which a rule syncs through `referrers`.

use std::fmt;

use globset::{Glob, GlobSet, GlobSetBuilder};
use regex::Regex;
use semver::{Version, VersionReq};

/// The compiled tag filter of one rule. Every part that is set must match.
#[derive(Clone, Default)]
pub struct TagFilter {
    globs: Option<(Vec<String>, GlobSet)>,
    /// The expression as written, and anchored.
    regex: Option<(String, Regex)>,
    range: Option<Range>,
}

/// A semantic-version range: alternatives (`||`), each a `VersionReq`.
#[derive(Clone)]
struct Range {
    text: String,
    alternatives: Vec<VersionReq>,
}

impl fmt::Debug for TagFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TagFilter")
            .field("tags", &self.globs.as_ref().map(|(text, _)| text))
            .field("tag_regex", &self.regex.as_ref().map(|(text, _)| text))
            .field("semver", &self.range.as_ref().map(|r| &r.text))
            .finish()
    }
}

/// As the configuration writes it: `tags`, `tag_regex`, `semver`, each
/// only when set (a rule's fields, flattened into it).
impl serde::Serialize for TagFilter {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(None)?;
        if let Some((globs, _)) = &self.globs {
            map.serialize_entry("tags", globs)?;
        }
        if let Some((text, _)) = &self.regex {
            map.serialize_entry("tag_regex", text)?;
        }
        if let Some(range) = &self.range {
            map.serialize_entry("semver", &range.text)?;
        }
        map.end()
    }
}

impl TagFilter {
    /// Tag globs (`*` and `?` match any characters of a tag); any of them
    /// may match.
    pub fn with_globs(mut self, globs: &[String]) -> Result<Self, String> {
        let mut builder = GlobSetBuilder::new();
        for g in globs {
            let glob = Glob::new(g).map_err(|e| format!("{g:?} is not a valid glob: {e}"))?;
            builder.add(glob);
        }
        let set = builder.build().map_err(|e| e.to_string())?;
        self.globs = Some((globs.to_vec(), set));
        Ok(self)
    }

    /// A regular expression the whole tag must match (it is anchored).
    pub fn with_regex(mut self, pattern: &str) -> Result<Self, String> {
        let anchored = format!("^(?:{pattern})$");
        let regex = Regex::new(&anchored)
            .map_err(|e| format!("{pattern:?} is not a regular expression: {e}"))?;
        self.regex = Some((pattern.to_owned(), regex));
        Ok(self)
    }

    /// A semantic-version range such as `>=1.2 <2` or `~1.4 || ^2`.
    pub fn with_range(mut self, text: &str) -> Result<Self, String> {
        let alternatives = text
            .split("||")
            .map(parse_requirement)
            .collect::<Result<Vec<_>, _>>()?;
        self.range = Some(Range {
            text: text.to_owned(),
            alternatives,
        });
        Ok(self)
    }

    /// Whether the rule has a version range (and so orders by version).
    pub fn has_range(&self) -> bool {
        self.range.is_some()
    }

    /// Whether `tag` passes every part of the filter.
    pub fn matches(&self, tag: &str) -> bool {
        if is_referrers_tag(tag) {
            return false;
        }
        if let Some((_, set)) = &self.globs {
            if !set.is_match(tag) {
                return false;
            }
        }
        if let Some((_, regex)) = &self.regex {
            if !regex.is_match(tag) {
                return false;
            }
        }
        match &self.range {
            Some(range) => version_of(tag)
                .is_some_and(|v| range.alternatives.iter().any(|req| req.matches(&v))),
            None => true,
        }
    }

    /// The tags of `listed` (sorted, as berth keeps tag lists) that pass,
    /// at most `max` of them: the newest by version when every passing tag
    /// reads as a version, else the last ones in lexical order.
    pub fn select(&self, listed: &[String], max: Option<usize>) -> Vec<String> {
        let mut chosen: Vec<String> = listed.iter().filter(|t| self.matches(t)).cloned().collect();
        chosen.dedup();
        let Some(max) = max.filter(|m| *m < chosen.len()) else {
            return chosen;
        };
        let versions: Option<Vec<Version>> = chosen.iter().map(|t| version_of(t)).collect();
        match versions {
            Some(versions) => {
                let mut by_version: Vec<(Version, String)> =
                    versions.into_iter().zip(chosen).collect();
                // Newest first; equal versions (`1.2` and `v1.2`) by name.
                by_version.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
                by_version.truncate(max);
                by_version.into_iter().map(|(_, t)| t).collect()
            }
            None => chosen.split_off(chosen.len() - max),
        }
    }
}

/// One alternative of a range: comparators separated by spaces or commas,
/// an operator standing apart from its version (`>= 1.2`) joined to it.
fn parse_requirement(text: &str) -> Result<VersionReq, String> {
    let mut comparators: Vec<String> = Vec::new();
    let mut operator = String::new();
    for token in text.split([',', ' ', '\t']).filter(|t| !t.is_empty()) {
        if token.chars().all(|c| "<>=~^".contains(c)) {
            operator.push_str(token);
            continue;
        }
        comparators.push(format!(
            "{operator}{}",
            token.trim_start_matches(['v', 'V'])
        ));
        operator.clear();
    }
    if !operator.is_empty() {
        return Err(format!("{text:?} ends with {operator:?} and no version"));
    }
    if comparators.is_empty() {
        return Err(format!("{text:?} has no version range (e.g. \">=1.2 <2\")"));
    }
    let joined = comparators.join(", ");
    VersionReq::parse(&joined).map_err(|e| {
        format!("{text:?} is not a version range (e.g. \">=1.2 <2\", \"~1.4 || ^2\"): {e}")
    })
}

/// A tag read as a version: `1.2.3`, `v1.2`, `1` (missing parts are zero),
/// with any pre-release or build suffix (`1.2.3-rc.1`, `1.2+build.5`).
pub fn version_of(tag: &str) -> Option<Version> {
    let tag = tag.strip_prefix(['v', 'V']).unwrap_or(tag);
    let split = tag.find(['-', '+']).unwrap_or(tag.len());
    let (core, suffix) = tag.split_at(split);
    let parts: Vec<&str> = core.split('.').collect();
    if parts.is_empty()
        || parts.len() > 3
        || parts
            .iter()
            .any(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()))
    {
        return None;
    }
    let mut full = parts.join(".");
    for _ in parts.len()..3 {
        full.push_str(".0");
    }
    full.push_str(suffix);
    Version::parse(&full).ok()
}

/// `sha256-<64 hex>`: an image's referrers list under the tag schema.
fn is_referrers_tag(tag: &str) -> bool {
    tag.strip_prefix("sha256-")
        .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn range(text: &str) -> TagFilter {
        TagFilter::default()
            .with_range(text)
            .expect("a valid range")
    }

    #[test]
    fn tags_read_as_versions_leniently() {
        assert_eq!(version_of("1.2.3"), Some(Version::new(1, 2, 3)));
        assert_eq!(version_of("v1.2"), Some(Version::new(1, 2, 0)));
        assert_eq!(version_of("1"), Some(Version::new(1, 0, 0)));
        assert!(version_of("1.2.3-rc.1").is_some_and(|v| !v.pre.is_empty()));
        for not in ["latest", "1.2.3.4", "1..2", "v", "", "sha256-ab", "1.x"] {
            assert_eq!(version_of(not), None, "{not}");
        }
    }

    #[test]
    fn ranges_take_spaces_commas_and_alternatives() {
        let f = range(">=1.0 <2");
        for yes in ["1.0", "1.0.0", "v1.9.9", "1"] {
            assert!(f.matches(yes), "{yes}");
        }
        for no in ["0.9", "2.0", "2", "latest", "1.5.0-rc.1"] {
            assert!(!f.matches(no), "{no}");
        }
        assert!(range(">= 1.2, < 2").matches("1.3"));
        let either = range("~1.4 || >=3");
        assert!(either.matches("1.4.7") && either.matches("3.1") && !either.matches("2.0"));
        for bad in ["", ">=", "banana", ">=1.2 <", "1.2 - 1.4"] {
            assert!(TagFilter::default().with_range(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn every_part_must_match_and_referrers_tags_never_do() {
        let f = TagFilter::default()
            .with_globs(&tags(&["1.*", "2.*"]))
            .and_then(|f| f.with_regex(r"\d+\.\d+"))
            .expect("valid");
        assert!(f.matches("1.4"));
        assert!(!f.matches("1.4-alpine"), "the regex is anchored");
        assert!(!f.matches("3.0"));
        let all = TagFilter::default()
            .with_globs(&tags(&["*"]))
            .expect("valid");
        assert!(all.matches("latest"));
        assert!(!all.matches(&format!("sha256-{}", "a".repeat(64))));
        assert!(TagFilter::default().with_regex("(").is_err());
        assert!(TagFilter::default().with_globs(&tags(&["["])).is_err());
    }

    #[test]
    fn max_tags_keeps_the_newest() {
        let listed = tags(&["1.10", "1.2", "1.9", "latest", "0.1"]);
        let f = range(">=1 <2");
        assert_eq!(f.select(&listed, None), tags(&["1.10", "1.2", "1.9"]));
        assert_eq!(f.select(&listed, Some(2)), tags(&["1.10", "1.9"]));
        // Not every tag is a version: the last ones in the list.
        let any = TagFilter::default();
        assert_eq!(any.select(&listed, Some(2)), tags(&["latest", "0.1"]));
        assert_eq!(any.select(&listed, Some(9)).len(), 5);
    }
}
