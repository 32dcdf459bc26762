//! The hostile upstream's tag lists: pages of a set size after the query's
//! `last`, chained by `Link: <...?last=...>; rel="next"`.

use bytes::Bytes;
use http::{header, Response, StatusCode};

use super::reply::{error, json_response, Body};
use super::Shared;

pub(super) fn page(shared: &Shared, name: &str, query: Option<&str>) -> Response<Body> {
    let Some((tags, size)) = shared.state().tag_lists.get(name).cloned() else {
        return error(StatusCode::NOT_FOUND, "NAME_UNKNOWN");
    };
    let last = query.and_then(|q| {
        form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "last")
            .map(|(_, v)| v.into_owned())
    });
    let start = match &last {
        Some(last) => tags
            .iter()
            .position(|t| t == last)
            .map_or(tags.len(), |at| at + 1),
        None => 0,
    };
    let end = (start + size).min(tags.len());
    let body = serde_json::json!({ "name": name, "tags": &tags[start..end] });
    let mut response = json_response(Bytes::from(body.to_string()));
    if end < tags.len() {
        let link = format!(
            "</v2/{name}/tags/list?last={}>; rel=\"next\"",
            tags[end - 1]
        );
        let link = link.parse().expect("a link is a header value");
        response.headers_mut().insert(header::LINK, link);
    }
    response
}
