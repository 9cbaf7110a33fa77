//! Coordinator scenarios with simulated members, driven through the public
//! handlers on a real executor and a real journal in a temporary directory.
//!
//! Every request passes through the kafka-protocol encoder and decoder at
//! the version under test, and every response is encoded at that version, so
//! a field set outside its versions fails the test.

use std::cell::Cell;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::leave_group_request::MemberIdentity;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::{
    OffsetFetchRequestGroup, OffsetFetchRequestTopic, OffsetFetchRequestTopics,
};
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

use super::journal::{Record, JOURNAL_FILE_NAME};
use super::state::{Group, GroupState, Member};
use super::*;
use crate::runtime::{self, block_on, spawn_local};

const CONSUMER: &str = "consumer";
/// Upper bound on any wait for a timer-driven change in these tests.
const WAIT_MAX: Duration = Duration::from_secs(10);

fn text(value: &str) -> StrBytes {
    StrBytes::from_string(value.to_string())
}

fn group_id(value: &str) -> GroupId {
    GroupId(text(value))
}

fn test_config() -> GroupConfig {
    GroupConfig {
        group_min_session_timeout_ms: 10,
        group_max_session_timeout_ms: 60_000,
        ..GroupConfig::default()
    }
}

/// Runs a test body on a fresh executor with a temporary directory.
fn run<F, Fut>(body: F)
where
    F: FnOnce(PathBuf) -> Fut + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().to_path_buf();
    block_on(body(path));
    drop(dir);
}

async fn open(dir: &Path, config: GroupConfig) -> GroupCoordinator {
    GroupCoordinator::open(dir, config)
        .await
        .expect("open coordinator")
}

/// Passes a request through the wire format of `version`.
fn wire<T: Encodable + Decodable>(request: T, version: i16) -> T {
    let mut buf = BytesMut::new();
    request
        .encode(&mut buf, version)
        .unwrap_or_else(|error| panic!("request does not encode at v{version}: {error}"));
    let mut bytes = buf.freeze();
    T::decode(&mut bytes, version)
        .unwrap_or_else(|error| panic!("request does not decode at v{version}: {error}"))
}

fn assert_encodes<T: Encodable>(response: &T, version: i16, api: &str) {
    let mut buf = BytesMut::new();
    response
        .encode(&mut buf, version)
        .unwrap_or_else(|error| panic!("{api} v{version} response does not encode: {error}"));
}

fn code(error: ResponseError) -> i16 {
    error.code()
}

/// Polls `condition` until it holds; fails the test after [`WAIT_MAX`].
async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT_MAX;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        runtime::sleep(Duration::from_millis(2)).await;
    }
}

async fn finish<T: 'static>(task: runtime::Task<T>, what: &str) -> T {
    runtime::timeout(WAIT_MAX, task)
        .await
        .unwrap_or_else(|| panic!("timed out waiting for {what}"))
}

fn group_state(coordinator: &GroupCoordinator, group: &str) -> Option<GroupState> {
    coordinator
        .inner
        .borrow()
        .groups
        .get(group)
        .map(|group| group.state)
}

fn awaiting_sync(coordinator: &GroupCoordinator, group: &str, member_id: &str) -> bool {
    coordinator
        .inner
        .borrow()
        .groups
        .get(group)
        .and_then(|group| group.members.get(member_id))
        .is_some_and(|member| member.awaiting_sync.is_some())
}

fn awaiting_join(coordinator: &GroupCoordinator, group: &str, member_id: &str) -> bool {
    coordinator
        .inner
        .borrow()
        .groups
        .get(group)
        .and_then(|group| group.members.get(member_id))
        .is_some_and(|member| member.awaiting_join.is_some())
}

/// A simulated member's JoinGroup settings.
#[derive(Clone)]
struct JoinSpec {
    group: String,
    member_id: String,
    instance_id: Option<String>,
    protocol_type: String,
    protocols: Vec<(String, Bytes)>,
    session_timeout_ms: i32,
    rebalance_timeout_ms: i32,
}

impl JoinSpec {
    fn new(group: &str) -> Self {
        JoinSpec {
            group: group.to_string(),
            member_id: String::new(),
            instance_id: None,
            protocol_type: CONSUMER.to_string(),
            protocols: vec![("range".to_string(), Bytes::from_static(b"range-metadata"))],
            session_timeout_ms: 10_000,
            rebalance_timeout_ms: 10_000,
        }
    }

    fn member(mut self, member_id: &str) -> Self {
        self.member_id = member_id.to_string();
        self
    }

    fn instance(mut self, instance_id: &str) -> Self {
        self.instance_id = Some(instance_id.to_string());
        self
    }

    fn protocols(mut self, protocols: &[(&str, &[u8])]) -> Self {
        self.protocols = protocols
            .iter()
            .map(|(name, metadata)| (name.to_string(), Bytes::copy_from_slice(metadata)))
            .collect();
        self
    }

    fn timeouts(mut self, session_timeout_ms: i32, rebalance_timeout_ms: i32) -> Self {
        self.session_timeout_ms = session_timeout_ms;
        self.rebalance_timeout_ms = rebalance_timeout_ms;
        self
    }

    fn request(&self, version: i16) -> JoinGroupRequest {
        let mut request = JoinGroupRequest::default();
        request.group_id = group_id(&self.group);
        request.session_timeout_ms = self.session_timeout_ms;
        if version >= 1 {
            request.rebalance_timeout_ms = self.rebalance_timeout_ms;
        }
        request.member_id = text(&self.member_id);
        if version >= 5 {
            request.group_instance_id = self.instance_id.as_deref().map(text);
        }
        request.protocol_type = text(&self.protocol_type);
        request.protocols = self
            .protocols
            .iter()
            .map(|(name, metadata)| {
                let mut protocol = JoinGroupRequestProtocol::default();
                protocol.name = text(name);
                protocol.metadata = metadata.clone();
                protocol
            })
            .collect();
        wire(request, version)
    }
}

async fn join(coordinator: &GroupCoordinator, spec: &JoinSpec, version: i16) -> JoinGroupResponse {
    let response = coordinator.join_group(spec.request(version), version).await;
    assert_encodes(&response, version, "JoinGroup");
    response
}

fn spawn_join(
    coordinator: &GroupCoordinator,
    spec: &JoinSpec,
    version: i16,
) -> runtime::Task<JoinGroupResponse> {
    let coordinator = coordinator.clone();
    let spec = spec.clone();
    spawn_local(async move { join(&coordinator, &spec, version).await })
}

/// Gets a member id through the MEMBER_ID_REQUIRED round trip of JoinGroup v4+.
async fn member_id_for(coordinator: &GroupCoordinator, spec: &JoinSpec) -> String {
    let response = join(coordinator, spec, 5).await;
    assert_eq!(response.error_code, code(ResponseError::MemberIdRequired));
    assert_eq!(response.generation_id, -1);
    let member_id = response.member_id.to_string();
    assert!(!member_id.is_empty());
    member_id
}

fn sync_request(
    group: &str,
    generation_id: i32,
    member_id: &str,
    assignments: &[(&str, &[u8])],
    version: i16,
) -> SyncGroupRequest {
    let mut request = SyncGroupRequest::default();
    request.group_id = group_id(group);
    request.generation_id = generation_id;
    request.member_id = text(member_id);
    if version >= 5 {
        request.protocol_type = Some(text(CONSUMER));
    }
    request.assignments = assignments
        .iter()
        .map(|(member, assignment)| {
            let mut entry = SyncGroupRequestAssignment::default();
            entry.member_id = text(member);
            entry.assignment = Bytes::copy_from_slice(assignment);
            entry
        })
        .collect();
    wire(request, version)
}

async fn sync(
    coordinator: &GroupCoordinator,
    request: SyncGroupRequest,
    version: i16,
) -> SyncGroupResponse {
    let response = coordinator.sync_group(request, version).await;
    assert_encodes(&response, version, "SyncGroup");
    response
}

fn spawn_sync(
    coordinator: &GroupCoordinator,
    request: SyncGroupRequest,
    version: i16,
) -> runtime::Task<SyncGroupResponse> {
    let coordinator = coordinator.clone();
    spawn_local(async move { sync(&coordinator, request, version).await })
}

