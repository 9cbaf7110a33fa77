//! Opening a partition directory: listing segments, checking their batches,
//! truncating a bad tail, and rebuilding indexes and producer state.
//!
//! The rules are deterministic, so two opens of the same files give the same
//! log:
//!
//! 1. Segment files are listed and sorted by base offset. Index files without
//!    a log file (left by a crash during retention) are removed. Each segment
//!    must start where the previous one ended; a segment that does not, and
//!    every segment after it, is removed.
//! 2. Sealed segments (all but the last) were truncated and synced when the
//!    log rolled past them, so only their batch headers are read: lengths,
//!    magic and offset continuity.
//! 3. The last segment may end in a torn or zero-filled write. Its `.index`
//!    file is read and the last entry whose batch passes every check,
//!    including the CRC, is trusted. Headers before that entry are read as
//!    for a sealed segment. From the entry on, every batch must have a length
//!    of at least the header size that fits the file, magic 2, a matching
//!    CRC32C and the next expected base offset.
//! 4. At the first batch that fails, the segment is truncated, every later
//!    segment is removed, and the dropped bytes are logged.
//!
//! The scan feeds each accepted batch header to the segment's indexes (so
//! they are rebuilt exactly as the writer would have built them) and to the
//! producer state table.

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use crate::runtime::{self, DmaFile};

use super::index::{OffsetIndex, SegmentIndexes, OFFSET_ENTRY_BYTES, TIME_ENTRY_BYTES};
use super::producer_state::ProducerStateTable;
use super::retention;
use super::segment::{
    self, DirectAlign, DirectAppender, FilePos, OpenMode, ScanItem, ScannedBatch, SegmentScan, INDEX_SUFFIX, LOG_SUFFIX,
    TIME_INDEX_SUFFIX,
};
use super::{LogConfig, Offset, StorageError};

/// Window size of recovery scans.
const RECOVERY_WINDOW_BYTES: usize = 1 << 20;

/// Index entries of the last segment tried, newest first, before recovery
/// checks the whole segment.
const TRUSTED_ENTRY_PROBES_MAX: usize = 4;

/// One segment as found on disk after recovery.
pub(crate) struct RecoveredSegment {
    pub(crate) base_offset: Offset,
    pub(crate) file: Rc<DmaFile>,
    pub(crate) path: PathBuf,
    pub(crate) size_bytes: u64,
    /// One past the last offset in the segment.
    pub(crate) end_offset: Offset,
    pub(crate) indexes: SegmentIndexes,
    /// Max timestamp of the first batch (the segment.ms clock), if any.
    pub(crate) first_batch_timestamp_ms: Option<i64>,
}

/// The active segment's index files, reopened for the writer.
pub(crate) struct ActiveIndexFiles {
    pub(crate) index: Rc<DmaFile>,
    pub(crate) time_index: Rc<DmaFile>,
}

/// A recovered partition log.
pub(crate) struct RecoveredLog {
    pub(crate) align: DirectAlign,
    /// Oldest first; the last one is the active segment.
    pub(crate) segments: Vec<RecoveredSegment>,
    /// Content of the active segment's partial tail block.
    pub(crate) active_tail: Vec<u8>,
    pub(crate) active_index_files: ActiveIndexFiles,
    pub(crate) producers: ProducerStateTable,
}

/// Accumulates what a scan learns about one segment.
struct SegmentBuild {
    base_offset: Offset,
    indexes: SegmentIndexes,
    first_batch_timestamp_ms: Option<i64>,
    end_offset: Offset,
    size_bytes: u64,
}

impl SegmentBuild {
    fn new(base_offset: Offset, config: &LogConfig) -> SegmentBuild {
        SegmentBuild {
            base_offset,
            indexes: SegmentIndexes::new(base_offset, config.index_interval_bytes),
            first_batch_timestamp_ms: None,
            end_offset: base_offset,
            size_bytes: 0,
        }
    }

