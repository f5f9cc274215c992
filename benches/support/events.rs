//! Log-like event text shared by the codec bench and the load generator: words from a small vocabulary and
//! numbers, so that payloads compress about as well as real ones (3.5-4x), not like padding.

use rand::Rng;

const WORDS: &[&str] = &[
    "request",
    "served",
    "user",
    "session",
    "timeout",
    "retry",
    "cache",
    "miss",
    "hit",
    "upstream",
    "latency",
    "error",
    "warning",
    "connection",
    "closed",
    "opened",
    "GET",
    "POST",
    "/api/v1/items",
    "/login",
    "status",
    "bytes",
    "worker",
    "queue",
    "depth",
    "disk",
    "read",
    "write",
    "ok",
    "failed",
];

/// Exactly `len` bytes of log-like text (no quotes or backslashes: safe inside a JSON string).
pub fn message(rng: &mut impl Rng, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 16);
    while out.len() < len {
        if rng.random_bool(0.3) {
            out.extend_from_slice(rng.random_range(0..100_000u32).to_string().as_bytes());
        } else {
            out.extend_from_slice(WORDS[rng.random_range(0..WORDS.len())].as_bytes());
        }
        out.push(b' ');
    }
    out.truncate(len);
    out
}
