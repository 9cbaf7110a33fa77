//! The group journal: an append-only file of committed offsets, offset and
//! group deletions, and group state changes, replayed at open.
//!
//! ```text
//! file   := magic record*
//! magic  := "WEIRGRP1"                       (8 bytes)
//! record := length:u32le crc:u32le payload   (crc = CRC32C of payload)
//! payload:= kind:u8 field*                   (strings: length:u32le + UTF-8)
//!   1 OffsetCommit group topic partition:i32 offset:i64 leader_epoch:i32
//!                  metadata commit_timestamp_ms:i64 expire_timestamp_ms:i64 (-1: none)
//!   2 OffsetDelete group topic partition:i32
//!   3 GroupDelete  group
//!   4 GroupState   group protocol_type empty_since_ms:i64 (-1: group has members)
//! ```
//!
//! Replay applies records in file order, so the latest record per key wins.
//! It stops at the first record that is short, oversized, fails its CRC or
//! has an unknown kind, and truncates the file there: a crash can only tear
//! the tail, because every batch is written at the durable end and covered by
//! fdatasync before any response depends on it.
//!
//! Writes are group-committed: records appended while a batch is being written
//! wait for the next one. The file is a buffered `std::fs::File`, and every
//! syscall on it runs on a helper thread through `runtime::spawn_blocking`, so
//! the shard's reactor never blocks. Once dead records outweigh the live ones
//! by more than the configured size, the file is rewritten from the in-memory
//! state into a temporary file that is renamed over the journal.

use std::cell::RefCell;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::rc::Weak;
use std::sync::Arc;

use futures::channel::oneshot;

use super::{GroupError, Inner};
use crate::runtime;

/// File name of the journal inside the coordinator's directory.
pub(super) const JOURNAL_FILE_NAME: &str = "group-journal.log";
const COMPACTING_FILE_NAME: &str = "group-journal.log.compacting";
const MAGIC: &[u8; 8] = b"WEIRGRP1";
const FRAME_HEADER_BYTES: usize = 8;
/// Records larger than this are treated as a torn or corrupt tail.
const RECORD_PAYLOAD_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Largest offset metadata the journal stores, whatever the configuration
/// allows. With group id and topic name (at most 32 KiB each on the wire) a
/// record stays far below [`RECORD_PAYLOAD_BYTES_MAX`].
pub(super) const OFFSET_METADATA_BYTES_MAX: usize = 1024 * 1024;

const KIND_OFFSET_COMMIT: u8 = 1;
const KIND_OFFSET_DELETE: u8 = 2;
const KIND_GROUP_DELETE: u8 = 3;
const KIND_GROUP_STATE: u8 = 4;

/// One journal record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Record {
    OffsetCommit {
        group: String,
        topic: String,
        partition: i32,
        offset: i64,
        leader_epoch: i32,
        metadata: String,
        commit_timestamp_ms: i64,
        /// -1 when the offset follows the group's retention.
        expire_timestamp_ms: i64,
    },
    OffsetDelete {
        group: String,
        topic: String,
        partition: i32,
    },
    GroupDelete {
        group: String,
    },
    GroupState {
        group: String,
        protocol_type: String,
        /// -1 while the group has members.
        empty_since_ms: i64,
    },
}

