//! `[[sync]]` rules: content berth keeps fresh ahead of need. Each names an
//! upstream and repositories, which tags to take, which platforms, whether
//! referrers come along, and how often to look. Everything is checked here,
//! against the configured upstreams too, so a rule that could never run
//! stops start-up with the field named.

use std::collections::HashSet;
use std::time::Duration;

use super::fields::Fields;
use super::upstream::{RepoPatterns, UpstreamConfig};
use crate::graph::Platform;
use crate::sync::filter::TagFilter;

/// How often a rule runs when it does not say.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(3600);
/// The default jitter is this fraction of the interval.
const DEFAULT_JITTER_DIVISOR: u32 = 10;

/// One `[[sync]]` rule. Serialized, it is the rule as `check-config`
/// prints it (and reads back).
#[derive(Debug, Clone, serde::Serialize)]
pub struct SyncRule {
    /// How logs, metrics, `berth du` and `berth sync --rule` name it.
    pub name: String,
    /// The upstream's configured name (an alias is resolved to it).
    pub upstream: String,
    pub repositories: Repositories,
    #[serde(flatten)]
    pub tags: TagFilter,
    /// Only these platforms of a multi-platform image (all when empty).
    #[serde(
        skip_serializing_if = "Vec::is_empty",
        serialize_with = "platform_texts"
    )]
    pub platforms: Vec<Platform>,
    /// Also sync each image's referrers (signatures, SBOMs, attestations).
    pub referrers: bool,
    #[serde(serialize_with = "super::effective::duration")]
    pub interval: Duration,
    /// Each run starts up to this much later than `interval` alone says,
    /// chosen at random, so that rules and replicas spread out.
    #[serde(serialize_with = "super::effective::duration")]
    pub jitter: Duration,
    /// At most this many of the matching tags, newest first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tags: Option<usize>,
}

/// The repositories of a rule: names, and globs matched against the
/// upstream's catalog (`/v2/_catalog`).
#[derive(Debug, Clone, Default)]
pub struct Repositories {
    pub names: Vec<String>,
    pub patterns: Option<RepoPatterns>,
}

/// As one list, names and globs together (as `repositories` is written).
impl serde::Serialize for Repositories {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let globs = self.patterns.as_ref().map(RepoPatterns::patterns);
        serializer.collect_seq(self.names.iter().chain(globs.into_iter().flatten()))
    }
}

fn platform_texts<S: serde::Serializer>(
    value: &[Platform],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(value.iter().map(Platform::to_string))
}

/// Reads every `[[sync]]` entry and checks it against `upstreams`.
pub(super) fn parse_rules(f: &mut Fields, upstreams: &[UpstreamConfig]) -> Vec<SyncRule> {
    let entries = f.tables("sync").unwrap_or_default();
    let mut rules = Vec::new();
    let mut names = HashSet::new();
    for mut entry in entries {
        if let Some(rule) = parse_rule(&mut entry, upstreams) {
            if names.insert(rule.name.clone()) {
                rules.push(rule);
            } else {
                entry.error(
                    "name",
                    format!("another rule is already named {:?}", rule.name),
                );
            }
        }
        f.absorb(entry);
    }
    rules
}

/// One rule; `None` when it is too broken to run (its errors are recorded).
fn parse_rule(f: &mut Fields, upstreams: &[UpstreamConfig]) -> Option<SyncRule> {
    let name = parse_name(f);
    let upstream = parse_upstream(f, upstreams);
    let repositories = parse_repositories(f, upstream);
    let tags = parse_tags(f);
    let platforms = parse_platforms(f);
    let referrers = f.get("referrers").unwrap_or(true);
    let interval = f.positive_duration("interval");
    let interval_ok = interval.is_some() || !f.has_error("interval");
    let interval = interval.unwrap_or(DEFAULT_INTERVAL);
    let jitter = f
        .duration("jitter")
        .unwrap_or(interval / DEFAULT_JITTER_DIVISOR);
    if jitter > interval {
        f.error(
            "jitter",
            format!(
                "must be at most the interval ({})",
                humantime::format_duration(interval)
            ),
        );
    }
    let max_tags: Option<usize> = f.get("max_tags");
    if max_tags == Some(0) {
        f.error(
            "max_tags",
            "must be at least 1 (leave it out for every tag)",
        );
    }
    let complete = interval_ok && jitter <= interval && max_tags != Some(0);
    Some(SyncRule {
        name: name?,
        upstream: upstream?.name.clone(),
        repositories: repositories?,
        tags: tags?,
        platforms: platforms?,
        referrers,
        interval,
        jitter,
        max_tags,
    })
    .filter(|_| complete)
}

