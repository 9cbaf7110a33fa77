//! Weir's native async Kafka client, used by weir-bench and by the tests.
//!
//! The client speaks the Kafka wire protocol, so it talks to Weir and to any
//! Kafka-compatible broker. It runs on the calling thread's executor: every
//! type here is `!Send`, and a program that wants several cores runs one
//! client per executor.
//!
//! - [`Client`] keeps the cluster view (brokers and partition leaders from
//!   Metadata) and one pipelined [`Connection`] per broker, and offers the
//!   admin calls (CreateTopics, DeleteTopics, ListOffsets).
//! - [`Producer`] batches records per partition (`batch.size`, `linger.ms`),
//!   builds Kafka v2 record batches itself, compresses them, and sends each
//!   batch to its partition's leader with acks 0, 1 or -1.
//! - [`Consumer`] fetches assigned partitions from their leaders, keeping one
//!   fetch in flight per broker, and decodes the batches.
//! - [`GroupConsumer`] gets its partitions from a consumer group coordinator
//!   (JoinGroup/SyncGroup with range assignment) and commits offsets.
//!
//! Requests always go to the partition's leader as Metadata names it. Weir
//! advertises each shard as its own broker, so this routes every produce and
//! fetch straight to the core that owns the partition.
//!
//! Errors carry the Kafka error code where there is one ([`ClientError::kafka_code`]).

pub mod batch;
mod cluster;
pub mod connection;
mod consumer;
mod error;
mod group;
mod producer;
mod sync;

pub use batch::{BatchBuilder, Compression, RawBatch, RecordHeader};
pub use cluster::{Client, ClientConfig, NewTopic, OffsetSpec, PartitionMetadata, TopicMetadata};
pub use connection::{Connection, ConnectionConfig};
pub use consumer::{Consumer, ConsumerConfig, ConsumerRecord, FetchedPartition, PollOutcome, StartOffset};
pub use error::{kafka_error_name, ClientError};
pub use group::{range_assign, GroupConfig, GroupConsumer};
pub use producer::{
    murmur2, partition_for_key, Acks, BatchReport, DeliveryFuture, Producer, ProducerConfig, ProducerRecord,
    RecordMetadata,
};
