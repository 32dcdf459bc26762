//! An upstream's rate limit, in view: Docker Hub's `ratelimit-limit`,
//! `ratelimit-remaining` (`100;w=21600`: a count per window of seconds) and
//! `docker-ratelimit-source`, read from every answer and exported per
//! upstream as gauges; and the pause berth takes when the limit is reached.
//!
//! Docker Hub counts manifest `GET`s against its pull limit, not `HEAD`s.
//! When the remaining count reaches zero, or the upstream answers `429`,
//! berth stops revalidating: tags (and tag lists) past their TTL are served
//! as berth last knew them (within `max_stale`) until the pause ends, said
//! once in the log when it starts and once when it ends. The pause lasts
//! what the upstream said (`Retry-After`, or `ratelimit-reset`), else a
//! minute; then the next revalidation asks again (a `HEAD`, which tells the
//! remaining count again at no cost).

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use http::{HeaderMap, StatusCode};
use prometheus_client::metrics::gauge::Gauge;

use crate::metrics::{Metrics, UpstreamName};

/// The pause when the upstream does not say how long to wait.
pub const DEFAULT_PAUSE: Duration = Duration::from_secs(60);
/// The longest pause berth takes on an upstream's word.
const MAX_PAUSE: Duration = Duration::from_secs(6 * 3600);

/// What the upstream last said of its limit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Figures {
    pub limit: Option<u64>,
    pub remaining: Option<u64>,
    /// The window the counts are for.
    pub window: Option<Duration>,
    /// Whom the upstream counts the requests against (an address, or an
    /// account), as `docker-ratelimit-source` says.
    pub source: Option<String>,
}

#[derive(Default)]
struct State {
    figures: Figures,
    /// While set and in the future, berth does not revalidate.
    paused_until: Option<Instant>,
}

/// One upstream's rate limit.
pub struct RateLimit {
    upstream: String,
    state: Mutex<State>,
    limit: Gauge,
    remaining: Gauge,
    paused: Gauge,
}

impl RateLimit {
    pub fn new(upstream: &str, metrics: &Metrics) -> Self {
        let label = UpstreamName {
            upstream: upstream.to_owned(),
        };
        let families = metrics.get();
        RateLimit {
            upstream: upstream.to_owned(),
            state: Mutex::default(),
            limit: families.ratelimit_limit.get_or_create(&label).clone(),
            remaining: families.ratelimit_remaining.get_or_create(&label).clone(),
            paused: families.ratelimit_paused.get_or_create(&label).clone(),
        }
    }

    /// Reads an answer's rate-limit headers into the figures and gauges.
    pub fn observe(&self, headers: &HeaderMap) {
        let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let limit = text("ratelimit-limit").and_then(quota);
        let remaining = text("ratelimit-remaining").and_then(quota);
        let source = text("docker-ratelimit-source");
        if limit.is_none() && remaining.is_none() {
            return;
        }
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let figures = &mut state.figures;
        if let Some((count, window)) = limit {
            figures.limit = Some(count);
            figures.window = window.or(figures.window);
            self.limit.set(gauge_value(count));
        }
        if let Some((count, window)) = remaining {
            figures.remaining = Some(count);
            figures.window = window.or(figures.window);
            self.remaining.set(gauge_value(count));
        }
        if let Some(source) = source {
            figures.source = Some(source.to_owned());
        }
    }

    /// Pauses revalidation for `pause` (the limit was reached: an answer
    /// with `status` said so); the log says so when a pause starts.
    pub fn pause(&self, pause: Duration, status: StatusCode) {
        let pause = pause.min(MAX_PAUSE);
        let until = Instant::now() + pause;
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let already = state.paused_until.is_some_and(|t| t > Instant::now());
        state.paused_until = Some(state.paused_until.map_or(until, |t| t.max(until)));
        self.paused.set(1);
        if !already {
            tracing::warn!(
                upstream = self.upstream,
                status = status.as_u16(),
                limit = ?state.figures.limit,
                remaining = ?state.figures.remaining,
                source = state.figures.source.as_deref().unwrap_or("-"),
                pause_s = pause.as_secs(),
                "the upstream's rate limit is reached: serving stale tags instead of revalidating until the pause ends"
            );
        }
    }

    /// Whether revalidation is paused now. The first call after the pause
    /// ended says so in the log.
    pub fn paused(&self) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match state.paused_until {
            Some(until) if until > Instant::now() => true,
            Some(_) => {
                state.paused_until = None;
                self.paused.set(0);
                tracing::info!(
                    upstream = self.upstream,
                    "the rate-limit pause ended: revalidating again"
                );
                false
            }
            None => false,
        }
    }

    /// Whether revalidation is paused now, without ending a pause that is
    /// over (for the status page, which must change nothing).
    pub fn is_paused(&self) -> bool {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .paused_until
            .is_some_and(|until| until > Instant::now())
    }

    /// How long the pause has left to run, if berth is paused now.
    pub fn pause_left(&self) -> Option<Duration> {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let left = state.paused_until?.checked_duration_since(Instant::now())?;
        (!left.is_zero()).then_some(left)
    }

    /// What the upstream last said of its limit.
    pub fn figures(&self) -> Figures {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .figures
            .clone()
    }
}

