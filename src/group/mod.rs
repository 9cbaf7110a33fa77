//! Consumer group coordinator for the classic (JoinGroup/SyncGroup) protocol,
//! and the producer-id allocator behind InitProducerId.
//!
//! Each shard runs one [`GroupCoordinator`] for the groups whose id hashes to
//! it; the protocol layer routes requests and returns NOT_COORDINATOR for the
//! rest. The coordinator is `!Send`: a cheap `Rc` handle cloned into the
//! shard's connection tasks.
//!
//! # Rebalance protocol
//!
//! A group moves through `Empty → PreparingRebalance → CompletingRebalance →
//! Stable`, and back to `PreparingRebalance` whenever a member joins, leaves,
//! changes its protocols or misses its session timeout. While preparing, each
//! JoinGroup waits until every known member has rejoined or the largest
//! rebalance timeout passes. Dynamic members that did not rejoin are dropped,
//! static members are kept. Completing the join bumps the generation, selects the
//! protocol every member supports (by vote over the members' preference
//! order) and completes all waiting joins. Only the leader receives the member
//! list. The leader's SyncGroup carries the assignments, which complete every
//! waiting SyncGroup and make the group Stable. Members that never send
//! SyncGroup within the rebalance timeout are removed.
//!
//! JoinGroup v4+ with an empty member id gets MEMBER_ID_REQUIRED and a fresh
//! id first. Static members (`group.instance.id`) skip that round trip. A
//! static member that rejoins with an unknown member id takes over the old
//! member's place and assignment, and the old id gets FENCED_INSTANCE_ID.
//!
//! Timers are tasks that sleep until a deadline: one per member for its
//! session, one per scheduled rebalance or sync deadline. A heartbeat only
//! moves the member's deadline forward, and the member's timer task notices
//! the change when it wakes.
//!
//! # Persistence
//!
//! Committed offsets, offset and group deletions and group state changes go
//! to an append-only journal (see `journal.rs`), group-committed with
//! fdatasync before OffsetCommit or DeleteGroups responds, and replayed at
//! open. Group membership itself is not persisted: after a restart every group
//! is Empty and its members rejoin, which the clients do on UNKNOWN_MEMBER_ID.

mod admin;
mod journal;
mod membership;
mod offsets;
mod producer_id;
mod state;

#[cfg(test)]
mod tests;

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::rc::{Rc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kafka_protocol::protocol::StrBytes;

use crate::runtime::{self, Task};
use journal::{Journal, Record};
use state::Group;

pub use producer_id::{ProducerIdAllocator, ProducerIdConfig};

/// Settings of the group coordinator, named after Kafka's broker settings.
#[derive(Debug, Clone)]
pub struct GroupConfig {
    /// `group.min.session.timeout.ms`: smallest session timeout a member may ask for.
    pub group_min_session_timeout_ms: i32,
    /// `group.max.session.timeout.ms`: largest session timeout a member may ask for.
    pub group_max_session_timeout_ms: i32,
    /// `group.initial.rebalance.delay.ms`: how long the first rebalance of an
    /// empty group waits for more members, extended while members keep
    /// arriving, up to the rebalance timeout. Kafka's default is 3000.
    pub group_initial_rebalance_delay_ms: i32,
    /// `group.max.size`: members per group, counting members that were handed
    /// an id but have not joined yet.
    pub group_max_size: usize,
    /// `offsets.retention.minutes`: how long offsets of an empty group are kept.
    pub offsets_retention_minutes: i64,
    /// `offsets.retention.check.interval.ms`: how often expired offsets are removed.
    pub offsets_retention_check_interval_ms: u64,
    /// `offset.metadata.max.bytes`: largest metadata string of a committed
    /// offset; values above 1 MiB act as 1 MiB.
    pub offset_metadata_max_bytes: usize,
    /// The journal is rewritten once its dead records exceed this many bytes
    /// and also outweigh the live ones.
    pub journal_compact_dead_bytes_min: u64,
}

impl Default for GroupConfig {
    fn default() -> Self {
        GroupConfig {
            group_min_session_timeout_ms: 6_000,
            group_max_session_timeout_ms: 1_800_000,
            group_initial_rebalance_delay_ms: 0,
            group_max_size: i32::MAX as usize,
            offsets_retention_minutes: 10_080,
            offsets_retention_check_interval_ms: 600_000,
            offset_metadata_max_bytes: 4_096,
            journal_compact_dead_bytes_min: 4 * 1024 * 1024,
        }
    }
}

/// Errors from opening the coordinator's journal.
#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    #[error("group journal {op} failed on {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("group journal {path} is corrupt: {message}")]
    Corrupt { path: PathBuf, message: String },
}

