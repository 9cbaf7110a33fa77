//! The machine's raw limits, measured in-process, so broker results can be
//! read as fractions of what the disk and the loopback network allow:
//!
//! - sequential O_DIRECT writes and reads with the broker's I/O sizes.
//!   The broker's appender writes at most 1 MiB at a time, and reads here
//!   use 1 MiB windows;
//! - fdatasync latency after a 4 KiB O_DIRECT write, the cost acks=all
//!   pays per group commit;
//! - loopback TCP bandwidth between two threads.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::stats::{new_histogram, record_micros, Percentiles};

/// Alignment O_DIRECT needs for buffers, offsets and lengths on the disks
/// this runs on (logical block size 512 or 4096).
const DIRECT_IO_ALIGN_BYTES: usize = 4096;
/// Largest write the broker's appender issues.
pub const WRITE_IO_BYTES: usize = 1 << 20;
/// Read window used for the sequential read test.
pub const READ_IO_BYTES: usize = 1 << 20;
const SYNC_WRITE_BYTES: usize = 4096;
const LOOPBACK_WRITE_BYTES: usize = 256 * 1024;

/// Measured limits.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Limits {
    pub direct_write_mb_per_sec: f64,
    pub direct_read_mb_per_sec: f64,
    pub fdatasync_latency_ms: Percentiles,
    pub loopback_mb_per_sec: f64,
    pub write_io_bytes: usize,
    pub read_io_bytes: usize,
    pub file_bytes: u64,
    pub directory: String,
}

/// How much the limit tests move.
#[derive(Debug, Clone)]
pub struct LimitsConfig {
    pub file_bytes: u64,
    pub sync_count: usize,
    pub loopback_bytes: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig { file_bytes: 1 << 30, sync_count: 200, loopback_bytes: 4 << 30 }
    }
}

/// Measures every limit, using a scratch file in `directory`.
pub fn measure(directory: &Path, config: &LimitsConfig) -> Result<Limits> {
    let path = directory.join(format!("weir-bench-limits-{}.tmp", std::process::id()));
    let result = measure_disk(&path, config);
    let _ = std::fs::remove_file(&path);
    let (write, read, sync) = result?;
    let loopback = measure_loopback(config.loopback_bytes)?;
    Ok(Limits {
        direct_write_mb_per_sec: write,
        direct_read_mb_per_sec: read,
        fdatasync_latency_ms: sync,
        loopback_mb_per_sec: loopback,
        write_io_bytes: WRITE_IO_BYTES,
        read_io_bytes: READ_IO_BYTES,
        file_bytes: config.file_bytes,
        directory: directory.display().to_string(),
    })
}

fn measure_disk(path: &Path, config: &LimitsConfig) -> Result<(f64, f64, Percentiles)> {
    let file = open_direct(path)?;
    let mut buffer = AlignedBuffer::new(WRITE_IO_BYTES.max(READ_IO_BYTES))?;
    for (index, byte) in buffer.as_mut_slice().iter_mut().enumerate() {
        *byte = (index % 251) as u8;
    }
    let io_count = (config.file_bytes as usize / WRITE_IO_BYTES).max(1);

    let started = Instant::now();
    for index in 0..io_count {
        let offset = (index * WRITE_IO_BYTES) as u64;
        file.write_all_at(&buffer.as_slice()[..WRITE_IO_BYTES], offset)
            .with_context(|| format!("O_DIRECT write at {offset} of {} failed", path.display()))?;
    }
    file.sync_data().with_context(|| format!("fdatasync of {} failed", path.display()))?;
    let write_mb_per_sec = (io_count * WRITE_IO_BYTES) as f64 / 1e6 / started.elapsed().as_secs_f64();

    let total_bytes = io_count * WRITE_IO_BYTES;
    let started = Instant::now();
    let mut offset = 0;
    while offset < total_bytes {
        let read = file
            .read_at(&mut buffer.as_mut_slice()[..READ_IO_BYTES], offset as u64)
            .with_context(|| format!("O_DIRECT read at {offset} of {} failed", path.display()))?;
        if read == 0 {
            bail!("{} ended at {offset} bytes, expected {total_bytes}", path.display());
        }
        offset += read;
    }
    let read_mb_per_sec = total_bytes as f64 / 1e6 / started.elapsed().as_secs_f64();

    let mut histogram = new_histogram();
    for index in 0..config.sync_count {
        let offset = (index * SYNC_WRITE_BYTES) as u64;
        let started = Instant::now();
        file.write_all_at(&buffer.as_slice()[..SYNC_WRITE_BYTES], offset)
            .with_context(|| format!("O_DIRECT write at {offset} of {} failed", path.display()))?;
        file.sync_data().with_context(|| format!("fdatasync of {} failed", path.display()))?;
        record_micros(&mut histogram, started.elapsed().as_micros() as u64);
    }
    Ok((write_mb_per_sec, read_mb_per_sec, Percentiles::from_histogram(&histogram)))
}

