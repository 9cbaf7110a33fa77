//! Metadata and topic administration: Metadata, CreateTopics, DeleteTopics,
//! CreatePartitions, DescribeConfigs and DescribeCluster.
//!
//! Every shard serves Metadata from its own copy of the metadata; changes go
//! to shard 0, which persists them and pushes them to every shard before it
//! responds, so a client sees its new topic on any shard afterwards.

use std::collections::BTreeMap;
use std::rc::Rc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::create_topics_response::{CreatableTopicConfigs, CreatableTopicResult};
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::describe_configs_response::{DescribeConfigsResourceResult, DescribeConfigsResult};
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;

use crate::metadata::{self, TopicInfo};
use crate::shard::{Shard, ShardMessage, TopicCreateSpec, TopicResult};

/// DescribeConfigs resource type of a topic.
const RESOURCE_TOPIC: i8 = 2;
/// DescribeConfigs resource type of a broker.
const RESOURCE_BROKER: i8 = 4;
/// Config source values of DescribeConfigs.
const SOURCE_TOPIC_OVERRIDE: i8 = 1;
const SOURCE_DEFAULT: i8 = 5;

fn str_bytes(text: &str) -> StrBytes {
    StrBytes::from_string(text.to_string())
}

fn topic_name(text: &str) -> TopicName {
    TopicName(str_bytes(text))
}

pub async fn metadata(shard: &Rc<Shard>, request: MetadataRequest, version: i16) -> MetadataResponse {
    let mut response = MetadataResponse::default()
        .with_brokers(
            shard
                .brokers
                .iter()
                .map(|broker| {
                    MetadataResponseBroker::default()
                        .with_node_id(BrokerId(broker.node_id))
                        .with_host(str_bytes(&broker.host))
                        .with_port(i32::from(broker.port))
                })
                .collect(),
        )
        .with_controller_id(BrokerId(0));
    if version >= 2 {
        response.cluster_id = Some(str_bytes(&shard.metadata.borrow().cluster_id));
    }

    // v0: an empty list means every topic. v1+: null means every topic.
    let all_topics = match &request.topics {
        None => true,
        Some(topics) => version == 0 && topics.is_empty(),
    };
    let auto_create = shard.config.auto_create_topics_enable && (version < 4 || request.allow_auto_topic_creation);

    let mut topics = Vec::new();
    if all_topics {
        let mut names: Vec<String> = shard.metadata.borrow().topics.keys().cloned().collect();
        names.sort();
        for name in names {
            let info = shard.metadata.borrow().topics.get(&name).cloned();
            if let Some(info) = info {
                topics.push(topic_metadata(shard, &info, version));
            }
        }
    } else {
        for requested in request.topics.unwrap_or_default() {
            topics.push(requested_topic_metadata(shard, requested, auto_create, version).await);
        }
    }
    response.topics = topics;
    response
}

async fn requested_topic_metadata(
    shard: &Rc<Shard>,
    requested: metadata_request::MetadataRequestTopic,
    auto_create: bool,
    version: i16,
) -> MetadataResponseTopic {
    let name = match requested.name {
        Some(name) => name.0.to_string(),
        None => {
            let found = shard.metadata.borrow().topic_by_id(requested.topic_id).cloned();
            return match found {
                Some(info) => topic_metadata(shard, &info, version),
                None => MetadataResponseTopic::default()
                    .with_error_code(ResponseError::UnknownTopicId.code())
                    .with_topic_id(requested.topic_id),
            };
        }
    };
    let existing = shard.metadata.borrow().topics.get(&name).cloned();
    if let Some(info) = existing {
        return topic_metadata(shard, &info, version);
    }
    let error_topic =
        |code: i16| MetadataResponseTopic::default().with_error_code(code).with_name(Some(topic_name(&name)));
    if metadata::validate_topic_name(&name).is_err() {
        return error_topic(ResponseError::InvalidTopicException.code());
    }
    if !auto_create {
        return error_topic(ResponseError::UnknownTopicOrPartition.code());
    }

    let spec =
        TopicCreateSpec { name: name.clone(), partition_count: -1, replication_factor: -1, configs: BTreeMap::new() };
    let results = shard
        .call(0, |reply| ShardMessage::CreateTopics { topics: vec![spec], validate_only: false, reply })
        .await
        .unwrap_or_default();
    let created_or_raced = results
        .first()
        .is_some_and(|result| result.error_code == 0 || result.error_code == ResponseError::TopicAlreadyExists.code());
    if created_or_raced {
        tracing::info!(target: "weir::metadata", shard = shard.id, topic = %name, "auto-created topic from a Metadata request");
    }
    let created = shard.metadata.borrow().topics.get(&name).cloned();
    match created {
        Some(info) if created_or_raced => topic_metadata(shard, &info, version),
        _ => error_topic(results.first().map_or(ResponseError::LeaderNotAvailable.code(), |result| result.error_code)),
    }
}

