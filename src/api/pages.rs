//! `GET .../data` (the head), `.../data/before/{T}[/part/{k}]` and `.../data/after/{T}`: time-sliced pages,
//! linked by `Link` headers, and the caching contract (SPEC §5).
//!
//! A final page is named by its identity (series incarnation, chunk, part, representation): its strong ETag is
//! derived from that, so a `304` or a hit in the page cache needs no storage at all. Every other page is
//! `no-cache` with an ETag that hashes what it shows, so it changes exactly when the page does.
//!
//! Links always use the long form `/api/series/{series}/data/...`, also for `default` reached by the short URLs:
//! one page, one body, one cache entry.

use std::borrow::Cow;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::rejection::RawPathParamsRejection;
use axum::extract::{FromRequestParts, MatchedPath, RawPathParams, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::conditional::{self, Validators};
use super::error::{self, ApiError};
use super::filters::Filtering;
use crate::archive::deflate::Deflater;
use crate::bulk::export::Encoding;
use crate::store::{Filtered, Generation, Located, PageLines, PageRef, ScanLimits, SeriesName};
use crate::time::{self, Millis};

/// The in-memory cache of rendered final pages, weighed in bytes; `None` when configured to 0 bytes (moka
/// evicts lazily, so a 0-byte moka cache would still answer for a while).
pub type PageCache = Option<moka::sync::Cache<FinalPage, Arc<Rendered>>>;

pub fn page_cache(max_bytes: u64) -> PageCache {
    (max_bytes > 0).then(|| {
        moka::sync::Cache::builder()
            .weigher(|k: &FinalPage, v: &Arc<Rendered>| {
                u32::try_from(k.series.as_str().len() + v.body.len() + 256).unwrap_or(u32::MAX)
            })
            .max_capacity(max_bytes)
            .build()
    })
}

const FORMAT_VERSION: &str = "hg1";

/// zstd's level for pages compressed on the fly: its default, several times gzip's speed at a better ratio.
const ZSTD_LEVEL: i32 = 3;

/// Which representation a request gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Repr {
    ndjson: bool,
    encoding: Encoding,
}

impl Repr {
    /// `application/x-ndjson` when the client prefers it to JSON; zstd when it prefers it to gzip, else gzip
    /// when it accepts gzip.
    pub fn negotiate(headers: &HeaderMap) -> Repr {
        let accept = headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let encodings = headers
            .get(header::ACCEPT_ENCODING)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        // RFC 9110 §12.5.1: a media range's quality is that of the most specific range that matches it.
        let media = |names: &[&str]| {
            quality(accept, names)
                .or_else(|| quality(accept, &["application/*"]))
                .or_else(|| quality(accept, &["*/*"]))
                .unwrap_or(0.0)
        };
        let ndjson =
            media(&["application/x-ndjson", "application/jsonl"]) > media(&["application/json"]);
        Repr {
            ndjson,
            encoding: preferred_encoding(encodings),
        }
    }