fn open_direct(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .with_context(|| {
            format!(
                "failed to open {} with O_DIRECT; choose a directory on a disk filesystem (tmpfs does not support it) with --dir",
                path.display()
            )
        })
}

/// A zeroed buffer aligned for O_DIRECT.
struct AlignedBuffer {
    ptr: *mut u8,
    layout: Layout,
}

impl AlignedBuffer {
    fn new(len: usize) -> Result<AlignedBuffer> {
        let layout = Layout::from_size_align(len, DIRECT_IO_ALIGN_BYTES).context("invalid buffer layout")?;
        // SAFETY: the layout has a non-zero size (callers pass at least one block).
        let ptr = unsafe { alloc_zeroed(layout) };
        if ptr.is_null() {
            bail!("failed to allocate {len} bytes");
        }
        Ok(AlignedBuffer { ptr, layout })
    }

    fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr points to layout.size() initialised bytes owned by self.
        unsafe { std::slice::from_raw_parts(self.ptr, self.layout.size()) }
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and &mut self makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.layout.size()) }
    }
}

impl Drop for AlignedBuffer {
    fn drop(&mut self) {
        // SAFETY: ptr was allocated with this layout and is freed once.
        unsafe { dealloc(self.ptr, self.layout) }
    }
}

fn measure_loopback(total_bytes: u64) -> Result<f64> {
    let listener = TcpListener::bind("127.0.0.1:0").context("failed to bind a loopback listener")?;
    let addr = listener.local_addr()?;
    let receiver = std::thread::spawn(move || -> std::io::Result<u64> {
        let (mut stream, _) = listener.accept()?;
        let mut buffer = vec![0u8; LOOPBACK_WRITE_BYTES];
        let mut received = 0u64;
        loop {
            let read = stream.read(&mut buffer)?;
            if read == 0 {
                return Ok(received);
            }
            received += read as u64;
        }
    });

    let mut stream = TcpStream::connect(addr).context("failed to connect over loopback")?;
    let buffer = vec![0x5au8; LOOPBACK_WRITE_BYTES];
    let started = Instant::now();
    let mut sent = 0u64;
    while sent < total_bytes {
        stream.write_all(&buffer).context("loopback write failed")?;
        sent += buffer.len() as u64;
    }
    drop(stream);
    let received = receiver
        .join()
        .map_err(|_| anyhow::anyhow!("loopback receiver thread panicked"))?
        .context("loopback read failed")?;
    let elapsed = started.elapsed().as_secs_f64();
    if received != sent {
        bail!("loopback receiver got {received} of {sent} bytes");
    }
    Ok(received as f64 / 1e6 / elapsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_limits_run_measures_positive_rates() {
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).expect("temp dir");
        let limits =
            measure(dir.path(), &LimitsConfig { file_bytes: 8 << 20, sync_count: 5, loopback_bytes: 64 << 20 })
                .expect("limits");
        assert!(limits.direct_write_mb_per_sec > 0.0);
        assert!(limits.direct_read_mb_per_sec > 0.0);
        assert_eq!(limits.fdatasync_latency_ms.count, 5);
        assert!(limits.loopback_mb_per_sec > 0.0);
    }
}
