//! Consumer group and idempotent producer error cases at the protocol level:
//! the real `weir` binary on loopback with two shards, driven by hand-built
//! requests, one small helper per API.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use common::{Broker, Connection};
use indexmap::IndexMap;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::leave_group_request::MemberIdentity;
use kafka_protocol::messages::offset_commit_request::{OffsetCommitRequestPartition, OffsetCommitRequestTopic};
use kafka_protocol::messages::offset_fetch_request::{OffsetFetchRequestGroup, OffsetFetchRequestTopic, OffsetFetchRequestTopics};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType};

const NONE: i16 = 0;
const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
const NOT_COORDINATOR: i16 = 16;
const ILLEGAL_GENERATION: i16 = 22;
const UNKNOWN_MEMBER_ID: i16 = 25;
const INVALID_SESSION_TIMEOUT: i16 = 26;
const REBALANCE_IN_PROGRESS: i16 = 27;
const OUT_OF_ORDER_SEQUENCE_NUMBER: i16 = 45;
const INVALID_PRODUCER_EPOCH: i16 = 47;
const MEMBER_ID_REQUIRED: i16 = 79;

/// JoinGroup version that requires the MEMBER_ID_REQUIRED round trip (v4+).
const JOIN_VERSION: i16 = 9;
const SESSION_TIMEOUT_MS: i32 = 30_000;
const REBALANCE_TIMEOUT_MS: i32 = 30_000;
/// Upper bound for polling the broker until a state change shows.
const POLL_DEADLINE: Duration = Duration::from_secs(20);
const POLL_INTERVAL: Duration = Duration::from_millis(20);

fn topic_name(name: &str) -> TopicName {
    TopicName(StrBytes::from_string(name.to_string()))
}

fn group_id(name: &str) -> GroupId {
    GroupId(StrBytes::from_string(name.to_string()))
}

fn text(value: &str) -> StrBytes {
    StrBytes::from_string(value.to_string())
}

fn create_topic(connection: &mut Connection, name: &str, partitions: i32) {
    let topic = CreatableTopic::default().with_name(topic_name(name)).with_num_partitions(partitions).with_replication_factor(1);
    let request = CreateTopicsRequest::default().with_topics(vec![topic]).with_timeout_ms(10_000);
    let response: CreateTopicsResponse = connection.request(ApiKey::CreateTopics, 7, &request);
    assert_eq!(response.topics[0].error_code, NONE, "create topic {name}");
}

/// Address of each shard's listener by node id, as Metadata advertises them.
fn shard_addresses(connection: &mut Connection) -> BTreeMap<i32, String> {
    let response: MetadataResponse = connection.request(ApiKey::Metadata, 12, &MetadataRequest::default().with_topics(Some(Vec::new())));
    response.brokers.iter().map(|broker| (broker.node_id.0, format!("{}:{}", broker.host, broker.port))).collect()
}

/// Node id of the shard that coordinates `group`.
fn coordinator(connection: &mut Connection, group: &str) -> i32 {
    let request = FindCoordinatorRequest::default().with_key(text(group)).with_key_type(0);
    let response: FindCoordinatorResponse = connection.request(ApiKey::FindCoordinator, 3, &request);
    assert_eq!(response.error_code, NONE, "FindCoordinator for {group}");
    response.node_id.0
}

/// Returns a group id with the given prefix that `node` coordinates.
fn group_on_node(connection: &mut Connection, prefix: &str, node: i32) -> String {
    (0..64)
        .map(|index| format!("{prefix}-{index}"))
        .find(|group| coordinator(connection, group) == node)
        .unwrap_or_else(|| panic!("none of 64 group ids with prefix {prefix} hashes to node {node}"))
}

/// Opens a connection to the coordinator of `group`.
fn connect_coordinator(broker: &Broker, group: &str) -> Connection {
    let mut bootstrap = broker.connect();
    let node = coordinator(&mut bootstrap, group);
    let addresses = shard_addresses(&mut bootstrap);
    Connection::open(&addresses[&node])
}

fn join_request(group: &str, member_id: &str, session_timeout_ms: i32) -> JoinGroupRequest {
    JoinGroupRequest::default()
        .with_group_id(group_id(group))
        .with_session_timeout_ms(session_timeout_ms)
        .with_rebalance_timeout_ms(REBALANCE_TIMEOUT_MS)
        .with_member_id(text(member_id))
        .with_protocol_type(text("consumer"))
        .with_protocols(vec![JoinGroupRequestProtocol::default().with_name(text("range")).with_metadata(Bytes::from_static(b"meta"))])
}

