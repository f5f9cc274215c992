//! Histograms that read events: counts of a filter's matches per step, counts grouped by a field's values (the
//! top N over the range, and the rest as `other`), and aggregations of a numeric field per step (count, sum,
//! min, max, avg, and percentiles from a DDSketch, within 1% of the true value).
//!
//! The walk reads every part of the range once, in time order, a part at a time. Histogram ranges and steps
//! are multiples of the chunk width, so a chunk lies in one bucket and no line's time needs reading. Memory is
//! bounded by what the answer holds: `MAX_GROUP_ENTRIES` counts of (bucket, value) pairs and one sketch per
//! bucket and percentile field.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{Value, json};
use sketches_ddsketch::{Config, DDSketch};

use crate::filter::{self, Filter};
use crate::store::{Read, SeriesName, Store, StoreError};
use crate::time::Millis;

/// The most (bucket, value) counts a `group_by` may hold; past it the request is refused.
pub const MAX_GROUP_ENTRIES: usize = 1_000_000;
/// The most groups `top` may ask for.
pub const MAX_TOP: usize = 100;
/// The DDSketch's relative error bound on percentiles.
pub const RELATIVE_ERROR: f64 = 0.01;

/// What a histogram computes besides counts.
#[derive(Clone, Debug, Default)]
pub struct Aggregation {
    pub filter: Option<Arc<Filter>>,
    /// The field to group by, and how many of its values to name.
    pub group_by: Option<(Vec<String>, usize)>,
    pub aggs: Vec<Agg>,
}

/// One aggregation of a numeric field: `sum(latency)`, `p99(http.ms)`.
#[derive(Clone, Debug, PartialEq)]
pub struct Agg {
    kind: Kind,
    field: Vec<String>,
    /// As the answer names it.
    pub name: String,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Sum,
    Min,
    Max,
    Avg,
    Quantile(f64),
}

/// A dotted field name as a path.
pub fn path(field: &str) -> Result<Vec<String>, String> {
    let path: Vec<String> = field.split('.').map(str::to_string).collect();
    if field.is_empty() || path.iter().any(String::is_empty) {
        return Err(format!("{field:?} is not a field name (dotted for a path)"));
    }
    Ok(path)
}

impl Agg {
    pub fn is_percentile(&self) -> bool {
        matches!(self.kind, Kind::Quantile(_))
    }

    /// `agg=` terms, comma-separated: `count` (always given), `sum(f)`, `min(f)`, `max(f)`, `avg(f)`, `p50(f)`,
    /// `p90(f)`, `p99(f)` (any `pNN` or `pNN.N`).
    pub fn parse_list(raw: &str) -> Result<Vec<Agg>, String> {
        let mut aggs = Vec::new();
        for term in raw.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            if term == "count" {
                continue;
            }
            let bad = || {
                format!(
                    "agg={term:?} is not count, sum(field), min(field), max(field), avg(field) or pNN(field), e.g. p99(latency_ms)"
                )
            };
            let (op, rest) = term.split_once('(').ok_or_else(bad)?;
            let field = rest.strip_suffix(')').ok_or_else(bad)?;
            let kind = match op {
                "sum" => Kind::Sum,
                "min" => Kind::Min,
                "max" => Kind::Max,
                "avg" => Kind::Avg,
                p => {
                    let q: f64 = p
                        .strip_prefix('p')
                        .and_then(|n| n.parse().ok())
                        .filter(|q: &f64| (0.0..=100.0).contains(q))
                        .ok_or_else(bad)?;
                    Kind::Quantile(q / 100.0)
                }
            };
            let agg = Agg {
                kind,
                field: path(field).map_err(|e| format!("agg={term:?}: {e}"))?,
                name: term.to_string(),
            };
            if !aggs.contains(&agg) {
                aggs.push(agg);
            }
        }
        Ok(aggs)
    }
}

/// One bucket's numbers for one aggregation.
enum Acc {
    Sum { sum: f64, n: u64 },
    Min(Option<f64>),
    Max(Option<f64>),
    Sketch(Box<DDSketch>),
}

