//! Broker start-up and shutdown: binds one listener per shard, starts the
//! pinned shard executors, opens their logs, and stops them on request.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::os::fd::{FromRawFd, IntoRawFd, RawFd};
use std::rc::Rc;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use futures::channel::oneshot;

use super::{BrokerAddress, Shard, ShardMessage};
use crate::config::{BrokerConfig, ListenerMode};
use crate::group::{GroupConfig, GroupCoordinator, ProducerIdAllocator, ProducerIdConfig};
use crate::metadata::{self, MetadataChange, MetadataView};
use crate::runtime::{self, Mesh, TcpListener};

/// Capacity of each mesh channel, in messages, before a sender waits.
const MESH_CHANNEL_CAPACITY: usize = 1024;
/// Time a shard gets to open its logs before start-up is declared failed.
const SHARD_START_TIMEOUT: Duration = Duration::from_secs(600);

/// A running broker.
pub struct BrokerHandle {
    /// Listen address of every shard; shard 0's is the bootstrap address.
    pub shard_addresses: Vec<SocketAddr>,
    stop_senders: Vec<oneshot::Sender<()>>,
    threads: runtime::ShardThreads,
    /// Exclusive lock on the data directory, released when the process exits.
    _data_dir_lock: std::fs::File,
}

impl BrokerHandle {
    /// Returns the address clients bootstrap from.
    pub fn bootstrap(&self) -> SocketAddr {
        self.shard_addresses[0]
    }

    /// Asks every shard to close its logs and stop, then waits for them.
    pub fn shutdown(self) -> anyhow::Result<()> {
        for sender in self.stop_senders {
            let _ = sender.send(());
        }
        self.threads.join()?;
        Ok(())
    }
}

/// Starts the broker and returns once every shard serves.
pub fn run_broker(config: BrokerConfig) -> anyhow::Result<BrokerHandle> {
    let config = Arc::new(config);
    let cpus = runtime::available_cpus();
    let shard_count = config.shards.unwrap_or(cpus.len()).max(1);
    let memlock_bytes = runtime::ensure_memlock(shard_count)?;
    tracing::info!(target: "weir::broker", shards = shard_count, data_dir = %config.data_dir.display(),
        listen = %config.listen, memlock_bytes, "starting broker");
    tracing::info!(target: "weir::broker", config = ?config, "configuration");

    std::fs::create_dir_all(&config.data_dir)
        .map_err(|err| anyhow::anyhow!("failed to create data dir {}: {err}", config.data_dir.display()))?;
    let data_dir_lock = lock_data_dir(&config.data_dir)?;
    let mut view = metadata::load(&config.data_dir)?;
    if view.cluster_id.is_empty() {
        let change = MetadataChange::ClusterId { cluster_id: new_cluster_id() };
        metadata::append(&config.data_dir, std::slice::from_ref(&change))?;
        view.apply(&change);
    }
    tracing::info!(target: "weir::broker", cluster_id = %view.cluster_id, topics = view.topics.len(), "loaded metadata");

    let (listener_fds, shard_addresses) = bind_listeners(&config, shard_count)?;
    let advertised_host = config.advertised_host.clone().unwrap_or_else(|| match config.listen.ip() {
        ip if ip.is_unspecified() => "localhost".to_string(),
        ip => ip.to_string(),
    });
    let advertised = match config.listener_mode {
        ListenerMode::PerShard => &shard_addresses[..],
        ListenerMode::Shared => &shard_addresses[..1],
    };
    let brokers: Vec<BrokerAddress> = advertised
        .iter()
        .enumerate()
        .map(|(shard, address)| BrokerAddress {
            node_id: shard as i32,
            host: advertised_host.clone(),
            port: address.port(),
        })
        .collect();

    let pinned: Vec<Option<usize>> = (0..shard_count)
        .map(|shard| if config.pin_shards && shard_count <= cpus.len() { Some(cpus[shard]) } else { None })
        .collect();
    let mesh = Mesh::<ShardMessage>::new(shard_count, MESH_CHANNEL_CAPACITY);
    let (ready_sender, ready_receiver) = mpsc::channel::<Result<usize, String>>();
    let mut stop_senders = Vec::new();
    let shared = Arc::new(StartParams {
        config: config.clone(),
        brokers,
        view,
        listener_fds,
        listen_addresses: shard_addresses.clone(),
        shard_count,
    });
    let threads = runtime::start_shards(&pinned, |shard_id| {
        let (stop_sender, stop) = oneshot::channel::<()>();
        stop_senders.push(stop_sender);
        let shared = shared.clone();
        let mesh = mesh.clone();
        let ready = ready_sender.clone();
        move || shard_main(shard_id, shared, mesh, ready, stop)
    })?;

    for _ in 0..shard_count {
        match ready_receiver.recv_timeout(SHARD_START_TIMEOUT) {
            Ok(Ok(_)) => {}
            Ok(Err(message)) => anyhow::bail!("{message}"),
            Err(_) => anyhow::bail!("shards did not start within {SHARD_START_TIMEOUT:?}"),
        }
    }
    Ok(BrokerHandle { shard_addresses, stop_senders, threads, _data_dir_lock: data_dir_lock })
}

