//! Produce: each partition's record set, a `Bytes` slice of the request
//! frame, goes to its owner shard, which validates and appends it.

use std::rc::Rc;

use futures::future::join_all;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse};
use kafka_protocol::protocol::StrBytes;

use crate::metadata;
use crate::shard::{ProduceOutcome, Shard, ShardMessage};

pub async fn produce(shard: &Rc<Shard>, request: ProduceRequest, version: i16) -> ProduceResponse {
    let acks = request.acks;
    let acks_valid = matches!(acks, -1..=1);
    if request.transactional_id.is_some() {
        // NOTE: transactions are not implemented; transactional batches are
        // stored as ordinary batches and never get commit markers.
        tracing::debug!(target: "weir::produce", shard = shard.id, "transactional produce handled as non-transactional");
    }

    let mut topics = Vec::with_capacity(request.topic_data.len());
    for topic_data in request.topic_data {
        let topic = topic_data.name.0.to_string();
        let topic_known = shard.metadata.borrow().topics.contains_key(&topic);
        let name_error = metadata::validate_topic_name(&topic).err();
        let partitions = topic_data.partition_data.into_iter().map(|partition_data| {
            let topic = topic.clone();
            let name_error = name_error.clone();
            async move {
                let index = partition_data.index;
                let outcome = if !acks_valid {
                    error_outcome(
                        ResponseError::InvalidRequiredAcks.code(),
                        format!("acks must be -1, 0 or 1, got {acks}"),
                    )
                } else if let Some(message) = name_error {
                    error_outcome(ResponseError::InvalidTopicException.code(), message)
                } else if !topic_known {
                    error_outcome(
                        ResponseError::UnknownTopicOrPartition.code(),
                        format!("topic `{topic}` does not exist"),
                    )
                } else {
                    let records = partition_data.records.unwrap_or_default();
                    let owner = shard.owner_of(&topic, index);
                    shard
                        .call(owner, |reply| ShardMessage::Produce { topic, partition: index, records, acks, reply })
                        .await
                        .unwrap_or_else(|| {
                            error_outcome(
                                ResponseError::NotLeaderOrFollower.code(),
                                "owner shard is stopping".to_string(),
                            )
                        })
                };
                partition_response(index, outcome, version)
            }
        });
        let partition_responses = join_all(partitions).await;
        topics.push(
            TopicProduceResponse::default().with_name(topic_data.name).with_partition_responses(partition_responses),
        );
    }
    ProduceResponse::default().with_responses(topics)
}

fn error_outcome(error_code: i16, message: String) -> ProduceOutcome {
    ProduceOutcome {
        error_code,
        error_message: Some(message),
        base_offset: -1,
        log_append_time_ms: -1,
        log_start_offset: -1,
    }
}

fn partition_response(index: i32, outcome: ProduceOutcome, version: i16) -> PartitionProduceResponse {
    let mut response = PartitionProduceResponse::default()
        .with_index(index)
        .with_error_code(outcome.error_code)
        .with_base_offset(outcome.base_offset)
        .with_log_append_time_ms(outcome.log_append_time_ms);
    if version >= 5 {
        response.log_start_offset = outcome.log_start_offset;
    }
    if version >= 8 {
        response.error_message = outcome.error_message.map(StrBytes::from_string);
    }
    response
}
