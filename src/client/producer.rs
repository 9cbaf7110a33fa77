//! The producer: per-partition batching and pipelined Produce requests.
//!
//! `send` appends a record to its partition's open batch (a [`BatchBuilder`])
//! and returns at once; only a full buffer (`buffer.memory`) makes it wait. A
//! batch is sealed when the next record would push it past `batch.size`, or
//! when it has lingered `linger.ms`, or on `flush`. One sender task per
//! producer takes sealed batches, groups them by partition leader (at most
//! one batch per partition per request, as Kafka brokers require), and sends
//! a Produce request to each leader that has a free in-flight slot. The
//! response completes the batch's records: their offsets are the batch's base
//! offset plus their position.
//!
//! Retriable failures (a stale leader, a dropped connection, a time-out)
//! refresh metadata and put the batch back at the head of its partition,
//! up to `retries` times.
//!
//! NOTE: without idempotence a retried batch can land after a later batch of
//! the same partition that was already in flight, and a batch whose response
//! was lost can be written twice. The producer sends no producer id.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse};

use super::batch::{BatchBuilder, Compression, RecordHeader, BATCH_HEADER_BYTES};
use super::cluster::{topic_name, Client};
use super::error::ClientError;
use super::sync::{LocalSemaphore, Notify};
use crate::runtime::{spawn_local, Task};

/// Upper bound of a record's framing beyond key, value and headers: length
/// varint (5), attributes (1), timestamp delta varlong (10), offset delta
/// varint (5), key and value lengths (5 each), header count (5).
const RECORD_OVERHEAD_BYTES_MAX: usize = 36;
/// Upper bound of a header's framing: key and value length varints.
const HEADER_OVERHEAD_BYTES_MAX: usize = 10;
/// Bytes a Produce request adds around its batches (header, topic and
/// partition fields); an estimate used to split requests below
/// `max.request.size`.
const REQUEST_OVERHEAD_BYTES: usize = 256;
const PARTITION_OVERHEAD_BYTES: usize = 32;

/// How many replicas must store a batch before the broker responds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acks {
    /// acks=0: the broker sends no response; offsets are unknown (-1).
    None,
    /// acks=1: the leader wrote the batch.
    Leader,
    /// acks=-1 (all): the batch is durable on every in-sync replica.
    All,
}

impl Acks {
    pub fn to_wire(self) -> i16 {
        match self {
            Acks::None => 0,
            Acks::Leader => 1,
            Acks::All => -1,
        }
    }

    /// Parses Kafka's spellings: 0, 1, -1 or all.
    pub fn parse(text: &str) -> Result<Acks, ClientError> {
        match text.trim() {
            "0" => Ok(Acks::None),
            "1" => Ok(Acks::Leader),
            "-1" | "all" => Ok(Acks::All),
            other => Err(ClientError::Config(format!("invalid acks {other:?}; expected 0, 1, -1 or all"))),
        }
    }
}

/// Producer settings, named after Kafka's producer configs.
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    pub acks: Acks,
    /// `batch.size`: a batch is sealed before it grows past this (a single
    /// larger record still gets a batch of its own).
    pub batch_size_bytes: usize,
    /// `linger.ms`: how long an open batch waits for more records.
    pub linger: Duration,
    pub compression: Compression,
    /// `buffer.memory`: record bytes buffered or in flight before `send` waits.
    pub buffer_memory_bytes: usize,
    /// `max.request.size`: largest Produce request, and so largest record.
    pub max_request_size_bytes: usize,
    /// Time the broker may take to meet `acks` (the request's timeout_ms).
    pub request_timeout: Duration,
    /// Times a batch is re-sent after a retriable error.
    pub retries: u32,
    pub retry_backoff: Duration,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            acks: Acks::All,
            batch_size_bytes: 16 * 1024,
            linger: Duration::from_millis(5),
            compression: Compression::None,
            buffer_memory_bytes: 32 * 1024 * 1024,
            max_request_size_bytes: 1024 * 1024,
            request_timeout: Duration::from_secs(30),
            retries: 5,
            retry_backoff: Duration::from_millis(100),
        }
    }
}

