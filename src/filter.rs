//! Filters over stored events: the `where=` and `q=` grammar of page, export and histogram URLs, its one
//! canonical spelling, and whether a stored line matches.
//!
//! A filter is a list of terms, all of which must hold (api-docs/openapi.yaml and the README give the grammar):
//! `where=FIELD:VALUE` (equals; `=` is read as `:`), `FIELD!=VALUE` (anything else, a missing field too),
//! `FIELD<V`, `<=`, `>`, `>=` (numbers with numbers, RFC 3339 times with times), `FIELD?` (present), and
//! `q=TEXT`, bytes the stored line contains as they are. A field is a name, dotted for a path into objects.
//!
//! One filter, one URL: `canonical` spells it the one way links use (terms sorted and without repeats, numbers
//! and times in one form, strings bare unless they would read as something else), and handlers redirect any
//! other spelling there, so a cache holds one copy of each filtered answer.
//!
//! Matching reads no more than it must: a line that lacks a term's field name or string value as bytes (and has
//! no escapes that could spell them otherwise) is refused without parsing; otherwise the line is walked once per
//! term with serde, borrowing, skipping what is not on the path. This module knows nothing of HTTP or storage.

use std::fmt::Write as _;

use memchr::memmem::Finder;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::archive::summary;
use crate::time::{self, Millis};

/// The most `where=` terms, and the most `q=` texts, one filter may have (a URL of them all stays within what
/// HTTP servers and caches take).
pub const MAX_TERMS: usize = 8;
/// The longest one term may be, in bytes.
pub const MAX_TERM_BYTES: usize = 256;

/// A parsed filter: what every matching line satisfies.
#[derive(Clone, Debug)]
pub struct Filter {
    terms: Vec<Term>,
    /// `q=` texts, with a searcher each.
    texts: Vec<Finder<'static>>,
    canonical: String,
}

#[derive(Clone, Debug)]
struct Term {
    path: Vec<String>,
    op: Op,
    /// Bytes a line without escapes must contain for the term to hold: the field's last name, closing quote
    /// included, and for a string or literal value that value as JSON. Empty for `!=`, which a line without
    /// the field satisfies.
    needles: Vec<Finder<'static>>,
    /// The term as `canonical` spells it.
    spelled: String,
}

#[derive(Clone, Debug, PartialEq)]
enum Op {
    Eq(Value),
    Ne(Value),
    Cmp(Cmp, Bound),
    Exists,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Cmp {
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Clone, Debug, PartialEq)]
enum Value {
    Str(String),
    Num(f64),
    Bool(bool),
    Null,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Bound {
    Num(f64),
    Time(Millis),
}

impl Filter {
    /// A filter from a request's `where=` and `q=` values; `None` when there are none. The error names the
    /// term and what is wrong with it.
    pub fn parse<'a>(
        wheres: impl IntoIterator<Item = &'a str>,
        texts: impl IntoIterator<Item = &'a str>,
    ) -> Result<Option<Filter>, String> {
        let mut terms = Vec::new();
        for raw in wheres {
            check_size("where", raw)?;
            terms.push(Term::parse(raw).map_err(|e| format!("where={raw:?}: {e}"))?);
        }
        let mut texts: Vec<String> = texts
            .into_iter()
            .map(|raw| {
                check_size("q", raw)?;
                if raw.is_empty() {
                    return Err(
                        "q=\"\": an empty text matches everything; leave q= out".to_string()
                    );
                }
                Ok(raw.to_string())
            })
            .collect::<Result<_, String>>()?;
        if terms.len().max(texts.len()) > MAX_TERMS {
            return Err(format!(
                "{} where= terms and {} q= texts: at most {MAX_TERMS} of each",
                terms.len(),
                texts.len()
            ));
        }
        if terms.is_empty() && texts.is_empty() {
            return Ok(None);
        }
        terms.sort_by(|a, b| a.spelled.cmp(&b.spelled));
        terms.dedup_by(|a, b| a.spelled == b.spelled);
        texts.sort();
        texts.dedup();
        let mut canonical = String::new();
        for (key, value) in terms
            .iter()
            .map(|t| ("where", t.spelled.as_str()))
            .chain(texts.iter().map(|q| ("q", q.as_str())))
        {
            if !canonical.is_empty() {
                canonical.push('&');
            }
            canonical.push_str(key);
            canonical.push('=');
            encode(value, &mut canonical);
        }
        Ok(Some(Filter {
            terms,
            texts: texts
                .iter()
                .map(|q| Finder::new(q.as_bytes()).into_owned())
                .collect(),
            canonical,
        }))
    }

