//! Partition storage: segmented logs of Kafka v2 record batches.
//!
//! A [`PartitionLog`] is owned by one shard and is `!Send`: it is a cheap
//! `Rc` handle, cloned into tasks of the same shard. Storage knows nothing of
//! the Kafka protocol beyond the v2 batch layout.
//!
//! Code map:
//!
//! - `batch`: v2 header parsing, validation and patching of broker-owned fields;
//! - `log`: the log state and its operations (append, waits, reads, lookups);
//! - `writer`: the writer task (group commit, rolls, sealing) and the syncer task;
//! - `segment`: segment files, the O_DIRECT appender and batch scans;
//! - `index`: sparse offset and time indexes;
//! - `recovery`: opening a directory, truncating a bad tail, rebuilding state;
//! - `producer_state`: idempotent producer sequence checks;
//! - `retention`: which old segments to delete;
//! - `cache`: the hot-tail cache of recent batches;
//! - `watch`: wake-ups for waiters and background tasks.
//!
//! Guarantees: offsets are dense and assigned in append order; a batch is
//! visible to readers once its write completed and durable once
//! `wait_durable` returned for it; recovery keeps exactly the longest prefix
//! of batches that pass their checks.

pub mod batch;
mod cache;
mod index;
mod log;
mod producer_state;
mod recovery;
mod retention;
mod segment;
mod watch;
mod writer;

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use bytes::Bytes;

pub use batch::{BatchError, BatchHeader};

/// Kafka offset of a record in a partition.
pub type Offset = i64;

/// Which timestamp the broker stores in `max_timestamp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum TimestampType {
    CreateTime,
    LogAppendTime,
}

/// Per-partition settings, taken from the broker config and topic overrides.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// `segment.bytes`: roll to a new segment once the active one reaches this size.
    pub segment_bytes: u64,
    /// `segment.ms`: roll once the active segment is this old (None: never by age).
    pub segment_ms: Option<u64>,
    /// `index.interval.bytes`: one sparse index entry per this many log bytes.
    pub index_interval_bytes: u32,
    /// `max.message.bytes`: the largest batch accepted.
    pub max_message_bytes: u32,
    /// `retention.bytes` (None: unlimited).
    pub retention_bytes: Option<u64>,
    /// `retention.ms` (None: unlimited).
    pub retention_ms: Option<u64>,
    /// `message.timestamp.type`.
    pub timestamp_type: TimestampType,
    /// Bytes of recent batches kept in memory for fetches.
    pub hot_cache_bytes: usize,
    /// `flush.ms`: fdatasync at least this often even without acks=all (None: only on demand).
    pub flush_ms: Option<u64>,
}

/// Result of appending one validated batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendInfo {
    /// Offset assigned to the first record of the batch.
    pub base_offset: Offset,
    /// Offset of the last record of the batch.
    pub last_offset: Offset,
    /// Broker time stored for LogAppendTime topics, else -1.
    pub log_append_time_ms: i64,
    /// Log start offset at the time of the append.
    pub log_start_offset: Offset,
    /// True when this was a retried idempotent batch already in the log:
    /// nothing was appended and the offsets are the original ones.
    pub duplicate: bool,
}

/// Batches read from a partition for a fetch.
#[derive(Debug, Clone, Default)]
pub struct ReadResult {
    /// Whole stored batches in offset order, as stored (base offset patched).
    pub batches: Vec<Bytes>,
    /// Sum of the batches' lengths.
    pub total_bytes: usize,
}

