//! The cluster: replicas of berth that agree, through Redis, on who fetches
//! what, so that the whole cluster makes one upstream transfer per blob and
//! one revalidation per stale tag (DESIGN.md, "Beyond one machine").
//!
//! - `lease`: a lease per fill (and per stale tag, and for the shared tier's
//!   eviction) naming the replica that holds it; renewed while the work
//!   runs, released with a compare-and-delete, lapsing when a replica dies.
//! - `peer`: the peer endpoint, a listener of its own for the other
//!   replicas only (a shared secret), from which they stream a live fill;
//!   and the client that joins one.
//! - `tags`: tag mappings and repository links shared through Redis.
//! - `budget`: access times shared in batches, and the eviction that keeps
//!   the shared tier within `[storage.s3] max_size`, one replica at a time.
//!
//! Everything in Redis is disposable: a lost key costs an upstream request,
//! never a wrong byte. Redis failing is never a failure of berth: every
//! command has a deadline, a failure takes Redis out of use for a back-off
//! period (`crate::backoff`), logged once, and meanwhile each replica works
//! alone (its local single flight, its local copy of tags and links).

mod budget;
mod lease;
pub mod metrics;
pub mod peer;
mod tags;

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio_util::task::TaskTracker;

pub use self::budget::Budget;
pub use self::lease::{Claim, Lease, LeaseValue};
pub use self::metrics::{ClusterFamilies, OutcomeLabels};
pub use self::tags::SharedTag;
use crate::backoff::Backoff;
use crate::config::ClusterConfig;
use crate::metrics::Metrics;

/// Why the cluster's coordination could not be set up at start-up.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cluster.redis_url: {0}")]
    Config(String),
    #[error("cluster: Redis refused berth's credentials: {0}")]
    Refused(String),
    #[error("cluster.peer_listen: cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// The cluster's coordination: a cheap, clonable handle.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

struct Inner {
    conn: ConnectionManager,
    config: ClusterConfig,
    health: Backoff,
    metrics: Metrics,
    /// The address other replicas dial for this one's fills, known once
    /// the peer listener is bound.
    me: OnceLock<String>,
    /// Requests to other replicas' peer endpoints.
    peers: reqwest::Client,
    tasks: TaskTracker,
    /// Accesses noted for the shared tier's budget, sent in batches.
    touched: budget::Touched,
}

impl Cluster {
    /// Builds the Redis client (connecting lazily) and the peer client.
    pub fn new(
        config: &ClusterConfig,
        metrics: Metrics,
        tasks: TaskTracker,
    ) -> Result<Self, ClusterError> {
        let conn = connect(config)?;
        let peers = reqwest::Client::builder()
            .connect_timeout(config.redis_timeout.max(Duration::from_secs(2)))
            // Each read of a live fill's body; a holder that stalls this
            // long is treated as gone.
            .read_timeout(config.lease)
            .no_proxy()
            .build()
            .map_err(|e| ClusterError::Config(e.to_string()))?;
        Ok(Cluster {
            inner: Arc::new(Inner {
                conn,
                config: config.clone(),
                health: Backoff::new("Redis"),
                metrics,
                me: OnceLock::new(),
                peers,
                tasks,
                touched: budget::Touched::default(),
            }),
        })
    }

    /// Asks Redis for a `PING` before serving: wrong credentials stop
    /// berth (`Refused`); an unreachable Redis is a degraded start (each
    /// replica alone until it answers), logged.
    pub async fn probe(&self) -> Result<(), ClusterError> {
        let mut conn = self.inner.conn.clone();
        let ping = redis::cmd("PING");
        let limit = self.inner.config.redis_timeout;
        let started = Instant::now();
        match tokio::time::timeout(limit, ping.query_async::<String>(&mut conn)).await {
            Ok(Ok(_)) => {
                self.answered(started);
                Ok(())
            }
            Ok(Err(e)) if refused(&e) => Err(ClusterError::Refused(e.to_string())),
            Ok(Err(e)) => {
                self.failed("ping", &e.to_string());
                Ok(())
            }
            Err(_) => {
                self.failed("ping", "timed out");
                Ok(())
            }
        }
    }

