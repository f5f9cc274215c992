//! `GET /`: the viewer (three static files compiled into the binary, no build step) and `GET
//! /api-docs/openapi.yaml`. Each is `no-cache` with an ETag of its bytes, so a browser revalidates it with a 304.

use std::hash::{Hash, Hasher};
use std::sync::LazyLock;

use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};

use super::conditional::Validators;

struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const ASSETS: &[Asset] = &[
    Asset {
        path: "/",
        content_type: "text/html; charset=utf-8",
        body: include_str!("static/index.html"),
    },
    Asset {
        path: "/app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("static/app.js"),
    },
    Asset {
        path: "/style.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("static/style.css"),
    },
    Asset {
        path: "/api-docs/openapi.yaml",
        content_type: "application/yaml",
        body: include_str!("../../api-docs/openapi.yaml"),
    },
];

/// Every asset's ETag, in the order of `ASSETS`.
static ETAGS: LazyLock<Vec<String>> = LazyLock::new(|| {
    ASSETS
        .iter()
        .map(|a| {
            let mut h = super::StableHasher::default();
            a.body.hash(&mut h);
            format!("\"{:016x}\"", h.finish())
        })
        .collect()
});

/// The routes this module answers.
pub fn paths() -> impl Iterator<Item = &'static str> {
    ASSETS.iter().map(|a| a.path)
}

pub async fn asset(uri: Uri, headers: HeaderMap) -> Response {
    if uri.path() == "/" && wants_json(&headers) {
        // An Elasticsearch client checking the version before it writes to `_bulk`.
        return super::shippers::elastic::info();
    }
    let Some(i) = ASSETS.iter().position(|a| a.path == uri.path()) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let (asset, etag) = (&ASSETS[i], &ETAGS[i]);
    let mut h = HeaderMap::new();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(v) = HeaderValue::from_str(etag) {
        h.insert(header::ETAG, v);
    }
    if Validators::from_headers(&headers).not_modified(etag, None) {
        return (StatusCode::NOT_MODIFIED, h).into_response();
    }
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    (h, asset.body).into_response()
}

fn wants_json(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/json") || v.contains("application/vnd.elasticsearch"))
}