    fn on_batch(&mut self, batch: &ScannedBatch, producers: &mut ProducerStateTable) {
        let header = &batch.header;
        let len_bytes = header.total_len() as u64;
        self.indexes
            .on_batch(batch.position, header.base_offset, len_bytes, header.max_timestamp);
        if header.has_producer_id() {
            producers.record(header, header.base_offset, header.last_offset());
        }
        self.first_batch_timestamp_ms.get_or_insert(header.max_timestamp);
        self.end_offset = header.last_offset() + 1;
        self.size_bytes = batch.end();
    }
}

/// The first invalid batch a scan met.
struct InvalidTail {
    position: FilePos,
    reason: String,
}

/// Opens (creating if needed) the log in `dir` and recovers it.
pub(crate) async fn recover(dir: &Path, config: &LogConfig) -> Result<RecoveredLog, StorageError> {
    create_dir(dir).await?;
    runtime::prime_direct_io(dir)
        .await
        .map_err(|err| segment::io_failure("probe direct i/o", dir, err))?;
    let mut bases = list_segments(dir).await?;
    if bases.is_empty() {
        let path = segment::segment_path(dir, 0, LOG_SUFFIX);
        let file = segment::open_direct(&path, OpenMode::CreateEmpty).await?;
        segment::close_file(file, &path).await?;
        segment::sync_dir(dir).await?;
        bases.push(0);
    }

    let mut producers = ProducerStateTable::new();
    let mut segments: Vec<RecoveredSegment> = Vec::new();
    let mut align = None;
    let mut removed_any = false;

    for (i, &base_offset) in bases.iter().enumerate() {
        if let Some(previous) = segments.last() {
            if previous.end_offset != base_offset {
                tracing::warn!(
                    target: "weir::storage",
                    topic_dir = %dir.display(),
                    segment = base_offset,
                    offset = previous.end_offset,
                    "segment does not start where the previous one ends; removing it and every later segment"
                );
                remove_segments(dir, &bases[i..]).await?;
                removed_any = true;
                break;
            }
        }

        let path = segment::segment_path(dir, base_offset, LOG_SUFFIX);
        let file = Rc::new(segment::open_direct(&path, OpenMode::Existing).await?);
        let align = match align {
            Some(align) => align,
            None => *align.insert(DirectAlign::probe(&file, &path)?),
        };
        let is_last = i + 1 == bases.len();

        let (recovered, invalid) = if is_last {
            recover_active(dir, file, path, align, base_offset, config, &mut producers).await?
        } else {
            recover_sealed(file, path, align, base_offset, config, &mut producers).await?
        };

        if let Some(invalid) = invalid {
            truncate_invalid_tail(dir, &recovered, align, invalid).await?;
            segments.push(recovered);
            if !is_last {
                remove_segments(dir, &bases[i + 1..]).await?;
                removed_any = true;
            }
            break;
        }
        if !is_last {
            rewrite_index_files_if_stale(dir, &recovered, align).await?;
        }
        segments.push(recovered);
    }
    if removed_any {
        segment::sync_dir(dir).await?;
    }

    let align = align.expect("at least one segment was opened");
    finish(dir, align, segments, producers).await
}

/// Reads the active segment's tail block and reopens its index files.
async fn finish(
    dir: &Path,
    align: DirectAlign,
    segments: Vec<RecoveredSegment>,
    producers: ProducerStateTable,
) -> Result<RecoveredLog, StorageError> {
    let active = segments.last().expect("recovery keeps at least one segment");
    let active_tail = segment::read_tail(&active.file, &active.path, align, active.size_bytes).await?;

    let index_path = segment::segment_path(dir, active.base_offset, INDEX_SUFFIX);
    let time_index_path = segment::segment_path(dir, active.base_offset, TIME_INDEX_SUFFIX);
    let active_index_files = ActiveIndexFiles {
        index: Rc::new(segment::open_direct(&index_path, OpenMode::CreateEmpty).await?),
        time_index: Rc::new(segment::open_direct(&time_index_path, OpenMode::CreateEmpty).await?),
    };
    segment::sync_dir(dir).await?;

    tracing::info!(
        target: "weir::storage",
        topic_dir = %dir.display(),
        segments = segments.len(),
        log_start_offset = segments[0].base_offset,
        log_end_offset = active.end_offset,
        producers = producers.len(),
        "opened partition log"
    );
    Ok(RecoveredLog {
        align,
        segments,
        active_tail,
        active_index_files,
        producers,
    })
}