fn topic_metadata(shard: &Shard, info: &TopicInfo, version: i16) -> MetadataResponseTopic {
    let partitions = (0..info.partition_count)
        .map(|partition| {
            let leader = BrokerId(shard.leader_node(&info.name, partition));
            let mut entry = MetadataResponsePartition::default()
                .with_partition_index(partition)
                .with_leader_id(leader)
                .with_replica_nodes(vec![leader])
                .with_isr_nodes(vec![leader]);
            if version >= 7 {
                entry.leader_epoch = 0;
            }
            entry
        })
        .collect();
    let mut topic =
        MetadataResponseTopic::default().with_name(Some(topic_name(&info.name))).with_partitions(partitions);
    if version >= 10 {
        topic.topic_id = info.id;
    }
    topic
}

pub async fn create_topics(shard: &Rc<Shard>, request: CreateTopicsRequest, version: i16) -> CreateTopicsResponse {
    let mut early = Vec::new();
    let mut specs = Vec::new();
    for topic in request.topics {
        let name = topic.name.0.to_string();
        if !topic.assignments.is_empty() {
            early.push(TopicResult {
                name,
                error_code: ResponseError::InvalidRequest.code(),
                error_message: Some("manual replica assignments are not supported on a single node".to_string()),
                ..Default::default()
            });
            continue;
        }
        let configs = topic
            .configs
            .into_iter()
            .filter_map(|config| config.value.map(|value| (config.name.to_string(), value.to_string())))
            .collect();
        specs.push(TopicCreateSpec {
            name,
            partition_count: topic.num_partitions,
            replication_factor: topic.replication_factor,
            configs,
        });
    }
    let validate_only = request.validate_only;
    let mut results = if specs.is_empty() {
        Vec::new()
    } else {
        let count = specs.len();
        shard
            .call(0, |reply| ShardMessage::CreateTopics { topics: specs, validate_only, reply })
            .await
            .unwrap_or_else(|| vec![unavailable_result(); count])
    };
    results.extend(early);

    let topics = results
        .into_iter()
        .map(|result| {
            let mut entry =
                CreatableTopicResult::default().with_name(topic_name(&result.name)).with_error_code(result.error_code);
            if version >= 1 {
                entry.error_message = result.error_message.as_deref().map(str_bytes);
            }
            if version >= 5 {
                entry.num_partitions = if result.error_code == 0 { result.partition_count } else { -1 };
                entry.replication_factor = if result.error_code == 0 { 1 } else { -1 };
                if result.error_code == 0 {
                    entry.configs = Some(
                        result
                            .configs
                            .iter()
                            .map(|(key, value)| {
                                CreatableTopicConfigs::default()
                                    .with_name(str_bytes(key))
                                    .with_value(Some(str_bytes(value)))
                                    .with_config_source(SOURCE_TOPIC_OVERRIDE)
                            })
                            .collect(),
                    );
                }
            }
            if version >= 7 {
                entry.topic_id = result.topic_id;
            }
            entry
        })
        .collect();
    CreateTopicsResponse::default().with_topics(topics)
}

fn unavailable_result() -> TopicResult {
    TopicResult {
        error_code: ResponseError::CoordinatorNotAvailable.code(),
        error_message: Some("the metadata shard is not available".to_string()),
        ..Default::default()
    }
}

pub async fn delete_topics(shard: &Rc<Shard>, request: DeleteTopicsRequest, version: i16) -> DeleteTopicsResponse {
    let mut names: Vec<String> = request.topic_names.iter().map(|name| name.0.to_string()).collect();
    let mut unknown_ids = Vec::new();
    for state in request.topics {
        match state.name {
            Some(name) => names.push(name.0.to_string()),
            None => match shard.metadata.borrow().topic_by_id(state.topic_id) {
                Some(info) => names.push(info.name.clone()),
                None => unknown_ids.push(state.topic_id),
            },
        }
    }
    let count = names.len();
    let results = if names.is_empty() {
        Vec::new()
    } else {
        shard
            .call(0, |reply| ShardMessage::DeleteTopics { names, reply })
            .await
            .unwrap_or_else(|| vec![unavailable_result(); count])
    };
    let mut responses: Vec<DeletableTopicResult> = results
        .into_iter()
        .map(|result| {
            let mut entry = DeletableTopicResult::default()
                .with_name(Some(topic_name(&result.name)))
                .with_error_code(result.error_code);
            if version >= 5 {
                entry.error_message = result.error_message.as_deref().map(str_bytes);
            }
            if version >= 6 {
                entry.topic_id = result.topic_id;
            }
            entry
        })
        .collect();
    for id in unknown_ids {
        responses.push(
            DeletableTopicResult::default()
                .with_name(None)
                .with_topic_id(id)
                .with_error_code(ResponseError::UnknownTopicId.code()),
        );
    }
    DeleteTopicsResponse::default().with_responses(responses)
}

