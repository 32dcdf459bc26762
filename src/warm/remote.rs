//! Warming through a running berth (`berth warm --server URL`): the images
//! are pulled through its registry API like any client pulls them, so the
//! server fills its own cache with its own fills. Warm reads every byte and
//! checks every digest, so a warm that succeeded saw complete content.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::{Options, Source, WarmError, Warmed};
use crate::digest::{Digest, Hasher};
use crate::fill::manifest::MAX_MANIFEST_SIZE;
use crate::graph::Descriptor;
use crate::manifest::MediaTypes;
use crate::progress::Progress;
use crate::reference::{ImageRef, Reference};
use crate::referrers::INDEX_MEDIA_TYPE;
use crate::store::Manifest;
use crate::upstream::error_chain;

/// Longest pause inside a response before warm gives up on it.
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// A running berth's registry API.
pub struct Remote {
    client: reqwest::Client,
    base: reqwest::Url,
}

impl Remote {
    /// `url` is the berth's base URL, e.g. `http://berth.internal:5000`.
    /// berth is on the local network: no proxy is used to reach it.
    pub fn new(url: &str) -> Result<Remote, WarmError> {
        let bad = |reason: String| WarmError::Remote(format!("--server {url}: {reason}"));
        let base = reqwest::Url::parse(url).map_err(|e| bad(e.to_string()))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(bad("not an http:// or https:// URL".to_owned()));
        }
        let client = reqwest::Client::builder()
            .no_proxy()
            .use_rustls_tls()
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(IDLE_TIMEOUT)
            .user_agent(concat!("berth-warm/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| bad(e.to_string()))?;
        Ok(Remote { client, base })
    }

    pub async fn warm(
        &self,
        images: &[ImageRef],
        options: &Options,
        progress: &Progress,
    ) -> Vec<Result<Warmed, WarmError>> {
        super::warm_all(self, images, options, progress).await
    }

    async fn get(
        &self,
        name: &str,
        path: &str,
        accept: Option<&str>,
    ) -> Result<reqwest::Response, WarmError> {
        let url = self
            .base
            .join(&format!("/v2/{name}/{path}"))
            .map_err(|e| WarmError::Remote(format!("{name}/{path}: {e}")))?;
        let mut request = self.client.get(url.clone());
        if let Some(accept) = accept {
            request = request.header(http::header::ACCEPT, accept);
        }
        let resp = request
            .send()
            .await
            .map_err(|e| WarmError::Remote(format!("GET {url}: {}", error_chain(&e))))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        let message: String = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["errors"][0]["message"].as_str().map(str::to_owned))
            .unwrap_or(body)
            .chars()
            .take(300)
            .collect();
        Err(WarmError::Remote(format!(
            "GET {url}: berth answered {status}: {message}"
        )))
    }

    async fn read_all(resp: reqwest::Response, limit: usize) -> Result<Bytes, WarmError> {
        let url = resp.url().clone();
        let mut resp = resp;
        let mut out = bytes::BytesMut::new();
        while let Some(chunk) = next_chunk(&mut resp, &url).await? {
            if out.len() + chunk.len() > limit {
                return Err(WarmError::Remote(format!(
                    "GET {url}: more than {limit} bytes"
                )));
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out.freeze())
    }
}

async fn next_chunk(
    resp: &mut reqwest::Response,
    url: &reqwest::Url,
) -> Result<Option<Bytes>, WarmError> {
    resp.chunk()
        .await
        .map_err(|e| WarmError::Remote(format!("GET {url}: {}", error_chain(&e))))
}

impl Source for Remote {
    async fn manifest(
        &self,
        name: &str,
        reference: &Reference,
    ) -> Result<Arc<Manifest>, WarmError> {
        let accept = MediaTypes::SERVED.header_value();
        let accept = accept.as_ref().and_then(|a| a.to_str().ok());
        let resp = self
            .get(name, &format!("manifests/{reference}"), accept)
            .await?;
        let header = |h: &str| {
            resp.headers()
                .get(h)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let announced: Option<Digest> =
            header("docker-content-digest").and_then(|d| d.parse().ok());
        let media_type = header("content-type").unwrap_or_default();
        let bytes = Self::read_all(resp, MAX_MANIFEST_SIZE).await?;
        let expected = match reference {
            Reference::Digest(d) => Some(d.clone()),
            Reference::Tag(_) => announced,
        };
        let algorithm = expected
            .as_ref()
            .map_or(crate::digest::Algorithm::Sha256, Digest::algorithm);
        let digest = algorithm.digest(&bytes);
        if let Some(expected) = expected.filter(|e| *e != digest) {
            return Err(WarmError::Remote(format!(
                "{name}:{reference}: berth sent a manifest with digest {digest}, not {expected}"
            )));
        }
        Ok(Arc::new(Manifest {
            digest,
            media_type,
            bytes,
        }))
    }

    async fn blob(
        &self,
        name: &str,
        blob: &Descriptor,
        progress: &Progress,
    ) -> Result<(u64, bool), WarmError> {
        let digest = &blob.digest;
        let mut resp = self.get(name, &format!("blobs/{digest}"), None).await?;
        let url = resp.url().clone();
        let mut hasher = Hasher::new(digest.algorithm());
        let mut size = 0u64;
        while let Some(chunk) = next_chunk(&mut resp, &url).await? {
            hasher.update(&chunk);
            size += chunk.len() as u64;
            progress.advance(chunk.len() as u64);
        }
        let actual = hasher.finish();
        if actual != *digest {
            return Err(WarmError::Transfer {
                digest: digest.clone(),
                reason: format!("berth sent {size} bytes with digest {actual}"),
            });
        }
        // Whether berth had it before cannot be told from outside.
        Ok((size, false))
    }

    async fn referrers(&self, name: &str, digest: &Digest) -> Result<Vec<Digest>, WarmError> {
        let resp = self
            .get(name, &format!("referrers/{digest}"), Some(INDEX_MEDIA_TYPE))
            .await?;
        let bytes = Self::read_all(resp, MAX_MANIFEST_SIZE).await?;
        let index: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
            WarmError::Remote(format!("referrers of {digest} in {name}: not JSON: {e}"))
        })?;
        Ok(index["manifests"]
            .as_array()
            .map(|list| {
                list.iter()
                    .filter_map(|d| d["digest"].as_str()?.parse().ok())
                    .collect()
            })
            .unwrap_or_default())
    }
}
