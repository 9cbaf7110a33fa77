//! The writer and syncer tasks of a partition log.
//!
//! The writer drains the append queue. Each turn it takes as many queued
//! batches as fit one write (group commit) and stay in the active segment.
//! It writes them with one O_DIRECT write through the segment's appender,
//! then publishes them: segment metadata and indexes first, then the
//! written offset, which is the high watermark. It also rolls segments and,
//! on close, seals the active one.
//!
//! Rolling seals the old segment (index files written, all three files cut
//! to their logical size, the log fdatasynced) before the new segment's files
//! are created. So whenever a segment is active, every offset before its base
//! is durable, and the syncer only ever needs to fdatasync the active file.
//!
//! The syncer runs fdatasync when a `wait_durable` caller needs it or when
//! `flush.ms` passes. One sync covers every write that completed before it
//! started, however many callers wait for it.

use std::path::Path;
use std::rc::Rc;
use std::time::Duration;

use crate::runtime::{self, DmaFile};

use super::index::{SegmentIndexes, OFFSET_ENTRY_BYTES, TIME_ENTRY_BYTES};
use super::log::{LogShared, QueuedBatch, SegmentState};
use super::recovery::{ActiveIndexFiles, RecoveredSegment};
use super::segment::{
    self, DirectAlign, DirectAppender, FilePos, OpenMode, INDEX_SUFFIX, LOG_SUFFIX, TIME_INDEX_SUFFIX,
};
use super::{LogConfig, Offset, StorageError};

/// Bytes gathered into one write; a single larger batch is written alone.
const WRITE_BYTES_MAX: usize = 1 << 20;

/// Space reserved ahead of the log's writes, at most.
const PREALLOC_STEP_BYTES_MAX: u64 = 8 << 20;

/// Largest segment: index positions are 32-bit.
const SEGMENT_BYTES_MAX: u64 = u32::MAX as u64;

/// Largest offset distance from a segment's base: Kafka's relative offsets
/// are signed 32-bit.
const RELATIVE_OFFSET_MAX: i64 = i32::MAX as i64;

/// The files of the active segment, owned by the writer task.
pub(crate) struct ActiveWriter {
    base_offset: Offset,
    log: DirectAppender,
    index: DirectAppender,
    time_index: DirectAppender,
    /// Offset index entries already in the `.index` file.
    index_entries_written: usize,
    /// Time index entries already in the `.timeindex` file.
    time_entries_written: usize,
}

/// Next job of the writer task.
enum Job {
    Idle,
    Write(Vec<QueuedBatch>),
    Roll,
    Seal,
    Exit,
}

impl ActiveWriter {
    /// Takes over the recovered active segment. Its index files were
    /// emptied; [`ActiveWriter::write_indexes`] rewrites them from memory.
    pub(crate) fn resume(
        dir: &Path,
        config: &LogConfig,
        align: DirectAlign,
        active: &RecoveredSegment,
        tail: Vec<u8>,
        index_files: ActiveIndexFiles,
    ) -> ActiveWriter {
        let base_offset = active.base_offset;
        ActiveWriter {
            base_offset,
            log: DirectAppender::new(
                active.file.clone(),
                active.path.clone(),
                align,
                active.size_bytes,
                tail,
                prealloc_step_bytes(config),
            ),
            index: index_appender(dir, base_offset, INDEX_SUFFIX, index_files.index, align),
            time_index: index_appender(dir, base_offset, TIME_INDEX_SUFFIX, index_files.time_index, align),
            index_entries_written: 0,
            time_entries_written: 0,
        }
    }

    /// Creates the three empty files of a new segment.
    async fn create(dir: &Path, config: &LogConfig, align: DirectAlign, base_offset: Offset) -> Result<ActiveWriter, StorageError> {
        let log_path = segment::segment_path(dir, base_offset, LOG_SUFFIX);
        let log_file = Rc::new(segment::open_direct(&log_path, OpenMode::CreateEmpty).await?);
        let index_path = segment::segment_path(dir, base_offset, INDEX_SUFFIX);
        let index_file = Rc::new(segment::open_direct(&index_path, OpenMode::CreateEmpty).await?);
        let time_path = segment::segment_path(dir, base_offset, TIME_INDEX_SUFFIX);
        let time_file = Rc::new(segment::open_direct(&time_path, OpenMode::CreateEmpty).await?);
        segment::sync_dir(dir).await?;

        Ok(ActiveWriter {
            base_offset,
            log: DirectAppender::new(log_file, log_path, align, 0, Vec::new(), prealloc_step_bytes(config)),
            index: DirectAppender::new(index_file, index_path, align, 0, Vec::new(), 0),
            time_index: DirectAppender::new(time_file, time_path, align, 0, Vec::new(), 0),
            index_entries_written: 0,
            time_entries_written: 0,
        })
    }

