//! The HTTP face: routes, handlers and wire types. Handlers translate between HTTP and the store; all the rules
//! about events and time live below. Every answer that is not a success goes through `error::ApiError`.

pub mod auth;
pub mod error;
mod ingest;
mod series;

use std::sync::Arc;

use axum::Router;
use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;
use axum::http::{StatusCode, Uri};
use axum::routing::{get, post};

use crate::store::{SeriesName, Store};
use auth::Tokens;
use error::ApiError;

/// What every handler gets: cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub tokens: Arc<Tokens>,
    /// The most bytes a request body may have, before and after gzip inflation.
    pub max_body_bytes: usize,
}

/// The series `default`, which also answers on the short URLs.
pub const DEFAULT_SERIES: &str = "default";

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/api/series", get(series::series_list))
        .route(
            "/api/series/{series}",
            get(series::series_show).put(series::series_put),
        )
        .route("/api/series/{series}/events", post(ingest::events_post))
        .route("/api/data", post(ingest::data_post))
        .route("/healthz", get(healthz))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

async fn healthz() -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({"status": "ok"}))
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::not_found(format!("no route for {}", uri.path()))
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this method is not allowed on this URL",
    )
}

/// The `{series}` path segment, checked to be a valid series name.
pub struct SeriesPath(pub SeriesName);

impl<S: Send + Sync> FromRequestParts<S> for SeriesPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::bad_request(format!("bad path: {e}")))?;
        SeriesName::parse(&raw)
            .map(SeriesPath)
            .map_err(ApiError::bad_request)
    }
}