fn join(connection: &mut Connection, group: &str, member_id: &str) -> JoinGroupResponse {
    connection.request(ApiKey::JoinGroup, JOIN_VERSION, &join_request(group, member_id, SESSION_TIMEOUT_MS))
}

/// Runs the MEMBER_ID_REQUIRED round trip and returns the member id to join with.
fn member_id_for(connection: &mut Connection, group: &str) -> String {
    let response = join(connection, group, "");
    assert_eq!(response.error_code, MEMBER_ID_REQUIRED);
    assert!(!response.member_id.is_empty(), "MEMBER_ID_REQUIRED carries the new member id");
    response.member_id.to_string()
}

fn sync(connection: &mut Connection, group: &str, generation: i32, member_id: &str, assignments: &[(&str, &[u8])]) -> SyncGroupResponse {
    let request = SyncGroupRequest::default()
        .with_group_id(group_id(group))
        .with_generation_id(generation)
        .with_member_id(text(member_id))
        .with_protocol_type(Some(text("consumer")))
        .with_protocol_name(Some(text("range")))
        .with_assignments(
            assignments
                .iter()
                .map(|(member, assignment)| {
                    SyncGroupRequestAssignment::default().with_member_id(text(member)).with_assignment(Bytes::copy_from_slice(assignment))
                })
                .collect(),
        );
    connection.request(ApiKey::SyncGroup, 5, &request)
}

fn heartbeat(connection: &mut Connection, group: &str, generation: i32, member_id: &str) -> i16 {
    let request = HeartbeatRequest::default().with_group_id(group_id(group)).with_generation_id(generation).with_member_id(text(member_id));
    let response: HeartbeatResponse = connection.request(ApiKey::Heartbeat, 4, &request);
    response.error_code
}

/// Sends LeaveGroup v5 and returns the top-level error and the member's error.
fn leave(connection: &mut Connection, group: &str, member_id: &str) -> (i16, i16) {
    let request = LeaveGroupRequest::default()
        .with_group_id(group_id(group))
        .with_members(vec![MemberIdentity::default().with_member_id(text(member_id))]);
    let response: LeaveGroupResponse = connection.request(ApiKey::LeaveGroup, 5, &request);
    (response.error_code, response.members.first().map_or(NONE, |member| member.error_code))
}

/// A member that joined and synced: the group is Stable with it as the only member.
struct Member {
    member_id: String,
    generation: i32,
}

fn join_alone(connection: &mut Connection, group: &str) -> Member {
    let member_id = member_id_for(connection, group);
    let joined = join(connection, group, &member_id);
    assert_eq!(joined.error_code, NONE);
    assert_eq!(joined.leader.as_str(), member_id, "the only member leads");
    let synced = sync(connection, group, joined.generation_id, &member_id, &[(&member_id, b"assignment")]);
    assert_eq!(synced.error_code, NONE);
    Member { member_id, generation: joined.generation_id }
}

/// Commits `offsets` (partition, offset) of `topic` and returns each partition's error.
fn commit(connection: &mut Connection, group: &str, generation: i32, member_id: &str, topic: &str, offsets: &[(i32, i64)]) -> Vec<i16> {
    let partitions = offsets
        .iter()
        .map(|(partition, offset)| {
            OffsetCommitRequestPartition::default()
                .with_partition_index(*partition)
                .with_committed_offset(*offset)
                .with_committed_leader_epoch(-1)
                .with_committed_metadata(Some(text(&format!("meta-{partition}"))))
        })
        .collect();
    let request = OffsetCommitRequest::default()
        .with_group_id(group_id(group))
        .with_generation_id_or_member_epoch(generation)
        .with_member_id(text(member_id))
        .with_topics(vec![OffsetCommitRequestTopic::default().with_name(topic_name(topic)).with_partitions(partitions)]);
    let response: OffsetCommitResponse = connection.request(ApiKey::OffsetCommit, 8, &request);
    response.topics[0].partitions.iter().map(|partition| partition.error_code).collect()
}

