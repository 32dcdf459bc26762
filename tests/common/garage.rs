//! A real S3-compatible object store for berth's shared tier: Garage 2.5.0
//! (the `garage` binary) as child processes on free loopback ports, each in
//! its own temporary directory, as a single node ([`Garage`]) or a
//! three-node cluster with replication factor 3 ([`GarageCluster`]).
//!
//! It exists so the shared tier is tested against a real store, with its
//! own idea of S3 and its own failures: nodes are stopped, killed and
//! started again (same data) by the tests. Both set up a bucket and a key
//! allowed to read, write and own it, the way an operator would
//! (`layout assign`, `layout apply`, `bucket create`, `key create`,
//! `bucket allow`), and hand out [`S3Access`]: what berth's configuration
//! needs, plus an independent client (`object_store`) to look at what berth
//! wrote.
//!
//! Counting requests: every S3 request is a line in the node's log, written
//! when the request arrives (before Garage handles it), whatever its
//! outcome, and the log is kept across restarts; so once a client has its
//! response, its request is counted. [`Garage::s3_requests`] reads those
//! lines. The admin API's metrics ([`Garage::s3_operations`]) name the
//! operation (`GetObject`, `UploadPart`, …) but restart from zero with the
//! process and leave out requests Garage could not route.

mod node;

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use futures_util::TryStreamExt as _;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::{ClientOptions, ObjectStore, PutPayload, RetryConfig};
use tempfile::TempDir;

use node::{Health, Node};

/// The S3 region Garage is configured with.
pub const REGION: &str = "garage";
/// The bucket the tests' Garage holds.
pub const BUCKET: &str = "berth";
/// The name of the key allowed on [`BUCKET`].
const KEY_NAME: &str = "berth-key";
/// How long the cluster may take to be whole again after a node restarts.
const RECONNECT_DEADLINE: Duration = Duration::from_secs(120);
/// Nodes in a [`GarageCluster`], and its replication factor.
pub const CLUSTER_NODES: usize = 3;
/// How long the harness's own S3 client waits for one request: a hang
/// guard, so a stopped node fails a helper instead of stalling it.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

/// Where and how to reach the bucket through one node's S3 API: what a
/// berth's `[storage.s3]` needs, and a client of the harness's own.
#[derive(Clone, Debug)]
pub struct S3Access {
    /// `http://127.0.0.1:PORT`; path-style addressing only.
    pub endpoint: String,
    pub region: String,
    pub bucket: String,
    pub access_key_id: String,
    pub secret_access_key: String,
}

impl S3Access {
    /// An `object_store` client for the bucket through this endpoint, with
    /// few retries and a bounded timeout (a stopped node fails it quickly).
    pub fn store(&self) -> AmazonS3 {
        AmazonS3Builder::new()
            .with_endpoint(&self.endpoint)
            .with_region(&self.region)
            .with_bucket_name(&self.bucket)
            .with_access_key_id(&self.access_key_id)
            .with_secret_access_key(&self.secret_access_key)
            .with_virtual_hosted_style_request(false)
            // Client options replace the builder's whole set (allow_http
            // included), so plain HTTP is allowed in them.
            .with_client_options(
                ClientOptions::new()
                    .with_allow_http(true)
                    .with_timeout(CLIENT_TIMEOUT)
                    .with_connect_timeout(Duration::from_secs(2)),
            )
            .with_retry(RetryConfig {
                max_retries: 1,
                retry_timeout: Duration::from_secs(5),
                ..RetryConfig::default()
            })
            .build()
            .expect("build an object_store client for Garage")
    }

    /// The keys of every object under `prefix` (a `/`-separated path: `a/b`
    /// lists `a/b/…`; empty lists the whole bucket), sorted.
    pub async fn keys(&self, prefix: &str) -> Vec<String> {
        self.try_keys(prefix)
            .await
            .unwrap_or_else(|e| panic!("list {prefix:?} at {}: {e}", self.endpoint))
    }

