//! Segment files and the direct I/O that reads and writes them.
//!
//! A partition directory contains one file triple per segment, named by the
//! segment's base offset zero-padded to 20 digits:
//!
//! ```text
//!  00000000000000000000.log  00000000000000000000.index  00000000000000000000.timeindex
//!  00000000000000004096.log  00000000000000004096.index  00000000000000004096.timeindex
//!
//!  .log: v2 batches back to back, offsets dense from the base offset
//!
//!  position 0                                        logical size
//!  │                                                      │
//!  ├─ batch ─┬─ batch ─┬─ batch ──────────┬─ batch ───────┤ 0 0 0 0 0 ┆ preallocated ┆
//!  │ base B  │ B+n0    │ B+n0+n1          │ ...           │ padding   ┆  (fallocate  ┆
//!  ├─────────┴─────┬───┴───────────┬──────┴────────┬──────┼───────────┤   KEEP_SIZE) ┆
//!  │   block 0     │   block 1     │   block 2     │ tail block        │
//!  └───────────────┴───────────────┴───────────────┴───────────────────┘
//!                                                  ▲ every flush rewrites the tail
//!                                                    block with the new bytes after it
//! ```
//!
//! All I/O on these files is O_DIRECT. Each write starts at the aligned-down
//! logical size, carries the partial tail block kept in memory plus the new
//! bytes, and is zero-padded to the alignment. The zeros past the logical
//! size are cut by `truncate` on roll and close; after a crash, recovery
//! removes them because a zero length field fails the batch checks. Space is
//! reserved ahead of the writes with `fallocate(FALLOC_FL_KEEP_SIZE)` so most
//! writes need no block allocation.
//!
//! Every direct write asserts that its buffer address, length and file
//! position are multiples of one [`DirectAlign`] value probed from the device
//! when the log opens.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use crate::runtime::{self, DmaFile, DmaOpenOptions, ReadResult};

use super::batch::{self, BatchHeader, HEADER_LEN, LOG_OVERHEAD, MAGIC_V2, MIN_BATCH_LENGTH};
use super::{Offset, StorageError};

/// Smallest unit of direct I/O we use, whatever smaller block the device
/// reports: the page size, which is also the file system block size on
/// ext4 and XFS defaults and the alignment of every `DmaBuffer`.
const PAGE_BYTES: u64 = 4096;

/// Attempts per I/O call that fails with EINTR or EAGAIN before giving up.
const IO_ATTEMPTS_MAX: u32 = 3;

/// File name suffixes of a segment's three files.
pub(crate) const LOG_SUFFIX: &str = "log";
pub(crate) const INDEX_SUFFIX: &str = "index";
pub(crate) const TIME_INDEX_SUFFIX: &str = "timeindex";

/// Byte position inside a segment file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct FilePos(pub(crate) u64);

/// The alignment of every direct read and write on a log's files, probed
/// once from the device and never below [`PAGE_BYTES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DirectAlign(u64);

impl DirectAlign {
    /// Probes the device behind `file`.
    pub(crate) fn probe(file: &DmaFile, path: &Path) -> Result<DirectAlign, StorageError> {
        let bytes = file.alignment().max(PAGE_BYTES);
        if !bytes.is_power_of_two() {
            return Err(StorageError::Io {
                op: "probe direct i/o alignment",
                path: path.to_path_buf(),
                source: io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!("device reports a block size of {bytes} bytes, which is not a power of two"),
                ),
            });
        }
        Ok(DirectAlign(bytes))
    }

    #[cfg(test)]
    pub(crate) fn for_tests() -> DirectAlign {
        DirectAlign(PAGE_BYTES)
    }

    pub(crate) fn bytes(self) -> u64 {
        self.0
    }

    pub(crate) fn down(self, value: u64) -> u64 {
        value & !(self.0 - 1)
    }

    pub(crate) fn up(self, value: u64) -> u64 {
        (value + self.0 - 1) & !(self.0 - 1)
    }

    pub(crate) fn is_aligned(self, value: u64) -> bool {
        value & (self.0 - 1) == 0
    }

    /// Stops the shard when a direct write is misaligned: the kernel would
    /// reject it with EINVAL, and a misaligned request means the appender's
    /// bookkeeping is broken.
    fn assert_direct_write(self, address: usize, len_bytes: usize, position: u64, state: &dyn fmt::Debug) {
        assert!(
            self.is_aligned(address as u64) && self.is_aligned(len_bytes as u64) && self.is_aligned(position),
            "misaligned direct write: address {address:#x}, length {len_bytes}, position {position}, alignment {}; appender state: {state:?}",
            self.0
        );
    }

    /// Like [`DirectAlign::assert_direct_write`] for reads, whose buffer the
    /// runtime allocates aligned by itself.
    fn assert_direct_read(self, len_bytes: usize, position: u64, path: &Path) {
        assert!(
            self.is_aligned(len_bytes as u64) && self.is_aligned(position),
            "misaligned direct read of {}: length {len_bytes}, position {position}, alignment {}",
            path.display(),
            self.0
        );
    }
}