pub async fn create_partitions(
    shard: &Rc<Shard>,
    request: CreatePartitionsRequest,
    _version: i16,
) -> CreatePartitionsResponse {
    let topics: Vec<(String, i32)> =
        request.topics.iter().map(|topic| (topic.name.0.to_string(), topic.count)).collect();
    let count = topics.len();
    let validate_only = request.validate_only;
    let results = shard
        .call(0, |reply| ShardMessage::CreatePartitions { topics, validate_only, reply })
        .await
        .unwrap_or_else(|| vec![unavailable_result(); count]);
    let results = results
        .into_iter()
        .map(|result| {
            CreatePartitionsTopicResult::default()
                .with_name(topic_name(&result.name))
                .with_error_code(result.error_code)
                .with_error_message(result.error_message.as_deref().map(str_bytes))
        })
        .collect();
    CreatePartitionsResponse::default().with_results(results)
}

pub fn describe_configs(shard: &Rc<Shard>, request: DescribeConfigsRequest, _version: i16) -> DescribeConfigsResponse {
    let results = request
        .resources
        .into_iter()
        .map(|resource| {
            let name = resource.resource_name.to_string();
            let wanted =
                resource.configuration_keys.map(|keys| keys.iter().map(|key| key.to_string()).collect::<Vec<_>>());
            let mut result = DescribeConfigsResult::default()
                .with_resource_type(resource.resource_type)
                .with_resource_name(resource.resource_name.clone());
            let entries: Vec<(String, String, i8)> = match resource.resource_type {
                RESOURCE_TOPIC => match shard.metadata.borrow().topics.get(&name) {
                    Some(info) => topic_config_entries(shard, info),
                    None => {
                        result.error_code = ResponseError::UnknownTopicOrPartition.code();
                        result.error_message = Some(str_bytes(&format!("topic `{name}` does not exist")));
                        Vec::new()
                    }
                },
                RESOURCE_BROKER => broker_config_entries(shard),
                other => {
                    result.error_code = ResponseError::InvalidRequest.code();
                    result.error_message = Some(str_bytes(&format!("resource type {other} is not supported")));
                    Vec::new()
                }
            };
            result.configs = entries
                .into_iter()
                .filter(|(key, _, _)| wanted.as_ref().is_none_or(|keys| keys.contains(key)))
                .map(|(key, value, source)| {
                    DescribeConfigsResourceResult::default()
                        .with_name(str_bytes(&key))
                        .with_value(Some(str_bytes(&value)))
                        .with_config_source(source)
                        .with_read_only(resource.resource_type == RESOURCE_BROKER)
                })
                .collect();
            result
        })
        .collect();
    DescribeConfigsResponse::default().with_results(results)
}

fn topic_config_entries(shard: &Shard, info: &TopicInfo) -> Vec<(String, String, i8)> {
    let log = shard.config.log_config(&info.configs);
    let limit = |value: Option<u64>| value.map_or("-1".to_string(), |value| value.to_string());
    let defaults = [
        ("segment.bytes", log.segment_bytes.to_string()),
        ("max.message.bytes", log.max_message_bytes.to_string()),
        ("retention.ms", limit(log.retention_ms)),
        ("retention.bytes", limit(log.retention_bytes)),
        ("index.interval.bytes", log.index_interval_bytes.to_string()),
        ("cleanup.policy", "delete".to_string()),
        (
            "message.timestamp.type",
            match log.timestamp_type {
                crate::storage::TimestampType::CreateTime => "CreateTime".to_string(),
                crate::storage::TimestampType::LogAppendTime => "LogAppendTime".to_string(),
            },
        ),
    ];
    let mut entries: Vec<(String, String, i8)> = defaults
        .into_iter()
        .map(|(key, value)| {
            let source = if info.configs.contains_key(key) { SOURCE_TOPIC_OVERRIDE } else { SOURCE_DEFAULT };
            (key.to_string(), value, source)
        })
        .collect();
    for (key, value) in &info.configs {
        if !entries.iter().any(|(existing, _, _)| existing == key) {
            entries.push((key.clone(), value.clone(), SOURCE_TOPIC_OVERRIDE));
        }
    }
    entries
}

fn broker_config_entries(shard: &Shard) -> Vec<(String, String, i8)> {
    let config = &shard.config;
    [
        ("num.partitions", config.num_partitions.to_string()),
        ("auto.create.topics.enable", config.auto_create_topics_enable.to_string()),
        ("message.max.bytes", config.message_max_bytes.to_string()),
        ("socket.request.max.bytes", config.socket_request_max_bytes.to_string()),
        ("log.segment.bytes", config.log_segment_bytes.to_string()),
    ]
    .into_iter()
    .map(|(key, value)| (key.to_string(), value, SOURCE_DEFAULT))
    .collect()
}

pub fn describe_cluster(shard: &Rc<Shard>, _request: DescribeClusterRequest, _version: i16) -> DescribeClusterResponse {
    DescribeClusterResponse::default()
        .with_cluster_id(str_bytes(&shard.metadata.borrow().cluster_id))
        .with_controller_id(BrokerId(0))
        .with_brokers(
            shard
                .brokers
                .iter()
                .map(|broker| {
                    DescribeClusterBroker::default()
                        .with_broker_id(BrokerId(broker.node_id))
                        .with_host(str_bytes(&broker.host))
                        .with_port(i32::from(broker.port))
                })
                .collect(),
        )
}