async fn heartbeat_as(
    coordinator: &GroupCoordinator,
    group: &str,
    generation_id: i32,
    member_id: &str,
    instance_id: Option<&str>,
    version: i16,
) -> i16 {
    let mut request = HeartbeatRequest::default();
    request.group_id = group_id(group);
    request.generation_id = generation_id;
    request.member_id = text(member_id);
    if version >= 3 {
        request.group_instance_id = instance_id.map(text);
    }
    let response = coordinator.heartbeat(wire(request, version), version).await;
    assert_encodes(&response, version, "Heartbeat");
    response.error_code
}

async fn heartbeat(
    coordinator: &GroupCoordinator,
    group: &str,
    generation_id: i32,
    member_id: &str,
) -> i16 {
    heartbeat_as(coordinator, group, generation_id, member_id, None, 4).await
}

async fn leave(
    coordinator: &GroupCoordinator,
    group: &str,
    member_ids: &[&str],
    version: i16,
) -> LeaveGroupResponse {
    let mut request = LeaveGroupRequest::default();
    request.group_id = group_id(group);
    if version >= 3 {
        request.members = member_ids
            .iter()
            .map(|member_id| {
                let mut member = MemberIdentity::default();
                member.member_id = text(member_id);
                member
            })
            .collect();
    } else {
        request.member_id = text(member_ids[0]);
    }
    let response = coordinator
        .leave_group(wire(request, version), version)
        .await;
    assert_encodes(&response, version, "LeaveGroup");
    response
}

/// A group made Stable by a full join and sync round.
struct StableGroup {
    members: Vec<String>,
    leader: String,
    generation_id: i32,
}

/// Joins `specs.len()` new members concurrently (v5, with the member-id
/// round trip) and completes the sync round with assignment `a-<member id>`.
async fn stable_group(coordinator: &GroupCoordinator, specs: &[JoinSpec]) -> StableGroup {
    let group = specs[0].group.clone();
    let mut members = Vec::new();
    for spec in specs {
        members.push(member_id_for(coordinator, spec).await);
    }
    let joins: Vec<_> = specs
        .iter()
        .zip(&members)
        .map(|(spec, member_id)| spawn_join(coordinator, &spec.clone().member(member_id), 5))
        .collect();
    let mut responses = Vec::new();
    for task in joins {
        responses.push(finish(task, "join of the initial members").await);
    }
    for response in &responses {
        assert_eq!(response.error_code, 0, "join failed: {response:?}");
    }
    let generation_id = responses[0].generation_id;
    let leader = responses[0].leader.to_string();

    let assignments: Vec<(String, Vec<u8>)> = members
        .iter()
        .map(|member_id| (member_id.clone(), format!("a-{member_id}").into_bytes()))
        .collect();
    let assignment_refs: Vec<(&str, &[u8])> = assignments
        .iter()
        .map(|(member_id, assignment)| (member_id.as_str(), assignment.as_slice()))
        .collect();
    let mut follower_syncs = Vec::new();
    for member_id in members.iter().filter(|member_id| **member_id != leader) {
        follower_syncs.push(spawn_sync(
            coordinator,
            sync_request(&group, generation_id, member_id, &[], 5),
            5,
        ));
        wait_until("follower waits in SyncGroup", || {
            awaiting_sync(coordinator, &group, member_id)
        })
        .await;
    }
    let leader_sync = sync(
        coordinator,
        sync_request(&group, generation_id, &leader, &assignment_refs, 5),
        5,
    )
    .await;
    assert_eq!(leader_sync.error_code, 0);
    for task in follower_syncs {
        assert_eq!(finish(task, "follower sync").await.error_code, 0);
    }
    assert_eq!(group_state(coordinator, &group), Some(GroupState::Stable));
    StableGroup {
        members,
        leader,
        generation_id,
    }
}

fn commit_request(
    group: &str,
    generation_id: i32,
    member_id: &str,
    offsets: &[(&str, i32, i64, &str)],
    version: i16,
) -> OffsetCommitRequest {
    let mut request = OffsetCommitRequest::default();
    request.group_id = group_id(group);
    request.generation_id_or_member_epoch = generation_id;
    request.member_id = text(member_id);
    let mut topics: Vec<OffsetCommitRequestTopic> = Vec::new();
    for (topic, partition, offset, metadata) in offsets {
        let mut entry = OffsetCommitRequestPartition::default();
        entry.partition_index = *partition;
        entry.committed_offset = *offset;
        entry.committed_metadata = Some(text(metadata));
        if version >= 6 {
            entry.committed_leader_epoch = 4;
        }
        match topics
            .iter_mut()
            .find(|existing| existing.name.0.as_str() == *topic)
        {
            Some(existing) => existing.partitions.push(entry),
            None => {
                let mut new_topic = OffsetCommitRequestTopic::default();
                new_topic.name = TopicName(text(topic));
                new_topic.partitions.push(entry);
                topics.push(new_topic);
            }
        }
    }
    request.topics = topics;
    wire(request, version)
}

/// Commits offsets and returns each partition's error code, in request order.
async fn commit(
    coordinator: &GroupCoordinator,
    group: &str,
    generation_id: i32,
    member_id: &str,
    offsets: &[(&str, i32, i64, &str)],
    version: i16,
) -> Vec<i16> {
    let request = commit_request(group, generation_id, member_id, offsets, version);
    let response = coordinator.offset_commit(request, version).await;
    assert_encodes(&response, version, "OffsetCommit");
    response
        .topics
        .iter()
        .flat_map(|topic| {
            topic
                .partitions
                .iter()
                .map(|partition| partition.error_code)
        })
        .collect()
}

/// Fetched offsets flattened to (topic, partition, offset, metadata, error).
type FetchedRow = (String, i32, i64, String, i16);

/// Fetches offsets of one group with a v1-v7 request.
async fn fetch(
    coordinator: &GroupCoordinator,
    group: &str,
    topics: Option<&[(&str, &[i32])]>,
    version: i16,
) -> (i16, Vec<FetchedRow>, Vec<i32>) {
    let mut request = OffsetFetchRequest::default();
    request.group_id = group_id(group);
    request.topics = topics.map(|topics| {
        topics
            .iter()
            .map(|(name, partitions)| {
                let mut topic = OffsetFetchRequestTopic::default();
                topic.name = TopicName(text(name));
                topic.partition_indexes = partitions.to_vec();
                topic
            })
            .collect()
    });
    let response = coordinator
        .offset_fetch(wire(request, version), version)
        .await;
    assert_encodes(&response, version, "OffsetFetch");
    let mut rows = Vec::new();
    let mut epochs = Vec::new();
    for topic in &response.topics {
        for partition in &topic.partitions {
            rows.push((
                topic.name.0.to_string(),
                partition.partition_index,
                partition.committed_offset,
                partition
                    .metadata
                    .as_ref()
                    .map(|m| m.to_string())
                    .unwrap_or_default(),
                partition.error_code,
            ));
            epochs.push(partition.committed_leader_epoch);
        }
    }
    (response.error_code, rows, epochs)
}

fn row(topic: &str, partition: i32, offset: i64, metadata: &str) -> FetchedRow {
    (
        topic.to_string(),
        partition,
        offset,
        metadata.to_string(),
        0,
    )
}

async fn describe(
    coordinator: &GroupCoordinator,
    groups: &[&str],
    version: i16,
) -> DescribeGroupsResponse {
    let mut request = DescribeGroupsRequest::default();
    request.groups = groups.iter().map(|group| group_id(group)).collect();
    if version >= 3 {
        request.include_authorized_operations = true;
    }
    let response = coordinator
        .describe_groups(wire(request, version), version)
        .await;
    assert_encodes(&response, version, "DescribeGroups");
    response
}

async fn list(
    coordinator: &GroupCoordinator,
    states: &[&str],
    types: &[&str],
    version: i16,
) -> Vec<(String, String, String)> {
    let mut request = ListGroupsRequest::default();
    if version >= 4 {
        request.states_filter = states.iter().map(|state| text(state)).collect();
    }
    if version >= 5 {
        request.types_filter = types.iter().map(|kind| text(kind)).collect();
    }
    let response = coordinator
        .list_groups(wire(request, version), version)
        .await;
    assert_encodes(&response, version, "ListGroups");
    assert_eq!(response.error_code, 0);
    response
        .groups
        .iter()
        .map(|group| {
            (
                group.group_id.0.to_string(),
                group.protocol_type.to_string(),
                group.group_state.to_string(),
            )
        })
        .collect()
}

