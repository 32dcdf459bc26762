//! An in-process upstream registry that misbehaves on request.
//!
//! A real registry never truncates, corrupts or stalls a blob on cue, and
//! never lets us count its token requests, so berth's failure handling, its
//! single-flight fills and its token cache are tested against this instead:
//! a plain hyper server on 127.0.0.1:0 answering `/v2/`, manifests, blobs
//! and `/token` from in-memory maps, with a behaviour per blob.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};

use super::content::Fixture;
use super::sha256_digest;

type Body = BoxBody<Bytes, io::Error>;

/// Bytes per body frame for every behaviour that sends in pieces.
const CHUNK: usize = 64 * 1024;

/// How a blob is served on GET.
#[derive(Clone, Debug)]
pub enum Behaviour {
    /// All of it, at once.
    Normal,
    /// Full Content-Length advertised, half the bytes sent, connection cut.
    Truncated,
    /// Right length, wrong bytes (one byte in the middle flipped).
    Corrupt,
    /// In `CHUNK`-sized pieces with `pause` between them.
    Slow { pause: Duration },
    /// The first `at` bytes, then nothing until [`Hostile::release`]: a fill
    /// that is provably in progress for as long as a test needs.
    Gated { at: usize },
}

/// How one GET of a blob ended on the upstream side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendOutcome {
    /// Every byte was handed to the connection.
    Completed,
    /// The downstream (berth) went away before the last byte.
    Aborted,
    /// Cut on purpose (behaviour `Truncated`).
    Cut,
}

#[derive(Default)]
struct State {
    manifests: HashMap<(String, String), (String, Bytes)>,
    blobs: HashMap<String, (Bytes, Behaviour)>,
    gates: HashMap<String, watch::Sender<bool>>,
    blob_gets: HashMap<String, usize>,
    outcomes: HashMap<String, Vec<SendOutcome>>,
    require_token: bool,
    tokens: HashSet<String>,
    token_requests: usize,
    challenges: usize,
}

struct Shared {
    state: Mutex<State>,
    /// Bumped whenever a blob send ends, so tests can wait for one.
    sends_ended: watch::Sender<u64>,
    addr: SocketAddr,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock is a harness bug; keep going anyway.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record_outcome(&self, digest: &str, outcome: SendOutcome) {
        self.state()
            .outcomes
            .entry(digest.to_owned())
            .or_default()
            .push(outcome);
        self.sends_ended.send_modify(|n| *n += 1);
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
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the hostile upstream on 127.0.0.1:0");
        let addr = listener.local_addr().expect("hostile upstream address");
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            sends_ended: watch::channel(0).0,
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
        let mut state = self.shared.state();
        for r in [reference.to_owned(), digest] {
            state
                .manifests
                .insert((repo.to_owned(), r), (media_type.to_owned(), bytes.clone()));
        }
    }

