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

/// Routing decision for a single-group request.
enum Route<Req, Resp> {
    /// This shard coordinates the group.
    Local(Req),
    /// Response already built, by the coordinating shard or as NOT_COORDINATOR.
    Done(Resp),
}

/// Routes a single-group request. With per-shard listeners a request for
/// another shard's group gets NOT_COORDINATOR (clients then ask
/// FindCoordinator again); with a shared listener it is forwarded.
#[allow(clippy::too_many_arguments)] // one value per routing decision; a struct would only rename them
async fn route<Req, Resp>(
    shard: &Rc<Shard>,
    group_id: &str,
    request: Req,
    version: i16,
    client: ClientInfo,
    wrap: fn(Req) -> RequestKind,
    unwrap: fn(ResponseKind) -> Option<Resp>,
    refuse: impl FnOnce(&Req) -> Resp,
) -> Route<Req, Resp> {
    let owner = coordinator_of(shard, group_id);
    if owner == shard.id {
        return Route::Local(request);
    }
    if shard.config.listener_mode == ListenerMode::PerShard {
        return Route::Done(refuse(&request));
    }
    let fallback = refuse(&request);
    let response = forward(shard, owner, wrap(request), version, client).await.and_then(unwrap);
    Route::Done(response.unwrap_or(fallback))
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

/// Handles a group request forwarded by another shard; this shard
/// coordinates every group it names.
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

pub async fn join_group(
    shard: &Rc<Shard>,
    request: JoinGroupRequest,
    version: i16,
    client: ClientInfo,
) -> JoinGroupResponse {
    let group_id = request.group_id.to_string();
    let routed = route(
        shard,
        &group_id,
        request,
        version,
        client.clone(),
        RequestKind::JoinGroup,
        |response| match response {
            ResponseKind::JoinGroup(response) => Some(response),
            _ => None,
        },
        |request| {
            JoinGroupResponse::default()
                .with_error_code(not_coordinator())
                .with_generation_id(-1)
                .with_member_id(request.member_id.clone())
        },
    )
    .await;
    match routed {
        Route::Local(request) => shard.groups.join_group_from(request, version, client).await,
        Route::Done(response) => response,
    }
}

pub async fn sync_group(
    shard: &Rc<Shard>,
    request: SyncGroupRequest,
    version: i16,
    client: ClientInfo,
) -> SyncGroupResponse {
    let group_id = request.group_id.to_string();
    let routed = route(
        shard,
        &group_id,
        request,
        version,
        client,
        RequestKind::SyncGroup,
        |response| match response {
            ResponseKind::SyncGroup(response) => Some(response),
            _ => None,
        },
        |_| SyncGroupResponse::default().with_error_code(not_coordinator()),
    )
    .await;
    match routed {
        Route::Local(request) => shard.groups.sync_group(request, version).await,
        Route::Done(response) => response,
    }
}

pub async fn heartbeat(
    shard: &Rc<Shard>,
    request: HeartbeatRequest,
    version: i16,
    client: ClientInfo,
) -> HeartbeatResponse {
    let group_id = request.group_id.to_string();
    let routed = route(
        shard,
        &group_id,
        request,
        version,
        client,
        RequestKind::Heartbeat,
        |response| match response {
            ResponseKind::Heartbeat(response) => Some(response),
            _ => None,
        },
        |_| HeartbeatResponse::default().with_error_code(not_coordinator()),
    )
    .await;
    match routed {
        Route::Local(request) => shard.groups.heartbeat(request, version).await,
        Route::Done(response) => response,
    }
}

pub async fn leave_group(
    shard: &Rc<Shard>,
    request: LeaveGroupRequest,
    version: i16,
    client: ClientInfo,
) -> LeaveGroupResponse {
    let group_id = request.group_id.to_string();
    let routed = route(
        shard,
        &group_id,
        request,
        version,
        client,
        RequestKind::LeaveGroup,
        |response| match response {
            ResponseKind::LeaveGroup(response) => Some(response),
            _ => None,
        },
        |_| LeaveGroupResponse::default().with_error_code(not_coordinator()),
    )
    .await;
    match routed {
        Route::Local(request) => shard.groups.leave_group(request, version).await,
        Route::Done(response) => response,
    }
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

pub async fn offset_commit(
    shard: &Rc<Shard>,
    request: OffsetCommitRequest,
    version: i16,
    client: ClientInfo,
) -> OffsetCommitResponse {
    let group_id = request.group_id.to_string();
    let routed = route(
        shard,
        &group_id,
        request,
        version,
        client,
        RequestKind::OffsetCommit,
        |response| match response {
            ResponseKind::OffsetCommit(response) => Some(response),
            _ => None,
        },
        offset_commit_refused,
    )
    .await;
    match routed {
        Route::Local(request) => shard.groups.offset_commit(request, version).await,
        Route::Done(response) => response,
    }
}

/// First OffsetFetch version that names several groups.
const OFFSET_FETCH_FIRST_MULTI_GROUP_VERSION: i16 = 8;

pub async fn offset_fetch(
    shard: &Rc<Shard>,
    request: OffsetFetchRequest,
    version: i16,
    client: ClientInfo,
) -> OffsetFetchResponse {
    if version < OFFSET_FETCH_FIRST_MULTI_GROUP_VERSION {
        let group_id = request.group_id.to_string();
        let routed = route(
            shard,
            &group_id,
            request,
            version,
            client,
            RequestKind::OffsetFetch,
            |response| match response {
                ResponseKind::OffsetFetch(response) => Some(response),
                _ => None,
            },
            |_| OffsetFetchResponse::default().with_error_code(not_coordinator()),
        )
        .await;
        return match routed {
            Route::Local(request) => shard.groups.offset_fetch(request, version).await,
            Route::Done(response) => response,
        };
    }

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
