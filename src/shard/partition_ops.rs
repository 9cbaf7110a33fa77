//! Handling of each [`ShardMessage`]: reads and writes of the partitions a
//! shard owns, and, on shard 0, metadata changes.

use std::collections::HashMap;
use std::rc::Rc;
use std::time::{SystemTime, UNIX_EPOCH};

use kafka_protocol::error::ResponseError;

use super::messages::{FetchOutcome, ListOffsetOutcome, ProduceOutcome, ShardMessage, TopicCreateSpec, TopicResult};
use super::Shard;
use crate::config::validate_topic_config;
use crate::metadata::{self, MetadataChange, TopicInfo};
use crate::runtime;
use crate::storage::{batch, BatchError, BatchHeader, PartitionLog, StorageError};

/// Most partitions a topic may have; bounds the work one CreateTopics can ask for.
pub const PARTITIONS_PER_TOPIC_MAX: i32 = 10_000;

/// Unwritten bytes a partition may queue before produce requests wait for its writer.
pub const PARTITION_QUEUE_MAX_BYTES: usize = 16 * 1024 * 1024;

/// ListOffsets special timestamps (KIP-734, KIP-1005).
const LIST_OFFSETS_LATEST: i64 = -1;
const LIST_OFFSETS_EARLIEST: i64 = -2;
const LIST_OFFSETS_MAX_TIMESTAMP: i64 = -3;
const LIST_OFFSETS_EARLIEST_LOCAL: i64 = -4;
const LIST_OFFSETS_LATEST_TIERED: i64 = -5;

/// Finds the first record at or after the batch whose max timestamp reaches
/// `timestamp` for which `accept(record timestamp)` holds, decompressing that
/// one batch. Returns its offset and timestamp.
async fn record_at_timestamp(
    log: &PartitionLog,
    timestamp: i64,
    accept: impl Fn(i64) -> bool,
) -> Result<Option<(i64, i64)>, StorageError> {
    let Some((batch_offset, _)) = log.offset_for_timestamp(timestamp).await? else {
        return Ok(None);
    };
    let read = log.read(batch_offset, 1).await?;
    for stored in read.batches {
        let header = BatchHeader::parse(&stored)?;
        let log_append_time = header.attributes & TIMESTAMP_TYPE_LOG_APPEND_TIME != 0;
        let mut bytes = stored.clone();
        let records = match kafka_protocol::records::RecordBatchDecoder::decode(&mut bytes) {
            Ok(set) => set.records,
            Err(err) => {
                return Err(StorageError::Batch(BatchError::Corrupt(format!(
                    "stored batch at offset {} does not decode: {err}",
                    header.base_offset
                ))))
            }
        };
        for record in records {
            let record_timestamp = if log_append_time { header.max_timestamp } else { record.timestamp };
            if accept(record_timestamp) {
                return Ok(Some((record.offset, record_timestamp)));
            }
        }
    }
    // The batch's max timestamp reached the target, so a record must match;
    // fall back to the batch start if the records disagree with the header.
    Ok(Some((batch_offset, timestamp)))
}

/// Attribute bit of a batch whose timestamps are broker append times.
const TIMESTAMP_TYPE_LOG_APPEND_TIME: i16 = 0x08;

/// Current wall-clock time in milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_millis() as i64)
}

/// Maps a storage error to the Kafka error code a client expects.
pub fn storage_error_code(error: &StorageError) -> i16 {
    match error {
        StorageError::Io { .. } | StorageError::NoSpace { .. } => ResponseError::KafkaStorageError.code(),
        StorageError::OffsetOutOfRange { .. } => ResponseError::OffsetOutOfRange.code(),
        StorageError::Batch(batch_error) => batch_error_code(batch_error),
        StorageError::OutOfOrderSequence { .. } => ResponseError::OutOfOrderSequenceNumber.code(),
        StorageError::ProducerFenced { .. } => ResponseError::InvalidProducerEpoch.code(),
        StorageError::Closed { .. } => ResponseError::NotLeaderOrFollower.code(),
    }
}

/// Maps a batch validation error to its Kafka error code.
pub fn batch_error_code(error: &BatchError) -> i16 {
    match error {
        BatchError::Corrupt(_) => ResponseError::CorruptMessage.code(),
        BatchError::InvalidRecord(_) => ResponseError::InvalidRecord.code(),
        BatchError::TooLarge { .. } => ResponseError::MessageTooLarge.code(),
        BatchError::UnsupportedCompression(_) => ResponseError::UnsupportedCompressionType.code(),
        BatchError::UnsupportedMagic(_) => ResponseError::UnsupportedForMessageFormat.code(),
    }
}

