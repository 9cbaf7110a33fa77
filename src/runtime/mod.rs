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
/// Open options for [`DmaFile`] (read-write, create, ...), distinct from `std::fs::OpenOptions`.
pub use glommio::io::OpenOptions as DmaOpenOptions;
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

/// Runs a blocking closure (directory creation, rename, remove_dir_all) on a
/// helper thread so the shard's reactor keeps serving other tasks.
pub async fn spawn_blocking<F, R>(func: F) -> R
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    glommio::executor().spawn_blocking(func).await
}

/// Converts an error from a runtime file operation into `std::io::Error`,
/// keeping the OS error code (glommio's own conversion keeps only the kind,
/// which would hide ENOSPC and EINTR from callers that triage errno).
pub fn io_error(err: glommio::GlommioError<()>) -> std::io::Error {
    match err.raw_os_error() {
        Some(code) => std::io::Error::from_raw_os_error(code),
        None => err.into(),
    }
}

/// Returns true when the file descriptor behind `file` has O_DIRECT set.
///
/// glommio silently opens files on tmpfs without O_DIRECT; callers that rely
/// on direct I/O check this after every open instead of trusting the type.
pub fn is_direct_io(file: &DmaFile) -> bool {
    use std::os::unix::io::AsRawFd;
    // SAFETY: F_GETFL reads the status flags of the descriptor and touches no
    // memory of ours. A failed call returns -1, which is tested before the bits.
    let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
    flags != -1 && flags & libc::O_DIRECT != 0
}

thread_local! {
    /// Devices (`st_dev`) on which this thread's executor already probed
    /// polled I/O support with a non-empty file.
    static PRIMED_DEVICES: std::cell::RefCell<std::collections::HashSet<u64>> =
        std::cell::RefCell::new(std::collections::HashSet::new());
}

/// Name of the scratch file [`prime_direct_io`] creates and removes.
const PRIME_FILE_NAME: &str = ".weir-direct-io-probe";

/// Bytes written to the scratch file: one block of the largest alignment we use.
const PRIME_FILE_BYTES: usize = 4096;

/// Makes the executor of this thread probe polled I/O on the device behind
/// `dir` with a non-empty file. Call it before opening any [`DmaFile`] there.
///
/// glommio 0.9 decides, once per device and thread, whether direct reads
/// and writes go to its IOPOLL ring by reading the first block of the first
/// [`DmaFile`] opened on the device. On an empty file that read succeeds at
/// EOF even when the device has no poll queues (virtio-blk, most SATA), and
/// every later direct read then fails with EOPNOTSUPP.
pub async fn prime_direct_io(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;

    let owned = dir.to_path_buf();
    let device = spawn_blocking(move || std::fs::metadata(owned).map(|metadata| metadata.dev())).await?;
    if PRIMED_DEVICES.with(|primed| primed.borrow().contains(&device)) {
        return Ok(());
    }

    // A name of its own per call, because several shards may prime the same directory at once.
    static NEXT_PROBE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let unique = NEXT_PROBE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = dir.join(format!("{PRIME_FILE_NAME}-{unique}"));
    let owned = path.clone();
    spawn_blocking(move || std::fs::write(owned, [0xa5u8; PRIME_FILE_BYTES])).await?;
    let opened = DmaFile::open(&path).await.map_err(io_error);
    let closed = match opened {
        Ok(file) => file.close().await.map_err(io_error),
        Err(err) => Err(err),
    };
    let owned = path.clone();
    let removed = spawn_blocking(move || std::fs::remove_file(owned)).await;
    closed?;
    removed?;

    PRIMED_DEVICES.with(|primed| primed.borrow_mut().insert(device));
    Ok(())
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