    /// [`S3Access::keys`], with a failure (the node is down) as `Err`.
    pub async fn try_keys(&self, prefix: &str) -> Result<Vec<String>, object_store::Error> {
        let prefix = (!prefix.is_empty()).then(|| ObjectPath::from(prefix));
        let mut keys: Vec<String> = self
            .store()
            .list(prefix.as_ref())
            .map_ok(|meta| meta.location.to_string())
            .try_collect()
            .await?;
        keys.sort();
        Ok(keys)
    }

    /// Every object under `prefix` with its size in bytes, sorted by key;
    /// panics if the node cannot list.
    pub async fn sizes(&self, prefix: &str) -> Vec<(String, u64)> {
        let listed = ObjectPath::from(prefix);
        let mut sizes: Vec<(String, u64)> = self
            .store()
            .list(Some(&listed))
            .map_ok(|meta| (meta.location.to_string(), meta.size))
            .try_collect()
            .await
            .unwrap_or_else(|e| panic!("list {prefix:?} at {}: {e}", self.endpoint));
        sizes.sort();
        sizes
    }

    /// The whole object at `key`, or `None` if there is none; panics on
    /// any other failure.
    pub async fn read(&self, key: &str) -> Option<Bytes> {
        match self.try_read(key).await {
            Ok(bytes) => Some(bytes),
            Err(object_store::Error::NotFound { .. }) => None,
            Err(e) => panic!("read {key:?} at {}: {e}", self.endpoint),
        }
    }

    /// The whole object at `key`, with any failure as `Err`.
    pub async fn try_read(&self, key: &str) -> Result<Bytes, object_store::Error> {
        self.store()
            .get(&ObjectPath::from(key))
            .await?
            .bytes()
            .await
    }

    /// Write `bytes` at `key` in one PUT (to seed or spoil the bucket
    /// behind berth's back).
    pub async fn put(&self, key: &str, bytes: impl Into<Bytes>) {
        self.store()
            .put(&ObjectPath::from(key), PutPayload::from(bytes.into()))
            .await
            .unwrap_or_else(|e| panic!("put {key:?} at {}: {e:?}", self.endpoint));
    }

    /// Delete the object at `key` (no error if there is none).
    pub async fn delete(&self, key: &str) {
        self.store()
            .delete(&ObjectPath::from(key))
            .await
            .unwrap_or_else(|e| panic!("delete {key:?} at {}: {e}", self.endpoint));
    }
}

/// One S3 request as a Garage node logged it on arrival.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Request {
    /// `GET`, `HEAD`, `PUT`, `POST`, `DELETE`.
    pub method: String,
    /// The path, bucket first: `/berth/<key>`.
    pub path: String,
    /// The query string without `?` (`uploads`, `partNumber=1&uploadId=…`,
    /// `list-type=2&prefix=…`), empty if none.
    pub query: String,
    /// The access key that signed it, if it was signed.
    pub key_id: Option<String>,
}

impl S3Request {
    /// The object key it addressed (its path after `/<bucket>/`,
    /// percent-decoded), if any.
    pub fn object_key(&self) -> Option<String> {
        let (_, key) = self.path.strip_prefix('/')?.split_once('/')?;
        (!key.is_empty()).then(|| percent_decode(key))
    }

    /// The S3 request line of one log line, if it is one: the node logs
    /// `<client addr> [(key <id>) ]<METHOD> <uri>` for every request to its
    /// APIs; the admin API's (`/v2/…`, `/health`) are left out.
    fn parse(line: &str) -> Option<S3Request> {
        let (_, message) = line.split_once("garage_api_common::generic_server: ")?;
        let mut words = message.split(' ');
        // "error 404 …, … in response to …" repeats a request already counted.
        let source = words.next()?;
        if !source.contains(':') {
            return None;
        }
        let mut word = words.next()?;
        if word.starts_with("(via") {
            words.next()?; // "<proxy addr>)"
            word = words.next()?;
        }
        let key_id = if word == "(key" {
            let id = words.next()?.trim_end_matches(')').to_owned();
            word = words.next()?;
            Some(id)
        } else {
            None
        };
        let method = word;
        if !method.bytes().all(|b| b.is_ascii_uppercase()) {
            return None;
        }
        let uri = words.next()?;
        let (path, query) = uri.split_once('?').unwrap_or((uri, ""));
        if ["/v0/", "/v1/", "/v2/", "/health", "/metrics", "/check"]
            .iter()
            .any(|admin| path.starts_with(admin))
        {
            return None;
        }
        Some(S3Request {
            method: method.to_owned(),
            path: path.to_owned(),
            query: query.to_owned(),
            key_id,
        })
    }
}

