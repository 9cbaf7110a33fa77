//! Consumer group APIs and InitProducerId.
//!
//! A group is coordinated by the shard its id hashes to (FindCoordinator
//! sends clients there). A group request that reaches another shard gets
//! NOT_COORDINATOR, which makes clients look the coordinator up again, as
//! they do with Kafka. Multi-group requests are split: groups this shard
//! coordinates are handled, the others get NOT_COORDINATOR each.
//! InitProducerId goes to shard 0, which owns the producer id allocator.

use std::rc::Rc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::describe_groups_response::DescribedGroup;
use kafka_protocol::messages::offset_commit_response::{OffsetCommitResponsePartition, OffsetCommitResponseTopic};
use kafka_protocol::messages::offset_fetch_response::OffsetFetchResponseGroup;
use kafka_protocol::messages::*;

use crate::group::ClientInfo;
use crate::metadata;
use crate::shard::{Shard, ShardMessage};

fn not_coordinator() -> i16 {
    ResponseError::NotCoordinator.code()
}

fn coordinates(shard: &Shard, group_id: &GroupId) -> bool {
    metadata::group_shard(group_id, shard.count) == shard.id
}

pub async fn join_group(shard: &Rc<Shard>, request: JoinGroupRequest, version: i16, client: ClientInfo) -> JoinGroupResponse {
    if !coordinates(shard, &request.group_id) {
        return JoinGroupResponse::default()
            .with_error_code(not_coordinator())
            .with_generation_id(-1)
            .with_member_id(request.member_id);
    }
    shard.groups.join_group_from(request, version, client).await
}

pub async fn sync_group(shard: &Rc<Shard>, request: SyncGroupRequest, version: i16) -> SyncGroupResponse {
    if !coordinates(shard, &request.group_id) {
        return SyncGroupResponse::default().with_error_code(not_coordinator());
    }
    shard.groups.sync_group(request, version).await
}

pub async fn heartbeat(shard: &Rc<Shard>, request: HeartbeatRequest, version: i16) -> HeartbeatResponse {
    if !coordinates(shard, &request.group_id) {
        return HeartbeatResponse::default().with_error_code(not_coordinator());
    }
    shard.groups.heartbeat(request, version).await
}

pub async fn leave_group(shard: &Rc<Shard>, request: LeaveGroupRequest, version: i16) -> LeaveGroupResponse {
    if !coordinates(shard, &request.group_id) {
        return LeaveGroupResponse::default().with_error_code(not_coordinator());
    }
    shard.groups.leave_group(request, version).await
}

pub async fn offset_commit(shard: &Rc<Shard>, request: OffsetCommitRequest, version: i16) -> OffsetCommitResponse {
    if !coordinates(shard, &request.group_id) {
        let topics = request
            .topics
            .iter()
            .map(|topic| {
                OffsetCommitResponseTopic::default().with_name(topic.name.clone()).with_partitions(
                    topic
                        .partitions
                        .iter()
                        .map(|partition| {
                            OffsetCommitResponsePartition::default()
                                .with_partition_index(partition.partition_index)
                                .with_error_code(not_coordinator())
                        })
                        .collect(),
                )
            })
            .collect();
        return OffsetCommitResponse::default().with_topics(topics);
    }
    shard.groups.offset_commit(request, version).await
}

/// First OffsetFetch version that names several groups.
const OFFSET_FETCH_FIRST_MULTI_GROUP_VERSION: i16 = 8;

pub async fn offset_fetch(shard: &Rc<Shard>, mut request: OffsetFetchRequest, version: i16) -> OffsetFetchResponse {
    if version < OFFSET_FETCH_FIRST_MULTI_GROUP_VERSION {
        if !coordinates(shard, &request.group_id) {
            return OffsetFetchResponse::default().with_error_code(not_coordinator());
        }
        return shard.groups.offset_fetch(request, version).await;
    }
    let (owned, others): (Vec<_>, Vec<_>) = request.groups.into_iter().partition(|group| coordinates(shard, &group.group_id));
    request.groups = owned;
    let mut response = if request.groups.is_empty() {
        OffsetFetchResponse::default()
    } else {
        shard.groups.offset_fetch(request, version).await
    };
    for group in others {
        response
            .groups
            .push(OffsetFetchResponseGroup::default().with_group_id(group.group_id).with_error_code(not_coordinator()));
    }
    response
}

pub async fn describe_groups(shard: &Rc<Shard>, mut request: DescribeGroupsRequest, version: i16) -> DescribeGroupsResponse {
    let (owned, others): (Vec<_>, Vec<_>) = request.groups.into_iter().partition(|group| coordinates(shard, group));
    request.groups = owned;
    let mut response = if request.groups.is_empty() {
        DescribeGroupsResponse::default()
    } else {
        shard.groups.describe_groups(request, version).await
    };
    for group in others {
        response.groups.push(DescribedGroup::default().with_group_id(group).with_error_code(not_coordinator()));
    }
    response
}

pub async fn delete_groups(shard: &Rc<Shard>, mut request: DeleteGroupsRequest, version: i16) -> DeleteGroupsResponse {
    let (owned, others): (Vec<_>, Vec<_>) = request.groups_names.into_iter().partition(|group| coordinates(shard, group));
    request.groups_names = owned;
    let mut response = if request.groups_names.is_empty() {
        DeleteGroupsResponse::default()
    } else {
        shard.groups.delete_groups(request, version).await
    };
    for group in others {
        response.results.push(DeletableGroupResult::default().with_group_id(group).with_error_code(not_coordinator()));
    }
    response
}

/// Lists the groups this shard coordinates. Admin clients send ListGroups to
/// every broker and merge the answers, so each shard lists its own.
pub async fn list_groups(shard: &Rc<Shard>, request: ListGroupsRequest, version: i16) -> ListGroupsResponse {
    shard.groups.list_groups(request, version).await
}

pub async fn init_producer_id(shard: &Rc<Shard>, request: InitProducerIdRequest, version: i16) -> InitProducerIdResponse {
    shard
        .call(0, |reply| ShardMessage::InitProducerId { request, version, reply })
        .await
        .unwrap_or_else(|| InitProducerIdResponse::default().with_error_code(ResponseError::CoordinatorNotAvailable.code()))
}
