//! The consumer: fetches assigned partitions from their leaders.
//!
//! Partitions are assigned directly ([`Consumer::assign`]); there is no
//! group membership or offset commit here. Each poll keeps one Fetch in
//! flight per leader broker and returns as soon as any of them responds, so
//! an idle broker holding a long poll (`fetch.max.wait.ms`) does not delay
//! data from a busy one. A response advances each partition's position
//! past the last batch it returned.
//!
//! Fetches are sessionless (session id 0, epoch -1): every request lists
//! all of the leader's assigned partitions.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::{BrokerId, FetchRequest, FetchResponse};
use kafka_protocol::protocol::StrBytes;

use super::batch::{split_batches, RawBatch, RecordHeader};
use super::cluster::{topic_name, Client, OffsetSpec};
use super::error::ClientError;

/// Kafka error codes the consumer handles itself.
const OFFSET_OUT_OF_RANGE: i16 = 1;

/// Consumer settings, named after Kafka's consumer configs.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// `fetch.min.bytes`: the broker waits for this much data...
    pub fetch_min_bytes: i32,
    /// ...or at most `fetch.max.wait.ms`.
    pub fetch_max_wait: Duration,
    /// `fetch.max.bytes`: response size limit per broker.
    pub fetch_max_bytes: i32,
    /// `max.partition.fetch.bytes`: response size limit per partition.
    pub max_partition_fetch_bytes: i32,
    /// Position to restart from after OFFSET_OUT_OF_RANGE (`auto.offset.reset`).
    pub reset_to: StartOffset,
    /// `check.crcs`: verify each fetched batch's CRC32C.
    pub check_crcs: bool,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        ConsumerConfig {
            fetch_min_bytes: 1,
            fetch_max_wait: Duration::from_millis(500),
            fetch_max_bytes: 50 * 1024 * 1024,
            max_partition_fetch_bytes: 1024 * 1024,
            reset_to: StartOffset::Earliest,
            check_crcs: true,
        }
    }
}

/// Starting position of an assigned partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartOffset {
    Earliest,
    Latest,
    At(i64),
}

/// The batches one Fetch returned for one partition.
#[derive(Debug, Clone)]
pub struct FetchedPartition {
    pub topic: Rc<str>,
    pub partition: i32,
    /// The position the fetch started at. A compressed batch may begin
    /// before it; records below it were consumed already.
    pub fetch_offset: i64,
    pub high_watermark: i64,
    pub batches: Vec<RawBatch>,
}

/// A decoded record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerRecord {
    pub topic: Rc<str>,
    pub partition: i32,
    pub offset: i64,
    pub timestamp_ms: i64,
    pub key: Option<bytes::Bytes>,
    pub value: Option<bytes::Bytes>,
    pub headers: Vec<RecordHeader>,
}

/// Result of one poll: data, and the partition errors met on the way
/// (errors the consumer recovers from itself are not listed).
#[derive(Debug, Default)]
pub struct PollOutcome {
    pub partitions: Vec<FetchedPartition>,
    pub errors: Vec<ClientError>,
    /// Time from sending each Fetch that completed during the poll to its
    /// response, long-poll wait included.
    pub fetch_round_trips: Vec<Duration>,
}

type FetchInFlight = Pin<Box<dyn Future<Output = FetchDone>>>;

struct FetchDone {
    leader: i32,
    requested: Vec<(Rc<str>, i32, i64)>,
    round_trip: Duration,
    result: Result<FetchResponse, ClientError>,
}

/// An async consumer of directly assigned partitions.
pub struct Consumer {
    client: Client,
    config: ConsumerConfig,
    /// (topic, partition) → next offset to fetch
    positions: BTreeMap<(Rc<str>, i32), i64>,
    /// Leaders with a fetch in flight.
    fetching: HashSet<i32>,
    in_flight: FuturesUnordered<FetchInFlight>,
    metadata_stale: bool,
}