fn parse_name(f: &mut Fields) -> Option<String> {
    let name: Option<String> = f.get("name");
    let valid = |n: &str| {
        !n.is_empty()
            && n.len() <= 64
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    };
    match name {
        Some(n) if valid(&n) => Some(n),
        Some(n) => {
            f.error(
                "name",
                format!("{n:?} is not a rule name: 1 to 64 letters, digits, '.', '_' or '-'"),
            );
            None
        }
        None if f.has_error("name") => None,
        None => {
            f.error("name", "every sync rule needs one");
            None
        }
    }
}

/// The rule's upstream, by name or alias; the default one when unnamed.
fn parse_upstream<'a>(
    f: &mut Fields,
    upstreams: &'a [UpstreamConfig],
) -> Option<&'a UpstreamConfig> {
    let named: Option<String> = f.get("upstream");
    let found = match &named {
        Some(host) => {
            let host = host.to_ascii_lowercase();
            upstreams
                .iter()
                .find(|u| u.name == host || u.aliases.contains(&host))
        }
        None => upstreams.iter().find(|u| u.default),
    };
    match (found, named) {
        (Some(up), _) => Some(up),
        (None, Some(host)) => {
            f.error(
                "upstream",
                format!("{host:?} is not a configured upstream (see [[upstream]])"),
            );
            None
        }
        (None, None) if f.has_error("upstream") => None,
        (None, None) => {
            f.error(
                "upstream",
                "name the upstream: there is no default upstream",
            );
            None
        }
    }
}

/// `repository = "..."` or `repositories = [...]`: names, or globs where
/// the upstream lists its repositories.
fn parse_repositories(f: &mut Fields, up: Option<&UpstreamConfig>) -> Option<Repositories> {
    let one: Option<String> = f.get("repository");
    let many: Option<Vec<String>> = f.get("repositories");
    let (key, listed) = match (one, many) {
        (Some(_), Some(_)) => {
            f.error(
                "repositories",
                "set either repository or repositories, not both",
            );
            return None;
        }
        (Some(one), None) => ("repository", vec![one]),
        (None, Some(many)) if !many.is_empty() => ("repositories", many),
        (None, _) => {
            if !f.has_error("repository") && !f.has_error("repositories") {
                f.error(
                    "repositories",
                    "name at least one repository (repository = \"org/app\")",
                );
            }
            return None;
        }
    };
    // Without a usable upstream there is nothing to check them against.
    let up = up?;
    let (globs, names): (Vec<String>, Vec<String>) = listed
        .into_iter()
        .partition(|r| r.contains(['*', '?', '[', '{']));
    let mut problems = Vec::new();
    let names: Vec<String> = names
        .iter()
        .filter_map(|name| match checked_name(up, name) {
            Ok(repo) => Some(repo),
            Err(reason) => {
                problems.push(reason);
                None
            }
        })
        .collect();
    let patterns = match globs.is_empty() {
        true => None,
        false if up.is_docker_hub() => {
            problems.push(format!(
                "{globs:?}: Docker Hub does not list its repositories, so name each one"
            ));
            None
        }
        false => match RepoPatterns::new(&globs) {
            Ok(p) => Some(p),
            Err(reason) => {
                problems.push(reason);
                None
            }
        },
    };
    if !problems.is_empty() {
        f.error(key, problems.join("; "));
        return None;
    }
    Some(Repositories { names, patterns })
}

