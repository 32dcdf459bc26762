//! The accept loop: HTTP/1.1 and HTTP/2 on one port through hyper-util's
//! auto builder (h2c with prior knowledge on plain listeners, ALPN under
//! TLS), every connection watched so that shutdown stops accepting and then
//! lets running responses finish.
//!
//! Limits are enforced here: headers must arrive within the header-read
//! timeout (counted from the accept, so a socket that never sends a byte
//! gives its slot back as soon as one that sent half a request would), a
//! connection with no traffic for the idle timeout is closed, and
//! connections beyond `max_connections` are answered with a 503 OCI error
//! and closed rather than left waiting.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::{Request, Response, StatusCode};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use super::body::Body;
use crate::error::{ApiError, ErrorCode};
use crate::App;

/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What a connection is served with.
#[derive(Clone, Copy)]
enum Service {
    Registry,
    Admin,
    /// The peer endpoint, for the cluster's other replicas.
    Peer,
    /// Over the connection limit: every request gets a 503.
    Refuse,
}

struct Front {
    app: App,
    builder: auto::Builder<TokioExecutor>,
    tls: Option<TlsAcceptor>,
    graceful: GracefulShutdown,
    permits: Arc<Semaphore>,
    timeouts: Timeouts,
}

/// How long a connection may stay quiet.
#[derive(Clone, Copy)]
struct Timeouts {
    /// No traffic at all for this long closes it.
    idle: Duration,
    /// Nothing received this long after the accept closes it.
    first_byte: Duration,
}

/// Serves until `shutdown` resolves, then waits up to `drain` for open
/// connections to finish their responses.
pub async fn serve(
    app: App,
    listener: TcpListener,
    admin: Option<TcpListener>,
    peer: Option<TcpListener>,
    tls: Option<TlsAcceptor>,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) {
    let limits = app.config().limits.clone();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder.http2().timer(TokioTimer::new());
    let front = Front {
        app,
        builder,
        tls,
        graceful: GracefulShutdown::new(),
        permits: Arc::new(Semaphore::new(limits.max_connections)),
        timeouts: Timeouts {
            idle: limits.idle_timeout,
            first_byte: limits.header_read_timeout,
        },
    };
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => front.accepted(accepted, Service::Registry).await,
            accepted = accept_other(admin.as_ref()) => front.accepted(accepted, Service::Admin).await,
            accepted = accept_other(peer.as_ref()) => front.accepted(accepted, Service::Peer).await,
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    drop(admin);
    drop(peer);
    tracing::info!("shutting down: no longer accepting, draining open connections");
    if tokio::time::timeout(drain, front.graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            ?drain,
            "connections still open after the drain deadline; closing them"
        );
    }
}

/// Accepts on a listener that may not be configured (never resolves then).
async fn accept_other(
    listener: Option<&TcpListener>,
) -> std::io::Result<(TcpStream, std::net::SocketAddr)> {
    match listener {
        Some(listener) => listener.accept().await,
        None => std::future::pending().await,
    }
}

impl Front {
    async fn accepted(
        &self,
        accepted: std::io::Result<(TcpStream, std::net::SocketAddr)>,
        service: Service,
    ) {
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Out of file descriptors, usually: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                return;
            }
        };
        let _ = stream.set_nodelay(true);
        let permit = self.permits.clone().try_acquire_owned().ok();
        let service = match (service, &permit) {
            (Service::Registry, None) => {
                self.app.metrics().refused("connections");
                tracing::warn!(%peer, "connection limit reached; answering 503");
                Service::Refuse
            }
            (s, _) => s,
        };
        let tls = match service {
            Service::Registry | Service::Refuse => self.tls.clone(),
            Service::Admin | Service::Peer => None,
        };
        let (app, builder, timeouts) = (self.app.clone(), self.builder.clone(), self.timeouts);
        let watcher = self.graceful.watcher();
        tokio::spawn(async move {
            let _permit = permit;
            let connections = &app.metrics().get().connections;
            connections.inc();
            let result = match tls {
                Some(acceptor) => {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            connection(app.clone(), builder, watcher, stream, service, timeouts)
                                .await
                        }
                        Ok(Err(e)) => Err(format!("TLS handshake failed: {e}")),
                        Err(_) => Err("TLS handshake timed out".to_owned()),
                    }
                }
                None => connection(app.clone(), builder, watcher, stream, service, timeouts).await,
            };
            app.metrics().get().connections.dec();
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}

/// Serves one connection until it ends, is idle too long, or shutdown
/// closes it.
async fn connection<S>(
    app: App,
    builder: auto::Builder<TokioExecutor>,
    watcher: hyper_util::server::graceful::Watcher,
    stream: S,
    service: Service,
    timeouts: Timeouts,
) -> Result<(), String>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (stream, stamps) = Activity::wrap(stream);
    let svc = service_fn(move |req| {
        let app = app.clone();
        async move { Ok::<_, Infallible>(respond(app, req, service).await) }
    });
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
    let conn = watcher.watch(conn.into_owned());
    tokio::select! {
        result = conn => result.map_err(|e| e.to_string()),
        () = idle_for(&stamps, timeouts.idle) => Err(format!("idle for {:?}; closed", timeouts.idle)),
        () = silent_for(&stamps, timeouts.first_byte) => {
            Err(format!("nothing received within {:?} of the accept; closed", timeouts.first_byte))
        }
    }
}

/// Resolves if nothing at all was received within `limit` of now (the
/// accept); never once a byte has arrived.
async fn silent_for(stamps: &Stamps, limit: Duration) {
    tokio::time::sleep(limit).await;
    if stamps.received.load(Ordering::Relaxed) {
        std::future::pending::<()>().await;
    }
}

async fn respond<B>(app: App, req: Request<B>, service: Service) -> Response<Body> {
    match service {
        Service::Registry => super::handle(app, req).await,
        Service::Admin => super::admin::handle_only(&app, &req),
        Service::Peer => super::peer::handle(&app, &req).await,
        Service::Refuse => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unavailable,
            "berth has reached its connection limit (limits.max_connections); retry later",
        )
        .into_response(req.method() == http::Method::HEAD),
    }
}

/// Resolves once nothing has been read or written for `idle`.
async fn idle_for(stamps: &Stamps, idle: Duration) {
    loop {
        let last = stamps.last.load(Ordering::Relaxed);
        let quiet = Duration::from_millis(now_ms().saturating_sub(last));
        if quiet >= idle {
            return;
        }
        tokio::time::sleep(idle - quiet).await;
    }
}

/// Milliseconds since a process-wide start, for cheap activity stamps.
fn now_ms() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// When a connection last moved, and whether it ever sent anything.
struct Stamps {
    last: AtomicU64,
    received: AtomicBool,
}

/// A stream that stamps the time of its last read or write.
struct Activity<S> {
    inner: S,
    stamps: Arc<Stamps>,
}

impl<S> Activity<S> {
    fn wrap(inner: S) -> (Self, Arc<Stamps>) {
        let stamps = Arc::new(Stamps {
            last: AtomicU64::new(now_ms()),
            received: AtomicBool::new(false),
        });
        (
            Activity {
                inner,
                stamps: stamps.clone(),
            },
            stamps,
        )
    }

    fn touch(&self) {
        self.stamps.last.store(now_ms(), Ordering::Relaxed);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Activity<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        if poll.is_ready() {
            self.touch();
            if buf.filled().len() > before {
                self.stamps.received.store(true, Ordering::Relaxed);
            }
        }
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Activity<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        if poll.is_ready() {
            self.touch();
        }
        poll
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if poll.is_ready() {
            self.touch();
        }
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
