//! An in-process upstream registry that misbehaves on request.
//!
//! A real registry never truncates, corrupts or stalls a blob on cue, and
//! never lets us count its token requests, so berth's failure handling, its
//! single-flight fills and its token cache are tested against this instead:
//! a plain hyper server on 127.0.0.1:0 answering `/v2/`, manifests, blobs
//! and `/token` from in-memory maps, with a behaviour per blob and per
//! manifest (cut, stalled, redirected, refused with a canned status, or
//! never answered), and a log of every request it saw with the credentials
//! it carried.
//!
//! A tag can also have variants by media type, chosen by the request's
//! `Accept` as a registry chooses between an index and a Docker v2 manifest,
//! and a manifest's HEADs can be held at a gate, as GETs can.
//!
//! Tag lists are served in pages chained by `Link` headers. A pull limit can
//! be set, counted and announced the way Docker Hub does it.
//!
//! `/storage/<digest>` serves any known blob whole: the target of redirects,
//! standing in for a CDN or object store. A second `Hostile` is another
//! origin (another port) for redirects that leave the registry's host.

mod faults;
mod ratelimit;
mod reply;
mod send;
mod serve;
mod tags;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, Method, Request};
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use self::faults::TokenBehaviour;
pub use self::ratelimit::PullLimit;
pub use self::reply::Canned;
pub use self::send::{Behaviour, SendOutcome};
use self::serve::serve;
use super::content::Fixture;
use super::sha256_digest;

/// How long the `wait_*` helpers wait: a hang guard, not a timing check.
const WAIT_GUARD: Duration = Duration::from_secs(60);

/// How a manifest is served on GET (HEAD is answered directly, unless
/// [`Hostile::gate_manifest_heads`] holds it).
#[derive(Clone, Debug)]
pub enum ManifestBehaviour {
    /// As stored.
    Normal,
    /// As stored, but with a `Docker-Content-Digest` of other bytes.
    WrongDigestHeader,
    /// As stored, once [`Hostile::release_manifest`] opens its gate.
    Gated,
    /// Headers never come: the request is held until the server stops.
    Hang,
    /// This status, headers and body instead of the manifest.
    Answer(Canned),
    /// This status and the first bytes of an OCI error body, then a body
    /// that never ends.
    StalledError(http::StatusCode),
    /// As stored, one byte per `pause`.
    Trickle { pause: Duration },
    /// As stored to a GET whose `Accept` names its media type (or names
    /// none); otherwise `400 MANIFEST_INVALID`, as distribution 2.8
    /// answers an OCI-only `Accept` for a Docker schema 2 manifest.
    RefuseUnaccepted,
}

/// One request as the upstream saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: Method,
    pub path: String,
    /// The `Authorization` header, if any.
    pub authorization: Option<String>,
    /// The `Accept` headers, joined with ", ", if any.
    pub accept: Option<String>,
    /// The `Range` header, if any.
    pub range: Option<String>,
}

/// What the upstream asks of a request before it answers.
#[derive(Default)]
enum Guard {
    #[default]
    Open,
    /// A Bearer token from `/token`.
    Token,
    /// This exact `Authorization: Basic …` value.
    Basic(String),
}

type ManifestKey = (String, String);