    /// While Redis fails, asks it every back-off period whether it answers
    /// again, so that an idle replica notices too.
    pub async fn watch(self) {
        loop {
            tokio::time::sleep(crate::backoff::BACK_OFF).await;
            if self.inner.health.is_failing() && self.inner.health.available() {
                let _: Option<String> = self.query("ping", redis::cmd("PING")).await;
            }
        }
    }

    /// Records the address the peer listener is bound to, as the other
    /// replicas must dial it.
    pub fn bound(&self, local: std::net::SocketAddr) {
        let me = self
            .inner
            .config
            .peer_advertise
            .clone()
            .unwrap_or_else(|| local.to_string());
        let _ = self.inner.me.set(me);
    }

    /// This replica's peer address.
    pub fn me(&self) -> &str {
        self.inner.me.get().map_or("", String::as_str)
    }

    pub fn config(&self) -> &ClusterConfig {
        &self.inner.config
    }

    pub fn lease_period(&self) -> Duration {
        self.inner.config.lease
    }

    /// "ok", or why Redis is not used now (for `/readyz`).
    pub fn state(&self) -> String {
        self.inner.health.state()
    }

    pub fn available(&self) -> bool {
        self.inner.health.available()
    }

    pub(crate) fn families(&self) -> &ClusterFamilies {
        &self.inner.metrics.get().cluster
    }

    /// A key under the configured prefix.
    fn key(&self, rest: &str) -> String {
        format!("{}:{rest}", self.inner.config.key_prefix)
    }

    /// Runs one command within the deadline. `None` when Redis is out of
    /// use, failed or timed out (counted, and logged once per outage).
    async fn query<T: redis::FromRedisValue>(
        &self,
        op: &'static str,
        cmd: redis::Cmd,
    ) -> Option<T> {
        self.run(
            op,
            |mut conn| async move { cmd.query_async(&mut conn).await },
        )
        .await
    }

    /// Sends a command without waiting for it (a release, a count): on the
    /// task tracker, so that shutdown lets it finish; dropped when no
    /// runtime runs any more.
    fn in_background(&self, op: &'static str, cmd: redis::Cmd) {
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let this = self.clone();
        self.inner.tasks.spawn(async move {
            let _: Option<redis::Value> = this.query(op, cmd).await;
        });
    }

    /// Runs a pipeline (one round trip) within the deadline.
    async fn pipeline<T: redis::FromRedisValue>(
        &self,
        op: &'static str,
        pipe: redis::Pipeline,
    ) -> Option<T> {
        self.run(
            op,
            |mut conn| async move { pipe.query_async(&mut conn).await },
        )
        .await
    }

    async fn run<T, F>(
        &self,
        op: &'static str,
        call: impl FnOnce(ConnectionManager) -> F,
    ) -> Option<T>
    where
        F: Future<Output = redis::RedisResult<T>>,
    {
        if !self.inner.health.available() {
            return None;
        }
        let started = Instant::now();
        let limit = self.inner.config.redis_timeout;
        match tokio::time::timeout(limit, call(self.inner.conn.clone())).await {
            Ok(Ok(value)) => {
                self.answered(started);
                Some(value)
            }
            Ok(Err(e)) => {
                self.failed(op, &e.to_string());
                None
            }
            Err(_) => {
                self.failed(op, "timed out");
                None
            }
        }
    }

    fn answered(&self, started: Instant) {
        let families = self.families();
        families
            .redis_seconds
            .observe(started.elapsed().as_secs_f64());
        families.redis_up.set(1);
        self.inner.health.succeeded();
    }

    fn failed(&self, op: &'static str, reason: &str) {
        let families = self.families();
        families
            .redis_errors
            .get_or_create(&metrics::OpLabels { op })
            .inc();
        families.redis_up.set(0);
        if self.inner.health.failed(reason) {
            tracing::warn!(op, reason, "Redis is failing: each replica works alone (local single flight, its own tags and links) until it answers again");
        }
    }
}