impl Record {
    /// Appends the framed record to `out` and returns the frame's size in bytes.
    pub(super) fn encode_into(&self, out: &mut Vec<u8>) -> u32 {
        let start = out.len();
        out.extend_from_slice(&[0; FRAME_HEADER_BYTES]);
        match self {
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
                out.push(KIND_OFFSET_COMMIT);
                put_str(out, group);
                put_str(out, topic);
                out.extend_from_slice(&partition.to_le_bytes());
                out.extend_from_slice(&offset.to_le_bytes());
                out.extend_from_slice(&leader_epoch.to_le_bytes());
                put_str(out, metadata);
                out.extend_from_slice(&commit_timestamp_ms.to_le_bytes());
                out.extend_from_slice(&expire_timestamp_ms.to_le_bytes());
            }
            Record::OffsetDelete {
                group,
                topic,
                partition,
            } => {
                out.push(KIND_OFFSET_DELETE);
                put_str(out, group);
                put_str(out, topic);
                out.extend_from_slice(&partition.to_le_bytes());
            }
            Record::GroupDelete { group } => {
                out.push(KIND_GROUP_DELETE);
                put_str(out, group);
            }
            Record::GroupState {
                group,
                protocol_type,
                empty_since_ms,
            } => {
                out.push(KIND_GROUP_STATE);
                put_str(out, group);
                put_str(out, protocol_type);
                out.extend_from_slice(&empty_since_ms.to_le_bytes());
            }
        }
        let payload_start = start + FRAME_HEADER_BYTES;
        let payload_bytes = out.len() - payload_start;
        assert!(
            payload_bytes <= RECORD_PAYLOAD_BYTES_MAX,
            "journal record of {payload_bytes} bytes would read back as corrupt: {self:?}"
        );
        let crc = crc32c::crc32c(&out[payload_start..]);
        out[start..start + 4].copy_from_slice(&(payload_bytes as u32).to_le_bytes());
        out[start + 4..payload_start].copy_from_slice(&crc.to_le_bytes());
        (out.len() - start) as u32
    }

    fn decode(payload: &[u8]) -> Option<Record> {
        let mut reader = Reader { bytes: payload };
        let record = match reader.u8()? {
            KIND_OFFSET_COMMIT => Record::OffsetCommit {
                group: reader.string()?,
                topic: reader.string()?,
                partition: reader.i32()?,
                offset: reader.i64()?,
                leader_epoch: reader.i32()?,
                metadata: reader.string()?,
                commit_timestamp_ms: reader.i64()?,
                expire_timestamp_ms: reader.i64()?,
            },
            KIND_OFFSET_DELETE => Record::OffsetDelete {
                group: reader.string()?,
                topic: reader.string()?,
                partition: reader.i32()?,
            },
            KIND_GROUP_DELETE => Record::GroupDelete {
                group: reader.string()?,
            },
            KIND_GROUP_STATE => Record::GroupState {
                group: reader.string()?,
                protocol_type: reader.string()?,
                empty_since_ms: reader.i64()?,
            },
            _ => return None,
        };
        reader.bytes.is_empty().then_some(record)
    }
}

fn put_str(out: &mut Vec<u8>, value: &str) {
    out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    out.extend_from_slice(value.as_bytes());
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl Reader<'_> {
    fn take(&mut self, count: usize) -> Option<&[u8]> {
        if self.bytes.len() < count {
            return None;
        }
        let (head, tail) = self.bytes.split_at(count);
        self.bytes = tail;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }

    fn i32(&mut self) -> Option<i32> {
        Some(i32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }

    fn i64(&mut self) -> Option<i64> {
        Some(i64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }

    fn string(&mut self) -> Option<String> {
        let length = u32::from_le_bytes(self.take(4)?.try_into().ok()?) as usize;
        let bytes = self.take(length)?;
        String::from_utf8(bytes.to_vec()).ok()
    }
}

/// Splits journal bytes (after the magic) into records. Returns the records
/// with their frame sizes and the length of the valid prefix.
pub(super) fn parse_records(bytes: &[u8]) -> (Vec<(Record, u32)>, usize) {
    let mut records = Vec::new();
    let mut position = 0;
    while bytes.len() - position >= FRAME_HEADER_BYTES {
        let header = &bytes[position..position + FRAME_HEADER_BYTES];
        let payload_bytes =
            u32::from_le_bytes(header[0..4].try_into().expect("4-byte slice")) as usize;
        let crc = u32::from_le_bytes(header[4..8].try_into().expect("4-byte slice"));
        if payload_bytes == 0 || payload_bytes > RECORD_PAYLOAD_BYTES_MAX {
            break;
        }
        let payload_start = position + FRAME_HEADER_BYTES;
        let Some(payload) = bytes.get(payload_start..payload_start + payload_bytes) else {
            break;
        };
        if crc32c::crc32c(payload) != crc {
            break;
        }
        let Some(record) = Record::decode(payload) else {
            break;
        };
        records.push((record, (FRAME_HEADER_BYTES + payload_bytes) as u32));
        position = payload_start + payload_bytes;
    }
    (records, position)
}

/// Records and file length found when opening the journal.
pub(super) struct Replayed {
    pub file: File,
    pub records: Vec<(Record, u32)>,
    /// Length of the file after truncating a torn tail.
    pub file_bytes: u64,
    pub dropped_bytes: u64,
}

/// Opens (or creates) the journal in `dir`, reads every valid record and
/// truncates a torn tail. Blocking: call it through `spawn_blocking`.
pub(super) fn open_and_replay(dir: &Path) -> Result<Replayed, GroupError> {
    let path = dir.join(JOURNAL_FILE_NAME);
    std::fs::create_dir_all(dir)
        .map_err(|source| GroupError::io("create directory", dir, source))?;
    // A compaction that crashed before its rename left only a temporary file.
    let leftover = dir.join(COMPACTING_FILE_NAME);
    if leftover.exists() {
        std::fs::remove_file(&leftover)
            .map_err(|source| GroupError::io("remove", &leftover, source))?;
    }

    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|source| GroupError::io("open", &path, source))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)
        .map_err(|source| GroupError::io("read", &path, source))?;

    if bytes.len() < MAGIC.len() {
        if !MAGIC.starts_with(&bytes) {
            return Err(GroupError::Corrupt {
                path,
                message: format!(
                    "file of {} bytes does not start with the journal magic",
                    bytes.len()
                ),
            });
        }
        // Empty or torn while being created: start it afresh.
        file.set_len(0)
            .map_err(|source| GroupError::io("truncate", &path, source))?;
        file.write_all_at(MAGIC, 0)
            .map_err(|source| GroupError::io("write", &path, source))?;
        file.sync_all()
            .map_err(|source| GroupError::io("fsync", &path, source))?;
        sync_directory(dir)?;
        return Ok(Replayed {
            file,
            records: Vec::new(),
            file_bytes: MAGIC.len() as u64,
            dropped_bytes: 0,
        });
    }
    if &bytes[..MAGIC.len()] != MAGIC {
        return Err(GroupError::Corrupt {
            path,
            message: "file does not start with the journal magic; move it away if it is not a Weir group journal".into(),
        });
    }

    let (records, valid_bytes) = parse_records(&bytes[MAGIC.len()..]);
    let file_bytes = (MAGIC.len() + valid_bytes) as u64;
    let dropped_bytes = bytes.len() as u64 - file_bytes;
    if dropped_bytes > 0 {
        file.set_len(file_bytes)
            .map_err(|source| GroupError::io("truncate", &path, source))?;
        file.sync_all()
            .map_err(|source| GroupError::io("fsync", &path, source))?;
    }
    Ok(Replayed {
        file,
        records,
        file_bytes,
        dropped_bytes,
    })
}

