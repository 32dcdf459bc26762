//! The one place where errors become HTTP: every failure a client sees is an
//! OCI error JSON body with the spec's code and the status that goes with it.
//!
//! Each layer keeps its own error type (`UpstreamError`, `StoreError`,
//! `FillError`); this module turns them into `ApiError`, choosing the status
//! from where the failure came from: the client (4xx), the upstream
//! (its 4xx passed on, or 502/503/504), or berth itself (500).

use http::{header, HeaderValue, Response, StatusCode};
use serde::Serialize;

use crate::fill::FillError;
use crate::http::body::{self, Body};
use crate::store::StoreError;
use crate::upstream::routing::RoutingError;
use crate::upstream::UpstreamError;

/// The error codes of the distribution spec, plus the two that registries
/// use for server-side failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    BlobUnknown,
    DigestInvalid,
    ManifestInvalid,
    ManifestUnknown,
    NameInvalid,
    NameUnknown,
    SizeInvalid,
    Unauthorized,
    Denied,
    Unsupported,
    TooManyRequests,
    Unavailable,
    Unknown,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BlobUnknown => "BLOB_UNKNOWN",
            ErrorCode::DigestInvalid => "DIGEST_INVALID",
            ErrorCode::ManifestInvalid => "MANIFEST_INVALID",
            ErrorCode::ManifestUnknown => "MANIFEST_UNKNOWN",
            ErrorCode::NameInvalid => "NAME_INVALID",
            ErrorCode::NameUnknown => "NAME_UNKNOWN",
            ErrorCode::SizeInvalid => "SIZE_INVALID",
            ErrorCode::Unauthorized => "UNAUTHORIZED",
            ErrorCode::Denied => "DENIED",
            ErrorCode::Unsupported => "UNSUPPORTED",
            ErrorCode::TooManyRequests => "TOOMANYREQUESTS",
            ErrorCode::Unavailable => "UNAVAILABLE",
            ErrorCode::Unknown => "UNKNOWN",
        }
    }

    /// The code an upstream named, when it is one of the spec's (or the
    /// two server-side codes registries use).
    pub fn parse(code: &str) -> Option<ErrorCode> {
        use ErrorCode::*;
        [
            BlobUnknown,
            DigestInvalid,
            ManifestInvalid,
            ManifestUnknown,
            NameInvalid,
            NameUnknown,
            SizeInvalid,
            Unauthorized,
            Denied,
            Unsupported,
            TooManyRequests,
            Unavailable,
            Unknown,
        ]
        .into_iter()
        .find(|c| c.as_str() == code)
    }
}

/// What a request was after, so that "not found" upstream gets the right code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentKind {
    Manifest,
    Blob,
    Tags,
}

impl ContentKind {
    fn not_found(self) -> ErrorCode {
        match self {
            ContentKind::Manifest => ErrorCode::ManifestUnknown,
            ContentKind::Blob => ErrorCode::BlobUnknown,
            ContentKind::Tags => ErrorCode::NameUnknown,
        }
    }
}

/// An error on its way to a client.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: ErrorCode,
    pub message: String,
    /// Passed on from an upstream's 429 or 503.
    pub retry_after: Option<HeaderValue>,
    /// A header some answers need: `Content-Range` on a 416,
    /// `WWW-Authenticate` on a 401 (boxed: most errors have none).
    pub extra_header: Option<Box<(http::HeaderName, HeaderValue)>>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    errors: [ErrorEntry<'a>; 1],
}

#[derive(Serialize)]
struct ErrorEntry<'a> {
    code: &'a str,
    message: &'a str,
}

