//! Which node writes, when several share one replicated log (`--log nats://`): the one holding the log's
//! lease, a key in a JetStream key-value bucket (`{STREAM}-lease`) whose values expire `--lease-ms` after they
//! were written, by the servers' clock. The holder writes it again every third of that; a node that finds the
//! key gone (never written, expired, or let go by a holder that stopped) creates it, and only one create can
//! win. The others stand by and send every request to the holder (`server::run_node`).
//!
//! A lease is not what keeps two writers apart: the log's fence is (`ingest::nats`). A holder paused past its
//! lease (a stop signal, a long pause) and then resumed finds its renewal refused and stops at once; whatever
//! it still tried before that was refused by the stream, fenced by the next holder.

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::ingest::nats::NatsConfig;

const KEY: &str = "writer";

/// Who holds the lease: the node's name and where it answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub node: String,
    pub url: String,
}

/// Why a renewal failed.
#[derive(Debug)]
pub enum Renewal {
    /// Another node holds the lease now (or it expired and was let go).
    Lost,
    /// The servers did not answer: the lease may still be this node's until it expires.
    Unanswered(String),
}

/// This node's view of the lease.
pub struct Lease {
    kv: kv::Store,
    pub me: Holder,
    value: Bytes,
    pub ttl: Duration,
}

impl Lease {
    /// Connects and finds (or makes) the lease's bucket, with as many replicas as the log asks for.
    pub async fn open(cfg: &NatsConfig, me: Holder, ttl: Duration) -> Result<Lease, String> {
        let client = crate::ingest::nats::connect_client(cfg, &me.node).await?;
        let js = jetstream::new(client);
        let config = kv::Config {
            bucket: format!("{}-lease", cfg.stream),
            history: 1,
            max_age: ttl,
            num_replicas: cfg.replicas,
            storage: jetstream::stream::StorageType::File,
            ..Default::default()
        };
        let kv = crate::ingest::nats::patiently("the lease's bucket", || {
            js.create_or_update_key_value(config.clone())
        })
        .await
        .map_err(|e| format!("the lease's bucket: {e}"))?;
        let value = Bytes::from(serde_json::to_vec(&me).map_err(|e| e.to_string())?);
        Ok(Lease { kv, me, value, ttl })
    }

    /// Who holds the lease now, as the servers say (`None`: nobody, or they cannot say).
    pub async fn holder(&self) -> Option<Holder> {
        let entry = self.kv.entry(KEY).await.ok()??;
        if entry.operation != kv::Operation::Put {
            return None;
        }
        serde_json::from_slice(&entry.value).ok()
    }

    /// Takes the lease if nobody holds it, or if this node's name holds it (this node before a restart): its
    /// revision.
    pub async fn take(&self) -> Option<u64> {
        if let Ok(revision) = self.kv.create(KEY, self.value.clone()).await {
            return Some(revision);
        }
        let entry = self.kv.entry(KEY).await.ok()??;
        let held: Option<Holder> = serde_json::from_slice(&entry.value).ok();
        if entry.operation == kv::Operation::Put && held.is_some_and(|h| h.node == self.me.node) {
            return self.renew(entry.revision).await.ok();
        }
        None
    }

    /// Writes the lease again, if it is still the revision this node wrote last: the new revision.
    pub async fn renew(&self, revision: u64) -> Result<u64, Renewal> {
        self.kv
            .update(KEY, self.value.clone(), revision)
            .await
            .map_err(|e| match e.kind() {
                kv::UpdateErrorKind::WrongLastRevision => Renewal::Lost,
                _ => Renewal::Unanswered(e.to_string()),
            })
    }

    /// Lets the lease go (a clean stop), so that a standby takes over at once.
    pub async fn release(&self, revision: u64) {
        if let Err(e) = self.kv.delete_expect_revision(KEY, Some(revision)).await {
            tracing::warn!(error = %e, "letting the lease go failed: it expires by itself");
        }
    }
}
