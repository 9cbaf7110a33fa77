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

use crate::config::ListenerMode;
use crate::group::ClientInfo;
use crate::metadata;
use crate::shard::{Shard, ShardMessage};

fn not_coordinator() -> i16 {
    ResponseError::NotCoordinator.code()
}

fn coordinator_of(shard: &Shard, group_id: &str) -> usize {
    metadata::group_shard(group_id, shard.count)
}

/// Sends a group request to the shard that coordinates it.
async fn forward(
    shard: &Rc<Shard>,
    owner: usize,
    body: RequestKind,
    version: i16,
    client: ClientInfo,
) -> Option<ResponseKind> {
    shard.call(owner, |reply| ShardMessage::GroupRequest { body: Box::new(body), version, client, reply }).await.flatten()
}

/// Runs a group request on this shard's coordinator. The caller has checked
/// that this shard coordinates every group the request names.
pub async fn handle_forwarded(
    shard: &Rc<Shard>,
    body: RequestKind,
    version: i16,
    client: ClientInfo,
) -> Option<ResponseKind> {
    let groups = &shard.groups;
    let response = match body {
        RequestKind::JoinGroup(request) => {
            ResponseKind::JoinGroup(groups.join_group_from(request, version, client).await)
        }
        RequestKind::SyncGroup(request) => ResponseKind::SyncGroup(groups.sync_group(request, version).await),
        RequestKind::Heartbeat(request) => ResponseKind::Heartbeat(groups.heartbeat(request, version).await),
        RequestKind::LeaveGroup(request) => ResponseKind::LeaveGroup(groups.leave_group(request, version).await),
        RequestKind::OffsetCommit(request) => ResponseKind::OffsetCommit(groups.offset_commit(request, version).await),
        RequestKind::OffsetFetch(request) => ResponseKind::OffsetFetch(groups.offset_fetch(request, version).await),
        RequestKind::DescribeGroups(request) => {
            ResponseKind::DescribeGroups(groups.describe_groups(request, version).await)
        }
        RequestKind::DeleteGroups(request) => ResponseKind::DeleteGroups(groups.delete_groups(request, version).await),
        RequestKind::ListGroups(request) => ResponseKind::ListGroups(groups.list_groups(request, version).await),
        _ => return None,
    };
    Some(response)
}

/// Returns the group a single-group request names: JoinGroup, SyncGroup,
/// Heartbeat, LeaveGroup, OffsetCommit, and OffsetFetch before v8.
pub fn single_group_id(body: &RequestKind) -> Option<String> {
    let group_id = match body {
        RequestKind::JoinGroup(request) => &request.group_id,
        RequestKind::SyncGroup(request) => &request.group_id,
        RequestKind::Heartbeat(request) => &request.group_id,
        RequestKind::LeaveGroup(request) => &request.group_id,
        RequestKind::OffsetCommit(request) => &request.group_id,
        RequestKind::OffsetFetch(request) => &request.group_id,
        _ => return None,
    };
    Some(group_id.to_string())
}

/// Handles a request that names one group. This shard handles it when it
/// coordinates the group. Otherwise a shared listener forwards it to the
/// coordinator, and per-shard listeners return NOT_COORDINATOR, which makes
/// clients ask FindCoordinator again, as with Kafka.
pub async fn single_group(
    shard: &Rc<Shard>,
    group_id: &str,
    body: RequestKind,
    version: i16,
    client: ClientInfo,
) -> Option<ResponseKind> {
    let owner = coordinator_of(shard, group_id);
    if owner == shard.id {
        return handle_forwarded(shard, body, version, client).await;
    }
    let refusal = not_coordinator_response(&body);
    if shard.config.listener_mode == ListenerMode::PerShard {
        return refusal;
    }
    forward(shard, owner, body, version, client).await.or(refusal)
}

/// Builds the NOT_COORDINATOR response to a single-group request.
fn not_coordinator_response(body: &RequestKind) -> Option<ResponseKind> {
    let code = not_coordinator();
    let response = match body {
        RequestKind::JoinGroup(request) => ResponseKind::JoinGroup(
            JoinGroupResponse::default()
                .with_error_code(code)
                .with_generation_id(-1)
                .with_member_id(request.member_id.clone()),
        ),
        RequestKind::SyncGroup(_) => ResponseKind::SyncGroup(SyncGroupResponse::default().with_error_code(code)),
        RequestKind::Heartbeat(_) => ResponseKind::Heartbeat(HeartbeatResponse::default().with_error_code(code)),
        RequestKind::LeaveGroup(_) => ResponseKind::LeaveGroup(LeaveGroupResponse::default().with_error_code(code)),
        RequestKind::OffsetCommit(request) => ResponseKind::OffsetCommit(offset_commit_refused(request)),
        RequestKind::OffsetFetch(_) => ResponseKind::OffsetFetch(OffsetFetchResponse::default().with_error_code(code)),
        _ => return None,
    };
    Some(response)
}

