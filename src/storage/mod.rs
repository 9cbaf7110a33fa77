//! Partition storage: segmented logs of Kafka v2 record batches.
//!
//! CONTRACT (the protocol and shard layers are written against exactly this
//! API; keep the signatures, fill in the bodies, split into submodules
//! `batch`, `segment`, `index`, `log`, `recovery`, `producer_state` as needed).
//!
//! A [`PartitionLog`] is owned by one shard and is `!Send`: it is a cheap
//! `Rc` handle, cloned into tasks of the same shard. Storage knows nothing of
//! the Kafka protocol beyond the v2 batch layout.

pub mod batch;

use std::path::{Path, PathBuf};

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
    // Implementation detail: Rc<RefCell<..>> state, flusher task, waiters.
}

impl PartitionLog {
    /// Opens (or creates) the log in `dir`, recovering the active segment:
    /// truncates a torn, zero-filled or corrupt tail, rebuilds lost index
    /// entries, rebuilds producer state, and logs what was dropped.
    pub async fn open(dir: &Path, config: LogConfig) -> Result<PartitionLog, StorageError> {
        let _ = (dir, config);
        todo!()
    }

    /// Assigns offsets to one batch that `batch::validate` accepted, patches
    /// its base offset (and max timestamp for LogAppendTime), and queues it in
    /// the write buffer. Returns without waiting for I/O. Idempotent batches
    /// are checked against producer state first.
    pub fn append(&self, batch: &[u8], header: &BatchHeader, now_ms: i64) -> Result<AppendInfo, StorageError> {
        let _ = (batch, header, now_ms);
        todo!()
    }

    /// Waits until every batch up to and including `offset` has been written
    /// to the file (the O_DIRECT write completed). Used for acks=1.
    pub async fn wait_written(&self, offset: Offset) -> Result<(), StorageError> {
        let _ = offset;
        todo!()
    }

    /// Waits until every batch up to and including `offset` is covered by an
    /// fdatasync. Concurrent callers share one fdatasync (group commit).
    pub async fn wait_durable(&self, offset: Offset) -> Result<(), StorageError> {
        let _ = offset;
        todo!()
    }

    /// Reads whole batches starting with the one that contains `offset`, up to
    /// `max_bytes`, but always at least one whole batch when any exists
    /// (KIP-74). Never returns data at or past the high watermark.
    pub async fn read(&self, offset: Offset, max_bytes: usize) -> Result<ReadResult, StorageError> {
        let _ = (offset, max_bytes);
        todo!()
    }

    /// Resolves once the high watermark moves past `offset` or the log closes.
    /// Used to wake long-polling fetches without polling.
    pub async fn wait_for_data(&self, offset: Offset) {
        let _ = offset;
        todo!()
    }

    /// First offset still stored.
    pub fn log_start_offset(&self) -> Offset {
        todo!()
    }

    /// Next offset to be assigned.
    pub fn log_end_offset(&self) -> Offset {
        todo!()
    }

    /// One past the last offset readers may see: the end of the last batch
    /// whose write completed.
    pub fn high_watermark(&self) -> Offset {
        todo!()
    }

    /// Earliest offset whose batch max timestamp is >= `timestamp_ms`, with
    /// that timestamp. None when no such batch exists.
    pub async fn offset_for_timestamp(&self, timestamp_ms: i64) -> Result<Option<(Offset, i64)>, StorageError> {
        let _ = timestamp_ms;
        todo!()
    }

    /// Deletes whole segments past `retention.bytes` / `retention.ms`, never the active one.
    pub async fn enforce_retention(&self, now_ms: i64) -> Result<(), StorageError> {
        let _ = now_ms;
        todo!()
    }

    /// Flushes, fdatasyncs, truncates the active segment to its logical size and closes files.
    pub async fn close(&self) -> Result<(), StorageError> {
        todo!()
    }

    /// Closes the log and removes its directory.
    pub async fn delete(&self) -> Result<(), StorageError> {
        todo!()
    }
}
