//! The runtime seam: the only module that names glommio.
//!
//! Weir runs one glommio `LocalExecutor` per shard, each pinned to its own
//! core. Everything that needs the reactor (timers, task spawning, TCP,
//! direct-I/O files, the cross-shard channel mesh) is reached through the
//! re-exports and helpers here, so that replacing glommio with another
//! io_uring runtime stays a change to this module alone.
//!
//! glommio refuses to start when `RLIMIT_MEMLOCK` is below 512 KiB and wants
//! a few MiB of locked memory per executor for its registered buffers.
//! [`ensure_memlock`] raises the soft limit where the hard limit allows it and
//! reports what to change otherwise.

use std::future::Future;
use std::time::Duration;

pub use glommio::channels::channel_mesh::{Receivers as MeshReceivers, Senders as MeshSenders};
pub use glommio::io::{DmaBuffer, DmaFile, ReadResult};
pub use glommio::net::{TcpListener, TcpStream};
pub use glommio::timer::{sleep, Timer};
pub use glommio::channels::local_channel::{new_bounded as local_bounded_channel, LocalReceiver, LocalSender};
pub use glommio::sync::{Semaphore, StaticPermit};
pub use glommio::{spawn_local, yield_if_needed, Task};

/// Locked memory each executor needs for glommio's registered buffers.
pub const MEMLOCK_PER_SHARD_BYTES: u64 = 8 * 1024 * 1024;
/// Below this limit glommio does not start at all.
pub const MEMLOCK_MIN_BYTES: u64 = 512 * 1024;

/// Errors from starting or running the shard executors.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("RLIMIT_MEMLOCK is {current_bytes} bytes but {shard_count} shards need at least {needed_bytes}; raise it with `ulimit -l unlimited`, LimitMEMLOCK=infinity in the systemd unit, or a memlock line in /etc/security/limits.conf")]
    MemlockTooLow {
        current_bytes: u64,
        needed_bytes: u64,
        shard_count: usize,
    },
    #[error("failed to start shard {shard} on cpu {cpu:?}: {message}")]
    Spawn {
        shard: usize,
        cpu: Option<usize>,
        message: String,
    },
    #[error("shard {shard} panicked: {message}")]
    Panicked { shard: usize, message: String },
}

/// Checks RLIMIT_MEMLOCK and raises the soft limit towards what `shard_count`
/// executors need. Returns the limit in force afterwards.
pub fn ensure_memlock(shard_count: usize) -> Result<u64, RuntimeError> {
    let needed_bytes = MEMLOCK_PER_SHARD_BYTES * shard_count as u64;
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass and nothing else.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) };
    if rc != 0 {
        return Ok(0);
    }
    if limit.rlim_cur == libc::RLIM_INFINITY || limit.rlim_cur >= needed_bytes {
        return Ok(limit.rlim_cur);
    }
    // A privileged process (CAP_SYS_RESOURCE) may raise the hard limit too;
    // otherwise raise the soft limit as far as the hard limit allows.
    let privileged = libc::rlimit {
        rlim_cur: needed_bytes,
        rlim_max: if limit.rlim_max == libc::RLIM_INFINITY { limit.rlim_max } else { limit.rlim_max.max(needed_bytes) },
    };
    // SAFETY: setrlimit reads the struct we pass; failure is reported by rc.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &privileged) } == 0 {
        return Ok(needed_bytes);
    }
    let wanted = if limit.rlim_max == libc::RLIM_INFINITY {
        needed_bytes
    } else {
        needed_bytes.min(limit.rlim_max)
    };
    let raised = libc::rlimit {
        rlim_cur: wanted,
        rlim_max: limit.rlim_max,
    };
    // SAFETY: setrlimit reads the struct we pass; failure is reported by rc.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &raised) };
    let current_bytes = if rc == 0 { wanted } else { limit.rlim_cur };
    if current_bytes < MEMLOCK_MIN_BYTES * shard_count as u64 {
        return Err(RuntimeError::MemlockTooLow {
            current_bytes,
            needed_bytes,
            shard_count,
        });
    }
    if current_bytes < needed_bytes {
        tracing::warn!(
            target: "weir::runtime",
            current_bytes,
            needed_bytes,
            "RLIMIT_MEMLOCK is below the recommended size; raise it with `ulimit -l unlimited` or LimitMEMLOCK=infinity"
        );
    }
    Ok(current_bytes)
}

/// Number of CPUs this process may run on.
pub fn available_cpus() -> Vec<usize> {
    match core_affinity::get_core_ids() {
        Some(ids) if !ids.is_empty() => ids.into_iter().map(|id| id.id).collect(),
        _ => (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect(),
    }
}

/// A cross-shard message mesh: every shard can send `T` to every other.
pub struct Mesh<T: Send + 'static> {
    builder: glommio::channels::channel_mesh::MeshBuilder<T, glommio::channels::channel_mesh::Full>,
}

impl<T: Send + 'static> Clone for Mesh<T> {
    fn clone(&self) -> Self {
        Mesh {
            builder: self.builder.clone(),
        }
    }
}