async fn delete(
    coordinator: &GroupCoordinator,
    groups: &[&str],
    version: i16,
) -> Vec<(String, i16)> {
    let mut request = DeleteGroupsRequest::default();
    request.groups_names = groups.iter().map(|group| group_id(group)).collect();
    let response = coordinator
        .delete_groups(wire(request, version), version)
        .await;
    assert_encodes(&response, version, "DeleteGroups");
    response
        .results
        .iter()
        .map(|result| (result.group_id.0.to_string(), result.error_code))
        .collect()
}

#[test]
fn join_sync_round_with_member_id_required() {
    run(|dir| async move {
        let coordinator = open(&dir, test_config()).await;
        let spec = JoinSpec::new("g");

        let member_id = member_id_for(&coordinator, &spec).await;
        let joined = join(&coordinator, &spec.clone().member(&member_id), 5).await;
        assert_eq!(joined.error_code, 0);
        assert_eq!(joined.generation_id, 1);
        assert_eq!(joined.member_id.as_str(), member_id);
        assert_eq!(joined.leader.as_str(), member_id);
        assert_eq!(
            joined.protocol_name.as_ref().map(|name| name.as_str()),
            Some("range")
        );
        assert_eq!(joined.members.len(), 1);
        assert_eq!(joined.members[0].member_id.as_str(), member_id);
        assert_eq!(
            joined.members[0].metadata,
            Bytes::from_static(b"range-metadata")
        );
        assert_eq!(
            group_state(&coordinator, "g"),
            Some(GroupState::CompletingRebalance)
        );

        let synced = sync(
            &coordinator,
            sync_request("g", 1, &member_id, &[(&member_id, b"assignment-1")], 5),
            5,
        )
        .await;
        assert_eq!(synced.error_code, 0);
        assert_eq!(synced.assignment, Bytes::from_static(b"assignment-1"));
        assert_eq!(
            synced.protocol_type.as_ref().map(|value| value.as_str()),
            Some(CONSUMER)
        );
        assert_eq!(
            synced.protocol_name.as_ref().map(|value| value.as_str()),
            Some("range")
        );
        assert_eq!(group_state(&coordinator, "g"), Some(GroupState::Stable));
        assert_eq!(heartbeat(&coordinator, "g", 1, &member_id).await, 0);

        // A follower-style rejoin with unchanged protocols returns the current generation.
        let again = join(&coordinator, &spec.clone().member(&member_id), 5).await;
        assert_eq!(again.error_code, 0);
        assert_eq!(
            again.generation_id, 2,
            "the leader's rejoin starts a rebalance"
        );
    });
}

#[test]
fn join_v3_assigns_member_id() {
    run(|dir| async move {
        let coordinator = open(&dir, test_config()).await;
        let joined = join(&coordinator, &JoinSpec::new("g"), 3).await;
        assert_eq!(joined.error_code, 0);
        assert_eq!(joined.generation_id, 1);
        assert!(!joined.member_id.is_empty());
        assert_eq!(joined.leader, joined.member_id);

        let v0 = join(&coordinator, &JoinSpec::new("h"), 0).await;
        assert_eq!(v0.error_code, 0);
        assert_eq!(v0.generation_id, 1);
    });
}

#[test]
fn second_member_triggers_rebalance() {
    run(|dir| async move {
        let coordinator = open(&dir, test_config()).await;
        let spec = JoinSpec::new("g");
        let first = stable_group(&coordinator, std::slice::from_ref(&spec)).await;
        let m1 = first.members[0].clone();
        assert_eq!(first.generation_id, 1);

        let m2 = member_id_for(&coordinator, &spec).await;
        let join2 = spawn_join(&coordinator, &spec.clone().member(&m2), 5);
        wait_until("the group rebalances", || {
            group_state(&coordinator, "g") == Some(GroupState::PreparingRebalance)
        })
        .await;
        assert_eq!(
            heartbeat(&coordinator, "g", 1, &m1).await,
            code(ResponseError::RebalanceInProgress)
        );

        let rejoin1 = join(&coordinator, &spec.clone().member(&m1), 5).await;
        let joined2 = finish(join2, "second member's join").await;
        assert_eq!(rejoin1.error_code, 0);
        assert_eq!(joined2.error_code, 0);
        assert_eq!(rejoin1.generation_id, 2);
        assert_eq!(joined2.generation_id, 2);
        assert_eq!(rejoin1.leader.as_str(), m1);
        assert_eq!(joined2.leader.as_str(), m1);
        let mut listed: Vec<String> = rejoin1
            .members
            .iter()
            .map(|member| member.member_id.to_string())
            .collect();
        listed.sort();
        let mut expected = vec![m1.clone(), m2.clone()];
        expected.sort();
        assert_eq!(listed, expected);
        assert!(
            joined2.members.is_empty(),
            "only the leader receives the member list"
        );

        let sync2 = spawn_sync(&coordinator, sync_request("g", 2, &m2, &[], 5), 5);
        wait_until("the follower waits in SyncGroup", || {
            awaiting_sync(&coordinator, "g", &m2)
        })
        .await;
        let sync1 = sync(
            &coordinator,
            sync_request("g", 2, &m1, &[(&m1, b"p0"), (&m2, b"p1")], 5),
            5,
        )
        .await;
        assert_eq!(sync1.assignment, Bytes::from_static(b"p0"));
        let synced2 = finish(sync2, "follower sync").await;
        assert_eq!(synced2.error_code, 0);
        assert_eq!(synced2.assignment, Bytes::from_static(b"p1"));
        assert_eq!(group_state(&coordinator, "g"), Some(GroupState::Stable));

        // A follower that rejoins with unchanged protocols gets the current generation.
        let follower_rejoin = join(&coordinator, &spec.clone().member(&m2), 5).await;
        assert_eq!(follower_rejoin.error_code, 0);
        assert_eq!(follower_rejoin.generation_id, 2);
        assert!(follower_rejoin.members.is_empty());
        assert_eq!(group_state(&coordinator, "g"), Some(GroupState::Stable));
    });
}

#[test]
fn leave_group_triggers_rebalance() {
    run(|dir| async move {
        let coordinator = open(&dir, test_config()).await;
        let spec = JoinSpec::new("g");
        let stable = stable_group(&coordinator, &[spec.clone(), spec.clone()]).await;
        let leader = stable.leader.clone();
        let follower = stable
            .members
            .iter()
            .find(|m| **m != leader)
            .expect("follower")
            .clone();

        let left = leave(&coordinator, "g", &[&follower], 3).await;
        assert_eq!(left.error_code, 0);
        assert_eq!(left.members.len(), 1);
        assert_eq!(left.members[0].member_id.as_str(), follower);
        assert_eq!(left.members[0].error_code, 0);
        assert_eq!(
            heartbeat(&coordinator, "g", stable.generation_id, &leader).await,
            code(ResponseError::RebalanceInProgress)
        );
        assert_eq!(
            heartbeat(&coordinator, "g", stable.generation_id, &follower).await,
            code(ResponseError::UnknownMemberId)
        );

        let rejoined = join(&coordinator, &spec.clone().member(&leader), 5).await;
        assert_eq!(rejoined.generation_id, stable.generation_id + 1);
        assert_eq!(rejoined.members.len(), 1);

        let unknown = leave(&coordinator, "g", &["nobody"], 3).await;
        assert_eq!(unknown.error_code, 0);
        assert_eq!(
            unknown.members[0].error_code,
            code(ResponseError::UnknownMemberId)
        );
        let unknown_v0 = leave(&coordinator, "g", &["nobody"], 0).await;
        assert_eq!(unknown_v0.error_code, code(ResponseError::UnknownMemberId));
        let unknown_group = leave(&coordinator, "no-such-group", &["nobody"], 1).await;
        assert_eq!(
            unknown_group.error_code,
            code(ResponseError::UnknownMemberId)
        );

        // The last member leaving empties the group.
        let last = leave(&coordinator, "g", &[&leader], 2).await;
        assert_eq!(last.error_code, 0);
        assert_eq!(group_state(&coordinator, "g"), Some(GroupState::Empty));
    });
}

