//! The state of one partition log and the operations on it.
//!
//! A log is shared by its handles and two background tasks of the owning
//! shard, all on one thread:
//!
//! ```text
//!  append() ──► queue of patched batches ──► writer task ──► .log (O_DIRECT)
//!      │                                        │  one write per flush, many batches
//!      └──► hot-tail cache                      ├─► written offset = high watermark
//!                                               └─► syncer task ──► fdatasync
//!                                                     └─► durable offset
//! ```
//!
//! Three offsets describe progress, and `durable <= written <= log end`:
//!
//! - the *log end offset* is the next offset `append` assigns;
//! - the *written offset* is one past the last batch whose direct write
//!   completed. It is also the high watermark: readers never see past it;
//! - the *durable offset* is one past the last batch covered by a completed
//!   fdatasync (or by the sync that seals a segment on roll).
//!
//! The writer issues one write at a time, so the written offset always
//! covers a contiguous prefix of the queue, and a sync only advances the
//! durable offset to the written offset read before it started.
//!
//! Every field is behind one `RefCell` that is never borrowed across an
//! `.await`.

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use bytes::{Bytes, BytesMut};

use crate::runtime::{self, DmaFile, Task};

use super::batch::{self, BatchError, BatchHeader};
use super::cache::HotCache;
use super::index::SegmentIndexes;
use super::producer_state::{ProducerStateTable, SequenceCheck};
use super::recovery;
use super::retention::{self, SegmentSummary};
use super::segment::{self, DirectAlign, SegmentRead};
use super::watch::{OffsetWatch, Signal, WaitOutcome};
use super::writer;
use super::{AppendInfo, LogConfig, Offset, ReadResult, StorageError, TimestampType};

/// Everything a log's handles and tasks share.
pub(crate) struct LogShared {
    pub(crate) dir: PathBuf,
    pub(crate) config: LogConfig,
    pub(crate) align: DirectAlign,
    pub(crate) state: RefCell<LogState>,
    /// One past the last written batch: the high watermark.
    pub(crate) written: Rc<OffsetWatch>,
    /// One past the last batch covered by an fdatasync.
    pub(crate) durable: Rc<OffsetWatch>,
    pub(crate) writer_signal: Rc<Signal>,
    pub(crate) syncer_signal: Rc<Signal>,
}

/// The background tasks of an open log. Dropping them cancels them.
pub(crate) struct LogTasks {
    pub(crate) writer: Task<Result<(), StorageError>>,
    pub(crate) syncer: Task<Result<(), StorageError>>,
}

/// Mutable state of a log.
pub(crate) struct LogState {
    pub(crate) segments: BTreeMap<Offset, SegmentState>,
    pub(crate) active_base_offset: Offset,
    pub(crate) log_start_offset: Offset,
    /// The log end offset: next offset to assign.
    pub(crate) next_offset: Offset,
    /// Patched batches waiting for the writer, in offset order.
    pub(crate) queue: VecDeque<QueuedBatch>,
    pub(crate) queued_bytes: usize,
    pub(crate) hot: HotCache,
    pub(crate) producers: ProducerStateTable,
    pub(crate) leader_epoch: i32,
    /// Highest offset a `wait_durable` caller waits for (-1: none).
    pub(crate) sync_requested: Offset,
    pub(crate) failure: Option<Failure>,
    pub(crate) closing: bool,
    pub(crate) closed: bool,
}

/// Metadata of one segment's written data, shared by readers and the
/// writer. Queued batches are not part of any segment yet.
pub(crate) struct SegmentState {
    pub(crate) base_offset: Offset,
    pub(crate) file: Rc<DmaFile>,
    pub(crate) path: PathBuf,
    pub(crate) written_bytes: u64,
    /// One past the last written offset in the segment.
    pub(crate) end_offset: Offset,
    pub(crate) indexes: SegmentIndexes,
    pub(crate) first_batch_timestamp_ms: Option<i64>,
}

/// One batch waiting for the writer.
#[derive(Debug, Clone)]
pub(crate) struct QueuedBatch {
    pub(crate) bytes: Bytes,
    pub(crate) base_offset: Offset,
    pub(crate) last_offset: Offset,
    pub(crate) max_timestamp_ms: i64,
    /// Broker clock at append, for segment.ms rolls.
    pub(crate) append_time_ms: i64,
}

