//! Runs producers and consumers on pinned bench threads and collects their
//! statistics.
//!
//! Each bench thread runs one glommio executor. Producers and consumers are
//! spread over the threads round-robin; each has its own client and so its
//! own connections, as separate applications would.
//!
//! Open-loop rate control: producer `i` schedules message `k` at
//! `start + k / rate_i` and records latency from that intended time, not
//! from when it actually got to send. A broker stall therefore shows up in
//! the latency of every message that should have been sent during it,
//! which corrects for coordinated omission. Unbounded runs (rate 0) send as
//! fast as the producer's buffer allows and measure from the send call.
//!
//! Each message value starts with its intended send time (nanoseconds
//! since the run's epoch, little-endian u64). Consumers run in the same
//! process and read it back for end-to-end latency.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use weir::client::batch::parse_compression;
use weir::client::{
    BatchReport, Client, ClientConfig, ClientError, ConnectionConfig, Consumer, ConsumerConfig, GroupConfig,
    GroupConsumer, PollOutcome, Producer, ProducerConfig, ProducerRecord, StartOffset,
};
use weir::runtime::{sleep, spawn_local, yield_if_needed};

use crate::config::{RunConfig, TIMESTAMP_BYTES};
use crate::stats::{record_micros, Interval};

/// Statistics are reported once per second.
const REPORT_INTERVAL: Duration = Duration::from_secs(1);
/// Extra time, beyond the drain time, that stopped threads get to finish
/// their last requests before the run is reported without them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(60);
/// Pause after a failed poll, and after each send once more than
/// `SEND_ERRORS_BEFORE_BACKOFF` sends in a row failed, so that a dead broker
/// does not spin the CPU.
const ERROR_BACKOFF: Duration = Duration::from_millis(20);
const SEND_ERRORS_BEFORE_BACKOFF: u32 = 10;
/// Maximum time producers wait for consumers to join their groups.
const CONSUMER_START_TIMEOUT: Duration = Duration::from_secs(60);
const CONSUMER_START_POLL: Duration = Duration::from_millis(5);
const GROUP_HEARTBEAT_INTERVAL: Duration = Duration::from_millis(300);
/// Sleep only when the next message is due this far ahead; nearer sends go
/// out at once (their latency still counts from the intended time).
const SLEEP_THRESHOLD: Duration = Duration::from_micros(50);

/// One phase of a run: the backlog fill or the measured phase.
#[derive(Debug, Clone)]
pub struct Stage {
    /// Messages each producer sends before stopping (None: until stopped).
    pub messages_per_producer: Option<u64>,
    pub rate: f64,
    pub with_consumers: bool,
    pub consumer_start: StartOffset,
    pub warmup_secs: u64,
    /// None: until the producers reach their message limit.
    pub duration_secs: Option<u64>,
    pub print_progress: bool,
}

/// Results of one stage.
pub struct StageResult {
    /// Totals after warm-up.
    pub measured: Interval,
    /// Totals including warm-up and drain.
    pub all: Interval,
    pub measured_secs: f64,
    pub interrupted: bool,
    /// Seconds from the stage start until every consumer had its start
    /// positions and producers began (group joins included).
    pub consumers_ready_secs: Option<f64>,
}

/// Settings every thread reads.
pub struct Plan {
    pub config: RunConfig,
    /// Distinguishes this run's consumer group ids from earlier runs'.
    pub run_id: u64,
    /// Zero point of the send times carried in message values. Every stage
    /// shares it, so records of the backlog stage keep their true age.
    pub epoch: Instant,
    pub bootstrap: String,
    pub topics: Vec<String>,
    pub cpus: Vec<Option<usize>>,
}

struct Control {
    stop: AtomicBool,
    producers_running: AtomicUsize,
    /// Consumers that have not fixed their start positions yet. Producers
    /// wait for 0, so consumers starting at the log end miss no message.
    consumers_starting: AtomicUsize,
    started: Instant,
}

enum ThreadMessage {
    Interval { second: u64, interval: Box<Interval> },
    Done,
}