    /// Serve a blob with `behaviour`; returns its digest.
    pub fn add_blob(&self, bytes: Bytes, behaviour: Behaviour) -> String {
        let digest = sha256_digest(&bytes);
        let mut state = self.shared.state();
        if matches!(behaviour, Behaviour::Gated { .. }) {
            state.gates.insert(digest.clone(), watch::channel(false).0);
        }
        state.blobs.insert(digest.clone(), (bytes, behaviour));
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

    /// From now on, every `/v2/` request needs a Bearer token from `/token`.
    pub fn require_token(&self) {
        self.shared.state().require_token = true;
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

    /// GET requests for blob `digest` so far (HEADs not counted).
    pub fn blob_gets(&self, digest: &str) -> usize {
        self.shared
            .state()
            .blob_gets
            .get(digest)
            .copied()
            .unwrap_or(0)
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

    /// Wait until `count` GETs of `digest` have ended, then return how they
    /// ended. Panics after a generous minute: a hang guard, not a timing check.
    pub async fn wait_outcomes(&self, digest: &str, count: usize) -> Vec<SendOutcome> {
        let mut ended = self.shared.sends_ended.subscribe();
        let wait = async {
            loop {
                let outcomes = self.outcomes(digest);
                if outcomes.len() >= count {
                    return outcomes;
                }
                if ended.changed().await.is_err() {
                    return outcomes;
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(60), wait)
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "upstream sends of {digest} never ended (have {:?})",
                    self.outcomes(digest)
                )
            })
    }

    /// Requests to `/token`.
    pub fn token_requests(&self) -> usize {
        self.shared.state().token_requests
    }

    /// 401 challenges sent for a missing or unknown token.
    pub fn challenges(&self) -> usize {
        self.shared.state().challenges
    }

    /// Close the listener and every open connection: the upstream is gone.
    pub fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

impl Drop for Hostile {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Accept loop. Connections live in a JoinSet owned by this task, so
/// aborting the task closes them all.
async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(_) => continue,
        };
        let shared = shared.clone();
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(handle(&shared, request)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
        // Reap finished connections so the set does not grow without bound.
        while connections.try_join_next().is_some() {}
    }
}

fn handle(shared: &Arc<Shared>, request: Request<Incoming>) -> Response<Body> {
    let path = request.uri().path().to_owned();
    if path == "/token" {
        return token(shared, request.uri().query().unwrap_or(""));
    }
    let Some(rest) = path.strip_prefix("/v2/") else {
        return error(StatusCode::NOT_FOUND, "NOT_FOUND");
    };
    let (name, kind, reference) = split_route(rest);
    if let Some(challenge) = check_token(shared, &request, name) {
        return challenge;
    }
    let head = request.method() == Method::HEAD;
    if request.method() != Method::GET && !head {
        return error(StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED");
    }
    match kind {
        "" => json_response(Bytes::from_static(b"{}")),
        "manifests" => manifest(shared, name, reference, head),
        "blobs" => blob(shared, reference, head),
        _ => error(StatusCode::NOT_FOUND, "NAME_UNKNOWN"),
    }
}

/// `library/alpine/manifests/latest` → ("library/alpine", "manifests", "latest").
fn split_route(rest: &str) -> (&str, &str, &str) {
    for kind in ["manifests", "blobs"] {
        let marker = format!("/{kind}/");
        if let Some(at) = rest.rfind(&marker) {
            return (&rest[..at], kind, &rest[at + marker.len()..]);
        }
    }
    ("", if rest.is_empty() { "" } else { "other" }, "")
}

/// `None` when the request may proceed, else the 401 challenge to send.
fn check_token(shared: &Shared, request: &Request<Incoming>, name: &str) -> Option<Response<Body>> {
    let mut state = shared.state();
    if !state.require_token {
        return None;
    }
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if presented.is_some_and(|t| state.tokens.contains(t)) {
        return None;
    }
    state.challenges += 1;
    let mut challenge = format!(
        "Bearer realm=\"http://{}/token\",service=\"hostile\"",
        shared.addr
    );
    if !name.is_empty() {
        challenge.push_str(&format!(",scope=\"repository:{name}:pull\""));
    }
    let mut response = error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        challenge
            .parse()
            .expect("challenge is a valid header value"),
    );
    Some(response)
}

fn token(shared: &Shared, _query: &str) -> Response<Body> {
    let mut state = shared.state();
    state.token_requests += 1;
    let token = format!("hostile-token-{}", state.token_requests);
    state.tokens.insert(token.clone());
    let body = serde_json::json!({ "token": token, "expires_in": 300 });
    json_response(Bytes::from(body.to_string()))
}

fn manifest(shared: &Shared, name: &str, reference: &str, head: bool) -> Response<Body> {
    let found = shared
        .state()
        .manifests
        .get(&(name.to_owned(), reference.to_owned()))
        .cloned();
    let Some((media_type, bytes)) = found else {
        return error(StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN");
    };
    let digest = sha256_digest(&bytes);
    let len = bytes.len();
    let body = if head { empty() } else { full(bytes) };
    Response::builder()
        .header(header::CONTENT_TYPE, media_type)
        .header(header::CONTENT_LENGTH, len)
        .header("docker-content-digest", digest)
        .body(body)
        .expect("valid manifest response")
}

fn blob(shared: &Arc<Shared>, digest: &str, head: bool) -> Response<Body> {
    let (bytes, behaviour, gate) = {
        let mut state = shared.state();
        let Some((bytes, behaviour)) = state.blobs.get(digest).cloned() else {
            return error(StatusCode::NOT_FOUND, "BLOB_UNKNOWN");
        };
        if !head {
            *state.blob_gets.entry(digest.to_owned()).or_default() += 1;
        }
        let gate = state.gates.get(digest).map(|g| g.subscribe());
        (bytes, behaviour, gate)
    };
    let builder = Response::builder()
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, bytes.len())
        .header("docker-content-digest", digest);
    if head {
        return builder.body(empty()).expect("valid blob HEAD response");
    }
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, io::Error>>(1);
    tokio::spawn(send_blob(
        shared.clone(),
        digest.to_owned(),
        bytes,
        behaviour,
        gate,
        tx,
    ));
    let frames = stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|f| (f, rx)) });
    builder
        .body(BodyExt::boxed(StreamBody::new(frames)))
        .expect("valid blob response")
}

