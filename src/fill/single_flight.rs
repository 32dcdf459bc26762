//! One running task per key: the first caller for a key spawns the work on
//! the server's task tracker (so no client's disconnect cancels it), every
//! caller for the key while it runs awaits the same shared result, and the
//! key is free again once the work has finished.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use futures_util::future::{BoxFuture, Shared};
use futures_util::FutureExt;
use tokio_util::task::TaskTracker;

type Flight<T> = Shared<BoxFuture<'static, Option<T>>>;

pub struct SingleFlight<K, T> {
    table: Arc<Mutex<HashMap<K, Flight<T>>>>,
    tasks: TaskTracker,
}

impl<K, T> Clone for SingleFlight<K, T> {
    fn clone(&self) -> Self {
        SingleFlight {
            table: self.table.clone(),
            tasks: self.tasks.clone(),
        }
    }
}

impl<K, T> SingleFlight<K, T>
where
    K: Eq + Hash + Clone + Send + 'static,
    T: Clone + Send + Sync + 'static,
{
    pub fn new(tasks: TaskTracker) -> Self {
        SingleFlight {
            table: Arc::new(Mutex::new(HashMap::new())),
            tasks,
        }
    }

    /// Runs `work` for `key` unless it is already running, and returns its
    /// result. `None` means the task panicked.
    pub async fn run<F>(&self, key: K, work: impl FnOnce() -> F) -> Option<T>
    where
        F: Future<Output = T> + Send + 'static,
    {
        let flight = {
            let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
            match table.get(&key) {
                Some(flight) => flight.clone(),
                None => {
                    let flight = self.start(key.clone(), work());
                    table.insert(key, flight.clone());
                    flight
                }
            }
        };
        flight.await
    }

    /// Whether work for `key` is running.
    pub fn is_running(&self, key: &K) -> bool {
        self.table
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(key)
    }

    fn start<F>(&self, key: K, work: F) -> Flight<T>
    where
        F: Future<Output = T> + Send + 'static,
    {
        // The task leaves the table itself, however it ends: done, panicked
        // or cancelled (the guard's drop runs while a panic unwinds). It
        // cannot leave before it is inserted, since inserting holds the
        // table's lock.
        let leave = Leave {
            table: self.table.clone(),
            key: Some(key),
        };
        let task = self.tasks.spawn(async move {
            let _leave = leave;
            work.await
        });
        task.map(Result::ok).boxed().shared()
    }
}

/// Removes a flight's key from its table when dropped.
struct Leave<K: Eq + Hash, T> {
    table: Arc<Mutex<HashMap<K, Flight<T>>>>,
    key: Option<K>,
}

impl<K: Eq + Hash, T> Drop for Leave<K, T> {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            // Dropped outside the lock: a flight's value may own anything.
            let removed = self
                .table
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&key);
            drop(removed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn concurrent_callers_share_one_run() {
        let flights: SingleFlight<&str, usize> = SingleFlight::new(TaskTracker::new());
        let runs = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let rx = Arc::new(tokio::sync::Mutex::new(Some(rx)));
        let mut callers = Vec::new();
        for _ in 0..10 {
            let (flights, runs, rx) = (flights.clone(), runs.clone(), rx.clone());
            callers.push(tokio::spawn(async move {
                flights
                    .run("k", || async move {
                        let n = runs.fetch_add(1, Ordering::SeqCst) + 1;
                        if let Some(rx) = rx.lock().await.take() {
                            let _ = rx.await;
                        }
                        n
                    })
                    .await
            }));
        }
        while !flights.is_running(&"k") {
            tokio::task::yield_now().await;
        }
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
        let _ = tx.send(());
        for c in callers {
            assert_eq!(c.await.expect("join"), Some(1));
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert!(!flights.is_running(&"k"));
    }

    #[tokio::test]
    async fn a_panicking_flight_leaves_the_table() {
        let flights: SingleFlight<&str, usize> = SingleFlight::new(TaskTracker::new());
        let first = flights
            .run("k", || async {
                if flights_panic() {
                    panic!("a bug inside the work");
                }
                0
            })
            .await;
        assert_eq!(first, None, "a panic is reported as no result");
        assert!(!flights.is_running(&"k"), "the key is free again");
        let second = flights.run("k", || async { 7 }).await;
        assert_eq!(second, Some(7), "the next caller starts afresh");
    }

    fn flights_panic() -> bool {
        true
    }
}
