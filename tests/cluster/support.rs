//! The cluster the tests run: one Garage node (the shared bucket), one
//! Redis, and three berth replicas, each a process of its own (so a test
//! can SIGKILL one) on an empty data directory, with `[storage.s3]` and
//! `[cluster]` pointing at them and the secrets in each process's own
//! environment, never in its config file.
//!
//! Each replica's peer listener is on a loopback port of its own choosing,
//! read back from its start-up log, so the `"peer"` a Redis lease names
//! tells which replica holds it. Clients read bodies
//! as a registry client does, hashing as they go, and note when their
//! first byte came: what the tests order against the upstream's own
//! record of when it finished sending.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use reqwest::{Client, StatusCode};
use sha2::{Digest as _, Sha256};

use crate::common::berth::Process;
use crate::common::content::Fixture;
use crate::common::garage::{Garage, S3Access};
use crate::common::http::{client, Reply};
use crate::common::redis::{Redis, RedisOptions};
use crate::common::replica::{blob_key, manifest_key, metric, s3_toml_env, PREFIX};
use crate::common::{digest_hex, random_hex, sha256_digest};

/// The name the harness gives the one upstream (as [`Process::start`]
/// generates the config).
pub const UPSTREAM: &str = "registry.test";
/// How long a condition the tests wait for may take: a hang guard, never
/// a timing check.
pub const GUARD: Duration = Duration::from_secs(90);
/// Replicas in a [`Cluster`].
pub const REPLICAS: usize = 3;
/// The lease period the tests configure (`[cluster] lease`): short, so a
/// lease left by a killed replica lapses within a test.
pub const LEASE: Duration = Duration::from_secs(3);

const S3_KEY_VAR: &str = "CLUSTER_TEST_S3_KEY_ID";
const S3_SECRET_VAR: &str = "CLUSTER_TEST_S3_SECRET";
const PEER_SECRET_VAR: &str = "CLUSTER_TEST_PEER_SECRET";
const REDIS_PASSWORD_VAR: &str = "CLUSTER_TEST_REDIS_PASSWORD";

/// How a [`Cluster`] is started.
#[derive(Default)]
pub struct Options {
    /// TOML merged over each replica's generated config (tables merge,
    /// values replace): `[upstream]` fields, `[storage.s3]` additions.
    pub extra: String,
    /// Redis requires this password (`requirepass`); the replicas take it
    /// from their environment (`redis_password_env`).
    pub redis_password: Option<String>,
}

/// Garage, Redis and three replicas pulling from one upstream. Dropping it
/// kills them all.
pub struct Cluster {
    pub garage: Garage,
    pub redis: Redis,
    replicas: Vec<Process>,
    /// Each replica's peer address, as its leases name it.
    peers: Vec<String>,
    /// The secret the peer endpoints require (`Authorization: Bearer`).
    pub peer_secret: String,
}

impl Cluster {
    /// A cluster of [`REPLICAS`] replicas of `upstream_url`, each ready
    /// (answering `/v2/`) when this returns.
    pub async fn start(upstream_url: &str, options: Options) -> Cluster {
        let garage = Garage::start();
        let redis = match &options.redis_password {
            Some(password) => Redis::start_with_password(password),
            None => Redis::start_with(RedisOptions::default()),
        };
        let secret = random_hex(24);
        let mut replicas = Vec::new();
        let mut peers = Vec::new();
        for _ in 0..REPLICAS {
            let toml = replica_toml(garage.access(), &redis, &options.extra);
            let access = garage.access();
            let mut env = vec![
                (S3_KEY_VAR, access.access_key_id.as_str()),
                (S3_SECRET_VAR, access.secret_access_key.as_str()),
                (PEER_SECRET_VAR, secret.as_str()),
            ];
            if let Some(password) = redis.password() {
                env.push((REDIS_PASSWORD_VAR, password));
            }
            let replica = Process::start(&toml, upstream_url, &env).await;
            peers.push(advertised_peer(&replica).await);
            replicas.push(replica);
        }
        Cluster {
            garage,
            redis,
            replicas,
            peers,
            peer_secret: secret,
        }
    }

    /// `http://127.0.0.1:PORT` of replica `i`'s client listener.
    pub fn url(&self, i: usize) -> String {
        self.replicas[i].url()
    }

    /// Replica `i`'s peer address (`127.0.0.1:PORT`).
    pub fn peer(&self, i: usize) -> &str {
        &self.peers[i]
    }

    /// The replica whose peer address is `peer`.
    pub fn replica_at(&self, peer: &str) -> Option<usize> {
        self.peers.iter().position(|p| p == peer)
    }

    /// SIGKILL replica `i`, as a lost node would.
    pub fn kill(&mut self, i: usize) {
        self.replicas[i].kill();
    }