/// Storage errors. The protocol layer maps each to a Kafka error code.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("i/o error during {op} on {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no space left on device during {op} on {path}")]
    NoSpace { op: &'static str, path: PathBuf },
    #[error("offset {offset} is out of range [{log_start_offset}, {high_watermark}]")]
    OffsetOutOfRange {
        offset: Offset,
        log_start_offset: Offset,
        high_watermark: Offset,
    },
    #[error("invalid batch: {0}")]
    Batch(#[from] BatchError),
    #[error("producer {producer_id} sent sequence {received} but {expected} was expected")]
    OutOfOrderSequence {
        producer_id: i64,
        expected: i32,
        received: i32,
    },
    #[error("producer {producer_id} epoch {received} is older than the current epoch {current}")]
    ProducerFenced {
        producer_id: i64,
        current: i16,
        received: i16,
    },
    #[error("log for {path} is closed")]
    Closed { path: PathBuf },
}

/// One partition's log. Cheap to clone; all clones share the same state.
#[derive(Clone)]
pub struct PartitionLog {
    handle: Rc<LogHandle>,
}

/// The shared state plus the background tasks, which are cancelled when the
/// last handle is dropped without `close`.
struct LogHandle {
    shared: Rc<log::LogShared>,
    tasks: RefCell<Option<log::LogTasks>>,
}

impl PartitionLog {
    /// Opens (or creates) the log in `dir`, recovering the active segment:
    /// truncates a torn, zero-filled or corrupt tail, rebuilds lost index
    /// entries, rebuilds producer state, and logs what was dropped.
    pub async fn open(dir: &Path, config: LogConfig) -> Result<PartitionLog, StorageError> {
        let (shared, tasks) = log::open(dir, config).await?;
        Ok(PartitionLog {
            handle: Rc::new(LogHandle {
                shared,
                tasks: RefCell::new(Some(tasks)),
            }),
        })
    }

    /// Assigns offsets to one batch that `batch::validate` accepted, patches
    /// its base offset (and max timestamp for LogAppendTime), and queues it in
    /// the write buffer. Returns without waiting for I/O. Idempotent batches
    /// are checked against producer state first.
    pub fn append(&self, batch: &[u8], header: &BatchHeader, now_ms: i64) -> Result<AppendInfo, StorageError> {
        self.handle.shared.append(batch, header, now_ms)
    }

    /// Waits until every batch up to and including `offset` has been written
    /// to the file (the O_DIRECT write completed). Used for acks=1.
    /// An `offset` past the log end waits for the last assigned offset.
    pub async fn wait_written(&self, offset: Offset) -> Result<(), StorageError> {
        self.handle.shared.wait_written(offset).await
    }

    /// Waits until every batch up to and including `offset` is covered by an
    /// fdatasync. Concurrent callers share one fdatasync (group commit).
    /// An `offset` past the log end waits for the last assigned offset.
    pub async fn wait_durable(&self, offset: Offset) -> Result<(), StorageError> {
        self.handle.shared.wait_durable(offset).await
    }

    /// Reads whole batches starting with the one that contains `offset`, up to
    /// `max_bytes`, but always at least one whole batch when any exists
    /// (KIP-74). Never returns data at or past the high watermark.
    /// Reads from disk return at most 16 MiB beyond the first batch.
    pub async fn read(&self, offset: Offset, max_bytes: usize) -> Result<ReadResult, StorageError> {
        self.handle.shared.read(offset, max_bytes).await
    }

    /// Resolves once the high watermark moves past `offset` or the log closes.
    /// Used to wake long-polling fetches without polling.
    pub async fn wait_for_data(&self, offset: Offset) {
        self.handle.shared.wait_for_data(offset).await
    }

    /// First offset still stored.
    pub fn log_start_offset(&self) -> Offset {
        self.handle.shared.state.borrow().log_start_offset
    }

    /// Next offset to be assigned.
    pub fn log_end_offset(&self) -> Offset {
        self.handle.shared.state.borrow().next_offset
    }

    /// One past the last offset readers may see: the end of the last batch
    /// whose write completed.
    pub fn high_watermark(&self) -> Offset {
        self.handle.shared.written.get()
    }

    /// Returns one past the last offset covered by a completed fdatasync.
    pub fn durable_offset(&self) -> Offset {
        self.handle.shared.durable.get()
    }

    /// Bytes appended but not yet handed to the writer; callers use it for
    /// backpressure.
    pub fn queued_bytes(&self) -> usize {
        self.handle.shared.state.borrow().queued_bytes
    }

    /// Returns the largest batch max timestamp stored, None for an empty log.
    pub fn max_timestamp(&self) -> Option<i64> {
        let state = self.handle.shared.state.borrow();
        state
            .segments
            .values()
            .filter(|segment| segment.written_bytes > 0)
            .map(|segment| segment.indexes.max_timestamp_ms)
            .max()
    }

    /// Sets the partition leader epoch stamped into batches appended from now on.
    pub fn set_leader_epoch(&self, epoch: i32) {
        self.handle.shared.state.borrow_mut().leader_epoch = epoch;
    }

    /// Earliest offset whose batch max timestamp is >= `timestamp_ms`, with
    /// that timestamp. None when no such batch exists. The offset is the
    /// batch's base offset: records are not decoded.
    pub async fn offset_for_timestamp(&self, timestamp_ms: i64) -> Result<Option<(Offset, i64)>, StorageError> {
        self.handle.shared.offset_for_timestamp(timestamp_ms).await
    }

    /// Deletes whole segments past `retention.bytes` / `retention.ms`, never the active one.
    pub async fn enforce_retention(&self, now_ms: i64) -> Result<(), StorageError> {
        self.handle.shared.enforce_retention(now_ms).await
    }

    /// Flushes, fdatasyncs, truncates the active segment to its logical size and closes files.
    /// Closing a closed log returns Ok.
    pub async fn close(&self) -> Result<(), StorageError> {
        let Some(tasks) = self.handle.tasks.borrow_mut().take() else {
            return Ok(());
        };
        self.handle.shared.begin_close();
        let sealed = tasks.writer.await;
        let synced = tasks.syncer.await;
        sealed.and(synced)
    }

    /// Closes the log and removes its directory.
    pub async fn delete(&self) -> Result<(), StorageError> {
        if let Err(err) = self.close().await {
            tracing::warn!(
                target: "weir::storage",
                topic_dir = %self.handle.shared.dir.display(),
                error = %err,
                "closing the log before deleting it failed; deleting anyway"
            );
        }
        let dir = self.handle.shared.dir.clone();
        let owned = dir.clone();
        crate::runtime::spawn_blocking(move || std::fs::remove_dir_all(owned))
            .await
            .map_err(|err| segment::io_failure("remove partition directory", &dir, err))
    }
}