impl Acc {
    fn new(kind: Kind) -> Acc {
        match kind {
            Kind::Sum | Kind::Avg => Acc::Sum { sum: 0.0, n: 0 },
            Kind::Min => Acc::Min(None),
            Kind::Max => Acc::Max(None),
            Kind::Quantile(_) => Acc::Sketch(Box::new(DDSketch::new(Config::new(
                RELATIVE_ERROR,
                2048,
                1e-9,
            )))),
        }
    }

    fn add(&mut self, v: f64) {
        match self {
            Acc::Sum { sum, n } => {
                *sum += v;
                *n += 1;
            }
            Acc::Min(m) => *m = Some(m.map_or(v, |m| m.min(v))),
            Acc::Max(m) => *m = Some(m.map_or(v, |m| m.max(v))),
            Acc::Sketch(s) => s.add(v),
        }
    }

    fn value(&self, kind: Kind) -> Option<f64> {
        match (self, kind) {
            (Acc::Sum { sum, n }, Kind::Avg) => (*n > 0).then(|| sum / *n as f64),
            (Acc::Sum { sum, .. }, _) => Some(*sum),
            (Acc::Min(m) | Acc::Max(m), _) => *m,
            (Acc::Sketch(s), Kind::Quantile(q)) => s.quantile(q).ok().flatten(),
            (Acc::Sketch(_), _) => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HistogramError {
    /// The answer would hold more than it may.
    #[error("{0}")]
    TooManyGroups(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Per-bucket state of a histogram being computed.
struct Buckets {
    counts: Vec<u64>,
    /// Per bucket, counts by the group field's value (as its text).
    groups: Vec<HashMap<Box<str>, u64>>,
    group_entries: usize,
    missing: Vec<u64>,
    accs: Vec<Vec<Acc>>,
}

/// The histogram of `[from, to)` in steps of `step` (both multiples of the series' width) as JSON buckets.
/// Blocking: every part of the range is read.
pub fn histogram(
    store: &Store,
    name: &SeriesName,
    (from, to, step): (Millis, Millis, Millis),
    what: &Aggregation,
) -> Result<Vec<Value>, HistogramError> {
    let n = crate::time::buckets(from, to, step);
    let mut b = Buckets {
        counts: vec![0; n],
        groups: vec![HashMap::new(); if what.group_by.is_some() { n } else { 0 }],
        group_entries: 0,
        missing: vec![0; n],
        accs: (0..n)
            .map(|_| what.aggs.iter().map(|a| Acc::new(a.kind)).collect())
            .collect(),
    };
    let mut refused = None;
    let tokens = what.filter.as_ref().map(|f| f.tokens()).unwrap_or_default();
    each_part(store, name, (from, to), &tokens, |start, lines| {
        let i = ((start - from) / step) as usize;
        for line in lines.split(|&c| c == b'\n').filter(|l| !l.is_empty()) {
            if what.filter.as_ref().is_some_and(|f| !f.matches(line)) {
                continue;
            }
            b.counts[i] += 1;
            if let Some((field, _)) = &what.group_by {
                match filter::lookup(line, field).map(group_text) {
                    None => b.missing[i] += 1,
                    Some(text) => {
                        let groups = &mut b.groups[i];
                        if let Some(n) = groups.get_mut(text.as_str()) {
                            *n += 1;
                        } else if b.group_entries < MAX_GROUP_ENTRIES {
                            groups.insert(text.into_boxed_str(), 1);
                            b.group_entries += 1;
                        } else {
                            refused.get_or_insert(format!(
                                "group_by: more than {MAX_GROUP_ENTRIES} (step, value) counts; use a larger step, a where= filter or another field"
                            ));
                            return false;
                        }
                    }
                }
            }
            for (agg, acc) in what.aggs.iter().zip(b.accs[i].iter_mut()) {
                if let Some(v) = filter::lookup(line, &agg.field).and_then(|r| number_of(r.get())) {
                    acc.add(v);
                }
            }
        }
        true
    })?;
    if let Some(refusal) = refused {
        return Err(HistogramError::TooManyGroups(refusal));
    }
    // The top values over the whole range, by count, then by value for a fixed order.
    let top: Vec<Box<str>> = match &what.group_by {
        Some((_, top)) => {
            let mut total: HashMap<&str, u64> = HashMap::new();
            for groups in &b.groups {
                for (v, n) in groups {
                    *total.entry(v).or_default() += n;
                }
            }
            let mut ranked: Vec<(&str, u64)> = total.into_iter().collect();
            ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
            ranked
                .into_iter()
                .take(*top)
                .map(|(v, _)| v.into())
                .collect()
        }
        None => Vec::new(),
    };
    let buckets = (0..n)
        .map(|i| {
            let mut bucket = json!({
                "start": crate::time::format_rfc3339(from + i as Millis * step),
                "count": b.counts[i],
            });
            if what.group_by.is_some() {
                let groups = &b.groups[i];
                let named: serde_json::Map<String, Value> = top
                    .iter()
                    .map(|v| (v.to_string(), json!(groups.get(v).copied().unwrap_or(0))))
                    .collect();
                let in_top: u64 = top.iter().filter_map(|v| groups.get(v)).sum();
                let all: u64 = groups.values().sum();
                bucket["groups"] = Value::Object(named);
                bucket["other"] = json!(all - in_top);
                bucket["missing"] = json!(b.missing[i]);
            }
            if !what.aggs.is_empty() {
                let aggs: serde_json::Map<String, Value> = what
                    .aggs
                    .iter()
                    .zip(&b.accs[i])
                    .map(|(agg, acc)| (agg.name.clone(), json!(acc.value(agg.kind))))
                    .collect();
                bucket["aggs"] = Value::Object(aggs);
            }
            bucket
        })
        .collect();
    Ok(buckets)
}

/// A group's name: a string's text, any other value as JSON.
fn group_text(raw: &serde_json::value::RawValue) -> String {
    serde_json::from_str::<String>(raw.get()).unwrap_or_else(|_| raw.get().to_string())
}

/// A JSON number's value; strings and everything else are not numbers here.
fn number_of(text: &str) -> Option<f64> {
    let first = text.as_bytes().first()?;
    if *first == b'-' || first.is_ascii_digit() {
        text.parse::<f64>().ok().filter(|v| v.is_finite())
    } else {
        None
    }
}

/// Calls `visit(chunk start, lines)` for every part of every chunk that starts in `[from, to)`, in time
/// order, until it returns false; parts whose summary says they lack one of `tokens` are left out.
/// `from` must be a chunk boundary.
pub fn each_part(
    store: &Store,
    name: &SeriesName,
    (from, to): (Millis, Millis),
    tokens: &[u64],
    mut visit: impl FnMut(Millis, &[u8]) -> bool,
) -> Result<(), StoreError> {
    for part in store.parts(name, from, to)? {
        let part = part?;
        if let Read::Lines(lines) = store.read_for(name, &part.at, tokens)?
            && !visit(part.start, &lines.lines)
        {
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aggregation_lists_parse_or_name_the_bad_term() {
        let aggs = Agg::parse_list("count, avg(ms),p99(http.ms),p99.9(ms),avg(ms)").unwrap();
        let names: Vec<&str> = aggs.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["avg(ms)", "p99(http.ms)", "p99.9(ms)"]);
        assert_eq!(aggs[1].field, ["http", "ms"]);
        for bad in ["avg", "avg(", "median(x)", "p101(x)", "sum()", "sum(a..b)"] {
            let e = Agg::parse_list(bad).unwrap_err();
            assert!(e.contains(bad), "{e}");
        }
    }

    #[test]
    fn sketch_percentiles_are_within_the_stated_error() {
        let mut acc = Acc::new(Kind::Quantile(0.99));
        let mut values: Vec<f64> = (1..=10_000).map(|i| (i as f64).powf(1.5) - 500.0).collect();
        for v in &values {
            acc.add(*v);
        }
        values.sort_by(f64::total_cmp);
        let exact = values[(0.99 * (values.len() - 1) as f64) as usize];
        let got = acc.value(Kind::Quantile(0.99)).unwrap();
        assert!(
            ((got - exact) / exact).abs() <= RELATIVE_ERROR,
            "{got} vs {exact}"
        );
    }
}
