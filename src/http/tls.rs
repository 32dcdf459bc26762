//! TLS for the registry listener (rustls, ring): certificate and key from PEM
//! files, HTTP/2 and HTTP/1.1 offered by ALPN, optional client certificates
//! checked against a CA bundle.
//!
//! The certificate sits behind a resolver that can swap it while serving:
//! on SIGHUP, and when the files change on disk (a cert-manager or ACME
//! renewal), checked every few seconds. Connections already open keep the
//! certificate they were made with; none is dropped. A reload that fails
//! (a half-written file) keeps the old certificate and logs why.

use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::crypto::ring::sign::any_supported_type;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;

use crate::config::TlsConfig;

/// How often the certificate files are checked for changes.
const WATCH_INTERVAL: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("tls.{field}: cannot read {path}: {reason}")]
    File {
        field: &'static str,
        path: String,
        reason: String,
    },
    #[error("tls.{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
}

/// The current certificate, swappable.
#[derive(Debug)]
struct Reloadable {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for Reloadable {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}

/// Builds the acceptor and starts watching the certificate files.
pub fn acceptor(config: &TlsConfig) -> Result<TlsAcceptor, TlsError> {
    let resolver = Arc::new(Reloadable {
        current: RwLock::new(Arc::new(load_key(config)?)),
    });
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid("cert_file", e))?;
    let builder = match &config.client_ca_file {
        Some(ca) => {
            let roots = Arc::new(load_roots(ca)?);
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider)
                .build()
                .map_err(|e| invalid("client_ca_file", e))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut server = builder.with_cert_resolver(resolver.clone());
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    tokio::spawn(watch(config.clone(), resolver));
    Ok(TlsAcceptor::from(Arc::new(server)))
}

fn invalid(field: &'static str, e: impl std::fmt::Display) -> TlsError {
    TlsError::Invalid {
        field,
        reason: e.to_string(),
    }
}

fn unreadable(field: &'static str, path: &Path, e: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        field,
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

/// The certificate chain and key, checked to belong together.
fn load_key(config: &TlsConfig) -> Result<CertifiedKey, TlsError> {
    let chain = CertificateDer::pem_file_iter(&config.cert_file)
        .map_err(|e| unreadable("cert_file", &config.cert_file, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| unreadable("cert_file", &config.cert_file, e))?;
    if chain.is_empty() {
        return Err(invalid("cert_file", "no certificate in the file"));
    }
    let key = PrivateKeyDer::from_pem_file(&config.key_file)
        .map_err(|e| unreadable("key_file", &config.key_file, e))?;
    let signing = any_supported_type(&key).map_err(|e| invalid("key_file", e))?;
    let certified = CertifiedKey::new(chain, signing);
    certified
        .keys_match()
        .map_err(|e| invalid("key_file", format!("does not match the certificate: {e}")))?;
    Ok(certified)
}

fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in
        CertificateDer::pem_file_iter(path).map_err(|e| unreadable("client_ca_file", path, e))?
    {
        let cert = cert.map_err(|e| unreadable("client_ca_file", path, e))?;
        roots.add(cert).map_err(|e| invalid("client_ca_file", e))?;
    }
    if roots.is_empty() {
        return Err(invalid("client_ca_file", "no certificate in the file"));
    }
    Ok(roots)
}

fn modified(config: &TlsConfig) -> Option<(SystemTime, SystemTime)> {
    let time = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    Some((time(&config.cert_file)?, time(&config.key_file)?))
}

/// Reloads on SIGHUP and when the files' modification times change.
async fn watch(config: TlsConfig, resolver: Arc<Reloadable>) {
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut seen = modified(&config);
    loop {
        let signalled = async {
            match hangup.as_mut() {
                Some(h) => h.recv().await.is_some(),
                None => std::future::pending().await,
            }
        };
        let reason = tokio::select! {
            true = signalled => "SIGHUP",
            () = tokio::time::sleep(WATCH_INTERVAL) => {
                let now = modified(&config);
                if now == seen { continue; }
                seen = now;
                "the files changed"
            }
        };
        match load_key(&config) {
            Ok(key) => {
                *resolver.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(key);
                tracing::info!(reason, "TLS certificate reloaded");
            }
            Err(e) => {
                tracing::error!(reason, error = %e, "TLS certificate not reloaded; keeping the old one")
            }
        }
    }
}