impl<T: Send + 'static> Mesh<T> {
    /// Creates a mesh for `peer_count` shards, each channel holding up to
    /// `channel_capacity` messages before senders wait.
    pub fn new(peer_count: usize, channel_capacity: usize) -> Self {
        Mesh {
            builder: glommio::channels::channel_mesh::MeshBuilder::full(peer_count, channel_capacity),
        }
    }

    /// Joins the mesh from inside a shard. Completes once every peer joined.
    pub async fn join(self) -> Result<(MeshSenders<T>, MeshReceivers<T>), RuntimeError> {
        self.builder.join().await.map_err(|_| RuntimeError::Spawn {
            shard: usize::MAX,
            cpu: None,
            message: "channel mesh join failed".into(),
        })
    }
}

/// Handle to the running shard threads.
pub struct ShardThreads {
    handles: Vec<glommio::ExecutorJoinHandle<()>>,
}

impl ShardThreads {
    /// Waits until every shard thread ended.
    pub fn join(self) -> Result<(), RuntimeError> {
        for (shard, handle) in self.handles.into_iter().enumerate() {
            handle.join().map_err(|err| RuntimeError::Panicked {
                shard,
                message: err.to_string(),
            })?;
        }
        Ok(())
    }
}

/// Starts one executor per entry of `cpus` (None leaves a shard unpinned).
/// `make_main(shard_id)` runs on the calling thread and returns the closure
/// that builds the shard's main future on the shard's own thread.
pub fn start_shards<F, G, Fut>(cpus: &[Option<usize>], mut make_main: F) -> Result<ShardThreads, RuntimeError>
where
    F: FnMut(usize) -> G,
    G: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let mut handles = Vec::with_capacity(cpus.len());
    for (shard, cpu) in cpus.iter().copied().enumerate() {
        let placement = match cpu {
            Some(cpu) => glommio::Placement::Fixed(cpu),
            None => glommio::Placement::Unbound,
        };
        let shard_main = make_main(shard);
        let handle = glommio::LocalExecutorBuilder::new(placement)
            .name(&format!("weir-shard-{shard}"))
            .spawn(shard_main)
            .map_err(|err| RuntimeError::Spawn {
                shard,
                cpu,
                message: err.to_string(),
            })?;
        handles.push(handle);
    }
    Ok(ShardThreads { handles })
}

/// Name of the small file [`prime_direct_io`] reads in a data directory.
pub const DIRECT_IO_PROBE_FILE: &str = ".direct-io-probe";

/// Makes glommio's poll-ring probe for the device under `dir` come out right.
///
/// glommio 0.9 decides, on the first direct-I/O file each executor opens on a
/// block device, whether that device supports polled I/O by reading the
/// file's first block. When that file is empty the read succeeds without
/// touching the device, glommio concludes "pollable", and every later read on
/// that device fails with EOPNOTSUPP on devices without poll queues. Reading a
/// file that holds one full block first gives the probe a real read.
/// Call this on each shard before it opens any other file under `dir`.
pub async fn prime_direct_io(dir: &std::path::Path) -> std::io::Result<()> {
    let path = dir.join(DIRECT_IO_PROBE_FILE);
    let probe_path = path.clone();
    spawn_blocking(move || write_probe_file(&probe_path)).await?;
    let file = DmaFile::open(&path).await.map_err(std::io::Error::from)?;
    let read = file.read_at_aligned(0, PROBE_FILE_BYTES).await;
    let _ = file.close().await;
    read.map(|_| ()).map_err(std::io::Error::from)
}

/// Size of the probe file: one block at the largest logical block size in use.
const PROBE_FILE_BYTES: usize = 4096;

fn write_probe_file(path: &std::path::Path) -> std::io::Result<()> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.len() >= PROBE_FILE_BYTES as u64 => Ok(()),
        _ => {
            // A name of its own per call, because several shards may write at once.
            static NEXT_TEMPORARY: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            let unique = NEXT_TEMPORARY.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let temporary = path.with_extension(format!("tmp{unique}"));
            std::fs::write(&temporary, vec![0u8; PROBE_FILE_BYTES])?;
            std::fs::rename(&temporary, path)
        }
    }
}

/// Runs a blocking closure (directory creation, rename, remove_dir_all) on a
/// helper thread so the shard's reactor keeps serving other tasks.
pub async fn spawn_blocking<F, R>(func: F) -> R
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    glommio::executor().spawn_blocking(func).await
}

/// Runs `future` until it completes or `duration` passes. Returns None on time-out.
pub async fn timeout<F, T>(duration: Duration, future: F) -> Option<T>
where
    F: Future<Output = T>,
{
    use futures_lite::FutureExt;
    let guarded = async { Some(future.await) };
    let timer = async {
        sleep(duration).await;
        None
    };
    guarded.or(timer).await
}

/// Runs a future on a fresh single executor on the current thread. For tests,
/// tools and benchmarks that need the runtime outside the broker.
pub fn block_on<F, T>(future: F) -> T
where
    F: Future<Output = T> + 'static,
    T: 'static,
{
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .make()
        .expect("failed to create a glommio executor; check RLIMIT_MEMLOCK")
        .run(future)
}