    fn tag(self) -> &'static str {
        match (self.ndjson, self.encoding) {
            (false, Encoding::Identity) => "json",
            (false, Encoding::Gzip) => "json.gz",
            (false, Encoding::Zstd) => "json.zst",
            (true, Encoding::Identity) => "ndjson",
            (true, Encoding::Gzip) => "ndjson.gz",
            (true, Encoding::Zstd) => "ndjson.zst",
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

/// What a page or an export is sent in: zstd when the client prefers it to gzip (a higher `q`; browsers that
/// list both get gzip, which pages and exports send from stored members as they are), else gzip when taken,
/// else none.
pub fn preferred_encoding(accept_encoding: &str) -> Encoding {
    let gzip = quality(accept_encoding, &["gzip", "x-gzip"])
        .or_else(|| quality(accept_encoding, &["*"]))
        .unwrap_or(0.0);
    match quality(accept_encoding, &["zstd"]) {
        Some(z) if z > 0.0 && z > gzip => Encoding::Zstd,
        _ if gzip > 0.0 => Encoding::Gzip,
        _ => Encoding::Identity,
    }
}

/// Whether an `Accept-Encoding` value accepts gzip (RFC 9110 §12.5.3): by the quality it gives `gzip` when it
/// names it, even `q=0`, otherwise by the quality of `*`.
pub fn accepts_gzip(accept_encoding: &str) -> bool {
    quality(accept_encoding, &["gzip", "x-gzip"])
        .or_else(|| quality(accept_encoding, &["*"]))
        .is_some_and(|q| q > 0.0)
}

/// The highest quality a header list gives any of `names`; `None` when it names none of them. A `q` that does
/// not parse counts as 1, as if it were absent.
fn quality(list: &str, names: &[&str]) -> Option<f32> {
    list.split(',')
        .filter_map(|item| {
            let mut parts = item.split(';');
            let name = parts.next()?.trim();
            if !names.iter().any(|n| n.eq_ignore_ascii_case(name)) {
                return None;
            }
            let q = parts
                .filter_map(|p| p.trim().strip_prefix("q="))
                .find_map(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            Some(q)
        })
        .reduce(f32::max)
}

/// A page ready to send, as kept in the page cache.
#[derive(Debug)]
pub struct Rendered {
    body: Bytes,
    etag: String,
    /// Everything a 200 carries, built once: a cached page costs one map clone to send.
    headers: HeaderMap,
    /// What a 304 for it carries.
    not_modified: HeaderMap,
}

/// A page request: the `{series}`, `{t}` and `{part}` of its URL, read-token checked, the representation it
/// asks for and its validators. Borrowed from the request without copying its headers.
pub struct PageRequest {
    series: SeriesName,
    t: Option<Millis>,
    part: Option<u32>,
    repr: Repr,
    validators: Validators,
    /// `Prefer: wait=N`, at most `MAX_WAIT`.
    wait: Option<Duration>,
    /// `where=`, `q=`, `limit=`: a filtered page.
    filtering: Option<Filtering>,
}

/// The longest a request may be held for `Prefer: wait`.
pub const MAX_WAIT: Duration = Duration::from_secs(60);

/// The `wait` preference of `Prefer` headers (RFC 7240 §4.3), capped at `MAX_WAIT`; anything unreadable is
/// ignored, as preferences may be.
pub(crate) fn prefer_wait(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split([',', ';']))
        .find_map(|pref| {
            let (name, value) = pref.split_once('=')?;
            if !name.trim().eq_ignore_ascii_case("wait") {
                return None;
            }
            let secs: u64 = value.trim().trim_matches('"').parse().ok()?;
            Some(Duration::from_secs(secs).min(MAX_WAIT))
        })
}

impl PageRequest {
    /// A page request from its headers and its URL's `{series}`, `{t}` and `{part}` (the series `default` when
    /// it names none). The read token is the caller's to check, first.
    fn new<'p>(
        headers: &HeaderMap,
        params: impl IntoIterator<Item = (&'p str, &'p str)>,
    ) -> Result<PageRequest, ApiError> {
        let (mut series, mut t, mut part) = (None, None, None);
        for (key, value) in params {
            match key {
                "series" => series = Some(SeriesName::parse(value).map_err(ApiError::bad_request)?),
                "t" => {
                    t = Some(time::parse_stamp(value).ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "{value:?} is not a time as YYYY_MM_DD_HH_MM_SS (UTC), e.g. 2014_09_29_23_59_10"
                        ))
                    })?);
                }
                "part" => {
                    part = Some(value.parse::<u32>().map_err(|_| {
                        ApiError::bad_request(format!("part {value:?} is not a number"))
                    })?);
                }
                _ => {}
            }
        }
        let series = match series {
            Some(s) => s,
            None => SeriesName::default_series(),
        };
        Ok(PageRequest {
            series,
            t,
            part,
            repr: Repr::negotiate(headers),
            validators: Validators::from_headers(headers),
            wait: prefer_wait(headers),
            filtering: None,
        })
    }
}

impl FromRequestParts<AppState> for PageRequest {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        state
            .tokens
            .check_read(&parts.headers)
            .map_err(IntoResponse::into_response)?;
        let params = match RawPathParams::from_request_parts(parts, state).await {
            Ok(p) => Some(p),
            Err(RawPathParamsRejection::MissingPathParams(_)) => None,
            Err(e) => return Err(ApiError::bad_request(format!("bad path: {e}")).into_response()),
        };
        let params = params.iter().flat_map(|p| p.iter());
        let mut req =
            PageRequest::new(&parts.headers, params).map_err(IntoResponse::into_response)?;
        let raw_query = parts.uri.query();
        req.filtering = Filtering::read(raw_query, Some(state.max_page_entries))
            .map_err(IntoResponse::into_response)?;
        // One URL per page: another spelling of the same one (`part/00`, `part/+0`, an escaped character, a
        // filter's terms in another order) is sent to the one links use, so that caches keep one copy.
        let route = parts
            .extensions
            .get::<MatchedPath>()
            .map(MatchedPath::as_str);
        let path = route.map_or_else(|| parts.uri.path().to_string(), |r| req.path(r));
        let respelled = req
            .filtering
            .as_ref()
            .is_some_and(|f| f.respelled(raw_query));
        if path != parts.uri.path() || respelled {
            let query = match (&req.filtering, raw_query) {
                (Some(f), _) => format!("?{}", f.canonical),
                (None, Some(q)) => format!("?{q}"),
                (None, None) => String::new(),
            };
            return Err(error::redirect(&format!("{path}{query}")));
        }
        Ok(req)
    }
}

