//! Raw HTTP helpers for tests that talk to berth without a registry client:
//! a loopback-only HTTP client, OCI error bodies, and reading a body in a way
//! that tells a complete transfer from a cut one.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use reqwest::header::HeaderMap;
use reqwest::{Client, RequestBuilder, Response, StatusCode};
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

/// A response read whole (status, headers, body), for checks on all three.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    /// Send `request` and read the whole answer; panics when it cannot be
    /// sent or its body is cut. The client's own timeout is the hang guard.
    pub async fn of(request: RequestBuilder) -> Reply {
        let (client, request) = request.build_split();
        let request = request.unwrap_or_else(|e| panic!("build the request: {e}"));
        let what = format!("{} {}", request.method(), request.url());
        let response = client
            .execute(request)
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let status = response.status();
        let headers = response.headers().clone();
        let body = response
            .bytes()
            .await
            .unwrap_or_else(|e| panic!("{what}: reading the body of a {status}: {e}"));
        Reply {
            status,
            headers,
            body,
        }
    }

    /// A header as a string, or "" when absent.
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// `Docker-Content-Digest`, or "".
    pub fn digest(&self) -> &str {
        self.header("docker-content-digest")
    }

    /// `errors[0].code` and `errors[0].message` of an OCI error body; panics
    /// when the body is not one.
    pub fn oci_error(&self) -> (String, String) {
        let start: String = String::from_utf8_lossy(&self.body)
            .chars()
            .take(300)
            .collect();
        let value: serde_json::Value = serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {}: expected an OCI error, the body is not JSON ({e}): {start:?}",
                self.status
            )
        });
        let field = |name: &str| {
            value["errors"][0][name]
                .as_str()
                .unwrap_or_else(|| {
                    panic!(
                        "status {}: expected an OCI error, no errors[0].{name}: {start:?}",
                        self.status
                    )
                })
                .to_owned()
        };
        (field("code"), field("message"))
    }
}
