//! Tag lists (`GET /v2/<name>/tags/list`) that survive an outage.
//!
//! A repository's whole list is read from the upstream (`fetch`), one read
//! at a time per repository however many clients ask (single flight), kept
//! compact (`list`) and stored, then served for the upstream's
//! `tag_list_ttl`. Past it berth asks again; while the upstream fails, the
//! stored list is served within `max_stale`, marked stale in the log and
//! the metrics. With no stored list and the upstream failing, berth says it
//! cannot list now: it never presents the few tags it happens to hold as
//! the whole list. Offline, berth is the registry of record, and lists the
//! tags it holds (documented as such): the ones it can serve.

mod fetch;
mod list;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::task::TaskTracker;

pub use self::fetch::MAX_LIST_BYTES;
pub use self::list::{Gathered, TagList};
use crate::fill::single_flight::SingleFlight;
use crate::fill::FillError;
use crate::metrics::Metrics;
use crate::store::tag_lists::TagListRecord;
use crate::store::Store;
use crate::upstream::routing::Target;
use crate::upstream::UpstreamError;

/// Memory for the lists read lately, so that a busy repository's list is
/// not decoded from the store on every request.
const RECENT_BYTES: u64 = 32 * 1024 * 1024;

type Key = (String, String);
type Fetched = Result<Arc<TagListRecord>, Arc<FillError>>;

/// A tag list ready to answer with, and whether it is stale.
pub struct Answer {
    pub list: Arc<TagListRecord>,
    pub stale: bool,
}

#[derive(Clone)]
pub struct TagLists {
    store: Store,
    metrics: Metrics,
    flights: SingleFlight<Key, Fetched>,
    recent: moka::sync::Cache<Key, Arc<TagListRecord>>,
}

impl TagLists {
    pub fn new(store: Store, tasks: TaskTracker, metrics: Metrics) -> Self {
        TagLists {
            store,
            metrics,
            flights: SingleFlight::new(tasks),
            recent: moka::sync::Cache::builder()
                .weigher(|(up, repo): &Key, record: &Arc<TagListRecord>| {
                    let bytes = up.len() + repo.len() + record.list.weight() + 64;
                    bytes.try_into().unwrap_or(u32::MAX)
                })
                .max_capacity(RECENT_BYTES)
                .build(),
        }
    }

    /// The target repository's whole tag list, as the handler serves it.
    pub async fn get(&self, target: &Target) -> Result<Answer, Arc<FillError>> {
        let config = target.upstream.config();
        let key = (target.upstream.name().to_owned(), target.repo.clone());
        if config.offline {
            return self.held(target);
        }
        let stored = self.stored(&key).map_err(Arc::new)?;
        if let Some(record) = stored.as_ref().filter(|r| r.age() < config.tag_list_ttl) {
            self.looked_up(true);
            return Ok(fresh(record.clone()));
        }
        if let Some(record) = stored.as_ref() {
            // The upstream's rate limit is reached: the last whole list,
            // without asking.
            if within_max_stale(record, target) && target.upstream.rate_limit().paused() {
                self.looked_up(true);
                return Ok(self.stale(record.clone()));
            }
        }
        self.looked_up(false);
        match self.refresh(target, key, Some(config.tag_list_ttl)).await {
            Ok(record) => Ok(fresh(record)),
            Err(e) => match stored {
                Some(record) if may_serve_stale(&e, &record, target) => {
                    tracing::warn!(
                        ?target, error = %e, age_s = record.age().as_secs(),
                        "upstream failing; serving the last known tag list (stale)"
                    );
                    Ok(self.stale(record))
                }
                _ => Err(e),
            },
        }
    }

    /// The target repository's whole tag list read from the upstream now
    /// (joining a read already running), and stored for the handler too:
    /// for sync rules, which must see a tag pushed a moment ago.
    pub async fn fresh(&self, target: &Target) -> Fetched {
        let key = (target.upstream.name().to_owned(), target.repo.clone());
        self.refresh(target, key, None).await
    }

    fn stale(&self, list: Arc<TagListRecord>) -> Answer {
        self.metrics.stale("tag_list");
        crate::http::outcome::note_stale("tag_list");
        Answer { list, stale: true }
    }

    fn looked_up(&self, hit: bool) {
        self.metrics.cache("tag_list", hit);
        crate::http::outcome::note("tag_list", hit);
    }

    /// The stored list, from memory when it was read lately.
    fn stored(&self, key: &Key) -> Result<Option<Arc<TagListRecord>>, FillError> {
        if let Some(record) = self.recent.get(key) {
            return Ok(Some(record));
        }
        let Some(record) = self.store.tag_list(&key.0, &key.1)? else {
            return Ok(None);
        };
        let record = Arc::new(record);
        self.recent.insert(key.clone(), record.clone());
        Ok(Some(record))
    }

    /// Offline: the tags berth holds (maps to a manifest it has), which are
    /// the tags it can serve; a repository it holds none of is "not in
    /// the cache". The last whole list is not offered: it may name tags
    /// berth could not serve.
    fn held(&self, target: &Target) -> Result<Answer, Arc<FillError>> {
        let (upstream, repo) = (target.upstream.name(), target.repo.as_str());
        let mapped = self
            .store
            .tags_of(upstream, repo)
            .map_err(|e| Arc::new(FillError::Store(e)))?;
        if mapped.is_empty() {
            return Err(Arc::new(FillError::Upstream(UpstreamError::Offline {
                upstream: upstream.to_owned(),
            })));
        }
        self.looked_up(true);
        let list = TagList::of(mapped.iter().map(String::as_str));
        Ok(fresh(Arc::new(TagListRecord::new(list))))
    }

    /// Reads the list from the upstream (single flight) and stores it. With
    /// `ttl`, a list stored within it is taken instead: a flight that ended
    /// between the caller's look and its joining has just stored one.
    async fn refresh(&self, target: &Target, key: Key, ttl: Option<Duration>) -> Fetched {
        let (this, t) = (self.clone(), target.clone());
        let result = self
            .flights
            .run(key.clone(), move || async move {
                if let Some(ttl) = ttl {
                    let stored = this.stored(&key).map_err(Arc::new)?;
                    if let Some(record) = stored.filter(|r| r.age() < ttl) {
                        return Ok(record);
                    }
                }
                let list = fetch::whole_list(&t)
                    .await
                    .map_err(|e| Arc::new(FillError::Upstream(e)))?;
                let record = TagListRecord::new(list);
                this.store
                    .put_tag_list(&key.0, &key.1, &record)
                    .map_err(|e| Arc::new(FillError::Store(e)))?;
                let record = Arc::new(record);
                this.recent.insert(key, record.clone());
                Ok(record)
            })
            .await;
        result.unwrap_or_else(|| {
            Err(Arc::new(FillError::Io(std::io::Error::other(
                "the tag list read failed",
            ))))
        })
    }
}

fn fresh(list: Arc<TagListRecord>) -> Answer {
    Answer { list, stale: false }
}

fn may_serve_stale(err: &FillError, record: &TagListRecord, target: &Target) -> bool {
    matches!(err, FillError::Upstream(e) if e.is_failing()) && within_max_stale(record, target)
}

fn within_max_stale(record: &TagListRecord, target: &Target) -> bool {
    let config = target.upstream.config();
    config
        .max_stale
        .is_none_or(|max| record.age() <= config.tag_list_ttl + max)
}