/// Feed the body channel according to `behaviour`, then record how it ended.
async fn send_blob(
    shared: Arc<Shared>,
    digest: String,
    bytes: Bytes,
    behaviour: Behaviour,
    gate: Option<watch::Receiver<bool>>,
    tx: mpsc::Sender<Result<Frame<Bytes>, io::Error>>,
) {
    let send = |chunk: Bytes| {
        let tx = tx.clone();
        async move { tx.send(Ok(Frame::data(chunk))).await.is_ok() }
    };
    let outcome = match behaviour {
        Behaviour::Normal => send_pieces(&send, bytes, None).await,
        Behaviour::Corrupt => {
            let mut wrong = bytes.to_vec();
            let middle = wrong.len() / 2;
            if let Some(b) = wrong.get_mut(middle) {
                *b ^= 0xff;
            }
            send_pieces(&send, Bytes::from(wrong), None).await
        }
        Behaviour::Slow { pause } => send_pieces(&send, bytes, Some(pause)).await,
        Behaviour::Truncated => {
            let half = bytes.slice(..bytes.len() / 2);
            if send_pieces(&send, half, None).await == SendOutcome::Completed {
                let cut = io::Error::new(io::ErrorKind::ConnectionAborted, "truncated on purpose");
                let _ = tx.send(Err(cut)).await;
                SendOutcome::Cut
            } else {
                SendOutcome::Aborted
            }
        }
        Behaviour::Gated { at } => {
            let at = at.min(bytes.len());
            let mut outcome = send_pieces(&send, bytes.slice(..at), None).await;
            if outcome == SendOutcome::Completed {
                if let Some(mut gate) = gate {
                    let _ = gate.wait_for(|open| *open).await;
                }
                outcome = send_pieces(&send, bytes.slice(at..), None).await;
            }
            outcome
        }
    };
    drop(tx);
    shared.record_outcome(&digest, outcome);
}

async fn send_pieces<F, Fut>(send: &F, bytes: Bytes, pause: Option<Duration>) -> SendOutcome
where
    F: Fn(Bytes) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let mut offset = 0;
    while offset < bytes.len() {
        let end = (offset + CHUNK).min(bytes.len());
        if !send(bytes.slice(offset..end)).await {
            return SendOutcome::Aborted;
        }
        offset = end;
        if let (Some(pause), true) = (pause, offset < bytes.len()) {
            tokio::time::sleep(pause).await;
        }
    }
    SendOutcome::Completed
}

fn error(status: StatusCode, code: &str) -> Response<Body> {
    let body = serde_json::json!({ "errors": [{ "code": code, "message": code.to_lowercase() }] });
    let mut response = json_response(Bytes::from(body.to_string()));
    *response.status_mut() = status;
    response
}

fn json_response(body: Bytes) -> Response<Body> {
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .header("docker-distribution-api-version", "registry/2.0")
        .body(full(body))
        .expect("valid JSON response")
}

fn full(bytes: Bytes) -> Body {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}

fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}
