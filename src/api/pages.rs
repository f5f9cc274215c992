//! `GET .../data` (the head), `.../data/before/{T}[/part/{k}]` and `.../data/after/{T}`: time-sliced pages,
//! linked by `Link` headers, and the caching contract (SPEC §5).
//!
//! A final page is named by its identity (series incarnation, chunk, part, representation): its strong ETag is
//! derived from that, so a `304` or a hit in the page cache needs no storage at all. Every other page is
//! `no-cache` with an ETag that hashes what it shows, so it changes exactly when the page does.
//!
//! Links always use the long form `/api/series/{series}/data/...`, also for `default` reached by the short URLs:
//! one page, one body, one cache entry.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::Write;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;

use super::error::ApiError;
use super::{AppState, DEFAULT_SERIES, conditional};
use crate::store::{Located, PageLines, PageRef, SeriesName};
use crate::time::{self, Millis};

/// The in-memory cache of rendered final pages, weighed in bytes.
pub type PageCache = moka::sync::Cache<String, Arc<Rendered>>;

pub fn page_cache(max_bytes: u64) -> PageCache {
    moka::sync::Cache::builder()
        .weigher(|k: &String, v: &Arc<Rendered>| {
            u32::try_from(k.len() + v.body.len() + 256).unwrap_or(u32::MAX)
        })
        .max_capacity(max_bytes)
        .build()
}

const FORMAT_VERSION: &str = "hg1";

/// Which representation a request gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Repr {
    ndjson: bool,
    gzip: bool,
}

impl Repr {
    /// `application/x-ndjson` when the client prefers it to JSON; gzip when it accepts gzip.
    pub fn negotiate(headers: &HeaderMap) -> Repr {
        let accept = headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let encodings = headers
            .get(header::ACCEPT_ENCODING)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let ndjson = quality(accept, &["application/x-ndjson", "application/jsonl"])
            > quality(accept, &["application/json", "*/*", "application/*"]);
        Repr {
            ndjson,
            gzip: quality(encodings, &["gzip", "x-gzip", "*"]) > 0.0,
        }
    }

    fn tag(self) -> &'static str {
        match (self.ndjson, self.gzip) {
            (false, false) => "json",
            (false, true) => "json.gz",
            (true, false) => "ndjson",
            (true, true) => "ndjson.gz",
        }
    }

    fn content_type(self) -> &'static str {
        if self.ndjson {
            "application/x-ndjson"
        } else {
            "application/json"
        }
    }
}

/// The highest quality a header list gives any of `names` (0 when none is listed).
fn quality(list: &str, names: &[&str]) -> f32 {
    list.split(',')
        .filter_map(|item| {
            let mut parts = item.split(';');
            let name = parts.next()?.trim().to_ascii_lowercase();
            if !names.contains(&name.as_str()) {
                return None;
            }
            let q = parts
                .filter_map(|p| p.trim().strip_prefix("q="))
                .find_map(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            Some(q)
        })
        .fold(0.0, f32::max)
}

/// A page ready to send, as kept in the page cache.
#[derive(Debug)]
pub struct Rendered {
    body: Bytes,
    etag: HeaderValue,
    link: Option<HeaderValue>,
    last_modified: Option<HeaderValue>,
    repr: Repr,
    is_final: bool,
}

/// The `{series}`, `{t}` and `{part}` segments of a page URL.
pub struct PageParams {
    series: SeriesName,
    t: Option<Millis>,
    part: Option<u32>,
}

impl<S: Send + Sync> FromRequestParts<S> for PageParams {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let params = match Path::<HashMap<String, String>>::from_request_parts(parts, state).await {
            Ok(Path(p)) => p,
            Err(PathRejection::MissingPathParams(_)) => HashMap::new(),
            Err(e) => return Err(ApiError::bad_request(format!("bad path: {e}"))),
        };
        let series = params.get("series").map_or(DEFAULT_SERIES, String::as_str);
        let series = SeriesName::parse(series).map_err(ApiError::bad_request)?;
        let t = params
            .get("t")
            .map(|t| {
                time::parse_stamp(t).ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "{t:?} is not a time as YYYY_MM_DD_HH_MM_SS (UTC), e.g. 2014_09_29_23_59_10"
                    ))
                })
            })
            .transpose()?;
        let part = params
            .get("part")
            .map(|p| {
                p.parse::<u32>()
                    .map_err(|_| ApiError::bad_request(format!("part {p:?} is not a number")))
            })
            .transpose()?;
        Ok(PageParams { series, t, part })
    }
}

pub async fn head(
    State(state): State<AppState>,
    p: PageParams,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    serve(state, p.series, PageRef::Head, headers).await
}

