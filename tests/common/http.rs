//! Raw HTTP helpers for tests that talk to berth without a registry client:
//! a loopback-only HTTP client, OCI error bodies, and reading a body in a way
//! that tells a complete transfer from a cut one.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use reqwest::{Client, Response, StatusCode};
use sha2::{Digest as _, Sha256};

/// An HTTP client that never goes through a proxy (the environment may name
/// one), with a request timeout far above anything a test needs: a hang
/// guard, so a stuck server fails the test instead of hanging it.
pub fn client() -> Client {
    Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(300))
        .build()
        .expect("build an HTTP client")
}

/// How a response body ended.
#[derive(Debug)]
pub enum Transfer {
    /// The body ended cleanly with every byte its Content-Length promised.
    Complete(Bytes),
    /// The body was cut (an error, or fewer bytes than Content-Length).
    Failed { received: usize, reason: String },
}

impl Transfer {
    /// Read the whole body of `response` and classify how it ended.
    pub async fn read(mut response: Response) -> Transfer {
        let expected = response.content_length();
        let mut body = BytesMut::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                Ok(None) => break,
                Err(e) => {
                    return Transfer::Failed {
                        received: body.len(),
                        reason: format!("body error: {e:?}"),
                    }
                }
            }
        }
        match expected {
            Some(len) if len != body.len() as u64 => Transfer::Failed {
                received: body.len(),
                reason: format!("body ended after {} of {len} bytes", body.len()),
            },
            _ => Transfer::Complete(body.freeze()),
        }
    }

    /// The bytes of a complete transfer; panics with `what` otherwise.
    pub fn expect_complete(self, what: &str) -> Bytes {
        match self {
            Transfer::Complete(bytes) => bytes,
            Transfer::Failed { received, reason } => {
                panic!("{what}: transfer failed after {received} bytes: {reason}")
            }
        }
    }
}

/// GET `url`, check for 200, and return the sha256 digest of the body
/// (streamed, never held whole) and its length.
pub async fn get_digest(client: &Client, url: &str) -> Result<(String, u64), String> {
    let mut response = client
        .get(url)
        .send()
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    if response.status() != StatusCode::OK {
        return Err(format!("GET {url}: status {}", response.status()));
    }
    let expected = response.content_length();
    let mut hasher = Sha256::new();
    let mut len = 0u64;
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| format!("GET {url}: body failed after {len} bytes: {e:?}"))?
    {
        len += chunk.len() as u64;
        hasher.update(&chunk);
    }
    if let Some(expected) = expected {
        if expected != len {
            return Err(format!("GET {url}: got {len} of {expected} bytes"));
        }
    }
    Ok((format!("sha256:{}", hex::encode(hasher.finalize())), len))
}

/// The status and the `code` of every error in an OCI error body.
pub async fn oci_error(response: Response) -> (StatusCode, Vec<String>) {
    let status = response.status();
    let body = response.bytes().await.unwrap_or_default();
    let value: serde_json::Value = serde_json::from_slice(&body).unwrap_or_else(|e| {
        panic!(
            "status {status}: body is not JSON ({e}): {:?}",
            String::from_utf8_lossy(&body)
        )
    });
    let errors = value["errors"].as_array().unwrap_or_else(|| {
        panic!("status {status}: body has no \"errors\" array: {value}");
    });
    let codes = errors
        .iter()
        .map(|e| e["code"].as_str().unwrap_or("<no code>").to_owned())
        .collect();
    (status, codes)
}

/// A header as a string, or "" when absent (so assertions print something).
pub fn header<'a>(response: &'a Response, name: &str) -> &'a str {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}