/// Runs one stage to completion (or until `interrupted` is set).
pub fn run_stage(plan: &Arc<Plan>, stage: &Stage, interrupted: &Arc<AtomicBool>) -> Result<StageResult> {
    let thread_count = plan.cpus.len();
    let control = Arc::new(Control {
        stop: AtomicBool::new(false),
        producers_running: AtomicUsize::new(plan.config.producers),
        consumers_starting: AtomicUsize::new(if stage.with_consumers {
            plan.config.consumers * plan.config.consumer_groups
        } else {
            0
        }),
        started: Instant::now(),
    });
    let (sender, receiver) = mpsc::channel::<ThreadMessage>();

    let threads = {
        let plan = plan.clone();
        let stage = Arc::new(stage.clone());
        let control = control.clone();
        weir::runtime::start_shards(&plan.cpus.clone(), move |thread| {
            let (plan, stage, control, sender) = (plan.clone(), stage.clone(), control.clone(), sender.clone());
            move || bench_thread(thread, plan, stage, control, sender)
        })
        .context("failed to start bench threads")?
    };

    let mut per_second: BTreeMap<u64, Interval> = BTreeMap::new();
    let mut reports_per_second: BTreeMap<u64, usize> = BTreeMap::new();
    let mut done = 0;
    let mut stopped_at: Option<Instant> = None;
    let mut was_interrupted = false;
    let mut consumers_ready_secs = None;
    let run_length = stage.duration_secs.map(|secs| Duration::from_secs(stage.warmup_secs + secs));
    let drain = Duration::from_secs(plan.config.drain_secs);

    while done < thread_count {
        match receiver.recv_timeout(Duration::from_millis(100)) {
            Ok(ThreadMessage::Interval { second, interval }) => {
                per_second.entry(second).or_default().add(&interval);
                let reports = reports_per_second.entry(second).or_default();
                *reports += 1;
                if *reports == thread_count && stage.print_progress {
                    print_progress(second, &per_second[&second], second < stage.warmup_secs, &plan.config);
                }
            }
            Ok(ThreadMessage::Done) => done += 1,
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }

        if stage.with_consumers
            && consumers_ready_secs.is_none()
            && control.consumers_starting.load(Ordering::Acquire) == 0
        {
            consumers_ready_secs = Some(control.started.elapsed().as_secs_f64());
        }
        if stopped_at.is_none() {
            let elapsed = control.started.elapsed();
            let finished_producers =
                stage.messages_per_producer.is_some() && control.producers_running.load(Ordering::Acquire) == 0;
            if interrupted.load(Ordering::Acquire) {
                was_interrupted = true;
            }
            if was_interrupted || run_length.is_some_and(|length| elapsed >= length) || finished_producers {
                control.stop.store(true, Ordering::Release);
                stopped_at = Some(Instant::now());
            }
        } else if stopped_at.is_some_and(|at| at.elapsed() > drain + SHUTDOWN_GRACE) {
            eprintln!("weir-bench: {} bench threads did not stop in time; reporting without them", thread_count - done);
            break;
        }
    }
    if done == thread_count {
        threads.join().context("a bench thread failed")?;
    }

    let mut measured = Interval::default();
    let mut all = Interval::default();
    for (second, interval) in &per_second {
        all.add(interval);
        if *second >= stage.warmup_secs {
            measured.add(interval);
        }
    }
    let stop_secs = stopped_at.map_or(control.started.elapsed(), |at| at.duration_since(control.started));
    let measured_secs = (stop_secs.as_secs_f64() - stage.warmup_secs as f64).max(0.001);
    Ok(StageResult { measured, all, measured_secs, interrupted: was_interrupted, consumers_ready_secs })
}

fn print_progress(second: u64, interval: &Interval, warmup: bool, config: &RunConfig) {
    let produced_mb = interval.produced_bytes as f64 / 1e6;
    let consumed_mb = interval.consumed_bytes as f64 / 1e6;
    let p99 = |histogram: &hdrhistogram::Histogram<u64>| {
        if histogram.is_empty() {
            "-".to_string()
        } else {
            format!("{:.2}", histogram.value_at_quantile(0.99) as f64 / 1000.0)
        }
    };
    println!(
        "[{:>4}s{}] produced {:>9} msg/s {:>8.1} MB/s | consumed {:>9} msg/s {:>8.1} MB/s | p99 ms: ack {:>7} e2e {:>7} | errors {}{}",
        second + 1,
        if warmup { " warm-up" } else { "" },
        interval.produced_messages,
        produced_mb,
        interval.consumed_messages,
        consumed_mb,
        p99(&interval.produce_latency),
        p99(&interval.end_to_end_latency),
        interval.error_count(),
        if config.rate > 0.0 { format!(" (target {} msg/s)", config.rate) } else { String::new() },
    );
}

