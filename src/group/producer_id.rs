//! Producer ids for InitProducerId.
//!
//! Ids are reserved in blocks: before the first id of a block is handed out,
//! the end of the block is written durably (temporary file, fsync, rename,
//! directory fsync). After a restart allocation resumes at the recorded end,
//! so an id is never handed out twice, at the cost of skipping the unused
//! rest of the last block.
//!
//! ```text
//! producer-ids := "WEIRPID1" next_block_start:i64le crc:u32le   (crc = CRC32C of the i64)
//! ```

use std::cell::RefCell;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use futures::future::{FutureExt, LocalBoxFuture, Shared};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse};

use super::GroupError;
use crate::runtime;

const FILE_NAME: &str = "producer-ids";
const TEMPORARY_FILE_NAME: &str = "producer-ids.tmp";
const MAGIC: &[u8; 8] = b"WEIRPID1";
const FILE_BYTES: usize = 8 + 8 + 4;
/// Kafka treats the epoch before `i16::MAX` as the last usable one; past it
/// the producer needs a new id.
const PRODUCER_EPOCH_MAX: i16 = i16::MAX - 1;
/// Bounds the retries of an allocation that keeps finding its block used up
/// by concurrent requests.
const ALLOCATE_ATTEMPTS_MAX: usize = 8;

/// Settings of the producer-id allocator.
#[derive(Debug, Clone)]
pub struct ProducerIdConfig {
    /// Ids reserved by one durable write.
    pub block_size: i64,
}

impl Default for ProducerIdConfig {
    fn default() -> Self {
        ProducerIdConfig { block_size: 1_000 }
    }
}

/// Hands out producer ids that stay unique across restarts. `!Send`; clones share state.
#[derive(Clone)]
pub struct ProducerIdAllocator {
    state: Rc<RefCell<AllocatorState>>,
}

type Reservation = Shared<LocalBoxFuture<'static, Result<i64, String>>>;

struct AllocatorState {
    dir: PathBuf,
    block_size: i64,
    /// The next id to hand out; every id below it may have been handed out.
    next_id: i64,
    /// End (exclusive) of the durably reserved block.
    block_end: i64,
    /// The block reservation being written, with the block end it records.
    reserving: Option<(i64, Reservation)>,
}

impl ProducerIdAllocator {
    /// Opens the allocator whose state lives in `dir`, creating it if missing.
    pub async fn open(dir: &Path, config: ProducerIdConfig) -> Result<Self, GroupError> {
        let owned_dir = dir.to_path_buf();
        let block_start = runtime::spawn_blocking(move || read_block_start(&owned_dir)).await?;
        tracing::info!(
            target: "weir::producer_id",
            dir = %dir.display(),
            next_producer_id = block_start,
            "opened producer id allocator"
        );
        Ok(ProducerIdAllocator {
            state: Rc::new(RefCell::new(AllocatorState {
                dir: dir.to_path_buf(),
                block_size: config.block_size.max(1),
                next_id: block_start,
                block_end: block_start,
                reserving: None,
            })),
        })
    }

    /// Handles InitProducerId v0-v5 for idempotent producers.
    ///
    /// A request without a transactional id gets a new producer id with epoch
    /// 0. From v3 on, a request that names a producer id this allocator
    /// handed out, with its current epoch, gets the same id with the next
    /// epoch (a new id once the epoch is exhausted).
    ///
    /// NOTE: Kafka responds to every non-transactional request with a new id;
    /// keeping the id only differs in which producer state the partitions
    /// keep. Without a record of each id's epoch, a request naming an older
    /// epoch is not rejected with PRODUCER_FENCED either.
    ///
    /// NOTE: transactions are not implemented, so a transactional id gets
    /// INVALID_REQUEST. Clients treat it as fatal at once (the Java client
    /// reports "Unexpected error in InitProducerIdResponse", pointing at the
    /// broker logs) instead of retrying the way they retry
    /// COORDINATOR_NOT_AVAILABLE until their timeout.
    pub async fn init_producer_id(
        &self,
        req: InitProducerIdRequest,
        version: i16,
    ) -> InitProducerIdResponse {
        let mut response = InitProducerIdResponse::default();
        let (producer_id, producer_epoch) = match self.assign(&req, version).await {
            Ok(assigned) => assigned,
            Err(error) => {
                response.error_code = error.code();
                response.producer_epoch = -1;
                return response;
            }
        };
        response.producer_id = producer_id.into();
        response.producer_epoch = producer_epoch;
        response
    }

