//! In-memory model of one classic consumer group: members, generation,
//! selected protocol and committed offsets.
//!
//! Nothing here does I/O or spawns tasks. The rebalance protocol that drives
//! these structures lives in `membership.rs`, persistence in `journal.rs`.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::Instant;

use bytes::Bytes;
use futures::channel::oneshot;
use indexmap::IndexMap;
use kafka_protocol::error::ResponseError;

/// Protocol type that consumer clients register; its member metadata is a
/// `ConsumerProtocolSubscription`.
pub(super) const CONSUMER_PROTOCOL_TYPE: &str = "consumer";

/// Group type reported by ListGroups v5+ for groups that speak the classic
/// JoinGroup/SyncGroup protocol.
pub(super) const CLASSIC_GROUP_TYPE: &str = "classic";

/// Life-cycle state of a classic group, named as Kafka names them on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum GroupState {
    /// No members; may still hold committed offsets.
    Empty,
    /// Waiting for every known member to send JoinGroup again.
    PreparingRebalance,
    /// Join finished; waiting for the leader's SyncGroup with assignments.
    CompletingRebalance,
    /// Every member has a generation and an assignment.
    Stable,
    /// Deleted or expired; removed from the coordinator once persisted.
    Dead,
}

impl GroupState {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
            GroupState::Dead => "Dead",
        }
    }
}

/// Result of a JoinGroup request, turned into a versioned response by the caller.
#[derive(Debug, Clone)]
pub(super) struct JoinOutcome {
    pub error: Option<ResponseError>,
    pub member_id: String,
    pub generation_id: i32,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub leader_id: String,
    /// Every member with its metadata for the selected protocol; only the leader gets it.
    pub members: Vec<JoinedMember>,
}

impl JoinOutcome {
    pub(super) fn error(member_id: impl Into<String>, error: ResponseError) -> Self {
        JoinOutcome {
            error: Some(error),
            member_id: member_id.into(),
            generation_id: -1,
            protocol_type: None,
            protocol_name: None,
            leader_id: String::new(),
            members: Vec::new(),
        }
    }
}

/// One entry of the member list the leader receives.
#[derive(Debug, Clone)]
pub(super) struct JoinedMember {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub metadata: Bytes,
}

/// Result of a SyncGroup request.
#[derive(Debug, Clone)]
pub(super) struct SyncOutcome {
    pub error: Option<ResponseError>,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub assignment: Bytes,
}

impl SyncOutcome {
    pub(super) fn error(error: ResponseError) -> Self {
        SyncOutcome {
            error: Some(error),
            protocol_type: None,
            protocol_name: None,
            assignment: Bytes::new(),
        }
    }
}

/// A member of a group that completed the member-id round trip.
pub(super) struct Member {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub rebalance_timeout_ms: i32,
    pub session_timeout_ms: i32,
    pub protocol_type: String,
    /// Supported protocols in the member's order of preference, with their metadata.
    pub protocols: Vec<(String, Bytes)>,
    /// Assignment received from the leader for the current generation.
    pub assignment: Bytes,
    /// The member's outstanding JoinGroup request, at most one.
    pub awaiting_join: Option<oneshot::Sender<JoinOutcome>>,
    /// The member's outstanding SyncGroup request, at most one.
    pub awaiting_sync: Option<oneshot::Sender<SyncOutcome>>,
    /// True until the member's first join completes; new members time out
    /// after a fixed delay even while they wait in a rebalance.
    pub is_new: bool,
    /// The member is removed when no heartbeat arrives before this instant.
    pub heartbeat_deadline: Instant,
}

impl Member {
    pub(super) fn matches(&self, protocols: &[(String, Bytes)]) -> bool {
        self.protocols == protocols
    }

    pub(super) fn metadata(&self, protocol: &str) -> Bytes {
        self.protocols
            .iter()
            .find(|(name, _)| name == protocol)
            .map(|(_, metadata)| metadata.clone())
            .unwrap_or_default()
    }

    /// Completes the waiting JoinGroup, if any.
    pub(super) fn complete_join(&mut self, outcome: JoinOutcome) {
        if let Some(sender) = self.awaiting_join.take() {
            // The requester may have gone away; its response is then dropped.
            let _ = sender.send(outcome);
        }
    }

    /// Completes the waiting SyncGroup, if any.
    pub(super) fn complete_sync(&mut self, outcome: SyncOutcome) {
        if let Some(sender) = self.awaiting_sync.take() {
            let _ = sender.send(outcome);
        }
    }
}

/// A committed offset of one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct CommittedOffset {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: String,
    pub commit_timestamp_ms: i64,
    /// Explicit expiry from OffsetCommit v2-v4 `retention_time_ms`.
    pub expire_timestamp_ms: Option<i64>,
    /// Size of the journal record that stores this offset.
    pub record_bytes: u32,
}

