//! OffsetCommit and OffsetFetch, the offset store's journal replay, and
//! offset retention.

use futures::channel::oneshot;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::{
    OffsetCommitRequest, OffsetCommitResponse, OffsetFetchRequest, OffsetFetchResponse,
};

use super::journal::{self, JournalFailed, Record};
use super::membership::{error_code, validate_current_member};
use super::state::{CommittedOffset, Group, GroupState, CONSUMER_PROTOCOL_TYPE};
use super::{spawn_background, str_bytes, ApplyMode, GroupCoordinator, Inner};

/// Partitions of one topic to fetch offsets for.
type TopicPartitions = (String, Vec<i32>);

/// Fetched offsets of one topic: each partition with its committed offset, if any.
type FetchedTopic = (String, Vec<(i32, Option<CommittedOffset>)>);

/// Per-partition outcome of an OffsetCommit before its records are durable.
struct CommitPlan {
    /// Same shape as the request: one entry per topic, one per partition.
    errors: Vec<Vec<Option<ResponseError>>>,
    /// Resolves when the accepted partitions' records are durable.
    durable: Option<oneshot::Receiver<Result<(), JournalFailed>>>,
}

impl GroupCoordinator {
    /// Handles OffsetCommit v2-v9. Responds after the commit is durable.
    pub async fn offset_commit(
        &self,
        req: OffsetCommitRequest,
        version: i16,
    ) -> OffsetCommitResponse {
        let CommitPlan {
            mut errors,
            durable,
        } = self.inner.borrow_mut().begin_commit(&req, version);
        if let Some(durable) = durable {
            let failed = !matches!(durable.await, Ok(Ok(())));
            if failed {
                // Accepted partitions were not stored; the client may retry.
                for error in errors.iter_mut().flatten().filter(|error| error.is_none()) {
                    *error = Some(ResponseError::CoordinatorNotAvailable);
                }
            }
        }

        let mut response = OffsetCommitResponse::default();
        response.topics = req
            .topics
            .iter()
            .zip(errors)
            .map(|(topic, topic_errors)| {
                let mut response_topic = OffsetCommitResponseTopic::default();
                response_topic.name = topic.name.clone();
                response_topic.partitions = topic
                    .partitions
                    .iter()
                    .zip(topic_errors)
                    .map(|(partition, error)| {
                        let mut response_partition = OffsetCommitResponsePartition::default();
                        response_partition.partition_index = partition.partition_index;
                        response_partition.error_code = error_code(error);
                        response_partition
                    })
                    .collect();
                response_topic
            })
            .collect();
        response
    }

    /// Handles OffsetFetch v1-v9: one group before v8, a batch of groups after.
    /// A null topic list fetches every committed offset of the group.
    pub async fn offset_fetch(&self, req: OffsetFetchRequest, version: i16) -> OffsetFetchResponse {
        let inner = self.inner.borrow();
        let mut response = OffsetFetchResponse::default();
        if version >= 8 {
            response.groups = req
                .groups
                .iter()
                .map(|requested| {
                    let topics = requested.topics.as_ref().map(|topics| {
                        topics
                            .iter()
                            .map(|topic| {
                                (
                                    topic.name.0.as_str().to_string(),
                                    topic.partition_indexes.clone(),
                                )
                            })
                            .collect()
                    });
                    let mut group = OffsetFetchResponseGroup::default();
                    group.group_id = requested.group_id.clone();
                    match inner.fetch_offsets(requested.group_id.0.as_str(), topics) {
                        Ok(fetched) => group.topics = fetched_topics_v8(fetched),
                        Err(error) => group.error_code = error.code(),
                    }
                    group
                })
                .collect();
            return response;
        }

        let topics = req.topics.as_ref().map(|topics| {
            topics
                .iter()
                .map(|topic| {
                    (
                        topic.name.0.as_str().to_string(),
                        topic.partition_indexes.clone(),
                    )
                })
                .collect::<Vec<_>>()
        });
        match inner.fetch_offsets(req.group_id.0.as_str(), topics.clone()) {
            Ok(fetched) => response.topics = fetched_topics(fetched, version),
            Err(error) if version >= 2 => response.error_code = error.code(),
            Err(error) => {
                // v1 has no group-level error; every requested partition carries it.
                let failed = topics
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(topic, partitions)| {
                        (topic, partitions.into_iter().map(|p| (p, None)).collect())
                    })
                    .collect();
                response.topics = fetched_topics(failed, version);
                for partition in response
                    .topics
                    .iter_mut()
                    .flat_map(|topic| topic.partitions.iter_mut())
                {
                    partition.error_code = error.code();
                }
            }
        }
        response
    }
}

