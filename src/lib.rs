//! berth: a pull-through caching registry for OCI and Docker images.
//!
//! A client pulls through berth's registry API (`http`); berth answers from
//! its cache (`store`: moka in memory, fjall for metadata, manifests and small
//! blobs, content-addressed files for large blobs) and fetches what it lacks
//! from the upstream registry (`upstream`) through single-flight fills
//! (`fill`) that stream to every waiting client while they write, hash and
//! finally commit verified content. Nothing is cached until its digest is
//! verified, and a repository is only served content the upstream showed in
//! it. Sync rules (`sync`) keep chosen images fresh ahead of need through
//! the same fills, and pin what they select against eviction.
//!
//! `run` serves until a shutdown future resolves; the binary in `main.rs` is
//! a thin shell around it, and tests start the same server in-process.

#![forbid(unsafe_code)]

pub mod backoff;
pub mod bundle;
pub mod cluster;
pub mod commands;
pub mod config;
pub mod digest;
pub mod error;
pub mod fill;
pub mod graph;
pub mod health;
pub mod http;
pub mod logging;
pub mod manifest;
pub mod metrics;
pub mod online_check;
pub mod progress;
pub mod reference;
pub mod referrers;
pub mod shared;
pub mod status;
pub mod store;
pub mod sync;
pub mod tag_lists;
pub mod upstream;
pub mod warm;

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

pub use crate::config::Config;
pub use crate::error::Error;
use crate::fill::blob::BlobFills;
use crate::fill::manifest::ManifestFills;
use crate::metrics::Metrics;
use crate::referrers::Referrers;
use crate::store::Store;
use crate::tag_lists::TagLists;
use crate::upstream::routing::Upstreams;

/// The shared state of a running berth: a cheap, clonable handle.
#[derive(Clone)]
pub struct App {
    inner: Arc<AppInner>,
}

struct AppInner {
    config: Config,
    store: Store,
    upstreams: Upstreams,
    blobs: BlobFills,
    manifests: ManifestFills,
    referrers: Referrers,
    tag_lists: TagLists,
    metrics: Metrics,
    pull_auth: Option<http::auth::PullAuth>,
    status: status::Status,
    /// Fills belong to the server, not to a connection; shutdown waits here.
    fills: TaskTracker,
    /// `berth check --online`, one at a time.
    online_check: Arc<online_check::OnlineCheck>,
    /// The shared tier (`[storage.s3]`), when configured.
    shared: Option<shared::SharedTier>,
    /// Coordination with other replicas (`[cluster]`), when configured.
    cluster: Option<cluster::Cluster>,
}

