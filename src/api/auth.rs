//! Bearer tokens: one for writes, one (optional) for reads. Without a configured token that side is open.
//! Tokens are compared in constant time and never logged.

use axum::http::{HeaderMap, StatusCode, header};

use super::error::ApiError;

#[derive(Clone, Default)]
pub struct Tokens {
    pub write: Option<String>,
    pub read: Option<String>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("write", &self.write.as_ref().map(|_| "<set>"))
            .field("read", &self.read.as_ref().map(|_| "<set>"))
            .finish()
    }
}

impl Tokens {
    pub fn check_write(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        check(headers, &[self.write.as_deref()])
    }

    /// Reads are open unless a read token is set; the write token reads too.
    pub fn check_read(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        if self.read.is_none() {
            return Ok(());
        }
        check(headers, &[self.read.as_deref(), self.write.as_deref()])
    }
}

fn check(headers: &HeaderMap, accepted: &[Option<&str>]) -> Result<(), ApiError> {
    if accepted.iter().all(Option::is_none) {
        return Ok(());
    }
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
    let Some(given) = given else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "this request needs an Authorization: Bearer token",
        ));
    };
    if accepted
        .iter()
        .flatten()
        .any(|t| constant_time_eq(t.as_bytes(), given.as_bytes()))
    {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the bearer token is not valid for this request",
        ))
    }
}

/// Equality whose time depends on the lengths only, not on where the bytes differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn with(auth: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(auth).unwrap());
        h
    }

    #[test]
    fn tokens() {
        let t = Tokens {
            write: Some("w".into()),
            read: None,
        };
        assert_eq!(t.check_write(&HeaderMap::new()).unwrap_err().status, 401);
        assert_eq!(t.check_write(&with("Bearer x")).unwrap_err().status, 403);
        assert!(t.check_write(&with("bearer w")).is_ok());
        assert!(t.check_read(&HeaderMap::new()).is_ok());
        let t = Tokens {
            write: Some("w".into()),
            read: Some("r".into()),
        };
        assert!(t.check_read(&with("Bearer r")).is_ok());
        assert!(t.check_read(&with("Bearer w")).is_ok());
        assert_eq!(t.check_write(&with("Bearer r")).unwrap_err().status, 403);
        assert!(!constant_time_eq(b"ab", b"abc"));
    }
}