fn offset_commit_refused(request: &OffsetCommitRequest) -> OffsetCommitResponse {
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
    OffsetCommitResponse::default().with_topics(topics)
}

/// First OffsetFetch version that names several groups.
pub const OFFSET_FETCH_FIRST_MULTI_GROUP_VERSION: i16 = 8;

/// Handles OffsetFetch v8 and later, which names several groups.
pub async fn offset_fetch_groups(
    shard: &Rc<Shard>,
    request: OffsetFetchRequest,
    version: i16,
    client: ClientInfo,
) -> OffsetFetchResponse {
    let mut response = OffsetFetchResponse::default();
    for (owner, groups) in split_by_coordinator(shard, request.groups.clone(), |group| group.group_id.to_string()) {
        let part = request.clone().with_groups(groups);
        match dispatch_part(shard, owner, RequestKind::OffsetFetch(part.clone()), version, &client).await {
            Some(ResponseKind::OffsetFetch(answer)) => response.groups.extend(answer.groups),
            _ => response.groups.extend(part.groups.into_iter().map(|group| {
                OffsetFetchResponseGroup::default().with_group_id(group.group_id).with_error_code(not_coordinator())
            })),
        }
    }
    response
}

pub async fn describe_groups(
    shard: &Rc<Shard>,
    request: DescribeGroupsRequest,
    version: i16,
    client: ClientInfo,
) -> DescribeGroupsResponse {
    let mut response = DescribeGroupsResponse::default();
    for (owner, groups) in split_by_coordinator(shard, request.groups.clone(), |group| group.to_string()) {
        let part = request.clone().with_groups(groups);
        match dispatch_part(shard, owner, RequestKind::DescribeGroups(part.clone()), version, &client).await {
            Some(ResponseKind::DescribeGroups(answer)) => response.groups.extend(answer.groups),
            _ => response.groups.extend(
                part.groups
                    .into_iter()
                    .map(|group| DescribedGroup::default().with_group_id(group).with_error_code(not_coordinator())),
            ),
        }
    }
    response
}

pub async fn delete_groups(
    shard: &Rc<Shard>,
    request: DeleteGroupsRequest,
    version: i16,
    client: ClientInfo,
) -> DeleteGroupsResponse {
    let mut response = DeleteGroupsResponse::default();
    for (owner, groups_names) in split_by_coordinator(shard, request.groups_names.clone(), |group| group.to_string()) {
        let part = request.clone().with_groups_names(groups_names);
        match dispatch_part(shard, owner, RequestKind::DeleteGroups(part.clone()), version, &client).await {
            Some(ResponseKind::DeleteGroups(answer)) => response.results.extend(answer.results),
            _ => {
                response.results.extend(part.groups_names.into_iter().map(|group| {
                    DeletableGroupResult::default().with_group_id(group).with_error_code(not_coordinator())
                }))
            }
        }
    }
    response
}

/// Groups `items` by the shard that coordinates each, in first-seen order.
fn split_by_coordinator<T>(shard: &Shard, items: Vec<T>, group_id: impl Fn(&T) -> String) -> Vec<(usize, Vec<T>)> {
    let mut parts: Vec<(usize, Vec<T>)> = Vec::new();
    for item in items {
        let owner = coordinator_of(shard, &group_id(&item));
        match parts.iter_mut().find(|(shard_id, _)| *shard_id == owner) {
            Some((_, part)) => part.push(item),
            None => parts.push((owner, vec![item])),
        }
    }
    parts
}

/// Handles the part of a multi-group request whose groups one shard
/// coordinates: here, forwarded (shared listener), or None for NOT_COORDINATOR.
async fn dispatch_part(
    shard: &Rc<Shard>,
    owner: usize,
    body: RequestKind,
    version: i16,
    client: &ClientInfo,
) -> Option<ResponseKind> {
    if owner == shard.id {
        handle_forwarded(shard, body, version, client.clone()).await
    } else if shard.config.listener_mode == ListenerMode::Shared {
        forward(shard, owner, body, version, client.clone()).await
    } else {
        None
    }
}

/// Lists the groups this shard coordinates. Admin clients send ListGroups to
/// every broker and merge the responses, so each shard lists its own.
pub async fn list_groups(shard: &Rc<Shard>, request: ListGroupsRequest, version: i16) -> ListGroupsResponse {
    shard.groups.list_groups(request, version).await
}

pub async fn init_producer_id(
    shard: &Rc<Shard>,
    request: InitProducerIdRequest,
    version: i16,
) -> InitProducerIdResponse {
    shard.call(0, |reply| ShardMessage::InitProducerId { request, version, reply }).await.unwrap_or_else(|| {
        InitProducerIdResponse::default().with_error_code(ResponseError::CoordinatorNotAvailable.code())
    })
}