impl Shard {
    /// Handles one message addressed to this shard and sends its reply.
    pub async fn handle(self: &Rc<Self>, message: ShardMessage) {
        match message {
            ShardMessage::Produce { topic, partition, records, acks, reply } => {
                let outcome = self.produce_local(&topic, partition, &records, acks).await;
                let _ = reply.send(outcome);
            }
            ShardMessage::Fetch { topic, partition, offset, max_bytes, reply } => {
                let _ = reply.send(self.fetch_local(&topic, partition, offset, max_bytes).await);
            }
            ShardMessage::WaitForData { topic, partition, offset, wait, reply } => {
                if let Some(log) = self.local_log(&topic, partition) {
                    runtime::timeout(wait, log.wait_for_data(offset)).await;
                }
                let _ = reply.send(());
            }
            ShardMessage::ListOffsets { topic, partition, timestamp, reply } => {
                let _ = reply.send(self.list_offset_local(&topic, partition, timestamp).await);
            }
            ShardMessage::CreateTopics { topics, validate_only, reply } => {
                let _ = reply.send(self.create_topics(topics, validate_only).await);
            }
            ShardMessage::DeleteTopics { names, reply } => {
                let _ = reply.send(self.delete_topics(names).await);
            }
            ShardMessage::CreatePartitions { topics, validate_only, reply } => {
                let _ = reply.send(self.create_partitions(topics, validate_only).await);
            }
            ShardMessage::ApplyMetadata { changes, reply } => {
                self.apply_metadata(&changes).await;
                let _ = reply.send(());
            }
            ShardMessage::GroupRequest { body, version, client, reply } => {
                let _ = reply.send(crate::protocol::handle_forwarded_group_request(self, *body, version, client).await);
            }
            ShardMessage::InitProducerId { request, version, reply } => {
                let response = match &self.producer_ids {
                    Some(allocator) => allocator.init_producer_id(request, version).await,
                    None => kafka_protocol::messages::InitProducerIdResponse::default()
                        .with_error_code(ResponseError::NotCoordinator.code()),
                };
                let _ = reply.send(response);
            }
            ShardMessage::Shutdown { reply } => {
                self.close_all_logs().await;
                let _ = reply.send(());
            }
        }
    }

    async fn produce_local(&self, topic: &str, partition: i32, records: &[u8], acks: i16) -> ProduceOutcome {
        let Some(log) = self.local_log(topic, partition) else {
            return ProduceOutcome {
                error_code: ResponseError::UnknownTopicOrPartition.code(),
                base_offset: -1,
                log_append_time_ms: -1,
                log_start_offset: -1,
                ..Default::default()
            };
        };
        let max_message_bytes = self.max_message_bytes(topic);
        let fail = |code: i16, message: String| ProduceOutcome {
            error_code: code,
            error_message: Some(message),
            base_offset: -1,
            log_append_time_ms: -1,
            log_start_offset: log.log_start_offset(),
        };

        let batches = match batch::validate(records, max_message_bytes) {
            Ok(batches) => batches,
            Err(err) => {
                tracing::debug!(target: "weir::produce", shard = self.id, topic, partition, error = %err, "rejected record batch");
                return fail(batch_error_code(&err), err.to_string());
            }
        };

        // Backpressure: while a partition has more unwritten bytes queued than
        // the limit, wait for the writer before queueing more. This bounds
        // memory for acks=0 producers, who never wait on their own.
        if log.queued_bytes() > PARTITION_QUEUE_MAX_BYTES {
            let queued_end = log.log_end_offset() - 1;
            if let Err(err) = log.wait_written(queued_end).await {
                return fail(storage_error_code(&err), err.to_string());
            }
        }

        let now = now_ms();
        let mut first: Option<crate::storage::AppendInfo> = None;
        let mut last_offset = -1;
        for (range, header) in &batches {
            match log.append(&records[range.clone()], header, now) {
                Ok(info) => {
                    last_offset = info.last_offset;
                    first.get_or_insert(info);
                }
                Err(err) => {
                    tracing::debug!(target: "weir::produce", shard = self.id, topic, partition, error = %err, "append failed");
                    return fail(storage_error_code(&err), err.to_string());
                }
            }
        }
        let first = first.expect("validate returns at least one batch");

        let waited = match acks {
            0 => Ok(()),
            1 => log.wait_written(last_offset).await,
            _ => log.wait_durable(last_offset).await,
        };
        if let Err(err) = waited {
            tracing::error!(target: "weir::produce", shard = self.id, topic, partition, offset = last_offset, error = %err,
                "write of acknowledged batch failed");
            return fail(storage_error_code(&err), err.to_string());
        }

        ProduceOutcome {
            error_code: 0,
            error_message: None,
            base_offset: first.base_offset,
            log_append_time_ms: first.log_append_time_ms,
            log_start_offset: first.log_start_offset,
        }
    }