/// Sends OffsetFetch v7 (one group). Returns the group error and (partition, offset, metadata)
/// per requested partition.
fn fetch_offsets(connection: &mut Connection, group: &str, topic: &str, partitions: &[i32]) -> (i16, Vec<(i32, i64, String)>) {
    let request = OffsetFetchRequest::default().with_group_id(group_id(group)).with_topics(Some(vec![OffsetFetchRequestTopic::default()
        .with_name(topic_name(topic))
        .with_partition_indexes(partitions.to_vec())]));
    let response: OffsetFetchResponse = connection.request(ApiKey::OffsetFetch, 7, &request);
    let offsets = response
        .topics
        .iter()
        .flat_map(|topic| topic.partitions.iter())
        .map(|partition| {
            assert_eq!(partition.error_code, NONE);
            (partition.partition_index, partition.committed_offset, partition.metadata.as_ref().map(ToString::to_string).unwrap_or_default())
        })
        .collect();
    (response.error_code, offsets)
}

/// Committed offsets of one group in an OffsetFetch v8 response, keyed by (topic, partition).
type GroupOffsets = BTreeMap<(String, i32), i64>;

/// Sends OffsetFetch v8 for several groups at once, each for every committed partition (null
/// topics) or for partitions 0, 1 and 2 of `topic`. Returns (error, offsets) per group id.
fn fetch_offsets_v8(connection: &mut Connection, groups: &[&str], topic: Option<&str>) -> BTreeMap<String, (i16, GroupOffsets)> {
    let topics = topic.map(|topic| vec![OffsetFetchRequestTopics::default().with_name(topic_name(topic)).with_partition_indexes(vec![0, 1, 2])]);
    let request = OffsetFetchRequest::default().with_groups(
        groups.iter().map(|group| OffsetFetchRequestGroup::default().with_group_id(group_id(group)).with_topics(topics.clone())).collect(),
    );
    let response: OffsetFetchResponse = connection.request(ApiKey::OffsetFetch, 8, &request);
    response
        .groups
        .iter()
        .map(|group| {
            let offsets = group
                .topics
                .iter()
                .flat_map(|topic| topic.partitions.iter().map(move |partition| ((topic.name.to_string(), partition.partition_index), partition.committed_offset)))
                .collect();
            (group.group_id.to_string(), (group.error_code, offsets))
        })
        .collect()
}

/// Sends InitProducerId v4 for an idempotent producer. Passing `current` requests an epoch bump.
fn init_producer_id(connection: &mut Connection, current: Option<(i64, i16)>) -> InitProducerIdResponse {
    let (producer_id, epoch) = current.unwrap_or((-1, -1));
    let request = InitProducerIdRequest::default()
        .with_transactional_id(None)
        .with_transaction_timeout_ms(60_000)
        .with_producer_id(ProducerId(producer_id))
        .with_producer_epoch(epoch);
    let response: InitProducerIdResponse = connection.request(ApiKey::InitProducerId, 4, &request);
    assert_eq!(response.error_code, NONE, "InitProducerId");
    response
}

/// Builds one v2 batch of an idempotent producer with `count` records and
/// sequences `base_sequence..base_sequence + count`.
fn idempotent_batch(producer_id: i64, epoch: i16, base_sequence: i32, count: usize, label: &str) -> Bytes {
    let records: Vec<Record> = (0..count)
        .map(|index| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id,
            producer_epoch: epoch,
            timestamp_type: TimestampType::Creation,
            offset: index as i64,
            // offset - sequence stays constant, so the encoder keeps one batch.
            sequence: base_sequence + index as i32,
            timestamp: 1_700_000_000_000 + index as i64,
            key: None,
            value: Some(Bytes::from(format!("{label}-{index}"))),
            headers: IndexMap::new(),
        })
        .collect();
    let mut buffer = BytesMut::new();
    RecordBatchEncoder::encode(&mut buffer, &records, &RecordEncodeOptions { version: 2, compression: Compression::None }).expect("encode batch");
    buffer.freeze()
}

/// Produces one batch with acks=all and returns (error, base offset).
fn produce(connection: &mut Connection, topic: &str, partition: i32, records: Bytes) -> (i16, i64) {
    let request = ProduceRequest::default().with_acks(-1).with_timeout_ms(10_000).with_topic_data(vec![TopicProduceData::default()
        .with_name(topic_name(topic))
        .with_partition_data(vec![PartitionProduceData::default().with_index(partition).with_records(Some(records))])]);
    let response: ProduceResponse = connection.request(ApiKey::Produce, 9, &request);
    let partition = &response.responses[0].partition_responses[0];
    (partition.error_code, partition.base_offset)
}