/// Reads the headers of a sealed segment.
async fn recover_sealed(
    file: Rc<DmaFile>,
    path: PathBuf,
    align: DirectAlign,
    base_offset: Offset,
    config: &LogConfig,
    producers: &mut ProducerStateTable,
) -> Result<(RecoveredSegment, Option<InvalidTail>), StorageError> {
    let size_bytes = segment::file_size(&file, &path).await?;
    let mut build = SegmentBuild::new(base_offset, config);
    let mut scan = SegmentScan::new(&file, &path, align, FilePos(0), size_bytes, base_offset, RECOVERY_WINDOW_BYTES);
    let invalid = scan_into(&mut scan, &mut build, producers).await?;
    drop(scan);
    Ok((into_segment(build, file, path), invalid))
}

/// Checks the active segment from its last trusted index entry on.
async fn recover_active(
    dir: &Path,
    file: Rc<DmaFile>,
    path: PathBuf,
    align: DirectAlign,
    base_offset: Offset,
    config: &LogConfig,
    producers: &mut ProducerStateTable,
) -> Result<(RecoveredSegment, Option<InvalidTail>), StorageError> {
    let size_bytes = segment::file_size(&file, &path).await?;
    let persisted = read_persisted_index(dir, base_offset, align, size_bytes).await?;
    let trusted = find_trusted_entry(&file, &path, align, &persisted, size_bytes).await?;

    let producers_before = producers.clone();
    let mut build = SegmentBuild::new(base_offset, config);
    if let Some((trusted_offset, trusted_position)) = trusted {
        let mut scan = SegmentScan::new(
            &file,
            &path,
            align,
            FilePos(0),
            trusted_position.0,
            base_offset,
            RECOVERY_WINDOW_BYTES,
        );
        let invalid = scan_into(&mut scan, &mut build, producers).await?;
        let consistent = invalid.is_none() && scan.next_offset() == trusted_offset;
        if !consistent {
            tracing::warn!(
                target: "weir::storage",
                topic_dir = %dir.display(),
                segment = base_offset,
                offset = trusted_offset,
                "index entry disagrees with the batches before it; checking the whole segment"
            );
            *producers = producers_before;
            build = SegmentBuild::new(base_offset, config);
        }
    }

    let (start_offset, start_position) = (build.end_offset, FilePos(build.size_bytes));
    let mut scan = SegmentScan::new(
        &file,
        &path,
        align,
        start_position,
        size_bytes,
        start_offset,
        RECOVERY_WINDOW_BYTES,
    )
    .verify_crc();
    let invalid = scan_into(&mut scan, &mut build, producers).await?;
    drop(scan);
    Ok((into_segment(build, file, path), invalid))
}

/// Feeds every accepted batch of `scan` to `build`; returns where it stopped
/// if it met an invalid batch.
async fn scan_into(
    scan: &mut SegmentScan<'_>,
    build: &mut SegmentBuild,
    producers: &mut ProducerStateTable,
) -> Result<Option<InvalidTail>, StorageError> {
    loop {
        match scan.next().await? {
            ScanItem::Batch(batch) => build.on_batch(&batch, producers),
            ScanItem::End => return Ok(None),
            ScanItem::Invalid { position, reason } => return Ok(Some(InvalidTail { position, reason })),
        }
    }
}

fn into_segment(build: SegmentBuild, file: Rc<DmaFile>, path: PathBuf) -> RecoveredSegment {
    RecoveredSegment {
        base_offset: build.base_offset,
        file,
        path,
        size_bytes: build.size_bytes,
        end_offset: build.end_offset,
        indexes: build.indexes,
        first_batch_timestamp_ms: build.first_batch_timestamp_ms,
    }
}