impl App {
    /// Opens the store and builds the upstream client. After an unclean
    /// stop the store serves at once and is reconciled in the background.
    pub fn new(config: Config) -> Result<App, Error> {
        let (store, opened) = Store::open_with(&config.data_dir, &config.cache, &config.storage)?;
        if opened.migrated {
            tracing::info!("the data directory was converted to the current format");
        }
        if !opened.clean {
            reconcile_in_background(store.clone());
        }
        let metrics = Metrics::new();
        let pull_auth = http::auth::PullAuth::from_config(&config.auth)?;
        let upstreams = Upstreams::with_metrics(&config.upstreams, &metrics)?;
        let fills = TaskTracker::new();
        let shared = match &config.storage.s3 {
            Some(s3) => Some(shared::SharedTier::new(s3, metrics.clone(), fills.clone())?),
            None => None,
        };
        let cluster = match &config.cluster {
            Some(c) => Some(cluster::Cluster::new(c, metrics.clone(), fills.clone())?),
            None => None,
        };
        let tiers = fill::Tiers {
            shared: shared.clone(),
            cluster: cluster.clone(),
        };
        let blobs = BlobFills::new(
            store.clone(),
            fills.clone(),
            metrics.clone(),
            &config.limits,
            tiers.clone(),
        );
        let manifests = ManifestFills::new(store.clone(), fills.clone(), tiers);
        let referrers = Referrers::new(
            store.clone(),
            fills.clone(),
            metrics.clone(),
            cluster.clone(),
        );
        let tag_lists = TagLists::new(store.clone(), fills.clone(), metrics.clone());
        Ok(App {
            inner: Arc::new(AppInner {
                config,
                store,
                upstreams,
                blobs,
                manifests,
                referrers,
                tag_lists,
                metrics,
                pull_auth,
                status: status::Status::new(),
                fills,
                online_check: Default::default(),
                shared,
                cluster,
            }),
        })
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The shared tier, when `[storage.s3]` configures one.
    pub fn shared(&self) -> Option<&shared::SharedTier> {
        self.inner.shared.as_ref()
    }

    /// The cluster's coordination, when `[cluster]` configures it.
    pub fn cluster(&self) -> Option<&cluster::Cluster> {
        self.inner.cluster.as_ref()
    }

    pub fn upstreams(&self) -> &Upstreams {
        &self.inner.upstreams
    }

    pub fn blobs(&self) -> &BlobFills {
        &self.inner.blobs
    }

    pub fn manifests(&self) -> &ManifestFills {
        &self.inner.manifests
    }

    pub fn referrers(&self) -> &Referrers {
        &self.inner.referrers
    }

    pub fn tag_lists(&self) -> &TagLists {
        &self.inner.tag_lists
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// The online integrity check of the store.
    pub fn online_check(&self) -> &Arc<online_check::OnlineCheck> {
        &self.inner.online_check
    }

    /// The status page's counters, history and rankings.
    pub fn status(&self) -> &status::Status {
        &self.inner.status
    }

    /// Who may pull, when pulls are not open to anyone.
    pub fn pull_auth(&self) -> Option<&http::auth::PullAuth> {
        self.inner.pull_auth.as_ref()
    }

    /// Notes a use of content for the shared tier's budget (least recently
    /// used first), when the cluster keeps one.
    pub fn touch_shared(&self, kind: shared::ObjectKind, digest: &digest::Digest) {
        if let (Some(cluster), Some(shared)) = (&self.inner.cluster, &self.inner.shared) {
            if shared.max_size().is_some() {
                cluster.touch(kind, digest);
            }
        }
    }

    /// Counts a cache lookup of `kind` (manifest, blob, tag, referrers) in
    /// the metrics, the store's activity and the request's log line.
    pub fn record(&self, kind: &'static str, hit: bool) {
        self.inner.store.count_lookup(hit);
        self.inner.metrics.cache(kind, hit);
        self.inner.status.lookup(hit);
        http::outcome::note(kind, hit);
        if self.inner.shared.is_some() {
            self.inner.metrics.get().shared.near(kind, hit);
        }
    }
}

/// Serves the registry API on `listener` until `shutdown` resolves; then
/// stops accepting, lets running transfers and fills finish (up to the
/// configured shutdown timeout) and flushes the store.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let app = App::new(config)?;
    serve(app, listener, shutdown).await
}

/// Checks the shared tier before serving: a store that refuses berth (wrong
/// credentials, no such bucket) stops start-up; one that cannot be reached
/// is a degraded start (served from the near cache and upstream, the store
/// used once it answers; `/readyz` says so).
async fn probe_shared(app: &App) -> Result<(), Error> {
    let Some(shared) = app.shared() else {
        return Ok(());
    };
    match shared.probe().await {
        Ok(()) => {
            tracing::info!("the shared tier answers: reading and writing content there");
            Ok(())
        }
        Err(e @ shared::SharedError::Unreachable(_)) => {
            tracing::error!(error = %e, "starting without the shared tier for now; it is tried again as berth serves");
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// With `[cluster]`: binds the peer endpoint's listener (its address is
/// what the leases this replica takes name), asks Redis for a `PING` (wrong
/// credentials stop start-up; an unreachable Redis is a degraded start),
/// and starts the background work: watching Redis, sharing access times,
/// keeping the shared tier within its budget.
async fn start_cluster(
    app: &App,
) -> Result<(Option<TcpListener>, Vec<tokio::task::JoinHandle<()>>), Error> {
    let Some(cluster) = app.cluster() else {
        return Ok((None, Vec::new()));
    };
    let addr = cluster.config().peer_listen;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| cluster::ClusterError::Listen { addr, source })?;
    cluster.bound(listener.local_addr()?);
    tracing::info!(addr = %listener.local_addr()?, advertised = cluster.me(), "peer endpoint (for the cluster's replicas) listening");
    cluster.probe().await?;
    if cluster.available() {
        tracing::info!("Redis answers: coordinating fills, tags and links with the other replicas");
    }
    let mut tasks = vec![tokio::spawn(cluster.clone().watch())];
    if let Some(shared) = app.shared() {
        let budget = cluster::Budget::new(cluster.clone(), shared.clone());
        tasks.push(tokio::spawn(budget.run()));
    }
    Ok((Some(listener), tasks))
}

/// `run` for an `App` that is already open.
pub async fn serve(
    app: App,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let deadline = app.config().shutdown_timeout;
    let started = Instant::now();
    let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<Instant>();
    // Sync rules stop starting work as soon as shutdown begins.
    let stop_sync = tokio_util::sync::CancellationToken::new();
    let sync_stopper = stop_sync.clone();
    let store = app.store().clone();
    let shutdown = async move {
        shutdown.await;
        // A reconcile or eviction round under way ends where it is.
        store.stop_background();
        sync_stopper.cancel();
        let _ = stopping_tx.send(Instant::now());
    };
    let tls = app
        .config()
        .tls
        .as_ref()
        .map(http::tls::acceptor)
        .transpose()?;
    let admin = match app.config().admin_listen {
        Some(addr) => Some(TcpListener::bind(addr).await.map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot listen on admin_listen {addr}: {e}"),
            )
        })?),
        None => None,
    };
    if let Some(admin) = &admin {
        tracing::info!(addr = %admin.local_addr()?, "admin endpoints (/metrics, /healthz, /readyz, the status page) listening");
    }
    tracing::info!(
        addr = %listener.local_addr()?,
        upstreams = app.upstreams().all().len(),
        data_dir = %app.config().data_dir.display(),
        tls = tls.is_some(),
        "berth is serving"
    );
    probe_shared(&app).await?;
    let (peer, mut watching) = start_cluster(&app).await?;
    watching.extend(
        app.shared()
            .cloned()
            .map(|shared| tokio::spawn(shared.watch())),
    );
    let maintenance = tokio::spawn(maintain(app.clone()));
    let sampling = tokio::spawn(status::sample_every_minute(app.clone()));
    let sync = sync::schedule::spawn(&app, stop_sync.clone());
    http::server::serve(app.clone(), listener, admin, peer, tls, shutdown, deadline).await;
    stop_sync.cancel();
    if let Some(sync) = sync {
        let _ = sync.await;
    }
    let stop_began = stopping_rx.await.unwrap_or(started);
    let remaining = deadline.saturating_sub(stop_began.elapsed());
    app.inner.fills.close();
    if tokio::time::timeout(remaining, app.inner.fills.wait())
        .await
        .is_err()
    {
        tracing::warn!("fills still running at the shutdown deadline; they are abandoned and nothing partial is kept");
    }
    maintenance.abort();
    sampling.abort();
    for task in watching {
        task.abort();
    }
    let store = app.store().clone();
    tokio::task::spawn_blocking(move || store.close())
        .await
        .map_err(std::io::Error::other)??;
    tracing::info!("store flushed; stopped");
    Ok(())
}