/// A repository name as berth routes it (Docker Hub's `library/`), valid
/// and allowed by the upstream's `allow` and `deny`.
fn checked_name(up: &UpstreamConfig, name: &str) -> Result<String, String> {
    crate::reference::validate_name(name).map_err(|e| format!("{name:?}: {e}"))?;
    let target = crate::upstream::routing::normalize(up, name);
    crate::upstream::routing::check_filters(up, &target).map_err(|e| e.to_string())?;
    Ok(target)
}

/// The tag filter; every part is checked, each bad one named.
fn parse_tags(f: &mut Fields) -> Option<TagFilter> {
    let globs: Option<Vec<String>> = f.get("tags");
    let regex: Option<String> = f.get("tag_regex");
    let range: Option<String> = f.get("semver");
    let mut filter = Some(TagFilter::default());
    if let Some(globs) = globs {
        filter = add_part(f, "tags", filter, |t| t.with_globs(&globs));
    }
    if let Some(regex) = regex {
        filter = add_part(f, "tag_regex", filter, |t| t.with_regex(&regex));
    }
    if let Some(range) = range {
        filter = add_part(f, "semver", filter, |t| t.with_range(&range));
    }
    filter
}

/// One part added to the filter (checked on its own when an earlier part
/// was bad already, so that its problems are reported too).
fn add_part(
    f: &mut Fields,
    key: &str,
    filter: Option<TagFilter>,
    part: impl FnOnce(TagFilter) -> Result<TagFilter, String>,
) -> Option<TagFilter> {
    let valid = filter.is_some();
    match part(filter.unwrap_or_default()) {
        Ok(built) => valid.then_some(built),
        Err(reason) => {
            f.error(key, reason);
            None
        }
    }
}