fn fetched_topics(fetched: Vec<FetchedTopic>, version: i16) -> Vec<OffsetFetchResponseTopic> {
    fetched
        .into_iter()
        .map(|(name, partitions)| {
            let mut topic = OffsetFetchResponseTopic::default();
            topic.name = str_bytes(&name).into();
            topic.partitions = partitions
                .into_iter()
                .map(|(index, committed)| {
                    let mut partition = OffsetFetchResponsePartition::default();
                    partition.partition_index = index;
                    partition.committed_offset = committed.as_ref().map_or(-1, |c| c.offset);
                    if version >= 5 {
                        partition.committed_leader_epoch =
                            committed.as_ref().map_or(-1, |c| c.leader_epoch);
                    }
                    partition.metadata = Some(str_bytes(
                        committed.as_ref().map_or("", |c| c.metadata.as_str()),
                    ));
                    partition
                })
                .collect();
            topic
        })
        .collect()
}

fn fetched_topics_v8(fetched: Vec<FetchedTopic>) -> Vec<OffsetFetchResponseTopics> {
    fetched
        .into_iter()
        .map(|(name, partitions)| {
            let mut topic = OffsetFetchResponseTopics::default();
            topic.name = str_bytes(&name).into();
            topic.partitions = partitions
                .into_iter()
                .map(|(index, committed)| {
                    let mut partition = OffsetFetchResponsePartitions::default();
                    partition.partition_index = index;
                    partition.committed_offset = committed.as_ref().map_or(-1, |c| c.offset);
                    partition.committed_leader_epoch =
                        committed.as_ref().map_or(-1, |c| c.leader_epoch);
                    partition.metadata = Some(str_bytes(
                        committed.as_ref().map_or("", |c| c.metadata.as_str()),
                    ));
                    partition
                })
                .collect();
            topic
        })
        .collect()
}

/// Returns the error that rejects an OffsetCommit as a whole, or None to accept it.
fn validate_offset_commit(
    group: &Group,
    generation_id: i32,
    member_id: &str,
    instance_id: Option<&str>,
) -> Option<ResponseError> {
    if group.is(GroupState::Dead) {
        return Some(ResponseError::CoordinatorNotAvailable);
    }
    if generation_id >= 0 || !member_id.is_empty() || instance_id.is_some() {
        return validate_current_member(group, member_id, instance_id, Some(generation_id));
    }
    // Generation -1 and no member: an admin client or a consumer that assigns
    // partitions itself, which may only commit while the group has no members.
    if !group.is(GroupState::Empty) {
        return Some(ResponseError::UnknownMemberId);
    }
    None
}