/// Reads every stored record of a partition as (offset, producer id, epoch, sequence, value).
fn read_log(connection: &mut Connection, topic: &str, partition: i32) -> Vec<(i64, i64, i16, i32, String)> {
    let request = FetchRequest::default().with_replica_id(BrokerId(-1)).with_max_wait_ms(0).with_min_bytes(1).with_max_bytes(1 << 20).with_topics(vec![
        FetchTopic::default().with_topic(topic_name(topic)).with_partitions(vec![FetchPartition::default()
            .with_partition(partition)
            .with_fetch_offset(0)
            .with_partition_max_bytes(1 << 20)]),
    ]);
    let response: FetchResponse = connection.request(ApiKey::Fetch, 12, &request);
    let data = &response.responses[0].partitions[0];
    assert_eq!(data.error_code, NONE);
    let mut bytes = data.records.clone().unwrap_or_default();
    let mut records = Vec::new();
    for set in RecordBatchDecoder::decode_all(&mut bytes).expect("stored batches decode") {
        for record in set.records {
            let value = String::from_utf8(record.value.map(|value| value.to_vec()).unwrap_or_default()).expect("utf-8 value");
            records.push((record.offset, record.producer_id, record.producer_epoch, record.sequence, value));
        }
    }
    records
}

/// Polls `condition` until it returns true, failing the test after [`POLL_DEADLINE`].
fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + POLL_DEADLINE;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out after {POLL_DEADLINE:?} waiting until {what}");
        std::thread::sleep(POLL_INTERVAL);
    }
}

#[test]
fn group_request_to_other_shard_gets_not_coordinator() {
    let broker = Broker::start(&[]);
    let mut bootstrap = broker.connect();
    create_topic(&mut bootstrap, "wrong-shard", 1);
    let addresses = shard_addresses(&mut bootstrap);
    assert_eq!(addresses.len(), 2, "two shards, two advertised brokers");

    let group = "misrouted";
    let owner = coordinator(&mut bootstrap, group);
    let other = *addresses.keys().find(|node| **node != owner).expect("a second shard");
    let mut wrong = Connection::open(&addresses[&other]);

    let joined: JoinGroupResponse = wrong.request(ApiKey::JoinGroup, JOIN_VERSION, &join_request(group, "", SESSION_TIMEOUT_MS));
    assert_eq!(joined.error_code, NOT_COORDINATOR, "JoinGroup");
    assert_eq!(sync(&mut wrong, group, 1, "someone", &[]).error_code, NOT_COORDINATOR, "SyncGroup");
    assert_eq!(heartbeat(&mut wrong, group, 1, "someone"), NOT_COORDINATOR, "Heartbeat");
    assert_eq!(leave(&mut wrong, group, "someone").0, NOT_COORDINATOR, "LeaveGroup");
    assert_eq!(commit(&mut wrong, group, -1, "", "wrong-shard", &[(0, 5)]), vec![NOT_COORDINATOR], "OffsetCommit");
    assert_eq!(fetch_offsets(&mut wrong, group, "wrong-shard", &[0]).0, NOT_COORDINATOR, "OffsetFetch v7");
    let by_group = fetch_offsets_v8(&mut wrong, &[group], Some("wrong-shard"));
    assert_eq!(by_group[group].0, NOT_COORDINATOR, "OffsetFetch v8");
    let described: DescribeGroupsResponse =
        wrong.request(ApiKey::DescribeGroups, 5, &DescribeGroupsRequest::default().with_groups(vec![group_id(group)]));
    assert_eq!(described.groups[0].error_code, NOT_COORDINATOR, "DescribeGroups");
    let deleted: DeleteGroupsResponse =
        wrong.request(ApiKey::DeleteGroups, 2, &DeleteGroupsRequest::default().with_groups_names(vec![group_id(group)]));
    assert_eq!(deleted.results[0].error_code, NOT_COORDINATOR, "DeleteGroups");

    // The misrouted commit stored nothing, and the coordinator accepts the same requests.
    let mut right = Connection::open(&addresses[&owner]);
    assert_eq!(fetch_offsets(&mut right, group, "wrong-shard", &[0]), (NONE, vec![(0, -1, String::new())]));
    assert_eq!(commit(&mut right, group, -1, "", "wrong-shard", &[(0, 5)]), vec![NONE]);
    assert!(!member_id_for(&mut right, group).is_empty());
}