#[test]
fn session_timeout_removes_silent_member() {
    run(|dir| async move {
        let coordinator = open(&dir, test_config()).await;
        let spec = JoinSpec::new("g").timeouts(300, 10_000);
        let stable = stable_group(&coordinator, &[spec.clone(), spec.clone()]).await;
        let (alive, silent) = (stable.members[0].clone(), stable.members[1].clone());

        // Only `alive` heartbeats, at a third of the session timeout.
        let deadline = Instant::now() + WAIT_MAX;
        loop {
            let error = heartbeat(&coordinator, "g", stable.generation_id, &alive).await;
            if error == code(ResponseError::RebalanceInProgress) {
                break;
            }
            assert_eq!(error, 0);
            assert!(Instant::now() < deadline, "the silent member never expired");
            runtime::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            heartbeat(&coordinator, "g", stable.generation_id, &silent).await,
            code(ResponseError::UnknownMemberId)
        );

        let rejoined = join(&coordinator, &spec.clone().member(&alive), 5).await;
        assert_eq!(rejoined.error_code, 0);
        assert_eq!(rejoined.generation_id, stable.generation_id + 1);
        assert_eq!(rejoined.members.len(), 1);

        // Once the last member goes silent too, the group ends up Empty.
        wait_until("the group is empty", || {
            group_state(&coordinator, "g") == Some(GroupState::Empty)
        })
        .await;
    });
}

#[test]
fn pending_member_expires_after_session_timeout() {
    run(|dir| async move {
        let coordinator = open(&dir, test_config()).await;
        let spec = JoinSpec::new("g").timeouts(100, 10_000);
        let pending = member_id_for(&coordinator, &spec).await;
        wait_until("the pending member expires", || {
            coordinator.inner.borrow().groups["g"]
                .pending_members
                .is_empty()
        })
        .await;
        let late = join(&coordinator, &spec.clone().member(&pending), 5).await;
        assert_eq!(late.error_code, code(ResponseError::UnknownMemberId));
    });
}

#[test]
fn rebalance_timeout_drops_members_that_did_not_rejoin() {
    run(|dir| async move {
        let coordinator = open(&dir, test_config()).await;
        let spec = JoinSpec::new("g").timeouts(10_000, 300);
        let stable = stable_group(&coordinator, &[spec.clone(), spec.clone()]).await;
        let (m1, m2) = (stable.members[0].clone(), stable.members[1].clone());

        let m3 = member_id_for(&coordinator, &spec).await;
        let join3 = spawn_join(&coordinator, &spec.clone().member(&m3), 5);
        let join1 = spawn_join(&coordinator, &spec.clone().member(&m1), 5);

        let started = Instant::now();
        let joined1 = finish(join1, "rejoin of m1").await;
        let joined3 = finish(join3, "join of m3").await;
        assert!(
            started.elapsed() >= Duration::from_millis(250),
            "completed before the rebalance timeout"
        );
        assert_eq!(joined1.error_code, 0);
        assert_eq!(joined3.error_code, 0);
        assert_eq!(joined1.generation_id, stable.generation_id + 1);
        let leader_view = if joined1.leader.as_str() == m1 {
            &joined1
        } else {
            &joined3
        };
        let mut listed: Vec<String> = leader_view
            .members
            .iter()
            .map(|m| m.member_id.to_string())
            .collect();
        listed.sort();
        let mut expected = vec![m1.clone(), m3.clone()];
        expected.sort();
        assert_eq!(listed, expected);
        assert_eq!(
            heartbeat(&coordinator, "g", stable.generation_id, &m2).await,
            code(ResponseError::UnknownMemberId)
        );
    });
}

#[test]
fn member_without_sync_is_removed() {
    run(|dir| async move {
        let coordinator = open(&dir, test_config()).await;
        let spec = JoinSpec::new("g").timeouts(10_000, 300);
        let m1 = member_id_for(&coordinator, &spec).await;
        let m2 = member_id_for(&coordinator, &spec).await;
        let join1 = spawn_join(&coordinator, &spec.clone().member(&m1), 5);
        let join2 = spawn_join(&coordinator, &spec.clone().member(&m2), 5);
        let joined1 = finish(join1, "join of m1").await;
        finish(join2, "join of m2").await;
        let leader = joined1.leader.to_string();
        let follower = if leader == m1 { m2.clone() } else { m1.clone() };

        let synced = sync(&coordinator, sync_request("g", 1, &leader, &[], 5), 5).await;
        assert_eq!(synced.error_code, 0);

        // The follower never sends SyncGroup, so it is removed and the group rebalances.
        wait_until("the follower is removed", || {
            !coordinator.inner.borrow().groups["g"]
                .members
                .contains_key(&follower)
        })
        .await;
        assert_eq!(
            heartbeat(&coordinator, "g", 1, &leader).await,
            code(ResponseError::RebalanceInProgress)
        );
        let rejoined = join(&coordinator, &spec.clone().member(&leader), 5).await;
        assert_eq!(rejoined.generation_id, 2);
        assert_eq!(rejoined.members.len(), 1);
    });
}

#[test]
fn static_member_rejoin_replaces_old_member_id() {
    run(|dir| async move {
        let coordinator = open(&dir, test_config()).await;
        let spec = JoinSpec::new("g").instance("instance-1");

        // Static members skip the member-id round trip.
        let joined = join(&coordinator, &spec, 5).await;
        assert_eq!(joined.error_code, 0);
        let old_id = joined.member_id.to_string();
        assert!(old_id.starts_with("instance-1-"), "{old_id}");
        assert_eq!(
            joined.members[0]
                .group_instance_id
                .as_ref()
                .map(|id| id.as_str()),
            Some("instance-1")
        );
        let synced = sync(
            &coordinator,
            sync_request("g", 1, &old_id, &[(&old_id, b"kept")], 5),
            5,
        )
        .await;
        assert_eq!(synced.error_code, 0);

        // Restarted with the same instance id and no member id: no rebalance.
        let rejoined = join(&coordinator, &spec, 5).await;
        assert_eq!(rejoined.error_code, 0);
        let new_id = rejoined.member_id.to_string();
        assert_ne!(new_id, old_id);
        assert_eq!(rejoined.generation_id, 1);
        assert_eq!(
            rejoined.leader.as_str(),
            old_id,
            "the old leader id keeps the member from reassigning"
        );
        assert!(rejoined.members.is_empty());
        assert_eq!(group_state(&coordinator, "g"), Some(GroupState::Stable));

        assert_eq!(
            heartbeat_as(&coordinator, "g", 1, &old_id, Some("instance-1"), 4).await,
            code(ResponseError::FencedInstanceId)
        );
        assert_eq!(
            heartbeat_as(&coordinator, "g", 1, &new_id, Some("instance-1"), 4).await,
            0
        );
        let resynced = sync(&coordinator, sync_request("g", 1, &new_id, &[], 5), 5).await;
        assert_eq!(resynced.error_code, 0);
        assert_eq!(resynced.assignment, Bytes::from_static(b"kept"));

        let described = describe(&coordinator, &["g"], 5).await;
        let members = &described.groups[0].members;
        assert_eq!(members.len(), 1);
        assert_eq!(members[0].member_id.as_str(), new_id);
        assert_eq!(
            members[0].group_instance_id.as_ref().map(|id| id.as_str()),
            Some("instance-1")
        );
    });
}

#[test]
fn static_rejoin_fences_waiting_old_member() {
    run(|dir| async move {
        let coordinator = open(&dir, test_config()).await;
        let static_spec = JoinSpec::new("g").instance("instance-1");
        let dynamic_spec = JoinSpec::new("g");
        let joined = join(&coordinator, &static_spec, 5).await;
        let old_id = joined.member_id.to_string();
        sync(&coordinator, sync_request("g", 1, &old_id, &[], 5), 5).await;

        // Two dynamic members arrive. The second stays pending for a while,
        // so the rebalance cannot complete and the static member's rejoin waits.
        let m2 = member_id_for(&coordinator, &dynamic_spec).await;
        let m3 = member_id_for(&coordinator, &dynamic_spec).await;
        let join2 = spawn_join(&coordinator, &dynamic_spec.clone().member(&m2), 5);
        wait_until("the group rebalances", || {
            group_state(&coordinator, "g") == Some(GroupState::PreparingRebalance)
        })
        .await;
        let waiting_old = spawn_join(&coordinator, &static_spec.clone().member(&old_id), 5);
        wait_until("the old static member waits", || {
            awaiting_join(&coordinator, "g", &old_id)
        })
        .await;

        // The same instance comes back without a member id: the old request is fenced.
        let replacement = spawn_join(&coordinator, &static_spec, 5);
        let fenced = finish(waiting_old, "fenced join").await;
        assert_eq!(fenced.error_code, code(ResponseError::FencedInstanceId));
        let joined3 = finish(
            spawn_join(&coordinator, &dynamic_spec.clone().member(&m3), 5),
            "m3 join",
        )
        .await;
        assert_eq!(joined3.error_code, 0);
        let replaced = finish(replacement, "replacement join").await;
        let joined2 = finish(join2, "dynamic join").await;
        assert_eq!(replaced.error_code, 0);
        assert_eq!(joined2.error_code, 0);
        assert_eq!(replaced.generation_id, 2);
        assert_ne!(replaced.member_id.as_str(), old_id);
    });
}