/// Key of a committed offset inside a group: topic and partition.
pub(super) type PartitionKey = (String, i32);

/// One classic group.
pub(super) struct Group {
    pub id: String,
    pub state: GroupState,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub generation_id: i32,
    pub leader_id: Option<String>,
    /// Members in join order; the first one becomes leader when the leader leaves.
    pub members: IndexMap<String, Member>,
    /// `group.instance.id` to current member id.
    pub static_members: HashMap<String, String>,
    /// Member ids handed out with MEMBER_ID_REQUIRED that have not joined yet,
    /// each with the instant it expires.
    pub pending_members: HashMap<String, Instant>,
    /// Members that received the current generation but sent no SyncGroup yet.
    pub pending_sync: HashSet<String>,
    /// A member joined during the initial rebalance delay, so the delay is extended.
    pub new_member_added: bool,
    /// Identifies the join timer that may complete the current rebalance.
    pub join_timer_epoch: u64,
    /// Rebalance time left after the current initial-delay timer; None once
    /// the group waits on a regular rebalance timeout.
    pub initial_delay_remaining_ms: Option<i64>,
    /// Identifies the timer that removes members who never sent SyncGroup.
    pub sync_timer_epoch: u64,
    pub offsets: BTreeMap<PartitionKey, CommittedOffset>,
    /// Wall-clock time at which the group last became Empty; the retention of
    /// a consumer group's offsets counts from here.
    pub empty_since_ms: Option<i64>,
    /// Size of the journal record holding the group's state, 0 when it has none.
    pub state_record_bytes: u32,
}

impl Group {
    pub(super) fn new(id: String) -> Self {
        Group {
            id,
            state: GroupState::Empty,
            protocol_type: None,
            protocol_name: None,
            generation_id: 0,
            leader_id: None,
            members: IndexMap::new(),
            static_members: HashMap::new(),
            pending_members: HashMap::new(),
            pending_sync: HashSet::new(),
            new_member_added: false,
            join_timer_epoch: 0,
            initial_delay_remaining_ms: None,
            sync_timer_epoch: 0,
            offsets: BTreeMap::new(),
            empty_since_ms: None,
            state_record_bytes: 0,
        }
    }

    pub(super) fn is(&self, state: GroupState) -> bool {
        self.state == state
    }

    pub(super) fn is_leader(&self, member_id: &str) -> bool {
        self.leader_id.as_deref() == Some(member_id)
    }

    /// Whether a member with these protocols may join: the first member sets
    /// the protocol type, later ones must share it and support at least one
    /// protocol that every current member supports.
    pub(super) fn supports_protocols(
        &self,
        protocol_type: &str,
        protocols: &[(String, Bytes)],
    ) -> bool {
        if self.members.is_empty() {
            return !protocol_type.is_empty() && !protocols.is_empty();
        }
        if self.protocol_type.as_deref() != Some(protocol_type) {
            return false;
        }
        protocols.iter().any(|(name, _)| {
            self.members.values().all(|member| {
                member
                    .protocols
                    .iter()
                    .any(|(supported, _)| supported == name)
            })
        })
    }

    /// Picks the protocol every member supports, by a vote in which each
    /// member names its most preferred candidate. Ties go to the candidate the
    /// earliest member prefers. None when the group has no common protocol.
    pub(super) fn select_protocol(&self) -> Option<String> {
        let first = self.members.values().next()?;
        let candidates: Vec<&str> = first
            .protocols
            .iter()
            .map(|(name, _)| name.as_str())
            .filter(|name| {
                self.members.values().all(|member| {
                    member
                        .protocols
                        .iter()
                        .any(|(supported, _)| supported == name)
                })
            })
            .collect();

        let mut votes: HashMap<&str, usize> = HashMap::new();
        for member in self.members.values() {
            let vote = member
                .protocols
                .iter()
                .map(|(name, _)| name.as_str())
                .find(|name| candidates.contains(name));
            if let Some(vote) = vote {
                *votes.entry(vote).or_default() += 1;
            }
        }

        let mut best: Option<(&str, usize)> = None;
        for candidate in &candidates {
            let count = votes.get(candidate).copied().unwrap_or(0);
            if best.is_none_or(|(_, best_count)| count > best_count) {
                best = Some((candidate, count));
            }
        }
        best.map(|(name, _)| name.to_string())
    }

    pub(super) fn add_member(&mut self, member: Member) {
        if self.members.is_empty() {
            self.protocol_type = Some(member.protocol_type.clone());
        }
        if self.leader_id.is_none() {
            self.leader_id = Some(member.member_id.clone());
        }
        if let Some(instance_id) = &member.group_instance_id {
            self.static_members
                .insert(instance_id.clone(), member.member_id.clone());
        }
        self.members.insert(member.member_id.clone(), member);
    }