/// A record to send. Key, value and headers are copied into the batch, so
/// they may be dropped once `send` returns.
#[derive(Debug, Clone, Copy)]
pub struct ProducerRecord<'a> {
    pub topic: &'a str,
    /// None lets the partitioner choose: murmur2 of the key as Kafka's
    /// default partitioner does, or a sticky partition for keyless records.
    pub partition: Option<i32>,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    pub headers: &'a [RecordHeader],
    /// Creation time in ms since the epoch; None takes the current time.
    pub timestamp_ms: Option<i64>,
}

impl<'a> ProducerRecord<'a> {
    pub fn new(topic: &'a str, value: &'a [u8]) -> ProducerRecord<'a> {
        ProducerRecord { topic, partition: None, key: None, value: Some(value), headers: &[], timestamp_ms: None }
    }
}

/// Partition and offset of a stored record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordMetadata {
    pub partition: i32,
    /// The record's offset; -1 with acks=0.
    pub offset: i64,
}

/// The outcome of one batch, passed to the listener set with
/// [`Producer::set_batch_listener`].
#[derive(Debug)]
pub struct BatchReport<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub record_count: usize,
    /// Size of the batch as sent (compressed when compression is on).
    pub batch_bytes: usize,
    /// Base offset (-1 with acks=0) or the error that failed the batch.
    pub result: &'a Result<i64, ClientError>,
}

type BatchListener = Box<dyn Fn(&BatchReport<'_>)>;

/// An async Kafka producer. Dropping it abandons unsent batches; call
/// [`flush`](Producer::flush) first.
pub struct Producer {
    inner: Rc<Inner>,
    _sender: Task<()>,
}

struct Inner {
    client: Client,
    config: ProducerConfig,
    topics: RefCell<HashMap<Rc<str>, TopicQueue>>,
    /// Partitions with sealed batches, each listed once.
    ready: RefCell<VecDeque<(Rc<str>, i32)>>,
    lingering: RefCell<VecDeque<LingeringBatch>>,
    buffer: Rc<LocalSemaphore>,
    wakeup: Notify,
    outstanding_batches: Cell<usize>,
    idle_waiters: RefCell<Vec<Waker>>,
    flush_requested: Cell<bool>,
    metadata_stale: Cell<bool>,
    next_batch_id: Cell<u64>,
    listener: RefCell<Option<BatchListener>>,
}

/// An open batch in creation order: topic, partition, batch id and the
/// deadline when its linger time ends.
type LingeringBatch = (Rc<str>, i32, u64, Instant);

struct TopicQueue {
    partitions: Vec<PartitionQueue>,
    sticky_partition: Cell<usize>,
}

#[derive(Default)]
struct PartitionQueue {
    open: Option<OpenBatch>,
    sealed: VecDeque<SealedBatch>,
    listed_ready: bool,
    retry_not_before: Option<Instant>,
}

struct OpenBatch {
    id: u64,
    builder: BatchBuilder,
    completion: Rc<BatchCompletion>,
    reserved_bytes: usize,
}

struct SealedBatch {
    bytes: Bytes,
    record_count: usize,
    completion: Rc<BatchCompletion>,
    reserved_bytes: usize,
    attempts: u32,
}

#[derive(Default)]
struct BatchCompletion {
    result: RefCell<Option<Result<i64, ClientError>>>,
    wakers: RefCell<Vec<Waker>>,
}

/// Completes when the record's batch is acknowledged (or failed).
pub struct DeliveryFuture {
    completion: Rc<BatchCompletion>,
    partition: i32,
    index: u32,
}

impl DeliveryFuture {
    /// Returns the partition the record was appended to.
    pub fn partition(&self) -> i32 {
        self.partition
    }
}

impl Future for DeliveryFuture {
    type Output = Result<RecordMetadata, ClientError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &*self.completion.result.borrow() {
            Some(Ok(base_offset)) => {
                let offset = if *base_offset < 0 { -1 } else { base_offset + self.index as i64 };
                return Poll::Ready(Ok(RecordMetadata { partition: self.partition, offset }));
            }
            Some(Err(err)) => return Poll::Ready(Err(err.clone())),
            None => {}
        }
        let mut wakers = self.completion.wakers.borrow_mut();
        if !wakers.iter().any(|waker| waker.will_wake(cx.waker())) {
            wakers.push(cx.waker().clone());
        }
        Poll::Pending
    }
}