impl PageRequest {
    /// The path of this request as links spell it, on the route (template) it came by.
    fn path(&self, route: &str) -> String {
        route
            .replace("{series}", self.series.as_str())
            .replace("{t}", &self.t.map(time::format_stamp).unwrap_or_default())
            .replace(
                "{part}",
                &self.part.map(|p| p.to_string()).unwrap_or_default(),
            )
    }
}

/// The routes of `before` pages, whose final pages `from_memory` answers ahead of the router.
pub const BEFORE: &str = "/api/series/{series}/data/before/{t}";
pub const BEFORE_PART: &str = "/api/series/{series}/data/before/{t}/part/{part}";
pub const SHORT_BEFORE: &str = "/api/data/before/{t}";
pub const SHORT_BEFORE_PART: &str = "/api/data/before/{t}/part/{part}";

/// A final page answered from memory (a `304`, or a `200` from the page cache) without the router, and the
/// route it belongs to. The hottest request there is: a cache or a scrolling client revalidating a page it
/// already has. `None` for anything else, including every error: the router answers those, the one way.
pub fn from_memory(
    state: &AppState,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
) -> Option<(Response, &'static str)> {
    if method != Method::GET && method != Method::HEAD {
        return None;
    }
    let path = BeforePath::parse(uri.path())?;
    let params = [
        ("series", path.series),
        ("t", Some(path.t)),
        ("part", path.part),
    ];
    let params = params
        .into_iter()
        .filter_map(|(key, value)| Some((key, value?)));
    state.tokens.check_read(headers).ok()?;
    let req = PageRequest::new(headers, params).ok()?;
    let page = PageRef::Before {
        end: req.t?,
        part: req.part,
    };
    // A filtered page in the one spelling links use; any other query is the router's (to redirect or refuse).
    if let Some(query) = uri.query() {
        let filtering = Filtering::read(Some(query), Some(state.max_page_entries)).ok()??;
        if filtering.respelled(Some(query)) {
            return None;
        }
        let (res, _) = filtered_from_memory(state, &req, page, &filtering)?;
        return Some((res, path.route));
    }
    let at = state.store.locate_cached(&req.series, page).ok()??;
    let (res, _) = final_from_memory(state, &req, &at)?;
    Some((res, path.route))
}

/// A `before` page's path as the router would match it: its route and the segments of `{series}`, `{t}` and
/// `{part}`.
struct BeforePath<'a> {
    route: &'static str,
    series: Option<&'a str>,
    t: &'a str,
    part: Option<&'a str>,
}

impl BeforePath<'_> {
    /// `None` for any other path, or one with a percent-escape (the router decodes those).
    fn parse(path: &str) -> Option<BeforePath<'_>> {
        if path.contains('%') {
            return None;
        }
        let (series, rest) = match path.strip_prefix("/api/series/") {
            Some(rest) => {
                let (series, rest) = rest.split_once('/')?;
                (Some(series), rest.strip_prefix("data/before/")?)
            }
            None => (None, path.strip_prefix("/api/data/before/")?),
        };
        let (t, part) = match rest.split_once('/') {
            Some((t, part)) => (t, Some(part.strip_prefix("part/")?)),
            None => (rest, None),
        };
        let segment = |s: &str| !s.is_empty() && !s.contains('/');
        // A part as links spell it; any other spelling is the router's to redirect.
        let canonical =
            |p: &str| p.bytes().all(|b| b.is_ascii_digit()) && (p == "0" || !p.starts_with('0'));
        if !segment(t)
            || !series.is_none_or(segment)
            || !part.is_none_or(|p| segment(p) && canonical(p))
        {
            return None;
        }
        let route = match (series.is_some(), part.is_some()) {
            (true, false) => BEFORE,
            (true, true) => BEFORE_PART,
            (false, false) => SHORT_BEFORE,
            (false, true) => SHORT_BEFORE_PART,
        };
        Some(BeforePath {
            route,
            series,
            t,
            part,
        })
    }
}

pub async fn head(State(state): State<AppState>, req: PageRequest) -> Result<Response, ApiError> {
    serve(state, PageRef::Head, req).await
}

pub async fn before(State(state): State<AppState>, req: PageRequest) -> Result<Response, ApiError> {
    let end = stamp(&req)?;
    let part = req.part;
    serve(state, PageRef::Before { end, part }, req).await
}

pub async fn after(State(state): State<AppState>, req: PageRequest) -> Result<Response, ApiError> {
    let start = stamp(&req)?;
    serve(state, PageRef::After { start }, req).await
}