    /// Hashes of the tokens every matching line holds (`archive::summary`): a member whose summary lacks one
    /// cannot hold a match. Numbers and `!=` need none; `q=` needs the tokens inside its text.
    pub fn tokens(&self) -> Vec<u64> {
        let mut out = Vec::new();
        for t in &self.terms {
            if matches!(t.op, Op::Ne(_)) {
                continue;
            }
            for name in &t.path {
                out.extend(summary::token_hashes(name.as_bytes(), true));
            }
            match &t.op {
                Op::Eq(Value::Str(s)) => out.extend(summary::token_hashes(s.as_bytes(), true)),
                Op::Eq(v @ (Value::Bool(_) | Value::Null)) => {
                    out.extend(summary::token_hashes(v.json().as_bytes(), true));
                }
                _ => {}
            }
        }
        for q in &self.texts {
            out.extend(summary::token_hashes(q.needle(), false));
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// The filter as a query string (`where=...&q=...`), spelled the one way links spell it.
    pub fn canonical(&self) -> &str {
        &self.canonical
    }

    /// Whether a stored line (one JSON object, valid UTF-8) satisfies every term.
    pub fn matches(&self, line: &[u8]) -> bool {
        if !self.texts.iter().all(|f| f.find(line).is_some()) {
            return false;
        }
        let plain = memchr::memchr(b'\\', line).is_none();
        if plain
            && !self
                .terms
                .iter()
                .all(|t| t.needles.iter().all(|n| n.find(line).is_some()))
        {
            return false;
        }
        self.terms.iter().all(|t| t.holds(line))
    }
}

fn check_size(key: &str, raw: &str) -> Result<(), String> {
    if raw.len() > MAX_TERM_BYTES {
        return Err(format!(
            "{key}= of {} bytes is longer than {MAX_TERM_BYTES}",
            raw.len()
        ));
    }
    Ok(())
}

/// Characters that end a field name unless escaped with `\`.
const OPERATOR_CHARS: &[char] = &[':', '=', '!', '<', '>', '?'];

impl Term {
    fn parse(raw: &str) -> Result<Term, String> {
        let mut field = String::new();
        let mut chars = raw.char_indices();
        let mut at = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, escaped)) => field.push(escaped),
                    None => return Err("ends in a lone \\".to_string()),
                },
                c if OPERATOR_CHARS.contains(&c) => {
                    at = Some(i);
                    break;
                }
                c => field.push(c),
            }
        }
        let Some(at) = at else {
            return Err(
                "has no operator: use field:value, !=, <, <=, >, >= or field? (present)"
                    .to_string(),
            );
        };
        if field.is_empty() {
            return Err("names no field before its operator".to_string());
        }
        let path: Vec<String> = field.split('.').map(str::to_string).collect();
        if path.iter().any(String::is_empty) {
            return Err(format!("field {field:?} has an empty name between dots"));
        }
        let rest = &raw[at..];
        let (op, value) = ["!=", "<=", ">=", ":", "=", "<", ">", "?"]
            .iter()
            .find_map(|op| rest.strip_prefix(op).map(|v| (*op, v)))
            .ok_or_else(|| format!("{:?} is not an operator", &rest[..1]))?;
        let op = match op {
            "?" if value.is_empty() => Op::Exists,
            "?" => {
                return Err(format!("\"?\" (present) takes no value, found {value:?}"));
            }
            ":" | "=" => Op::Eq(Value::parse(value)?),
            "!=" => Op::Ne(Value::parse(value)?),
            cmp => {
                let cmp = match cmp {
                    "<" => Cmp::Lt,
                    "<=" => Cmp::Le,
                    ">" => Cmp::Gt,
                    _ => Cmp::Ge,
                };
                Op::Cmp(cmp, Bound::parse(cmp_str(cmp), value)?)
            }
        };
        let mut spelled = String::new();
        for (i, name) in path.iter().enumerate() {
            if i > 0 {
                spelled.push('.');
            }
            for c in name.chars() {
                if c == '\\' || OPERATOR_CHARS.contains(&c) {
                    spelled.push('\\');
                }
                spelled.push(c);
            }
        }
        let mut needles = Vec::new();
        match &op {
            Op::Ne(_) => {}
            op => {
                let last = path.last().map_or("", String::as_str);
                needles.push(format!("{last}\""));
                if let Op::Eq(v) = op
                    && !matches!(v, Value::Num(_))
                {
                    needles.push(v.json());
                }
            }
        }
        match &op {
            Op::Eq(v) => write!(spelled, ":{}", v.spelled()),
            Op::Ne(v) => write!(spelled, "!={}", v.spelled()),
            Op::Cmp(c, b) => write!(spelled, "{}{}", cmp_str(*c), b.spelled()),
            Op::Exists => write!(spelled, "?"),
        }
        .map_err(|e| e.to_string())?;
        Ok(Term {
            path,
            op,
            needles: needles
                .iter()
                .map(|n| Finder::new(n.as_bytes()).into_owned())
                .collect(),
            spelled,
        })
    }

    fn holds(&self, line: &[u8]) -> bool {
        let found = lookup(line, &self.path);
        match &self.op {
            Op::Exists => found.is_some(),
            Op::Eq(v) => found.is_some_and(|raw| any(raw, &|r| v.equals(r))),
            Op::Ne(v) => !found.is_some_and(|raw| any(raw, &|r| v.equals(r))),
            Op::Cmp(c, b) => found.is_some_and(|raw| any(raw, &|r| b.compare(*c, r))),
        }
    }
}