    /// Writes index entries not yet in the files: always when `force`,
    /// otherwise once at least one aligned block of entries is pending.
    pub(crate) async fn write_indexes(&mut self, shared: &LogShared, force: bool) -> Result<(), StorageError> {
        let (index_bytes, index_count, time_bytes, time_count) = {
            let state = shared.state.borrow();
            let indexes = &state.segments[&self.base_offset].indexes;
            let block_bytes = shared.align.bytes() as usize;
            let pending_index_bytes = (indexes.offsets.len() - self.index_entries_written) * OFFSET_ENTRY_BYTES;
            let pending_time_bytes = (indexes.times.len() - self.time_entries_written) * TIME_ENTRY_BYTES;
            if !force && pending_index_bytes < block_bytes && pending_time_bytes < block_bytes {
                return Ok(());
            }
            encode_pending(indexes, self.index_entries_written, self.time_entries_written)
        };
        self.index.append(&[&index_bytes]).await?;
        self.index_entries_written = index_count;
        self.time_index.append(&[&time_bytes]).await?;
        self.time_entries_written = time_count;
        Ok(())
    }

    /// Makes the segment complete on disk: index files written, all files
    /// cut to their logical size, everything fdatasynced.
    async fn seal(&mut self, shared: &LogShared) -> Result<(), StorageError> {
        self.write_indexes(shared, true).await?;
        self.index.truncate_to_size().await?;
        self.time_index.truncate_to_size().await?;
        self.log.truncate_to_size().await?;
        self.log.sync().await?;
        self.index.sync().await?;
        self.time_index.sync().await?;
        shared.durable.advance(shared.written.get());
        Ok(())
    }

    /// Closes the writer's handles; readers may still hold the log file.
    async fn close(self) -> Result<(), StorageError> {
        let ActiveWriter {
            log, index, time_index, ..
        } = self;
        for appender in [log, index, time_index] {
            let file = appender.file().clone();
            let path = appender.path().to_path_buf();
            drop(appender);
            segment::close_shared(file, &path).await?;
        }
        Ok(())
    }
}

/// Runs the writer until the log closes or fails. Returns how sealing went.
pub(crate) async fn run_writer(shared: Rc<LogShared>, mut active: ActiveWriter) -> Result<(), StorageError> {
    loop {
        match plan(&shared, &active) {
            Job::Idle => shared.writer_signal.wait().await,
            Job::Write(batches) => {
                if let Err(err) = write(&shared, &mut active, batches).await {
                    shared.fail(&err);
                }
            }
            Job::Roll => {
                if let Err(err) = roll(&shared, &mut active).await {
                    shared.fail(&err);
                }
            }
            Job::Seal => {
                let sealed = active.seal(&shared).await;
                if let Err(err) = &sealed {
                    shared.fail(err);
                }
                let closed = finish_close(&shared, active).await;
                return sealed.and(closed);
            }
            Job::Exit => {
                let failure = shared.state.borrow().failure.clone();
                finish_close(&shared, active).await?;
                return match failure {
                    Some(failure) => Err(failure.to_error()),
                    None => Ok(()),
                };
            }
        }
    }
}