#[test]
fn join_without_member_id_requires_round_trip() {
    let broker = Broker::start(&[]);
    let group = "member-id-required";
    let mut connection = connect_coordinator(&broker, group);

    let first = join(&mut connection, group, "");
    assert_eq!(first.error_code, MEMBER_ID_REQUIRED);
    assert_eq!(first.generation_id, -1);
    let member_id = first.member_id.to_string();
    assert!(member_id.starts_with("weir-tests-"), "member ids start with the client id: {member_id}");

    let second = join(&mut connection, group, &member_id);
    assert_eq!(second.error_code, NONE);
    assert_eq!(second.member_id.as_str(), member_id, "the member keeps the id it was given");
    assert_eq!(second.generation_id, 1);
    assert_eq!(second.leader.as_str(), member_id);
    assert_eq!(second.protocol_name.as_deref(), Some("range"));
    let members: Vec<&str> = second.members.iter().map(|member| member.member_id.as_str()).collect();
    assert_eq!(members, vec![member_id.as_str()], "the leader receives the member list");
    assert_eq!(second.members[0].metadata, Bytes::from_static(b"meta"));

    // Before v4 the broker assigns the id in the same round trip.
    let group_v3 = "member-id-v3";
    let mut connection_v3 = connect_coordinator(&broker, group_v3);
    let joined: JoinGroupResponse = connection_v3.request(ApiKey::JoinGroup, 3, &join_request(group_v3, "", SESSION_TIMEOUT_MS));
    assert_eq!(joined.error_code, NONE);
    assert!(!joined.member_id.is_empty());
    assert_eq!(joined.generation_id, 1);
}

#[test]
fn stale_generation_is_illegal() {
    let broker = Broker::start(&[]);
    let mut setup = broker.connect();
    create_topic(&mut setup, "generations", 1);
    let group = "generations";
    let mut connection = connect_coordinator(&broker, group);
    let member = join_alone(&mut connection, group);
    assert_eq!(member.generation, 1);

    assert_eq!(heartbeat(&mut connection, group, member.generation, &member.member_id), NONE);
    assert_eq!(heartbeat(&mut connection, group, member.generation - 1, &member.member_id), ILLEGAL_GENERATION);
    assert_eq!(heartbeat(&mut connection, group, member.generation + 1, &member.member_id), ILLEGAL_GENERATION);
    assert_eq!(sync(&mut connection, group, member.generation + 1, &member.member_id, &[]).error_code, ILLEGAL_GENERATION);
    assert_eq!(commit(&mut connection, group, member.generation + 1, &member.member_id, "generations", &[(0, 3)]), vec![ILLEGAL_GENERATION]);
    assert_eq!(fetch_offsets(&mut connection, group, "generations", &[0]).1, vec![(0, -1, String::new())], "the rejected commit stored nothing");

    // A commit of a generation the coordinator never saw, for a group it does not know.
    let node = coordinator(&mut setup, group);
    let unknown_group = group_on_node(&mut setup, "never-joined", node);
    assert_eq!(commit(&mut connection, &unknown_group, 4, "ghost", "generations", &[(0, 3)]), vec![ILLEGAL_GENERATION]);

    assert_eq!(commit(&mut connection, group, member.generation, &member.member_id, "generations", &[(0, 3)]), vec![NONE]);
}

#[test]
fn unknown_member_is_rejected() {
    let broker = Broker::start(&[]);
    let mut setup = broker.connect();
    create_topic(&mut setup, "members", 1);
    let group = "unknown-members";
    let mut connection = connect_coordinator(&broker, group);
    let member = join_alone(&mut connection, group);

    assert_eq!(heartbeat(&mut connection, group, member.generation, "nobody"), UNKNOWN_MEMBER_ID);
    assert_eq!(sync(&mut connection, group, member.generation, "nobody", &[]).error_code, UNKNOWN_MEMBER_ID);
    assert_eq!(commit(&mut connection, group, member.generation, "nobody", "members", &[(0, 1)]), vec![UNKNOWN_MEMBER_ID]);
    assert_eq!(join(&mut connection, group, "nobody").error_code, UNKNOWN_MEMBER_ID);
    assert_eq!(leave(&mut connection, group, "nobody"), (NONE, UNKNOWN_MEMBER_ID));
    // A commit without a member is only allowed while the group has no members.
    assert_eq!(commit(&mut connection, group, -1, "", "members", &[(0, 1)]), vec![UNKNOWN_MEMBER_ID]);

    // The real member is unaffected. Once it leaves, its id is unknown.
    assert_eq!(heartbeat(&mut connection, group, member.generation, &member.member_id), NONE);
    assert_eq!(leave(&mut connection, group, &member.member_id), (NONE, NONE));
    assert_eq!(heartbeat(&mut connection, group, member.generation, &member.member_id), UNKNOWN_MEMBER_ID);
    assert_eq!(commit(&mut connection, group, -1, "", "members", &[(0, 1)]), vec![NONE], "the empty group accepts a memberless commit");

    // A group the coordinator does not know has no members at all.
    let node = coordinator(&mut setup, group);
    let unknown_group = group_on_node(&mut setup, "no-such-group", node);
    assert_eq!(heartbeat(&mut connection, &unknown_group, 1, "nobody"), UNKNOWN_MEMBER_ID);
    assert_eq!(join(&mut connection, &unknown_group, "nobody").error_code, UNKNOWN_MEMBER_ID);
}