/// A failed write or sync. The log stops accepting appends after one, and
/// the error is kept so that every waiter and caller gets it.
#[derive(Debug, Clone)]
pub(crate) struct Failure {
    op: &'static str,
    path: PathBuf,
    raw_os_error: Option<i32>,
    kind: io::ErrorKind,
    message: String,
}

impl Failure {
    pub(crate) fn from_error(err: &StorageError) -> Failure {
        match err {
            StorageError::NoSpace { op, path } => Failure {
                op,
                path: path.clone(),
                raw_os_error: Some(libc::ENOSPC),
                kind: io::ErrorKind::StorageFull,
                message: String::new(),
            },
            StorageError::Io { op, path, source } => Failure {
                op,
                path: path.clone(),
                raw_os_error: source.raw_os_error(),
                kind: source.kind(),
                message: source.to_string(),
            },
            other => Failure {
                op: "log i/o",
                path: PathBuf::new(),
                raw_os_error: None,
                kind: io::ErrorKind::Other,
                message: other.to_string(),
            },
        }
    }

    pub(crate) fn to_error(&self) -> StorageError {
        let source = match self.raw_os_error {
            Some(code) => io::Error::from_raw_os_error(code),
            None => io::Error::new(self.kind, self.message.clone()),
        };
        segment::io_failure(self.op, &self.path, source)
    }
}

/// Opens the log in `dir` and starts its writer and syncer tasks.
pub(crate) async fn open(dir: &Path, config: LogConfig) -> Result<(Rc<LogShared>, LogTasks), StorageError> {
    let recovered = recovery::recover(dir, &config).await?;
    let align = recovered.align;
    let next_offset = recovered.segments.last().map_or(0, |segment| segment.end_offset);
    let log_start_offset = recovered.segments[0].base_offset;
    let active = recovered.segments.last().expect("recovery keeps at least one segment");
    let active_base_offset = active.base_offset;

    let active_writer = writer::ActiveWriter::resume(
        dir,
        &config,
        align,
        active,
        recovered.active_tail,
        recovered.active_index_files,
    );

    let mut segments = BTreeMap::new();
    for recovered_segment in recovered.segments {
        segments.insert(
            recovered_segment.base_offset,
            SegmentState {
                base_offset: recovered_segment.base_offset,
                file: recovered_segment.file,
                path: recovered_segment.path,
                written_bytes: recovered_segment.size_bytes,
                end_offset: recovered_segment.end_offset,
                indexes: recovered_segment.indexes,
                first_batch_timestamp_ms: recovered_segment.first_batch_timestamp_ms,
            },
        );
    }

    let state = LogState {
        segments,
        active_base_offset,
        log_start_offset,
        next_offset,
        queue: VecDeque::new(),
        queued_bytes: 0,
        hot: HotCache::new(config.hot_cache_bytes),
        producers: recovered.producers,
        leader_epoch: 0,
        sync_requested: -1,
        failure: None,
        closing: false,
        closed: false,
    };
    let shared = Rc::new(LogShared {
        dir: dir.to_path_buf(),
        config,
        align,
        state: RefCell::new(state),
        written: OffsetWatch::new(next_offset),
        durable: OffsetWatch::new(next_offset),
        writer_signal: Signal::new(),
        syncer_signal: Signal::new(),
    });

    let mut active_writer = active_writer;
    active_writer.write_indexes(&shared, true).await?;
    let tasks = LogTasks {
        writer: runtime::spawn_local(writer::run_writer(shared.clone(), active_writer)),
        syncer: runtime::spawn_local(writer::run_syncer(shared.clone())),
    };
    Ok((shared, tasks))
}

impl LogShared {
    /// Returns the error for an operation on a failed or closed log.
    fn unavailable(&self, state: &LogState) -> Option<StorageError> {
        if let Some(failure) = &state.failure {
            return Some(failure.to_error());
        }
        if state.closing || state.closed {
            return Some(StorageError::Closed { path: self.dir.clone() });
        }
        None
    }