async fn bench_thread(
    thread: usize,
    plan: Arc<Plan>,
    stage: Arc<Stage>,
    control: Arc<Control>,
    sender: mpsc::Sender<ThreadMessage>,
) {
    let thread_count = plan.cpus.len();
    let stats = Rc::new(RefCell::new(Interval::default()));
    let mut tasks = Vec::new();

    for index in (0..plan.config.producers).filter(|index| index % thread_count == thread) {
        tasks.push(spawn_local(run_producer(index, plan.clone(), stage.clone(), control.clone(), stats.clone())));
    }
    if stage.with_consumers {
        let consumers = plan.config.consumers;
        for group in 0..plan.config.consumer_groups {
            for member in 0..consumers {
                let slot = plan.config.producers + group * consumers + member;
                if slot % thread_count == thread {
                    tasks.push(spawn_local(run_consumer(
                        group,
                        member,
                        plan.clone(),
                        stage.clone(),
                        control.clone(),
                        stats.clone(),
                    )));
                }
            }
        }
    }

    let reporter = {
        let stats = stats.clone();
        let sender = sender.clone();
        let started = control.started;
        spawn_local(async move {
            let mut second = 0u64;
            loop {
                let due = started + REPORT_INTERVAL * (second as u32 + 1);
                sleep(due.saturating_duration_since(Instant::now())).await;
                let interval = std::mem::take(&mut *stats.borrow_mut());
                let _ = sender.send(ThreadMessage::Interval { second, interval: Box::new(interval) });
                second += 1;
            }
        })
    };

    for task in tasks {
        task.await;
    }
    drop(reporter);
    let second = control.started.elapsed().as_secs();
    let interval = std::mem::take(&mut *stats.borrow_mut());
    let _ = sender.send(ThreadMessage::Interval { second, interval: Box::new(interval) });
    let _ = sender.send(ThreadMessage::Done);
}

fn client_config(plan: &Plan, index: usize, role: &str) -> ClientConfig {
    let mut config = ClientConfig::new(&plan.bootstrap);
    config.connection = ConnectionConfig {
        client_id: format!("weir-bench-{role}-{index}"),
        max_in_flight: plan.config.max_in_flight,
        ..ConnectionConfig::default()
    };
    config
}

/// Nanoseconds from the run's epoch to `instant`.
fn epoch_nanos(plan: &Plan, instant: Instant) -> u64 {
    instant.saturating_duration_since(plan.epoch).as_nanos() as u64
}

/// Matches batch acknowledgements to the intended send times of their records.
struct AckTracker {
    topic_index: HashMap<String, usize>,
    /// (topic index, partition) → intended send times, oldest first.
    pending: RefCell<HashMap<(usize, i32), VecDeque<Instant>>>,
    stats: Rc<RefCell<Interval>>,
    message_size: u64,
}

impl AckTracker {
    fn on_batch(&self, report: &BatchReport<'_>) {
        let now = Instant::now();
        let Some(topic) = self.topic_index.get(report.topic).copied() else {
            return;
        };
        let mut pending = self.pending.borrow_mut();
        let queue = pending.entry((topic, report.partition)).or_default();
        let mut stats = self.stats.borrow_mut();
        let count = report.record_count.min(queue.len());
        match report.result {
            Ok(_) => {
                for intended in queue.drain(..count) {
                    record_micros(
                        &mut stats.produce_latency,
                        now.saturating_duration_since(intended).as_micros() as u64,
                    );
                }
                stats.produced_messages += count as u64;
                stats.produced_bytes += count as u64 * self.message_size;
            }
            Err(err) => {
                queue.drain(..count);
                stats.record_error(err.kafka_code(), count as u64);
            }
        }
    }
}

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

async fn run_producer(
    index: usize,
    plan: Arc<Plan>,
    stage: Arc<Stage>,
    control: Arc<Control>,
    stats: Rc<RefCell<Interval>>,
) {
    if let Err(err) = produce(index, &plan, &stage, &control, &stats).await {
        eprintln!("weir-bench: producer {index} stopped: {err:#}");
        stats.borrow_mut().record_error(None, 1);
    }
    control.producers_running.fetch_sub(1, Ordering::AcqRel);
}