/// The `{t}` of a URL; the store checks it against the series' width.
fn stamp(p: &PageRequest) -> Result<Millis, ApiError> {
    p.t.ok_or_else(|| ApiError::bad_request("missing time in the path"))
}

/// Answers a page request. The head and `after` pages honour `Prefer: wait=N`: while the answer would tell the
/// client nothing new (a 304, or a page without events), the request is held until the series changes, the
/// wait ends or the server stops, and then answered as usual. Held requests are bounded; past the bound they
/// are answered at once.
async fn serve(state: AppState, page: PageRef, req: PageRequest) -> Result<Response, ApiError> {
    let wait = req.wait.filter(|_| !matches!(page, PageRef::Before { .. }));
    let held = wait.and_then(|wait| {
        let changes = state.store.changes(&req.series)?;
        let permit = state.held.clone().try_acquire_owned().ok()?;
        Some((wait, changes, permit))
    });
    let Some((wait, mut changes, _permit)) = held else {
        return answer(&state, page, &req).await.map(|(res, _)| res);
    };
    let deadline = tokio::time::Instant::now() + wait;
    let mut stopping = state.stopping.clone();
    loop {
        // Marked seen before looking, so a change while the page is read wakes the wait below.
        changes.borrow_and_update();
        let (mut res, nothing_new) = answer(&state, page, &req).await?;
        if !nothing_new || tokio::time::Instant::now() >= deadline || *stopping.borrow() {
            if let Ok(v) = HeaderValue::from_str(&format!("wait={}", wait.as_secs())) {
                res.headers_mut().insert("preference-applied", v);
            }
            return Ok(res);
        }
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return Ok(res) },
            () = tokio::time::sleep_until(deadline) => {}
            _ = stopping.changed() => {}
        }
    }
}

/// The answer to a page request, and whether it tells the client nothing new: a 304, or a page without events.
async fn answer(
    state: &AppState,
    page: PageRef,
    req: &PageRequest,
) -> Result<(Response, bool), ApiError> {
    if let Some(filtering) = &req.filtering {
        return answer_filtered(state, page, req, filtering).await;
    }
    let (name, repr, validators) = (&req.series, req.repr, &req.validators);
    let private = state.tokens.read.is_some();
    let at = match state.store.locate_cached(name, page)? {
        Some(at) => at,
        // An hour index to read first: off the async threads.
        None => {
            let (store, name) = (state.store.clone(), name.clone());
            super::blocking(move || Ok(store.locate(&name, page)?)).await?
        }
    };
    if let Some(answer) = final_from_memory(state, req, &at) {
        return Ok(answer);
    }
    let identity = at.is_final.then(|| {
        crate::metrics::add(&state.metrics.cache_misses, 1);
        FinalPage::of(name, &at, repr)
    });

    let store = state.store.clone();
    let deflater = state.deflater;
    let rendered = {
        let (name, at) = (name.clone(), at.clone());
        super::blocking(move || {
            let lines = store.read_page(&name, &at)?;
            Ok(render(&name, &at, lines, repr, deflater, private))
        })
        .await?
    };
    let rendered = Arc::new(rendered);
    if let Some(identity) = identity {
        if let Some(cache) = &state.pages {
            cache.insert(identity, rendered.clone());
        }
    } else if validators.not_modified(&rendered.etag, None) {
        return Ok((not_modified(rendered.not_modified.clone()), true));
    }
    Ok((respond(&rendered), at.parts == 0))
}

/// The answer to a filtered page request (`Store::scan_back`, `scan_forward`). A `before` page at or below the
/// persisted watermark is final: a 304 from its identity or a page-cache hit needs no reading, as for any final
/// page.
async fn answer_filtered(
    state: &AppState,
    page: PageRef,
    req: &PageRequest,
    filtering: &Filtering,
) -> Result<(Response, bool), ApiError> {
    let (name, repr) = (&req.series, req.repr);
    let private = state.tokens.read.is_some();
    let limits = ScanLimits {
        limit: filtering.limit.unwrap_or(state.max_page_entries),
        budget: state.filter_scan_bytes,
    };
    if let Some(answer) = filtered_from_memory(state, req, page, filtering) {
        return Ok(answer);
    }
    let (_, generation, retained_from) = state.store.scan_basis(name)?;
    if filtered_identity(state, req, page, filtering).is_some() {
        crate::metrics::add(&state.metrics.cache_misses, 1);
    }
    let (store, series, filter) = (state.store.clone(), name.clone(), filtering.filter.clone());
    let found = super::blocking(move || {
        Ok(match page {
            PageRef::After { start } => store.scan_forward(&series, start, &filter, limits)?,
            _ => store.scan_back(&series, page, &filter, limits)?,
        })
    })
    .await?;
    let found_identity = found
        .is_final
        .then(|| {
            let basis = (found.generation, found.retained_from);
            FinalPage::filtered(name, page, &filtering.query, basis, limits.budget, repr)
        })
        .flatten();
    let rendered = Arc::new(render_filtered(
        name,
        &found,
        filtering,
        found_identity,
        repr,
        state.deflater,
        private,
    ));
    let same_basis = found.generation == generation && found.retained_from == retained_from;
    if let (Some(identity), Some(cache)) =
        (filtered_identity(state, req, page, filtering), &state.pages)
        && found.is_final
        && same_basis
    {
        cache.insert(identity, rendered.clone());
    }
    if req.validators.not_modified(&rendered.etag, None) {
        return Ok((not_modified(rendered.not_modified.clone()), true));
    }
    Ok((respond(&rendered), found.count == 0))
}