#[test]
fn heartbeat_during_rebalance_is_rebalance_in_progress() {
    let broker = Broker::start(&[]);
    let mut setup = broker.connect();
    create_topic(&mut setup, "rebalance", 1);
    let group = "rebalancing";
    let mut first = connect_coordinator(&broker, group);
    let leader = join_alone(&mut first, group);

    // A second member joins, and its JoinGroup waits until the first member rejoins.
    let mut second = connect_coordinator(&broker, group);
    let second_id = member_id_for(&mut second, group);
    let pending_join = second.send(ApiKey::JoinGroup, JOIN_VERSION, &join_request(group, &second_id, SESSION_TIMEOUT_MS));

    let mut last = NONE;
    wait_until("the first member's heartbeat reports the rebalance", || {
        last = heartbeat(&mut first, group, leader.generation, &leader.member_id);
        last != NONE
    });
    assert_eq!(last, REBALANCE_IN_PROGRESS);
    assert_eq!(sync(&mut first, group, leader.generation, &leader.member_id, &[]).error_code, REBALANCE_IN_PROGRESS);
    // Members may still commit the generation they hold while the group prepares.
    assert_eq!(commit(&mut first, group, leader.generation, &leader.member_id, "rebalance", &[(0, 7)]), vec![NONE]);

    let rejoined = join(&mut first, group, &leader.member_id);
    assert_eq!(rejoined.error_code, NONE);
    let generation = rejoined.generation_id;
    assert_eq!(generation, leader.generation + 1);
    assert_eq!(rejoined.leader.as_str(), leader.member_id, "the old leader keeps leading");
    assert_eq!(rejoined.members.len(), 2);
    let joined: JoinGroupResponse = second.receive(JOIN_VERSION, pending_join);
    assert_eq!((joined.error_code, joined.generation_id), (NONE, generation));
    assert!(joined.members.is_empty(), "only the leader receives the member list");

    // Between join and sync the group completes the rebalance: commits wait for the assignment.
    assert_eq!(commit(&mut first, group, generation, &leader.member_id, "rebalance", &[(0, 8)]), vec![REBALANCE_IN_PROGRESS]);

    let pending_sync = second.send(
        ApiKey::SyncGroup,
        5,
        &SyncGroupRequest::default()
            .with_group_id(group_id(group))
            .with_generation_id(generation)
            .with_member_id(text(&second_id)),
    );
    let assignments: [(&str, &[u8]); 2] = [(&leader.member_id, b"to-first"), (&second_id, b"to-second")];
    let synced = sync(&mut first, group, generation, &leader.member_id, &assignments);
    assert_eq!((synced.error_code, synced.assignment.as_ref()), (NONE, &b"to-first"[..]));
    let follower: SyncGroupResponse = second.receive(5, pending_sync);
    assert_eq!((follower.error_code, follower.assignment.as_ref()), (NONE, &b"to-second"[..]));

    assert_eq!(heartbeat(&mut first, group, generation, &leader.member_id), NONE);
    assert_eq!(heartbeat(&mut second, group, generation, &second_id), NONE);
    assert_eq!(fetch_offsets(&mut first, group, "rebalance", &[0]).1, vec![(0, 7, "meta-0".to_string())]);
}

#[test]
fn session_timeout_out_of_range_is_invalid() {
    let broker = Broker::start(&["group.max.session.timeout.ms=60000"]);
    let group = "session-timeouts";
    let mut connection = connect_coordinator(&broker, group);

    for session_timeout_ms in [0, 5_999, 60_001] {
        let response: JoinGroupResponse =
            connection.request(ApiKey::JoinGroup, JOIN_VERSION, &join_request(group, "", session_timeout_ms));
        assert_eq!(response.error_code, INVALID_SESSION_TIMEOUT, "session timeout {session_timeout_ms} ms");
    }
    for session_timeout_ms in [6_000, 60_000] {
        let response: JoinGroupResponse =
            connection.request(ApiKey::JoinGroup, JOIN_VERSION, &join_request(group, "", session_timeout_ms));
        assert_eq!(response.error_code, MEMBER_ID_REQUIRED, "session timeout {session_timeout_ms} ms is accepted");
    }
}