/// Reads the `.index` file of a segment, keeping its sane prefix.
async fn read_persisted_index(
    dir: &Path,
    base_offset: Offset,
    align: DirectAlign,
    log_size_bytes: u64,
) -> Result<OffsetIndex, StorageError> {
    let path = segment::segment_path(dir, base_offset, INDEX_SUFFIX);
    if !path_exists(&path).await? {
        return Ok(OffsetIndex::new(base_offset));
    }
    let file = segment::open_direct(&path, OpenMode::Existing).await?;
    let size_bytes = segment::file_size(&file, &path).await?;
    let whole_entries_bytes = size_bytes - size_bytes % OFFSET_ENTRY_BYTES as u64;
    if whole_entries_bytes == 0 {
        return Ok(OffsetIndex::new(base_offset));
    }
    let (read_start, buffer) = segment::read_aligned(&file, &path, align, 0, whole_entries_bytes).await?;
    debug_assert_eq!(read_start, 0);
    let index = OffsetIndex::decode(base_offset, &buffer[..whole_entries_bytes as usize], log_size_bytes);
    drop(buffer);
    segment::close_file(file, &path).await?;
    Ok(index)
}

/// Returns the newest index entry whose batch passes every recovery check.
async fn find_trusted_entry(
    file: &DmaFile,
    path: &Path,
    align: DirectAlign,
    persisted: &OffsetIndex,
    size_bytes: u64,
) -> Result<Option<(Offset, FilePos)>, StorageError> {
    let probes = persisted.len().min(TRUSTED_ENTRY_PROBES_MAX);
    for i in (persisted.len() - probes..persisted.len()).rev() {
        let (offset, position) = persisted.entry(i);
        let mut scan = SegmentScan::new(file, path, align, position, size_bytes, offset, RECOVERY_WINDOW_BYTES).verify_crc();
        if let ScanItem::Batch(_) = scan.next().await? {
            return Ok(Some((offset, position)));
        }
    }
    Ok(None)
}

/// Cuts a segment at its first invalid batch and logs what was dropped.
async fn truncate_invalid_tail(
    dir: &Path,
    segment: &RecoveredSegment,
    align: DirectAlign,
    invalid: InvalidTail,
) -> Result<(), StorageError> {
    let file_size_bytes = segment::file_size(&segment.file, &segment.path).await?;
    let dropped_bytes = file_size_bytes - invalid.position.0;
    let zero_filled = dropped_bytes > 0 && tail_is_zero(segment, align, invalid.position, file_size_bytes).await?;
    tracing::warn!(
        target: "weir::storage",
        topic_dir = %dir.display(),
        segment = segment.base_offset,
        offset = segment.end_offset,
        position = invalid.position.0,
        dropped_bytes,
        zero_filled,
        reason = %invalid.reason,
        "truncating segment at its first invalid batch"
    );
    segment::truncate_file(&segment.file, &segment.path, invalid.position.0).await?;
    segment::sync_file(&segment.file, &segment.path).await
}

/// True when the dropped bytes are all zero (preallocation padding rather
/// than a torn or corrupt batch). Checks at most one window, for the log only.
async fn tail_is_zero(
    segment: &RecoveredSegment,
    align: DirectAlign,
    from: FilePos,
    end: u64,
) -> Result<bool, StorageError> {
    let end = end.min(from.0 + RECOVERY_WINDOW_BYTES as u64);
    let (read_start, buffer) = segment::read_aligned(&segment.file, &segment.path, align, from.0, end).await?;
    let bytes = &buffer[(from.0 - read_start) as usize..(end - read_start) as usize];
    Ok(bytes.iter().all(|&byte| byte == 0))
}