/// Path of one of a segment's files.
pub(crate) fn segment_path(dir: &Path, base_offset: Offset, suffix: &str) -> PathBuf {
    dir.join(format!("{base_offset:020}.{suffix}"))
}

/// Parses a segment file name into (base offset, suffix).
pub(crate) fn parse_segment_file_name(name: &str) -> Option<(Offset, &str)> {
    let (stem, suffix) = name.split_once('.')?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let base_offset = stem.parse().ok()?;
    Some((base_offset, suffix))
}

/// Maps an OS error to a storage error: ENOSPC is its own variant.
pub(crate) fn io_failure(op: &'static str, path: &Path, source: io::Error) -> StorageError {
    if source.raw_os_error() == Some(libc::ENOSPC) {
        StorageError::NoSpace {
            op,
            path: path.to_path_buf(),
        }
    } else {
        StorageError::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Builds the error for data on disk that breaks the log's invariants.
pub(crate) fn corrupt_data(op: &'static str, path: &Path, message: String) -> StorageError {
    StorageError::Io {
        op,
        path: path.to_path_buf(),
        source: io::Error::new(io::ErrorKind::InvalidData, message),
    }
}

fn is_transient(err: &io::Error) -> bool {
    matches!(err.raw_os_error(), Some(libc::EINTR) | Some(libc::EAGAIN))
}

/// Runs an I/O call, retrying a bounded number of times on EINTR/EAGAIN.
async fn retry_transient<T, F, Fut>(op: &'static str, path: &Path, mut call: F) -> Result<T, StorageError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = io::Result<T>>,
{
    let mut attempt = 1;
    loop {
        match call().await {
            Ok(value) => return Ok(value),
            Err(err) if is_transient(&err) && attempt < IO_ATTEMPTS_MAX => attempt += 1,
            Err(err) => return Err(io_failure(op, path, err)),
        }
    }
}

/// File creation mode of [`open_direct`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OpenMode {
    /// The file must exist; its content is kept.
    Existing,
    /// The file is created if missing and emptied if present.
    CreateEmpty,
}

/// Opens a segment file read-write with O_DIRECT. Fails rather than run
/// without O_DIRECT (glommio silently drops it on tmpfs).
pub(crate) async fn open_direct(path: &Path, mode: OpenMode) -> Result<DmaFile, StorageError> {
    let create = mode == OpenMode::CreateEmpty;
    let op = if create { "create segment file" } else { "open segment file" };
    let file = DmaOpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .truncate(create)
        .dma_open(path)
        .await
        .map_err(|err| io_failure(op, path, runtime::io_error(err)))?;
    if !runtime::is_direct_io(&file) {
        return Err(StorageError::Io {
            op,
            path: path.to_path_buf(),
            source: io::Error::new(
                io::ErrorKind::Unsupported,
                "the file system does not support O_DIRECT (tmpfs?); put the data directory on ext4 or XFS",
            ),
        });
    }
    Ok(file)
}

/// Closes a file opened with [`open_direct`].
pub(crate) async fn close_file(file: DmaFile, path: &Path) -> Result<(), StorageError> {
    file.close()
        .await
        .map_err(|err| io_failure("close segment file", path, runtime::io_error(err)))
}

/// Closes a shared file if this is its last handle; other handles keep it open.
pub(crate) async fn close_shared(file: Rc<DmaFile>, path: &Path) -> Result<(), StorageError> {
    file.close_rc()
        .await
        .map(drop)
        .map_err(|err| io_failure("close segment file", path, runtime::io_error(err)))
}

/// Returns the size of `file` in bytes.
pub(crate) async fn file_size(file: &DmaFile, path: &Path) -> Result<u64, StorageError> {
    retry_transient("stat segment file", path, || async { file.file_size().await.map_err(runtime::io_error) }).await
}

/// Sets the length of `file`, dropping bytes and preallocated blocks past it.
pub(crate) async fn truncate_file(file: &DmaFile, path: &Path, size_bytes: u64) -> Result<(), StorageError> {
    retry_transient("truncate segment file", path, || async {
        file.truncate(size_bytes).await.map_err(runtime::io_error)
    })
    .await
}

/// Makes every completed write to `file` durable.
pub(crate) async fn sync_file(file: &DmaFile, path: &Path) -> Result<(), StorageError> {
    retry_transient("fdatasync segment file", path, || async { file.fdatasync().await.map_err(runtime::io_error) })
        .await
}

/// Makes file creations and removals in `dir` durable.
pub(crate) async fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    let owned = dir.to_path_buf();
    runtime::spawn_blocking(move || std::fs::File::open(&owned).and_then(|handle| handle.sync_all()))
        .await
        .map_err(|err| io_failure("fsync directory", dir, err))
}

/// Reads `[start, end)` of `file` with one aligned direct read. Returns the
/// buffer and the file position of its first byte (`start` aligned down).
pub(crate) async fn read_aligned(
    file: &DmaFile,
    path: &Path,
    align: DirectAlign,
    start: u64,
    end: u64,
) -> Result<(u64, ReadResult), StorageError> {
    let read_start = align.down(start);
    let read_len = (align.up(end) - read_start) as usize;
    align.assert_direct_read(read_len, read_start, path);

    let buffer = retry_transient("read segment file", path, || async {
        file.read_at_aligned(read_start, read_len).await.map_err(runtime::io_error)
    })
    .await?;
    if (buffer.len() as u64) < end - read_start {
        return Err(corrupt_data(
            "read segment file",
            path,
            format!(
                "short read: {} bytes at position {read_start}, expected data up to {end}",
                buffer.len()
            ),
        ));
    }
    Ok((read_start, buffer))
}

/// Appends bytes to a file with O_DIRECT, rewriting the partial tail block on
/// every call. One appender per file; only the log's writer task uses it.
pub(crate) struct DirectAppender {
    file: Rc<DmaFile>,
    path: PathBuf,
    align: DirectAlign,
    /// Bytes of content written so far (the file's logical size).
    size_bytes: u64,
    /// Content of `[align.down(size_bytes), size_bytes)`.
    tail: Vec<u8>,
    /// File length reserved with fallocate.
    preallocated_bytes: u64,
    /// How far ahead to reserve space (0: never).
    prealloc_step_bytes: u64,
}

impl fmt::Debug for DirectAppender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DirectAppender")
            .field("path", &self.path)
            .field("align", &self.align.0)
            .field("size_bytes", &self.size_bytes)
            .field("tail_len", &self.tail.len())
            .field("preallocated_bytes", &self.preallocated_bytes)
            .finish()
    }
}