fn sync_directory(dir: &Path) -> Result<(), GroupError> {
    let handle = File::open(dir).map_err(|source| GroupError::io("open directory", dir, source))?;
    handle
        .sync_all()
        .map_err(|source| GroupError::io("fsync directory", dir, source))
}

/// Failure of a batch to become durable, with its cause.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub(super) struct JournalFailed(pub String);

/// Write side of the journal, owned by the coordinator's state.
pub(super) struct Journal {
    dir: PathBuf,
    path: PathBuf,
    file: Arc<File>,
    /// Bytes of the file covered by the last fdatasync.
    durable_bytes: u64,
    /// Bytes of records that still hold a live key.
    pub live_bytes: u64,
    pending: Vec<u8>,
    pending_records: Vec<(Record, u32)>,
    waiters: Vec<oneshot::Sender<Result<(), JournalFailed>>>,
    flushing: bool,
    /// Set after an fdatasync failed: the file's content is unknown, so
    /// nothing more is written until the broker restarts and replays it.
    failure: Option<String>,
    compact_dead_bytes_min: u64,
    idle_waiters: Vec<oneshot::Sender<()>>,
}

impl Journal {
    pub(super) fn new(
        dir: PathBuf,
        file: File,
        file_bytes: u64,
        compact_dead_bytes_min: u64,
    ) -> Self {
        Journal {
            path: dir.join(JOURNAL_FILE_NAME),
            dir,
            file: Arc::new(file),
            durable_bytes: file_bytes,
            live_bytes: 0,
            pending: Vec::new(),
            pending_records: Vec::new(),
            waiters: Vec::new(),
            flushing: false,
            failure: None,
            compact_dead_bytes_min,
            idle_waiters: Vec::new(),
        }
    }

    pub(super) fn file_bytes(&self) -> u64 {
        self.durable_bytes
    }

    pub(super) fn dead_bytes(&self) -> u64 {
        self.durable_bytes
            .saturating_sub(MAGIC.len() as u64)
            .saturating_sub(self.live_bytes)
    }

    /// Queues records for the next batch. The receiver resolves once they are
    /// durable and applied to the in-memory state, or failed. Returns whether
    /// the caller must start the flush task.
    pub(super) fn append(
        &mut self,
        records: Vec<Record>,
    ) -> (oneshot::Receiver<Result<(), JournalFailed>>, bool) {
        let (sender, receiver) = oneshot::channel();
        if let Some(failure) = &self.failure {
            let _ = sender.send(Err(JournalFailed(failure.clone())));
            return (receiver, false);
        }
        for record in records {
            let frame_bytes = record.encode_into(&mut self.pending);
            self.pending_records.push((record, frame_bytes));
        }
        self.waiters.push(sender);
        let start = !self.flushing;
        self.flushing = true;
        (receiver, start)
    }

