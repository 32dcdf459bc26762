//! `berth check --online`: re-hashing what a running berth holds, beside
//! its clients, at a bounded rate, so that a large cache is verified (and
//! repaired) without downtime. The server runs one check at a time in the
//! background; the command starts it through the admin listener and
//! follows its progress there.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::store::check::{CheckReport, Pace};
use crate::store::Store;

/// What the admin endpoint says of the check.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct CheckStatus {
    pub running: bool,
    /// Bytes to read, and read so far.
    pub total_bytes: u64,
    pub bytes: u64,
    /// The last finished check's report.
    pub report: Option<CheckReport>,
    /// Why the last check stopped short, if it did.
    pub error: Option<String>,
}

#[derive(Default)]
pub struct OnlineCheck {
    state: Mutex<CheckStatus>,
    progress: Arc<AtomicU64>,
}

impl OnlineCheck {
    /// Starts a check unless one is running; either way, the status.
    pub fn start(
        self: &Arc<Self>,
        store: Store,
        rate: Option<u64>,
        repair: bool,
    ) -> (bool, CheckStatus) {
        {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            if state.running {
                drop(state);
                return (false, self.status());
            }
            *state = CheckStatus {
                running: true,
                total_bytes: store.stored_bytes(),
                ..CheckStatus::default()
            };
        }
        self.progress.store(0, Ordering::Relaxed);
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let progress = this.progress.clone();
            let outcome = store.check_paced(repair, Pace::new(rate), |done| {
                progress.store(done, Ordering::Relaxed);
            });
            let mut state = this.state.lock().unwrap_or_else(|e| e.into_inner());
            state.running = false;
            state.bytes = this.progress.load(Ordering::Relaxed);
            match outcome {
                Ok(report) => {
                    tracing::info!(
                        checked = report.checked,
                        problems = report.problems.len(),
                        repaired = report.repaired,
                        "online check finished"
                    );
                    state.report = Some(report);
                }
                Err(e) => {
                    tracing::error!(error = %e, "online check failed");
                    state.error = Some(e.to_string());
                }
            }
        });
        (true, self.status())
    }

    pub fn status(&self) -> CheckStatus {
        let mut status = self.state.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if status.running {
            status.bytes = self.progress.load(Ordering::Relaxed);
        }
        status
    }
}