struct StartParams {
    config: Arc<BrokerConfig>,
    brokers: Vec<BrokerAddress>,
    view: MetadataView,
    listener_fds: Vec<RawFd>,
    listen_addresses: Vec<SocketAddr>,
    shard_count: usize,
}

async fn shard_main(
    shard_id: usize,
    params: Arc<StartParams>,
    mesh: Mesh<ShardMessage>,
    ready: mpsc::Sender<Result<usize, String>>,
    stop: oneshot::Receiver<()>,
) {
    let (senders, mut receivers) = match mesh.join().await {
        Ok(pair) => pair,
        Err(err) => {
            let _ = ready.send(Err(format!("shard {shard_id}: {err}")));
            return;
        }
    };
    assert_eq!(senders.peer_id(), shard_id, "mesh peer ids must follow shard ids");

    let groups_dir = params.config.data_dir.join("__weir_groups").join(format!("shard-{shard_id}"));
    let groups = match open_groups(&groups_dir, &params.config).await {
        Ok(groups) => groups,
        Err(message) => {
            let _ = ready.send(Err(format!("shard {shard_id}: {message}")));
            return;
        }
    };
    let producer_ids = if shard_id == 0 {
        let dir = params.config.data_dir.join("__weir_producer_ids");
        match open_producer_ids(&dir).await {
            Ok(allocator) => Some(allocator),
            Err(message) => {
                let _ = ready.send(Err(message));
                return;
            }
        }
    } else {
        None
    };

    let shard = Rc::new(Shard {
        id: shard_id,
        count: params.shard_count,
        config: params.config.clone(),
        brokers: params.brokers.clone(),
        metadata: RefCell::new(params.view.clone()),
        partitions: RefCell::new(HashMap::new()),
        senders,
        groups,
        producer_ids,
        request_bytes: Rc::new(runtime::Semaphore::new(params.config.request_bytes_budget() as u64)),
    });

    let weak = Rc::downgrade(&shard);
    shard.groups.set_partition_validator(move |topic, partition| {
        weak.upgrade().is_some_and(|shard| {
            shard
                .metadata
                .borrow()
                .topics
                .get(topic)
                .is_some_and(|info| partition >= 0 && partition < info.partition_count)
        })
    });

    for (peer, receiver) in receivers.streams() {
        let shard = shard.clone();
        runtime::spawn_local(async move {
            while let Some(message) = receiver.recv().await {
                let shard = shard.clone();
                runtime::spawn_local(async move { shard.handle(message).await }).detach();
            }
            tracing::debug!(target: "weir::shard", shard = shard.id, peer, "mesh channel closed");
        })
        .detach();
    }

    if let Err(err) = runtime::prime_direct_io(&shard.config.data_dir).await {
        let _ = ready.send(Err(format!(
            "shard {shard_id} failed a direct-I/O read in {}: {err}; the data dir must be on a filesystem that supports O_DIRECT",
            shard.config.data_dir.display()
        )));
        return;
    }
    if let Err(err) = shard.open_owned_logs().await {
        let _ = ready.send(Err(format!("shard {shard_id} failed to open its logs: {err}")));
        return;
    }

    // SAFETY-free: the fd came from a std listener that nothing else owns.
    let listener = unsafe_listener(params.listener_fds[shard_id]);
    let accept_task = runtime::spawn_local(crate::net::accept_loop(shard.clone(), listener));
    let retention_task = runtime::spawn_local(retention_loop(shard.clone()));
    tracing::info!(target: "weir::shard", shard = shard_id, address = %params.listen_addresses[shard_id], "shard serving");
    let _ = ready.send(Ok(shard_id));

    let _ = stop.await;
    drop(accept_task);
    drop(retention_task);
    shard.close_all_logs_for_shutdown().await;
    tracing::info!(target: "weir::shard", shard = shard_id, "shard stopped");
}

impl Shard {
    async fn close_all_logs_for_shutdown(self: &Rc<Self>) {
        let (reply, _receiver) = oneshot::channel();
        self.handle(ShardMessage::Shutdown { reply }).await;
    }
}

async fn open_groups(dir: &std::path::Path, config: &BrokerConfig) -> Result<GroupCoordinator, String> {
    let owned = dir.to_path_buf();
    runtime::spawn_blocking(move || std::fs::create_dir_all(&owned))
        .await
        .map_err(|err| format!("failed to create {}: {err}", dir.display()))?;
    let group_config = GroupConfig {
        group_min_session_timeout_ms: config.group_min_session_timeout_ms,
        group_max_session_timeout_ms: config.group_max_session_timeout_ms,
        group_initial_rebalance_delay_ms: config.group_initial_rebalance_delay_ms as i32,
        offsets_retention_minutes: config.offsets_retention_minutes as i64,
        ..GroupConfig::default()
    };
    GroupCoordinator::open(dir, group_config).await.map_err(|err| err.to_string())
}