    async fn fetch_local(&self, topic: &str, partition: i32, offset: i64, max_bytes: usize) -> FetchOutcome {
        let Some(log) = self.local_log(topic, partition) else {
            return FetchOutcome {
                error_code: ResponseError::UnknownTopicOrPartition.code(),
                high_watermark: -1,
                log_start_offset: -1,
                ..Default::default()
            };
        };
        let high_watermark = log.high_watermark();
        let log_start_offset = log.log_start_offset();
        if offset == high_watermark {
            return FetchOutcome { error_code: 0, high_watermark, log_start_offset, ..Default::default() };
        }
        match log.read(offset, max_bytes).await {
            Ok(read) => FetchOutcome {
                error_code: 0,
                high_watermark: log.high_watermark(),
                log_start_offset: log.log_start_offset(),
                batches: read.batches,
                total_bytes: read.total_bytes,
            },
            Err(err) => {
                if !matches!(err, StorageError::OffsetOutOfRange { .. }) {
                    tracing::error!(target: "weir::fetch", shard = self.id, topic, partition, offset, error = %err, "read failed");
                }
                FetchOutcome {
                    error_code: storage_error_code(&err),
                    high_watermark,
                    log_start_offset,
                    ..Default::default()
                }
            }
        }
    }

    async fn list_offset_local(&self, topic: &str, partition: i32, timestamp: i64) -> ListOffsetOutcome {
        let Some(log) = self.local_log(topic, partition) else {
            return ListOffsetOutcome { error_code: ResponseError::UnknownTopicOrPartition.code(), offset: -1, timestamp: -1 };
        };
        let found = match timestamp {
            LIST_OFFSETS_EARLIEST | LIST_OFFSETS_EARLIEST_LOCAL => Ok(Some((log.log_start_offset(), -1))),
            LIST_OFFSETS_LATEST | LIST_OFFSETS_LATEST_TIERED => Ok(Some((log.high_watermark(), -1))),
            LIST_OFFSETS_MAX_TIMESTAMP => match log.max_timestamp() {
                Some(max) => record_at_timestamp(&log, max, |record_timestamp| record_timestamp == max).await,
                None => Ok(None),
            },
            timestamp => record_at_timestamp(&log, timestamp, |record_timestamp| record_timestamp >= timestamp).await,
        };
        match found {
            Ok(Some((offset, timestamp))) => ListOffsetOutcome { error_code: 0, offset, timestamp },
            Ok(None) => ListOffsetOutcome { error_code: 0, offset: -1, timestamp: -1 },
            Err(err) => {
                tracing::warn!(target: "weir::shard", shard = self.id, topic, partition, timestamp, error = %err,
                    "timestamp lookup failed");
                ListOffsetOutcome { error_code: storage_error_code(&err), offset: -1, timestamp: -1 }
            }
        }
    }

    fn max_message_bytes(&self, topic: &str) -> usize {
        let metadata = self.metadata.borrow();
        metadata
            .topics
            .get(topic)
            .and_then(|info| info.configs.get("max.message.bytes"))
            .and_then(|value| value.parse().ok())
            .unwrap_or(self.config.message_max_bytes) as usize
    }

    /// Opens the logs this shard owns for every topic in its metadata view.
    pub async fn open_owned_logs(&self) -> Result<(), StorageError> {
        let topics: Vec<TopicInfo> = self.metadata.borrow().topics.values().cloned().collect();
        for topic in topics {
            self.open_topic_partitions(&topic, 0).await?;
        }
        Ok(())
    }