/// A filtered page's identity when it is final: a `before` page of a chunk boundary at or below the persisted
/// watermark, named with the series' generation and retention boundary as they are now.
fn filtered_identity(
    state: &AppState,
    req: &PageRequest,
    page: PageRef,
    filtering: &Filtering,
) -> Option<FinalPage> {
    let PageRef::Before { end, .. } = page else {
        return None;
    };
    let (sealed, generation, retained_from) = state.store.scan_basis(&req.series).ok()?;
    let aligned = state
        .store
        .width_of(&req.series)
        .is_some_and(|w| w.is_aligned(end));
    if !aligned || end > sealed {
        return None;
    }
    let basis = (generation, retained_from);
    let budget = state.filter_scan_bytes;
    FinalPage::filtered(&req.series, page, &filtering.query, basis, budget, req.repr)
}

/// A final filtered page answered from memory, as `final_from_memory` answers others: a 304 from its identity,
/// or a 200 from the page cache.
fn filtered_from_memory(
    state: &AppState,
    req: &PageRequest,
    page: PageRef,
    filtering: &Filtering,
) -> Option<(Response, bool)> {
    let identity = filtered_identity(state, req, page, filtering)?;
    let hit = state.pages.as_ref().and_then(|c| c.get(&identity));
    let etag = hit
        .as_ref()
        .map_or_else(|| identity.etag(), |r| r.etag.clone());
    if req.validators.not_modified(&etag, None) {
        let headers = match &hit {
            Some(r) => r.not_modified.clone(),
            None => validator_headers(
                header_value(&etag),
                None,
                None,
                true,
                state.tokens.read.is_some(),
            ),
        };
        return Some((not_modified(headers), true));
    }
    let r = hit?;
    crate::metrics::add(&state.metrics.cache_hits, 1);
    Some((respond(&r), false))
}

/// A final page answered from memory: a 304 from its identity, or a 200 from the page cache. `None` when the
/// page is not final or must be read.
fn final_from_memory(
    state: &AppState,
    req: &PageRequest,
    at: &Located,
) -> Option<(Response, bool)> {
    if !at.is_final {
        return None;
    }
    let identity = FinalPage::of(&req.series, at, req.repr);
    let hit = state.pages.as_ref().and_then(|c| c.get(&identity));
    let etag = match &hit {
        Some(r) => Cow::Borrowed(r.etag.as_str()),
        None => Cow::Owned(identity.etag()),
    };
    if req.validators.not_modified(&etag, at.sealed_at) {
        let headers = match &hit {
            Some(r) => r.not_modified.clone(),
            None => validator_headers(
                header_value(&etag),
                link_header(&req.series, at),
                at.sealed_at.map(http_date),
                true,
                state.tokens.read.is_some(),
            ),
        };
        return Some((not_modified(headers), true));
    }
    let r = hit?;
    crate::metrics::add(&state.metrics.cache_hits, 1);
    Some((respond(&r), at.parts == 0))
}

/// A final page's identity: series, chunk, part and representation, and for a filtered page its filter. Its
/// ETag is made of it, never of its bytes, so it is known before (and without) reading them; the page cache is
/// keyed by it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FinalPage {
    series: SeriesName,
    generation: Generation,
    end: Millis,
    /// `None` for the last part (or the whole chunk), named so by links.
    part: Option<u32>,
    /// The oldest page retention left lost its `prev`: another content, another identity.
    retention_edge: Option<Millis>,
    /// A filtered page's filter query, scan budget and the series' retention boundary: what its content
    /// depends on besides the rest.
    filter: Option<Arc<str>>,
    repr: Repr,
}