#[derive(Default)]
struct State {
    manifests: HashMap<ManifestKey, (String, Bytes)>,
    manifest_behaviours: HashMap<ManifestKey, ManifestBehaviour>,
    manifest_gates: HashMap<ManifestKey, watch::Sender<bool>>,
    /// Tags served by `Accept`: (media type, bytes), in order of preference.
    manifest_variants: HashMap<ManifestKey, Vec<(String, Bytes)>>,
    /// Gates that HEADs of a manifest wait behind.
    head_gates: HashMap<ManifestKey, watch::Sender<bool>>,
    blobs: HashMap<String, (Bytes, Behaviour)>,
    /// Whether blob GETs honour a single `Range` (206); by default the
    /// whole blob is sent (200), as some registries and CDNs do.
    serve_ranges: bool,
    /// Docker Hub's pull limit, when set: manifest GETs count against it.
    pull_limit: Option<PullLimit>,
    /// Per repository: its tags, in the order served, and the page size.
    tag_lists: HashMap<String, (Arc<Vec<String>>, usize)>,
    /// Blobs that exist in one repository only; others answer 404.
    blob_homes: HashMap<String, String>,
    gates: HashMap<String, watch::Sender<bool>>,
    blob_gets: HashMap<String, usize>,
    outcomes: HashMap<String, Vec<SendOutcome>>,
    /// When each send of `outcomes` ended, in the same order.
    ended_at: HashMap<String, Vec<Instant>>,
    requests: Vec<Seen>,
    guard: Guard,
    tokens: HashSet<String>,
    token_requests: usize,
    /// How `/token` answers, per repository named in the scope ("" for
    /// any repository without one of its own).
    token_behaviours: HashMap<String, TokenBehaviour>,
    /// The realm challenges name, when not this server's own `/token`.
    token_realm: Option<String>,
    /// Bytes handed to berth by `Endless` blob bodies that have ended.
    endless_sent: Vec<u64>,
    challenges: usize,
}

struct Shared {
    state: Mutex<State>,
    /// Bumped whenever a request arrives or a blob send ends, so tests can
    /// wait for either.
    changes: watch::Sender<u64>,
    addr: SocketAddr,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock is a harness bug; keep going anyway.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record_request(&self, request: &Request<Incoming>) {
        let accept: Vec<&str> = request
            .headers()
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        let seen = Seen {
            method: request.method().clone(),
            path: request.uri().path().to_owned(),
            authorization: request
                .headers()
                .get(header::AUTHORIZATION)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()),
            accept: (!accept.is_empty()).then(|| accept.join(", ")),
            range: request
                .headers()
                .get(header::RANGE)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()),
        };
        self.state().requests.push(seen);
        self.changes.send_modify(|n| *n += 1);
    }

    fn record_outcome(&self, digest: &str, outcome: SendOutcome) {
        let ended = Instant::now();
        let mut state = self.state();
        state
            .outcomes
            .entry(digest.to_owned())
            .or_default()
            .push(outcome);
        state
            .ended_at
            .entry(digest.to_owned())
            .or_default()
            .push(ended);
        drop(state);
        self.changes.send_modify(|n| *n += 1);
    }
}

/// The running hostile upstream. Stops (listener and open connections) on
/// [`Hostile::stop`] or drop.
pub struct Hostile {
    shared: Arc<Shared>,
    server: Option<JoinHandle<()>>,
}

impl Hostile {
    pub async fn start() -> Hostile {
        Hostile::start_on([127, 0, 0, 1].into()).await
    }

