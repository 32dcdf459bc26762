//! Whether a shared service (the object store, Redis) is used now. A failed
//! request takes it out of use for a back-off period (so that clients do
//! not each wait for a service that is down); the first request after the
//! period is the probe that puts it back. Transitions are logged once, not
//! per request.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a failing store is left alone before it is tried again.
pub const BACK_OFF: Duration = Duration::from_secs(5);

pub struct Backoff {
    /// What is watched, for the log ("the shared tier", "Redis").
    what: &'static str,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Out of use until then, and why.
    down_until: Option<(Instant, String)>,
}

impl Backoff {
    pub fn new(what: &'static str) -> Self {
        Backoff {
            what,
            state: Mutex::default(),
        }
    }

    /// Whether to use the store now: yes unless a failure's back-off runs.
    pub fn available(&self) -> bool {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state
            .down_until
            .as_ref()
            .is_none_or(|(until, _)| *until <= Instant::now())
    }

    /// A failure; true when it takes a working store out of use (log it).
    pub fn failed(&self, reason: &str) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let was_up = state.down_until.is_none();
        state.down_until = Some((Instant::now() + BACK_OFF, reason.to_owned()));
        was_up
    }

    /// An answer; true when it puts a failing store back in use.
    pub fn succeeded(&self) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let was_down = state.down_until.is_some();
        state.down_until = None;
        if was_down {
            tracing::info!("{} answers again", self.what);
        }
        was_down
    }

    /// Whether a failure has not yet been followed by an answer.
    pub fn is_failing(&self) -> bool {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.down_until.is_some()
    }

    /// "ok", or the last failure while the store is out of use.
    pub fn state(&self) -> String {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match &state.down_until {
            None => "ok".to_owned(),
            Some((_, reason)) => format!("failing: {reason}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_takes_the_store_out_of_use_until_it_answers() {
        let health = Backoff::new("the store");
        assert!(health.available());
        assert!(health.failed("connection refused"));
        assert!(!health.failed("connection refused"), "logged once");
        assert!(!health.available());
        assert!(health.state().contains("connection refused"));
        assert!(health.succeeded());
        assert!(health.available());
        assert_eq!(health.state(), "ok");
    }
}
