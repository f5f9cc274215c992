//! Conditional requests (RFC 9110 §13): whether a request's validators match what we would send, so that the
//! answer is `304 Not Modified`. Pure functions of header values.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, HeaderValue, header};

use crate::time::Millis;

/// The validators of a request, kept apart from the rest of its headers.
#[derive(Debug, Default, Clone)]
pub struct Validators {
    if_none_match: Vec<HeaderValue>,
    if_modified_since: Option<HeaderValue>,
}

impl Validators {
    pub fn from_headers(headers: &HeaderMap) -> Validators {
        Validators {
            if_none_match: headers
                .get_all(header::IF_NONE_MATCH)
                .iter()
                .cloned()
                .collect(),
            if_modified_since: headers.get(header::IF_MODIFIED_SINCE).cloned(),
        }
    }

    /// RFC 9110 §13.2.2 for GET and HEAD: `If-None-Match` decides when present (weak comparison, lists, `*`);
    /// otherwise `If-Modified-Since` against `last_modified`, when the page has one.
    pub fn not_modified(&self, etag: &str, last_modified: Option<Millis>) -> bool {
        if !self.if_none_match.is_empty() {
            return self
                .if_none_match
                .iter()
                .any(|v| v.to_str().is_ok_and(|list| list_matches(list, etag)));
        }
        let (Some(since), Some(modified)) = (&self.if_modified_since, last_modified) else {
            return false;
        };
        since
            .to_str()
            .ok()
            .and_then(|s| httpdate::parse_http_date(s).ok())
            .is_some_and(|since| http_time(modified) <= since)
    }
}

/// A time as HTTP dates carry it: whole seconds.
pub fn http_time(t: Millis) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(t.div_euclid(1000).max(0) as u64)
}

/// Whether an `If-None-Match` field value names `etag`, by weak comparison: `W/` prefixes are ignored.
fn list_matches(list: &str, etag: &str) -> bool {
    let ours = opaque(etag);
    let mut rest = list.trim();
    if rest == "*" {
        return true;
    }
    while !rest.is_empty() {
        let tag = rest.strip_prefix("W/").unwrap_or(rest);
        let Some(body) = tag.strip_prefix('"') else {
            return false; // not an entity tag: ignore the field
        };
        let Some(end) = body.find('"') else {
            return false;
        };
        if Some(&body[..end]) == ours {
            return true;
        }
        rest = body[end + 1..].trim_start();
        rest = rest.strip_prefix(',').unwrap_or(rest).trim_start();
    }
    false
}

/// The part of an entity tag between its quotes.
fn opaque(etag: &str) -> Option<&str> {
    etag.strip_prefix("W/")
        .unwrap_or(etag)
        .strip_prefix('"')?
        .strip_suffix('"')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn not_modified(h: &HeaderMap, etag: &str, last_modified: Option<Millis>) -> bool {
        Validators::from_headers(h).not_modified(etag, last_modified)
    }

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    const TAG: &str = "\"hg1.abc\"";

    #[test]
    fn if_none_match_lists_star_and_weak_comparison() {
        let yes = [
            "\"hg1.abc\"",
            "*",
            "W/\"hg1.abc\"",
            "\"x\", \"hg1.abc\"",
            "\"x\",W/\"hg1.abc\" , \"y\"",
        ];
        for v in yes {
            assert!(
                not_modified(&headers(&[(header::IF_NONE_MATCH, v)]), TAG, None),
                "{v}"
            );
        }
        let no = [
            "\"hg1.ab\"",
            "hg1.abc",
            "\"x\", \"y\"",
            "",
            "W/",
            "\"unterminated",
        ];
        for v in no {
            assert!(
                !not_modified(&headers(&[(header::IF_NONE_MATCH, v)]), TAG, None),
                "{v}"
            );
        }
        // Two fields: either may match.
        let two = headers(&[
            (header::IF_NONE_MATCH, "\"x\""),
            (header::IF_NONE_MATCH, TAG),
        ]);
        assert!(not_modified(&two, TAG, None));
        // Our own weak tags match too.
        assert!(not_modified(
            &headers(&[(header::IF_NONE_MATCH, TAG)]),
            "W/\"hg1.abc\"",
            None
        ));
    }

    #[test]
    fn if_modified_since_only_without_if_none_match() {
        let lm = 1_411_952_350_999; // 2014-09-29T00:59:10.999Z: seconds resolution
        let date = "Mon, 29 Sep 2014 00:59:10 GMT";
        let earlier = "Mon, 29 Sep 2014 00:59:09 GMT";
        assert!(not_modified(
            &headers(&[(header::IF_MODIFIED_SINCE, date)]),
            TAG,
            Some(lm)
        ));
        assert!(!not_modified(
            &headers(&[(header::IF_MODIFIED_SINCE, earlier)]),
            TAG,
            Some(lm)
        ));
        assert!(!not_modified(
            &headers(&[(header::IF_MODIFIED_SINCE, date)]),
            TAG,
            None
        ));
        assert!(!not_modified(
            &headers(&[(header::IF_MODIFIED_SINCE, "yesterday")]),
            TAG,
            Some(lm)
        ));
        // If-None-Match takes precedence, even when it does not match.
        let both = headers(&[
            (header::IF_NONE_MATCH, "\"other\""),
            (header::IF_MODIFIED_SINCE, date),
        ]);
        assert!(!not_modified(&both, TAG, Some(lm)));
    }
}