    /// [`Hostile::start`] on a free port of `ip` (an address the test's
    /// own network namespace holds).
    pub async fn start_on(ip: std::net::IpAddr) -> Hostile {
        let listener = TcpListener::bind((ip, 0))
            .await
            .unwrap_or_else(|e| panic!("bind the hostile upstream on {ip}: {e}"));
        let addr = listener.local_addr().expect("hostile upstream address");
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changes: watch::channel(0).0,
            addr,
        });
        let server = tokio::spawn(serve(listener, shared.clone()));
        Hostile {
            shared,
            server: Some(server),
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.shared.addr)
    }

    /// Serve `bytes` as a manifest under `reference` and under its digest.
    pub fn add_manifest(&self, repo: &str, reference: &str, media_type: &str, bytes: Bytes) {
        let digest = sha256_digest(&bytes);
        for r in [reference, &digest] {
            self.add_manifest_as(repo, r, media_type, bytes.clone());
        }
    }

    /// Serve `bytes` as a manifest under `reference` only, even when
    /// `reference` is a digest of other bytes.
    pub fn add_manifest_as(&self, repo: &str, reference: &str, media_type: &str, bytes: Bytes) {
        self.shared.state().manifests.insert(
            (repo.to_owned(), reference.to_owned()),
            (media_type.to_owned(), bytes),
        );
    }

    /// How GETs of `repo`'s manifest `reference` are answered from now on.
    pub fn set_manifest_behaviour(
        &self,
        repo: &str,
        reference: &str,
        behaviour: ManifestBehaviour,
    ) {
        let key = (repo.to_owned(), reference.to_owned());
        let mut state = self.shared.state();
        if matches!(behaviour, ManifestBehaviour::Gated) {
            state
                .manifest_gates
                .insert(key.clone(), watch::channel(false).0);
        }
        state.manifest_behaviours.insert(key, behaviour);
    }

    /// Let a `Gated` manifest's pending and future GETs be answered.
    pub fn release_manifest(&self, repo: &str, reference: &str) {
        let state = self.shared.state();
        let gate = state
            .manifest_gates
            .get(&(repo.to_owned(), reference.to_owned()))
            .unwrap_or_else(|| panic!("no gated manifest {repo}:{reference}"));
        gate.send_replace(true);
    }

    /// Serve `reference` as the first of `variants` (media type, bytes)
    /// whose media type the request's `Accept` names, or the last one when it
    /// names none, the way a registry falls back to a Docker v2 manifest for
    /// a client that cannot read an index. Each variant is served under its
    /// own digest as well.
    pub fn add_manifest_variants(&self, repo: &str, reference: &str, variants: &[(&str, Bytes)]) {
        assert!(!variants.is_empty(), "a tag needs at least one variant");
        for (media_type, bytes) in variants {
            self.add_manifest_as(repo, &sha256_digest(bytes), media_type, bytes.clone());
        }
        let variants = variants
            .iter()
            .map(|(media_type, bytes)| ((*media_type).to_owned(), bytes.clone()))
            .collect();
        self.shared
            .state()
            .manifest_variants
            .insert((repo.to_owned(), reference.to_owned()), variants);
    }

    /// From now on, HEADs of `repo`'s manifest `reference` are held until
    /// [`Hostile::release_manifest_heads`]; GETs are not affected.
    pub fn gate_manifest_heads(&self, repo: &str, reference: &str) {
        self.shared.state().head_gates.insert(
            (repo.to_owned(), reference.to_owned()),
            watch::channel(false).0,
        );
    }

    /// Let the held and future HEADs of a gated manifest be answered.
    pub fn release_manifest_heads(&self, repo: &str, reference: &str) {
        let state = self.shared.state();
        let gate = state
            .head_gates
            .get(&(repo.to_owned(), reference.to_owned()))
            .unwrap_or_else(|| panic!("no gated manifest HEADs for {repo}:{reference}"));
        gate.send_replace(true);
    }

    /// From now on, blob GETs with a single `Range` get `206` and that
    /// range (sent with the blob's behaviour, pauses included).
    pub fn serve_ranges(&self) {
        self.shared.state().serve_ranges = true;
    }

    /// Count manifest GETs against `limit` from now on, as Docker Hub does
    /// (HEADs are free), answering 429 once none remain.
    pub fn set_pull_limit(&self, limit: PullLimit) {
        self.shared.state().pull_limit = Some(limit);
    }

    /// Pulls left under the limit.
    pub fn pulls_remaining(&self) -> Option<u64> {
        self.shared.state().pull_limit.as_ref().map(|l| l.remaining)
    }

    /// Serve `tags` as `repo`'s tag list, in pages of `page_size` chained by
    /// `Link` headers, as distribution does.
    pub fn set_tag_list(&self, repo: &str, tags: Vec<String>, page_size: usize) {
        assert!(page_size > 0, "a page holds at least one tag");
        self.shared
            .state()
            .tag_lists
            .insert(repo.to_owned(), (Arc::new(tags), page_size));
    }

    /// Serve a blob with `behaviour` in every repository; returns its digest.
    pub fn add_blob(&self, bytes: Bytes, behaviour: Behaviour) -> String {
        let digest = sha256_digest(&bytes);
        let mut state = self.shared.state();
        if matches!(behaviour, Behaviour::Gated { .. }) {
            state.gates.insert(digest.clone(), watch::channel(false).0);
        }
        state.blobs.insert(digest.clone(), (bytes, behaviour));
        digest
    }

    /// Serve a blob in `repo` only: every other repository answers 404
    /// `BLOB_UNKNOWN` for it, as a registry does for private content.
    pub fn add_blob_in(&self, repo: &str, bytes: Bytes, behaviour: Behaviour) -> String {
        let digest = self.add_blob(bytes, behaviour);
        self.shared
            .state()
            .blob_homes
            .insert(digest.clone(), repo.to_owned());
        digest
    }

    /// Serve every manifest and blob of `fixture`, blobs `Normal`.
    pub fn add_fixture(&self, fixture: &Fixture) {
        for blob in &fixture.blobs {
            self.add_blob(blob.bytes.clone(), Behaviour::Normal);
        }
        for child in &fixture.children {
            self.add_manifest(
                &fixture.repo,
                &child.digest,
                child.media_type,
                child.bytes.clone(),
            );
        }
        let root = &fixture.root;
        self.add_manifest(
            &fixture.repo,
            &fixture.tag,
            root.media_type,
            root.bytes.clone(),
        );
    }

    /// From now on, every `/v2/` and `/storage/` request needs a Bearer
    /// token from `/token`.
    pub fn require_token(&self) {
        self.shared.state().guard = Guard::Token;
    }

    /// From now on, every `/v2/` and `/storage/` request needs HTTP basic
    /// credentials `username`:`password`; anything else gets a Basic challenge.
    pub fn require_basic(&self, username: &str, password: &str) {
        // Let reqwest encode the header, so the harness needs no base64 of its own.
        let request = super::http::client()
            .get(self.url())
            .basic_auth(username, Some(password))
            .build()
            .expect("build a request to encode basic credentials");
        let expected = request.headers()[header::AUTHORIZATION]
            .to_str()
            .expect("basic credentials are ASCII")
            .to_owned();
        self.shared.state().guard = Guard::Basic(expected);
    }

    /// Challenges name `realm` (a URL, on another server, say) instead of
    /// this server's own `/token`.
    pub fn set_token_realm(&self, realm: &str) {
        self.shared.state().token_realm = Some(realm.to_owned());
    }

    /// How `/token` answers requests whose scope names `repo` (`None`: any
    /// repository without a behaviour of its own).
    pub fn set_token_behaviour(&self, repo: Option<&str>, behaviour: TokenBehaviour) {
        self.shared
            .state()
            .token_behaviours
            .insert(repo.unwrap_or("").to_owned(), behaviour);
    }

    /// Bytes each ended `Endless` blob body handed over, in order.
    pub fn endless_sent(&self) -> Vec<u64> {
        self.shared.state().endless_sent.clone()
    }

    /// Wait until `count` `Endless` bodies have ended; their byte counts.
    pub async fn wait_endless(&self, count: usize) -> Vec<u64> {
        let ended = self
            .wait_until(|state| state.endless_sent.len() >= count)
            .await;
        let sent = self.endless_sent();
        assert!(ended, "{count} endless bodies never ended (have {sent:?})");
        sent
    }

    /// Let a `Gated` blob's pending and future sends run to the end.
    pub fn release(&self, digest: &str) {
        let state = self.shared.state();
        let gate = state
            .gates
            .get(digest)
            .unwrap_or_else(|| panic!("no gated blob {digest}"));
        gate.send_replace(true);
    }

    /// GET requests for blob `digest` answered with its bytes so far (HEADs,
    /// 404s and redirects not counted; ranges counted).
    pub fn blob_gets(&self, digest: &str) -> usize {
        self.shared
            .state()
            .blob_gets
            .get(digest)
            .copied()
            .unwrap_or(0)
    }

    /// Every request seen so far, in order of arrival.
    pub fn requests(&self) -> Vec<Seen> {
        self.shared.state().requests.clone()
    }

    /// Requests seen so far with this method and path.
    pub fn requests_to(&self, method: &Method, path: &str) -> Vec<Seen> {
        let state = self.shared.state();
        matching(&state, method, path).cloned().collect()
    }

    /// GET requests for `repo`'s manifest `reference` so far, whatever the
    /// answer.
    pub fn manifest_gets(&self, repo: &str, reference: &str) -> usize {
        let path = format!("/v2/{repo}/manifests/{reference}");
        self.requests_to(&Method::GET, &path).len()
    }

    /// HEAD requests for `repo`'s manifest `reference` so far, whatever the
    /// answer.
    pub fn manifest_heads(&self, repo: &str, reference: &str) -> usize {
        let path = format!("/v2/{repo}/manifests/{reference}");
        self.requests_to(&Method::HEAD, &path).len()
    }

    /// Wait until `count` HEADs of `repo`'s manifest `reference` have
    /// arrived. Panics after a generous minute: a hang guard, not a timing
    /// check.
    pub async fn wait_manifest_heads(&self, repo: &str, reference: &str, count: usize) {
        let path = format!("/v2/{repo}/manifests/{reference}");
        let arrived = self
            .wait_until(|state| matching(state, &Method::HEAD, &path).count() >= count)
            .await;
        assert!(
            arrived,
            "{count} HEADs of {path} never arrived (have {})",
            self.manifest_heads(repo, reference)
        );
    }

    /// Wait until `count` GETs of `repo`'s manifest `reference` have arrived.
    /// Panics after a generous minute: a hang guard, not a timing check.
    pub async fn wait_manifest_gets(&self, repo: &str, reference: &str, count: usize) {
        let path = format!("/v2/{repo}/manifests/{reference}");
        let arrived = self
            .wait_until(|state| matching(state, &Method::GET, &path).count() >= count)
            .await;
        assert!(
            arrived,
            "{count} GETs of {path} never arrived (have {})",
            self.manifest_gets(repo, reference)
        );
    }

    /// How every finished GET of `digest` ended, in order.
    pub fn outcomes(&self, digest: &str) -> Vec<SendOutcome> {
        self.shared
            .state()
            .outcomes
            .get(digest)
            .cloned()
            .unwrap_or_default()
    }

    /// How every finished GET of `digest` ended and when its last byte was
    /// handed to the connection (or the send gave up), in order: what a
    /// test orders other events against ("before the upstream transfer
    /// ended"), never a duration it asserts.
    pub fn sends_ended(&self, digest: &str) -> Vec<(SendOutcome, Instant)> {
        let state = self.shared.state();
        let outcomes = state.outcomes.get(digest).cloned().unwrap_or_default();
        let times = state.ended_at.get(digest).cloned().unwrap_or_default();
        outcomes.into_iter().zip(times).collect()
    }

    /// Wait until `count` GETs of `digest` have ended, then return how they
    /// ended. Panics after a generous minute: a hang guard, not a timing check.
    pub async fn wait_outcomes(&self, digest: &str, count: usize) -> Vec<SendOutcome> {
        let ended = self
            .wait_until(|state| state.outcomes.get(digest).map_or(0, Vec::len) >= count)
            .await;
        let outcomes = self.outcomes(digest);
        assert!(
            ended,
            "upstream sends of {digest} never ended (have {outcomes:?})"
        );
        outcomes
    }

    /// Requests to `/token`.
    pub fn token_requests(&self) -> usize {
        self.shared.state().token_requests
    }

    /// 401 challenges sent for missing or wrong credentials.
    pub fn challenges(&self) -> usize {
        self.shared.state().challenges
    }

    /// Close the listener and every open connection: the upstream is gone.
    pub fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }

    /// Whether `done` became true within [`WAIT_GUARD`].
    async fn wait_until(&self, done: impl Fn(&State) -> bool) -> bool {
        let mut changes = self.shared.changes.subscribe();
        let wait = async {
            loop {
                if done(&self.shared.state()) {
                    return true;
                }
                if changes.changed().await.is_err() {
                    return done(&self.shared.state());
                }
            }
        };
        tokio::time::timeout(WAIT_GUARD, wait)
            .await
            .unwrap_or(false)
    }
}

impl Drop for Hostile {
    fn drop(&mut self) {
        self.stop();
    }
}

fn matching<'a>(
    state: &'a State,
    method: &'a Method,
    path: &'a str,
) -> impl Iterator<Item = &'a Seen> {
    state
        .requests
        .iter()
        .filter(move |s| s.method == *method && s.path == path)
}
