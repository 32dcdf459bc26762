//! Whether an upstream's endpoint may be used now.
//!
//! An upstream may list several endpoints, first preferred (a site registry,
//! then the public one). An endpoint that fails (it cannot be reached, times
//! out, answers 5xx, or 429) is marked down for a back-off period and the
//! next one is used. Clients never pay for finding out whether it is back:
//! its recovery is probed in the background (`GET /v2/`, any answer from the
//! registry counts), and only a probe puts it back in use. A `Retry-After`
//! on its 429 is respected: no probe before it has passed.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::metrics::gauge::Gauge;

/// The first back-off after a failure...
const FIRST_BACKOFF: Duration = Duration::from_secs(2);
/// ...doubled after each failed probe, up to this.
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// The longest a `Retry-After` keeps an endpoint out of use.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(6 * 3600);

#[derive(Debug)]
struct State {
    /// Set while the endpoint is out of use: no probe before this instant.
    down_until: Option<Instant>,
    backoff: Duration,
    /// A probe task is running for it.
    probing: bool,
}

/// One endpoint's health, shared with its probe task.
#[derive(Clone)]
pub struct Health {
    state: Arc<Mutex<State>>,
    up: Gauge,
}

/// What marking an endpoint down did.
#[derive(Debug, PartialEq, Eq)]
pub enum Marked {
    /// It was in use until now; a probe must start.
    Down,
    /// It was already down (a request that started before); nothing to do.
    AlreadyDown,
}

impl Health {
    /// A healthy endpoint; `up` is its gauge (1 while in use).
    pub fn new(up: Gauge) -> Self {
        up.set(1);
        Health {
            state: Arc::new(Mutex::new(State {
                down_until: None,
                backoff: FIRST_BACKOFF,
                probing: false,
            })),
            up,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether requests may go to the endpoint now.
    pub fn usable(&self) -> bool {
        self.state().down_until.is_none()
    }

    /// Takes the endpoint out of use for its back-off, or until
    /// `retry_after` has passed if that is longer.
    pub fn mark_down(&self, retry_after: Option<Duration>) -> Marked {
        let mut state = self.state();
        let wait = retry_after
            .map(|r| r.min(MAX_RETRY_AFTER))
            .unwrap_or_default()
            .max(state.backoff);
        let until = Instant::now() + wait;
        let was_usable = state.down_until.is_none();
        state.down_until = Some(state.down_until.map_or(until, |t| t.max(until)));
        self.up.set(0);
        if was_usable && !state.probing {
            state.probing = true;
            Marked::Down
        } else {
            Marked::AlreadyDown
        }
    }

    /// When the next probe may run; `None` once the endpoint is back.
    pub fn next_probe(&self) -> Option<Instant> {
        self.state().down_until
    }

    /// A probe found the endpoint answering: back in use.
    pub fn recovered(&self) {
        let mut state = self.state();
        state.down_until = None;
        state.backoff = FIRST_BACKOFF;
        state.probing = false;
        self.up.set(1);
    }

    /// A probe failed: the next one after a longer back-off.
    pub fn probe_failed(&self) {
        let mut state = self.state();
        state.backoff = (state.backoff * 2).min(MAX_BACKOFF);
        state.down_until = Some(Instant::now() + state.backoff);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endpoint_is_down_until_a_probe_finds_it_back() {
        let health = Health::new(Gauge::default());
        assert!(health.usable());
        assert_eq!(health.mark_down(None), Marked::Down);
        assert!(!health.usable());
        assert_eq!(
            health.mark_down(None),
            Marked::AlreadyDown,
            "one probe task"
        );
        let first = health.next_probe().expect("a probe is due");
        health.probe_failed();
        let second = health.next_probe().expect("still due");
        assert!(second > first, "the back-off grew");
        assert!(!health.usable(), "only a probe brings it back");
        health.recovered();
        assert!(health.usable());
        assert_eq!(health.next_probe(), None);
        assert_eq!(
            health.mark_down(None),
            Marked::Down,
            "a new outage, a new probe"
        );
    }

    #[test]
    fn retry_after_keeps_it_out_longer_than_the_back_off() {
        let health = Health::new(Gauge::default());
        let before = Instant::now();
        health.mark_down(Some(Duration::from_secs(120)));
        let until = health.next_probe().expect("down");
        assert!(until >= before + Duration::from_secs(120));
    }
}