    async fn open_topic_partitions(&self, topic: &TopicInfo, from_partition: i32) -> Result<(), StorageError> {
        let log_config = self.config.log_config(&topic.configs);
        for partition in from_partition..topic.partition_count {
            if self.owner_of(&topic.name, partition) != self.id || self.local_log(&topic.name, partition).is_some() {
                continue;
            }
            let dir = metadata::partition_dir(&self.config.data_dir, &topic.name, partition);
            let log = PartitionLog::open(&dir, log_config.clone()).await?;
            tracing::info!(target: "weir::shard", shard = self.id, topic = %topic.name, partition,
                log_end_offset = log.log_end_offset(), "opened partition");
            self.partitions.borrow_mut().entry(topic.name.clone()).or_default().insert(partition, log);
        }
        Ok(())
    }

    async fn apply_metadata(&self, changes: &[MetadataChange]) {
        for change in changes {
            self.metadata.borrow_mut().apply(change);
            match change {
                MetadataChange::CreateTopic(topic) => {
                    if let Err(err) = self.open_topic_partitions(topic, 0).await {
                        tracing::error!(target: "weir::shard", shard = self.id, topic = %topic.name, error = %err,
                            "failed to open partitions of a new topic");
                    }
                }
                MetadataChange::SetPartitionCount { name, .. } => {
                    let topic = self.metadata.borrow().topics.get(name).cloned();
                    if let Some(topic) = topic {
                        if let Err(err) = self.open_topic_partitions(&topic, 0).await {
                            tracing::error!(target: "weir::shard", shard = self.id, topic = %name, error = %err,
                                "failed to open new partitions");
                        }
                    }
                }
                MetadataChange::DeleteTopic { name, .. } => {
                    let logs = self.partitions.borrow_mut().remove(name);
                    for (partition, log) in logs.into_iter().flatten() {
                        if let Err(err) = log.delete().await {
                            tracing::error!(target: "weir::shard", shard = self.id, topic = %name, partition, error = %err,
                                "failed to delete partition files");
                        }
                    }
                }
                MetadataChange::ClusterId { .. } => {}
            }
        }
    }

    async fn close_all_logs(&self) {
        self.groups.close().await;
        let all: HashMap<String, HashMap<i32, PartitionLog>> = std::mem::take(&mut *self.partitions.borrow_mut());
        for (topic, logs) in all {
            for (partition, log) in logs {
                if let Err(err) = log.close().await {
                    tracing::error!(target: "weir::shard", shard = self.id, topic = %topic, partition, error = %err,
                        "failed to close partition cleanly");
                }
            }
        }
    }

    /// Persists changes (shard 0 only) and applies them on every shard.
    async fn commit_metadata(self: &Rc<Self>, changes: Vec<MetadataChange>) -> Result<(), String> {
        debug_assert_eq!(self.id, 0, "only shard 0 changes metadata");
        let data_dir = self.config.data_dir.clone();
        let to_write = changes.clone();
        runtime::spawn_blocking(move || metadata::append(&data_dir, &to_write)).await.map_err(|err| err.to_string())?;
        for shard in 0..self.count {
            let changes = changes.clone();
            self.call(shard, |reply| ShardMessage::ApplyMetadata { changes, reply }).await;
        }
        Ok(())
    }

    async fn create_topics(self: &Rc<Self>, topics: Vec<TopicCreateSpec>, validate_only: bool) -> Vec<TopicResult> {
        let mut results = Vec::with_capacity(topics.len());
        let mut changes = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for spec in topics {
            let mut result = TopicResult { name: spec.name.clone(), ..Default::default() };
            let partition_count =
                if spec.partition_count == -1 { self.config.num_partitions } else { spec.partition_count };
            let check = self.check_new_topic(&spec, partition_count, &mut seen);
            match check {
                Err((code, message)) => {
                    result.error_code = code;
                    result.error_message = Some(message);
                }
                Ok(()) => {
                    let info = TopicInfo {
                        name: spec.name.clone(),
                        id: uuid::Uuid::new_v4(),
                        partition_count,
                        configs: spec.configs.clone(),
                    };
                    result.topic_id = info.id;
                    result.partition_count = partition_count;
                    result.configs = spec.configs.clone();
                    if !validate_only {
                        changes.push(MetadataChange::CreateTopic(info));
                    }
                }
            }
            results.push(result);
        }
        if !changes.is_empty() {
            let created: Vec<String> = changes
                .iter()
                .filter_map(|change| match change {
                    MetadataChange::CreateTopic(info) => Some(info.name.clone()),
                    _ => None,
                })
                .collect();
            if let Err(message) = self.commit_metadata(changes).await {
                tracing::error!(target: "weir::metadata", error = %message, "failed to persist new topics");
                for result in results.iter_mut().filter(|result| created.contains(&result.name)) {
                    result.error_code = ResponseError::KafkaStorageError.code();
                    result.error_message = Some(message.clone());
                }
            } else {
                for name in &created {
                    tracing::info!(target: "weir::metadata", topic = %name, "created topic");
                }
            }
        }
        results
    }