fn cmp_str(c: Cmp) -> &'static str {
    match c {
        Cmp::Lt => "<",
        Cmp::Le => "<=",
        Cmp::Gt => ">",
        Cmp::Ge => ">=",
    }
}

/// Whether `test` holds for the value, or for any element of it when it is an array.
fn any(raw: &RawValue, test: &dyn Fn(&RawValue) -> bool) -> bool {
    if raw.get().starts_with('[') {
        serde_json::from_str::<Vec<&RawValue>>(raw.get())
            .is_ok_and(|items| items.iter().any(|r| test(r)))
    } else {
        test(raw)
    }
}

/// `-12`, `3.5`, `1e3`: JSON's number grammar, a leading `+` or `.` refused so that a value means one thing.
fn number(s: &str) -> Option<f64> {
    let b = s.as_bytes();
    let digits = b.strip_prefix(b"-").unwrap_or(b);
    if !digits.first().is_some_and(u8::is_ascii_digit) {
        return None;
    }
    let valid = s
        .bytes()
        .all(|c| c.is_ascii_digit() || matches!(c, b'-' | b'+' | b'.' | b'e' | b'E'));
    if !valid {
        return None;
    }
    serde_json::from_str::<f64>(s)
        .ok()
        .filter(|n| n.is_finite())
}

/// A number as canonical spellings write it: the shortest form that reads back the same, `-0` as `0`.
fn spell_number(n: f64) -> String {
    if n == 0.0 {
        "0".to_string()
    } else {
        n.to_string()
    }
}

impl Value {
    fn parse(raw: &str) -> Result<Value, String> {
        if raw.is_empty() {
            return Err("has no value; write \"\" for the empty string".to_string());
        }
        if raw.starts_with('"') {
            return serde_json::from_str::<String>(raw)
                .map(Value::Str)
                .map_err(|_| {
                    format!("{raw} is not a JSON string (quoted values are JSON strings)")
                });
        }
        Ok(match raw {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            "null" => Value::Null,
            _ => number(raw).map_or_else(|| Value::Str(raw.to_string()), Value::Num),
        })
    }

    /// The value as JSON, as a line without escapes holds it.
    fn json(&self) -> String {
        match self {
            Value::Str(s) => serde_json::Value::from(s.as_str()).to_string(),
            Value::Num(n) => spell_number(*n),
            Value::Bool(b) => b.to_string(),
            Value::Null => "null".to_string(),
        }
    }