impl FinalPage {
    fn of(series: &SeriesName, at: &Located, repr: Repr) -> FinalPage {
        let (end, part) = match at.canonical() {
            PageRef::Before { end, part } => (end, part),
            _ => (0, None),
        };
        FinalPage {
            series: series.clone(),
            generation: at.generation,
            end,
            part,
            retention_edge: at.retention_edge,
            filter: None,
            repr,
        }
    }

    /// A filtered `before` page's identity; `None` for any other page.
    fn filtered(
        series: &SeriesName,
        page: PageRef,
        query: &str,
        basis: (Generation, Millis),
        budget: u64,
        repr: Repr,
    ) -> Option<FinalPage> {
        let PageRef::Before { end, part } = page else {
            return None;
        };
        let (generation, retained_from) = basis;
        Some(FinalPage {
            series: series.clone(),
            generation,
            end,
            part,
            retention_edge: None,
            filter: Some(format!("{query}|{budget}|{retained_from}").into()),
            repr,
        })
    }

    fn etag(&self) -> String {
        let part = self.part.map_or("last".to_string(), |p| p.to_string());
        let edge = self
            .retention_edge
            .map_or(String::new(), |t| format!(".x{t:x}"));
        let filter = self.filter.as_deref().map_or(String::new(), |f| {
            let mut h = super::StableHasher::default();
            f.hash(&mut h);
            format!(".f{:016x}", h.finish())
        });
        format!(
            "\"{FORMAT_VERSION}.{}.{}.{:x}.{part}{edge}{filter}.{}\"",
            self.series,
            self.generation,
            self.end,
            self.repr.tag()
        )
    }
}

/// A page's URL; `query` is a filter's, which every link of a filtered page carries.
fn page_url(name: &SeriesName, page: PageRef, query: Option<&str>) -> String {
    let base = format!("/api/series/{name}/data");
    let mut url = match page {
        PageRef::Head => base,
        PageRef::Before { end, part: None } => format!("{base}/before/{}", time::format_stamp(end)),
        PageRef::Before { end, part: Some(k) } => {
            format!("{base}/before/{}/part/{k}", time::format_stamp(end))
        }
        PageRef::After { start } => format!("{base}/after/{}", time::format_stamp(start)),
    };
    if let Some(q) = query {
        url.push('?');
        url.push_str(q);
    }
    url
}

fn link_header(name: &SeriesName, at: &Located) -> Option<HeaderValue> {
    links(name, at.prev, at.next, None)
}

fn links(
    name: &SeriesName,
    prev: Option<PageRef>,
    next: Option<PageRef>,
    query: Option<&str>,
) -> Option<HeaderValue> {
    let links: Vec<String> = [("prev", prev), ("next", next)]
        .into_iter()
        .filter_map(|(rel, page)| {
            page.map(|p| format!("<{}>; rel=\"{rel}\"", page_url(name, p, query)))
        })
        .collect();
    (!links.is_empty()).then(|| header_value(&links.join(", ")))
}

fn header_value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static(""))
}

fn http_date(t: Millis) -> HeaderValue {
    header_value(&httpdate::fmt_http_date(conditional::http_time(t)))
}

fn render(
    name: &SeriesName,
    at: &Located,
    lines: PageLines,
    repr: Repr,
    deflater: Deflater,
    private: bool,
) -> Rendered {
    let plain = if repr.ndjson {
        lines.lines
    } else {
        json_body(name, at, lines.count, &lines.lines)
    };
    let (body, encoded) = encode(plain, lines.member, repr, deflater);
    Shown {
        identity: at.is_final.then(|| FinalPage::of(name, at, repr)),
        link: link_header(name, at),
        last_modified: at.sealed_at.map(http_date),
        private,
    }
    .finish(body, encoded)
}

/// A filtered page, rendered, with its identity when it is final.
fn render_filtered(
    name: &SeriesName,
    f: &Filtered,
    filtering: &Filtering,
    identity: Option<FinalPage>,
    repr: Repr,
    deflater: Deflater,
    private: bool,
) -> Rendered {
    let query = filtering.query.as_str();
    let plain = if repr.ndjson {
        f.lines.clone()
    } else {
        filtered_json_body(name, f, query)
    };
    let (body, encoded) = encode(plain, None, repr, deflater);
    Shown {
        identity,
        link: links(name, f.prev, f.next, Some(query)),
        last_modified: None,
        private,
    }
    .finish(body, encoded)
}