#[test]
fn offsets_commit_fetch_and_multi_group_fetch() {
    let mut broker = Broker::start(&[]);
    let mut bootstrap = broker.connect();
    create_topic(&mut bootstrap, "committed", 3);
    let addresses = shard_addresses(&mut bootstrap);

    // Two groups on shard 0 and one on shard 1.
    let first = group_on_node(&mut bootstrap, "first", 0);
    let second = group_on_node(&mut bootstrap, "second", 0);
    let remote = group_on_node(&mut bootstrap, "remote", 1);
    let mut shard0 = Connection::open(&addresses[&0]);
    let mut shard1 = Connection::open(&addresses[&1]);

    assert_eq!(commit(&mut shard0, &first, -1, "", "committed", &[(0, 10), (1, 11)]), vec![NONE, NONE]);
    assert_eq!(commit(&mut shard0, &second, -1, "", "committed", &[(2, 22)]), vec![NONE]);
    assert_eq!(commit(&mut shard1, &remote, -1, "", "committed", &[(0, 30)]), vec![NONE]);
    assert_eq!(commit(&mut shard0, &first, -1, "", "committed", &[(1, 12), (7, 1)]), vec![NONE, UNKNOWN_TOPIC_OR_PARTITION]);
    assert_eq!(commit(&mut shard0, &first, -1, "", "missing-topic", &[(0, 1)]), vec![UNKNOWN_TOPIC_OR_PARTITION]);

    let expected_first = vec![(0, 10, "meta-0".to_string()), (1, 12, "meta-1".to_string()), (2, -1, String::new())];
    assert_eq!(fetch_offsets(&mut shard0, &first, "committed", &[0, 1, 2]), (NONE, expected_first.clone()));

    // v8 names several groups. The shard returns offsets for the groups it
    // coordinates and NOT_COORDINATOR for the others.
    let by_group = fetch_offsets_v8(&mut shard0, &[&first, &second, &remote], Some("committed"));
    let offsets = |pairs: &[(i32, i64)]| -> GroupOffsets { pairs.iter().map(|(partition, offset)| (("committed".to_string(), *partition), *offset)).collect() };
    assert_eq!(by_group[&first], (NONE, offsets(&[(0, 10), (1, 12), (2, -1)])));
    assert_eq!(by_group[&second], (NONE, offsets(&[(0, -1), (1, -1), (2, 22)])));
    assert_eq!(by_group[&remote].0, NOT_COORDINATOR);

    // Null topics return every committed partition of each group.
    let all = fetch_offsets_v8(&mut shard0, &[&first, &second], None);
    assert_eq!(all[&first], (NONE, offsets(&[(0, 10), (1, 12)])));
    assert_eq!(all[&second], (NONE, offsets(&[(2, 22)])));
    assert_eq!(fetch_offsets_v8(&mut shard1, &[&remote], None)[&remote], (NONE, offsets(&[(0, 30)])));

    // Committed offsets are durable across a restart.
    drop((shard0, shard1, bootstrap));
    broker.stop();
    broker.restart();
    let mut bootstrap = broker.connect();
    let addresses = shard_addresses(&mut bootstrap);
    let mut shard0 = Connection::open(&addresses[&0]);
    assert_eq!(fetch_offsets(&mut shard0, &first, "committed", &[0, 1, 2]), (NONE, expected_first));
}

#[test]
fn idempotent_produce_after_init_producer_id() {
    let broker = Broker::start(&[]);
    let mut connection = broker.connect();
    create_topic(&mut connection, "idempotent", 2);
    let addresses = shard_addresses(&mut connection);

    let producer = init_producer_id(&mut connection, None);
    assert!(producer.producer_id.0 >= 0);
    assert_eq!(producer.producer_epoch, 0);
    // InitProducerId is served by shard 0 for every shard, so ids stay unique.
    let mut other_shard = Connection::open(&addresses[&1]);
    let other = init_producer_id(&mut other_shard, None);
    assert_ne!(other.producer_id, producer.producer_id);

    let id = producer.producer_id.0;
    for partition in 0..2 {
        assert_eq!(produce(&mut connection, "idempotent", partition, idempotent_batch(id, 0, 0, 5, "a")), (NONE, 0));
        assert_eq!(produce(&mut connection, "idempotent", partition, idempotent_batch(id, 0, 5, 3, "b")), (NONE, 5));
        let stored = read_log(&mut connection, "idempotent", partition);
        let sequences: Vec<(i64, i64, i16, i32)> = stored.iter().map(|(offset, pid, epoch, sequence, _)| (*offset, *pid, *epoch, *sequence)).collect();
        let expected: Vec<(i64, i64, i16, i32)> = (0..8).map(|offset| (offset, id, 0, offset as i32)).collect();
        assert_eq!(sequences, expected, "partition {partition} stores the producer's id, epoch and sequences");
    }
}