impl Producer {
    /// Starts a producer on `client`'s connections.
    pub fn new(client: Client, config: ProducerConfig) -> Result<Producer, ClientError> {
        if config.batch_size_bytes == 0 || config.max_request_size_bytes <= BATCH_HEADER_BYTES {
            return Err(ClientError::Config(
                "batch.size must be positive and max.request.size larger than a batch header".into(),
            ));
        }
        let inner = Rc::new(Inner {
            buffer: LocalSemaphore::new(config.buffer_memory_bytes.max(config.max_request_size_bytes)),
            client,
            config,
            topics: RefCell::new(HashMap::new()),
            ready: RefCell::new(VecDeque::new()),
            lingering: RefCell::new(VecDeque::new()),
            wakeup: Notify::default(),
            outstanding_batches: Cell::new(0),
            idle_waiters: RefCell::new(Vec::new()),
            flush_requested: Cell::new(false),
            metadata_stale: Cell::new(false),
            next_batch_id: Cell::new(0),
            listener: RefCell::new(None),
        });
        let sender = spawn_local(run_sender(inner.clone()));
        Ok(Producer { inner, _sender: sender })
    }

    pub fn client(&self) -> &Client {
        &self.inner.client
    }

    pub fn config(&self) -> &ProducerConfig {
        &self.inner.config
    }

    /// Calls `listener` once per completed batch, before its records'
    /// delivery futures complete. A cheap way to observe every outcome
    /// without polling one future per record. The listener runs inside the
    /// producer and must not call it.
    pub fn set_batch_listener(&self, listener: impl Fn(&BatchReport<'_>) + 'static) {
        *self.inner.listener.borrow_mut() = Some(Box::new(listener));
    }

    /// Batches created and not yet acknowledged or failed.
    pub fn outstanding_batches(&self) -> usize {
        self.inner.outstanding_batches.get()
    }

    /// Appends `record` to its partition's batch. Waits only while the
    /// buffer is full. The returned future completes with the record's
    /// offset; dropping it does not cancel the send.
    pub async fn send(&self, record: ProducerRecord<'_>) -> Result<DeliveryFuture, ClientError> {
        let inner = &self.inner;
        let (topic, partition_count) = inner.topic_queue(record.topic).await?;
        let partition = match record.partition {
            Some(partition) if partition >= 0 && (partition as usize) < partition_count => partition,
            Some(partition) => {
                return Err(ClientError::kafka("Produce", record.topic, partition, UNKNOWN_TOPIC_OR_PARTITION))
            }
            None => inner.choose_partition(&topic, record.key, partition_count),
        };

        let record_bytes_max = record_size_bound(&record);
        let batch_bytes_max = record_bytes_max + BATCH_HEADER_BYTES;
        let request_bytes_max = inner.config.max_request_size_bytes;
        if batch_bytes_max + REQUEST_OVERHEAD_BYTES > request_bytes_max {
            return Err(ClientError::RecordTooLarge { size_bytes: batch_bytes_max, max_bytes: request_bytes_max });
        }
        if inner.buffer.acquire(batch_bytes_max).await.is_err() {
            return Err(ClientError::Closed);
        }

        let timestamp_ms = record.timestamp_ms.unwrap_or_else(now_ms);
        let delivery = inner.append(&topic, partition, timestamp_ms, &record, batch_bytes_max);
        Ok(delivery)
    }

    /// Seals every open batch and waits until every batch sent so far is
    /// acknowledged or failed.
    pub async fn flush(&self) {
        let inner = &self.inner;
        inner.flush_requested.set(true);
        inner.wakeup.notify();
        std::future::poll_fn(|cx| {
            if inner.outstanding_batches.get() == 0 {
                return Poll::Ready(());
            }
            inner.idle_waiters.borrow_mut().push(cx.waker().clone());
            Poll::Pending
        })
        .await;
        inner.flush_requested.set(false);
    }
}

const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;

fn record_size_bound(record: &ProducerRecord<'_>) -> usize {
    let headers: usize = record
        .headers
        .iter()
        .map(|header| {
            HEADER_OVERHEAD_BYTES_MAX + header.key.len() + header.value.as_ref().map_or(0, |value| value.len())
        })
        .sum();
    RECORD_OVERHEAD_BYTES_MAX + record.key.map_or(0, <[u8]>::len) + record.value.map_or(0, <[u8]>::len) + headers
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_millis() as i64)
}