/// A page's body in the representation asked for: a stored member that is this very page as it is, else
/// compressed here. Returns the representation it is in (zstd that fails goes out uncompressed).
fn encode(
    plain: Vec<u8>,
    member: Option<Vec<u8>>,
    repr: Repr,
    deflater: Deflater,
) -> (Vec<u8>, Repr) {
    let (body, encoding) = match (repr.encoding, member) {
        (Encoding::Gzip, Some(member)) if repr.ndjson => (member, Encoding::Gzip),
        (Encoding::Gzip, _) => (deflater.gzip(&plain), Encoding::Gzip),
        (Encoding::Zstd, _) => match zstd::bulk::compress(&plain, ZSTD_LEVEL) {
            Ok(z) => (z, Encoding::Zstd),
            Err(_) => (plain, Encoding::Identity),
        },
        (Encoding::Identity, _) => (plain, Encoding::Identity),
    };
    (body, Repr { encoding, ..repr })
}

/// What a page's headers say besides its body: its identity when final, its links and when it was sealed.
struct Shown {
    identity: Option<FinalPage>,
    link: Option<HeaderValue>,
    last_modified: Option<HeaderValue>,
    private: bool,
}

impl Shown {
    fn finish(self, body: Vec<u8>, repr: Repr) -> Rendered {
        // A page that is not final yet hashes exactly what it sends: the same lines go out as the stored member
        // once their chunk is sealed, other bytes than gzip'd on the fly, so they get another ETag.
        let is_final = self.identity.is_some();
        let etag = match self.identity {
            Some(identity) => FinalPage { repr, ..identity }.etag(),
            None => {
                let mut h = super::StableHasher::default();
                (
                    repr.tag(),
                    self.link.as_ref().map(HeaderValue::as_bytes),
                    &body,
                )
                    .hash(&mut h);
                format!("\"c.{:016x}\"", h.finish())
            }
        };
        let not_modified = validator_headers(
            header_value(&etag),
            self.link,
            self.last_modified,
            is_final,
            self.private,
        );
        let mut headers = not_modified.clone();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(repr.content_type()),
        );
        match repr.encoding {
            Encoding::Gzip => {
                headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            }
            Encoding::Zstd => {
                headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("zstd"));
            }
            Encoding::Identity => {}
        }
        Rendered {
            body: Bytes::from(body),
            etag,
            headers,
            not_modified,
        }
    }
}

/// The JSON representation: the links, range, count and finality, then the events as stored.
fn json_body(name: &SeriesName, at: &Located, count: usize, lines: &[u8]) -> Vec<u8> {
    let at_time = |t: Option<Millis>| t.map(time::format_rfc3339);
    let head = serde_json::json!({
        "series": name.as_str(),
        "from": at_time(at.start),
        "to": at_time(at.start.map(|s| s + at.width.millis())),
        "part": at.part,
        "parts": at.parts,
        "count": count,
        "final": at.is_final,
        "prev": at.prev.map(|p| page_url(name, p, None)),
        "next": at.next.map(|p| page_url(name, p, None)),
    });
    with_events(head, lines)
}

/// A filtered page's JSON: the range its walk read, the filter, how much it read, then the matches.
fn filtered_json_body(name: &SeriesName, f: &Filtered, query: &str) -> Vec<u8> {
    let at_time = |t: Option<Millis>| t.map(time::format_rfc3339);
    let head = serde_json::json!({
        "series": name.as_str(),
        "filter": query,
        "from": at_time(f.from),
        "to": at_time(f.to),
        "count": f.count,
        "scanned_bytes": f.scanned,
        "final": f.is_final,
        "prev": f.prev.map(|p| page_url(name, p, Some(query))),
        "next": f.next.map(|p| page_url(name, p, Some(query))),
    });
    with_events(head, &f.lines)
}

/// `head` (a JSON object) with an `events` array of the NDJSON `lines` as its last member.
fn with_events(head: serde_json::Value, lines: &[u8]) -> Vec<u8> {
    let head = head.to_string();
    let mut out = Vec::with_capacity(head.len() + lines.len() + 16);
    out.extend_from_slice(&head.as_bytes()[..head.len() - 1]);
    out.extend_from_slice(b",\"events\":[");
    for (i, line) in lines
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

fn cache_control(is_final: bool, private: bool) -> HeaderValue {
    match (is_final, private) {
        (true, false) => HeaderValue::from_static("public, max-age=31536000, immutable"),
        (true, true) => HeaderValue::from_static("private, max-age=31536000, immutable"),
        (false, _) => HeaderValue::from_static("no-cache"),
    }
}

/// The headers a page and its 304 share: validators, caching, links, and the CORS pair (set here rather than
/// by a middleware, on the hottest path).
fn validator_headers(
    etag: HeaderValue,
    link: Option<HeaderValue>,
    last_modified: Option<HeaderValue>,
    is_final: bool,
    private: bool,
) -> HeaderMap {
    let mut h = HeaderMap::with_capacity(8);
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
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    h.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        super::EXPOSED_HEADERS,
    );
    h
}