#[test]
fn stale_generation_and_unknown_member_are_rejected() {
    run(|dir| async move {
        let coordinator = open(&dir, test_config()).await;
        let spec = JoinSpec::new("g");
        let stable = stable_group(&coordinator, std::slice::from_ref(&spec)).await;
        let member = stable.members[0].clone();

        for generation in [0, 2, 99] {
            assert_eq!(
                heartbeat(&coordinator, "g", generation, &member).await,
                code(ResponseError::IllegalGeneration)
            );
        }
        assert_eq!(
            heartbeat(&coordinator, "g", 1, "stranger").await,
            code(ResponseError::UnknownMemberId)
        );
        assert_eq!(
            heartbeat(&coordinator, "nope", 1, &member).await,
            code(ResponseError::UnknownMemberId)
        );
        assert_eq!(
            heartbeat(&coordinator, "", 1, &member).await,
            code(ResponseError::InvalidGroupId)
        );

        let stale_sync = sync(&coordinator, sync_request("g", 5, &member, &[], 3), 3).await;
        assert_eq!(
            stale_sync.error_code,
            code(ResponseError::IllegalGeneration)
        );
        let mut wrong_protocol = sync_request("g", 1, &member, &[], 5);
        wrong_protocol.protocol_name = Some(text("roundrobin"));
        let inconsistent = sync(&coordinator, wrong_protocol, 5).await;
        assert_eq!(
            inconsistent.error_code,
            code(ResponseError::InconsistentGroupProtocol)
        );

        let stale_commit = commit(&coordinator, "g", 5, &member, &[("t", 0, 1, "")], 8).await;
        assert_eq!(stale_commit, vec![code(ResponseError::IllegalGeneration)]);
        let anonymous_commit = commit(&coordinator, "g", -1, "", &[("t", 0, 1, "")], 8).await;
        assert_eq!(anonymous_commit, vec![code(ResponseError::UnknownMemberId)]);
        let unknown_group_commit =
            commit(&coordinator, "other", 3, "someone", &[("t", 0, 1, "")], 8).await;
        assert_eq!(
            unknown_group_commit,
            vec![code(ResponseError::IllegalGeneration)]
        );

        let unknown_join = join(&coordinator, &JoinSpec::new("nope").member("someone"), 5).await;
        assert_eq!(
            unknown_join.error_code,
            code(ResponseError::UnknownMemberId)
        );
        let stranger_join = join(&coordinator, &spec.clone().member("stranger"), 5).await;
        assert_eq!(
            stranger_join.error_code,
            code(ResponseError::UnknownMemberId)
        );
    });
}

#[test]
fn join_validation_errors() {
    run(|dir| async move {
        let coordinator = open(&dir, test_config()).await;
        let spec = JoinSpec::new("g");

        let too_short = join(&coordinator, &spec.clone().timeouts(5, 1_000), 5).await;
        assert_eq!(
            too_short.error_code,
            code(ResponseError::InvalidSessionTimeout)
        );
        let too_long = join(&coordinator, &spec.clone().timeouts(60_001, 1_000), 5).await;
        assert_eq!(
            too_long.error_code,
            code(ResponseError::InvalidSessionTimeout)
        );
        let no_group = join(&coordinator, &JoinSpec::new(""), 5).await;
        assert_eq!(no_group.error_code, code(ResponseError::InvalidGroupId));
        let no_protocols = join(&coordinator, &spec.clone().protocols(&[]), 5).await;
        assert_eq!(
            no_protocols.error_code,
            code(ResponseError::InconsistentGroupProtocol)
        );

        stable_group(&coordinator, std::slice::from_ref(&spec)).await;
        let mut other_type = spec.clone();
        other_type.protocol_type = "connect".to_string();
        let wrong_type = join(&coordinator, &other_type, 5).await;
        assert_eq!(
            wrong_type.error_code,
            code(ResponseError::InconsistentGroupProtocol)
        );
        let unsupported = join(&coordinator, &spec.clone().protocols(&[("sticky", b"")]), 5).await;
        assert_eq!(
            unsupported.error_code,
            code(ResponseError::InconsistentGroupProtocol)
        );
    });
}

fn member(member_id: &str, protocols: &[&str]) -> Member {
    Member {
        member_id: member_id.to_string(),
        group_instance_id: None,
        client_id: String::new(),
        client_host: String::new(),
        rebalance_timeout_ms: 1_000,
        session_timeout_ms: 1_000,
        protocol_type: CONSUMER.to_string(),
        protocols: protocols
            .iter()
            .map(|name| (name.to_string(), Bytes::from(name.to_string())))
            .collect(),
        assignment: Bytes::new(),
        awaiting_join: None,
        awaiting_sync: None,
        is_new: false,
        heartbeat_deadline: Instant::now(),
    }
}

#[test]
fn protocol_selection_follows_member_preferences() {
    let mut group = Group::new("g".to_string());
    group.add_member(member("a", &["roundrobin", "range"]));
    group.add_member(member("b", &["range", "roundrobin"]));
    group.add_member(member("c", &["range", "roundrobin", "sticky"]));
    assert_eq!(
        group.select_protocol().as_deref(),
        Some("range"),
        "two of three prefer range"
    );

    let mut tied = Group::new("t".to_string());
    tied.add_member(member("a", &["roundrobin", "range"]));
    tied.add_member(member("b", &["range", "roundrobin"]));
    assert_eq!(
        tied.select_protocol().as_deref(),
        Some("roundrobin"),
        "a tie goes to the first member's choice"
    );

    let mut narrowed = Group::new("n".to_string());
    narrowed.add_member(member("a", &["sticky", "range"]));
    narrowed.add_member(member("b", &["sticky", "range"]));
    narrowed.add_member(member("c", &["range"]));
    assert_eq!(
        narrowed.select_protocol().as_deref(),
        Some("range"),
        "only common protocols count"
    );

    let incoming = [("sticky".to_string(), Bytes::new())];
    assert!(!narrowed.supports_protocols(CONSUMER, &incoming));
    let incoming = [("range".to_string(), Bytes::new())];
    assert!(narrowed.supports_protocols(CONSUMER, &incoming));
    assert!(!narrowed.supports_protocols("connect", &incoming));
}

#[test]
fn duplicate_join_answers_the_older_request() {
    run(|dir| async move {
        let coordinator = open(&dir, test_config()).await;
        let spec = JoinSpec::new("g");
        let stable = stable_group(&coordinator, &[spec.clone(), spec.clone()]).await;
        let (m1, m2) = (stable.members[0].clone(), stable.members[1].clone());

        let first = spawn_join(&coordinator, &spec.clone().member(&m1), 5);
        wait_until("m1 waits in JoinGroup", || {
            awaiting_join(&coordinator, "g", &m1)
        })
        .await;
        let second = spawn_join(&coordinator, &spec.clone().member(&m1), 5);
        let superseded = finish(first, "superseded join").await;
        assert_eq!(
            superseded.error_code,
            code(ResponseError::RebalanceInProgress)
        );

        let joined2 = join(&coordinator, &spec.clone().member(&m2), 5).await;
        let joined1 = finish(second, "second join").await;
        assert_eq!(joined1.error_code, 0);
        assert_eq!(joined2.error_code, 0);
        assert_eq!(joined1.generation_id, stable.generation_id + 1);
    });
}

