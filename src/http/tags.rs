//! `GET /v2/<name>/tags/list?n=&last=`: the repository's whole tag list
//! (cached per repository, served stale while the upstream fails; see
//! `tag_lists`), answered the way the spec requires whatever the upstream
//! does: sorted in lexical order, starting after `last`, at most `n` tags,
//! and a `Link` to the next page when there are more. distribution 2.x, for
//! one, ignores `n` and lists tags in storage order, so berth gathers the
//! upstream's pages and paginates itself.

use http::{header, Response, StatusCode};
use serde::ser::{SerializeSeq, Serializer};
use serde::Serialize;

use super::body::{self, Body};
use crate::error::{ApiError, ContentKind, ErrorCode};
use crate::fill::FillError;
use crate::tag_lists::TagList;
use crate::upstream::routing::Target;
use crate::upstream::UpstreamError;
use crate::App;

#[derive(Serialize)]
struct TagPage<'a> {
    name: &'a str,
    tags: Names<'a>,
}

/// A page of a tag list, serialized without copying the names.
struct Names<'a> {
    list: &'a TagList,
    range: std::ops::Range<usize>,
}

impl Serialize for Names<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.range.len()))?;
        for name in self.range.clone().filter_map(|i| self.list.get(i)) {
            seq.serialize_element(name)?;
        }
        seq.end()
    }
}

/// The client's pagination parameters.
#[derive(Debug, Default, PartialEq, Eq)]
struct Page {
    n: Option<usize>,
    last: Option<String>,
    /// containerd's upstream selector, kept for the next page's link.
    ns: Option<String>,
}

/// `client_name` is the repository as the client wrote it (path form
/// included), for the answer and its `Link`; `target` is where it resolved.
pub async fn list(
    app: &App,
    head: bool,
    client_name: &str,
    target: &Target,
    query: Option<&str>,
) -> Result<Response<Body>, ApiError> {
    let page = Page::parse(query);
    let answer = app
        .tag_lists()
        .get(target)
        .await
        .map_err(|e| cannot_list(&e, target))?;
    let tags = &answer.list.list;
    let (range, more) = tags.page(page.last.as_deref(), page.n);
    let shown_last = range.end.checked_sub(1).and_then(|i| tags.get(i));
    let json = serde_json::to_vec(&TagPage {
        name: client_name,
        tags: Names { list: tags, range },
    })
    .map_err(|e| ApiError::internal(format!("cannot encode the tag list: {e}")))?;
    let mut resp = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONTENT_LENGTH, json.len());
    if let (true, Some(n), Some(last)) = (more, page.n, shown_last) {
        let mut next = form_urlencoded::Serializer::new(String::new());
        next.append_pair("n", &n.to_string())
            .append_pair("last", last);
        if let Some(ns) = &page.ns {
            next.append_pair("ns", ns);
        }
        let next = next.finish();
        resp = resp.header(
            header::LINK,
            format!("</v2/{client_name}/tags/list?{next}>; rel=\"next\""),
        );
    }
    let body = if head {
        body::empty()
    } else {
        body::full(json)
    };
    resp.body(body)
        .map_err(|e| ApiError::internal(format!("cannot build a response: {e}")))
}

/// With no whole list to serve and the upstream failing, berth cannot list
/// now: a retryable 503 (or the upstream's own 429), never the few tags it
/// happens to hold presented as the list.
fn cannot_list(err: &FillError, target: &Target) -> ApiError {
    let FillError::Upstream(upstream) = err else {
        return ApiError::from_fill(err, ContentKind::Tags);
    };
    let answered_itself = match upstream {
        UpstreamError::Status { status, .. } => *status == StatusCode::TOO_MANY_REQUESTS,
        UpstreamError::Offline { .. } => true,
        _ => false,
    };
    if !upstream.is_failing() || answered_itself {
        return ApiError::from_upstream(upstream, ContentKind::Tags);
    }
    let mut e = ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::Unavailable,
        format!(
            "cannot list the tags of {target:?} now, and berth holds no whole list of them: {upstream}"
        ),
    );
    if let UpstreamError::Status { retry_after, .. } = upstream {
        e.retry_after = retry_after.clone();
    }
    e
}

impl Page {
    /// Reads `n` and `last`; a non-numeric `n` is ignored.
    fn parse(query: Option<&str>) -> Page {
        let mut page = Page::default();
        for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match &*k {
                "n" => page.n = v.parse().ok(),
                "last" => page.last = Some(v.into_owned()),
                "ns" => page.ns = Some(v.into_owned()),
                _ => {}
            }
        }
        page
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_query_is_read() {
        let page = Page::parse(Some("n=2&last=b&ns=docker.io&other=1"));
        assert_eq!(
            page,
            Page {
                n: Some(2),
                last: Some("b".into()),
                ns: Some("docker.io".into())
            }
        );
        assert_eq!(Page::parse(Some("n=x")).n, None);
        assert_eq!(Page::parse(None), Page::default());
    }

    #[test]
    fn upstream_link_headers_give_the_next_query() {
        use crate::upstream::next_page_query;
        assert_eq!(
            next_page_query("</v2/a/tags/list?last=b&n=2>; rel=\"next\"").as_deref(),
            Some("last=b&n=2")
        );
        assert_eq!(
            next_page_query("</v2/a/tags/list?last=b>; rel=\"prev\""),
            None
        );
        assert_eq!(next_page_query("garbage"), None);
    }
}