/// A lazily connecting, self-reconnecting Redis connection with berth's
/// deadlines.
fn connect(config: &ClusterConfig) -> Result<ConnectionManager, ClusterError> {
    let mut url = config.redis_url.clone();
    if let Some(user) = &config.redis_username {
        url.set_username(user)
            .map_err(|()| ClusterError::Config("the URL cannot hold a user name".into()))?;
    }
    if let Some(password) = &config.redis_password {
        url.set_password(Some(password.expose()))
            .map_err(|()| ClusterError::Config("the URL cannot hold a password".into()))?;
    }
    let client = match &config.redis_ca {
        Some(pem) => redis::Client::build_with_tls(
            url.as_str(),
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(pem.clone()),
            },
        ),
        None => redis::Client::open(url.as_str()),
    }
    .map_err(|e| ClusterError::Config(e.to_string()))?;
    let limit = config.redis_timeout;
    let manager = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(limit))
        .set_response_timeout(Some(limit))
        // One quick reconnection attempt per failure: a Redis that is down
        // is the back-off's business, not a retry loop's.
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(200));
    ConnectionManager::new_lazy_with_config(client, manager)
        .map_err(|e| ClusterError::Config(e.to_string()))
}

/// Whether Redis refused berth's credentials (a configuration error).
fn refused(e: &redis::RedisError) -> bool {
    let text = e.to_string();
    e.kind() == redis::ErrorKind::AuthenticationFailed
        || text.contains("WRONGPASS")
        || text.contains("NOAUTH")
        || text.contains("NOPERM")
}

/// Milliseconds since the Unix epoch (what Redis values carry as times).
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(secret: &str) -> Cluster {
        let text = format!(
            "[cluster]\nredis_url = \"redis://127.0.0.1:1/0\"\npeer_listen = \"127.0.0.1:0\"\npeer_secret_env = \"BERTH_TEST_PEER_SECRET_{}\"\n",
            secret.len()
        );
        std::env::set_var(format!("BERTH_TEST_PEER_SECRET_{}", secret.len()), secret);
        let config = crate::config::Config::from_toml(&text).expect("valid");
        let cluster = config.cluster.expect("a cluster");
        Cluster::new(&cluster, Metrics::new(), TaskTracker::new()).expect("built")
    }

    #[tokio::test]
    async fn only_the_peer_secret_opens_the_peer_endpoint() {
        let c = cluster("0123456789abcdef-secret");
        let header = |v: &str| http::HeaderValue::from_str(v).expect("header");
        assert!(c.authorized(Some(&header("Bearer 0123456789abcdef-secret"))));
        assert!(!c.authorized(Some(&header("Bearer 0123456789abcdef-secreT"))));
        assert!(!c.authorized(Some(&header("Bearer 0123456789abcdef"))));
        assert!(!c.authorized(Some(&header("Basic 0123456789abcdef-secret"))));
        assert!(!c.authorized(None));
    }

    #[tokio::test]
    async fn an_unreachable_redis_is_out_of_use_at_once_and_says_why() {
        // Port 1 on loopback: connections are refused.
        let c = cluster("0123456789abcdef0123456789");
        c.probe().await.expect("a degraded start, not a refusal");
        assert!(!c.available(), "taken out of use for the back-off");
        assert!(c.state().starts_with("failing"), "{}", c.state());
        let errors = || {
            c.families()
                .redis_errors
                .get_or_create(&metrics::OpLabels { op: "ping" })
                .get()
        };
        assert_eq!(errors(), 1, "the probe's failure is counted");
        let claim = c.claim("fill", "fill:x", "u", "r").await;
        assert!(matches!(claim, Claim::Unavailable));
        let claims = c
            .families()
            .redis_errors
            .get_or_create(&metrics::OpLabels { op: "lease_claim" })
            .get();
        assert_eq!(claims, 0, "no command is sent while Redis is out of use");
        assert_eq!(errors(), 1);
    }
}