pub async fn before(
    State(state): State<AppState>,
    p: PageParams,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let end = aligned(&state, &p)?;
    serve(
        state,
        p.series,
        PageRef::Before { end, part: p.part },
        headers,
    )
    .await
}

pub async fn after(
    State(state): State<AppState>,
    p: PageParams,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let start = aligned(&state, &p)?;
    serve(state, p.series, PageRef::After { start }, headers).await
}

/// The `{t}` of a URL, checked to be a multiple of the series' width, so no page overlaps another.
fn aligned(state: &AppState, p: &PageParams) -> Result<Millis, ApiError> {
    let t =
        p.t.ok_or_else(|| ApiError::bad_request("missing time in the path"))?;
    let width = state.store.width_of(&p.series).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_series",
            format!("no series named {:?}", p.series.as_str()),
        )
    })?;
    if width.is_aligned(t) {
        return Ok(t);
    }
    let below = width.align_down(t);
    Err(ApiError::bad_request(format!(
        "{} is not a multiple of the series' chunk width ({width}): use {} or {}",
        time::format_stamp(t),
        time::format_stamp(below),
        time::format_stamp(below + width.millis())
    )))
}

async fn serve(
    state: AppState,
    name: SeriesName,
    page: PageRef,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    state.tokens.check_read(&headers)?;
    let private = state.tokens.read.is_some();
    let repr = Repr::negotiate(&headers);
    let at = state.store.locate(&name, page)?;

    let cache_key = at.is_final.then(|| {
        let etag = final_etag(&name, &at, repr);
        (format!("{name}/{etag}"), etag)
    });
    if let Some((key, etag)) = &cache_key {
        // A final page is answered from memory: a 304 from its identity, or a 200 from the page cache.
        if conditional::not_modified(&headers, etag, at.sealed_at) {
            let link = link_header(&name, &at);
            let last_modified = at.sealed_at.map(http_date);
            return Ok(not_modified(
                header_value(etag),
                link,
                last_modified,
                true,
                private,
            ));
        }
        if let Some(hit) = state.pages.get(key) {
            return Ok(respond(&hit, private));
        }
    }

    let store = state.store.clone();
    let level = state.gzip_level;
    let rendered = {
        let (name, at) = (name.clone(), at.clone());
        tokio::task::spawn_blocking(move || {
            store
                .read_page(&name, &at)
                .map(|lines| render(&name, &at, lines, repr, level))
        })
        .await
        .map_err(|e| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
        })??
    };
    let rendered = Arc::new(rendered);
    if let Some((key, _)) = cache_key {
        state.pages.insert(key, rendered.clone());
    } else if let Ok(etag) = rendered.etag.to_str()
        && conditional::not_modified(&headers, etag, None)
    {
        return Ok(not_modified(
            rendered.etag.clone(),
            rendered.link.clone(),
            None,
            false,
            private,
        ));
    }
    Ok(respond(&rendered, private))
}

/// A final page's ETag: its identity, never its bytes, so it is known before (and without) reading them.
fn final_etag(name: &SeriesName, at: &Located, repr: Repr) -> String {
    let (end, part) = match at.canonical() {
        PageRef::Before { end, part } => (end, part.map_or("last".to_string(), |p| p.to_string())),
        _ => (0, String::new()),
    };
    format!(
        "\"{FORMAT_VERSION}.{name}.{:x}.{:x}.{part}.{}\"",
        at.series_created,
        end,
        repr.tag()
    )
}

fn page_url(name: &SeriesName, page: PageRef) -> String {
    let base = format!("/api/series/{name}/data");
    match page {
        PageRef::Head => base,
        PageRef::Before { end, part: None } => format!("{base}/before/{}", time::format_stamp(end)),
        PageRef::Before { end, part: Some(k) } => {
            format!("{base}/before/{}/part/{k}", time::format_stamp(end))
        }
        PageRef::After { start } => format!("{base}/after/{}", time::format_stamp(start)),
    }
}

fn link_header(name: &SeriesName, at: &Located) -> Option<HeaderValue> {
    let links: Vec<String> = [("prev", at.prev), ("next", at.next)]
        .into_iter()
        .filter_map(|(rel, page)| page.map(|p| format!("<{}>; rel=\"{rel}\"", page_url(name, p))))
        .collect();
    (!links.is_empty()).then(|| header_value(&links.join(", ")))
}

fn header_value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static(""))
}

fn http_date(t: Millis) -> HeaderValue {
    header_value(&httpdate::fmt_http_date(conditional::http_time(t)))
}

