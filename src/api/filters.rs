//! `where=`, `q=` and (on pages) `limit=` of a URL: the filter they spell (`crate::filter`), and the query as
//! links spell it, so that a request in another spelling can be redirected there and caches keep one copy.
//!
//! The canonical query keeps the request's other parameters as they were sent, in their order, and puts the
//! filter's last, spelled by `Filter::canonical`, then `limit`. A request without a filter is never
//! redirected.

use std::sync::Arc;

use super::error::ApiError;
use crate::filter::Filter;

/// A request's filter, and how its query is spelled.
#[derive(Clone, Debug)]
pub struct Filtering {
    pub filter: Arc<Filter>,
    /// `limit=`, when it was given (pages only).
    pub limit: Option<usize>,
    /// The filter's part of a query as links spell it (`where=..&q=..&limit=..`).
    pub query: String,
    /// The whole query as links spell it.
    pub canonical: String,
}

impl Filtering {
    /// The filter of a raw query, `None` when it has none. `max_limit` is `limit=`'s bound; `None` where
    /// `limit=` means nothing (exports and histograms leave it to their other parameters).
    pub fn read(
        raw: Option<&str>,
        max_limit: Option<usize>,
    ) -> Result<Option<Filtering>, ApiError> {
        let raw = raw.unwrap_or("");
        let (mut wheres, mut texts, mut limit, mut others) = (vec![], vec![], None, vec![]);
        for segment in raw.split('&').filter(|s| !s.is_empty()) {
            let pair: Vec<(String, String)> = serde_urlencoded::from_str(segment)
                .map_err(|e| ApiError::bad_request(format!("bad query {segment:?}: {e}")))?;
            match pair.into_iter().next() {
                Some((k, v)) if k == "where" => wheres.push(v),
                Some((k, v)) if k == "q" => texts.push(v),
                Some((k, v)) if k == "limit" && max_limit.is_some() => limit = Some(v),
                _ => others.push(segment),
            }
        }
        let filter = Filter::parse(
            wheres.iter().map(String::as_str),
            texts.iter().map(String::as_str),
        )
        .map_err(ApiError::bad_request)?;
        let limit = match (limit, max_limit) {
            (Some(v), Some(max)) => Some(
                v.parse::<usize>()
                    .ok()
                    .filter(|n| (1..=max).contains(n))
                    .ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "limit={v:?} is not a number of events from 1 to {max}"
                        ))
                    })?,
            ),
            _ => None,
        };
        let Some(filter) = filter else {
            if limit.is_some() {
                return Err(ApiError::bad_request(
                    "limit= applies to filtered pages: give where= or q= too",
                ));
            }
            return Ok(None);
        };
        let mut query = filter.canonical().to_string();
        if let Some(n) = limit {
            query.push_str(&format!("&limit={n}"));
        }
        others.push(&query);
        let canonical = others.join("&");
        Ok(Some(Filtering {
            filter: Arc::new(filter),
            limit,
            query,
            canonical,
        }))
    }

    /// Whether `raw` is spelled otherwise than links spell it.
    pub fn respelled(&self, raw: Option<&str>) -> bool {
        raw.unwrap_or("") != self.canonical
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_goes_last_in_its_one_spelling_and_the_rest_stays_as_sent() {
        let f = Filtering::read(Some("from=1&where=b%3D2&to=2&where=a:1"), None)
            .unwrap()
            .unwrap();
        assert_eq!(f.canonical, "from=1&to=2&where=a:1&where=b:2");
        assert!(f.respelled(Some("from=1&where=b%3D2&to=2&where=a:1")));
        assert!(!f.respelled(Some("from=1&to=2&where=a:1&where=b:2")));
        let p = Filtering::read(Some("limit=010&q=x"), Some(100))
            .unwrap()
            .unwrap();
        assert_eq!(p.query, "q=x&limit=10");
        assert!(Filtering::read(Some("limit=5"), Some(100)).is_err());
        assert!(Filtering::read(Some("limit=0&q=x"), Some(100)).is_err());
        assert!(Filtering::read(Some("limit=101&q=x"), Some(100)).is_err());
        assert!(Filtering::read(Some("from=1"), None).unwrap().is_none());
        assert!(Filtering::read(None, Some(5)).unwrap().is_none());
    }
}
