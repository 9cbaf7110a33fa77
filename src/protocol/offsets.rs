//! ListOffsets and OffsetForLeaderEpoch.

use std::rc::Rc;

use futures::future::join_all;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::list_offsets_response::{ListOffsetsPartitionResponse, ListOffsetsTopicResponse};
use kafka_protocol::messages::offset_for_leader_epoch_response::{EpochEndOffset, OffsetForLeaderTopicResult};
use kafka_protocol::messages::*;

use crate::shard::{ListOffsetOutcome, Shard, ShardMessage};

/// Leader epoch of every partition: a single node never changes leaders.
const LEADER_EPOCH: i32 = 0;

pub async fn list_offsets(shard: &Rc<Shard>, request: ListOffsetsRequest, version: i16) -> ListOffsetsResponse {
    let mut topics = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let name = topic.name.0.to_string();
        let lookups = topic.partitions.into_iter().map(|partition| {
            let name = name.clone();
            async move {
                let index = partition.partition_index;
                let outcome = lookup(shard, name, index, partition.timestamp).await;
                let mut response = ListOffsetsPartitionResponse::default()
                    .with_partition_index(index)
                    .with_error_code(outcome.error_code)
                    .with_offset(outcome.offset)
                    .with_timestamp(outcome.timestamp);
                if version >= 4 {
                    response.leader_epoch = if outcome.error_code == 0 { LEADER_EPOCH } else { -1 };
                }
                response
            }
        });
        let partitions = join_all(lookups).await;
        topics.push(ListOffsetsTopicResponse::default().with_name(topic.name).with_partitions(partitions));
    }
    ListOffsetsResponse::default().with_topics(topics)
}

async fn lookup(shard: &Rc<Shard>, topic: String, partition: i32, timestamp: i64) -> ListOffsetOutcome {
    let known = shard
        .metadata
        .borrow()
        .topics
        .get(&topic)
        .is_some_and(|info| partition >= 0 && partition < info.partition_count);
    if !known {
        return ListOffsetOutcome {
            error_code: ResponseError::UnknownTopicOrPartition.code(),
            offset: -1,
            timestamp: -1,
        };
    }
    let owner = shard.owner_of(&topic, partition);
    shard.call(owner, |reply| ShardMessage::ListOffsets { topic, partition, timestamp, reply }).await.unwrap_or(
        ListOffsetOutcome { error_code: ResponseError::NotLeaderOrFollower.code(), offset: -1, timestamp: -1 },
    )
}

/// Every partition has had one leader epoch (0) for its whole life, so the
/// end offset of any epoch the client knows is the log end.
pub async fn offset_for_leader_epoch(
    shard: &Rc<Shard>,
    request: OffsetForLeaderEpochRequest,
    _version: i16,
) -> OffsetForLeaderEpochResponse {
    let mut topics = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let name = topic.topic.0.to_string();
        let lookups = topic.partitions.into_iter().map(|partition| {
            let name = name.clone();
            async move {
                let index = partition.partition;
                let outcome = lookup(shard, name, index, -1).await;
                let mut entry = EpochEndOffset::default().with_partition(index).with_error_code(outcome.error_code);
                if outcome.error_code == 0 {
                    if partition.leader_epoch > LEADER_EPOCH {
                        entry.leader_epoch = -1;
                        entry.end_offset = -1;
                    } else {
                        entry.leader_epoch = LEADER_EPOCH;
                        entry.end_offset = outcome.offset;
                    }
                }
                entry
            }
        });
        let partitions = join_all(lookups).await;
        topics.push(OffsetForLeaderTopicResult::default().with_topic(topic.topic).with_partitions(partitions));
    }
    OffsetForLeaderEpochResponse::default().with_topics(topics)
}