/// Whether an answer says the limit is reached (a 429, or nothing
/// remaining), and for how long berth should stay away: what the upstream
/// asked, else a minute.
pub fn limit_reached(status: StatusCode, headers: &HeaderMap) -> Option<Duration> {
    let none_left = headers
        .get("ratelimit-remaining")
        .and_then(|v| v.to_str().ok())
        .and_then(quota)
        .is_some_and(|(count, _)| count == 0);
    (status == StatusCode::TOO_MANY_REQUESTS || none_left)
        .then(|| pause_asked(headers, SystemTime::now()).unwrap_or(DEFAULT_PAUSE))
}

/// A `Retry-After` value as a duration from now: seconds, or an HTTP date.
pub fn retry_after(value: &http::HeaderValue) -> Option<Duration> {
    let value = value.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(SystemTime::now()).unwrap_or_default())
}

fn gauge_value(count: u64) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

/// `100;w=21600` (or `100`): the count, and the window when given.
fn quota(value: &str) -> Option<(u64, Option<Duration>)> {
    let mut parts = value.split(';');
    let count = parts.next()?.trim().parse().ok()?;
    let window = parts
        .filter_map(|p| p.trim().strip_prefix("w="))
        .find_map(|w| w.parse().ok())
        .map(Duration::from_secs);
    Some((count, window))
}

/// How long the upstream asked berth to wait: `Retry-After` (seconds or an
/// HTTP date), else `ratelimit-reset` (seconds).
fn pause_asked(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(value) = text("retry-after") {
        let value = value.trim();
        if let Ok(seconds) = value.parse::<u64>() {
            return Some(Duration::from_secs(seconds));
        }
        if let Ok(at) = httpdate::parse_http_date(value) {
            return Some(at.duration_since(now).unwrap_or_default());
        }
    }
    let reset = text("ratelimit-reset")?;
    quota(reset).map(|(seconds, _)| Duration::from_secs(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, value.parse().expect("a header value"));
        }
        map
    }

    #[test]
    fn docker_hubs_headers_are_read() {
        assert_eq!(
            quota("100;w=21600"),
            Some((100, Some(Duration::from_secs(21600))))
        );
        assert_eq!(quota(" 76 "), Some((76, None)));
        assert_eq!(quota("lots"), None);
        let limit = RateLimit::new("docker.io", &Metrics::new());
        limit.observe(&headers(&[
            ("ratelimit-limit", "100;w=21600"),
            ("ratelimit-remaining", "76;w=21600"),
            ("docker-ratelimit-source", "192.0.2.1"),
        ]));
        assert_eq!(
            limit.figures(),
            Figures {
                limit: Some(100),
                remaining: Some(76),
                window: Some(Duration::from_secs(21600)),
                source: Some("192.0.2.1".into()),
            }
        );
        assert!(!limit.paused());
    }

    #[test]
    fn zero_remaining_or_a_429_reaches_the_limit() {
        let none_left = headers(&[("ratelimit-remaining", "0;w=21600")]);
        assert_eq!(
            limit_reached(StatusCode::OK, &none_left),
            Some(DEFAULT_PAUSE)
        );
        let some_left = headers(&[("ratelimit-remaining", "3;w=21600")]);
        assert_eq!(limit_reached(StatusCode::OK, &some_left), None);
        let asked = headers(&[("retry-after", "7")]);
        assert_eq!(
            limit_reached(StatusCode::TOO_MANY_REQUESTS, &asked),
            Some(Duration::from_secs(7))
        );
        let metrics = Metrics::new();
        let limit = RateLimit::new("docker.io", &metrics);
        limit.pause(DEFAULT_PAUSE, StatusCode::OK);
        assert!(limit.paused());
        assert!(metrics
            .encode()
            .contains("berth_upstream_ratelimit_paused{upstream=\"docker.io\"} 1"));
        let other = RateLimit::new("ghcr.io", &metrics);
        other.pause(Duration::ZERO, StatusCode::TOO_MANY_REQUESTS);
        assert!(!other.paused(), "a pause of nothing is over at once");
    }

    #[test]
    fn the_pause_is_what_the_upstream_asked() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let later = httpdate::fmt_http_date(now + Duration::from_secs(90));
        assert_eq!(
            pause_asked(&headers(&[("retry-after", &later)]), now),
            Some(Duration::from_secs(90))
        );
        assert_eq!(
            pause_asked(&headers(&[("retry-after", "30")]), now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            pause_asked(&headers(&[("ratelimit-reset", "12")]), now),
            Some(Duration::from_secs(12))
        );
        assert_eq!(pause_asked(&HeaderMap::new(), now), None);
    }
}