impl DirectAppender {
    /// Wraps `file`, whose first `size_bytes` bytes are content and whose
    /// partial tail block (`tail`) was read back by the caller.
    pub(crate) fn new(
        file: Rc<DmaFile>,
        path: PathBuf,
        align: DirectAlign,
        size_bytes: u64,
        tail: Vec<u8>,
        prealloc_step_bytes: u64,
    ) -> DirectAppender {
        assert_eq!(
            tail.len() as u64,
            size_bytes - align.down(size_bytes),
            "tail block of {} must hold the bytes past the last aligned position of size {size_bytes}",
            path.display()
        );
        DirectAppender {
            file,
            path,
            align,
            size_bytes,
            tail,
            preallocated_bytes: 0,
            prealloc_step_bytes: align.up(prealloc_step_bytes),
        }
    }

    pub(crate) fn file(&self) -> &Rc<DmaFile> {
        &self.file
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    /// Writes `parts` after the current content with one direct write.
    pub(crate) async fn append(&mut self, parts: &[&[u8]]) -> Result<(), StorageError> {
        let new_bytes: usize = parts.iter().map(|part| part.len()).sum();
        if new_bytes == 0 {
            return Ok(());
        }

        let start = self.align.down(self.size_bytes);
        let content_len = self.tail.len() + new_bytes;
        let write_len = self.align.up(content_len as u64) as usize;
        self.reserve(start + write_len as u64).await?;

        let mut buffer = self.file.alloc_dma_buffer(write_len);
        let bytes = buffer.as_bytes_mut();
        bytes[..self.tail.len()].copy_from_slice(&self.tail);
        let mut at = self.tail.len();
        for part in parts {
            bytes[at..at + part.len()].copy_from_slice(part);
            at += part.len();
        }
        bytes[at..].fill(0);

        let new_size = self.size_bytes + new_bytes as u64;
        let tail_start = (self.align.down(new_size) - start) as usize;
        let new_tail = bytes[tail_start..content_len].to_vec();

        self.align.assert_direct_write(buffer.as_ptr() as usize, write_len, start, self);
        self.write_all(buffer, start).await?;

        self.size_bytes = new_size;
        self.tail = new_tail;
        Ok(())
    }

    /// Cuts the file to its logical size (drops padding and reservations).
    pub(crate) async fn truncate_to_size(&mut self) -> Result<(), StorageError> {
        truncate_file(&self.file, &self.path, self.size_bytes).await?;
        self.preallocated_bytes = self.size_bytes;
        Ok(())
    }

    /// Makes every completed write durable.
    pub(crate) async fn sync(&self) -> Result<(), StorageError> {
        sync_file(&self.file, &self.path).await
    }

    /// Reserves blocks up to at least `end` plus the prealloc step.
    async fn reserve(&mut self, end: u64) -> Result<(), StorageError> {
        if self.prealloc_step_bytes == 0 || end <= self.preallocated_bytes {
            return Ok(());
        }
        let target = self.align.up(end) + self.prealloc_step_bytes;
        let file = &self.file;
        let result = retry_transient("preallocate segment file", &self.path, || async {
            file.pre_allocate(target, true).await.map_err(runtime::io_error)
        })
        .await;
        match result {
            Ok(()) => {
                self.preallocated_bytes = target;
                Ok(())
            }
            Err(StorageError::Io { source, .. }) if source.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                tracing::warn!(
                    target: "weir::storage",
                    path = %self.path.display(),
                    "file system does not support fallocate; writes will allocate blocks as they go"
                );
                self.prealloc_step_bytes = 0;
                Ok(())
            }
            Err(err) => Err(err),
        }
    }

