//! Messages exchanged between shards and the outcomes they return.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use futures::channel::oneshot;

use crate::metadata::MetadataChange;

/// A request from one shard to another. Every variant carries the sender its
/// reply goes back on.
pub enum ShardMessage {
    Produce {
        topic: String,
        partition: i32,
        records: Bytes,
        acks: i16,
        reply: oneshot::Sender<ProduceOutcome>,
    },
    Fetch {
        topic: String,
        partition: i32,
        offset: i64,
        max_bytes: usize,
        reply: oneshot::Sender<FetchOutcome>,
    },
    /// Replies once the partition's high watermark passes `offset` or `wait` passed.
    WaitForData {
        topic: String,
        partition: i32,
        offset: i64,
        wait: Duration,
        reply: oneshot::Sender<()>,
    },
    ListOffsets {
        topic: String,
        partition: i32,
        timestamp: i64,
        reply: oneshot::Sender<ListOffsetOutcome>,
    },
    /// To shard 0: create topics.
    CreateTopics {
        topics: Vec<TopicCreateSpec>,
        validate_only: bool,
        reply: oneshot::Sender<Vec<TopicResult>>,
    },
    /// To shard 0: delete topics by name.
    DeleteTopics {
        names: Vec<String>,
        reply: oneshot::Sender<Vec<TopicResult>>,
    },
    /// To shard 0: grow topics' partition counts.
    CreatePartitions {
        topics: Vec<(String, i32)>,
        validate_only: bool,
        reply: oneshot::Sender<Vec<TopicResult>>,
    },
    /// From shard 0 to every shard: apply committed metadata changes (open or
    /// delete the partitions this shard owns), then reply.
    ApplyMetadata {
        changes: Vec<MetadataChange>,
        reply: oneshot::Sender<()>,
    },
    /// A consumer group request for a group this shard coordinates,
    /// forwarded by a shard that shares the listener.
    GroupRequest {
        body: Box<kafka_protocol::messages::RequestKind>,
        version: i16,
        client: crate::group::ClientInfo,
        reply: oneshot::Sender<Option<kafka_protocol::messages::ResponseKind>>,
    },
    /// To shard 0: hand out a producer id.
    InitProducerId {
        request: kafka_protocol::messages::InitProducerIdRequest,
        version: i16,
        reply: oneshot::Sender<kafka_protocol::messages::InitProducerIdResponse>,
    },
    /// Close every log and reply; the shard stops serving afterwards.
    Shutdown {
        reply: oneshot::Sender<()>,
    },
}

impl ShardMessage {
    /// Short name for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            ShardMessage::Produce { .. } => "produce",
            ShardMessage::Fetch { .. } => "fetch",
            ShardMessage::WaitForData { .. } => "wait_for_data",
            ShardMessage::ListOffsets { .. } => "list_offsets",
            ShardMessage::CreateTopics { .. } => "create_topics",
            ShardMessage::DeleteTopics { .. } => "delete_topics",
            ShardMessage::CreatePartitions { .. } => "create_partitions",
            ShardMessage::ApplyMetadata { .. } => "apply_metadata",
            ShardMessage::InitProducerId { .. } => "init_producer_id",
            ShardMessage::GroupRequest { .. } => "group_request",
            ShardMessage::Shutdown { .. } => "shutdown",
        }
    }
}

/// Result of producing to one partition.
#[derive(Debug, Clone, Default)]
pub struct ProduceOutcome {
    pub error_code: i16,
    pub error_message: Option<String>,
    pub base_offset: i64,
    pub log_append_time_ms: i64,
    pub log_start_offset: i64,
}

/// Result of reading one partition.
#[derive(Debug, Clone, Default)]
pub struct FetchOutcome {
    pub error_code: i16,
    pub high_watermark: i64,
    pub log_start_offset: i64,
    pub batches: Vec<Bytes>,
    pub total_bytes: usize,
}

/// Result of a ListOffsets lookup on one partition.
#[derive(Debug, Clone, Default)]
pub struct ListOffsetOutcome {
    pub error_code: i16,
    pub offset: i64,
    pub timestamp: i64,
}

/// A topic to create, already decoded from CreateTopics.
#[derive(Debug, Clone)]
pub struct TopicCreateSpec {
    pub name: String,
    /// -1: use num.partitions.
    pub partition_count: i32,
    pub replication_factor: i16,
    pub configs: BTreeMap<String, String>,
}

/// Per-topic result of an admin change.
#[derive(Debug, Clone, Default)]
pub struct TopicResult {
    pub name: String,
    pub error_code: i16,
    pub error_message: Option<String>,
    pub topic_id: uuid::Uuid,
    pub partition_count: i32,
    pub configs: BTreeMap<String, String>,
}