#[test]
fn initial_rebalance_delay_gathers_members() {
    run(|dir| async move {
        let config = GroupConfig {
            group_initial_rebalance_delay_ms: 200,
            ..test_config()
        };
        let coordinator = open(&dir, config).await;
        let spec = JoinSpec::new("g");
        let join1 = spawn_join(&coordinator, &spec, 3);
        wait_until("the first member waits", || {
            group_state(&coordinator, "g") == Some(GroupState::PreparingRebalance)
        })
        .await;
        let join2 = spawn_join(&coordinator, &spec, 3);
        let joined1 = finish(join1, "first join").await;
        let joined2 = finish(join2, "second join").await;
        assert_eq!(joined1.generation_id, 1);
        assert_eq!(joined2.generation_id, 1);
        let leader_view = if joined1.leader == joined1.member_id {
            &joined1
        } else {
            &joined2
        };
        assert_eq!(leader_view.members.len(), 2);
    });
}

#[test]
fn close_answers_waiting_requests() {
    run(|dir| async move {
        let coordinator = open(&dir, test_config()).await;
        let spec = JoinSpec::new("g");
        let stable = stable_group(&coordinator, &[spec.clone(), spec.clone()]).await;
        let m1 = stable.members[0].clone();
        let waiting = spawn_join(&coordinator, &spec.clone().member(&m1), 5);
        wait_until("m1 waits in JoinGroup", || {
            awaiting_join(&coordinator, "g", &m1)
        })
        .await;

        coordinator.close().await;
        let answered = finish(waiting, "join waiting at close").await;
        assert_eq!(answered.error_code, code(ResponseError::NotCoordinator));
        assert_eq!(
            heartbeat(&coordinator, "g", stable.generation_id, &m1).await,
            code(ResponseError::NotCoordinator)
        );
    });
}

#[test]
fn offset_commit_and_fetch() {
    run(|dir| async move {
        let config = GroupConfig {
            offset_metadata_max_bytes: 16,
            ..test_config()
        };
        let coordinator = open(&dir, config).await;
        coordinator.set_partition_validator(|topic, partition| topic != "missing" && partition < 8);

        // A consumer that assigns partitions itself commits with generation -1.
        let stored = commit(
            &coordinator,
            "g",
            -1,
            "",
            &[("t", 0, 5, "m0"), ("t", 1, 7, ""), ("u", 0, 9, "")],
            2,
        )
        .await;
        assert_eq!(stored, vec![0, 0, 0]);
        let rejected = commit(
            &coordinator,
            "g",
            -1,
            "",
            &[
                ("missing", 0, 1, ""),
                ("t", 9, 1, ""),
                ("t", 2, 1, "metadata-too-long!"),
            ],
            7,
        )
        .await;
        assert_eq!(
            rejected,
            vec![
                code(ResponseError::UnknownTopicOrPartition),
                code(ResponseError::UnknownTopicOrPartition),
                code(ResponseError::OffsetMetadataTooLarge),
            ]
        );
        let with_epoch = commit(&coordinator, "g", -1, "", &[("u", 1, 11, "e")], 9).await;
        assert_eq!(with_epoch, vec![0]);

        let (error, rows, _) = fetch(&coordinator, "g", Some(&[("t", &[0, 1, 2])]), 1).await;
        assert_eq!(error, 0);
        assert_eq!(
            rows,
            vec![
                row("t", 0, 5, "m0"),
                row("t", 1, 7, ""),
                row("t", 2, -1, "")
            ]
        );

        let (_, rows, epochs) = fetch(&coordinator, "g", Some(&[("u", &[1])]), 5).await;
        assert_eq!(rows, vec![row("u", 1, 11, "e")]);
        assert_eq!(epochs, vec![4]);

        let (_, all, _) = fetch(&coordinator, "g", None, 7).await;
        assert_eq!(
            all,
            vec![
                row("t", 0, 5, "m0"),
                row("t", 1, 7, ""),
                row("u", 0, 9, ""),
                row("u", 1, 11, "e")
            ]
        );
        let (_, unknown_group, _) = fetch(&coordinator, "nobody", Some(&[("t", &[0])]), 3).await;
        assert_eq!(unknown_group, vec![row("t", 0, -1, "")]);

        assert_eq!(
            coordinator.committed_offsets("g"),
            vec![
                ("t".to_string(), 0, 5),
                ("t".to_string(), 1, 7),
                ("u".to_string(), 0, 9),
                ("u".to_string(), 1, 11)
            ]
        );
        assert!(coordinator.committed_offsets("nobody").is_empty());
    });
}

#[test]
fn offset_fetch_for_several_groups() {
    run(|dir| async move {
        let coordinator = open(&dir, test_config()).await;
        assert_eq!(
            commit(&coordinator, "a", -1, "", &[("t", 0, 1, "")], 8).await,
            vec![0]
        );
        assert_eq!(
            commit(
                &coordinator,
                "b",
                -1,
                "",
                &[("t", 0, 2, ""), ("v", 3, 4, "")],
                8
            )
            .await,
            vec![0, 0]
        );

        for version in [8, 9] {
            let mut request = OffsetFetchRequest::default();
            let mut all = OffsetFetchRequestGroup::default();
            all.group_id = group_id("b");
            all.topics = None;
            let mut some = OffsetFetchRequestGroup::default();
            some.group_id = group_id("a");
            let mut topic = OffsetFetchRequestTopics::default();
            topic.name = TopicName(text("t"));
            topic.partition_indexes = vec![0, 1];
            some.topics = Some(vec![topic]);
            request.groups = vec![all, some];

            let response = coordinator
                .offset_fetch(wire(request, version), version)
                .await;
            assert_encodes(&response, version, "OffsetFetch");
            assert_eq!(response.groups.len(), 2);
            let b = &response.groups[0];
            assert_eq!(b.group_id.0.as_str(), "b");
            let b_offsets: Vec<(String, i32, i64)> = b
                .topics
                .iter()
                .flat_map(|topic| {
                    topic.partitions.iter().map(move |p| {
                        (
                            topic.name.0.to_string(),
                            p.partition_index,
                            p.committed_offset,
                        )
                    })
                })
                .collect();
            assert_eq!(
                b_offsets,
                vec![("t".to_string(), 0, 2), ("v".to_string(), 3, 4)]
            );
            let a = &response.groups[1];
            let a_offsets: Vec<i64> = a.topics[0]
                .partitions
                .iter()
                .map(|p| p.committed_offset)
                .collect();
            assert_eq!(a_offsets, vec![1, -1]);
        }
    });
}

#[test]
fn commits_follow_group_state() {
    run(|dir| async move {
        let coordinator = open(&dir, test_config()).await;
        let spec = JoinSpec::new("g");
        let stable = stable_group(&coordinator, std::slice::from_ref(&spec)).await;
        let member = stable.members[0].clone();
        let stored = commit(
            &coordinator,
            "g",
            stable.generation_id,
            &member,
            &[("t", 0, 42, "")],
            8,
        )
        .await;
        assert_eq!(stored, vec![0]);

        // Between the join response and the leader's SyncGroup, commits must wait.
        let m2 = member_id_for(&coordinator, &spec).await;
        let join2 = spawn_join(&coordinator, &spec.clone().member(&m2), 5);
        wait_until("the group rebalances", || {
            group_state(&coordinator, "g") == Some(GroupState::PreparingRebalance)
        })
        .await;
        // Commits during PreparingRebalance are still accepted.
        let preparing = commit(
            &coordinator,
            "g",
            stable.generation_id,
            &member,
            &[("t", 0, 43, "")],
            8,
        )
        .await;
        assert_eq!(preparing, vec![0]);
        let rejoined = join(&coordinator, &spec.clone().member(&member), 5).await;
        finish(join2, "second member's join").await;
        let completing = commit(
            &coordinator,
            "g",
            rejoined.generation_id,
            &member,
            &[("t", 0, 44, "")],
            8,
        )
        .await;
        assert_eq!(completing, vec![code(ResponseError::RebalanceInProgress)]);
        assert_eq!(
            coordinator.committed_offsets("g"),
            vec![("t".to_string(), 0, 43)]
        );
    });
}