    /// Bare when it reads back as the same string, quoted otherwise.
    fn spelled(&self) -> String {
        match self {
            Value::Str(s) => match Value::parse(s) {
                Ok(Value::Str(same))
                    if same == *s
                        && !s.starts_with(char::is_whitespace)
                        && !s.ends_with(char::is_whitespace) =>
                {
                    s.clone()
                }
                _ => self.json(),
            },
            other => other.json(),
        }
    }

    fn equals(&self, raw: &RawValue) -> bool {
        let text = raw.get();
        match self {
            Value::Str(s) => string(raw).is_some_and(|v| v == *s),
            Value::Num(n) => number(text).is_some_and(|v| v == *n),
            Value::Bool(b) => text == if *b { "true" } else { "false" },
            Value::Null => text == "null",
        }
    }
}

/// A JSON string's text, borrowed when it has no escapes.
fn string(raw: &RawValue) -> Option<std::borrow::Cow<'_, str>> {
    let text = raw.get();
    let inner = text.strip_prefix('"')?.strip_suffix('"')?;
    if inner.contains('\\') {
        serde_json::from_str::<String>(text).ok().map(Into::into)
    } else {
        Some(inner.into())
    }
}

impl Bound {
    fn parse(op: &str, raw: &str) -> Result<Bound, String> {
        if let Some(n) = number(raw) {
            return Ok(Bound::Num(n));
        }
        let unquoted = serde_json::from_str::<String>(raw).unwrap_or_else(|_| raw.to_string());
        time::parse_rfc3339(&unquoted)
            .map(Bound::Time)
            .ok_or_else(|| {
                format!("{op:?} compares numbers and RFC 3339 times; {raw:?} is neither")
            })
    }

    fn spelled(&self) -> String {
        match self {
            Bound::Num(n) => spell_number(*n),
            Bound::Time(t) => time::format_rfc3339(*t),
        }
    }

    fn compare(&self, cmp: Cmp, raw: &RawValue) -> bool {
        let ordering = match self {
            Bound::Num(n) => number(raw.get()).and_then(|v| v.partial_cmp(n)),
            Bound::Time(t) => string(raw)
                .and_then(|s| time::parse_rfc3339(&s))
                .map(|v| v.cmp(t)),
        };
        let Some(o) = ordering else {
            return false;
        };
        match cmp {
            Cmp::Lt => o.is_lt(),
            Cmp::Le => o.is_le(),
            Cmp::Gt => o.is_gt(),
            Cmp::Ge => o.is_ge(),
        }
    }
}

/// Percent-encodes a query value: everything but RFC 3986's unreserved characters and `:!=?,/@$*()'`, which
/// a query holds as they are and which make filters readable.
fn encode(s: &str, out: &mut String) {
    for b in s.bytes() {
        if b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b':'
                    | b'!'
                    | b'='
                    | b'?'
                    | b','
                    | b'/'
                    | b'@'
                    | b'$'
                    | b'*'
                    | b'('
                    | b')'
                    | b'\''
            )
        {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
}

/// The value at a dotted path in a JSON object. A key matches the next name of the path or several of them
/// joined by dots (`http.status` finds `{"http":{"status":..}}` and `{"http.status":..}`); the first found wins.
pub fn lookup<'a>(json: &'a [u8], path: &[String]) -> Option<&'a RawValue> {
    let mut de = serde_json::Deserializer::from_slice(json);
    let found = de::Deserializer::deserialize_map(&mut de, Find { path }).ok()??;
    match found {
        Found::Here(raw) => Some(raw),
        Found::Below(raw, used) => lookup(raw.get().as_bytes(), &path[used..]),
    }
}

enum Found<'a> {
    Here(&'a RawValue),
    /// An object to look into for the rest of the path, after `usize` names.
    Below(&'a RawValue, usize),
}

struct Find<'p> {
    path: &'p [String],
}

