//! `GET /v2/<name>/tags/list`: passed through to the upstream with the
//! client's pagination (`n`, `last`); tag lists are not cached.

use futures_util::TryStreamExt;
use http::{header, Response, StatusCode};

use super::body::{self, Body};
use crate::error::{ApiError, ContentKind};
use crate::App;

pub async fn list(
    app: &App,
    head: bool,
    name: &str,
    query: Option<&str>,
) -> Result<Response<Body>, ApiError> {
    let forwarded = pagination(query);
    let resp = app
        .upstream()
        .tags(name, forwarded.as_deref())
        .await
        .map_err(|e| ApiError::from_upstream(&e, ContentKind::Tags))?;
    let mut builder = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json");
    for name in [header::LINK, header::CONTENT_LENGTH] {
        if let Some(v) = resp.headers().get(&name) {
            builder = builder.header(name, v.clone());
        }
    }
    let body = if head {
        body::empty()
    } else {
        body::stream(resp.bytes_stream().map_err(std::io::Error::other))
    };
    builder
        .body(body)
        .map_err(|e| ApiError::internal(format!("cannot build a response: {e}")))
}

/// Keeps only the parameters the tags API defines.
fn pagination(query: Option<&str>) -> Option<String> {
    let pairs: Vec<(String, String)> = form_urlencoded::parse(query?.as_bytes())
        .filter(|(k, _)| k == "n" || k == "last")
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    if pairs.is_empty() {
        return None;
    }
    Some(
        form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs)
            .finish(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_pagination_is_forwarded() {
        assert_eq!(
            pagination(Some("n=10&last=v1&ns=docker.io")).as_deref(),
            Some("n=10&last=v1")
        );
        assert_eq!(pagination(Some("ns=docker.io")), None);
        assert_eq!(pagination(None), None);
    }
}