fn parse_platforms(f: &mut Fields) -> Option<Vec<Platform>> {
    let listed: Vec<String> = f.get("platforms").unwrap_or_default();
    let parsed: Result<Vec<Platform>, String> = listed.iter().map(|p| p.parse()).collect();
    parsed.map_err(|reason| f.error("platforms", reason)).ok()
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, FieldError};

    const UPSTREAMS: &str = r#"
        [[upstream]]
        name = "registry.internal:5000"
        url = "http://127.0.0.1:1"
        aliases = ["internal"]
        default = true
        deny = ["secret/*"]
        [[upstream]]
        name = "docker.io"
        url = "https://registry-1.docker.io"
    "#;

    fn parse(rules: &str) -> Result<Config, Vec<FieldError>> {
        Config::from_toml(&format!("{UPSTREAMS}\n{rules}")).map_err(|e| e.0)
    }

    #[test]
    fn a_rule_with_every_field() {
        let config = parse(
            r#"
            [[sync]]
            name = "app"
            upstream = "internal"
            repositories = ["team/app", "team/tools-*"]
            tags = ["1.*"]
            tag_regex = "[0-9.]+"
            semver = ">=1.0 <2"
            platforms = ["linux/amd64", "linux/arm64/v8"]
            referrers = false
            interval = "10m"
            jitter = "30s"
            max_tags = 3

            [[sync]]
            name = "alpine"
            upstream = "docker.io"
            repository = "alpine"
            "#,
        )
        .expect("valid");
        let app = &config.sync[0];
        assert_eq!(app.upstream, "registry.internal:5000");
        assert_eq!(app.repositories.names, ["team/app"]);
        assert!(app
            .repositories
            .patterns
            .as_ref()
            .is_some_and(|p| p.matches("team/tools-ci")));
        assert!(app.tags.matches("1.4") && !app.tags.matches("2.0"));
        assert_eq!(app.platforms.len(), 2);
        assert!(!app.referrers);
        assert_eq!(app.interval.as_secs(), 600);
        assert_eq!(app.jitter.as_secs(), 30);
        assert_eq!(app.max_tags, Some(3));
        let alpine = &config.sync[1];
        assert_eq!(alpine.repositories.names, ["library/alpine"]);
        assert!(alpine.referrers);
        assert_eq!(alpine.interval.as_secs(), 3600);
        assert_eq!(alpine.jitter.as_secs(), 360, "a tenth of the interval");
        assert!(alpine.tags.matches("latest"), "no filter takes every tag");
    }

    #[test]
    fn every_bad_field_of_every_rule_is_named() {
        let errors = parse(
            r#"
            [[sync]]
            name = "bad"
            upstream = "nowhere.example"
            tags = ["["]
            tag_regex = "("
            semver = "banana"
            platforms = ["linux"]
            interval = "0s"
            max_tags = 0
            colour = "red"

            [[sync]]
            name = "hub"
            upstream = "docker.io"
            repositories = ["library/*", "Bad Name"]
            interval = "1m"
            jitter = "2m"

            [[sync]]
            name = "hub"
            repository = "secret/app"

            [[sync]]
            upstream = "internal"
            "#,
        )
        .expect_err("invalid");
        let named = |field: &str| errors.iter().any(|e| e.field == field);
        for field in [
            "sync[bad].upstream",
            "sync[bad].tags",
            "sync[bad].tag_regex",
            "sync[bad].semver",
            "sync[bad].platforms",
            "sync[bad].interval",
            "sync[bad].max_tags",
            "sync[bad].colour",
            "sync[hub].repositories",
            "sync[hub].jitter",
            "sync[hub].repository",
            "sync[3].name",
            "sync[3].repositories",
        ] {
            assert!(named(field), "{field} missing from {errors:#?}");
        }
        let hub = errors
            .iter()
            .find(|e| e.field == "sync[hub].repositories")
            .map(|e| e.reason.as_str())
            .unwrap_or_default();
        assert!(hub.contains("Docker Hub does not list"), "{hub}");
        assert!(hub.contains("Bad Name"), "{hub}");
        let denied = errors
            .iter()
            .find(|e| e.field == "sync[hub].repository")
            .map(|e| e.reason.as_str())
            .unwrap_or_default();
        assert!(denied.contains("denied"), "{denied}");
    }

    #[test]
    fn the_readme_example_is_valid() {
        let readme = include_str!("../../README.md");
        let section = &readme[readme.find("## Sync rules").expect("a Sync rules section")..];
        let start = section.find("```toml\n").expect("a TOML example") + 8;
        let end = start + section[start..].find("```").expect("its end");
        let config = Config::from_toml(&section[start..end]).expect("the README's rule is valid");
        let rule = &config.sync[0];
        assert_eq!(
            (rule.name.as_str(), rule.upstream.as_str()),
            ("app", "ghcr.io")
        );
        assert_eq!(rule.max_tags, Some(5));
    }

    #[test]
    fn a_rule_prints_as_it_reads_back() {
        let config = parse(
            r#"
            [[sync]]
            name = "app"
            upstream = "internal"
            repositories = ["team/app", "team/tools-*"]
            tags = ["1.*"]
            tag_regex = "[0-9.]+"
            semver = ">=1.0 <2"
            platforms = ["linux/arm64/v8"]
            max_tags = 3
            "#,
        )
        .expect("valid");
        let text = config.to_toml().expect("printable");
        let back = Config::from_toml(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(format!("{back:?}"), format!("{config:?}"), "{text}");
        assert!(
            text.contains("[[sync]]") && text.contains("jitter = \"6m\""),
            "{text}"
        );
    }

    #[test]
    fn rules_leave_clients_fills() {
        let rule = "[[sync]]\nname = \"a\"\nrepository = \"x/y\"\n";
        let errors = parse(&format!("[limits]\nmax_fills = 2\n{rule}")).expect_err("invalid");
        assert!(
            errors.iter().any(|e| e.field == "limits.max_sync_fills"),
            "{errors:?}"
        );
        parse(&format!(
            "[limits]\nmax_fills = 2\nmax_sync_fills = 1\n{rule}"
        ))
        .expect("valid");
        parse("[limits]\nmax_fills = 1\n").expect("no rules, no share to leave");
    }

    #[test]
    fn rule_names_are_unique() {
        let errors = parse(
            "[[sync]]\nname = \"a\"\nrepository = \"x/y\"\n[[sync]]\nname = \"a\"\nrepository = \"x/z\"\n",
        )
        .expect_err("invalid");
        assert!(errors
            .iter()
            .any(|e| e.field == "sync[a].name" && e.reason.contains("already")));
    }
}
