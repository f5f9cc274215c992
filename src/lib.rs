//! hourglass: time series of JSON events in hourly gzip archives, served as time-sliced pages that HTTP caches
//! can keep forever. See ARCHITECTURE.md for the map.

pub mod api;
pub mod archive;
pub mod bulk;
pub mod cli;
pub mod config;
pub mod durable;
pub mod filter;
pub mod ingest;
pub mod lease;
pub mod metrics;
pub mod server;
pub mod store;
pub mod time;

#[cfg(test)]
mod fuzz;