impl ApiError {
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
            extra_header: None,
        }
    }

    pub fn name_invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, ErrorCode::NameInvalid, message)
    }

    pub fn digest_invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, ErrorCode::DigestInvalid, message)
    }

    pub fn unsupported(status: StatusCode, message: impl Into<String>) -> Self {
        Self::new(status, ErrorCode::Unsupported, message)
    }

    pub fn not_found(kind: ContentKind, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, kind.not_found(), message)
    }

    pub fn range_not_satisfiable(size: u64) -> Self {
        let mut e = Self::new(
            StatusCode::RANGE_NOT_SATISFIABLE,
            ErrorCode::SizeInvalid,
            format!("requested range is not satisfiable for a blob of {size} bytes"),
        );
        e.extra_header = HeaderValue::from_str(&format!("bytes */{size}"))
            .ok()
            .map(|v| Box::new((header::CONTENT_RANGE, v)));
        e
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Unknown,
            message,
        )
    }

    /// An upstream failure, as seen by a client that asked for `kind`.
    pub fn from_upstream(err: &UpstreamError, kind: ContentKind) -> Self {
        let message = err.to_string();
        match err {
            UpstreamError::Unreachable { .. }
            | UpstreamError::Certificate { .. }
            | UpstreamError::BadResponse { .. }
            | UpstreamError::Body { .. } => {
                Self::new(StatusCode::BAD_GATEWAY, ErrorCode::Unknown, message)
            }
            UpstreamError::Offline { .. } => Self::not_found(kind, message),
            UpstreamError::Timeout { .. } => {
                Self::new(StatusCode::GATEWAY_TIMEOUT, ErrorCode::Unknown, message)
            }
            UpstreamError::Status {
                status,
                code,
                retry_after,
                ..
            } => {
                let mut e = match status.as_u16() {
                    401 => Self::new(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, message),
                    403 => Self::new(StatusCode::FORBIDDEN, ErrorCode::Denied, message),
                    404 if code.as_deref() == Some("NAME_UNKNOWN") => {
                        Self::new(StatusCode::NOT_FOUND, ErrorCode::NameUnknown, message)
                    }
                    404 => Self::not_found(kind, message),
                    429 => Self::new(
                        StatusCode::TOO_MANY_REQUESTS,
                        ErrorCode::TooManyRequests,
                        message,
                    ),
                    // Any other refusal with the spec's own code: the client
                    // hears what the upstream said, not a gateway failure.
                    400..=499 => match code.as_deref().and_then(ErrorCode::parse) {
                        Some(c) => Self::new(*status, c, message),
                        None => Self::new(StatusCode::BAD_GATEWAY, ErrorCode::Unknown, message),
                    },
                    503 => Self::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        ErrorCode::Unavailable,
                        message,
                    ),
                    _ => Self::new(StatusCode::BAD_GATEWAY, ErrorCode::Unknown, message),
                };
                e.retry_after = retry_after.clone();
                e
            }
        }
    }

    /// A failed fill, as seen by a client that asked for `kind`.
    pub fn from_fill(err: &FillError, kind: ContentKind) -> Self {
        match err {
            FillError::Upstream(e) => Self::from_upstream(e, kind),
            FillError::DigestMismatch { .. } => Self::new(
                StatusCode::BAD_GATEWAY,
                ErrorCode::DigestInvalid,
                err.to_string(),
            ),
            FillError::TooLarge { .. } | FillError::Invalid { .. } => Self::new(
                StatusCode::BAD_GATEWAY,
                ErrorCode::ManifestInvalid,
                err.to_string(),
            ),
            FillError::Truncated { .. }
            | FillError::Overlong { .. }
            | FillError::BlobTooLarge { .. } => Self::new(
                StatusCode::BAD_GATEWAY,
                ErrorCode::SizeInvalid,
                err.to_string(),
            ),
            FillError::Store(e) => Self::from(e),
            FillError::Busy { .. } | FillError::Abandoned { .. } | FillError::Peer { .. } => {
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    ErrorCode::Unavailable,
                    err.to_string(),
                )
            }
            FillError::Io(_) => Self::internal(err.to_string()),
        }
    }

    /// Whether this error is the client's doing; it decides the log level.
    pub fn is_client_error(&self) -> bool {
        self.status.is_client_error()
    }

    pub fn into_response(self, head_only: bool) -> Response<Body> {
        let json = serde_json::to_vec(&ErrorBody {
            errors: [ErrorEntry {
                code: self.code.as_str(),
                message: &self.message,
            }],
        })
        .unwrap_or_default();
        let len = json.len();
        let mut builder = Response::builder()
            .status(self.status)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::CONTENT_LENGTH, len);
        if let Some(v) = self.retry_after {
            builder = builder.header(header::RETRY_AFTER, v);
        }
        if let Some(extra) = self.extra_header {
            let (name, value) = *extra;
            builder = builder.header(name, value);
        }
        let body = if head_only {
            body::empty()
        } else {
            body::full(json)
        };
        builder
            .body(body)
            .unwrap_or_else(|_| Response::new(body::empty()))
    }
}

impl From<RoutingError> for ApiError {
    fn from(err: RoutingError) -> Self {
        let status = match err {
            RoutingError::Denied { .. } => (StatusCode::FORBIDDEN, ErrorCode::Denied),
            _ => (StatusCode::NOT_FOUND, ErrorCode::NameUnknown),
        };
        ApiError::new(status.0, status.1, err.to_string())
    }
}

impl From<&StoreError> for ApiError {
    fn from(err: &StoreError) -> Self {
        ApiError::internal(format!("cache storage failed: {err}"))
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        ApiError::from(&err)
    }
}

/// Failures that stop berth from starting or make it stop.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open the store: {0}")]
    Store(#[from] StoreError),
    #[error("cannot build the upstream client: {0}")]
    Upstream(#[from] UpstreamError),
    #[error("{0}")]
    Tls(#[from] crate::http::tls::TlsError),
    #[error("{0}")]
    Auth(#[from] crate::http::auth::AuthError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Shared(#[from] crate::shared::SharedError),
    #[error("{0}")]
    Cluster(#[from] crate::cluster::ClusterError),
}

impl Error {
    /// Whether the configuration is at fault (berth exits 64, as for a bad
    /// file), rather than the machine or the network.
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            Error::Shared(
                crate::shared::SharedError::Config(_) | crate::shared::SharedError::Refused(_)
            ) | Error::Cluster(
                crate::cluster::ClusterError::Config(_)
                    | crate::cluster::ClusterError::Refused(_)
                    | crate::cluster::ClusterError::Listen { .. }
            )
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_are_oci_json() {
        let resp = ApiError::not_found(ContentKind::Blob, "no such blob").into_response(false);
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
        assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/json");
    }

    #[test]
    fn upstream_rate_limits_keep_retry_after() {
        let err = UpstreamError::Status {
            upstream: "docker.io".into(),
            status: StatusCode::TOO_MANY_REQUESTS,
            code: Some("TOOMANYREQUESTS".into()),
            message: "slow down".into(),
            retry_after: Some(HeaderValue::from_static("30")),
        };
        let api = ApiError::from_upstream(&err, ContentKind::Manifest);
        assert_eq!(api.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(api.code, ErrorCode::TooManyRequests);
        assert_eq!(api.retry_after, Some(HeaderValue::from_static("30")));
        assert!(api.message.contains("docker.io"));
    }
}