    /// Resolves once no batch is queued or being written.
    pub(super) fn wait_idle(&mut self) -> Option<oneshot::Receiver<()>> {
        if !self.flushing {
            return None;
        }
        let (sender, receiver) = oneshot::channel();
        self.idle_waiters.push(sender);
        Some(receiver)
    }

    fn should_compact(&self) -> bool {
        self.failure.is_none()
            && self.dead_bytes() >= self.compact_dead_bytes_min
            && self.dead_bytes() >= self.live_bytes
    }
}

/// A batch taken from the queue for writing.
struct Batch {
    file: Arc<File>,
    position: u64,
    bytes: Vec<u8>,
    records: Vec<(Record, u32)>,
    waiters: Vec<oneshot::Sender<Result<(), JournalFailed>>>,
}

enum WriteError {
    /// The write failed and the file was cut back to its durable length.
    Write(io::Error),
    /// fdatasync or the cleanup truncate failed; the file is in an unknown state.
    Fatal(String),
}

fn write_batch(file: &File, position: u64, bytes: &[u8]) -> Result<(), WriteError> {
    if let Err(write_error) = file.write_all_at(bytes, position) {
        if let Err(truncate_error) = file.set_len(position) {
            return Err(WriteError::Fatal(format!(
                "write failed ({write_error}) and truncating back to {position} bytes failed ({truncate_error})"
            )));
        }
        return Err(WriteError::Write(write_error));
    }
    file.sync_data()
        .map_err(|error| WriteError::Fatal(format!("fdatasync failed: {error}")))
}

/// Writes queued batches until the queue is empty. Runs as one task per
/// coordinator at a time; `Journal::append` returns whether the caller must start it.
pub(super) async fn run_flusher(weak: Weak<RefCell<Inner>>) {
    loop {
        let Some(batch) = take_batch(&weak) else {
            return;
        };
        let Batch {
            file,
            position,
            bytes,
            records,
            waiters,
        } = batch;
        let length = bytes.len() as u64;
        let result = runtime::spawn_blocking(move || write_batch(&file, position, &bytes)).await;

        let Some(inner) = weak.upgrade() else {
            return;
        };
        let outcome = {
            let mut inner = inner.borrow_mut();
            finish_batch(&mut inner, result, length, records)
        };
        for waiter in waiters {
            let _ = waiter.send(outcome.clone());
        }
        maybe_compact(&weak).await;
    }
}

fn take_batch(weak: &Weak<RefCell<Inner>>) -> Option<Batch> {
    let inner = weak.upgrade()?;
    let mut inner = inner.borrow_mut();
    let journal = &mut inner.journal;
    if journal.pending_records.is_empty() {
        journal.flushing = false;
        for waiter in journal.idle_waiters.drain(..) {
            let _ = waiter.send(());
        }
        return None;
    }
    Some(Batch {
        file: journal.file.clone(),
        position: journal.durable_bytes,
        bytes: std::mem::take(&mut journal.pending),
        records: std::mem::take(&mut journal.pending_records),
        waiters: std::mem::take(&mut journal.waiters),
    })
}

fn finish_batch(
    inner: &mut Inner,
    result: Result<(), WriteError>,
    length: u64,
    records: Vec<(Record, u32)>,
) -> Result<(), JournalFailed> {
    match result {
        Ok(()) => {
            inner.journal.durable_bytes += length;
            for (record, frame_bytes) in records {
                inner.apply_record(record, frame_bytes, super::ApplyMode::Live);
            }
            Ok(())
        }
        Err(WriteError::Write(error)) => {
            tracing::error!(
                target: "weir::group",
                path = %inner.journal.path.display(),
                records = records.len(),
                error = %error,
                "group journal write failed; the records were not stored"
            );
            Err(JournalFailed(format!("write failed: {error}")))
        }
        Err(WriteError::Fatal(message)) => {
            tracing::error!(
                target: "weir::group",
                path = %inner.journal.path.display(),
                error = %message,
                "group journal is unusable until restart; offset commits will fail"
            );
            inner.journal.failure = Some(message.clone());
            fail_pending(&mut inner.journal, &message);
            Err(JournalFailed(message))
        }
    }
}

fn fail_pending(journal: &mut Journal, message: &str) {
    journal.pending.clear();
    journal.pending_records.clear();
    for waiter in journal.waiters.drain(..) {
        let _ = waiter.send(Err(JournalFailed(message.to_string())));
    }
}

