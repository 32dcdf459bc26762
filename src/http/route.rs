//! Request routing for the registry API: a pure function from method and
//! path to what is asked for, with names, tags and digests validated here so
//! that handlers only ever see well-formed input.

use http::{Method, StatusCode};

use crate::digest::Digest;
use crate::error::{ApiError, ContentKind};
use crate::reference::{validate_name, Reference, ReferenceError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `/v2/`: the API version check.
    Base,
    Manifest {
        name: String,
        reference: Reference,
    },
    Blob {
        name: String,
        digest: Digest,
    },
    Tags {
        name: String,
    },
    Referrers {
        name: String,
        digest: Digest,
    },
}

impl Route {
    /// The route's name in metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Route::Base => "base",
            Route::Manifest { .. } => "manifest",
            Route::Blob { .. } => "blob",
            Route::Tags { .. } => "tags",
            Route::Referrers { .. } => "referrers",
        }
    }
}

/// Maps a request line to a route, or to the error the client gets.
pub fn route(method: &Method, path: &str) -> Result<Route, ApiError> {
    let Some(rest) = path.strip_prefix("/v2") else {
        return Err(ApiError::unsupported(
            StatusCode::NOT_FOUND,
            format!("no such endpoint: {path}"),
        ));
    };
    if !rest.is_empty() && !rest.starts_with('/') {
        return Err(ApiError::unsupported(
            StatusCode::NOT_FOUND,
            format!("no such endpoint: {path}"),
        ));
    }
    if !matches!(*method, Method::GET | Method::HEAD) {
        return Err(ApiError::unsupported(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{method} is not supported: berth is a read-only pull-through mirror"),
        ));
    }
    let rest = rest.trim_start_matches('/');
    if rest.is_empty() {
        return Ok(Route::Base);
    }
    let segments: Vec<&str> = rest.split('/').collect();
    if segments
        .windows(2)
        .skip(1)
        .any(|w| w == ["blobs", "uploads"])
    {
        return Err(ApiError::unsupported(
            StatusCode::METHOD_NOT_ALLOWED,
            "blob uploads are not supported: berth is a read-only mirror",
        ));
    }
    match segments.as_slice() {
        [name @ .., "tags", "list"] if !name.is_empty() => Ok(Route::Tags {
            name: checked_name(name)?,
        }),
        [name @ .., "manifests", reference] if !name.is_empty() => {
            let name = checked_name(name)?;
            let reference = Reference::parse(reference).map_err(|e| match e {
                ReferenceError::Digest(e) => ApiError::digest_invalid(e.to_string()),
                ReferenceError::Tag(msg) => ApiError::not_found(ContentKind::Manifest, msg),
            })?;
            Ok(Route::Manifest { name, reference })
        }
        [name @ .., "referrers", digest] if !name.is_empty() => {
            let name = checked_name(name)?;
            let digest = digest
                .parse()
                .map_err(|e: crate::digest::DigestError| ApiError::digest_invalid(e.to_string()))?;
            Ok(Route::Referrers { name, digest })
        }
        [name @ .., "blobs", digest] if !name.is_empty() => {
            let name = checked_name(name)?;
            let digest = digest
                .parse()
                .map_err(|e: crate::digest::DigestError| ApiError::digest_invalid(e.to_string()))?;
            Ok(Route::Blob { name, digest })
        }
        _ => Err(ApiError::unsupported(
            StatusCode::NOT_FOUND,
            format!("no such endpoint: {path}"),
        )),
    }
}

fn checked_name(segments: &[&str]) -> Result<String, ApiError> {
    let name = segments.join("/");
    validate_name(&name).map_err(|reason| {
        ApiError::name_invalid(format!("invalid repository name {name:?}: {reason}"))
    })?;
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;

    const DIGEST: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn get(path: &str) -> Result<Route, ApiError> {
        route(&Method::GET, path)
    }

    #[test]
    fn api_paths() {
        assert_eq!(get("/v2/").ok(), Some(Route::Base));
        assert_eq!(get("/v2").ok(), Some(Route::Base));
        assert_eq!(
            get("/v2/library/alpine/manifests/3.20").ok(),
            Some(Route::Manifest {
                name: "library/alpine".into(),
                reference: Reference::Tag("3.20".into())
            })
        );
        assert!(
            matches!(get(&format!("/v2/a/b/blobs/{DIGEST}")), Ok(Route::Blob { name, .. }) if name == "a/b")
        );
        assert_eq!(
            get("/v2/a/tags/list").ok(),
            Some(Route::Tags { name: "a".into() })
        );
        assert!(
            matches!(get(&format!("/v2/a/referrers/{DIGEST}")), Ok(Route::Referrers { name, .. }) if name == "a")
        );
        assert_eq!(
            get("/v2/a/referrers/sha256:zz").map_err(|e| e.code).err(),
            Some(ErrorCode::DigestInvalid)
        );
        // A repository may itself contain a "blobs" or "manifests" component.
        assert!(
            matches!(get("/v2/blobs/manifests/manifests/x"), Ok(Route::Manifest { name, .. }) if name == "blobs/manifests")
        );
    }

    #[test]
    fn bad_input_gets_the_spec_codes() {
        assert_eq!(
            get("/v2/UPPER/manifests/x").map_err(|e| e.code).err(),
            Some(ErrorCode::NameInvalid)
        );
        assert_eq!(
            get("/v2/a/blobs/sha256:zz").map_err(|e| e.code).err(),
            Some(ErrorCode::DigestInvalid)
        );
        assert_eq!(
            get("/v2/a/manifests/sha256:zz").map_err(|e| e.code).err(),
            Some(ErrorCode::DigestInvalid)
        );
        assert_eq!(
            get("/v2/a/manifests/-x").map_err(|e| e.code).err(),
            Some(ErrorCode::ManifestUnknown)
        );
        assert_eq!(
            get("/v2/a/nothing/here").map_err(|e| e.status).err(),
            Some(StatusCode::NOT_FOUND)
        );
        assert_eq!(
            get("/v2x").map_err(|e| e.status).err(),
            Some(StatusCode::NOT_FOUND)
        );
    }

    #[test]
    fn writes_are_unsupported() {
        for method in [Method::PUT, Method::POST, Method::PATCH, Method::DELETE] {
            let err = route(&method, "/v2/a/manifests/latest").expect_err("refused");
            assert_eq!(
                (err.status, err.code),
                (StatusCode::METHOD_NOT_ALLOWED, ErrorCode::Unsupported)
            );
        }
        let err = route(&Method::POST, "/v2/a/blobs/uploads/").expect_err("refused");
        assert_eq!(err.status, StatusCode::METHOD_NOT_ALLOWED);
        let err = get("/v2/a/blobs/uploads/1234").expect_err("refused");
        assert_eq!(err.code, ErrorCode::Unsupported);
    }
}