async fn produce(
    index: usize,
    plan: &Plan,
    stage: &Stage,
    control: &Control,
    stats: &Rc<RefCell<Interval>>,
) -> Result<()> {
    let config = &plan.config;
    let client = Client::connect(client_config(plan, index, "producer")).await.context("failed to connect")?;
    let producer = Producer::new(
        client.clone(),
        ProducerConfig {
            acks: config.acks(),
            batch_size_bytes: config.batch_size,
            linger: Duration::from_millis(config.linger_ms),
            compression: parse_compression(&config.compression)?,
            ..ProducerConfig::default()
        },
    )?;
    let tracker = Rc::new(AckTracker {
        topic_index: plan.topics.iter().enumerate().map(|(index, name)| (name.clone(), index)).collect(),
        pending: RefCell::new(HashMap::new()),
        stats: stats.clone(),
        message_size: config.message_size as u64,
    });
    {
        let tracker = tracker.clone();
        producer.set_batch_listener(move |report| tracker.on_batch(report));
    }

    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15 ^ (index as u64 + 1).wrapping_mul(0xBF58_476D_1CE4_E5B9));
    let mut value = vec![0u8; config.message_size];
    for chunk in value[TIMESTAMP_BYTES..].chunks_mut(8) {
        let random = rng.next().to_le_bytes();
        chunk.copy_from_slice(&random[..chunk.len()]);
    }
    let mut key_buffer = String::with_capacity(24);

    let producer_rate = stage.rate / config.producers as f64;
    let send_interval = (producer_rate > 0.0).then(|| Duration::from_secs_f64(1.0 / producer_rate));
    wait_for_consumers(control).await;
    let mut next_due = Instant::now();
    let mut sent = 0u64;
    let mut consecutive_errors = 0u32;

    while !control.stop.load(Ordering::Relaxed) {
        if stage.messages_per_producer.is_some_and(|limit| sent >= limit) {
            break;
        }
        let intended = match send_interval {
            Some(interval) => {
                let due = next_due;
                next_due += interval;
                let ahead = due.saturating_duration_since(Instant::now());
                if ahead > SLEEP_THRESHOLD {
                    sleep(ahead).await;
                }
                due
            }
            None => Instant::now(),
        };
        value[..TIMESTAMP_BYTES].copy_from_slice(&epoch_nanos(plan, intended).to_le_bytes());

        let topic_index = (sent % plan.topics.len() as u64) as usize;
        let key = if config.key_spread > 0 {
            use std::fmt::Write;
            key_buffer.clear();
            let _ = write!(key_buffer, "key-{}", rng.next() % config.key_spread);
            Some(key_buffer.as_bytes())
        } else {
            None
        };
        let record = ProducerRecord {
            topic: &plan.topics[topic_index],
            partition: None,
            key,
            value: Some(&value),
            headers: &[],
            timestamp_ms: None,
        };
        match producer.send(record).await {
            Ok(delivery) => {
                consecutive_errors = 0;
                tracker
                    .pending
                    .borrow_mut()
                    .entry((topic_index, delivery.partition()))
                    .or_default()
                    .push_back(intended);
            }
            Err(err) => {
                stats.borrow_mut().record_error(err.kafka_code(), 1);
                consecutive_errors += 1;
                if consecutive_errors > SEND_ERRORS_BEFORE_BACKOFF {
                    sleep(ERROR_BACKOFF).await;
                }
            }
        }
        sent += 1;
        yield_if_needed().await;
    }

    producer.flush().await;
    let (sent_bytes, received_bytes) = client.byte_counts();
    let mut stats = stats.borrow_mut();
    stats.wire_sent_bytes += sent_bytes;
    stats.wire_received_bytes += received_bytes;
    Ok(())
}

async fn run_consumer(
    group: usize,
    member: usize,
    plan: Arc<Plan>,
    stage: Arc<Stage>,
    control: Arc<Control>,
    stats: Rc<RefCell<Interval>>,
) {
    let mut ready = StartGate { control: &control, open: false };
    if let Err(err) = consume(group, member, &plan, &stage, &control, &stats, &mut ready).await {
        eprintln!("weir-bench: consumer {member} of group {group} stopped: {err:#}");
        stats.borrow_mut().record_error(None, 1);
    }
}

/// Counts a consumer as started once, when it has its start positions or
/// when it gives up.
struct StartGate<'a> {
    control: &'a Control,
    open: bool,
}