/// Rewrites the journal from the in-memory state when dead records dominate.
/// Runs between batches, so no write is in flight and the state equals the file.
async fn maybe_compact(weak: &Weak<RefCell<Inner>>) {
    let Some(inner) = weak.upgrade() else {
        return;
    };
    let (dir, path, bytes, old_bytes) = {
        let inner = inner.borrow();
        if !inner.journal.should_compact() {
            return;
        }
        let mut bytes = Vec::with_capacity(inner.journal.live_bytes as usize + MAGIC.len());
        bytes.extend_from_slice(MAGIC);
        for record in inner.snapshot_records() {
            record.encode_into(&mut bytes);
        }
        (
            inner.journal.dir.clone(),
            inner.journal.path.clone(),
            bytes,
            inner.journal.durable_bytes,
        )
    };
    drop(inner);

    let new_bytes = bytes.len() as u64;
    let result = runtime::spawn_blocking(move || rewrite(&dir, &path, &bytes)).await;

    let Some(inner) = weak.upgrade() else {
        return;
    };
    let mut inner = inner.borrow_mut();
    match result {
        Ok(file) => {
            inner.journal.file = Arc::new(file);
            inner.journal.durable_bytes = new_bytes;
            inner.journal.live_bytes = new_bytes - MAGIC.len() as u64;
            tracing::info!(
                target: "weir::group",
                path = %inner.journal.path.display(),
                old_bytes,
                new_bytes,
                "compacted group journal"
            );
        }
        Err(error) => {
            // The old file is still complete and in place; try again after the next batch.
            tracing::warn!(
                target: "weir::group",
                path = %inner.journal.path.display(),
                error = %error,
                "group journal compaction failed; keeping the current file"
            );
        }
    }
}

/// Writes `bytes` to a temporary file, makes it durable and renames it over
/// the journal. Returns the handle of the new journal.
fn rewrite(dir: &Path, path: &Path, bytes: &[u8]) -> Result<File, GroupError> {
    let temporary = dir.join(COMPACTING_FILE_NAME);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&temporary)
        .map_err(|source| GroupError::io("create", &temporary, source))?;
    file.write_all(bytes)
        .map_err(|source| GroupError::io("write", &temporary, source))?;
    file.sync_all()
        .map_err(|source| GroupError::io("fsync", &temporary, source))?;
    std::fs::rename(&temporary, path)
        .map_err(|source| GroupError::io("rename", &temporary, source))?;
    sync_directory(dir)?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_records() -> Vec<Record> {
        vec![
            Record::OffsetCommit {
                group: "g".into(),
                topic: "orders".into(),
                partition: 3,
                offset: 42,
                leader_epoch: 7,
                metadata: "meta".into(),
                commit_timestamp_ms: 1_700_000_000_000,
                expire_timestamp_ms: -1,
            },
            Record::OffsetDelete {
                group: "g".into(),
                topic: "orders".into(),
                partition: 3,
            },
            Record::GroupDelete { group: "g".into() },
            Record::GroupState {
                group: "g".into(),
                protocol_type: "consumer".into(),
                empty_since_ms: 5,
            },
        ]
    }

    #[test]
    fn records_round_trip() {
        let mut bytes = Vec::new();
        let sizes: Vec<u32> = sample_records()
            .iter()
            .map(|record| record.encode_into(&mut bytes))
            .collect();

        let (parsed, valid_bytes) = parse_records(&bytes);

        assert_eq!(valid_bytes, bytes.len());
        assert_eq!(
            parsed
                .iter()
                .map(|(record, _)| record.clone())
                .collect::<Vec<_>>(),
            sample_records()
        );
        assert_eq!(
            parsed.iter().map(|(_, size)| *size).collect::<Vec<_>>(),
            sizes
        );
    }

    #[test]
    fn parse_stops_at_torn_or_corrupt_record() {
        let mut bytes = Vec::new();
        let first = sample_records()[0].encode_into(&mut bytes) as usize;
        sample_records()[1].encode_into(&mut bytes);

        for cut in first..bytes.len() {
            let (parsed, valid_bytes) = parse_records(&bytes[..cut]);
            assert_eq!(parsed.len(), 1, "cut at {cut}");
            assert_eq!(valid_bytes, first, "cut at {cut}");
        }

        let mut flipped = bytes.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0x40;
        let (parsed, valid_bytes) = parse_records(&flipped);
        assert_eq!(parsed.len(), 1);
        assert_eq!(valid_bytes, first);

        let mut zero_padded = bytes.clone();
        zero_padded.extend_from_slice(&[0; 64]);
        let (parsed, valid_bytes) = parse_records(&zero_padded);
        assert_eq!(parsed.len(), 2);
        assert_eq!(valid_bytes, bytes.len());
    }
}
