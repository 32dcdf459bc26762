//! `GET /v2/<name>/referrers/<digest>[?artifactType=]`: an image index,
//! empty when nothing refers to the digest (also for an unknown digest or
//! repository), filtered by berth so that the filter is applied whatever the
//! upstream supports. When berth cannot know the list (the upstream fails
//! and nothing is stored, or berth is offline and holds no list) the answer
//! is a retryable error, never an empty index.

use http::{header, Response, StatusCode};
use serde_json::Value;

use super::body::{self, Body};
use crate::digest::Digest;
use crate::error::{ApiError, ContentKind, ErrorCode};
use crate::fill::FillError;
use crate::referrers::{index_bytes, INDEX_MEDIA_TYPE};
use crate::upstream::routing::Target;
use crate::upstream::UpstreamError;
use crate::App;

pub async fn list(
    app: &App,
    head: bool,
    target: &Target,
    digest: &Digest,
    query: Option<&str>,
) -> Result<Response<Body>, ApiError> {
    let filter = artifact_type(query);
    let all = app
        .referrers()
        .list(target, digest)
        .await
        .map_err(|e| cannot_list(&e, target, digest))?;
    let shown: Vec<Value> = match &filter {
        Some(t) => all
            .iter()
            .filter(|d| d["artifactType"].as_str() == Some(t))
            .cloned()
            .collect(),
        None => all.to_vec(),
    };
    let json = index_bytes(&shown);
    let mut resp = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, INDEX_MEDIA_TYPE)
        .header(header::CONTENT_LENGTH, json.len());
    if filter.is_some() {
        resp = resp.header("oci-filters-applied", "artifactType");
    }
    let body = if head {
        body::empty()
    } else {
        body::full(json)
    };
    resp.body(body)
        .map_err(|e| ApiError::internal(format!("cannot build a response: {e}")))
}

/// The `artifactType` filter. A media type holds no space, so a raw `+`
/// (as typed in `?artifactType=application/spdx+json`) is a `+`, not the
/// space that form encoding would make of it.
fn artifact_type(query: Option<&str>) -> Option<String> {
    let query = query?.replace('+', "%2B");
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "artifactType")
        .map(|(_, v)| v.into_owned())
        .filter(|v| !v.is_empty())
}

/// Berth cannot give the list now. Offline without a list, or with the
/// upstream failing and nothing stored, it does not know: a retryable
/// `503`, never a false empty list. An upstream answer berth cannot use
/// whole (a list over the size limit, say) is the upstream's failure.
fn cannot_list(err: &FillError, target: &Target, digest: &Digest) -> ApiError {
    let message = match err {
        FillError::Upstream(UpstreamError::Offline { .. }) => format!(
            "berth is offline and holds no referrers list for {digest} in {target:?}: it never learnt one, and no imported bundle brought one"
        ),
        FillError::Upstream(u) if u.is_failing() => format!("cannot list referrers now: {err}"),
        _ => return ApiError::from_fill(err, ContentKind::Manifest),
    };
    let mut e = ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::Unavailable,
        message,
    );
    if let FillError::Upstream(UpstreamError::Status { retry_after, .. }) = err {
        e.retry_after = retry_after.clone();
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_artifact_type_filter_is_read_from_the_query() {
        assert_eq!(
            artifact_type(Some("artifactType=application%2Fvnd.example.sbom.v1&ns=x")).as_deref(),
            Some("application/vnd.example.sbom.v1")
        );
        assert_eq!(artifact_type(Some("n=1")), None);
        // As typed in curl: a raw `+`, and its encoded form.
        for query in [
            "artifactType=application/spdx+json",
            "artifactType=application%2Fspdx%2Bjson",
        ] {
            assert_eq!(
                artifact_type(Some(query)).as_deref(),
                Some("application/spdx+json"),
                "{query}"
            );
        }
        assert_eq!(artifact_type(None), None);
    }
}