#[test]
fn offsets_survive_reopen_and_torn_tail() {
    run(|dir| async move {
        let coordinator = open(&dir, test_config()).await;
        assert_eq!(
            commit(&coordinator, "g1", -1, "", &[("t", 0, 5, "")], 8).await,
            vec![0]
        );
        assert_eq!(
            commit(&coordinator, "g2", -1, "", &[("t", 0, 6, "")], 8).await,
            vec![0]
        );
        assert_eq!(
            delete(&coordinator, &["g2"], 2).await,
            vec![("g2".to_string(), 0)]
        );
        assert_eq!(
            commit(&coordinator, "g1", -1, "", &[("t", 0, 8, "kept")], 8).await,
            vec![0]
        );
        coordinator.close().await;
        drop(coordinator);

        // A crash in the middle of the next write leaves half a record behind.
        let path = dir.join(JOURNAL_FILE_NAME);
        let intact_bytes = std::fs::metadata(&path).expect("journal").len();
        let mut torn = Vec::new();
        Record::OffsetCommit {
            group: "g1".into(),
            topic: "t".into(),
            partition: 0,
            offset: 999,
            leader_epoch: -1,
            metadata: String::new(),
            commit_timestamp_ms: 0,
            expire_timestamp_ms: -1,
        }
        .encode_into(&mut torn);
        torn.truncate(torn.len() / 2);
        let mut journal = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .expect("open journal");
        std::io::Write::write_all(&mut journal, &torn).expect("append torn record");
        drop(journal);

        let reopened = open(&dir, test_config()).await;
        assert_eq!(
            std::fs::metadata(&path).expect("journal").len(),
            intact_bytes
        );
        assert_eq!(
            reopened.committed_offsets("g1"),
            vec![("t".to_string(), 0, 8)]
        );
        assert!(reopened.committed_offsets("g2").is_empty());
        let (_, rows, _) = fetch(&reopened, "g1", Some(&[("t", &[0])]), 7).await;
        assert_eq!(rows, vec![row("t", 0, 8, "kept")]);
        assert_eq!(list(&reopened, &[], &[], 3).await.len(), 1);

        assert_eq!(
            commit(&reopened, "g1", -1, "", &[("t", 1, 3, "")], 8).await,
            vec![0]
        );
        reopened.close().await;
        drop(reopened);
        let again = open(&dir, test_config()).await;
        assert_eq!(
            again.committed_offsets("g1"),
            vec![("t".to_string(), 0, 8), ("t".to_string(), 1, 3)]
        );
    });
}

#[test]
fn foreign_journal_is_rejected() {
    run(|dir| async move {
        std::fs::write(dir.join(JOURNAL_FILE_NAME), b"not a journal at all").expect("write");
        let result = GroupCoordinator::open(&dir, test_config()).await;
        assert!(matches!(result, Err(GroupError::Corrupt { .. })));
    });
}

#[test]
fn journal_is_compacted() {
    run(|dir| async move {
        let config = GroupConfig {
            journal_compact_dead_bytes_min: 2_048,
            ..test_config()
        };
        let coordinator = open(&dir, config.clone()).await;
        let path = dir.join(JOURNAL_FILE_NAME);
        for offset in 0..200 {
            let stored = commit(&coordinator, "g", -1, "", &[("topic", 0, offset, "")], 8).await;
            assert_eq!(stored, vec![0]);
        }
        let journal_bytes = std::fs::metadata(&path).expect("journal").len();
        // 200 records of about 60 bytes each would take 12 KB uncompacted.
        assert!(
            journal_bytes < 4_096,
            "journal was not compacted: {journal_bytes} bytes"
        );
        coordinator.close().await;
        drop(coordinator);

        let reopened = open(&dir, config).await;
        assert_eq!(
            reopened.committed_offsets("g"),
            vec![("topic".to_string(), 0, 199)]
        );
    });
}

/// Creates a clock that the test moves by hand.
fn manual_clock(start_ms: i64) -> (Rc<Cell<i64>>, Clock) {
    let now = Rc::new(Cell::new(start_ms));
    let reader = now.clone();
    (now, Rc::new(move || reader.get()))
}

fn subscription(topics: &[&str]) -> Bytes {
    let mut subscription = ConsumerProtocolSubscription::default();
    subscription.topics = topics.iter().map(|topic| text(topic)).collect();
    let mut buf = BytesMut::new();
    buf.extend_from_slice(&1i16.to_be_bytes());
    subscription
        .encode(&mut buf, 1)
        .expect("encode subscription");
    buf.freeze()
}

#[test]
fn retention_expires_offsets_of_empty_groups() {
    run(|dir| async move {
        const START_MS: i64 = 1_000_000_000;
        const RETENTION_MS: i64 = 60_000;
        let config = GroupConfig {
            offsets_retention_minutes: 1,
            ..test_config()
        };
        let (now, clock) = manual_clock(START_MS);
        let coordinator = GroupCoordinator::open_with_clock(&dir, config.clone(), clock)
            .await
            .expect("open");

        let spec = JoinSpec::new("consumers");
        let stable = stable_group(&coordinator, std::slice::from_ref(&spec)).await;
        let member = stable.members[0].clone();
        let stored = commit(
            &coordinator,
            "consumers",
            stable.generation_id,
            &member,
            &[("t", 0, 1, "")],
            8,
        )
        .await;
        assert_eq!(stored, vec![0]);
        assert_eq!(
            commit(&coordinator, "standalone", -1, "", &[("t", 0, 2, "")], 8).await,
            vec![0]
        );
        // OffsetCommit v2-v4 may set an explicit retention per request.
        let mut explicit = commit_request("explicit", -1, "", &[("t", 0, 3, "")], 2);
        explicit.retention_time_ms = 1_000;
        let response = coordinator.offset_commit(explicit, 2).await;
        assert_eq!(response.topics[0].partitions[0].error_code, 0);

        now.set(START_MS + 1_000);
        coordinator.expire_now().await;
        assert!(coordinator.committed_offsets("explicit").is_empty());

        now.set(START_MS + RETENTION_MS - 1);
        coordinator.expire_now().await;
        assert_eq!(coordinator.committed_offsets("standalone").len(), 1);

        now.set(START_MS + RETENTION_MS);
        coordinator.expire_now().await;
        assert!(coordinator.committed_offsets("standalone").is_empty());
        assert_eq!(
            coordinator.committed_offsets("consumers").len(),
            1,
            "a group with members keeps its offsets"
        );
        let listed: Vec<String> = list(&coordinator, &[], &[], 3)
            .await
            .into_iter()
            .map(|g| g.0)
            .collect();
        assert_eq!(listed, vec!["consumers".to_string()]);

        // Retention of a consumer group counts from the moment it became empty.
        let left = leave(&coordinator, "consumers", &[&member], 3).await;
        assert_eq!(left.members[0].error_code, 0);
        assert_eq!(
            group_state(&coordinator, "consumers"),
            Some(GroupState::Empty)
        );
        now.set(START_MS + 2 * RETENTION_MS - 1);
        coordinator.expire_now().await;
        assert_eq!(coordinator.committed_offsets("consumers").len(), 1);

        // The moment the group became empty survives a restart.
        coordinator.close().await;
        drop(coordinator);
        let (now, clock) = manual_clock(START_MS + 2 * RETENTION_MS - 1);
        let reopened = GroupCoordinator::open_with_clock(&dir, config.clone(), clock)
            .await
            .expect("reopen");
        assert_eq!(reopened.committed_offsets("consumers").len(), 1);
        now.set(START_MS + 2 * RETENTION_MS);
        reopened.expire_now().await;
        assert!(reopened.committed_offsets("consumers").is_empty());
        assert!(list(&reopened, &[], &[], 3).await.is_empty());

        reopened.close().await;
        drop(reopened);
        let (_, clock) = manual_clock(START_MS);
        let again = GroupCoordinator::open_with_clock(&dir, config, clock)
            .await
            .expect("reopen");
        assert!(
            list(&again, &[], &[], 3).await.is_empty(),
            "expired groups stay deleted"
        );
    });
}