/// A single Garage node (replication factor 1) with [`BUCKET`] and a key
/// allowed on it. Dropping it kills the node and removes its data.
pub struct Garage {
    node: Node,
    access: S3Access,
    // Last: removed after the node is killed.
    _root: TempDir,
}

impl Garage {
    /// Start a node, lay it out, create the bucket and the key; about a
    /// second here.
    pub fn start() -> Garage {
        let root = temp_root();
        let node = Node::launch(root.path().join("node"), &super::random_hex(32), 1);
        let id = node.id();
        node.cli(&["layout", "assign", "-z", "dc1", "-c", "1G", &id]);
        node.cli(&["layout", "apply", "--version", "1"]);
        node.wait_health(Health::Full);
        let access = create_bucket(&node);
        Garage {
            node,
            access,
            _root: root,
        }
    }

    /// The bucket through this node's S3 API.
    pub fn access(&self) -> &S3Access {
        &self.access
    }

    /// `http://127.0.0.1:PORT` of its S3 API.
    pub fn endpoint(&self) -> &str {
        &self.access.endpoint
    }

    pub fn region(&self) -> &str {
        &self.access.region
    }

    pub fn bucket(&self) -> &str {
        &self.access.bucket
    }

    pub fn access_key_id(&self) -> &str {
        &self.access.access_key_id
    }

    pub fn secret_access_key(&self) -> &str {
        &self.access.secret_access_key
    }

    /// See [`S3Access::store`].
    pub fn store(&self) -> AmazonS3 {
        self.access.store()
    }

    /// See [`S3Access::keys`].
    pub async fn keys(&self, prefix: &str) -> Vec<String> {
        self.access.keys(prefix).await
    }

    /// See [`S3Access::read`].
    pub async fn read(&self, key: &str) -> Option<Bytes> {
        self.access.read(key).await
    }

    /// Stop the node gracefully (SIGTERM); its S3 port then refuses
    /// connections. Idempotent.
    pub fn stop(&mut self) {
        self.node.stop();
    }

    /// Kill the node (SIGKILL). Idempotent.
    pub fn kill(&mut self) {
        self.node.kill();
    }

    /// Start the node again (stopping it first if it runs), on the same
    /// ports with the same data, and wait until it serves.
    pub fn restart(&mut self) {
        self.node.restart();
        self.node.wait_health(Health::Full);
    }

    pub fn is_running(&self) -> bool {
        self.node.is_running()
    }

    /// Every S3 request the node has received, in order, across restarts.
    pub fn s3_requests(&self) -> Vec<S3Request> {
        parse_requests(&self.node.log())
    }

    /// How many S3 requests the node has received so far.
    pub fn s3_request_count(&self) -> usize {
        self.s3_requests().len()
    }

    /// Waits (a minute at most, then panics with the log) until `count`
    /// requests matching `filter` have arrived, and returns how many have:
    /// for requests berth makes in the background, such as an upload after
    /// a fill.
    pub async fn wait_for_s3_requests(
        &self,
        count: usize,
        filter: impl Fn(&S3Request) -> bool,
    ) -> usize {
        wait_for_requests(count, || {
            (
                self.s3_requests().iter().filter(|r| filter(r)).count(),
                self.node.log(),
            )
        })
        .await
    }

    /// The S3 requests by operation (`GetObject`, `HeadObject`,
    /// `PutObject`, `CreateMultipartUpload`, `UploadPart`,
    /// `CompleteMultipartUpload`, `ListObjectsV2`, …) from Garage's metrics,
    /// since the node last started.
    pub fn s3_operations(&self) -> BTreeMap<String, u64> {
        self.node.s3_operations()
    }