/// Decides the writer's next job from the queue and the active segment.
fn plan(shared: &LogShared, active: &ActiveWriter) -> Job {
    let mut state = shared.state.borrow_mut();
    if state.failure.is_some() {
        return if state.closing { Job::Exit } else { Job::Idle };
    }
    let Some(front) = state.queue.front() else {
        return if state.closing { Job::Seal } else { Job::Idle };
    };

    let config = &shared.config;
    let mut size_bytes = active.log.size_bytes();
    let mut first_timestamp_ms = state.segments[&active.base_offset].first_batch_timestamp_ms;
    if needs_roll(config, active.base_offset, size_bytes, first_timestamp_ms, front) {
        return Job::Roll;
    }

    let mut batches = Vec::new();
    let mut job_bytes = 0;
    while let Some(next) = state.queue.front() {
        let len = next.bytes.len();
        let full = job_bytes + len > WRITE_BYTES_MAX;
        if !batches.is_empty() && (full || needs_roll(config, active.base_offset, size_bytes, first_timestamp_ms, next)) {
            break;
        }
        let Some(batch) = state.queue.pop_front() else { break };
        job_bytes += len;
        size_bytes += len as u64;
        first_timestamp_ms.get_or_insert(batch.max_timestamp_ms);
        state.queued_bytes -= len;
        batches.push(batch);
    }
    Job::Write(batches)
}

/// True when `batch` must go to a new segment.
fn needs_roll(
    config: &LogConfig,
    base_offset: Offset,
    size_bytes: u64,
    first_timestamp_ms: Option<i64>,
    batch: &QueuedBatch,
) -> bool {
    if size_bytes == 0 {
        return false;
    }
    let new_size_bytes = size_bytes + batch.bytes.len() as u64;
    let too_big = new_size_bytes > config.segment_bytes || new_size_bytes > SEGMENT_BYTES_MAX;
    let too_many_offsets = batch.last_offset - base_offset > RELATIVE_OFFSET_MAX;
    let too_old = match (config.segment_ms, first_timestamp_ms) {
        (Some(segment_ms), Some(first_ms)) => {
            batch.append_time_ms.saturating_sub(first_ms) >= i64::try_from(segment_ms).unwrap_or(i64::MAX)
        }
        _ => false,
    };
    too_big || too_many_offsets || too_old
}

/// Writes `batches` with one direct write and publishes them.
async fn write(shared: &LogShared, active: &mut ActiveWriter, batches: Vec<QueuedBatch>) -> Result<(), StorageError> {
    let parts: Vec<&[u8]> = batches.iter().map(|batch| &batch.bytes[..]).collect();
    let start = active.log.size_bytes();
    active.log.append(&parts).await?;

    let (written_offset, sync_wanted) = {
        let mut state = shared.state.borrow_mut();
        let segment = state
            .segments
            .get_mut(&active.base_offset)
            .expect("the active segment is in the segment map");
        publish(segment, start, &batches, active.log.size_bytes());
        let written_offset = segment.end_offset;
        (written_offset, state.sync_requested >= shared.durable.get())
    };
    shared.written.advance(written_offset);
    if sync_wanted {
        shared.syncer_signal.notify();
    }
    active.write_indexes(shared, false).await
}

/// Adds written batches to the segment's metadata and indexes.
fn publish(segment: &mut SegmentState, start: u64, batches: &[QueuedBatch], size_bytes: u64) {
    assert!(
        segment.written_bytes == start && batches.first().is_some_and(|batch| batch.base_offset == segment.end_offset),
        "write does not continue segment {}: segment has {} bytes up to offset {}, write starts at byte {start} with offset {:?}",
        segment.base_offset,
        segment.written_bytes,
        segment.end_offset,
        batches.first().map(|batch| batch.base_offset)
    );
    let mut position = start;
    for batch in batches {
        let len_bytes = batch.bytes.len() as u64;
        segment
            .indexes
            .on_batch(FilePos(position), batch.base_offset, len_bytes, batch.max_timestamp_ms);
        segment.first_batch_timestamp_ms.get_or_insert(batch.max_timestamp_ms);
        segment.end_offset = batch.last_offset + 1;
        position += len_bytes;
    }
    assert_eq!(position, size_bytes, "segment {} size disagrees with its appender", segment.base_offset);
    segment.written_bytes = position;
}

