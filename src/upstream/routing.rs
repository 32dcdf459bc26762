//! Which upstream, and which repository there, a request is for: the
//! `?ns=<host>` that containerd's mirrors add, else the path form
//! (`/v2/ghcr.io/org/app/...`), else the default upstream (Docker's
//! `registry-mirrors`). Docker Hub's one-component names get `library/`, and
//! each upstream's allow and deny lists are applied, all before any upstream
//! is contacted: berth is not an open proxy.

use std::collections::HashMap;
use std::sync::Arc;

use super::{Upstream, UpstreamError};
use crate::config::UpstreamConfig;

/// An upstream and a repository in it, as normalized for the cache key.
#[derive(Clone)]
pub struct Target {
    pub upstream: Arc<Upstream>,
    pub repo: String,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.upstream.name(), self.repo)
    }
}

/// Why a request cannot go to any upstream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoutingError {
    #[error("berth does not mirror {0}")]
    UnknownUpstream(String),
    #[error("repository {0} names no configured upstream, and none is the default")]
    NoDefault(String),
    #[error("repository {repo} is not in the allow list of upstream {upstream}")]
    NotAllowed { upstream: String, repo: String },
    #[error("repository {repo} of upstream {upstream} is denied by berth's configuration")]
    Denied { upstream: String, repo: String },
}

/// Every configured upstream, found by name or alias.
pub struct Upstreams {
    all: Vec<Arc<Upstream>>,
    by_host: HashMap<String, Arc<Upstream>>,
    default: Option<Arc<Upstream>>,
}

impl Upstreams {
    pub fn new(configs: &[UpstreamConfig]) -> Result<Self, UpstreamError> {
        Self::with_metrics(configs, &crate::metrics::Metrics::new())
    }

    /// The upstreams, counting their requests in `metrics`.
    pub fn with_metrics(
        configs: &[UpstreamConfig],
        metrics: &crate::metrics::Metrics,
    ) -> Result<Self, UpstreamError> {
        let mut all = Vec::new();
        let mut by_host = HashMap::new();
        let mut default = None;
        for config in configs {
            let upstream = Arc::new(Upstream::new(config, metrics.clone())?);
            for host in std::iter::once(&config.name).chain(&config.aliases) {
                by_host.insert(host.clone(), upstream.clone());
            }
            if config.default {
                default = Some(upstream.clone());
            }
            all.push(upstream);
        }
        Ok(Upstreams {
            all,
            by_host,
            default,
        })
    }

    pub fn all(&self) -> &[Arc<Upstream>] {
        &self.all
    }

    pub fn by_name(&self, host: &str) -> Option<&Arc<Upstream>> {
        self.by_host.get(&host.to_ascii_lowercase())
    }

    /// Resolves a request's repository `name` (and containerd's `ns`).
    pub fn resolve(&self, ns: Option<&str>, name: &str) -> Result<Target, RoutingError> {
        let (upstream, repo) = match ns {
            Some(ns) => {
                let up = self
                    .by_name(ns)
                    .ok_or_else(|| RoutingError::UnknownUpstream(ns.to_owned()))?;
                (up, name)
            }
            None => match name.split_once('/') {
                Some((first, rest)) if self.by_host.contains_key(first) => {
                    (&self.by_host[first], rest)
                }
                // A first component that can only be a registry host
                // (`quay.io/...`, `localhost/...`) but names no configured
                // upstream is refused, not sent to the default upstream.
                Some((first, _)) if looks_like_host(first) => {
                    return Err(RoutingError::UnknownUpstream(first.to_owned()))
                }
                _ => {
                    let up = self
                        .default
                        .as_ref()
                        .ok_or_else(|| RoutingError::NoDefault(name.to_owned()))?;
                    (up, name)
                }
            },
        };
        let repo = normalize(upstream.config(), repo);
        check_filters(upstream.config(), &repo)?;
        Ok(Target {
            upstream: upstream.clone(),
            repo,
        })
    }
}

/// Docker's rule for telling a registry host from a repository namespace.
fn looks_like_host(component: &str) -> bool {
    component.contains(['.', ':']) || component == "localhost"
}

/// Docker Hub keeps official images under `library/`; clients may leave it out.
pub(crate) fn normalize(config: &UpstreamConfig, repo: &str) -> String {
    if config.is_docker_hub() && !repo.contains('/') {
        format!("library/{repo}")
    } else {
        repo.to_owned()
    }
}