    /// Everything the node has logged, across restarts.
    pub fn log(&self) -> String {
        self.node.log()
    }

    /// The node's directory: config (`garage.toml`), metadata, data, log.
    pub fn dir(&self) -> &std::path::Path {
        self.node.dir()
    }
}

/// Three Garage nodes with replication factor 3 (each object on every node;
/// quorum 2 of 3 for reads and writes), in zones dc1..dc3, with [`BUCKET`]
/// and a key allowed on it. Every node serves S3. Dropping it kills them.
pub struct GarageCluster {
    nodes: Vec<Node>,
    key: (String, String),
    // Last: removed after the nodes are killed.
    _root: TempDir,
}

impl GarageCluster {
    /// Start three nodes (in parallel), connect them, lay them out, and
    /// create the bucket and the key.
    pub fn start() -> GarageCluster {
        let root = temp_root();
        let secret = super::random_hex(32);
        let nodes: Vec<Node> = std::thread::scope(|scope| {
            let starts: Vec<_> = (0..CLUSTER_NODES)
                .map(|i| {
                    let dir = root.path().join(format!("node{i}"));
                    let secret = &secret;
                    scope.spawn(move || Node::launch(dir, secret, CLUSTER_NODES as u8))
                })
                .collect();
            starts
                .into_iter()
                .map(|s| s.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
                .collect()
        });
        let first = &nodes[0];
        let ids: Vec<String> = nodes.iter().map(Node::id).collect();
        for (node, id) in nodes.iter().zip(&ids).skip(1) {
            first.cli(&["node", "connect", &format!("{id}@{}", node.rpc_addr())]);
        }
        for (i, id) in ids.iter().enumerate() {
            let zone = format!("dc{}", i + 1);
            first.cli(&["layout", "assign", "-z", &zone, "-c", "1G", id]);
        }
        first.cli(&["layout", "apply", "--version", "1"]);
        for node in &nodes {
            node.wait_health(Health::Full);
        }
        let access = create_bucket(first);
        GarageCluster {
            nodes,
            key: (access.access_key_id, access.secret_access_key),
            _root: root,
        }
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// The bucket through node `i`'s S3 API.
    pub fn access(&self, i: usize) -> S3Access {
        S3Access {
            endpoint: self.nodes[i].s3_endpoint(),
            region: REGION.to_owned(),
            bucket: BUCKET.to_owned(),
            access_key_id: self.key.0.clone(),
            secret_access_key: self.key.1.clone(),
        }
    }

    /// `http://127.0.0.1:PORT` of node `i`'s S3 API.
    pub fn endpoint(&self, i: usize) -> String {
        self.nodes[i].s3_endpoint()
    }

    /// Every node's S3 endpoint, in order.
    pub fn endpoints(&self) -> Vec<String> {
        self.nodes.iter().map(Node::s3_endpoint).collect()
    }

    /// The bucket through the first node that runs; panics if none does.
    pub fn any_access(&self) -> S3Access {
        let i = (0..self.len())
            .find(|&i| self.nodes[i].is_running())
            .expect("every Garage node is stopped");
        self.access(i)
    }

    /// See [`S3Access::keys`], through a running node.
    pub async fn keys(&self, prefix: &str) -> Vec<String> {
        self.any_access().keys(prefix).await
    }

    /// See [`S3Access::read`], through a running node.
    pub async fn read(&self, key: &str) -> Option<Bytes> {
        self.any_access().read(key).await
    }

    /// Stop node `i` gracefully (SIGTERM). Idempotent.
    pub fn stop_node(&mut self, i: usize) {
        self.nodes[i].stop();
    }

    /// Kill node `i` (SIGKILL). Idempotent.
    pub fn kill_node(&mut self, i: usize) {
        self.nodes[i].kill();
    }

    /// Start node `i` again, same ports and data, and wait until it serves:
    /// until every node reports the whole cluster up when all run, or until
    /// node `i` has quorum otherwise.
    pub fn restart_node(&mut self, i: usize) {
        self.nodes[i].restart();
        if self.nodes.iter().all(Node::is_running) {
            // The others dial a peer that was down again on a back-off
            // that grew while it was down: on a loaded machine that has
            // taken longer than a start's READY_DEADLINE (30 s).
            for node in &self.nodes {
                node.wait_health_within(Health::Full, RECONNECT_DEADLINE);
            }
        } else {
            self.nodes[i].wait_health(Health::Degraded);
        }
    }

    pub fn is_running(&self, i: usize) -> bool {
        self.nodes[i].is_running()
    }

    /// Every S3 request node `i` has received, in order, across restarts.
    pub fn s3_requests_to(&self, i: usize) -> Vec<S3Request> {
        parse_requests(&self.nodes[i].log())
    }

    /// Every S3 request the cluster has received (node by node).
    pub fn s3_requests(&self) -> Vec<S3Request> {
        (0..self.len())
            .flat_map(|i| self.s3_requests_to(i))
            .collect()
    }

    /// [`Garage::wait_for_s3_requests`] over the whole cluster.
    pub async fn wait_for_s3_requests(
        &self,
        count: usize,
        filter: impl Fn(&S3Request) -> bool,
    ) -> usize {
        wait_for_requests(count, || {
            (
                self.s3_requests().iter().filter(|r| filter(r)).count(),
                self.logs(),
            )
        })
        .await
    }

    /// [`Garage::s3_operations`] summed over the running nodes.
    pub fn s3_operations(&self) -> BTreeMap<String, u64> {
        let mut total = BTreeMap::new();
        for node in &self.nodes {
            for (operation, count) in node.s3_operations() {
                *total.entry(operation).or_insert(0) += count;
            }
        }
        total
    }

    /// Node `i`'s log, across restarts.
    pub fn log(&self, i: usize) -> String {
        self.nodes[i].log()
    }

    /// Every node's log, each under a header.
    pub fn logs(&self) -> String {
        (0..self.len())
            .map(|i| format!("==== node {i} ====\n{}", self.log(i)))
            .collect()
    }
}

/// The temporary directory a Garage's nodes live in.
fn temp_root() -> TempDir {
    tempfile::Builder::new()
        .prefix("berth-garage-")
        .tempdir()
        .expect("create Garage's temp dir")
}

/// `bucket create`, `key create` and `bucket allow --read --write --owner`
/// through `node`; the bucket through its S3 API.
fn create_bucket(node: &Node) -> S3Access {
    node.cli(&["bucket", "create", BUCKET]);
    let created = node.cli(&["key", "create", KEY_NAME]);
    // "Key ID:              GK…" and "Secret key:          …"
    let field = |name: &str| {
        created
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| panic!("no {name:?} in `garage key create`'s output:\n{created}"))
    };
    let (access_key_id, secret_access_key) = (field("Key ID:"), field("Secret key:"));
    node.cli(&[
        "bucket", "allow", "--read", "--write", "--owner", BUCKET, "--key", KEY_NAME,
    ]);
    S3Access {
        endpoint: node.s3_endpoint(),
        region: REGION.to_owned(),
        bucket: BUCKET.to_owned(),
        access_key_id,
        secret_access_key,
    }
}

fn parse_requests(log: &str) -> Vec<S3Request> {
    log.lines().filter_map(S3Request::parse).collect()
}

/// Polls `seen` (a count and the log to show on failure) until the count
/// reaches `count`; returns it. A minute is a hang guard.
async fn wait_for_requests(count: usize, mut seen: impl FnMut() -> (usize, String)) -> usize {
    let mut now = 0;
    let reached = super::eventually(Duration::from_secs(60), || {
        now = seen().0;
        now >= count
    })
    .await;
    assert!(
        reached,
        "{count} S3 requests never reached Garage's log (have {now}):\n{}",
        seen().1
    );
    now
}

/// `%XX` escapes decoded (clients escape `:` and the like in object keys).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| text.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