impl GroupError {
    fn io(op: &'static str, path: &Path, source: std::io::Error) -> Self {
        GroupError::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Connection details of a JoinGroup sender, shown by DescribeGroups and
/// used as the prefix of generated member ids.
#[derive(Debug, Clone, Default)]
pub struct ClientInfo {
    /// The `client_id` of the request header.
    pub client_id: String,
    /// The peer address, e.g. `/127.0.0.1`.
    pub client_host: String,
}

/// Handle to a shard's group coordinator. Clones share the same state.
#[derive(Clone)]
pub struct GroupCoordinator {
    inner: Rc<RefCell<Inner>>,
}

/// Wall-clock source in milliseconds since the Unix epoch; tests substitute their own.
type Clock = Rc<dyn Fn() -> i64>;

/// Predicate telling whether a topic partition exists.
type PartitionValidator = Rc<dyn Fn(&str, i32) -> bool>;

/// Whether a journal record is replayed at open or applied after a live write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ApplyMode {
    Replay,
    Live,
}

/// Shared state behind every [`GroupCoordinator`] clone.
struct Inner {
    config: GroupConfig,
    clock: Clock,
    groups: HashMap<String, Group>,
    journal: Journal,
    self_ref: Weak<RefCell<Inner>>,
    /// Source of unique timer epochs across all groups, so that a timer of a
    /// deleted group never matches a recreated group of the same name.
    next_timer_epoch: u64,
    closed: bool,
    partition_validator: Option<PartitionValidator>,
    retention_task: Option<Task<()>>,
}

/// Context the membership and offset logic need besides the group itself.
struct Cx<'a> {
    config: &'a GroupConfig,
    journal: &'a mut Journal,
    weak: &'a Weak<RefCell<Inner>>,
    next_timer_epoch: &'a mut u64,
    now_ms: i64,
}

impl Cx<'_> {
    fn next_epoch(&mut self) -> u64 {
        *self.next_timer_epoch += 1;
        *self.next_timer_epoch
    }

    /// Queues records without waiting for them to become durable.
    fn append_detached(&mut self, records: Vec<Record>) {
        let (_receiver, start_flusher) = self.journal.append(records);
        if start_flusher {
            spawn_background(journal::run_flusher(self.weak.clone()));
        }
    }
}

/// Spawns a detached task that yields before doing anything else. glommio
/// runs a new task at once, up to its first suspension point, and callers
/// spawn while they hold the state's `RefCell` borrow.
fn spawn_background(future: impl std::future::Future<Output = ()> + 'static) {
    runtime::spawn_local(async move {
        futures_lite::future::yield_now().await;
        future.await;
    })
    .detach();
}

fn system_clock_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as i64)
}

fn str_bytes(value: &str) -> StrBytes {
    StrBytes::from_string(value.to_string())
}

impl GroupCoordinator {
    /// Opens the coordinator whose journal lives in `dir`, replaying it.
    pub async fn open(dir: &Path, config: GroupConfig) -> Result<Self, GroupError> {
        Self::open_with_clock(dir, config, Rc::new(system_clock_ms)).await
    }

    async fn open_with_clock(
        dir: &Path,
        config: GroupConfig,
        clock: Clock,
    ) -> Result<Self, GroupError> {
        let owned_dir = dir.to_path_buf();
        let replayed =
            runtime::spawn_blocking(move || journal::open_and_replay(&owned_dir)).await?;
        if replayed.dropped_bytes > 0 {
            tracing::warn!(
                target: "weir::group",
                dir = %dir.display(),
                dropped_bytes = replayed.dropped_bytes,
                kept_bytes = replayed.file_bytes,
                "truncated a torn tail of the group journal"
            );
        }

        let record_count = replayed.records.len();
        let journal = Journal::new(
            dir.to_path_buf(),
            replayed.file,
            replayed.file_bytes,
            config.journal_compact_dead_bytes_min,
        );
        let retention_interval =
            Duration::from_millis(config.offsets_retention_check_interval_ms.max(1));
        let inner = Rc::new_cyclic(|weak| {
            RefCell::new(Inner {
                config,
                clock,
                groups: HashMap::new(),
                journal,
                self_ref: weak.clone(),
                next_timer_epoch: 0,
                closed: false,
                partition_validator: None,
                retention_task: None,
            })
        });

        {
            let mut state = inner.borrow_mut();
            for (record, frame_bytes) in replayed.records {
                state.apply_record(record, frame_bytes, ApplyMode::Replay);
            }
            state.finish_replay();
            tracing::info!(
                target: "weir::group",
                dir = %dir.display(),
                records = record_count,
                groups = state.groups.len(),
                journal_bytes = state.journal.file_bytes(),
                "opened group coordinator"
            );
        }
        let retention_task =
            runtime::spawn_local(run_retention(Rc::downgrade(&inner), retention_interval));
        inner.borrow_mut().retention_task = Some(retention_task);
        Ok(GroupCoordinator { inner })
    }

