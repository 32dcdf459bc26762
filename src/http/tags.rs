//! `GET /v2/<name>/tags/list?n=&last=`: the upstream's tag list (not cached),
//! answered the way the spec requires whatever the upstream does: sorted in
//! lexical order, starting after `last`, at most `n` tags, and a `Link` to the
//! next page when there are more. distribution 2.x, for one, ignores `n` and
//! lists tags in storage order, so berth gathers the upstream's pages and
//! paginates itself.

use http::{header, Response, StatusCode};
use serde::Serialize;

use super::body::{self, Body};
use crate::error::{ApiError, ContentKind};
use crate::upstream::routing::Target;
use crate::App;

#[derive(Serialize)]
struct TagList<'a> {
    name: &'a str,
    tags: &'a [String],
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
    let mut tags = match crate::upstream::listing::tags(target).await {
        Ok(tags) => tags,
        // Offline or failing: the tags berth has seen are the best answer.
        Err(e) if e.is_failing() => {
            let known = app.store().tags_of(target.upstream.name(), &target.repo)?;
            if known.is_empty() {
                return Err(ApiError::from_upstream(&e, ContentKind::Tags));
            }
            tracing::warn!(?target, error = %e, "upstream failing; listing the tags berth knows");
            known
        }
        Err(e) => return Err(ApiError::from_upstream(&e, ContentKind::Tags)),
    };
    tags.sort();
    tags.dedup();
    let (shown, more) = page.apply(&tags);
    let json = serde_json::to_vec(&TagList {
        name: client_name,
        tags: shown,
    })
    .map_err(|e| ApiError::internal(format!("cannot encode the tag list: {e}")))?;
    let mut resp = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONTENT_LENGTH, json.len());
    if let (true, Some(n), Some(last)) = (more, page.n, shown.last()) {
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

    /// The slice of sorted `tags` this page shows, and whether more follow.
    fn apply<'a>(&self, tags: &'a [String]) -> (&'a [String], bool) {
        let start = match &self.last {
            Some(last) => tags.partition_point(|t| t <= last),
            None => 0,
        };
        let rest = &tags[start..];
        match self.n {
            Some(n) if n < rest.len() => (&rest[..n], true),
            _ => (rest, false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn pages_follow_last_and_n() {
        let all = tags(&["a", "b", "c", "v1"]);
        let page = Page::parse(Some("n=2"));
        assert_eq!(page.apply(&all), (&all[..2], true));
        let page = Page::parse(Some("n=2&last=b"));
        assert_eq!(page.apply(&all), (&all[2..], false));
        let page = Page::parse(Some("last=bb&ns=docker.io"));
        assert_eq!(page.apply(&all), (&all[2..], false));
        assert_eq!(Page::parse(Some("n=0")).apply(&all), (&all[..0], true));
        assert_eq!(Page::parse(None).apply(&all), (&all[..], false));
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