    fn check_new_topic(
        &self,
        spec: &TopicCreateSpec,
        partition_count: i32,
        seen: &mut std::collections::HashSet<String>,
    ) -> Result<(), (i16, String)> {
        metadata::validate_topic_name(&spec.name)
            .map_err(|message| (ResponseError::InvalidTopicException.code(), message))?;
        if self.metadata.borrow().topics.contains_key(&spec.name) || !seen.insert(spec.name.clone()) {
            return Err((ResponseError::TopicAlreadyExists.code(), format!("topic `{}` already exists", spec.name)));
        }
        if partition_count <= 0 || partition_count > PARTITIONS_PER_TOPIC_MAX {
            return Err((
                ResponseError::InvalidPartitions.code(),
                format!("partition count must be between 1 and {PARTITIONS_PER_TOPIC_MAX}, got {partition_count}"),
            ));
        }
        if spec.replication_factor != -1 && spec.replication_factor != 1 {
            return Err((
                ResponseError::InvalidReplicationFactor.code(),
                format!("replication factor {} is not possible on a single node; use 1 or -1", spec.replication_factor),
            ));
        }
        for (key, value) in &spec.configs {
            validate_topic_config(key, value).map_err(|message| (ResponseError::InvalidConfig.code(), message))?;
        }
        Ok(())
    }

    async fn delete_topics(self: &Rc<Self>, names: Vec<String>) -> Vec<TopicResult> {
        let mut results = Vec::with_capacity(names.len());
        let mut changes = Vec::new();
        for name in names {
            let mut result = TopicResult { name: name.clone(), ..Default::default() };
            match self.metadata.borrow().topics.get(&name) {
                Some(info) => {
                    result.topic_id = info.id;
                    changes.push(MetadataChange::DeleteTopic { name: name.clone(), id: info.id });
                }
                None => {
                    result.error_code = ResponseError::UnknownTopicOrPartition.code();
                    result.error_message = Some(format!("topic `{name}` does not exist"));
                }
            }
            results.push(result);
        }
        if !changes.is_empty() {
            if let Err(message) = self.commit_metadata(changes).await {
                for result in results.iter_mut().filter(|result| result.error_code == 0) {
                    result.error_code = ResponseError::KafkaStorageError.code();
                    result.error_message = Some(message.clone());
                }
            } else {
                for result in results.iter().filter(|result| result.error_code == 0) {
                    tracing::info!(target: "weir::metadata", topic = %result.name, "deleted topic");
                }
            }
        }
        results
    }

    async fn create_partitions(self: &Rc<Self>, topics: Vec<(String, i32)>, validate_only: bool) -> Vec<TopicResult> {
        let mut results = Vec::with_capacity(topics.len());
        let mut changes = Vec::new();
        for (name, count) in topics {
            let mut result = TopicResult { name: name.clone(), ..Default::default() };
            let current = self.metadata.borrow().topics.get(&name).map(|info| info.partition_count);
            match current {
                None => {
                    result.error_code = ResponseError::UnknownTopicOrPartition.code();
                    result.error_message = Some(format!("topic `{name}` does not exist"));
                }
                Some(current) if count <= current || count > PARTITIONS_PER_TOPIC_MAX => {
                    result.error_code = ResponseError::InvalidPartitions.code();
                    result.error_message = Some(format!(
                        "topic `{name}` has {current} partitions; the new count must be larger, got {count}"
                    ));
                }
                Some(_) => {
                    if !validate_only {
                        changes.push(MetadataChange::SetPartitionCount { name: name.clone(), partition_count: count });
                    }
                }
            }
            results.push(result);
        }
        if !changes.is_empty() {
            if let Err(message) = self.commit_metadata(changes).await {
                for result in results.iter_mut().filter(|result| result.error_code == 0) {
                    result.error_code = ResponseError::KafkaStorageError.code();
                    result.error_message = Some(message.clone());
                }
            }
        }
        results
    }
}