    async fn assign(
        &self,
        req: &InitProducerIdRequest,
        version: i16,
    ) -> Result<(i64, i16), ResponseError> {
        if let Some(transactional_id) = &req.transactional_id {
            tracing::warn!(
                target: "weir::producer_id",
                transactional_id = transactional_id.0.as_str(),
                "rejected InitProducerId for a transactional producer: transactions are not supported"
            );
            return Err(ResponseError::InvalidRequest);
        }

        let current_producer_id = req.producer_id.0;
        let current_epoch = req.producer_epoch;
        if version >= 3 && (current_producer_id >= 0 || current_epoch >= 0) {
            if current_producer_id < 0 || current_epoch < 0 {
                // Both or neither must be set.
                return Err(ResponseError::InvalidRequest);
            }
            let issued = current_producer_id < self.state.borrow().next_id;
            if issued && current_epoch < PRODUCER_EPOCH_MAX {
                return Ok((current_producer_id, current_epoch + 1));
            }
        }

        let producer_id = self.allocate().await.map_err(|message| {
            tracing::error!(
                target: "weir::producer_id",
                error = %message,
                "failed to reserve producer ids"
            );
            ResponseError::CoordinatorNotAvailable
        })?;
        Ok((producer_id, 0))
    }

    /// Returns a producer id never handed out before, reserving a new block durably when needed.
    pub async fn allocate(&self) -> Result<i64, String> {
        for _ in 0..ALLOCATE_ATTEMPTS_MAX {
            let (target_end, reservation) = {
                let mut state = self.state.borrow_mut();
                if state.next_id < state.block_end {
                    let id = state.next_id;
                    state.next_id += 1;
                    return Ok(id);
                }
                match &state.reserving {
                    Some((target_end, reservation)) => (*target_end, reservation.clone()),
                    None => {
                        let target_end = state.block_end + state.block_size;
                        let dir = state.dir.clone();
                        let reservation = runtime::spawn_blocking(move || {
                            write_block_start(&dir, target_end)
                                .map_err(|error| error.to_string())?;
                            Ok(target_end)
                        })
                        .boxed_local()
                        .shared();
                        state.reserving = Some((target_end, reservation.clone()));
                        (target_end, reservation)
                    }
                }
            };

            let result = reservation.await;
            let mut state = self.state.borrow_mut();
            if state.reserving.as_ref().map(|(end, _)| *end) == Some(target_end) {
                state.reserving = None;
            }
            let end = result?;
            state.block_end = state.block_end.max(end);
        }
        Err(format!(
            "no producer id left after {ALLOCATE_ATTEMPTS_MAX} block reservations; too many concurrent requests"
        ))
    }
}

/// Reads the first id of the next block, 0 when no file exists yet.
fn read_block_start(dir: &Path) -> Result<i64, GroupError> {
    std::fs::create_dir_all(dir)
        .map_err(|source| GroupError::io("create directory", dir, source))?;
    let temporary = dir.join(TEMPORARY_FILE_NAME);
    if temporary.exists() {
        std::fs::remove_file(&temporary)
            .map_err(|source| GroupError::io("remove", &temporary, source))?;
    }
    let path = dir.join(FILE_NAME);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(source) => return Err(GroupError::io("read", &path, source)),
    };
    let corrupt = |message: &str| GroupError::Corrupt {
        path: path.clone(),
        message: format!("{message}; producer ids cannot be handed out safely without it"),
    };
    if bytes.len() != FILE_BYTES || &bytes[..8] != MAGIC {
        return Err(corrupt("unexpected length or magic"));
    }
    let value: [u8; 8] = bytes[8..16].try_into().expect("8-byte slice");
    let crc = u32::from_le_bytes(bytes[16..20].try_into().expect("4-byte slice"));
    if crc32c::crc32c(&value) != crc {
        return Err(corrupt("checksum mismatch"));
    }
    let block_start = i64::from_le_bytes(value);
    if block_start < 0 {
        return Err(corrupt("negative producer id"));
    }
    Ok(block_start)
}