fn respond(r: &Rendered) -> Response {
    let mut res = Response::new(Body::from(r.body.clone()));
    *res.headers_mut() = r.headers.clone();
    res
}

fn not_modified(headers: HeaderMap) -> Response {
    let mut res = Response::new(Body::empty());
    *res.status_mut() = StatusCode::NOT_MODIFIED;
    *res.headers_mut() = headers;
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
    fn before_paths_are_read_as_the_router_matches_them() {
        let t = "2014_09_29_23_59_10";
        fn read(path: &str) -> Option<(&str, Option<&str>, &str, Option<&str>)> {
            BeforePath::parse(path).map(|p| (p.route, p.series, p.t, p.part))
        }
        assert_eq!(
            read(&format!("/api/series/cpu/data/before/{t}")),
            Some((BEFORE, Some("cpu"), t, None))
        );
        assert_eq!(
            read(&format!("/api/series/cpu/data/before/{t}/part/2")),
            Some((BEFORE_PART, Some("cpu"), t, Some("2")))
        );
        assert_eq!(
            read(&format!("/api/data/before/{t}")),
            Some((SHORT_BEFORE, None, t, None))
        );
        assert_eq!(
            read(&format!("/api/data/before/{t}/part/0")),
            Some((SHORT_BEFORE_PART, None, t, Some("0")))
        );
        // Everything else is the router's: other pages, other shapes, escapes.
        for path in [
            "/api/series/cpu/data".to_string(),
            format!("/api/series/cpu/data/after/{t}"),
            format!("/api/series/cpu/data/before/{t}/"),
            format!("/api/series/cpu/data/before/{t}/part/"),
            format!("/api/series/cpu/data/before/{t}/part/1/x"),
            format!("/api/series/cpu/data/before/{t}/x/1"),
            format!("/api/series//data/before/{t}"),
            format!("/api/series/a/b/data/before/{t}"),
            format!("/api/series/c%70u/data/before/{t}"),
            "/api/series/cpu/data/before/".to_string(),
            format!("/api/data/before/{t}/part/1/"),
            format!("/api/data/before/{t}/part/00"),
            format!("/api/data/before/{t}/part/+0"),
            format!("/api/data/before/{t}/part/01"),
            format!("/api/data/after/{t}"),
            format!("/x/api/data/before/{t}"),
        ] {
            assert!(read(&path).is_none(), "{path}");
        }
    }

    fn gzipped(r: Repr) -> bool {
        r.encoding == Encoding::Gzip
    }

    #[test]
    fn zstd_only_when_preferred_to_gzip() {
        let zstd = |e: &str| negotiate("", e).encoding == Encoding::Zstd;
        assert!(zstd("zstd, gzip;q=0.5"));
        assert!(zstd("zstd"));
        // Browsers list both at the same quality: gzip, whose stored members go out as they are.
        assert!(!zstd("gzip, deflate, br, zstd"));
        assert!(!zstd("zstd;q=0, gzip"));
        assert!(gzipped(negotiate("", "gzip, deflate, br, zstd")));
    }

    #[test]
    fn negotiation_prefers_json_unless_ndjson_is_preferred() {
        assert_eq!(
            negotiate("", ""),
            Repr {
                ndjson: false,
                encoding: Encoding::Identity
            }
        );
        assert_eq!(
            negotiate("*/*", "gzip, br"),
            Repr {
                ndjson: false,
                encoding: Encoding::Gzip
            }
        );
        assert!(negotiate("application/x-ndjson", "").ndjson);
        assert!(negotiate("application/json;q=0.5, application/x-ndjson", "").ndjson);
        assert!(!negotiate("application/x-ndjson;q=0.1, application/json", "").ndjson);
        assert!(!gzipped(negotiate("text/html", "gzip;q=0")));
        assert!(gzipped(negotiate("", "deflate, gzip;q=0.5")));
        // An explicit q=0 beats `*`, wherever it stands.
        for refused in ["gzip;q=0, *", "*, gzip;q=0", "*;q=1, x-gzip;q=0, gzip;q=0"] {
            assert!(!gzipped(negotiate("", refused)), "{refused}");
        }
        assert!(gzipped(negotiate("", "*")));
        assert!(!gzipped(negotiate("", "*;q=0")));
        assert!(gzipped(negotiate("", "br, *;q=0.1")));
        // The most specific media range decides: JSON refused, anything else welcome.
        assert!(negotiate("application/json;q=0, */*", "").ndjson);
        assert!(!negotiate("application/x-ndjson;q=0, */*", "").ndjson);
        assert!(negotiate("application/*;q=0.2, application/x-ndjson", "").ndjson);
    }
}