impl StartGate<'_> {
    fn open(&mut self) {
        if !self.open {
            self.open = true;
            self.control.consumers_starting.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Drop for StartGate<'_> {
    fn drop(&mut self) {
        self.open();
    }
}

/// Waits until every consumer fixed its start positions (or the stage stops).
async fn wait_for_consumers(control: &Control) {
    let deadline = Instant::now() + CONSUMER_START_TIMEOUT;
    while control.consumers_starting.load(Ordering::Acquire) > 0 && !control.stop.load(Ordering::Relaxed) {
        if Instant::now() >= deadline {
            eprintln!(
                "weir-bench: consumers did not start within {} s; producing anyway",
                CONSUMER_START_TIMEOUT.as_secs()
            );
            return;
        }
        sleep(CONSUMER_START_POLL).await;
    }
}

/// A consumer whose partitions come from the group coordinator or from
/// the bench's own round-robin split.
enum BenchConsumer {
    Direct(Consumer),
    Group(GroupConsumer),
}

impl BenchConsumer {
    async fn poll_batches(&mut self, timeout: Duration) -> Result<PollOutcome, ClientError> {
        match self {
            BenchConsumer::Direct(consumer) => consumer.poll_batches(timeout).await,
            BenchConsumer::Group(consumer) => consumer.poll_batches(timeout).await,
        }
    }
}

async fn consume(
    group: usize,
    member: usize,
    plan: &Plan,
    stage: &Stage,
    control: &Control,
    stats: &Rc<RefCell<Interval>>,
    ready: &mut StartGate<'_>,
) -> Result<()> {
    let config = &plan.config;
    let client = Client::connect(client_config(plan, member, "consumer")).await.context("failed to connect")?;
    let fetch_max_wait = Duration::from_millis(config.fetch_max_wait_ms);
    let consumer_config =
        ConsumerConfig { fetch_max_wait, reset_to: stage.consumer_start, ..ConsumerConfig::default() };

    let mut consumer = if config.consumer_assignment == "group" {
        let group_id = format!("{}-group-{group}-{}", config.topic, plan.run_id);
        let topics: Vec<&str> = plan.topics.iter().map(String::as_str).collect();
        // Members learn of a rebalance from their next heartbeat, so a short
        // interval lets the group settle quickly while the run starts.
        let group_config = GroupConfig { heartbeat_interval: GROUP_HEARTBEAT_INTERVAL, ..GroupConfig::new(&group_id) };
        let joined = GroupConsumer::join(client.clone(), consumer_config, group_config, &topics)
            .await
            .with_context(|| format!("failed to join consumer group {group_id}"))?;
        BenchConsumer::Group(joined)
    } else {
        match assign_directly(member, plan, stage, Consumer::new(client.clone(), consumer_config)).await? {
            Some(consumer) => BenchConsumer::Direct(consumer),
            None => return Ok(()),
        }
    };
    ready.open();

    let poll_timeout = (fetch_max_wait * 2).max(Duration::from_millis(200));
    let drain = Duration::from_secs(config.drain_secs);
    let mut drain_deadline: Option<Instant> = None;
    loop {
        let producers_done =
            control.stop.load(Ordering::Relaxed) && control.producers_running.load(Ordering::Acquire) == 0;
        if producers_done {
            let deadline = *drain_deadline.get_or_insert_with(|| Instant::now() + drain);
            if Instant::now() >= deadline {
                break;
            }
        }

        let outcome = match consumer.poll_batches(poll_timeout).await {
            Ok(outcome) => outcome,
            Err(err) => {
                stats.borrow_mut().record_error(err.kafka_code(), 1);
                sleep(ERROR_BACKOFF).await;
                continue;
            }
        };

        let now_nanos = epoch_nanos(plan, Instant::now());
        let received = record_poll(&mut stats.borrow_mut(), &outcome, now_nanos);

        if producers_done && received == 0 && outcome.errors.is_empty() {
            // Every leader returned an empty long poll, so the consumer caught up.
            break;
        }
        yield_if_needed().await;
    }

    if let BenchConsumer::Group(member) = consumer {
        // Leaving commits the positions and lets the other members take
        // over at once; a failure here does not change the results.
        if let Err(err) = member.leave().await {
            tracing::debug!(target: "weir_bench", error = %err, "leaving the consumer group failed");
        }
    }
    let (sent_bytes, received_bytes) = client.byte_counts();
    let mut stats = stats.borrow_mut();
    stats.wire_sent_bytes += sent_bytes;
    stats.wire_received_bytes += received_bytes;
    Ok(())
}

/// Counts what one poll returned and records its latencies. Returns the
/// number of records received.
fn record_poll(stats: &mut Interval, outcome: &PollOutcome, now_nanos: u64) -> u64 {
    for round_trip in &outcome.fetch_round_trips {
        record_micros(&mut stats.fetch_latency, round_trip.as_micros() as u64);
    }
    for err in &outcome.errors {
        stats.record_error(err.kafka_code(), 1);
    }
    let mut received = 0u64;
    for fetched in &outcome.partitions {
        for batch in fetched.batches.iter().filter(|batch| !batch.is_control) {
            let records = match batch.decode() {
                Ok(records) => records,
                Err(err) => {
                    stats.record_error(err.kafka_code(), 1);
                    continue;
                }
            };
            for record in records.iter().filter(|record| record.offset >= fetched.fetch_offset) {
                received += 1;
                let Some(value) = record.value.as_deref() else {
                    continue;
                };
                stats.consumed_bytes += value.len() as u64;
                if value.len() >= TIMESTAMP_BYTES {
                    let sent_nanos = u64::from_le_bytes(value[..TIMESTAMP_BYTES].try_into().expect("8 bytes"));
                    record_micros(&mut stats.end_to_end_latency, now_nanos.saturating_sub(sent_nanos) / 1000);
                }
            }
        }
    }
    stats.consumed_messages += received;
    received
}

/// Assigns this member its round-robin share of every topic's partitions.
/// Returns None when the share is empty.
async fn assign_directly(
    member: usize,
    plan: &Plan,
    stage: &Stage,
    mut consumer: Consumer,
) -> Result<Option<Consumer>> {
    let config = &plan.config;
    let mut assigned = 0;
    for (topic_index, topic) in plan.topics.iter().enumerate() {
        let partitions: Vec<i32> = (0..config.partitions)
            .filter(|partition| {
                (topic_index * config.partitions as usize + *partition as usize) % config.consumers == member
            })
            .collect();
        if partitions.is_empty() {
            continue;
        }
        assigned += partitions.len();
        consumer
            .assign(topic, Some(&partitions), stage.consumer_start)
            .await
            .with_context(|| format!("failed to assign {topic}"))?;
    }
    Ok((assigned > 0).then_some(consumer))
}

/// Creates the run's topics (reusing existing ones with the right
/// partition count) and returns the log end offset of every partition.
pub async fn prepare_topics(plan: &Plan) -> Result<BTreeMap<(String, i32), i64>> {
    let client = Client::connect(ClientConfig::new(&plan.bootstrap))
        .await
        .with_context(|| format!("failed to connect to {}", plan.bootstrap))?;
    let new_topics: Vec<weir::client::NewTopic> = plan
        .topics
        .iter()
        .map(|name| weir::client::NewTopic {
            name: name.clone(),
            partitions: plan.config.partitions,
            replication_factor: 1,
            configs: vec![],
        })
        .collect();
    let results = client.create_topics(&new_topics, Duration::from_secs(30)).await?;
    for (topic, result) in plan.topics.iter().zip(results) {
        match result {
            Ok(()) => {}
            Err(err) if err.kafka_code() == Some(TOPIC_ALREADY_EXISTS) => {}
            Err(err) => return Err(err).with_context(|| format!("failed to create topic {topic}")),
        }
        let metadata =
            client.wait_for_leaders(topic, 100).await.with_context(|| format!("topic {topic} has no leaders"))?;
        if metadata.partitions.len() != plan.config.partitions as usize {
            bail!(
                "topic {topic} exists with {} partitions, the run needs {}; delete it or choose another --topic",
                metadata.partitions.len(),
                plan.config.partitions
            );
        }
    }
    end_offsets(&client, plan).await
}

const TOPIC_ALREADY_EXISTS: i16 = 36;

/// Log end offsets of every partition of the run's topics.
pub async fn end_offsets(client: &Client, plan: &Plan) -> Result<BTreeMap<(String, i32), i64>> {
    let partitions: Vec<i32> = (0..plan.config.partitions).collect();
    let mut offsets = BTreeMap::new();
    for topic in &plan.topics {
        for (partition, offset) in client
            .list_offsets(topic, &partitions, weir::client::OffsetSpec::Latest)
            .await
            .with_context(|| format!("ListOffsets for {topic} failed"))?
        {
            offsets.insert((topic.clone(), partition), offset);
        }
    }
    Ok(offsets)
}

/// Records the broker stored since `before`, from a fresh ListOffsets.
pub async fn stored_since(plan: &Plan, before: &BTreeMap<(String, i32), i64>) -> Result<u64> {
    let client = Client::connect(ClientConfig::new(&plan.bootstrap)).await?;
    let after = end_offsets(&client, plan).await?;
    Ok(after.iter().map(|(key, end)| (end - before.get(key).copied().unwrap_or(0)).max(0) as u64).sum())
}