    /// Writes the whole buffer at `position`, resuming after short writes.
    async fn write_all(&self, buffer: runtime::DmaBuffer, position: u64) -> Result<(), StorageError> {
        let total = buffer.len();
        let buffer = Rc::new(buffer);
        let mut done = 0usize;
        let mut attempt = 0;
        while done < total {
            attempt += 1;
            let result = if done == 0 {
                self.file.write_rc_at(buffer.clone(), position).await
            } else {
                let mut rest = self.file.alloc_dma_buffer(total - done);
                rest.as_bytes_mut().copy_from_slice(&buffer.as_bytes()[done..]);
                let at = position + done as u64;
                self.align.assert_direct_write(rest.as_ptr() as usize, rest.len(), at, self);
                self.file.write_at(rest, at).await
            };
            match result.map_err(runtime::io_error) {
                Ok(0) => {
                    return Err(io_failure(
                        "write segment file",
                        &self.path,
                        io::Error::new(io::ErrorKind::WriteZero, format!("wrote 0 of {} bytes", total - done)),
                    ));
                }
                Ok(written) if self.align.is_aligned(written as u64) => done += written,
                Ok(written) => {
                    return Err(io_failure(
                        "write segment file",
                        &self.path,
                        io::Error::other(format!("direct write of {written} bytes ended off the block alignment")),
                    ));
                }
                Err(err) if is_transient(&err) && attempt < IO_ATTEMPTS_MAX => {}
                Err(err) => return Err(io_failure("write segment file", &self.path, err)),
            }
            if attempt >= IO_ATTEMPTS_MAX && done < total {
                return Err(io_failure(
                    "write segment file",
                    &self.path,
                    io::Error::new(
                        io::ErrorKind::WriteZero,
                        format!("wrote {done} of {total} bytes after {attempt} attempts"),
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// Reads the partial tail block `[align.down(size), size)` of a file.
pub(crate) async fn read_tail(
    file: &DmaFile,
    path: &Path,
    align: DirectAlign,
    size_bytes: u64,
) -> Result<Vec<u8>, StorageError> {
    let start = align.down(size_bytes);
    if start == size_bytes {
        return Ok(Vec::new());
    }
    let (read_start, buffer) = read_aligned(file, path, align, start, size_bytes).await?;
    Ok(buffer[(start - read_start) as usize..(size_bytes - read_start) as usize].to_vec())
}

/// A batch found by [`SegmentScan`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct ScannedBatch {
    pub(crate) position: FilePos,
    pub(crate) header: BatchHeader,
}

impl ScannedBatch {
    pub(crate) fn end(&self) -> u64 {
        self.position.0 + self.header.total_len() as u64
    }
}

/// One step of a [`SegmentScan`].
#[derive(Debug)]
pub(crate) enum ScanItem {
    Batch(ScannedBatch),
    /// The scan reached its end position exactly at a batch boundary.
    End,
    /// The bytes at `position` fail the batch checks; nothing after them is read.
    Invalid { position: FilePos, reason: String },
}

/// Walks the batches of a segment file front to back through aligned
/// windows. Each batch is checked the way recovery accepts one. Its length
/// is at least the header size and fits the scanned range, its magic is 2,
/// its base offset is the next expected offset, and (when asked) its CRC32C
/// matches.
pub(crate) struct SegmentScan<'a> {
    file: &'a DmaFile,
    path: &'a Path,
    align: DirectAlign,
    position: u64,
    end: u64,
    next_offset: Offset,
    verify_crc: bool,
    window_bytes: u64,
    window_start: u64,
    window: ReadResult,
}

impl<'a> SegmentScan<'a> {
    /// Scans `[position, end)` expecting the first batch at `next_offset`.
    /// Windows are `window_bytes` long (rounded to the alignment).
    pub(crate) fn new(
        file: &'a DmaFile,
        path: &'a Path,
        align: DirectAlign,
        position: FilePos,
        end: u64,
        next_offset: Offset,
        window_bytes: usize,
    ) -> SegmentScan<'a> {
        SegmentScan {
            file,
            path,
            align,
            position: position.0,
            end,
            next_offset,
            verify_crc: false,
            window_bytes: align.up(window_bytes.max(1) as u64),
            window_start: 0,
            window: ReadResult::default(),
        }
    }

    /// Also checks every batch's CRC32C (reads every byte).
    pub(crate) fn verify_crc(mut self) -> SegmentScan<'a> {
        self.verify_crc = true;
        self
    }

    pub(crate) fn next_offset(&self) -> Offset {
        self.next_offset
    }

    /// Returns the next batch, the end, or why the next bytes are invalid.
    pub(crate) async fn next(&mut self) -> Result<ScanItem, StorageError> {
        let position = self.position;
        if position >= self.end {
            return Ok(ScanItem::End);
        }
        let invalid = |reason: String| {
            Ok(ScanItem::Invalid {
                position: FilePos(position),
                reason,
            })
        };
        let remaining = self.end - position;
        if remaining < LOG_OVERHEAD as u64 {
            return invalid(format!("{remaining} trailing bytes cannot hold a batch length"));
        }

        let prefix = self.bytes(position, position + remaining.min(HEADER_LEN as u64)).await?;
        let batch_length = i32::from_be_bytes([prefix[8], prefix[9], prefix[10], prefix[11]]);
        let header = BatchHeader::parse(prefix).ok();
        if batch_length < MIN_BATCH_LENGTH {
            return invalid(format!("batch length {batch_length} is below the minimum {MIN_BATCH_LENGTH}"));
        }
        let total_len = LOG_OVERHEAD as u64 + batch_length as u64;
        if total_len > remaining {
            return invalid(format!("batch of {total_len} bytes extends past the end, {remaining} bytes left"));
        }
        // A batch of at least the minimum length within the range has a whole header.
        let header = header.expect("a batch that fits the range contains a whole header");

        if header.magic != MAGIC_V2 {
            return invalid(format!("magic {} instead of {MAGIC_V2}", header.magic));
        }
        if header.base_offset != self.next_offset {
            return invalid(format!(
                "base offset {} where offset {} was expected",
                header.base_offset, self.next_offset
            ));
        }
        if header.last_offset_delta < 0 {
            return invalid(format!("negative last offset delta {}", header.last_offset_delta));
        }
        if self.verify_crc {
            let whole = self.bytes(position, position + total_len).await?;
            if !batch::crc_matches(whole) {
                return invalid(format!("CRC32C mismatch in batch at offset {}", header.base_offset));
            }
        }

        self.position += total_len;
        self.next_offset = header.last_offset() + 1;
        Ok(ScanItem::Batch(ScannedBatch {
            position: FilePos(position),
            header,
        }))
    }

    /// Returns the file bytes `[start, end)`, reading a new window when the
    /// current one does not cover them.
    pub(crate) async fn bytes(&mut self, start: u64, end: u64) -> Result<&[u8], StorageError> {
        let window_end = self.window_start + self.window.len() as u64;
        let covered = start >= self.window_start && end <= window_end && !self.window.is_empty();
        if !covered {
            let read_end = (start + self.window_bytes).min(self.end).max(end);
            let (read_start, window) = read_aligned(self.file, self.path, self.align, start, read_end).await?;
            self.window_start = read_start;
            self.window = window;
        }
        let from = (start - self.window_start) as usize;
        let to = (end - self.window_start) as usize;
        Ok(&self.window[from..to])
    }
}

/// A segment range to read from: an index entry at or before the wanted
/// offset, and the end of the written data.
pub(crate) struct SegmentRead {
    pub(crate) file: Rc<DmaFile>,
    pub(crate) path: PathBuf,
    pub(crate) start_offset: Offset,
    pub(crate) start_position: FilePos,
    pub(crate) end_bytes: u64,
}

/// Largest number of bytes a cold read returns beyond its first batch.
pub(crate) const COLD_READ_BYTES_MAX: usize = 16 << 20;

/// Smallest window of a cold read: covers one index interval and a few batches.
const COLD_READ_WINDOW_MIN_BYTES: usize = 64 << 10;

/// Reads whole batches from disk starting with the one that contains
/// `offset`: always the first batch, then more while they fit `max_bytes`.
/// Returns the batches as one copied buffer sliced per batch, each checked
/// for CRC32C and offset continuity.
///
/// NOTE: the aligned read buffer is copied once into `Bytes`, because
/// `Bytes` needs a `Send` owner and the runtime's read buffers are not.
pub(crate) async fn read_batches(
    read: &SegmentRead,
    align: DirectAlign,
    offset: Offset,
    max_bytes: usize,
) -> Result<Vec<bytes::Bytes>, StorageError> {
    let budget_bytes = max_bytes.min(COLD_READ_BYTES_MAX);
    let window_bytes = budget_bytes.clamp(COLD_READ_WINDOW_MIN_BYTES, COLD_READ_BYTES_MAX);
    let mut scan = SegmentScan::new(
        &read.file,
        &read.path,
        align,
        read.start_position,
        read.end_bytes,
        read.start_offset,
        window_bytes,
    );

    let first = loop {
        match scan.next().await? {
            ScanItem::Batch(batch) if batch.header.last_offset() < offset => continue,
            ScanItem::Batch(batch) => break batch,
            ScanItem::End => {
                return Err(corrupt_data(
                    "read segment",
                    &read.path,
                    format!("offset {offset} is missing from the segment's written data"),
                ))
            }
            ScanItem::Invalid { position, reason } => {
                return Err(corrupt_data("read segment", &read.path, format!("at position {}: {reason}", position.0)))
            }
        }
    };

    let mut end = first.end();
    let mut total_bytes = first.header.total_len();
    while total_bytes < budget_bytes {
        match scan.next().await? {
            ScanItem::Batch(batch) if total_bytes + batch.header.total_len() <= budget_bytes => {
                total_bytes += batch.header.total_len();
                end = batch.end();
            }
            ScanItem::Batch(_) | ScanItem::End => break,
            ScanItem::Invalid { position, reason } => {
                return Err(corrupt_data("read segment", &read.path, format!("at position {}: {reason}", position.0)))
            }
        }
    }

    let copied = bytes::Bytes::copy_from_slice(scan.bytes(first.position.0, end).await?);
    split_checked(copied, first.header.base_offset, &read.path)
}

/// Splits a run of batches read from disk, checking each one's length, CRC
/// and base offset against the previous batch.
fn split_checked(run: bytes::Bytes, first_offset: Offset, path: &Path) -> Result<Vec<bytes::Bytes>, StorageError> {
    let mut batches = Vec::new();
    let mut position = 0;
    let mut expected_offset = first_offset;
    while position < run.len() {
        let rest = &run[position..];
        let header = BatchHeader::parse(rest).map_err(|err| corrupt_data("check read batch", path, err.to_string()))?;
        let len = header.total_len();
        let fits = header.batch_length >= MIN_BATCH_LENGTH && len <= rest.len();
        if !fits || header.base_offset != expected_offset || !batch::crc_matches(&rest[..len]) {
            tracing::error!(
                target: "weir::storage",
                path = %path.display(),
                offset = expected_offset,
                found_offset = header.base_offset,
                batch_length = header.batch_length,
                "batch read from disk fails its checks"
            );
            return Err(corrupt_data(
                "check read batch",
                path,
                format!(
                    "batch at offset {expected_offset} read back with base offset {}, length {} and a {} CRC",
                    header.base_offset,
                    header.batch_length,
                    if fits && batch::crc_matches(&rest[..len]) { "matching" } else { "failing" }
                ),
            ));
        }
        batches.push(run.slice(position..position + len));
        expected_offset = header.last_offset() + 1;
        position += len;
    }
    Ok(batches)
}

/// Returns the first batch at or after the read start whose max timestamp
/// is at least `target_ms`, as (base offset, max timestamp).
pub(crate) async fn find_timestamp(
    read: &SegmentRead,
    align: DirectAlign,
    target_ms: i64,
) -> Result<Option<(Offset, i64)>, StorageError> {
    let mut scan = SegmentScan::new(
        &read.file,
        &read.path,
        align,
        read.start_position,
        read.end_bytes,
        read.start_offset,
        COLD_READ_WINDOW_MIN_BYTES,
    );
    loop {
        match scan.next().await? {
            ScanItem::Batch(batch) if batch.header.max_timestamp >= target_ms => {
                return Ok(Some((batch.header.base_offset, batch.header.max_timestamp)))
            }
            ScanItem::Batch(_) => {}
            ScanItem::End => return Ok(None),
            ScanItem::Invalid { position, reason } => {
                return Err(corrupt_data("scan segment", &read.path, format!("at position {}: {reason}", position.0)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn align_rounds_both_ways() {
        let align = DirectAlign::for_tests();
        assert_eq!(align.down(4095), 0);
        assert_eq!(align.down(4096), 4096);
        assert_eq!(align.up(1), 4096);
        assert_eq!(align.up(4096), 4096);
        assert!(align.is_aligned(8192));
        assert!(!align.is_aligned(8193));
    }

    #[test]
    fn no_space_is_its_own_error() {
        let path = Path::new("/data/t-0/00000000000000000000.log");
        let full = io_failure("write segment file", path, io::Error::from_raw_os_error(libc::ENOSPC));
        assert!(matches!(full, StorageError::NoSpace { op: "write segment file", .. }));

        let other = io_failure("write segment file", path, io::Error::from_raw_os_error(libc::EIO));
        assert!(matches!(other, StorageError::Io { op: "write segment file", .. }));
    }

    #[test]
    fn tmpfs_is_rejected_instead_of_buffered_io() {
        crate::runtime::block_on(async {
            let shm = Path::new("/dev/shm");
            let on_tmpfs = is_tmpfs_mount(shm);
            assert!(on_tmpfs, "this test needs /dev/shm on tmpfs to check the O_DIRECT refusal");
            let dir = tempfile::tempdir_in(shm).unwrap();
            let path = dir.path().join("segment.log");

            let result = open_direct(&path, OpenMode::CreateEmpty).await;

            match result {
                Err(StorageError::Io { source, .. }) => assert_eq!(source.kind(), io::ErrorKind::Unsupported),
                Err(other) => panic!("expected an unsupported O_DIRECT error, got {other}"),
                Ok(_) => panic!("a tmpfs file opened as if it had O_DIRECT"),
            }
        });
    }

    /// True when `path` is the mount point of a tmpfs, per /proc/self/mounts.
    fn is_tmpfs_mount(path: &Path) -> bool {
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
        mounts.lines().any(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.len() > 2 && Path::new(fields[1]) == path && fields[2] == "tmpfs"
        })
    }

    #[test]
    fn segment_names_round_trip() {
        let path = segment_path(Path::new("/data/t-0"), 4_096, LOG_SUFFIX);
        assert_eq!(path, Path::new("/data/t-0/00000000000000004096.log"));

        let name = path.file_name().unwrap().to_str().unwrap();
        assert_eq!(parse_segment_file_name(name), Some((4_096, "log")));
        assert_eq!(parse_segment_file_name("00000000000000004096.timeindex"), Some((4_096, "timeindex")));
        assert_eq!(parse_segment_file_name("4096.log"), None);
        assert_eq!(parse_segment_file_name("0000000000000000409x.log"), None);
    }

    #[test]
    fn appender_rewrites_tail_block() {
        crate::runtime::block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("appender.log");
            crate::runtime::prime_direct_io(dir.path()).await.unwrap();
            let file = Rc::new(open_direct(&path, OpenMode::CreateEmpty).await.unwrap());
            let align = DirectAlign::probe(&file, &path).unwrap();
            let mut appender = DirectAppender::new(file.clone(), path.clone(), align, 0, Vec::new(), 1 << 20);

            let first = vec![1u8; 3_000];
            let second = vec![2u8; 3_000];
            appender.append(&[&first]).await.unwrap();
            appender.append(&[&second, b"end"]).await.unwrap();
            appender.truncate_to_size().await.unwrap();

            assert_eq!(appender.size_bytes(), 6_003);
            let on_disk = std::fs::read(&path).unwrap();
            assert_eq!(on_disk.len(), 6_003);
            assert_eq!(&on_disk[..3_000], &first[..]);
            assert_eq!(&on_disk[3_000..6_000], &second[..]);
            assert_eq!(&on_disk[6_000..], b"end");

            let tail = read_tail(&file, &path, align, 6_003).await.unwrap();
            assert_eq!(tail.len(), 6_003 - 4_096);
            assert_eq!(tail[..], on_disk[4_096..]);
        });
    }
}