async fn open_producer_ids(dir: &std::path::Path) -> Result<ProducerIdAllocator, String> {
    let owned = dir.to_path_buf();
    runtime::spawn_blocking(move || std::fs::create_dir_all(&owned))
        .await
        .map_err(|err| format!("failed to create {}: {err}", dir.display()))?;
    ProducerIdAllocator::open(dir, ProducerIdConfig::default()).await.map_err(|err| err.to_string())
}

#[allow(unsafe_code)]
fn unsafe_listener(fd: RawFd) -> TcpListener {
    // SAFETY: `fd` is an open, listening TCP socket created by `bind_listeners`
    // and handed to exactly one shard, which becomes its only owner.
    unsafe { TcpListener::from_raw_fd(fd) }
}

async fn retention_loop(shard: Rc<Shard>) {
    let interval = Duration::from_millis(shard.config.log_retention_check_interval_ms.max(1_000));
    loop {
        runtime::sleep(interval).await;
        let logs: Vec<_> = shard.partitions.borrow().values().flat_map(|logs| logs.values().cloned()).collect();
        let now = super::partition_ops::now_ms();
        for log in logs {
            if let Err(err) = log.enforce_retention(now).await {
                tracing::warn!(target: "weir::shard", shard = shard.id, error = %err, "retention failed");
            }
        }
    }
}

fn bind_listeners(config: &BrokerConfig, shard_count: usize) -> anyhow::Result<(Vec<RawFd>, Vec<SocketAddr>)> {
    let mut fds = Vec::with_capacity(shard_count);
    let mut addresses = Vec::with_capacity(shard_count);
    for shard in 0..shard_count {
        let mut address = config.listen;
        match config.listener_mode {
            ListenerMode::PerShard if address.port() != 0 => {
                let port = u32::from(address.port()) + shard as u32;
                anyhow::ensure!(
                    port <= u32::from(u16::MAX),
                    "shard {shard} would listen on port {port}, past 65535; lower the listen port"
                );
                address.set_port(port as u16);
            }
            ListenerMode::PerShard => {}
            // Every shard binds the port the first one got.
            ListenerMode::Shared => {
                if let Some(first) = addresses.first() {
                    address = *first;
                }
            }
        }
        let listener = bind_with_retry(address, config.listener_mode == ListenerMode::Shared)
            .map_err(|err| anyhow::anyhow!("failed to listen on {address} for shard {shard}: {err}"))?;
        addresses.push(listener.local_addr()?);
        fds.push(listener.into_raw_fd());
    }
    Ok((fds, addresses))
}

/// Binds, retrying while the address is still in use for a short while: a
/// broker restarted right after a kill -9 can find its port held for some
/// milliseconds while the kernel tears the old sockets down.
fn bind_with_retry(address: SocketAddr, reuse_port: bool) -> std::io::Result<StdTcpListener> {
    let deadline = std::time::Instant::now() + BIND_RETRY_FOR;
    loop {
        match bind_one(address, reuse_port) {
            Err(err) if err.kind() == std::io::ErrorKind::AddrInUse && std::time::Instant::now() < deadline => {
                tracing::debug!(target: "weir::broker", %address, "address in use; retrying the bind");
                std::thread::sleep(BIND_RETRY_INTERVAL);
            }
            result => return result,
        }
    }
}

/// How long start-up keeps retrying a bind that fails with EADDRINUSE.
const BIND_RETRY_FOR: Duration = Duration::from_secs(2);
const BIND_RETRY_INTERVAL: Duration = Duration::from_millis(20);

fn bind_one(address: SocketAddr, reuse_port: bool) -> std::io::Result<StdTcpListener> {
    let socket = socket2::Socket::new(socket2::Domain::for_address(address), socket2::Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.bind(&address.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// Name of the lock file in the data directory.
const LOCK_FILE_NAME: &str = ".lock";

/// Takes an exclusive `flock` on `<data-dir>/.lock`, so that a second broker
/// on the same directory fails at start instead of truncating the first one's
/// segments. The kernel drops the lock when the process exits, kill -9 included.
fn lock_data_dir(data_dir: &std::path::Path) -> anyhow::Result<std::fs::File> {
    use std::io::{Read, Seek, Write};
    use std::os::fd::AsRawFd;

    let path = data_dir.join(LOCK_FILE_NAME);
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|err| anyhow::anyhow!("failed to open lock file {}: {err}", path.display()))?;
    // SAFETY: flock on a file descriptor we own; the result is checked.
    let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
    if !locked {
        let mut holder = String::new();
        let _ = file.read_to_string(&mut holder);
        anyhow::bail!(
            "data dir {} is in use by another weir process (pid {}); stop it or choose another --data-dir",
            data_dir.display(),
            holder.trim()
        );
    }
    file.set_len(0)?;
    file.rewind()?;
    write!(file, "{}", std::process::id())?;
    Ok(file)
}

fn new_cluster_id() -> String {
    // Kafka cluster ids are 22-character URL-safe base64 UUIDs; a hex UUID works as well for clients.
    uuid::Uuid::new_v4().simple().to_string()
}