#[test]
fn retention_expires_unsubscribed_topics_of_stable_group() {
    run(|dir| async move {
        const START_MS: i64 = 5_000_000;
        let config = GroupConfig {
            offsets_retention_minutes: 1,
            ..test_config()
        };
        let (now, clock) = manual_clock(START_MS);
        let coordinator = GroupCoordinator::open_with_clock(&dir, config, clock)
            .await
            .expect("open");
        let spec = JoinSpec::new("g").protocols(&[("range", &subscription(&["current"]))]);
        let stable = stable_group(&coordinator, std::slice::from_ref(&spec)).await;
        let member = stable.members[0].clone();
        let stored = commit(
            &coordinator,
            "g",
            stable.generation_id,
            &member,
            &[("current", 0, 1, ""), ("former", 0, 2, "")],
            8,
        )
        .await;
        assert_eq!(stored, vec![0, 0]);

        now.set(START_MS + 60_000);
        coordinator.expire_now().await;
        assert_eq!(
            coordinator.committed_offsets("g"),
            vec![("current".to_string(), 0, 1)]
        );
    });
}

#[test]
fn list_describe_and_delete_groups() {
    run(|dir| async move {
        let coordinator = open(&dir, test_config()).await;
        let spec = JoinSpec::new("active");
        let stable = stable_group(&coordinator, std::slice::from_ref(&spec)).await;
        let member = stable.members[0].clone();
        assert_eq!(
            commit(&coordinator, "idle", -1, "", &[("t", 0, 1, "")], 8).await,
            vec![0]
        );

        assert_eq!(
            list(&coordinator, &[], &[], 0).await,
            vec![
                ("active".to_string(), CONSUMER.to_string(), String::new()),
                ("idle".to_string(), String::new(), String::new())
            ]
        );
        assert_eq!(
            list(&coordinator, &["stable"], &[], 4).await,
            vec![(
                "active".to_string(),
                CONSUMER.to_string(),
                "Stable".to_string()
            )]
        );
        assert!(list(&coordinator, &[], &["consumer"], 5).await.is_empty());
        assert_eq!(list(&coordinator, &[], &["Classic"], 5).await.len(), 2);

        let described = describe(&coordinator, &["active", "idle", "unknown"], 5).await;
        let active = &described.groups[0];
        assert_eq!(active.error_code, 0);
        assert_eq!(active.group_state.as_str(), "Stable");
        assert_eq!(active.protocol_type.as_str(), CONSUMER);
        assert_eq!(active.protocol_data.as_str(), "range");
        assert_eq!(active.members.len(), 1);
        assert_eq!(active.members[0].member_id.as_str(), member);
        assert_eq!(
            active.members[0].member_metadata,
            Bytes::from_static(b"range-metadata")
        );
        assert_eq!(
            active.members[0].member_assignment,
            Bytes::from(format!("a-{member}"))
        );
        assert_eq!(active.authorized_operations, (1 << 3) | (1 << 6) | (1 << 8));
        let idle = &described.groups[1];
        assert_eq!(idle.group_state.as_str(), "Empty");
        assert!(idle.members.is_empty());
        let unknown = &described.groups[2];
        assert_eq!(unknown.error_code, 0);
        assert_eq!(unknown.group_state.as_str(), "Dead");
        let unknown_v6 = describe(&coordinator, &["unknown"], 6).await;
        assert_eq!(
            unknown_v6.groups[0].error_code,
            code(ResponseError::GroupIdNotFound)
        );
        assert!(unknown_v6.groups[0].error_message.is_some());

        assert_eq!(
            delete(&coordinator, &["active", "idle", "unknown"], 2).await,
            vec![
                ("active".to_string(), code(ResponseError::NonEmptyGroup)),
                ("idle".to_string(), 0),
                ("unknown".to_string(), code(ResponseError::GroupIdNotFound)),
            ]
        );
        assert!(coordinator.committed_offsets("idle").is_empty());
        assert_eq!(list(&coordinator, &[], &[], 3).await.len(), 1);

        coordinator.close().await;
        drop(coordinator);
        let reopened = open(&dir, test_config()).await;
        let listed: Vec<String> = list(&reopened, &[], &[], 3)
            .await
            .into_iter()
            .map(|g| g.0)
            .collect();
        assert_eq!(
            listed,
            vec!["active".to_string()],
            "the consumer group's state record survives"
        );
        assert!(reopened.committed_offsets("idle").is_empty());
    });
}

#[test]
fn every_version_encodes() {
    run(|dir| async move {
        let coordinator = open(&dir, test_config()).await;
        for version in 0..=9 {
            let group = format!("join-v{version}");
            let spec = JoinSpec::new(&group).instance("static");
            let mut joined = join(&coordinator, &spec, version).await;
            if version == 4 {
                // Instance ids exist from v5 on, so v4 takes the member-id round trip.
                assert_eq!(joined.error_code, code(ResponseError::MemberIdRequired));
                joined = join(
                    &coordinator,
                    &spec.clone().member(&joined.member_id),
                    version,
                )
                .await;
            }
            assert_eq!(joined.error_code, 0, "JoinGroup v{version}");
            let member_id = joined.member_id.to_string();
            assert_eq!(joined.members.len(), 1);

            let sync_version = version.min(5);
            let synced = sync(
                &coordinator,
                sync_request(
                    &group,
                    joined.generation_id,
                    &member_id,
                    &[(&member_id, b"x")],
                    sync_version,
                ),
                sync_version,
            )
            .await;
            assert_eq!(synced.error_code, 0, "SyncGroup v{sync_version}");
            let heartbeat_version = version.min(4);
            let error = heartbeat_as(
                &coordinator,
                &group,
                joined.generation_id,
                &member_id,
                None,
                heartbeat_version,
            )
            .await;
            assert_eq!(error, 0, "Heartbeat v{heartbeat_version}");

            let leave_version = version.min(5);
            let left = leave(&coordinator, &group, &[&member_id], leave_version).await;
            assert_eq!(left.error_code, 0, "LeaveGroup v{leave_version}");
        }
        for version in 2..=9 {
            let stored = commit(
                &coordinator,
                "offsets",
                -1,
                "",
                &[("t", 0, 10 + version as i64, "m")],
                version,
            )
            .await;
            assert_eq!(stored, vec![0], "OffsetCommit v{version}");
        }
        for version in 1..=7 {
            let (error, rows, _) =
                fetch(&coordinator, "offsets", Some(&[("t", &[0])]), version).await;
            assert_eq!(error, 0);
            assert_eq!(rows, vec![row("t", 0, 19, "m")], "OffsetFetch v{version}");
        }
        for version in 0..=5 {
            assert!(
                !list(&coordinator, &[], &[], version).await.is_empty(),
                "ListGroups v{version}"
            );
        }
        for version in 0..=6 {
            let described = describe(&coordinator, &["offsets", "none"], version).await;
            assert_eq!(described.groups.len(), 2, "DescribeGroups v{version}");
        }
        for version in 0..=2 {
            let group = format!("delete-v{version}");
            assert_eq!(
                commit(&coordinator, &group, -1, "", &[("t", 0, 1, "")], 8).await,
                vec![0]
            );
            assert_eq!(
                delete(&coordinator, &[&group], version).await,
                vec![(group.clone(), 0)]
            );
        }
    });
}

#[test]
fn retention_after_unclean_shutdown() {
    run(|dir| async move {
        const START_MS: i64 = 7_000_000;
        const RETENTION_MS: i64 = 60_000;
        let config = GroupConfig {
            offsets_retention_minutes: 1,
            ..test_config()
        };
        let (_, clock) = manual_clock(START_MS);
        let coordinator = GroupCoordinator::open_with_clock(&dir, config.clone(), clock)
            .await
            .expect("open");
        let stable = stable_group(&coordinator, &[JoinSpec::new("g")]).await;
        let stored = commit(
            &coordinator,
            "g",
            stable.generation_id,
            &stable.members[0],
            &[("t", 0, 1, "")],
            8,
        )
        .await;
        assert_eq!(stored, vec![0]);
        // The broker stops while the group still has a member.
        coordinator.close().await;
        drop(coordinator);

        let first_restart_ms = START_MS + 10_000;
        let (_, clock) = manual_clock(first_restart_ms);
        let restarted = GroupCoordinator::open_with_clock(&dir, config.clone(), clock)
            .await
            .expect("first restart");
        restarted.close().await;
        drop(restarted);

        let (now, clock) = manual_clock(first_restart_ms + RETENTION_MS - 1);
        let again = GroupCoordinator::open_with_clock(&dir, config, clock)
            .await
            .expect("second restart");
        again.expire_now().await;
        assert_eq!(again.committed_offsets("g").len(), 1);
        now.set(first_restart_ms + RETENTION_MS);
        again.expire_now().await;
        assert!(again.committed_offsets("g").is_empty());
    });
}