#[test]
fn retried_batch_gets_original_offset() {
    let broker = Broker::start(&[]);
    let mut connection = broker.connect();
    create_topic(&mut connection, "retries", 1);
    let addresses = shard_addresses(&mut connection);
    let id = init_producer_id(&mut connection, None).producer_id.0;

    let first = idempotent_batch(id, 0, 0, 3, "first");
    let second = idempotent_batch(id, 0, 3, 2, "second");
    assert_eq!(produce(&mut connection, "retries", 0, first.clone()), (NONE, 0));
    assert_eq!(produce(&mut connection, "retries", 0, second.clone()), (NONE, 3));

    // Retries through either shard get the original offsets.
    for address in addresses.values() {
        let mut retry = Connection::open(address);
        assert_eq!(produce(&mut retry, "retries", 0, first.clone()), (NONE, 0), "retry of the first batch via {address}");
        assert_eq!(produce(&mut retry, "retries", 0, second.clone()), (NONE, 3), "retry of the second batch via {address}");
    }

    let values: Vec<String> = read_log(&mut connection, "retries", 0).into_iter().map(|record| record.4).collect();
    assert_eq!(values, vec!["first-0", "first-1", "first-2", "second-0", "second-1"], "retries appended nothing");
    assert_eq!(produce(&mut connection, "retries", 0, idempotent_batch(id, 0, 5, 1, "third")), (NONE, 5));
}

#[test]
fn sequence_gap_is_out_of_order() {
    let broker = Broker::start(&[]);
    let mut connection = broker.connect();
    create_topic(&mut connection, "gaps", 1);
    let id = init_producer_id(&mut connection, None).producer_id.0;

    assert_eq!(produce(&mut connection, "gaps", 0, idempotent_batch(id, 0, 0, 2, "a")), (NONE, 0));
    assert_eq!(produce(&mut connection, "gaps", 0, idempotent_batch(id, 0, 5, 1, "gap")).0, OUT_OF_ORDER_SEQUENCE_NUMBER);
    assert_eq!(produce(&mut connection, "gaps", 0, idempotent_batch(id, 0, 1, 2, "overlap")).0, OUT_OF_ORDER_SEQUENCE_NUMBER);
    assert_eq!(read_log(&mut connection, "gaps", 0).len(), 2, "rejected batches were not appended");
    assert_eq!(produce(&mut connection, "gaps", 0, idempotent_batch(id, 0, 2, 1, "next")), (NONE, 2));
}

#[test]
fn old_epoch_after_bump_is_fenced() {
    let broker = Broker::start(&[]);
    let mut connection = broker.connect();
    create_topic(&mut connection, "epochs", 1);
    let id = init_producer_id(&mut connection, None).producer_id.0;
    assert_eq!(produce(&mut connection, "epochs", 0, idempotent_batch(id, 0, 0, 2, "old")), (NONE, 0));

    let bumped = init_producer_id(&mut connection, Some((id, 0)));
    assert_eq!((bumped.producer_id.0, bumped.producer_epoch), (id, 1), "the same id with the next epoch");
    assert_eq!(produce(&mut connection, "epochs", 0, idempotent_batch(id, 1, 0, 1, "new")), (NONE, 2));

    assert_eq!(produce(&mut connection, "epochs", 0, idempotent_batch(id, 0, 2, 1, "zombie")).0, INVALID_PRODUCER_EPOCH);
    assert_eq!(produce(&mut connection, "epochs", 0, idempotent_batch(id, 0, 0, 2, "old")).0, INVALID_PRODUCER_EPOCH, "a retry of the old epoch is fenced too");
    let stored: Vec<(i16, String)> = read_log(&mut connection, "epochs", 0).into_iter().map(|record| (record.2, record.4)).collect();
    assert_eq!(stored, vec![(0, "old-0".to_string()), (0, "old-1".to_string()), (1, "new-0".to_string())]);
}