/// Mends what an unclean stop left, off the request path: the store serves
/// meanwhile, checking each object as it is used.
fn reconcile_in_background(store: Store) {
    let spawned = std::thread::Builder::new()
        .name("berth-reconcile".into())
        .spawn(move || {
            tracing::info!(
                "the last run did not stop cleanly; reconciling the store in the background"
            );
            match store.reconcile() {
                Ok(report) if report.stopped => tracing::info!(
                    ?report,
                    "reconcile stopped by the shutdown; the next start goes on from here"
                ),
                Ok(report) => tracing::info!(?report, "store reconciled"),
                Err(e) => tracing::error!(error = %e, "reconciling the store failed"),
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start reconciling the store");
    }
}

/// How often access times are written down when nothing else prompts it.
const MAINTENANCE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);
/// How often a store that cannot write looks for space to write again.
const RECOVERY_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

/// Background upkeep of the store: batched access times, and eviction when
/// the cache passes its high watermark. Never on a request's path.
async fn maintain(app: App) {
    let store = app.store().clone();
    loop {
        tokio::select! {
            () = store.pressure() => {}
            () = tokio::time::sleep(if store.writable() { MAINTENANCE_INTERVAL } else { RECOVERY_INTERVAL }) => {}
        }
        let s = store.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            s.reopen_if_failed();
            s.flush_access()?;
            let evicted = s.evict_if_needed()?;
            s.write_report()?;
            Ok::<_, crate::store::StoreError>(evicted)
        })
        .await;
        match outcome {
            Ok(Ok(evicted)) => {
                let families = app.metrics().get();
                families
                    .evicted_items
                    .inc_by((evicted.blobs + evicted.manifests) as u64);
                families.evicted_bytes.inc_by(evicted.bytes);
                warn_if_pins_overflow(&app, evicted.pinned);
            }
            Ok(Err(e)) => tracing::error!(error = %e, "store maintenance failed"),
            Err(e) => tracing::error!(error = %e, "store maintenance task failed"),
        }
    }
}

/// Eviction passed pinned content by and the cache is still above its low
/// watermark: the sync rules select more than `max_size` leaves room for.
fn warn_if_pins_overflow(app: &App, pinned: usize) {
    let (used, limit) = app.store().usage();
    let low = limit as f64 * app.config().storage.low_watermark;
    if pinned > 0 && used as f64 > low {
        tracing::warn!(
            used,
            limit,
            pinned,
            "content pinned by sync rules keeps the cache above storage.low_watermark: \
             raise storage.max_size or let the rules select less"
        );
    }
}