    /// Every replica's log, for a failure message.
    pub fn logs(&self) -> String {
        self.replicas
            .iter()
            .enumerate()
            .map(|(i, r)| format!("--- replica {i} ({}):\n{}\n", self.peers[i], r.log()))
            .collect()
    }

    /// A metric of each replica in turn (0 for one that no longer runs).
    pub async fn metric_each(&self, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
        let mut values = Vec::new();
        for replica in &self.replicas {
            let url = replica.url();
            let up = client().get(format!("{url}/metrics")).send().await.is_ok();
            values.push(if up {
                metric(&url, name, labels).await
            } else {
                0.0
            });
        }
        values
    }

    /// Starts watching the fill lease of `digest`: every peer it names
    /// from now on, with when it was first seen, until the watch is
    /// dropped.
    pub fn watch_fill_lease(&self, digest: &str) -> LeaseWatch {
        let seen = Arc::new(Mutex::new(Vec::<(String, Instant)>::new()));
        let stop = Arc::new(AtomicU64::new(0));
        let key = format!("{PREFIX}:fill:{digest}");
        let port = self.redis.port().to_string();
        let password = self.redis.password().map(str::to_owned);
        let (seen_by_task, stop_by_task) = (seen.clone(), stop.clone());
        let task = std::thread::spawn(move || {
            while stop_by_task.load(Ordering::Relaxed) == 0 {
                if let Some(lease) = read_lease(&port, password.as_deref(), &key) {
                    let mut seen = seen_by_task.lock().unwrap_or_else(|e| e.into_inner());
                    if !seen.iter().any(|(peer, _)| *peer == lease.peer) {
                        seen.push((lease.peer, Instant::now()));
                    }
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        LeaseWatch {
            seen,
            stop,
            task: Some(task),
        }
    }
}

/// `redis-cli GET key` without a [`Redis`] at hand (from the watcher's
/// thread), parsed as a lease.
fn read_lease(port: &str, password: Option<&str>, key: &str) -> Option<Lease> {
    let mut command = std::process::Command::new("redis-cli");
    command
        .args(["-h", "127.0.0.1", "-p", port, "--raw", "GET", key])
        .env_remove("REDISCLI_AUTH");
    if let Some(password) = password {
        command.env("REDISCLI_AUTH", password);
    }
    let output = crate::common::run_bounded(command, Duration::from_secs(10)).ok()?;
    Lease::parse(String::from_utf8_lossy(&output.stdout).trim())
}

/// A lease as berth writes it in Redis: JSON naming the replica that holds
/// it by its peer address.
#[derive(Clone, Debug)]
pub struct Lease {
    pub peer: String,
}

impl Lease {
    fn parse(text: &str) -> Option<Lease> {
        let json: serde_json::Value = serde_json::from_str(text).ok()?;
        let peer = json.get("peer")?.as_str()?.to_owned();
        Some(Lease { peer })
    }
}

/// The peers a fill lease named while it was watched.
pub struct LeaseWatch {
    seen: Arc<Mutex<Vec<(String, Instant)>>>,
    stop: Arc<AtomicU64>,
    task: Option<std::thread::JoinHandle<()>>,
}

impl LeaseWatch {
    /// Every peer named so far, with when it was first seen, in order.
    pub fn seen(&self) -> Vec<(String, Instant)> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Waits until the lease has named some peer; the first one.
    pub async fn first(&self) -> String {
        let mut first = None;
        crate::common::eventually(GUARD, || {
            first = self.seen().first().map(|(peer, _)| peer.clone());
            first.is_some()
        })
        .await;
        first.expect("the fill lease was never seen in Redis")
    }
}

impl Drop for LeaseWatch {
    fn drop(&mut self) {
        self.stop.store(1, Ordering::Relaxed);
        if let Some(task) = self.task.take() {
            let _ = task.join();
        }
    }
}

/// The peer address `replica` advertises, as its log says at start-up
/// (`peer endpoint … listening addr=… advertised=…`): its peer listener is
/// on a port of its own choosing (port 0), so no other test can take it
/// between choosing and binding.
async fn advertised_peer(replica: &Process) -> String {
    const LINE: &str = "peer endpoint (for the cluster's replicas) listening";
    let mut peer = None;
    crate::common::eventually(GUARD, || {
        peer = replica
            .log()
            .lines()
            .filter(|line| line.contains(LINE))
            .find_map(|line| {
                let rest = &line[line.find("advertised")? + "advertised".len()..];
                let rest = rest.trim_start_matches(['=', ':', '"', ' ']);
                let end = rest
                    .find(|c: char| !(c.is_ascii_alphanumeric() || ".:[]-".contains(c)))
                    .unwrap_or(rest.len());
                Some(rest[..end].to_owned()).filter(|p| !p.is_empty())
            });
        peer.is_some()
    })
    .await;
    peer.unwrap_or_else(|| {
        panic!(
            "the replica never logged its peer address ({LINE:?}); its log:\n{}",
            replica.log()
        )
    })
}

/// A replica's config: `[storage.s3]` on `access` with its credentials in
/// the environment, `[cluster]` on `redis` with its peer listener on a
/// loopback port of its own choosing, and `extra` merged over both.
fn replica_toml(access: &S3Access, redis: &Redis, extra: &str) -> String {
    let s3 = s3_toml_env(access, (S3_KEY_VAR, S3_SECRET_VAR), "");
    let mut cluster = format!(
        "[cluster]\nredis_url = {:?}\nredis_timeout = \"2s\"\npeer_listen = \"127.0.0.1:0\"\n\
         peer_secret_env = {PEER_SECRET_VAR:?}\nlease = \"{}s\"\n",
        format!("{}/0", redis.url_without_password()),
        LEASE.as_secs()
    );
    if redis.password().is_some() {
        cluster.push_str(&format!("redis_password_env = {REDIS_PASSWORD_VAR:?}\n"));
    }
    let mut base: toml::Table = format!("{s3}\n{cluster}")
        .parse()
        .expect("the harness's own TOML parses");
    let extra: toml::Table = extra
        .parse()
        .unwrap_or_else(|e| panic!("test's extra TOML does not parse: {e}\n{extra}"));
    merge(&mut base, extra);
    toml::to_string(&base).expect("serialize a replica's config")
}

/// Tables merge, other values replace.
pub fn merge(into: &mut toml::Table, from: toml::Table) {
    for (key, value) in from {
        match (into.get_mut(&key), value) {
            (Some(toml::Value::Table(a)), toml::Value::Table(b)) => merge(a, b),
            (_, value) => {
                into.insert(key, value);
            }
        }
    }
}

/// How one client's GET ended.
#[derive(Clone, Debug)]
// The fields are read through `Debug`, in failure messages.
#[allow(dead_code)]
pub enum Ended {
    /// The body ended cleanly, as long as its `Content-Length` said: these
    /// bytes (their digest and length).
    Clean { digest: String, len: u64 },
    /// The body was cut: an error, or fewer bytes than announced.
    Cut { received: u64, reason: String },
    /// No body: the request failed or the status was not 200.
    Refused(String),
}

/// One client's GET of a blob from one replica.
#[derive(Clone, Debug)]
pub struct Pulled {
    pub replica: usize,
    /// When its first body byte arrived, if one did.
    pub first_byte: Option<Instant>,
    pub ended: Ended,
}

impl Pulled {
    /// Whether it ended cleanly with the bytes of `digest`, `len` long.
    pub fn is_right(&self, digest: &str, len: u64) -> bool {
        matches!(&self.ended, Ended::Clean { digest: d, len: l } if d == digest && *l == len)
    }

    /// Whether it ended cleanly with bytes that are not `digest`'s: the
    /// one outcome no failure may ever produce.
    pub fn is_wrong(&self, digest: &str, len: u64) -> bool {
        matches!(self.ended, Ended::Clean { .. }) && !self.is_right(digest, len)
    }
}

/// GET `url` as a client does, hashing the body as it comes; `received`
/// counts its bytes as they arrive (for a test that waits for a transfer
/// to be under way).
pub async fn pull(http: &Client, url: &str, replica: usize, received: &AtomicU64) -> Pulled {
    let refused = |why: String| Pulled {
        replica,
        first_byte: None,
        ended: Ended::Refused(why),
    };
    let mut response = match http.get(url).send().await {
        Ok(response) => response,
        Err(e) => return refused(format!("GET {url}: {e}")),
    };
    if response.status() != StatusCode::OK {
        return refused(format!("GET {url}: status {}", response.status()));
    }
    let expected = response.content_length();
    let mut hasher = Sha256::new();
    let mut len = 0u64;
    let mut first_byte = None;
    let ended = loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if first_byte.is_none() && !chunk.is_empty() {
                    first_byte = Some(Instant::now());
                }
                len += chunk.len() as u64;
                received.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                hasher.update(&chunk);
            }
            Ok(None) => match expected {
                Some(want) if want != len => {
                    break Ended::Cut {
                        received: len,
                        reason: format!("body ended after {len} of {want} bytes"),
                    }
                }
                _ => {
                    break Ended::Clean {
                        digest: format!("sha256:{}", hex::encode(hasher.finalize())),
                        len,
                    }
                }
            },
            Err(e) => {
                break Ended::Cut {
                    received: len,
                    reason: format!("body error: {e:?}"),
                }
            }
        }
    };
    Pulled {
        replica,
        first_byte,
        ended,
    }
}

/// `clients` GETs of `repo`'s blob `digest` at once, client `n` on replica
/// `n % REPLICAS` (round robin); each task's byte counter alongside.
pub fn storm(
    cluster: &Cluster,
    repo: &str,
    digest: &str,
    clients: usize,
) -> Vec<(
    tokio::task::JoinHandle<Pulled>,
    Arc<AtomicU64>,
    usize, // replica
)> {
    let http = client();
    (0..clients)
        .map(|n| {
            let replica = n % REPLICAS;
            let url = format!("{}/v2/{repo}/blobs/{digest}", cluster.url(replica));
            let received = Arc::new(AtomicU64::new(0));
            let (http, counter) = (http.clone(), received.clone());
            let task = tokio::spawn(async move { pull(&http, &url, replica, &counter).await });
            (task, received, replica)
        })
        .collect()
}

/// Waits for every task of a [`storm`].
pub async fn outcomes(
    tasks: Vec<(tokio::task::JoinHandle<Pulled>, Arc<AtomicU64>, usize)>,
) -> Vec<Pulled> {
    let mut pulled = Vec::new();
    for (task, _, _) in tasks {
        let result = tokio::time::timeout(GUARD, task)
            .await
            .expect("a client's GET never ended (hang guard)");
        pulled.push(result.expect("a client task panicked"));
    }
    pulled
}

/// Pulls `fixture` from the replica at `base_url` as a client does: its
/// manifest by tag, then every blob by digest, each checked against its
/// digest.
pub async fn pull_image(base_url: &str, fixture: &Fixture) {
    let http = client();
    let url = format!("{base_url}/v2/{}/manifests/{}", fixture.repo, fixture.tag);
    let reply = Reply::of(http.get(&url).header("accept", fixture.root.media_type)).await;
    assert_eq!(reply.status, StatusCode::OK, "GET {url}");
    assert_eq!(
        sha256_digest(&reply.body),
        fixture.root.digest,
        "GET {url}: not the manifest"
    );
    let counter = AtomicU64::new(0);
    for blob in &fixture.blobs {
        let url = format!("{base_url}/v2/{}/blobs/{}", fixture.repo, blob.digest);
        let pulled = pull(&http, &url, 0, &counter).await;
        assert!(
            pulled.is_right(&blob.digest, blob.bytes.len() as u64),
            "GET {url}: {:?}",
            pulled.ended
        );
    }
}

/// GETs `repo`'s blob `digest` from the replica at `base_url`, checking
/// every byte (`len` of them) against the digest.
pub async fn pull_image_blob(base_url: &str, repo: &str, digest: &str, len: usize) {
    let url = format!("{base_url}/v2/{repo}/blobs/{digest}");
    let pulled = pull(&client(), &url, 0, &AtomicU64::new(0)).await;
    assert!(
        pulled.is_right(digest, len as u64),
        "GET {url}: {:?}",
        pulled.ended
    );
}

/// Waits until the bucket holds `fixture`'s manifest and every blob, and
/// checks each hashes to its digest.
pub async fn wait_in_bucket(access: &S3Access, fixture: &Fixture) {
    let mut keys = vec![(manifest_key(&fixture.root.digest), &fixture.root.digest)];
    keys.extend(
        fixture
            .blobs
            .iter()
            .map(|b| (blob_key(&b.digest), &b.digest)),
    );
    let until = tokio::time::Instant::now() + GUARD;
    loop {
        let listed = access.try_keys(PREFIX).await.unwrap_or_default();
        if keys.iter().all(|(k, _)| listed.contains(k)) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "{} never wholly in the bucket; it holds {listed:#?}",
            fixture.repo
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (key, digest) in keys {
        assert_whole_or_absent(access, &key, digest).await;
    }
}

/// The object at `key` is absent, or whole: its bytes hash to `digest`.
/// Whether it is there.
pub async fn assert_whole_or_absent(access: &S3Access, key: &str, digest: &str) -> bool {
    match access.read(key).await {
        None => false,
        Some(bytes) => {
            assert_eq!(
                sha256_digest(&bytes),
                digest,
                "{key} holds {} bytes that are not {digest}: a partial object",
                bytes.len()
            );
            true
        }
    }
}

/// Every object under `<prefix>/blobs/` hashes to the digest its key names.
pub async fn every_blob_object_whole(access: &S3Access) {
    for (key, _) in access.sizes(&format!("{PREFIX}/blobs")).await {
        let hex = key.rsplit('/').next().unwrap_or_default();
        assert_whole_or_absent(access, &key, &format!("sha256:{hex}")).await;
    }
}

/// Seconds since the epoch, now.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// The hex of `digest`, as Redis members and object keys name it.
pub fn hex_of(digest: &str) -> &str {
    digest_hex(digest)
}