/// Durably records `block_start` as the first id after the reserved block.
fn write_block_start(dir: &Path, block_start: i64) -> Result<(), GroupError> {
    let temporary = dir.join(TEMPORARY_FILE_NAME);
    let path = dir.join(FILE_NAME);
    let value = block_start.to_le_bytes();
    let mut bytes = Vec::with_capacity(FILE_BYTES);
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&value);
    bytes.extend_from_slice(&crc32c::crc32c(&value).to_le_bytes());

    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&temporary)
        .map_err(|source| GroupError::io("create", &temporary, source))?;
    file.write_all(&bytes)
        .map_err(|source| GroupError::io("write", &temporary, source))?;
    file.sync_all()
        .map_err(|source| GroupError::io("fsync", &temporary, source))?;
    std::fs::rename(&temporary, &path)
        .map_err(|source| GroupError::io("rename", &temporary, source))?;
    File::open(dir)
        .and_then(|handle| handle.sync_all())
        .map_err(|source| GroupError::io("fsync directory", dir, source))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::block_on;
    use kafka_protocol::messages::TransactionalId;
    use kafka_protocol::protocol::{Encodable, StrBytes};

    fn request(producer_id: i64, producer_epoch: i16) -> InitProducerIdRequest {
        let mut request = InitProducerIdRequest::default();
        request.transactional_id = None;
        request.producer_id = producer_id.into();
        request.producer_epoch = producer_epoch;
        request
    }

    fn assert_encodes(response: &InitProducerIdResponse, version: i16) {
        let mut buf = bytes::BytesMut::new();
        response.encode(&mut buf, version).unwrap_or_else(|error| {
            panic!("InitProducerId v{version} response does not encode: {error}")
        });
    }

    #[test]
    fn producer_ids_are_unique_across_restarts() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().to_path_buf();
        block_on(async move {
            let config = ProducerIdConfig { block_size: 10 };
            let allocator = ProducerIdAllocator::open(&path, config.clone())
                .await
                .expect("open");
            let mut first_run = Vec::new();
            for version in [0, 1, 2, 3, 4, 5] {
                for _ in 0..4 {
                    let response = allocator.init_producer_id(request(-1, -1), version).await;
                    assert_encodes(&response, version);
                    assert_eq!(response.error_code, 0);
                    assert_eq!(response.producer_epoch, 0);
                    first_run.push(response.producer_id.0);
                }
            }
            let expected: Vec<i64> = (0..24).collect();
            assert_eq!(first_run, expected);
            // The third block (20..30) was reserved before id 20 went out.
            assert_eq!(read_block_start(&path).expect("read"), 30);

            let reopened = ProducerIdAllocator::open(&path, config)
                .await
                .expect("reopen");
            let response = reopened.init_producer_id(request(-1, -1), 4).await;
            assert_eq!(response.producer_id.0, 30);
        });
    }

    #[test]
    fn known_producer_gets_epoch_bump() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().to_path_buf();
        block_on(async move {
            let allocator = ProducerIdAllocator::open(&path, ProducerIdConfig::default())
                .await
                .expect("open");
            let first = allocator.init_producer_id(request(-1, -1), 4).await;
            let id = first.producer_id.0;

            let bumped = allocator.init_producer_id(request(id, 0), 4).await;
            assert_eq!(bumped.error_code, 0);
            assert_eq!(bumped.producer_id.0, id);
            assert_eq!(bumped.producer_epoch, 1);

            let exhausted = allocator
                .init_producer_id(request(id, PRODUCER_EPOCH_MAX), 4)
                .await;
            assert_eq!(exhausted.error_code, 0);
            assert_ne!(exhausted.producer_id.0, id);
            assert_eq!(exhausted.producer_epoch, 0);

            let unknown = allocator.init_producer_id(request(1_000_000, 3), 4).await;
            assert_eq!(unknown.error_code, 0);
            assert_ne!(unknown.producer_id.0, 1_000_000);
            assert_eq!(unknown.producer_epoch, 0);

            // Before v3 the fields do not exist, so a new id is handed out.
            let old_version = allocator.init_producer_id(request(id, 0), 2).await;
            assert_ne!(old_version.producer_id.0, id);
        });
    }

    #[test]
    fn invalid_requests_are_rejected() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().to_path_buf();
        block_on(async move {
            let allocator = ProducerIdAllocator::open(&path, ProducerIdConfig::default())
                .await
                .expect("open");

            let half_set = allocator.init_producer_id(request(5, -1), 3).await;
            assert_eq!(half_set.error_code, ResponseError::InvalidRequest.code());

            let mut transactional = request(-1, -1);
            transactional.transactional_id =
                Some(TransactionalId(StrBytes::from_static_str("txn-1")));
            let response = allocator.init_producer_id(transactional, 4).await;
            assert_eq!(response.error_code, ResponseError::InvalidRequest.code());
            assert_eq!(response.producer_id.0, -1);
            assert_encodes(&response, 4);
        });
    }

    #[test]
    fn concurrent_allocations_stay_unique() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().to_path_buf();
        block_on(async move {
            // Five reservations of four ids serve the twenty requests, within
            // the retry bound of each request.
            let config = ProducerIdConfig { block_size: 4 };
            let allocator = ProducerIdAllocator::open(&path, config)
                .await
                .expect("open");
            let tasks: Vec<_> = (0..20)
                .map(|_| {
                    let allocator = allocator.clone();
                    runtime::spawn_local(async move { allocator.allocate().await })
                })
                .collect();
            let mut ids = Vec::new();
            for task in tasks {
                ids.push(task.await.expect("allocation"));
            }
            ids.sort();
            let expected: Vec<i64> = (0..20).collect();
            assert_eq!(ids, expected);
            assert!(read_block_start(&path).expect("read") >= 20);
        });
    }

    #[test]
    fn corrupt_state_file_is_an_error() {
        let dir = tempfile::tempdir().expect("temporary directory");
        std::fs::write(dir.path().join(FILE_NAME), b"WEIRPID1garbage!!!!!").expect("write");
        let error = read_block_start(dir.path()).expect_err("corrupt file must not open");
        assert!(matches!(error, GroupError::Corrupt { .. }), "{error}");
    }
}
