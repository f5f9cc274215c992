//! Integration tests: the real server on a loopback port, spoken to over HTTP, its files checked with the
//! system's own gzip tools.

mod crash;
mod ingest;
mod recovery;
mod support;
