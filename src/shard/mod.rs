//! Shards: one pinned executor per core, each owning a set of partitions.
//!
//! A [`Shard`] is the per-core state every task of that core shares through an
//! `Rc`: its partition logs, its copy of the metadata, and the senders of the
//! cross-shard mesh. Only the owner shard touches a partition's log; a request
//! for a partition owned elsewhere travels as a [`ShardMessage`] over the mesh
//! and its reply comes back on a oneshot channel. Nothing here takes a lock.

mod messages;
mod partition_ops;
mod startup;

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use futures::channel::oneshot;

use crate::config::{BrokerConfig, ListenerMode};
use crate::group::{GroupCoordinator, ProducerIdAllocator};
use crate::metadata::{self, MetadataView};
use crate::runtime::{self, MeshSenders};
use crate::storage::PartitionLog;

pub use messages::{FetchOutcome, ListOffsetOutcome, ProduceOutcome, ShardMessage, TopicCreateSpec, TopicResult};
pub use startup::{run_broker, BrokerHandle};

/// Advertised address of one shard's listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerAddress {
    pub node_id: i32,
    pub host: String,
    pub port: u16,
}

/// Per-core broker state.
pub struct Shard {
    pub id: usize,
    pub count: usize,
    pub config: Arc<BrokerConfig>,
    /// Advertised brokers: one per shard indexed by shard id, or a single
    /// one when all shards share a listener.
    pub brokers: Vec<BrokerAddress>,
    pub metadata: RefCell<MetadataView>,
    /// Logs of the partitions this shard owns: topic -> partition -> log.
    partitions: RefCell<HashMap<String, HashMap<i32, PartitionLog>>>,
    senders: MeshSenders<ShardMessage>,
    /// Coordinator of the consumer groups whose ids hash to this shard.
    pub groups: GroupCoordinator,
    /// Producer id allocator; only shard 0 has one.
    pub producer_ids: Option<ProducerIdAllocator>,
    /// Budget of request bytes held in memory by this shard's connections.
    pub request_bytes: Rc<runtime::Semaphore>,
}

impl Shard {
    /// Returns the shard that owns `partition` of `topic`.
    pub fn owner_of(&self, topic: &str, partition: i32) -> usize {
        metadata::owner_shard(topic, partition, self.count)
    }

    /// Returns the broker id that Metadata reports as a partition's leader: its owner
    /// shard, or broker 0 when all shards share one listener.
    pub fn leader_node(&self, topic: &str, partition: i32) -> i32 {
        match self.config.listener_mode {
            ListenerMode::PerShard => self.owner_of(topic, partition) as i32,
            ListenerMode::Shared => 0,
        }
    }

    /// Returns the advertised broker that coordinates `group_id`.
    pub fn coordinator_broker(&self, group_id: &str) -> &BrokerAddress {
        match self.config.listener_mode {
            ListenerMode::PerShard => &self.brokers[metadata::group_shard(group_id, self.count)],
            ListenerMode::Shared => &self.brokers[0],
        }
    }

    /// Returns the log of a partition this shard owns.
    pub fn local_log(&self, topic: &str, partition: i32) -> Option<PartitionLog> {
        self.partitions.borrow().get(topic)?.get(&partition).cloned()
    }

    /// Sends a message to `shard` (or handles it here when it is this shard)
    /// and waits for the reply. `build` receives the reply sender.
    pub async fn call<R>(
        self: &Rc<Self>,
        shard: usize,
        build: impl FnOnce(oneshot::Sender<R>) -> ShardMessage,
    ) -> Option<R> {
        let (reply, receiver) = oneshot::channel();
        let message = build(reply);
        if shard == self.id {
            // Boxed because handling a message may call other shards, itself included.
            let handling: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + '_>> =
                Box::pin(self.handle(message));
            handling.await;
        } else {
            let kind = message.kind();
            if let Err(err) = self.senders.send_to(shard, message).await {
                tracing::error!(target: "weir::shard", shard = self.id, peer = shard, kind, error = %err,
                    "failed to send to a peer shard; it has stopped");
                return None;
            }
        }
        receiver.await.ok()
    }
}
