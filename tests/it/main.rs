//! Integration tests: the real server on a loopback port, spoken to over HTTP, its files checked with the
//! system's own gzip tools.

mod browser;
mod bulk;
mod cache;
mod contract;
mod crash;
mod damage;
mod disk;
mod export;
mod filters;
mod hostile;
mod ingest;
mod live;
mod metrics;
mod nats;
mod natsd;
mod objects;
mod pages;
mod recovery;
mod replica;
mod retention;
mod shippers;
mod stores;
mod supervision;
mod support;
mod watermark;