/// Kafka's murmur2 (the Java client's `Utils.murmur2`), so keyed records land
/// on the same partitions as with the Java producer.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let length = data.len();
    let mut h: u32 = SEED ^ (length as u32);

    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if tail.len() >= 3 {
        h ^= (tail[2] as u32) << 16;
    }
    if tail.len() >= 2 {
        h ^= (tail[1] as u32) << 8;
    }
    if !tail.is_empty() {
        h ^= tail[0] as u32;
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// Kafka's default partition for a key: `toPositive(murmur2(key)) % count`.
pub fn partition_for_key(key: &[u8], partition_count: usize) -> i32 {
    ((murmur2(key) & 0x7fff_ffff) as usize % partition_count) as i32
}

impl Inner {
    /// Returns the interned topic name and its partition count, loading
    /// metadata on first use.
    async fn topic_queue(&self, topic: &str) -> Result<(Rc<str>, usize), ClientError> {
        if let Some((name, queue)) = self.topics.borrow().get_key_value(topic) {
            return Ok((name.clone(), queue.partitions.len()));
        }
        let metadata = match self.client.topic(topic) {
            Some(metadata) if !metadata.partitions.is_empty() => metadata,
            _ => {
                self.client.refresh_metadata(Some(&[topic])).await?;
                self.client
                    .topic(topic)
                    .filter(|metadata| !metadata.partitions.is_empty())
                    .ok_or_else(|| ClientError::UnknownTopic { topic: topic.to_string() })?
            }
        };

        let mut topics = self.topics.borrow_mut();
        let name: Rc<str> = Rc::from(topic);
        let queue = topics.entry(name.clone()).or_insert_with(|| TopicQueue {
            partitions: (0..metadata.partitions.len()).map(|_| PartitionQueue::default()).collect(),
            sticky_partition: Cell::new(now_ms() as usize % metadata.partitions.len()),
        });
        Ok((name, queue.partitions.len()))
    }

    fn choose_partition(&self, topic: &str, key: Option<&[u8]>, partition_count: usize) -> i32 {
        match key {
            Some(key) => partition_for_key(key, partition_count),
            None => {
                let topics = self.topics.borrow();
                topics.get(topic).map_or(0, |queue| queue.sticky_partition.get() as i32)
            }
        }
    }

    fn append(
        &self,
        topic: &Rc<str>,
        partition: i32,
        timestamp_ms: i64,
        record: &ProducerRecord<'_>,
        reserved_bytes: usize,
    ) -> DeliveryFuture {
        let mut topics = self.topics.borrow_mut();
        let topic_queue = topics.get_mut(topic).expect("topic queue exists after topic_queue()");
        let queue = &mut topic_queue.partitions[partition as usize];

        // Seal the open batch if this record would push it past batch.size.
        if let Some(open) = &queue.open {
            let added = open.builder.encoded_record_bytes(timestamp_ms, record.key, record.value, record.headers);
            if !open.builder.is_empty() && open.builder.size_bytes() + added > self.config.batch_size_bytes {
                self.seal(topic, partition, queue);
                self.advance_sticky(topic_queue, partition);
            }
        }
        let queue = &mut topic_queue.partitions[partition as usize];

        let mut unused_bytes = BATCH_HEADER_BYTES;
        if queue.open.is_none() {
            let id = self.next_batch_id.get();
            self.next_batch_id.set(id + 1);
            queue.open = Some(OpenBatch {
                id,
                builder: BatchBuilder::new(self.config.compression, self.config.batch_size_bytes.min(1 << 20)),
                completion: Rc::new(BatchCompletion::default()),
                reserved_bytes: 0,
            });
            self.outstanding_batches.set(self.outstanding_batches.get() + 1);
            let deadline = Instant::now() + self.config.linger;
            self.lingering.borrow_mut().push_back((topic.clone(), partition, id, deadline));
            unused_bytes = 0;
            self.wakeup.notify();
        }

        let open = queue.open.as_mut().expect("open batch was just ensured");
        let size_before = open.builder.size_bytes();
        open.builder.append(timestamp_ms, record.key, record.value, record.headers);
        let appended = open.builder.size_bytes() - size_before;
        let record_bytes_max = reserved_bytes - BATCH_HEADER_BYTES;
        unused_bytes += record_bytes_max.saturating_sub(appended);
        open.reserved_bytes += reserved_bytes - unused_bytes;
        let delivery = DeliveryFuture {
            completion: open.completion.clone(),
            partition,
            index: (open.builder.record_count() - 1) as u32,
        };

        if open.builder.size_bytes() >= self.config.batch_size_bytes {
            self.seal(topic, partition, queue);
            self.advance_sticky(topic_queue, partition);
        }
        drop(topics);
        if unused_bytes > 0 {
            self.buffer.release(unused_bytes);
        }
        delivery
    }

    fn advance_sticky(&self, topic_queue: &TopicQueue, sealed_partition: i32) {
        if topic_queue.sticky_partition.get() == sealed_partition as usize {
            let next = (sealed_partition as usize + 1) % topic_queue.partitions.len();
            topic_queue.sticky_partition.set(next);
        }
    }

    /// Moves the open batch of a partition to its sealed queue.
    fn seal(&self, topic: &Rc<str>, partition: i32, queue: &mut PartitionQueue) {
        let Some(open) = queue.open.take() else {
            return;
        };
        let record_count = open.builder.record_count();
        let sealed = match open.builder.build() {
            Ok(bytes) => SealedBatch {
                bytes,
                record_count,
                completion: open.completion,
                reserved_bytes: open.reserved_bytes,
                attempts: 0,
            },
            Err(err) => {
                let failed = SealedBatch {
                    bytes: Bytes::new(),
                    record_count,
                    completion: open.completion,
                    reserved_bytes: open.reserved_bytes,
                    attempts: 0,
                };
                self.complete(topic, partition, failed, Err(err));
                return;
            }
        };
        queue.sealed.push_back(sealed);
        if !queue.listed_ready {
            queue.listed_ready = true;
            self.ready.borrow_mut().push_back((topic.clone(), partition));
        }
        self.wakeup.notify();
    }

    /// Seals open batches whose linger time passed (all of them on flush).
    /// Returns the next linger deadline.
    fn seal_lingering(&self, now: Instant) -> Option<Instant> {
        let flush = self.flush_requested.get();
        loop {
            let entry = {
                let lingering = self.lingering.borrow();
                match lingering.front() {
                    Some((_, _, _, deadline)) if !flush && *deadline > now => return Some(*deadline),
                    Some(entry) => entry.clone(),
                    None => return None,
                }
            };
            self.lingering.borrow_mut().pop_front();
            let (topic, partition, batch_id, _) = entry;
            let mut topics = self.topics.borrow_mut();
            let Some(topic_queue) = topics.get_mut(&topic) else {
                continue;
            };
            let queue = &mut topic_queue.partitions[partition as usize];
            if queue.open.as_ref().is_some_and(|open| open.id == batch_id) {
                self.seal(&topic, partition, queue);
                self.advance_sticky(topic_queue, partition);
            }
        }
    }

    /// Completes a batch: wakes its records, returns its buffer space and
    /// reports it to the listener.
    fn complete(&self, topic: &str, partition: i32, batch: SealedBatch, result: Result<i64, ClientError>) {
        if let Some(listener) = &*self.listener.borrow() {
            listener(&BatchReport {
                topic,
                partition,
                record_count: batch.record_count,
                batch_bytes: batch.bytes.len(),
                result: &result,
            });
        }
        if let Err(err) = &result {
            tracing::debug!(target: "weir::client", topic, partition, error = %err, "produce batch failed");
        }
        *batch.completion.result.borrow_mut() = Some(result);
        for waker in batch.completion.wakers.borrow_mut().drain(..) {
            waker.wake();
        }
        self.buffer.release(batch.reserved_bytes);
        self.outstanding_batches.set(self.outstanding_batches.get() - 1);
        if self.outstanding_batches.get() == 0 {
            for waker in self.idle_waiters.borrow_mut().drain(..) {
                waker.wake();
            }
        }
    }

    /// Puts a batch that failed with a retriable error back at the head of
    /// its partition, or fails it when its retries are used up.
    fn retry_or_fail(&self, topic: &Rc<str>, partition: i32, mut batch: SealedBatch, error: ClientError) {
        batch.attempts += 1;
        if !error.is_retriable() || batch.attempts > self.config.retries {
            self.complete(topic, partition, batch, Err(error));
            return;
        }
        tracing::debug!(target: "weir::client", topic = &**topic, partition, attempt = batch.attempts, error = %error, "retrying produce batch");
        self.metadata_stale.set(true);
        let mut topics = self.topics.borrow_mut();
        let queue =
            &mut topics.get_mut(topic).expect("a sent batch's topic has a queue").partitions[partition as usize];
        queue.sealed.push_front(batch);
        queue.retry_not_before = Some(Instant::now() + self.config.retry_backoff);
        if !queue.listed_ready {
            queue.listed_ready = true;
            self.ready.borrow_mut().push_back((topic.clone(), partition));
        }
    }
}

/// A Produce request being assembled for one leader.
struct RequestDraft {
    leader: i32,
    request_bytes: usize,
    batches: Vec<(Rc<str>, i32, SealedBatch)>,
}

async fn run_sender(inner: Rc<Inner>) {
    loop {
        if inner.metadata_stale.replace(false) {
            if let Err(err) = inner.client.refresh_metadata(None).await {
                tracing::debug!(target: "weir::client", error = %err, "metadata refresh failed");
                crate::runtime::sleep(inner.config.retry_backoff).await;
                inner.metadata_stale.set(true);
            }
        }

        let now = Instant::now();
        let next_linger_deadline = inner.seal_lingering(now);
        let (next_retry, sent_any) = dispatch_ready(&inner, now).await;
        if sent_any && !inner.ready.borrow().is_empty() {
            // Partitions with more sealed batches get another round at once.
            continue;
        }

        let next_deadline = match (next_linger_deadline, next_retry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        match next_deadline {
            Some(deadline) => {
                let wait = deadline.saturating_duration_since(Instant::now());
                if !wait.is_zero() {
                    crate::runtime::timeout(wait, inner.wakeup.notified()).await;
                }
            }
            None => inner.wakeup.notified().await,
        }
    }
}

/// Sends the head batch of every ready partition whose leader has a free
/// in-flight slot. Returns the earliest retry time of a partition still
/// waiting out its backoff, and whether any request was sent.
async fn dispatch_ready(inner: &Rc<Inner>, now: Instant) -> (Option<Instant>, bool) {
    let mut next_retry: Option<Instant> = None;
    let mut drafts: BTreeMap<i32, RequestDraft> = BTreeMap::new();
    let mut requests_planned: HashMap<i32, usize> = HashMap::new();
    let mut slots_free: HashMap<i32, usize> = HashMap::new();
    let mut finished: Vec<RequestDraft> = Vec::new();
    let mut visited: Vec<(Rc<str>, i32)> = Vec::new();

    let ready: Vec<(Rc<str>, i32)> = inner.ready.borrow_mut().drain(..).collect();
    for (topic, partition) in ready {
        visited.push((topic.clone(), partition));
        let leader = match inner.client.leader(&topic, partition) {
            Ok(leader) => leader,
            Err(err) => {
                fail_head_or_wait(inner, &topic, partition, err);
                continue;
            }
        };

        let mut topics = inner.topics.borrow_mut();
        let queue = &mut topics.get_mut(&topic).expect("ready partition has a queue").partitions[partition as usize];
        if let Some(not_before) = queue.retry_not_before {
            if not_before > now {
                next_retry = Some(next_retry.map_or(not_before, |current| current.min(not_before)));
                continue;
            }
            queue.retry_not_before = None;
        }
        let Some(head) = queue.sealed.front() else {
            continue;
        };

        let batch_bytes = head.bytes.len() + PARTITION_OVERHEAD_BYTES + topic.len();
        let needs_new_request = drafts
            .get(&leader)
            .is_none_or(|draft| draft.request_bytes + batch_bytes > inner.config.max_request_size_bytes);
        if needs_new_request {
            let free = *slots_free.entry(leader).or_insert_with(|| free_request_slots(inner, leader));
            let planned = requests_planned.entry(leader).or_insert(0);
            if *planned >= free {
                continue;
            }
            *planned += 1;
            let fresh = RequestDraft { leader, request_bytes: REQUEST_OVERHEAD_BYTES, batches: Vec::new() };
            if let Some(full) = drafts.insert(leader, fresh) {
                finished.push(full);
            }
        }
        let batch = queue.sealed.pop_front().expect("head batch was just seen");
        drop(topics);
        let draft = drafts.get_mut(&leader).expect("draft was just ensured");
        draft.request_bytes += batch_bytes;
        draft.batches.push((topic, partition, batch));
    }
    finished.extend(drafts.into_values());

    // Partitions that still hold sealed batches stay listed as ready. They
    // kept `listed_ready` set during the round, so nothing listed them twice.
    {
        let mut topics = inner.topics.borrow_mut();
        let mut ready = inner.ready.borrow_mut();
        for (topic, partition) in visited {
            let queue =
                &mut topics.get_mut(&topic).expect("visited partition has a queue").partitions[partition as usize];
            if queue.sealed.is_empty() {
                queue.listed_ready = false;
            } else {
                ready.push_back((topic, partition));
            }
        }
    }

    let sent_any = !finished.is_empty();
    for draft in finished {
        send_request(inner, draft).await;
    }
    (next_retry, sent_any)
}

/// Requests the leader's connection can take without waiting. With acks=0
/// there is no response to free a slot, so the send itself waits instead.
fn free_request_slots(inner: &Inner, leader: i32) -> usize {
    if inner.config.acks == Acks::None {
        return usize::MAX;
    }
    match inner.client.cached_connection(leader) {
        Some(connection) => connection.free_slots(),
        // Not connected yet: the first request opens the connection.
        None => 1,
    }
}

fn fail_head_or_wait(inner: &Rc<Inner>, topic: &Rc<str>, partition: i32, error: ClientError) {
    inner.metadata_stale.set(true);
    let batch = {
        let mut topics = inner.topics.borrow_mut();
        let queue = &mut topics.get_mut(topic).expect("ready partition has a queue").partitions[partition as usize];
        match queue.sealed.pop_front() {
            Some(batch) => batch,
            None => return,
        }
    };
    inner.retry_or_fail(topic, partition, batch, error);
}

async fn send_request(inner: &Rc<Inner>, draft: RequestDraft) {
    let RequestDraft { leader, batches, .. } = draft;
    let connection = match inner.client.connection(leader).await {
        Ok(connection) => connection,
        Err(err) => {
            for (topic, partition, batch) in batches {
                inner.retry_or_fail(&topic, partition, batch, err.clone());
            }
            return;
        }
    };

    let mut by_topic: BTreeMap<&str, Vec<PartitionProduceData>> = BTreeMap::new();
    for (topic, partition, batch) in &batches {
        by_topic
            .entry(topic)
            .or_default()
            .push(PartitionProduceData::default().with_index(*partition).with_records(Some(batch.bytes.clone())));
    }
    let request = ProduceRequest::default()
        .with_acks(inner.config.acks.to_wire())
        .with_timeout_ms(inner.config.request_timeout.as_millis().min(i32::MAX as u128) as i32)
        .with_topic_data(
            by_topic
                .into_iter()
                .map(|(topic, partitions)| {
                    TopicProduceData::default().with_name(topic_name(topic)).with_partition_data(partitions)
                })
                .collect(),
        );

    let version = match connection.version_for::<ProduceRequest>() {
        Ok(version) => version,
        Err(err) => {
            for (topic, partition, batch) in batches {
                inner.complete(&topic, partition, batch, Err(err.clone()));
            }
            return;
        }
    };

    if inner.config.acks == Acks::None {
        let result = connection.send_without_response(&request, version).await;
        for (topic, partition, batch) in batches {
            match &result {
                Ok(()) => inner.complete(&topic, partition, batch, Ok(-1)),
                Err(err) => inner.retry_or_fail(&topic, partition, batch, err.clone()),
            }
        }
        return;
    }

    let response = match connection.send(&request, version).await {
        Ok(response) => response,
        Err(err) => {
            inner.client.drop_connection_if_closed(&connection);
            for (topic, partition, batch) in batches {
                inner.retry_or_fail(&topic, partition, batch, err.clone());
            }
            return;
        }
    };

    let inner = inner.clone();
    spawn_local(async move {
        let result = response.await;
        if result.is_err() {
            inner.client.drop_connection_if_closed(&connection);
        }
        handle_produce_response(&inner, batches, result);
        inner.wakeup.notify();
    })
    .detach();
}

fn handle_produce_response(
    inner: &Rc<Inner>,
    batches: Vec<(Rc<str>, i32, SealedBatch)>,
    result: Result<ProduceResponse, ClientError>,
) {
    let response = match result {
        Ok(response) => response,
        Err(err) => {
            for (topic, partition, batch) in batches {
                inner.retry_or_fail(&topic, partition, batch, err.clone());
            }
            return;
        }
    };

    for (topic, partition, batch) in batches {
        let partition_response = response
            .responses
            .iter()
            .filter(|topic_response| topic_response.name.0.as_str() == &*topic)
            .flat_map(|topic_response| topic_response.partition_responses.iter())
            .find(|partition_response| partition_response.index == partition);
        match partition_response {
            None => {
                let err = ClientError::protocol("Produce", format!("response has no result for {topic}-{partition}"));
                inner.complete(&topic, partition, batch, Err(err));
            }
            Some(found) if found.error_code != 0 => {
                let err = ClientError::kafka("Produce", &topic, partition, found.error_code);
                inner.retry_or_fail(&topic, partition, batch, err);
            }
            Some(found) => {
                let base_offset = found.base_offset;
                inner.complete(&topic, partition, batch, Ok(base_offset));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_java_client() {
        // Expected values from the Java client's Utils.murmur2 test vectors.
        assert_eq!(murmur2(b"21"), -973_932_308);
        assert_eq!(murmur2(b"foobar"), -790_332_482);
        assert_eq!(murmur2(b"a-little-bit-long-string"), -985_981_536);
        assert_eq!(murmur2(b"a-little-bit-longer-string"), -1_486_304_829);
        assert_eq!(murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8"), -58_897_971);
        assert_eq!(murmur2(b"abc"), 479_470_107);
    }

    #[test]
    fn acks_parse_kafka_spellings() {
        assert_eq!(Acks::parse("all").unwrap(), Acks::All);
        assert_eq!(Acks::parse("-1").unwrap(), Acks::All);
        assert_eq!(Acks::parse("1").unwrap(), Acks::Leader);
        assert_eq!(Acks::parse("0").unwrap(), Acks::None);
        assert!(Acks::parse("2").is_err());
    }

    #[test]
    fn record_bound_covers_encoding() {
        let headers = [RecordHeader { key: "h".into(), value: Some(Bytes::from_static(b"value")) }];
        let record = ProducerRecord {
            topic: "t",
            partition: None,
            key: Some(b"key"),
            value: Some(&[0u8; 1000]),
            headers: &headers,
            timestamp_ms: Some(i64::MAX / 2),
        };
        let mut builder = BatchBuilder::new(Compression::None, 4096);
        builder.append(0, None, None, &[]);
        let encoded = builder.encoded_record_bytes(i64::MAX / 2, record.key, record.value, record.headers);
        assert!(encoded <= record_size_bound(&record), "{encoded} > bound");
    }
}