impl Consumer {
    pub fn new(client: Client, config: ConsumerConfig) -> Consumer {
        Consumer {
            client,
            config,
            positions: BTreeMap::new(),
            fetching: HashSet::new(),
            in_flight: FuturesUnordered::new(),
            metadata_stale: false,
        }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn config(&self) -> &ConsumerConfig {
        &self.config
    }

    /// Drops every assignment. Fetches in flight complete, and their data
    /// is discarded.
    pub fn unassign_all(&mut self) {
        self.positions.clear();
    }

    /// Adds partitions of `topic` (all of them when `partitions` is None),
    /// each starting at `start`.
    pub async fn assign(
        &mut self,
        topic: &str,
        partitions: Option<&[i32]>,
        start: StartOffset,
    ) -> Result<(), ClientError> {
        if self.client.topic(topic).is_none() {
            self.client.refresh_metadata(Some(&[topic])).await?;
        }
        let metadata =
            self.client.topic(topic).ok_or_else(|| ClientError::UnknownTopic { topic: topic.to_string() })?;
        let partitions: Vec<i32> = match partitions {
            Some(partitions) => partitions.to_vec(),
            None => metadata.partitions.iter().map(|partition| partition.partition).collect(),
        };
        let offsets = self.resolve_offsets(topic, &partitions, start).await?;
        let name: Rc<str> = Rc::from(topic);
        for (partition, offset) in offsets {
            self.positions.insert((name.clone(), partition), offset);
        }
        Ok(())
    }

    /// Moves a partition's position; a fetch already in flight for the old
    /// position is discarded when it returns.
    pub fn seek(&mut self, topic: &str, partition: i32, offset: i64) {
        if let Some(position) = self.positions.iter_mut().find(|((t, p), _)| &**t == topic && *p == partition) {
            *position.1 = offset;
        }
    }

    /// Returns the next offset to fetch for a partition.
    pub fn position(&self, topic: &str, partition: i32) -> Option<i64> {
        self.positions.iter().find(|((t, p), _)| &**t == topic && *p == partition).map(|(_, offset)| *offset)
    }

    /// Returns every assignment with its position.
    pub fn positions(&self) -> Vec<(Rc<str>, i32, i64)> {
        self.positions.iter().map(|((topic, partition), offset)| (topic.clone(), *partition, *offset)).collect()
    }

    async fn resolve_offsets(
        &self,
        topic: &str,
        partitions: &[i32],
        start: StartOffset,
    ) -> Result<Vec<(i32, i64)>, ClientError> {
        match start {
            StartOffset::At(offset) => Ok(partitions.iter().map(|partition| (*partition, offset)).collect()),
            StartOffset::Earliest => self.client.list_offsets(topic, partitions, OffsetSpec::Earliest).await,
            StartOffset::Latest => self.client.list_offsets(topic, partitions, OffsetSpec::Latest).await,
        }
    }

    /// Fetches until some leader returns data or `timeout` passes, and
    /// returns the raw batches. Use [`poll`](Self::poll) for decoded records.
    pub async fn poll_batches(&mut self, timeout: Duration) -> Result<PollOutcome, ClientError> {
        if self.metadata_stale {
            self.metadata_stale = false;
            self.client.refresh_metadata(None).await?;
        }
        let mut outcome = PollOutcome::default();
        self.start_fetches(&mut outcome.errors).await;

        let deadline = Instant::now() + timeout;
        // Bounded: each round either returns, or consumes one finished fetch
        // and starts at most one per leader, until the deadline.
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if self.in_flight.is_empty() {
                if !remaining.is_zero() && !outcome.errors.is_empty() {
                    crate::runtime::sleep(remaining.min(self.client.config().retry_backoff)).await;
                }
                return Ok(outcome);
            }
            let next = crate::runtime::timeout(remaining, self.in_flight.next()).await;
            let Some(Some(done)) = next else {
                return Ok(outcome);
            };
            self.fetching.remove(&done.leader);
            outcome.fetch_round_trips.push(done.round_trip);
            self.handle_response(done.leader, done.requested, done.result, &mut outcome).await;
            if !outcome.partitions.is_empty() || remaining.is_zero() {
                return Ok(outcome);
            }
            self.start_fetches(&mut outcome.errors).await;
        }
    }

    /// Like [`poll_batches`](Self::poll_batches), but decodes the records
    /// and drops those before each partition's fetch offset and control records.
    pub async fn poll(&mut self, timeout: Duration) -> Result<(Vec<ConsumerRecord>, Vec<ClientError>), ClientError> {
        let outcome = self.poll_batches(timeout).await?;
        let mut records = Vec::new();
        for fetched in outcome.partitions {
            for batch in &fetched.batches {
                if batch.is_control {
                    continue;
                }
                for record in batch.decode()? {
                    if record.offset < fetched.fetch_offset {
                        continue;
                    }
                    records.push(ConsumerRecord {
                        topic: fetched.topic.clone(),
                        partition: fetched.partition,
                        offset: record.offset,
                        timestamp_ms: record.timestamp,
                        key: record.key,
                        value: record.value,
                        headers: record
                            .headers
                            .into_iter()
                            .map(|(key, value)| RecordHeader { key: key.as_str().to_string(), value })
                            .collect(),
                    });
                }
            }
        }
        Ok((records, outcome.errors))
    }

    /// Starts a fetch to every leader of an assigned partition that has none in flight.
    async fn start_fetches(&mut self, errors: &mut Vec<ClientError>) {
        let mut by_leader: BTreeMap<i32, Vec<(Rc<str>, i32, i64)>> = BTreeMap::new();
        for ((topic, partition), offset) in &self.positions {
            match self.client.leader(topic, *partition) {
                Ok(leader) => by_leader.entry(leader).or_default().push((topic.clone(), *partition, *offset)),
                Err(err) => {
                    self.metadata_stale = true;
                    errors.push(err);
                }
            }
        }

        for (leader, partitions) in by_leader {
            if self.fetching.contains(&leader) {
                continue;
            }
            let connection = match self.client.connection(leader).await {
                Ok(connection) => connection,
                Err(err) => {
                    self.metadata_stale = true;
                    errors.push(err);
                    continue;
                }
            };
            let request = self.fetch_request(&partitions);
            let sent_at = Instant::now();
            let response = match connection.version_for::<FetchRequest>() {
                Ok(version) => connection.send(&request, version).await,
                Err(err) => Err(err),
            };
            match response {
                Ok(response) => {
                    self.fetching.insert(leader);
                    let client = self.client.clone();
                    self.in_flight.push(Box::pin(async move {
                        let result = response.await;
                        if result.is_err() {
                            client.drop_connection_if_closed(&connection);
                        }
                        FetchDone { leader, requested: partitions, round_trip: sent_at.elapsed(), result }
                    }));
                }
                Err(err) => {
                    self.client.drop_connection_if_closed(&connection);
                    errors.push(err);
                }
            }
        }
    }