    /// Removes a member, handing leadership to the earliest remaining member.
    pub(super) fn remove_member(&mut self, member_id: &str) -> Option<Member> {
        let member = self.members.shift_remove(member_id)?;
        if let Some(instance_id) = &member.group_instance_id {
            if self.static_members.get(instance_id).map(String::as_str) == Some(member_id) {
                self.static_members.remove(instance_id);
            }
        }
        self.pending_sync.remove(member_id);
        if self.is_leader(member_id) {
            self.leader_id = self.members.keys().next().cloned();
        }
        Some(member)
    }

    pub(super) fn awaiting_join_count(&self) -> usize {
        self.members
            .values()
            .filter(|member| member.awaiting_join.is_some())
            .count()
    }

    pub(super) fn all_members_joined(&self) -> bool {
        self.pending_members.is_empty() && self.awaiting_join_count() == self.members.len()
    }

    /// Returns the largest rebalance timeout among the members, which bounds how long a rebalance waits.
    pub(super) fn rebalance_timeout_ms(&self) -> i32 {
        self.members
            .values()
            .map(|member| member.rebalance_timeout_ms)
            .max()
            .unwrap_or(0)
    }

    /// Members with their metadata for the selected protocol, sent to the leader.
    pub(super) fn joined_members(&self) -> Vec<JoinedMember> {
        let protocol = self.protocol_name.as_deref().unwrap_or_default();
        self.members
            .values()
            .map(|member| JoinedMember {
                member_id: member.member_id.clone(),
                group_instance_id: member.group_instance_id.clone(),
                metadata: member.metadata(protocol),
            })
            .collect()
    }

    /// Topics the consumer members subscribe to, or None when the group is
    /// not a consumer group or a subscription cannot be decoded.
    pub(super) fn subscribed_topics(&self) -> Option<BTreeSet<String>> {
        if self.protocol_type.as_deref() != Some(CONSUMER_PROTOCOL_TYPE) {
            return None;
        }
        let protocol = self.protocol_name.as_deref()?;
        let mut topics = BTreeSet::new();
        for member in self.members.values() {
            let subscription = decode_subscription(&member.metadata(protocol))?;
            topics.extend(subscription);
        }
        Some(topics)
    }
}

/// Reads the topics of a consumer subscription: a 16-bit version, then a
/// `ConsumerProtocolSubscription` whose first field (in every version so
/// far) is a 32-bit count of 16-bit-length strings.
///
/// Parsed by hand because kafka-protocol's decoder reserves memory for the
/// declared element count before reading any element, and this metadata is
/// whatever a client sent.
fn decode_subscription(metadata: &[u8]) -> Option<Vec<String>> {
    let version = i16::from_be_bytes(metadata.get(0..2)?.try_into().ok()?);
    if version < 0 {
        return None;
    }
    let count = i32::from_be_bytes(metadata.get(2..6)?.try_into().ok()?);
    let mut rest = &metadata[6..];
    // Each topic takes at least its 2-byte length, which bounds a forged count.
    if count < 0 || count as usize > rest.len() / 2 {
        return None;
    }
    let mut topics = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let length = i16::from_be_bytes(rest.get(0..2)?.try_into().ok()?);
        let length = usize::try_from(length).ok()?;
        let name = rest.get(2..2 + length)?;
        topics.push(std::str::from_utf8(name).ok()?.to_string());
        rest = &rest[2 + length..];
    }
    Some(topics)
}

#[cfg(test)]
mod tests {
    use super::decode_subscription;

    #[test]
    fn subscription_topics_are_read_safely() {
        let mut metadata = vec![0, 1, 0, 0, 0, 2];
        for topic in ["orders", "users"] {
            metadata.extend_from_slice(&(topic.len() as i16).to_be_bytes());
            metadata.extend_from_slice(topic.as_bytes());
        }
        metadata.extend_from_slice(&[0xff, 0xff, 0xff, 0xff]);
        assert_eq!(
            decode_subscription(&metadata),
            Some(vec!["orders".to_string(), "users".to_string()])
        );

        assert_eq!(decode_subscription(b"range-metadata"), None, "forged count");
        assert_eq!(
            decode_subscription(&[0, 0, 0, 0, 0, 1, 0, 9, b'x']),
            None,
            "truncated name"
        );
        assert_eq!(decode_subscription(&[0]), None);
        assert_eq!(
            decode_subscription(&[0xff, 0xff, 0, 0, 0, 0]),
            None,
            "negative version"
        );
    }
}