    /// See [`super::PartitionLog::append`].
    pub(crate) fn append(&self, batch: &[u8], header: &BatchHeader, now_ms: i64) -> Result<AppendInfo, StorageError> {
        let mut state = self.state.borrow_mut();
        if let Some(err) = self.unavailable(&state) {
            return Err(err);
        }
        if batch.len() != header.total_len() {
            return Err(StorageError::Batch(BatchError::InvalidRecord(format!(
                "batch slice of {} bytes does not match its header length {}",
                batch.len(),
                header.total_len()
            ))));
        }

        if header.has_producer_id() {
            if let SequenceCheck::Duplicate(original) = state.producers.check(header)? {
                return Ok(AppendInfo {
                    base_offset: original.base_offset,
                    last_offset: original.last_offset,
                    log_append_time_ms: -1,
                    log_start_offset: state.log_start_offset,
                    duplicate: true,
                });
            }
        }

        let base_offset = state.next_offset;
        let last_offset = base_offset + i64::from(header.last_offset_delta);
        let mut patched = BytesMut::from(batch);
        batch::set_base_offset(&mut patched, base_offset);
        batch::set_partition_leader_epoch(&mut patched, state.leader_epoch);
        let (log_append_time_ms, max_timestamp_ms) = match self.config.timestamp_type {
            TimestampType::LogAppendTime => {
                batch::set_log_append_time(&mut patched, now_ms);
                (now_ms, now_ms)
            }
            TimestampType::CreateTime => (-1, header.max_timestamp),
        };
        let bytes = patched.freeze();

        if header.has_producer_id() {
            state.producers.record(header, base_offset, last_offset);
        }
        state.next_offset = last_offset + 1;
        state.hot.insert(base_offset, last_offset, bytes.clone());
        state.queued_bytes += bytes.len();
        state.queue.push_back(QueuedBatch {
            bytes,
            base_offset,
            last_offset,
            max_timestamp_ms,
            append_time_ms: now_ms,
        });
        let log_start_offset = state.log_start_offset;
        drop(state);

        self.writer_signal.notify();
        Ok(AppendInfo {
            base_offset,
            last_offset,
            log_append_time_ms,
            log_start_offset,
            duplicate: false,
        })
    }

    /// See [`super::PartitionLog::wait_written`].
    pub(crate) async fn wait_written(&self, offset: Offset) -> Result<(), StorageError> {
        self.wait_for(&self.written, offset, false).await
    }

    /// See [`super::PartitionLog::wait_durable`].
    pub(crate) async fn wait_durable(&self, offset: Offset) -> Result<(), StorageError> {
        self.wait_for(&self.durable, offset, true).await
    }

    /// Waits until `watch` passes `offset` (clamped to the last assigned
    /// offset), asking the syncer for an fdatasync when `request_sync`.
    async fn wait_for(&self, watch: &Rc<OffsetWatch>, offset: Offset, request_sync: bool) -> Result<(), StorageError> {
        loop {
            let target = {
                let mut state = self.state.borrow_mut();
                let target = offset.min(state.next_offset - 1);
                if watch.get() > target {
                    return Ok(());
                }
                if let Some(failure) = &state.failure {
                    return Err(failure.to_error());
                }
                if state.closed {
                    return Err(StorageError::Closed { path: self.dir.clone() });
                }
                if request_sync {
                    state.sync_requested = state.sync_requested.max(target);
                }
                target
            };
            if request_sync && self.written.get() > target {
                self.syncer_signal.notify();
            }
            if watch.wait_past(target).await == WaitOutcome::Reached {
                return Ok(());
            }
        }
    }

    /// See [`super::PartitionLog::read`].
    pub(crate) async fn read(&self, offset: Offset, max_bytes: usize) -> Result<ReadResult, StorageError> {
        let plan = {
            let state = self.state.borrow();
            if state.closed {
                return Err(StorageError::Closed { path: self.dir.clone() });
            }
            let high_watermark = self.written.get();
            if offset < state.log_start_offset || offset > high_watermark {
                return Err(StorageError::OffsetOutOfRange {
                    offset,
                    log_start_offset: state.log_start_offset,
                    high_watermark,
                });
            }
            if offset == high_watermark {
                return Ok(ReadResult::default());
            }
            if let Some((batches, total_bytes)) = state.hot.read(offset, max_bytes, high_watermark) {
                return Ok(ReadResult { batches, total_bytes });
            }
            segment_read(&state, offset)
        };

        let batches = segment::read_batches(&plan, self.align, offset, max_bytes).await?;
        let total_bytes = batches.iter().map(|batch| batch.len()).sum();
        Ok(ReadResult { batches, total_bytes })
    }

    /// See [`super::PartitionLog::wait_for_data`].
    pub(crate) async fn wait_for_data(&self, offset: Offset) {
        loop {
            if self.state.borrow().closed {
                return;
            }
            match self.written.wait_past(offset).await {
                WaitOutcome::Reached | WaitOutcome::Closed => return,
                WaitOutcome::Recheck => {}
            }
        }
    }