impl Inner {
    fn begin_commit(&mut self, req: &OffsetCommitRequest, version: i16) -> CommitPlan {
        let shape_error = |error: ResponseError| CommitPlan {
            errors: req
                .topics
                .iter()
                .map(|topic| vec![Some(error); topic.partitions.len()])
                .collect(),
            durable: None,
        };
        if self.closed {
            return shape_error(ResponseError::NotCoordinator);
        }
        let group_id = req.group_id.0.as_str();
        let generation_id = req.generation_id_or_member_epoch;
        let member_id = req.member_id.as_str();
        let instance_id = req.group_instance_id.as_ref().map(|id| id.as_str());

        if !self.groups.contains_key(group_id) {
            if generation_id >= 0 {
                // A member of a generation this coordinator never saw.
                return shape_error(ResponseError::IllegalGeneration);
            }
            self.groups
                .insert(group_id.to_string(), Group::new(group_id.to_string()));
        }
        let group = self.groups.get_mut(group_id).expect("inserted above");
        if let Some(error) = validate_offset_commit(group, generation_id, member_id, instance_id) {
            return shape_error(error);
        }
        match group.state {
            GroupState::CompletingRebalance => {
                return shape_error(ResponseError::RebalanceInProgress)
            }
            GroupState::Stable | GroupState::PreparingRebalance => {
                if let Some(member) = group.members.get_mut(member_id) {
                    member.heartbeat_deadline = std::time::Instant::now()
                        + std::time::Duration::from_millis(member.session_timeout_ms.max(0) as u64);
                }
            }
            GroupState::Empty | GroupState::Dead => {}
        }

        let now_ms = (self.clock)();
        // Only v2-v4 carry a retention time; -1 means the broker's retention.
        let expire_timestamp_ms = if version <= 4 && req.retention_time_ms >= 0 {
            now_ms.saturating_add(req.retention_time_ms)
        } else {
            -1
        };
        let metadata_max_bytes = self
            .config
            .offset_metadata_max_bytes
            .min(journal::OFFSET_METADATA_BYTES_MAX);
        let validator = self.partition_validator.clone();
        let mut records = Vec::new();
        let errors = req
            .topics
            .iter()
            .map(|topic| {
                let topic_name = topic.name.0.as_str();
                topic
                    .partitions
                    .iter()
                    .map(|partition| {
                        if let Some(validator) = &validator {
                            if !validator(topic_name, partition.partition_index) {
                                return Some(ResponseError::UnknownTopicOrPartition);
                            }
                        }
                        let metadata = partition
                            .committed_metadata
                            .as_ref()
                            .map_or("", |metadata| metadata.as_str());
                        if metadata.len() > metadata_max_bytes {
                            return Some(ResponseError::OffsetMetadataTooLarge);
                        }
                        records.push(Record::OffsetCommit {
                            group: group_id.to_string(),
                            topic: topic_name.to_string(),
                            partition: partition.partition_index,
                            offset: partition.committed_offset,
                            leader_epoch: partition.committed_leader_epoch,
                            metadata: metadata.to_string(),
                            commit_timestamp_ms: now_ms,
                            expire_timestamp_ms,
                        });
                        None
                    })
                    .collect()
            })
            .collect();

        let durable = (!records.is_empty()).then(|| self.append_records(records));
        CommitPlan { errors, durable }
    }

    /// Committed offsets of the requested partitions (None: every committed
    /// partition). Unknown groups and partitions have no offset.
    fn fetch_offsets(
        &self,
        group_id: &str,
        topics: Option<Vec<TopicPartitions>>,
    ) -> Result<Vec<FetchedTopic>, ResponseError> {
        if self.closed {
            return Err(ResponseError::NotCoordinator);
        }
        let group = self.groups.get(group_id);
        let Some(topics) = topics else {
            let mut fetched: Vec<FetchedTopic> = Vec::new();
            for ((topic, partition), committed) in
                group.iter().flat_map(|group| group.offsets.iter())
            {
                match fetched.last_mut() {
                    Some((last, partitions)) if last == topic => {
                        partitions.push((*partition, Some(committed.clone())))
                    }
                    _ => fetched.push((topic.clone(), vec![(*partition, Some(committed.clone()))])),
                }
            }
            return Ok(fetched);
        };
        Ok(topics
            .into_iter()
            .map(|(topic, partitions)| {
                let partitions = partitions
                    .into_iter()
                    .map(|partition| {
                        let committed = group.and_then(|group| {
                            group.offsets.get(&(topic.clone(), partition)).cloned()
                        });
                        (partition, committed)
                    })
                    .collect();
                (topic, partitions)
            })
            .collect())
    }