    fn fetch_request(&self, partitions: &[(Rc<str>, i32, i64)]) -> FetchRequest {
        let mut topics: BTreeMap<&str, Vec<FetchPartition>> = BTreeMap::new();
        for (topic, partition, offset) in partitions {
            topics.entry(topic).or_default().push(
                FetchPartition::default()
                    .with_partition(*partition)
                    .with_current_leader_epoch(-1)
                    .with_fetch_offset(*offset)
                    .with_last_fetched_epoch(-1)
                    .with_log_start_offset(-1)
                    .with_partition_max_bytes(self.config.max_partition_fetch_bytes),
            );
        }
        FetchRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_max_wait_ms(self.config.fetch_max_wait.as_millis().min(i32::MAX as u128) as i32)
            .with_min_bytes(self.config.fetch_min_bytes)
            .with_max_bytes(self.config.fetch_max_bytes)
            .with_isolation_level(0)
            .with_session_id(0)
            .with_session_epoch(-1)
            .with_rack_id(StrBytes::from_static_str(""))
            .with_topics(
                topics
                    .into_iter()
                    .map(|(topic, partitions)| {
                        FetchTopic::default().with_topic(topic_name(topic)).with_partitions(partitions)
                    })
                    .collect(),
            )
    }

    async fn handle_response(
        &mut self,
        leader: i32,
        requested: Vec<(Rc<str>, i32, i64)>,
        result: Result<FetchResponse, ClientError>,
        outcome: &mut PollOutcome,
    ) {
        let response = match result {
            Ok(response) => response,
            Err(err) => {
                tracing::debug!(target: "weir::client", leader, error = %err, "fetch failed");
                self.metadata_stale = true;
                outcome.errors.push(err);
                return;
            }
        };
        if response.error_code != 0 {
            outcome.errors.push(ClientError::Kafka {
                api: "Fetch",
                topic: None,
                partition: None,
                code: response.error_code,
            });
            return;
        }

        let requested: HashMap<(&str, i32), (&Rc<str>, i64)> =
            requested.iter().map(|(topic, partition, offset)| ((&**topic, *partition), (topic, *offset))).collect();
        for topic_response in response.responses {
            let topic_str = topic_response.topic.0.as_str();
            for partition_data in topic_response.partitions {
                let partition = partition_data.partition_index;
                let Some(&(topic, fetch_offset)) = requested.get(&(topic_str, partition)) else {
                    continue;
                };
                let topic = topic.clone();
                let key = (topic.clone(), partition);
                // A seek while the fetch was in flight makes its data stale.
                if self.positions.get(&key) != Some(&fetch_offset) {
                    continue;
                }

                if partition_data.error_code == OFFSET_OUT_OF_RANGE {
                    self.reset_position(&topic, partition, outcome).await;
                    continue;
                }
                if partition_data.error_code != 0 {
                    let err = ClientError::kafka("Fetch", &topic, partition, partition_data.error_code);
                    if err.is_retriable() {
                        self.metadata_stale = true;
                    }
                    outcome.errors.push(err);
                    continue;
                }

                let Some(records) = partition_data.records else {
                    continue;
                };
                let batches = match split_batches(records) {
                    Ok(batches) => batches,
                    Err(err) => {
                        outcome.errors.push(err);
                        continue;
                    }
                };
                let batches: Vec<RawBatch> =
                    batches.into_iter().filter(|batch| batch.last_offset() >= fetch_offset).collect();
                if self.config.check_crcs {
                    if let Some(err) = batches.iter().find_map(|batch| batch.verify_crc().err()) {
                        outcome.errors.push(err);
                        continue;
                    }
                }
                let Some(last) = batches.last() else {
                    continue;
                };
                self.positions.insert(key, last.last_offset() + 1);
                outcome.partitions.push(FetchedPartition {
                    topic,
                    partition,
                    fetch_offset,
                    high_watermark: partition_data.high_watermark,
                    batches,
                });
            }
        }
    }

    async fn reset_position(&mut self, topic: &Rc<str>, partition: i32, outcome: &mut PollOutcome) {
        match self.resolve_offsets(topic, &[partition], self.config.reset_to).await {
            Ok(offsets) => {
                for (partition, offset) in offsets {
                    tracing::debug!(target: "weir::client", topic = &**topic, partition, offset, "offset out of range; position reset");
                    self.positions.insert((topic.clone(), partition), offset);
                }
            }
            Err(err) => outcome.errors.push(err),
        }
    }
}
