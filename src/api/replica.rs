//! What a replica (`--replica`) answers itself and what it sends on to `--upstream`, the writer.
//!
//! A replica answers from the object store what is final there: `before` pages, exports and histograms whose
//! hours are uploaded, with the writer's bytes, ETags and links. Everything else goes to the upstream as it
//! came: writes, the head, `after` pages, series info and lists (the writer knows more than the store), and
//! any page or range the replica could only answer as not final. Health, metrics and the viewer's files are
//! its own. Without an upstream, reads are answered from the store (never as final where it cannot know) and
//! writes are refused with `405 read_only_replica`.

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::uri::{Authority, PathAndQuery, Scheme};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::AppState;
use super::error::ApiError;

/// The writer a replica forwards to: one pool of keep-alive connections.
pub struct Upstream {
    scheme: Scheme,
    authority: Authority,
    client: Client<HttpConnector, Body>,
}

impl Upstream {
    /// `http://host:port` (a path, if any, is ignored: requests keep theirs).
    pub fn new(uri: &Uri) -> Result<Upstream, String> {
        if uri.scheme() != Some(&Scheme::HTTP) {
            return Err(format!("--upstream {uri}: expected http://host:port"));
        }
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| format!("--upstream {uri}: no host"))?;
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        Ok(Upstream {
            scheme: Scheme::HTTP,
            authority,
            client: Client::builder(TokioExecutor::new()).build(connector),
        })
    }

    /// Sends a request on as it came (but for hop-by-hop headers) and its answer back as it comes.
    pub async fn forward(&self, req: Request) -> Response {
        let (mut parts, body) = req.into_parts();
        let path = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let uri = Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(path)
            .build();
        let Ok(uri) = uri else {
            return ApiError::bad_request("this URL cannot be sent on").into_response();
        };
        parts.uri = uri;
        strip_hop_by_hop(&mut parts.headers);
        if let Ok(host) = HeaderValue::from_str(self.authority.as_str()) {
            parts.headers.insert(header::HOST, host);
        }
        match self.client.request(Request::from_parts(parts, body)).await {
            Ok(res) => {
                let (mut parts, body) = res.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                Response::from_parts(parts, Body::new(body))
            }
            Err(e) => {
                tracing::warn!(upstream = %self.authority, error = %e, "the upstream did not answer");
                let mut error = ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    "upstream_unavailable",
                    "this replica's upstream did not answer; try again",
                );
                error.retry_after = Some(1);
                error.into_response()
            }
        }
    }
}

/// Headers that belong to one connection, not to the request or answer.
fn strip_hop_by_hop(h: &mut HeaderMap) {
    for name in [
        header::CONNECTION,
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        h.remove(name);
    }
    h.remove("keep-alive");
}

/// Where a route's answers come from on a replica.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Source {
    /// The replica itself, always: health, metrics, the viewer.
    Own,
    /// The store when its answer is final, else the upstream: `before` pages, exports, histograms.
    FinalHere,
    /// The upstream (the store cannot know): writes, the head, `after` pages, series info.
    Writer,
}

fn source(route: Option<&str>, method: &Method) -> Source {
    // Every write goes to the writer, wherever its route is (the shippers' protocols are not under /api/).
    if !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return Source::Writer;
    }
    let Some(route) = route.filter(|r| r.starts_with("/api/")) else {
        return Source::Own;
    };
    if *method == Method::OPTIONS {
        return Source::Own;
    }
    let final_here = [
        super::pages::BEFORE,
        super::pages::BEFORE_PART,
        super::pages::SHORT_BEFORE,
        super::pages::SHORT_BEFORE_PART,
        "/api/series/{series}/export",
        "/api/series/{series}/export/manifest",
        "/api/series/{series}/histogram",
    ];
    if final_here.contains(&route) {
        Source::FinalHere
    } else {
        Source::Writer
    }
}

/// Whether an answer may be kept for ever: then it is the writer's too.
fn is_final(res: &Response) -> bool {
    (res.status() == StatusCode::OK || res.status() == StatusCode::NOT_MODIFIED)
        && res
            .headers()
            .get(header::CACHE_CONTROL)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("immutable"))
}

/// The replica's middleware around every route.
pub async fn route(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let Some(replica) = &state.replica else {
        return next.run(req).await;
    };
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(MatchedPath::as_str);
    let source = source(route, req.method());
    match (source, &replica.upstream) {
        (Source::Own, _) => next.run(req).await,
        (Source::Writer, Some(up)) => up.forward(req).await,
        (Source::FinalHere, Some(up)) => {
            // A GET has no body: its head is all it takes to send it on.
            let (parts, body) = req.into_parts();
            let again = Request::from_parts(parts.clone(), Body::empty());
            let res = next.run(Request::from_parts(parts, body)).await;
            if is_final(&res) {
                res
            } else {
                up.forward(again).await
            }
        }
        (_, None) if req.method() != Method::GET && req.method() != Method::HEAD => {
            let mut res = ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "read_only_replica",
                "this server is a read replica with no --upstream: send writes to the writer",
            )
            .into_response();
            res.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            res
        }
        (_, None) => next.run(req).await,
    }
}

/// What a replica's API needs.
pub struct Replica {
    pub upstream: Option<Upstream>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_final_answers_of_pages_and_ranges_are_the_replicas_own() {
        let get = Method::GET;
        assert_eq!(source(Some("/healthz"), &get), Source::Own);
        assert_eq!(source(Some("/metrics"), &get), Source::Own);
        assert_eq!(source(None, &get), Source::Own);
        assert_eq!(source(Some("/"), &get), Source::Own);
        assert_eq!(
            source(Some(super::super::pages::BEFORE), &get),
            Source::FinalHere
        );
        assert_eq!(
            source(Some("/api/series/{series}/export"), &get),
            Source::FinalHere
        );
        assert_eq!(
            source(Some("/api/series/{series}/data"), &get),
            Source::Writer
        );
        assert_eq!(
            source(Some("/api/series/{series}/data/after/{t}"), &get),
            Source::Writer
        );
        assert_eq!(source(Some("/api/series/{series}"), &get), Source::Writer);
        assert_eq!(
            source(Some(super::super::pages::BEFORE), &Method::POST),
            Source::Writer
        );
        assert_eq!(
            source(Some("/api/series/{series}/events"), &Method::POST),
            Source::Writer
        );
        // The shippers' protocols write too, outside /api/; unmatched writes go on as well.
        for route in ["/_bulk", "/{index}/_bulk", "/loki/api/v1/push", "/v1/logs"] {
            assert_eq!(
                source(Some(route), &Method::POST),
                Source::Writer,
                "{route}"
            );
        }
        assert_eq!(source(None, &Method::POST), Source::Writer);
        assert_eq!(source(Some("/_bulk"), &Method::PUT), Source::Writer);
        assert_eq!(
            source(Some("/api/series/{series}/export/manifest"), &get),
            Source::FinalHere
        );
    }
}