    /// Queues records for the journal; the receiver resolves once they are
    /// durable and applied.
    pub(super) fn append_records(
        &mut self,
        records: Vec<Record>,
    ) -> oneshot::Receiver<Result<(), JournalFailed>> {
        let (receiver, start_flusher) = self.journal.append(records);
        if start_flusher {
            spawn_background(journal::run_flusher(self.self_ref.clone()));
        }
        receiver
    }

    /// Applies one journal record to the in-memory state. At replay the
    /// records rebuild the whole state. After a live write the membership
    /// state is already current, so only stored offsets and byte counts change.
    pub(super) fn apply_record(&mut self, record: Record, frame_bytes: u32, mode: ApplyMode) {
        let journal = &mut self.journal;
        match record {
            Record::OffsetCommit {
                group,
                topic,
                partition,
                offset,
                leader_epoch,
                metadata,
                commit_timestamp_ms,
                expire_timestamp_ms,
            } => {
                let group = self
                    .groups
                    .entry(group.clone())
                    .or_insert_with(|| Group::new(group));
                let committed = CommittedOffset {
                    offset,
                    leader_epoch,
                    metadata,
                    commit_timestamp_ms,
                    expire_timestamp_ms: (expire_timestamp_ms >= 0).then_some(expire_timestamp_ms),
                    record_bytes: frame_bytes,
                };
                journal.live_bytes += u64::from(frame_bytes);
                if let Some(old) = group.offsets.insert((topic, partition), committed) {
                    journal.live_bytes = journal
                        .live_bytes
                        .saturating_sub(u64::from(old.record_bytes));
                }
            }
            Record::OffsetDelete {
                group,
                topic,
                partition,
            } => {
                let removed = self
                    .groups
                    .get_mut(&group)
                    .and_then(|group| group.offsets.remove(&(topic, partition)));
                if let Some(old) = removed {
                    journal.live_bytes = journal
                        .live_bytes
                        .saturating_sub(u64::from(old.record_bytes));
                }
            }
            Record::GroupDelete { group: group_id } => {
                let Some(group) = self.groups.get_mut(&group_id) else {
                    return;
                };
                let stored_bytes: u64 = group
                    .offsets
                    .values()
                    .map(|committed| u64::from(committed.record_bytes))
                    .sum::<u64>()
                    + u64::from(group.state_record_bytes);
                journal.live_bytes = journal.live_bytes.saturating_sub(stored_bytes);
                if mode == ApplyMode::Replay || group.is(GroupState::Dead) {
                    self.groups.remove(&group_id);
                } else {
                    group.offsets.clear();
                    group.state_record_bytes = 0;
                }
            }
            Record::GroupState {
                group,
                protocol_type,
                empty_since_ms,
            } => {
                let group = self
                    .groups
                    .entry(group.clone())
                    .or_insert_with(|| Group::new(group));
                journal.live_bytes = journal
                    .live_bytes
                    .saturating_sub(u64::from(group.state_record_bytes))
                    + u64::from(frame_bytes);
                group.state_record_bytes = frame_bytes;
                if mode == ApplyMode::Replay {
                    group.protocol_type = (!protocol_type.is_empty()).then_some(protocol_type);
                    group.empty_since_ms = (empty_since_ms >= 0).then_some(empty_since_ms);
                }
            }
        }
    }

    /// Records that rebuild the current stored state, for compaction.
    pub(super) fn snapshot_records(&self) -> Vec<Record> {
        let now_ms = (self.clock)();
        let mut group_ids: Vec<&String> = self.groups.keys().collect();
        group_ids.sort();
        let mut records = Vec::new();
        for group_id in group_ids {
            let group = &self.groups[group_id];
            if let (Some(protocol_type), true) =
                (&group.protocol_type, group.state_record_bytes > 0)
            {
                let empty_since_ms = match group.state {
                    GroupState::Empty | GroupState::Dead => group.empty_since_ms.unwrap_or(now_ms),
                    _ => -1,
                };
                records.push(Record::GroupState {
                    group: group_id.clone(),
                    protocol_type: protocol_type.clone(),
                    empty_since_ms,
                });
            }
            for ((topic, partition), committed) in &group.offsets {
                records.push(Record::OffsetCommit {
                    group: group_id.clone(),
                    topic: topic.clone(),
                    partition: *partition,
                    offset: committed.offset,
                    leader_epoch: committed.leader_epoch,
                    metadata: committed.metadata.clone(),
                    commit_timestamp_ms: committed.commit_timestamp_ms,
                    expire_timestamp_ms: committed.expire_timestamp_ms.unwrap_or(-1),
                });
            }
        }
        records
    }