/// The upstream's `allow` and `deny` lists applied to a normalized name.
pub(crate) fn check_filters(config: &UpstreamConfig, repo: &str) -> Result<(), RoutingError> {
    let refused = |denied: bool| {
        let (upstream, repo) = (config.name.clone(), repo.to_owned());
        if denied {
            RoutingError::Denied { upstream, repo }
        } else {
            RoutingError::NotAllowed { upstream, repo }
        }
    };
    if config.deny.matches(repo) {
        return Err(refused(true));
    }
    if !config.allow.is_empty() && !config.allow.matches(repo) {
        return Err(refused(false));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn upstreams(extra: &str) -> Upstreams {
        let text = format!(
            r#"
            [[upstream]]
            name = "docker.io"
            url = "https://registry-1.docker.io"
            default = true
            deny = ["evil/*"]
            [[upstream]]
            name = "ghcr.io"
            url = "https://ghcr.io"
            aliases = ["gh"]
            allow = ["org/**"]
            {extra}
            "#
        );
        Upstreams::new(&Config::from_toml(&text).expect("valid").upstreams).expect("upstreams")
    }

    fn route(
        u: &Upstreams,
        ns: Option<&str>,
        name: &str,
    ) -> Result<(String, String), RoutingError> {
        u.resolve(ns, name)
            .map(|t| (t.upstream.name().to_owned(), t.repo))
    }

    fn ok(up: &str, repo: &str) -> Result<(String, String), RoutingError> {
        Ok((up.to_owned(), repo.to_owned()))
    }

    #[test]
    fn the_three_forms_in_order() {
        let u = upstreams("");
        assert_eq!(
            route(&u, Some("ghcr.io"), "org/app"),
            ok("ghcr.io", "org/app")
        );
        assert_eq!(route(&u, None, "ghcr.io/org/app"), ok("ghcr.io", "org/app"));
        assert_eq!(route(&u, None, "gh/org/app"), ok("ghcr.io", "org/app"));
        assert_eq!(
            route(&u, None, "someone/app"),
            ok("docker.io", "someone/app")
        );
        // ns wins over a path that looks like another upstream.
        assert_eq!(
            route(&u, Some("docker.io"), "ghcr.io/x"),
            ok("docker.io", "ghcr.io/x")
        );
    }

    #[test]
    fn docker_hub_names_get_library_in_every_form() {
        let u = upstreams("");
        assert_eq!(route(&u, None, "alpine"), ok("docker.io", "library/alpine"));
        assert_eq!(
            route(&u, Some("docker.io"), "alpine"),
            ok("docker.io", "library/alpine")
        );
        assert_eq!(
            route(&u, None, "docker.io/alpine"),
            ok("docker.io", "library/alpine")
        );
        assert_eq!(
            route(&u, None, "docker.io/library/alpine"),
            ok("docker.io", "library/alpine")
        );
    }

    #[test]
    fn unknown_hosts_and_filtered_repositories_are_refused() {
        let u = upstreams("");
        assert_eq!(
            route(&u, Some("quay.io"), "a/b"),
            Err(RoutingError::UnknownUpstream("quay.io".into()))
        );
        assert!(matches!(
            route(&u, None, "ghcr.io/other/app"),
            Err(RoutingError::NotAllowed { .. })
        ));
        assert!(matches!(
            route(&u, None, "evil/app"),
            Err(RoutingError::Denied { .. })
        ));
        // Host-like first components never fall through to the default.
        let unknown = |h: &str| Err(RoutingError::UnknownUpstream(h.into()));
        assert_eq!(route(&u, None, "quay.io/a/b"), unknown("quay.io"));
        assert_eq!(route(&u, None, "localhost/a"), unknown("localhost"));
    }

    #[test]
    fn without_a_default_unrouted_names_are_unknown() {
        let text = "[[upstream]]\nname = \"a.example\"\nurl = \"https://a\"\n[[upstream]]\nname = \"b.example\"\nurl = \"https://b\"\n";
        let u =
            Upstreams::new(&Config::from_toml(text).expect("valid").upstreams).expect("upstreams");
        assert!(matches!(
            route(&u, None, "x/y"),
            Err(RoutingError::NoDefault(_))
        ));
        assert_eq!(route(&u, None, "b.example/x/y"), ok("b.example", "x/y"));
    }
}