/// Seals the active segment and starts a new one at the written offset.
async fn roll(shared: &LogShared, active: &mut ActiveWriter) -> Result<(), StorageError> {
    active.seal(shared).await?;
    let new_base_offset = shared.written.get();
    let next_queued = {
        let state = shared.state.borrow();
        if let Some(failure) = &state.failure {
            // The syncer failed while the segment was sealed; the queue is gone.
            return Err(failure.to_error());
        }
        state.queue.front().map(|batch| batch.base_offset)
    };
    assert_eq!(
        next_queued,
        Some(new_base_offset),
        "a roll starts the new segment at the first queued batch, written offset {new_base_offset}"
    );
    let next = ActiveWriter::create(&shared.dir, &shared.config, shared.align, new_base_offset).await?;
    let old = std::mem::replace(active, next);
    let old_base_offset = old.base_offset;
    let old_size_bytes = old.log.size_bytes();
    old.close().await?;

    let mut state = shared.state.borrow_mut();
    state.segments.insert(
        new_base_offset,
        SegmentState {
            base_offset: new_base_offset,
            file: active.log.file().clone(),
            path: active.log.path().to_path_buf(),
            written_bytes: 0,
            end_offset: new_base_offset,
            indexes: SegmentIndexes::new(new_base_offset, shared.config.index_interval_bytes),
            first_batch_timestamp_ms: None,
        },
    );
    state.active_base_offset = new_base_offset;
    drop(state);

    tracing::info!(
        target: "weir::storage",
        topic_dir = %shared.dir.display(),
        segment = new_base_offset,
        offset = new_base_offset,
        sealed_segment = old_base_offset,
        sealed_bytes = old_size_bytes,
        "rolled to a new segment"
    );
    Ok(())
}

/// Marks the log closed, wakes every waiter and task, and closes the files.
async fn finish_close(shared: &LogShared, active: ActiveWriter) -> Result<(), StorageError> {
    let segments: Vec<(Rc<DmaFile>, std::path::PathBuf)> = {
        let mut state = shared.state.borrow_mut();
        state.closed = true;
        let segments = std::mem::take(&mut state.segments);
        segments.into_values().map(|segment| (segment.file, segment.path)).collect()
    };
    shared.written.close();
    shared.durable.close();
    shared.syncer_signal.notify();

    let mut result = active.close().await;
    for (file, path) in segments {
        let closed = segment::close_shared(file, &path).await;
        result = result.and(closed);
    }
    tracing::info!(target: "weir::storage", topic_dir = %shared.dir.display(), "closed partition log");
    result
}

/// Runs fdatasync for `wait_durable` callers and every `flush.ms`.
pub(crate) async fn run_syncer(shared: Rc<LogShared>) -> Result<(), StorageError> {
    let flush_interval = shared.config.flush_ms.map(Duration::from_millis);
    loop {
        let timer_fired = match flush_interval {
            Some(interval) => runtime::timeout(interval, shared.syncer_signal.wait()).await.is_none(),
            None => {
                shared.syncer_signal.wait().await;
                false
            }
        };

        let job = {
            let state = shared.state.borrow();
            if state.closed {
                return Ok(());
            }
            let written = shared.written.get();
            let durable = shared.durable.get();
            let wanted = timer_fired || state.sync_requested >= durable;
            if state.failure.is_some() || written <= durable || !wanted {
                None
            } else {
                let active = &state.segments[&state.active_base_offset];
                Some((active.file.clone(), active.path.clone(), written))
            }
        };
        let Some((file, path, target)) = job else { continue };

        match segment::sync_file(&file, &path).await {
            Ok(()) => shared.durable.advance(target),
            Err(err) => shared.fail(&err),
        }

        let more_wanted = {
            let state = shared.state.borrow();
            state.sync_requested >= shared.durable.get() && shared.written.get() > shared.durable.get()
        };
        if more_wanted {
            shared.syncer_signal.notify();
        }
    }
}

fn prealloc_step_bytes(config: &LogConfig) -> u64 {
    config.segment_bytes.min(PREALLOC_STEP_BYTES_MAX)
}

fn index_appender(dir: &Path, base_offset: Offset, suffix: &str, file: Rc<DmaFile>, align: DirectAlign) -> DirectAppender {
    let path = segment::segment_path(dir, base_offset, suffix);
    DirectAppender::new(file, path, align, 0, Vec::new(), 0)
}

/// Encodes index entries past the ones already written; returns the bytes
/// and the entry counts they bring the files to.
fn encode_pending(indexes: &SegmentIndexes, index_written: usize, time_written: usize) -> (Vec<u8>, usize, Vec<u8>, usize) {
    let mut index_bytes = Vec::new();
    indexes.offsets.encode_from(index_written, &mut index_bytes);
    let mut time_bytes = Vec::new();
    indexes.times.encode_from(time_written, &mut time_bytes);
    (index_bytes, indexes.offsets.len(), time_bytes, indexes.times.len())
}