    /// Makes OffsetCommit return UNKNOWN_TOPIC_OR_PARTITION for partitions the
    /// predicate rejects. Without one, every partition is accepted.
    pub fn set_partition_validator(&self, validator: impl Fn(&str, i32) -> bool + 'static) {
        self.inner.borrow_mut().partition_validator = Some(Rc::new(validator));
    }

    /// Committed offsets of `group` as (topic, partition, offset), sorted by
    /// topic and partition. Empty when the group is unknown.
    pub fn committed_offsets(&self, group: &str) -> Vec<(String, i32, i64)> {
        let inner = self.inner.borrow();
        let Some(group) = inner.groups.get(group) else {
            return Vec::new();
        };
        group
            .offsets
            .iter()
            .map(|((topic, partition), committed)| (topic.clone(), *partition, committed.offset))
            .collect()
    }

    /// Stops the coordinator: waiting JoinGroup and SyncGroup requests get
    /// NOT_COORDINATOR, queued journal writes finish, and later requests get
    /// NOT_COORDINATOR.
    pub async fn close(&self) {
        let idle = {
            let mut inner = self.inner.borrow_mut();
            if inner.closed {
                None
            } else {
                inner.closed = true;
                inner.retention_task = None;
                inner.fail_waiting_requests();
                inner.journal.wait_idle()
            }
        };
        if let Some(idle) = idle {
            let _ = idle.await;
        }
        tracing::info!(target: "weir::group", "closed group coordinator");
    }

    /// Removes expired offsets and empty groups now instead of at the next
    /// periodic check, and waits until the removal is durable.
    #[cfg(test)]
    async fn expire_now(&self) {
        let receiver = self.inner.borrow_mut().expire_offsets();
        if let Some(receiver) = receiver {
            let _ = receiver.await;
        }
    }
}

impl Inner {
    /// Splits the state into the group (if present) and the context the
    /// protocol logic needs, so both can be borrowed mutably at once.
    fn split(&mut self, group_id: &str) -> (Option<&mut Group>, Cx<'_>) {
        let now_ms = (self.clock)();
        let Inner {
            config,
            groups,
            journal,
            self_ref,
            next_timer_epoch,
            ..
        } = self;
        let cx = Cx {
            config,
            journal,
            weak: self_ref,
            next_timer_epoch,
            now_ms,
        };
        (groups.get_mut(group_id), cx)
    }

    /// Like [`Inner::split`], creating an Empty group when none exists.
    fn split_or_create(&mut self, group_id: &str) -> (&mut Group, Cx<'_>) {
        let now_ms = (self.clock)();
        let Inner {
            config,
            groups,
            journal,
            self_ref,
            next_timer_epoch,
            ..
        } = self;
        let cx = Cx {
            config,
            journal,
            weak: self_ref,
            next_timer_epoch,
            now_ms,
        };
        let group = groups
            .entry(group_id.to_string())
            .or_insert_with(|| Group::new(group_id.to_string()));
        (group, cx)
    }

    /// Completes every waiting JoinGroup and SyncGroup with NOT_COORDINATOR.
    fn fail_waiting_requests(&mut self) {
        use kafka_protocol::error::ResponseError;
        for group in self.groups.values_mut() {
            for member in group.members.values_mut() {
                member.complete_join(state::JoinOutcome::error(
                    member.member_id.clone(),
                    ResponseError::NotCoordinator,
                ));
                member.complete_sync(state::SyncOutcome::error(ResponseError::NotCoordinator));
            }
        }
    }

    /// Groups with a protocol type that had members when the broker stopped
    /// lost them all then; their offsets' retention counts from now. The
    /// moment is journaled so that later restarts do not move it again.
    fn finish_replay(&mut self) {
        let now_ms = (self.clock)();
        let mut records = Vec::new();
        for group in self.groups.values_mut() {
            if let (Some(protocol_type), None) = (&group.protocol_type, group.empty_since_ms) {
                group.empty_since_ms = Some(now_ms);
                records.push(Record::GroupState {
                    group: group.id.clone(),
                    protocol_type: protocol_type.clone(),
                    empty_since_ms: now_ms,
                });
            }
        }
        if !records.is_empty() {
            // Durable in the background; a crash before that only repeats this step.
            drop(self.append_records(records));
        }
    }
}

/// Periodically removes expired offsets until the coordinator is closed or dropped.
async fn run_retention(weak: Weak<RefCell<Inner>>, interval: Duration) {
    loop {
        runtime::sleep(interval).await;
        let Some(inner) = weak.upgrade() else {
            return;
        };
        let mut inner = inner.borrow_mut();
        if inner.closed {
            return;
        }
        // The removal becomes durable in the background.
        let _ = inner.expire_offsets();
    }
}
