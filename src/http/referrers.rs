//! `GET /v2/<name>/referrers/<digest>[?artifactType=]`: always an image
//! index, empty when nothing refers to the digest (also for an unknown
//! digest or repository), filtered by berth so that the filter is applied
//! whatever the upstream supports.

use http::{header, Response, StatusCode};
use serde_json::Value;

use super::body::{self, Body};
use crate::digest::Digest;
use crate::error::{ApiError, ErrorCode};
use crate::fill::FillError;
use crate::referrers::{index_bytes, INDEX_MEDIA_TYPE};
use crate::upstream::routing::Target;
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
        .map_err(|e| unavailable(&e))?;
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

fn artifact_type(query: Option<&str>) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == "artifactType")
        .map(|(_, v)| v.into_owned())
        .filter(|v| !v.is_empty())
}

/// Berth cannot know the referrers now (the upstream fails and nothing is
/// cached): a retryable error, never a false empty list.
fn unavailable(err: &FillError) -> ApiError {
    let mut e = ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::Unavailable,
        format!("cannot list referrers now: {err}"),
    );
    if let FillError::Upstream(crate::upstream::UpstreamError::Status { retry_after, .. }) = err {
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
        assert_eq!(artifact_type(None), None);
    }
}
