//! Consumer group membership (the classic JoinGroup/SyncGroup protocol).
//!
//! [`GroupConsumer`] wraps a [`Consumer`] whose assignment comes from the
//! group coordinator instead of [`Consumer::assign`]:
//!
//! 1. FindCoordinator names the broker that owns the group (on Weir, the
//!    shard the group id hashes to).
//! 2. JoinGroup registers the member with its subscription. A broker that
//!    wants a member id first (MEMBER_ID_REQUIRED) gets a second JoinGroup.
//! 3. The member the coordinator elects leader computes a range assignment
//!    (each topic's partitions split into contiguous runs, as Kafka's
//!    `RangeAssignor` does) and sends it with SyncGroup. Every member reads
//!    its own share from the SyncGroup response.
//! 4. OffsetFetch gives each assigned partition's committed offset; a
//!    partition without one starts at the consumer's `reset_to` position.
//!
//! A heartbeat task keeps the membership alive. When the coordinator responds
//! to a heartbeat with REBALANCE_IN_PROGRESS, ILLEGAL_GENERATION or
//! UNKNOWN_MEMBER_ID, the next poll commits the positions (when auto-commit
//! is on) and joins again.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::consumer_protocol_assignment::TopicPartition as AssignedTopic;
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::leave_group_request::MemberIdentity;
use kafka_protocol::messages::offset_commit_request::{OffsetCommitRequestPartition, OffsetCommitRequestTopic};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::{
    ConsumerProtocolAssignment, ConsumerProtocolSubscription, FindCoordinatorRequest, GroupId, HeartbeatRequest,
    JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest, OffsetCommitRequest, OffsetFetchRequest, SyncGroupRequest,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

use super::cluster::{topic_name, Client};
use super::consumer::{Consumer, ConsumerConfig, ConsumerRecord, PollOutcome, StartOffset};
use super::error::ClientError;
use crate::runtime::{sleep, spawn_local, Task};

const PROTOCOL_TYPE: &str = "consumer";
const RANGE_ASSIGNOR: &str = "range";
/// Version of the subscription and assignment encodings sent.
const CONSUMER_PROTOCOL_VERSION: i16 = 0;
/// Highest subscription version decoded; later versions only add fields.
const CONSUMER_PROTOCOL_VERSION_MAX: i16 = 3;
/// Times a join is attempted before `join` gives up.
const JOIN_ATTEMPTS: u32 = 10;

const COORDINATOR_LOAD_IN_PROGRESS: i16 = 14;
const COORDINATOR_NOT_AVAILABLE: i16 = 15;
const NOT_COORDINATOR: i16 = 16;
const ILLEGAL_GENERATION: i16 = 22;
const UNKNOWN_MEMBER_ID: i16 = 25;
const REBALANCE_IN_PROGRESS: i16 = 27;
const MEMBER_ID_REQUIRED: i16 = 79;

/// Group settings, named after Kafka's consumer configs.
#[derive(Debug, Clone)]
pub struct GroupConfig {
    /// `group.id`
    pub group_id: String,
    /// `session.timeout.ms`: the coordinator drops a member silent this long.
    pub session_timeout: Duration,
    /// `max.poll.interval.ms`, sent as the rebalance timeout: how long the
    /// coordinator waits for members to rejoin.
    pub rebalance_timeout: Duration,
    /// `heartbeat.interval.ms`
    pub heartbeat_interval: Duration,
    /// `enable.auto.commit`: commit positions before every rejoin and on `leave`.
    pub auto_commit: bool,
}

impl GroupConfig {
    pub fn new(group_id: &str) -> GroupConfig {
        GroupConfig {
            group_id: group_id.to_string(),
            session_timeout: Duration::from_secs(10),
            rebalance_timeout: Duration::from_secs(10),
            heartbeat_interval: Duration::from_secs(3),
            auto_commit: true,
        }
    }
}

/// Membership state shared with the heartbeat task.
struct Membership {
    member_id: RefCell<String>,
    generation_id: Cell<i32>,
    coordinator: Cell<i32>,
    rejoin_needed: Cell<bool>,
}

/// A consumer whose partitions the group coordinator assigns.
pub struct GroupConsumer {
    consumer: Consumer,
    config: GroupConfig,
    topics: Vec<String>,
    membership: Rc<Membership>,
    assignment: Vec<(String, Vec<i32>)>,
    heartbeat: Option<Task<()>>,
}

impl GroupConsumer {
    /// Joins the group subscribed to `topics` and waits for the first assignment.
    pub async fn join(
        client: Client,
        consumer_config: ConsumerConfig,
        config: GroupConfig,
        topics: &[&str],
    ) -> Result<GroupConsumer, ClientError> {
        let mut group = GroupConsumer {
            consumer: Consumer::new(client, consumer_config),
            config,
            topics: topics.iter().map(|topic| topic.to_string()).collect(),
            membership: Rc::new(Membership {
                member_id: RefCell::new(String::new()),
                generation_id: Cell::new(-1),
                coordinator: Cell::new(-1),
                rejoin_needed: Cell::new(true),
            }),
            assignment: Vec::new(),
            heartbeat: None,
        };
        group.rejoin().await?;
        Ok(group)
    }

    /// Returns the partitions assigned in the current generation.
    pub fn assignment(&self) -> &[(String, Vec<i32>)] {
        &self.assignment
    }

    pub fn generation_id(&self) -> i32 {
        self.membership.generation_id.get()
    }

    pub fn member_id(&self) -> String {
        self.membership.member_id.borrow().clone()
    }

    pub fn consumer(&self) -> &Consumer {
        &self.consumer
    }

    /// Rejoins first when a rebalance is pending, then polls like [`Consumer::poll_batches`].
    pub async fn poll_batches(&mut self, timeout: Duration) -> Result<PollOutcome, ClientError> {
        self.rejoin_if_needed().await?;
        self.consumer.poll_batches(timeout).await
    }

    /// Rejoins first when a rebalance is pending, then polls like [`Consumer::poll`].
    pub async fn poll(&mut self, timeout: Duration) -> Result<(Vec<ConsumerRecord>, Vec<ClientError>), ClientError> {
        self.rejoin_if_needed().await?;
        self.consumer.poll(timeout).await
    }

    async fn rejoin_if_needed(&mut self) -> Result<(), ClientError> {
        if !self.membership.rejoin_needed.get() {
            return Ok(());
        }
        if self.config.auto_commit {
            // A commit rejected because the generation moved on is fine:
            // the partitions may belong to another member now.
            let _ = self.commit().await;
        }
        self.rejoin().await
    }

    /// Commits every assigned partition's position.
    pub async fn commit(&mut self) -> Result<(), ClientError> {
        let mut topics: BTreeMap<String, Vec<OffsetCommitRequestPartition>> = BTreeMap::new();
        for (topic, partition, offset) in self.consumer.positions() {
            topics.entry(topic.to_string()).or_default().push(
                OffsetCommitRequestPartition::default()
                    .with_partition_index(partition)
                    .with_committed_offset(offset)
                    .with_committed_leader_epoch(-1)
                    .with_committed_metadata(Some(StrBytes::from_static_str(""))),
            );
        }
        if topics.is_empty() {
            return Ok(());
        }
        let request = OffsetCommitRequest::default()
            .with_group_id(group_id(&self.config.group_id))
            .with_generation_id_or_member_epoch(self.membership.generation_id.get())
            .with_member_id(StrBytes::from_string(self.member_id()))
            .with_retention_time_ms(-1)
            .with_topics(
                topics
                    .into_iter()
                    .map(|(name, partitions)| {
                        OffsetCommitRequestTopic::default().with_name(topic_name(&name)).with_partitions(partitions)
                    })
                    .collect(),
            );
        let connection = self.consumer.client().connection(self.membership.coordinator.get()).await?;
        let response = connection.call(&request).await?;
        for topic in response.topics {
            for partition in topic.partitions {
                if partition.error_code != 0 {
                    self.note_group_error(partition.error_code);
                    return Err(ClientError::kafka(
                        "OffsetCommit",
                        topic.name.0.as_str(),
                        partition.partition_index,
                        partition.error_code,
                    ));
                }
            }
        }
        Ok(())
    }

    /// Commits (when auto-commit is on) and leaves the group, so the other
    /// members rebalance at once instead of after the session timeout.
    pub async fn leave(mut self) -> Result<(), ClientError> {
        if self.config.auto_commit {
            let _ = self.commit().await;
        }
        self.heartbeat = None;
        let connection = self.consumer.client().connection(self.membership.coordinator.get()).await?;
        let version = connection.version_for::<LeaveGroupRequest>()?;
        let member_id = StrBytes::from_string(self.member_id());
        let mut request = LeaveGroupRequest::default().with_group_id(group_id(&self.config.group_id));
        // Versions up to 2 name one member, 3 and later a list.
        if version >= 3 {
            request.members = vec![MemberIdentity::default().with_member_id(member_id)];
        } else {
            request.member_id = member_id;
        }
        let response = connection.send(&request, version).await?.await?;
        if response.error_code != 0 {
            return Err(group_error("LeaveGroup", &self.config.group_id, response.error_code));
        }
        Ok(())
    }

    fn note_group_error(&self, code: i16) {
        if matches!(code, REBALANCE_IN_PROGRESS | ILLEGAL_GENERATION | UNKNOWN_MEMBER_ID | NOT_COORDINATOR) {
            self.membership.rejoin_needed.set(true);
        }
        if code == UNKNOWN_MEMBER_ID {
            self.membership.member_id.borrow_mut().clear();
        }
    }

    /// Runs the join protocol until it yields an assignment, bounded by
    /// [`JOIN_ATTEMPTS`], and moves the consumer to the new partitions.
    async fn rejoin(&mut self) -> Result<(), ClientError> {
        self.heartbeat = None;
        let client = self.consumer.client().clone();
        let backoff = client.config().retry_backoff;
        let mut last_error = None;
        for attempt in 0..JOIN_ATTEMPTS {
            if attempt > 0 {
                sleep(backoff).await;
            }
            match self.join_once(&client).await {
                Ok(assignment) => {
                    self.apply_assignment(&client, assignment).await?;
                    self.membership.rejoin_needed.set(false);
                    self.heartbeat =
                        Some(spawn_local(heartbeat_loop(client.clone(), self.config.clone(), self.membership.clone())));
                    return Ok(());
                }
                Err(err) => {
                    tracing::debug!(target: "weir::client", group = %self.config.group_id, attempt, error = %err, "join failed");
                    if let Some(code) = err.kafka_code() {
                        self.note_group_error(code);
                        if matches!(code, NOT_COORDINATOR | COORDINATOR_NOT_AVAILABLE | COORDINATOR_LOAD_IN_PROGRESS) {
                            self.membership.coordinator.set(-1);
                        }
                    }
                    // Kafka does not class these three as retriable, but each
                    // only means that the member must join again.
                    let rejoin_codes = [ILLEGAL_GENERATION, UNKNOWN_MEMBER_ID, REBALANCE_IN_PROGRESS];
                    if !err.is_retriable() && !err.kafka_code().is_some_and(|code| rejoin_codes.contains(&code)) {
                        return Err(err);
                    }
                    last_error = Some(err);
                }
            }
        }
        Err(last_error.expect("at least one join attempt ran"))
    }

    async fn join_once(&self, client: &Client) -> Result<Vec<(String, Vec<i32>)>, ClientError> {
        if self.membership.coordinator.get() < 0 {
            let coordinator = find_coordinator(client, &self.config.group_id).await?;
            self.membership.coordinator.set(coordinator);
        }
        let connection = client.connection(self.membership.coordinator.get()).await?;

        let mut response = self.send_join(&connection).await?;
        if response.error_code == MEMBER_ID_REQUIRED {
            *self.membership.member_id.borrow_mut() = response.member_id.as_str().to_string();
            response = self.send_join(&connection).await?;
        }
        if response.error_code != 0 {
            return Err(group_error("JoinGroup", &self.config.group_id, response.error_code));
        }
        *self.membership.member_id.borrow_mut() = response.member_id.as_str().to_string();
        self.membership.generation_id.set(response.generation_id);

        let assignments = if response.leader == response.member_id {
            self.assign_as_leader(client, &response).await?
        } else {
            Vec::new()
        };
        let request = SyncGroupRequest::default()
            .with_group_id(group_id(&self.config.group_id))
            .with_generation_id(response.generation_id)
            .with_member_id(response.member_id.clone())
            .with_protocol_type(Some(StrBytes::from_static_str(PROTOCOL_TYPE)))
            .with_protocol_name(response.protocol_name.clone())
            .with_assignments(assignments);
        let sync = connection.call(&request).await?;
        if sync.error_code != 0 {
            return Err(group_error("SyncGroup", &self.config.group_id, sync.error_code));
        }
        decode_assignment(sync.assignment)
    }

    async fn send_join(&self, connection: &super::Connection) -> Result<JoinGroupResponse, ClientError> {
        let request = JoinGroupRequest::default()
            .with_group_id(group_id(&self.config.group_id))
            .with_session_timeout_ms(millis(self.config.session_timeout))
            .with_rebalance_timeout_ms(millis(self.config.rebalance_timeout))
            .with_member_id(StrBytes::from_string(self.member_id()))
            .with_protocol_type(StrBytes::from_static_str(PROTOCOL_TYPE))
            .with_protocols(vec![JoinGroupRequestProtocol::default()
                .with_name(StrBytes::from_static_str(RANGE_ASSIGNOR))
                .with_metadata(encode_subscription(&self.topics)?)]);
        connection.call(&request).await
    }

    /// Computes the range assignment for every member of the join.
    async fn assign_as_leader(
        &self,
        client: &Client,
        response: &JoinGroupResponse,
    ) -> Result<Vec<SyncGroupRequestAssignment>, ClientError> {
        let mut subscriptions: Vec<(String, Vec<String>)> = Vec::new();
        for member in &response.members {
            subscriptions.push((member.member_id.as_str().to_string(), decode_subscription(member.metadata.clone())?));
        }
        let mut all_topics: Vec<&str> =
            subscriptions.iter().flat_map(|(_, topics)| topics.iter().map(String::as_str)).collect();
        all_topics.sort_unstable();
        all_topics.dedup();
        client.refresh_metadata(Some(&all_topics)).await?;
        let partition_counts: BTreeMap<String, usize> = all_topics
            .iter()
            .filter_map(|topic| client.partition_count(topic).map(|count| (topic.to_string(), count)))
            .collect();

        let plan = range_assign(&subscriptions, &partition_counts);
        plan.into_iter()
            .map(|(member_id, topics)| {
                Ok(SyncGroupRequestAssignment::default()
                    .with_member_id(StrBytes::from_string(member_id))
                    .with_assignment(encode_assignment(&topics)?))
            })
            .collect()
    }

    async fn apply_assignment(
        &mut self,
        client: &Client,
        assignment: Vec<(String, Vec<i32>)>,
    ) -> Result<(), ClientError> {
        let committed = self.fetch_committed(client, &assignment).await?;
        self.consumer.unassign_all();
        let reset_to = self.consumer.config().reset_to;
        for (topic, partitions) in &assignment {
            let (with_offset, without): (Vec<i32>, Vec<i32>) = partitions
                .iter()
                .partition(|partition| committed.get(&(topic.clone(), **partition)).is_some_and(|offset| *offset >= 0));
            for partition in with_offset {
                let offset = committed[&(topic.clone(), partition)];
                self.consumer.assign(topic, Some(&[partition]), StartOffset::At(offset)).await?;
            }
            if !without.is_empty() {
                self.consumer.assign(topic, Some(&without), reset_to).await?;
            }
        }
        tracing::debug!(target: "weir::client", group = %self.config.group_id, generation = self.generation_id(), ?assignment, "joined group");
        self.assignment = assignment;
        Ok(())
    }

    async fn fetch_committed(
        &self,
        client: &Client,
        assignment: &[(String, Vec<i32>)],
    ) -> Result<BTreeMap<(String, i32), i64>, ClientError> {
        let mut committed = BTreeMap::new();
        if assignment.is_empty() {
            return Ok(committed);
        }
        let request = OffsetFetchRequest::default().with_group_id(group_id(&self.config.group_id)).with_topics(Some(
            assignment
                .iter()
                .map(|(topic, partitions)| {
                    OffsetFetchRequestTopic::default()
                        .with_name(topic_name(topic))
                        .with_partition_indexes(partitions.clone())
                })
                .collect(),
        ));
        let connection = client.connection(self.membership.coordinator.get()).await?;
        let response = connection.call(&request).await?;
        if response.error_code != 0 {
            return Err(group_error("OffsetFetch", &self.config.group_id, response.error_code));
        }
        for topic in response.topics {
            for partition in topic.partitions {
                if partition.error_code != 0 {
                    return Err(ClientError::kafka(
                        "OffsetFetch",
                        topic.name.0.as_str(),
                        partition.partition_index,
                        partition.error_code,
                    ));
                }
                committed
                    .insert((topic.name.0.as_str().to_string(), partition.partition_index), partition.committed_offset);
            }
        }
        Ok(committed)
    }
}

/// Sends heartbeats until the coordinator requests a rejoin, or until the
/// membership is replaced and the task dropped.
async fn heartbeat_loop(client: Client, config: GroupConfig, membership: Rc<Membership>) {
    loop {
        sleep(config.heartbeat_interval).await;
        let request = HeartbeatRequest::default()
            .with_group_id(group_id(&config.group_id))
            .with_generation_id(membership.generation_id.get())
            .with_member_id(StrBytes::from_string(membership.member_id.borrow().clone()));
        let result = match client.connection(membership.coordinator.get()).await {
            Ok(connection) => connection.call(&request).await,
            Err(err) => Err(err),
        };
        match result {
            Ok(response) if response.error_code == 0 => {}
            Ok(response) => {
                tracing::debug!(target: "weir::client", group = %config.group_id, code = response.error_code, "heartbeat asks to rejoin");
                if response.error_code == UNKNOWN_MEMBER_ID {
                    membership.member_id.borrow_mut().clear();
                }
                if matches!(response.error_code, NOT_COORDINATOR | COORDINATOR_NOT_AVAILABLE) {
                    membership.coordinator.set(-1);
                }
                membership.rejoin_needed.set(true);
                return;
            }
            Err(err) => {
                // A failed heartbeat is retried at the next interval; the
                // session timeout is several intervals long.
                tracing::debug!(target: "weir::client", group = %config.group_id, error = %err, "heartbeat failed");
            }
        }
    }
}

async fn find_coordinator(client: &Client, group: &str) -> Result<i32, ClientError> {
    let connection = client.any_connection().await?;
    let version = connection.version_for::<FindCoordinatorRequest>()?;
    // Versions up to 3 ask for one key, 4 and later for a list.
    let mut request = FindCoordinatorRequest::default().with_key_type(0);
    if version >= 4 {
        request.coordinator_keys = vec![StrBytes::from_string(group.to_string())];
    } else {
        request.key = StrBytes::from_string(group.to_string());
    }
    let response = connection.send(&request, version).await?.await?;
    let (error_code, node_id) = match response.coordinators.first() {
        Some(coordinator) if version >= 4 => (coordinator.error_code, coordinator.node_id.0),
        _ => (response.error_code, response.node_id.0),
    };
    if error_code != 0 {
        return Err(group_error("FindCoordinator", group, error_code));
    }
    if client.brokers().iter().all(|(id, _)| *id != node_id) {
        client.refresh_metadata(None).await?;
    }
    Ok(node_id)
}

/// Kafka's range assignment: for each topic, members subscribed to it (by
/// member id order) get contiguous runs of partitions, the first
/// `partitions % members` of them one partition more.
pub fn range_assign(
    subscriptions: &[(String, Vec<String>)],
    partition_counts: &BTreeMap<String, usize>,
) -> BTreeMap<String, Vec<(String, Vec<i32>)>> {
    let mut plan: BTreeMap<String, Vec<(String, Vec<i32>)>> =
        subscriptions.iter().map(|(member, _)| (member.clone(), Vec::new())).collect();
    for (topic, count) in partition_counts {
        let mut members: Vec<&String> =
            subscriptions.iter().filter(|(_, topics)| topics.contains(topic)).map(|(member, _)| member).collect();
        members.sort();
        if members.is_empty() {
            continue;
        }
        let per_member = count / members.len();
        let extra = count % members.len();
        let mut next = 0usize;
        for (index, member) in members.iter().enumerate() {
            let share = per_member + usize::from(index < extra);
            let partitions: Vec<i32> = (next..next + share).map(|partition| partition as i32).collect();
            next += share;
            if !partitions.is_empty() {
                plan.get_mut(*member).expect("member in plan").push((topic.clone(), partitions));
            }
        }
    }
    plan
}

fn encode_subscription(topics: &[String]) -> Result<Bytes, ClientError> {
    let subscription = ConsumerProtocolSubscription::default()
        .with_topics(topics.iter().map(|topic| StrBytes::from_string(topic.clone())).collect());
    encode_versioned(&subscription)
}

fn decode_subscription(mut metadata: Bytes) -> Result<Vec<String>, ClientError> {
    let version = read_version(&mut metadata, "JoinGroup")?;
    let subscription = ConsumerProtocolSubscription::decode(&mut metadata, version)
        .map_err(|err| ClientError::protocol("JoinGroup", format!("invalid consumer subscription: {err}")))?;
    Ok(subscription.topics.iter().map(|topic| topic.as_str().to_string()).collect())
}

fn encode_assignment(topics: &[(String, Vec<i32>)]) -> Result<Bytes, ClientError> {
    let assignment = ConsumerProtocolAssignment::default().with_assigned_partitions(
        topics
            .iter()
            .map(|(topic, partitions)| {
                AssignedTopic::default().with_topic(topic_name(topic)).with_partitions(partitions.clone())
            })
            .collect(),
    );
    encode_versioned(&assignment)
}

fn decode_assignment(mut bytes: Bytes) -> Result<Vec<(String, Vec<i32>)>, ClientError> {
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    let version = read_version(&mut bytes, "SyncGroup")?;
    let assignment = ConsumerProtocolAssignment::decode(&mut bytes, version)
        .map_err(|err| ClientError::protocol("SyncGroup", format!("invalid consumer assignment: {err}")))?;
    Ok(assignment
        .assigned_partitions
        .into_iter()
        .map(|topic| (topic.topic.0.as_str().to_string(), topic.partitions))
        .collect())
}

/// Encodes a consumer-protocol message after its i16 version, as Kafka
/// clients frame them inside JoinGroup and SyncGroup.
fn encode_versioned<M: Encodable>(message: &M) -> Result<Bytes, ClientError> {
    let mut buf = BytesMut::new();
    buf.put_i16(CONSUMER_PROTOCOL_VERSION);
    message.encode(&mut buf, CONSUMER_PROTOCOL_VERSION).map_err(|err| ClientError::protocol("JoinGroup", err))?;
    Ok(buf.freeze())
}

fn read_version(bytes: &mut Bytes, api: &'static str) -> Result<i16, ClientError> {
    if bytes.len() < 2 {
        return Err(ClientError::protocol(api, "consumer protocol message shorter than its version"));
    }
    let version = bytes.get_i16();
    if version < 0 {
        return Err(ClientError::protocol(api, format!("consumer protocol version {version} is negative")));
    }
    Ok(version.min(CONSUMER_PROTOCOL_VERSION_MAX))
}

fn group_id(group: &str) -> GroupId {
    GroupId(StrBytes::from_string(group.to_string()))
}

fn group_error(api: &'static str, group: &str, code: i16) -> ClientError {
    ClientError::Kafka { api, topic: Some(format!("group {group}")), partition: None, code }
}

fn millis(duration: Duration) -> i32 {
    duration.as_millis().min(i32::MAX as u128) as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subscriptions(members: &[(&str, &[&str])]) -> Vec<(String, Vec<String>)> {
        members
            .iter()
            .map(|(member, topics)| (member.to_string(), topics.iter().map(|topic| topic.to_string()).collect()))
            .collect()
    }

    #[test]
    fn range_assignment_splits_contiguously() {
        let counts: BTreeMap<String, usize> = [("a".to_string(), 7), ("b".to_string(), 2)].into_iter().collect();
        let plan = range_assign(&subscriptions(&[("m2", &["a", "b"]), ("m1", &["a", "b"]), ("m3", &["a"])]), &counts);
        assert_eq!(plan["m1"], vec![("a".to_string(), vec![0, 1, 2]), ("b".to_string(), vec![0])]);
        assert_eq!(plan["m2"], vec![("a".to_string(), vec![3, 4]), ("b".to_string(), vec![1])]);
        assert_eq!(plan["m3"], vec![("a".to_string(), vec![5, 6])]);
    }

    #[test]
    fn range_assignment_leaves_extra_members_empty() {
        let counts: BTreeMap<String, usize> = [("a".to_string(), 1)].into_iter().collect();
        let plan = range_assign(&subscriptions(&[("m1", &["a"]), ("m2", &["a"])]), &counts);
        assert_eq!(plan["m1"], vec![("a".to_string(), vec![0])]);
        assert!(plan["m2"].is_empty());
    }

    #[test]
    fn subscription_and_assignment_round_trip() {
        let topics = vec!["orders".to_string(), "payments".to_string()];
        assert_eq!(decode_subscription(encode_subscription(&topics).unwrap()).unwrap(), topics);
        let assignment = vec![("orders".to_string(), vec![0, 2]), ("payments".to_string(), vec![1])];
        assert_eq!(decode_assignment(encode_assignment(&assignment).unwrap()).unwrap(), assignment);
        assert!(decode_assignment(Bytes::new()).unwrap().is_empty());
    }
}