/// Rewrites a sealed segment's index files when their sizes do not match the
/// rebuilt indexes (missing, torn, or written with another interval).
async fn rewrite_index_files_if_stale(
    dir: &Path,
    segment: &RecoveredSegment,
    align: DirectAlign,
) -> Result<(), StorageError> {
    let index_path = segment::segment_path(dir, segment.base_offset, INDEX_SUFFIX);
    let time_index_path = segment::segment_path(dir, segment.base_offset, TIME_INDEX_SUFFIX);
    let expected_index_bytes = (segment.indexes.offsets.len() * OFFSET_ENTRY_BYTES) as u64;
    let expected_time_bytes = (segment.indexes.times.len() * TIME_ENTRY_BYTES) as u64;

    let index_fresh = file_len(&index_path).await? == Some(expected_index_bytes);
    let time_fresh = file_len(&time_index_path).await? == Some(expected_time_bytes);
    if index_fresh && time_fresh {
        return Ok(());
    }

    let mut index_bytes = Vec::new();
    segment.indexes.offsets.encode_from(0, &mut index_bytes);
    let mut time_bytes = Vec::new();
    segment.indexes.times.encode_from(0, &mut time_bytes);
    write_whole_file(&index_path, align, &index_bytes).await?;
    write_whole_file(&time_index_path, align, &time_bytes).await
}

/// Replaces the content of `path` with `content`.
pub(crate) async fn write_whole_file(path: &Path, align: DirectAlign, content: &[u8]) -> Result<(), StorageError> {
    let file = Rc::new(segment::open_direct(path, OpenMode::CreateEmpty).await?);
    let mut appender = DirectAppender::new(file.clone(), path.to_path_buf(), align, 0, Vec::new(), 0);
    appender.append(&[content]).await?;
    appender.truncate_to_size().await?;
    drop(appender);
    segment::close_shared(file, path).await
}

async fn create_dir(dir: &Path) -> Result<(), StorageError> {
    let owned = dir.to_path_buf();
    runtime::spawn_blocking(move || std::fs::create_dir_all(owned))
        .await
        .map_err(|err| segment::io_failure("create partition directory", dir, err))
}

async fn path_exists(path: &Path) -> Result<bool, StorageError> {
    Ok(file_len(path).await?.is_some())
}

/// Length of the file at `path`, None when it does not exist.
async fn file_len(path: &Path) -> Result<Option<u64>, StorageError> {
    let owned = path.to_path_buf();
    match runtime::spawn_blocking(move || std::fs::metadata(owned)).await {
        Ok(metadata) => Ok(Some(metadata.len())),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(segment::io_failure("stat segment file", path, err)),
    }
}

/// Lists the base offsets of the `.log` files in `dir`, sorted, and removes
/// index files that have no log file.
async fn list_segments(dir: &Path) -> Result<Vec<Offset>, StorageError> {
    let owned = dir.to_path_buf();
    let names = runtime::spawn_blocking(move || -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(owned)? {
            if let Some(name) = entry?.file_name().to_str() {
                names.push(name.to_owned());
            }
        }
        Ok(names)
    })
    .await
    .map_err(|err| segment::io_failure("list partition directory", dir, err))?;

    let mut logs = BTreeSet::new();
    let mut indexes = Vec::new();
    for name in &names {
        match segment::parse_segment_file_name(name) {
            Some((base_offset, LOG_SUFFIX)) => {
                logs.insert(base_offset);
            }
            Some((base_offset, INDEX_SUFFIX)) | Some((base_offset, TIME_INDEX_SUFFIX)) => indexes.push(base_offset),
            _ => {}
        }
    }
    for base_offset in indexes {
        if !logs.contains(&base_offset) {
            tracing::info!(
                target: "weir::storage",
                topic_dir = %dir.display(),
                segment = base_offset,
                "removing index files without a log file"
            );
            retention::remove_segment_files(dir, base_offset).await?;
        }
    }
    Ok(logs.into_iter().collect())
}

async fn remove_segments(dir: &Path, bases: &[Offset]) -> Result<(), StorageError> {
    for &base_offset in bases {
        let path = segment::segment_path(dir, base_offset, LOG_SUFFIX);
        let dropped_bytes = file_len(&path).await?.unwrap_or(0);
        tracing::warn!(
            target: "weir::storage",
            topic_dir = %dir.display(),
            segment = base_offset,
            offset = base_offset,
            dropped_bytes,
            "removing segment after the recovered end of the log"
        );
        retention::remove_segment_files(dir, base_offset).await?;
    }
    Ok(())
}