    /// See [`super::PartitionLog::offset_for_timestamp`].
    pub(crate) async fn offset_for_timestamp(&self, timestamp_ms: i64) -> Result<Option<(Offset, i64)>, StorageError> {
        let plan = {
            let state = self.state.borrow();
            if state.closed {
                return Err(StorageError::Closed { path: self.dir.clone() });
            }
            let candidate = state
                .segments
                .values()
                .find(|segment| segment.written_bytes > 0 && segment.indexes.max_timestamp_ms >= timestamp_ms);
            let Some(segment) = candidate else {
                return Ok(None);
            };
            let start_offset = segment.indexes.times.scan_start(timestamp_ms);
            let (start_offset, start_position) = segment.indexes.offsets.lookup(start_offset);
            SegmentRead {
                file: segment.file.clone(),
                path: segment.path.clone(),
                start_offset,
                start_position,
                end_bytes: segment.written_bytes,
            }
        };

        let found = segment::find_timestamp(&plan, self.align, timestamp_ms).await?;
        if found.is_none() {
            return Err(segment::corrupt_data(
                "find offset for timestamp",
                &plan.path,
                format!("the segment's max timestamp is at least {timestamp_ms} but no batch from the index entry on reaches it"),
            ));
        }
        Ok(found)
    }

    /// See [`super::PartitionLog::enforce_retention`].
    pub(crate) async fn enforce_retention(&self, now_ms: i64) -> Result<(), StorageError> {
        let removed = {
            let mut state = self.state.borrow_mut();
            if state.closing || state.closed {
                return Err(StorageError::Closed { path: self.dir.clone() });
            }
            let summaries: Vec<SegmentSummary> = state
                .segments
                .values()
                .map(|segment| SegmentSummary {
                    size_bytes: segment.written_bytes,
                    max_timestamp_ms: segment.indexes.max_timestamp_ms,
                })
                .collect();
            let count = retention::expired_segment_count(
                &summaries,
                self.config.retention_bytes,
                self.config.retention_ms,
                now_ms,
            );
            let bases: Vec<Offset> = state.segments.keys().take(count).copied().collect();
            let mut removed = Vec::with_capacity(count);
            for base in bases {
                if let Some(segment) = state.segments.remove(&base) {
                    removed.push(segment);
                }
            }
            if let Some((&first_base, _)) = state.segments.iter().next() {
                state.log_start_offset = state.log_start_offset.max(first_base);
            }
            let log_start_offset = state.log_start_offset;
            state.hot.evict_before(log_start_offset);
            removed
        };

        for segment in &removed {
            tracing::info!(
                target: "weir::storage",
                topic_dir = %self.dir.display(),
                segment = segment.base_offset,
                offset = segment.end_offset,
                size_bytes = segment.written_bytes,
                "deleting segment past retention"
            );
            retention::remove_segment_files(&self.dir, segment.base_offset).await?;
        }
        if !removed.is_empty() {
            segment::sync_dir(&self.dir).await?;
        }
        for segment in removed {
            segment::close_shared(segment.file, &segment.path).await?;
        }
        Ok(())
    }

    /// Asks the writer to drain and seal the log. `close` then waits for it.
    pub(crate) fn begin_close(&self) {
        self.state.borrow_mut().closing = true;
        self.writer_signal.notify();
    }

    /// Records a failed write or sync and wakes every waiter with it.
    pub(crate) fn fail(&self, err: &StorageError) {
        tracing::error!(
            target: "weir::storage",
            topic_dir = %self.dir.display(),
            error = %err,
            "log i/o failed; the partition accepts no more appends"
        );
        {
            let mut state = self.state.borrow_mut();
            if state.failure.is_none() {
                state.failure = Some(Failure::from_error(err));
            }
            state.queue.clear();
            state.queued_bytes = 0;
        }
        self.written.wake_all();
        self.durable.wake_all();
    }
}

/// Finds the segment and index entry to read `offset` from.
fn segment_read(state: &LogState, offset: Offset) -> SegmentRead {
    let (_, segment) = state
        .segments
        .range(..=offset)
        .next_back()
        .expect("an offset between the log start and the high watermark lies in a segment");
    let (start_offset, start_position) = segment.indexes.offsets.lookup(offset);
    SegmentRead {
        file: segment.file.clone(),
        path: segment.path.clone(),
        start_offset,
        start_position,
        end_bytes: segment.written_bytes,
    }
}

#[cfg(test)]
mod tests;
