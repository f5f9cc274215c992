//! The one place where errors become HTTP: every error a handler can meet maps to a status and a stable code
//! here, and leaves as `{"error": {"code": "...", "message": "..."}}`.

use std::io;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::ingest::parse::ParseError;
use crate::store::StoreError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Seconds for `Retry-After`, where a 503 or 507 knows better than the usual 1.
    pub retry_after: Option<i64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }
}

impl From<ParseError> for ApiError {
    fn from(e: ParseError) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "malformed_event", e.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        let (status, code) = match &e {
            StoreError::Late { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "late_event"),
            StoreError::Future { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "future_event"),
            // Not the client's doing: worth retrying, once the clock has caught up.
            StoreError::ClockBehind { .. } => (StatusCode::SERVICE_UNAVAILABLE, "clock_behind"),
            StoreError::UnknownSeries(_) => (StatusCode::NOT_FOUND, "unknown_series"),
            StoreError::NoSuchPart { .. } => (StatusCode::NOT_FOUND, "not_found"),
            StoreError::Misaligned { .. } => (StatusCode::BAD_REQUEST, "bad_request"),
            StoreError::WidthConflict { .. } => (StatusCode::CONFLICT, "width_conflict"),
            StoreError::Gone(_) => (StatusCode::GONE, "gone"),
            StoreError::KeyReused(_) => {
                (StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused")
            }
            StoreError::Busy(_) | StoreError::ShuttingDown => {
                (StatusCode::SERVICE_UNAVAILABLE, "overloaded")
            }
            StoreError::Storage(
                _,
                Some(io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded),
            ) => (StatusCode::INSUFFICIENT_STORAGE, "storage_full"),
            StoreError::Storage(..) | StoreError::DataInUse(_) => {
                tracing::error!(error = %e, "storage error on a request");
                (StatusCode::INTERNAL_SERVER_ERROR, "storage_error")
            }
            StoreError::Unavailable(_) => {
                tracing::warn!(error = %e, "object store unavailable on a request");
                (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable")
            }
            // Logged by the commit thread, once.
            StoreError::LogUnavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "log_unavailable"),
            // Logged once, by the archive, when found.
            StoreError::Damaged(_) => (StatusCode::INTERNAL_SERVER_ERROR, "damaged_data"),
        };
        let mut error = ApiError::new(status, code, e.to_string());
        match e {
            StoreError::ClockBehind { watermark, now, .. } => {
                error.retry_after = Some(crate::store::clears_in_secs(watermark, now));
            }
            StoreError::Unavailable(_) | StoreError::LogUnavailable(_) => {
                error.retry_after = Some(5)
            }
            _ => {}
        }
        error
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": {"code": self.code, "message": self.message}});
        let mut res = (self.status, axum::Json(body)).into_response();
        res.extensions_mut()
            .insert(super::metrics::ErrorCode(self.code));
        let headers = res.headers_mut();
        // An error tells of a moment (a busy server, a damaged member, a series not made yet): no cache keeps it.
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        match self.status {
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::INSUFFICIENT_STORAGE => {
                let secs = self.retry_after.unwrap_or(1).max(1);
                headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
            }
            StatusCode::UNAUTHORIZED => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        res
    }
}

/// A permanent redirect (308) to the one spelling of a URL that links use. It never changes, so it may be kept
/// (a shared cache does not keep it when the request carried a token).
pub fn redirect(location: &str) -> Response {
    let body = serde_json::json!({ "location": location });
    let mut res = (StatusCode::PERMANENT_REDIRECT, axum::Json(body)).into_response();
    let headers = res.headers_mut();
    if let Ok(v) = HeaderValue::from_str(location) {
        headers.insert(header::LOCATION, v);
    }
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("max-age=31536000"),
    );
    res
}

/// The whole answer, head and JSON body, that replaces the bare one hyper writes for a request it could not
/// parse (`status` 400, 414 or 431; `date` its `date:` header line, kept). The connection closes after it.
pub fn transport_error(status: u16, date: &str) -> Vec<u8> {
    let (reason, code, message) = match status {
        414 => (
            "URI Too Long",
            "uri_too_long",
            "the request's URL is longer than the server reads",
        ),
        431 => (
            "Request Header Fields Too Large",
            "headers_too_large",
            "the request's headers are larger than the server reads",
        ),
        _ => (
            "Bad Request",
            "bad_request",
            "the request is not valid HTTP/1.1 (request line, header or version)",
        ),
    };
    let body = serde_json::json!({"error": {"code": code, "message": message}}).to_string();
    let date = if date.is_empty() {
        String::new()
    } else {
        format!("{date}\r\n")
    };
    format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         cache-control: no-store\r\naccess-control-allow-origin: *\r\nconnection: close\r\n{date}\r\n{body}",
        body.len()
    )
    .into_bytes()
}