impl<'de> Visitor<'de> for Find<'_> {
    type Value = Option<Found<'de>>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = None;
        while let Some(used) = map.next_key_seed(KeyOf { path: self.path })? {
            match used {
                Some(n) if found.is_none() => {
                    let raw: &'de RawValue = map.next_value()?;
                    found = Some(if n == self.path.len() {
                        Found::Here(raw)
                    } else if raw.get().starts_with('{') {
                        Found::Below(raw, n)
                    } else {
                        continue;
                    });
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(found)
    }
}

/// Reads a key and says how many names of the path it spells (`None`: it is not on the path).
struct KeyOf<'p> {
    path: &'p [String],
}

impl<'de> DeserializeSeed<'de> for KeyOf<'_> {
    type Value = Option<usize>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl Visitor<'_> for KeyOf<'_> {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a key")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<Self::Value, E> {
        let mut rest = key;
        for (i, name) in self.path.iter().enumerate() {
            let Some(after) = rest.strip_prefix(name.as_str()) else {
                return Ok(None);
            };
            if after.is_empty() {
                return Ok(Some(i + 1));
            }
            let Some(after) = after.strip_prefix('.') else {
                return Ok(None);
            };
            rest = after;
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(wheres: &[&str], qs: &[&str]) -> Filter {
        Filter::parse(wheres.iter().copied(), qs.iter().copied())
            .unwrap()
            .unwrap()
    }

    fn matches(term: &str, line: &str) -> bool {
        filter(&[term], &[]).matches(line.as_bytes())
    }

    #[test]
    fn equality_on_strings_numbers_literals_and_arrays() {
        let line = r#"{"ts":"2024-01-01T00:00:00Z","level":"error","status":500,"ok":false,"n":null,"tags":["a","b"]}"#;
        assert!(matches("level:error", line));
        assert!(matches("level=error", line));
        assert!(matches("level:\"error\"", line));
        assert!(!matches("level:err", line));
        assert!(matches("status:500", line));
        assert!(matches("status:5e2", line));
        assert!(matches("status:500.0", line));
        // A quoted number is a string: the field holds a number.
        assert!(!matches("status:\"500\"", line));
        assert!(matches("ok:false", line));
        assert!(matches("n:null", line));
        assert!(matches("tags:b", line));
        assert!(!matches("tags:c", line));
        assert!(!matches("missing:x", line));
    }

    #[test]
    fn not_equal_holds_for_a_missing_field() {
        let line = r#"{"ts":"2024-01-01T00:00:00Z","level":"info"}"#;
        assert!(matches("level!=error", line));
        assert!(!matches("level!=info", line));
        assert!(matches("host!=web1", line));
    }

    #[test]
    fn comparisons_on_numbers_and_times() {
        let line = r#"{"ts":"2024-01-01T00:00:00Z","status":503,"at":"2024-05-01T10:00:00+02:00","s":"x"}"#;
        assert!(matches("status>=500", line));
        assert!(matches("status>500", line));
        assert!(!matches("status<500", line));
        assert!(matches("status<=503", line));
        assert!(!matches("status<503", line));
        assert!(matches("at>2024-05-01T07:59:59Z", line));
        assert!(!matches("at>2024-05-01T08:00:00Z", line));
        assert!(matches("at>=2024-05-01T08:00:00Z", line));
        // Unlike kinds never compare.
        assert!(!matches("s>1", line));
        assert!(!matches("status>2020-01-01T00:00:00Z", line));
    }

    #[test]
    fn nested_paths_and_dotted_keys() {
        let nested = r#"{"ts":"2024-01-01T00:00:00Z","http":{"status":404,"req":{"m":"GET"}}}"#;
        let dotted = r#"{"ts":"2024-01-01T00:00:00Z","http.status":404,"http":{"req.m":"GET"}}"#;
        for line in [nested, dotted] {
            assert!(matches("http.status:404", line), "{line}");
            assert!(matches("http.req.m:GET", line), "{line}");
            assert!(matches("http.status?", line), "{line}");
            assert!(!matches("http.nope?", line), "{line}");
        }
        assert!(matches("http?", nested));
        assert!(!matches("status?", nested));
    }

    #[test]
    fn escapes_in_lines_do_not_hide_values() {
        // `\u0065rror` is "error": the byte check must not refuse the line.
        let line = r#"{"ts":"2024-01-01T00:00:00Z","level":"\u0065rror","m":"a \"quoted\" b"}"#;
        assert!(matches("level:error", line));
        assert!(matches(r#"m:"a \"quoted\" b""#, line));
    }

    #[test]
    fn substrings_are_of_the_line_as_stored() {
        let f = filter(&[], &["refused"]);
        assert!(f.matches(br#"{"ts":"2024-01-01T00:00:00Z","msg":"connection refused"}"#));
        assert!(!f.matches(br#"{"ts":"2024-01-01T00:00:00Z","msg":"ok"}"#));
        let both = filter(&["level:error"], &["refused"]);
        assert!(!both.matches(br#"{"ts":"2024-01-01T00:00:00Z","level":"info","msg":"refused"}"#));
    }

    #[test]
    fn one_canonical_spelling() {
        let a = filter(
            &["status>=5e2", "level=error", "level:error"],
            &["b c", "a"],
        );
        let b = filter(&["level:\"error\"", "status>=500.0"], &["a", "b c"]);
        assert_eq!(a.canonical(), b.canonical());
        assert_eq!(
            a.canonical(),
            "where=level:error&where=status%3E=500&q=a&q=b%20c"
        );
        // Strings that would read as something else stay quoted; others go bare.
        assert_eq!(filter(&["x:\"500\""], &[]).canonical(), "where=x:%22500%22");
        assert_eq!(
            filter(&["x:\"true\""], &[]).canonical(),
            "where=x:%22true%22"
        );
        assert_eq!(filter(&["x:\" a\""], &[]).canonical(), "where=x:%22%20a%22");
        assert_eq!(filter(&["x:-0"], &[]).canonical(), "where=x:0");
        assert_eq!(
            filter(&["t<2024-05-01T10:00:00+02:00"], &[]).canonical(),
            "where=t%3C2024-05-01T08:00:00.000Z"
        );
        // Operator characters in names are escaped.
        assert_eq!(
            filter(&[r"k8s\:pod:x"], &[]).canonical(),
            "where=k8s%5C:pod:x"
        );
        assert!(matches(r"k8s\:pod:x", r#"{"k8s:pod":"x"}"#));
    }

    #[test]
    fn every_canonical_spelling_reads_back_as_itself() {
        for terms in [
            vec!["a:b", "c!=1", "d?"],
            vec!["x.y<=2024-01-01T00:00:00Z", "msg:\"two words\"", "n>-1.5"],
            vec![r"we\?ird:v", "e:\"\""],
        ] {
            let f = filter(&terms, &["q&x"]);
            let pairs: Vec<(String, String)> = serde_urlencoded::from_str(f.canonical()).unwrap();
            let wheres = pairs
                .iter()
                .filter(|(k, _)| k == "where")
                .map(|(_, v)| v.as_str());
            let qs = pairs
                .iter()
                .filter(|(k, _)| k == "q")
                .map(|(_, v)| v.as_str());
            let again = Filter::parse(wheres, qs).unwrap().unwrap();
            assert_eq!(again.canonical(), f.canonical(), "{terms:?}");
        }
    }

    #[test]
    fn bad_terms_are_named() {
        let err = |w: &str| Filter::parse([w], []).unwrap_err();
        assert!(err("level").contains("no operator"), "{}", err("level"));
        assert!(err(":x").contains("no field"));
        assert!(err("a..b:x").contains("empty name"));
        assert!(err("a:").contains("no value"));
        assert!(err("a>abc").contains("neither"));
        assert!(err("a?x").contains("takes no value"));
        assert!(err("a!x").contains("not an operator"));
        assert!(err("a:\"x").contains("not a JSON string"));
        assert!(err("a:\"x").starts_with("where=\"a:\\\"x\""));
        assert!(Filter::parse([], [""]).unwrap_err().contains("empty"));
        let many: Vec<String> = (0..9).map(|i| format!("f{i}?")).collect();
        assert!(
            Filter::parse(many.iter().map(String::as_str), [])
                .unwrap_err()
                .contains("at most")
        );
        assert!(Filter::parse([], []).unwrap().is_none());
    }
}