    /// Journals the removal of expired offsets, and of empty groups left with
    /// none. Returns a receiver that resolves once the removal is durable, or
    /// None when nothing expired.
    pub(super) fn expire_offsets(
        &mut self,
    ) -> Option<oneshot::Receiver<Result<(), JournalFailed>>> {
        let now_ms = (self.clock)();
        let retention_ms = self.config.offsets_retention_minutes.saturating_mul(60_000);
        let mut records = Vec::new();
        let mut removed_groups = Vec::new();
        let mut expired_count = 0usize;

        for group in self.groups.values_mut() {
            if group.is(GroupState::Dead) {
                continue;
            }
            let expired = expired_offsets(group, now_ms, retention_ms);
            expired_count += expired.len();
            let idle = group.is(GroupState::Empty)
                && group.members.is_empty()
                && group.pending_members.is_empty();
            if idle && expired.len() == group.offsets.len() {
                group.state = GroupState::Dead;
                if group.offsets.is_empty() && group.state_record_bytes == 0 {
                    removed_groups.push(group.id.clone());
                } else {
                    records.push(Record::GroupDelete {
                        group: group.id.clone(),
                    });
                }
                continue;
            }
            for (topic, partition) in expired {
                records.push(Record::OffsetDelete {
                    group: group.id.clone(),
                    topic,
                    partition,
                });
            }
        }

        for group_id in &removed_groups {
            self.groups.remove(group_id);
        }
        if expired_count > 0 || !removed_groups.is_empty() {
            tracing::info!(
                target: "weir::group",
                expired_offsets = expired_count,
                removed_groups = removed_groups.len(),
                "removed expired offsets"
            );
        }
        (!records.is_empty()).then(|| self.append_records(records))
    }
}

/// Offsets of `group` whose retention has passed at `now_ms`.
fn expired_offsets(group: &Group, now_ms: i64, retention_ms: i64) -> Vec<(String, i32)> {
    // Which offsets may expire, and from which moment their retention counts.
    let subscribed_topics;
    let (base_on_commit, subscribed) = match group.protocol_type.as_deref() {
        // No consumer is left: retention counts from when the group became empty.
        Some(_) if group.is(GroupState::Empty) => (false, None),
        // A stable consumer group keeps the offsets of the topics it subscribes to.
        Some(CONSUMER_PROTOCOL_TYPE) if group.is(GroupState::Stable) => {
            match group.subscribed_topics() {
                Some(topics) => {
                    subscribed_topics = topics;
                    (true, Some(&subscribed_topics))
                }
                None => return Vec::new(),
            }
        }
        // Offsets stored by consumers that assign partitions themselves.
        None => (true, None),
        Some(_) => return Vec::new(),
    };

    group
        .offsets
        .iter()
        .filter(|((topic, _), _)| subscribed.is_none_or(|topics| !topics.contains(topic)))
        .filter(|(_, committed)| match committed.expire_timestamp_ms {
            Some(expire_timestamp_ms) => now_ms >= expire_timestamp_ms,
            None => {
                let base_ms = if base_on_commit {
                    committed.commit_timestamp_ms
                } else {
                    group
                        .empty_since_ms
                        .unwrap_or(committed.commit_timestamp_ms)
                };
                now_ms.saturating_sub(base_ms) >= retention_ms
            }
        })
        .map(|(key, _)| key.clone())
        .collect()
}