fn render(name: &SeriesName, at: &Located, lines: PageLines, repr: Repr, level: u32) -> Rendered {
    let link = link_header(name, at);
    let plain = if repr.ndjson {
        lines.lines
    } else {
        json_body(name, at, &lines)
    };
    let etag = if at.is_final {
        final_etag(name, at, repr)
    } else {
        let mut h = DefaultHasher::new();
        (repr.tag(), link.as_ref().map(HeaderValue::as_bytes), &plain).hash(&mut h);
        format!("\"c.{:016x}\"", h.finish())
    };
    let body = match (repr.gzip, lines.member) {
        // The stored member is this very page, gzip'd: it goes out as it is.
        (true, Some(member)) if repr.ndjson => member,
        (true, _) => gzip(&plain, level),
        (false, _) => plain,
    };
    Rendered {
        body: Bytes::from(body),
        etag: header_value(&etag),
        link,
        last_modified: at.sealed_at.map(http_date),
        repr,
        is_final: at.is_final,
    }
}

/// The JSON representation: the links, range, count and finality, then the events as stored.
fn json_body(name: &SeriesName, at: &Located, lines: &PageLines) -> Vec<u8> {
    let at_time = |t: Option<Millis>| t.map(time::format_rfc3339);
    let head = serde_json::json!({
        "series": name.as_str(),
        "from": at_time(at.start),
        "to": at_time(at.start.map(|s| s + at.width.millis())),
        "part": at.part,
        "parts": at.parts,
        "count": lines.count,
        "final": at.is_final,
        "prev": at.prev.map(|p| page_url(name, p)),
        "next": at.next.map(|p| page_url(name, p)),
    })
    .to_string();
    let mut out = Vec::with_capacity(head.len() + lines.lines.len() + 16);
    out.extend_from_slice(&head.as_bytes()[..head.len() - 1]);
    out.extend_from_slice(b",\"events\":[");
    for (i, line) in lines
        .lines
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .enumerate()
    {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(line);
    }
    out.extend_from_slice(b"]}");
    out
}

fn gzip(bytes: &[u8], level: u32) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(
        Vec::with_capacity(bytes.len() / 3 + 64),
        flate2::Compression::new(level),
    );
    // Writing into a Vec cannot fail.
    let _ = enc.write_all(bytes);
    enc.finish().unwrap_or_default()
}

fn cache_control(is_final: bool, private: bool) -> HeaderValue {
    match (is_final, private) {
        (true, false) => HeaderValue::from_static("public, max-age=31536000, immutable"),
        (true, true) => HeaderValue::from_static("private, max-age=31536000, immutable"),
        (false, _) => HeaderValue::from_static("no-cache"),
    }
}

fn common_headers(
    h: &mut HeaderMap,
    etag: HeaderValue,
    link: Option<HeaderValue>,
    last_modified: Option<HeaderValue>,
    is_final: bool,
    private: bool,
) {
    h.insert(header::ETAG, etag);
    h.insert(header::CACHE_CONTROL, cache_control(is_final, private));
    h.insert(
        header::VARY,
        HeaderValue::from_static("Accept, Accept-Encoding"),
    );
    if let Some(link) = link {
        h.insert(header::LINK, link);
    }
    if let Some(lm) = last_modified {
        h.insert(header::LAST_MODIFIED, lm);
    }
}

fn respond(r: &Rendered, private: bool) -> Response {
    let mut res = Response::new(Body::from(r.body.clone()));
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(r.repr.content_type()),
    );
    if r.repr.gzip {
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    common_headers(
        h,
        r.etag.clone(),
        r.link.clone(),
        r.last_modified.clone(),
        r.is_final,
        private,
    );
    res
}

fn not_modified(
    etag: HeaderValue,
    link: Option<HeaderValue>,
    last_modified: Option<HeaderValue>,
    is_final: bool,
    private: bool,
) -> Response {
    let mut res = Response::new(Body::empty());
    *res.status_mut() = StatusCode::NOT_MODIFIED;
    common_headers(
        res.headers_mut(),
        etag,
        link,
        last_modified,
        is_final,
        private,
    );
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    fn negotiate(accept: &str, encoding: &str) -> Repr {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT, HeaderValue::from_str(accept).unwrap());
        h.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_str(encoding).unwrap(),
        );
        Repr::negotiate(&h)
    }

    #[test]
    fn negotiation_prefers_json_unless_ndjson_is_preferred() {
        assert_eq!(
            negotiate("", ""),
            Repr {
                ndjson: false,
                gzip: false
            }
        );
        assert_eq!(
            negotiate("*/*", "gzip, br"),
            Repr {
                ndjson: false,
                gzip: true
            }
        );
        assert!(negotiate("application/x-ndjson", "").ndjson);
        assert!(negotiate("application/json;q=0.5, application/x-ndjson", "").ndjson);
        assert!(!negotiate("application/x-ndjson;q=0.1, application/json", "").ndjson);
        assert!(!negotiate("text/html", "gzip;q=0").gzip);
        assert!(negotiate("", "deflate, gzip;q=0.5").gzip);
    }
}
