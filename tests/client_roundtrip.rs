//! The native client against a real broker: produce with every compression
//! and acks setting, fetch everything back, and check each record.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::Broker;
use weir::client::{
    Acks, Client, ClientConfig, Compression, Consumer, ConsumerConfig, ConsumerRecord, GroupConfig, GroupConsumer,
    NewTopic, OffsetSpec, Producer, ProducerConfig, ProducerRecord, RecordHeader, StartOffset,
};
use weir::runtime::block_on;

const PARTITIONS: i32 = 4;
const FETCH_DEADLINE: Duration = Duration::from_secs(30);

struct Sent {
    key: Vec<u8>,
    value: Vec<u8>,
    timestamp_ms: i64,
    header_value: Vec<u8>,
}

fn record_value(index: usize) -> Vec<u8> {
    // Varied sizes (0..2000 bytes) with content that compresses.
    let size = (index * 37) % 2000;
    (0..size).map(|byte| ((index + byte / 16) % 251) as u8).collect()
}

async fn create_topic(client: &Client, name: &str) {
    let results = client
        .create_topics(
            &[NewTopic { name: name.to_string(), partitions: PARTITIONS, replication_factor: 1, configs: vec![] }],
            Duration::from_secs(10),
        )
        .await
        .expect("CreateTopics request");
    results.into_iter().next().unwrap().expect("topic created");
    client.wait_for_leaders(name, 50).await.expect("leaders known");
}

/// Produces `count` records, returns them by (partition, offset).
async fn produce_all(
    client: &Client,
    topic: &str,
    count: usize,
    acks: Acks,
    compression: Compression,
) -> BTreeMap<(i32, i64), Sent> {
    let config = ProducerConfig {
        acks,
        compression,
        batch_size_bytes: 16 * 1024,
        linger: Duration::from_millis(2),
        ..ProducerConfig::default()
    };
    let producer = Producer::new(client.clone(), config).expect("producer");
    let mut deliveries = Vec::with_capacity(count);
    for index in 0..count {
        let key = format!("key-{}", index % 17).into_bytes();
        let value = record_value(index);
        let header_value = format!("h{index}").into_bytes();
        let headers = [RecordHeader { key: "index".to_string(), value: Some(Bytes::from(header_value.clone())) }];
        let timestamp_ms = 1_700_000_000_000 + index as i64;
        let delivery = producer
            .send(ProducerRecord {
                topic,
                partition: None,
                key: Some(&key),
                value: Some(&value),
                headers: &headers,
                timestamp_ms: Some(timestamp_ms),
            })
            .await
            .expect("send");
        deliveries.push((delivery, Sent { key, value, timestamp_ms, header_value }));
    }
    producer.flush().await;
    assert_eq!(producer.outstanding_batches(), 0);

    let mut sent = BTreeMap::new();
    let mut keyless_index = 0i64;
    for (delivery, record) in deliveries {
        let metadata = delivery.await.expect("record acknowledged");
        let expected_partition = weir::client::partition_for_key(&record.key, PARTITIONS as usize);
        assert_eq!(metadata.partition, expected_partition, "keyed records follow murmur2");
        let offset = if acks == Acks::None {
            assert_eq!(metadata.offset, -1, "acks=0 reports no offset");
            keyless_index += 1;
            -keyless_index
        } else {
            metadata.offset
        };
        assert!(sent.insert((metadata.partition, offset), record).is_none(), "offset reported twice");
    }
    sent
}

async fn fetch_all(client: &Client, topic: &str, expected: usize) -> Vec<ConsumerRecord> {
    let mut consumer = Consumer::new(
        client.clone(),
        ConsumerConfig {
            fetch_max_wait: Duration::from_millis(100),
            max_partition_fetch_bytes: 64 * 1024,
            ..ConsumerConfig::default()
        },
    );
    consumer.assign(topic, None, StartOffset::Earliest).await.expect("assign");
    let deadline = Instant::now() + FETCH_DEADLINE;
    let mut records = Vec::new();
    while records.len() < expected {
        assert!(Instant::now() < deadline, "fetched {} of {expected} records before the deadline", records.len());
        let (mut batch, errors) = consumer.poll(Duration::from_millis(500)).await.expect("poll");
        assert!(errors.is_empty(), "fetch errors: {errors:?}");
        records.append(&mut batch);
    }
    assert_eq!(records.len(), expected, "no record fetched twice");
    records
}

fn check_round_trip(acks: Acks, compression: Compression, topic: &str) {
    let broker = Broker::start(&[]);
    let bootstrap = broker.bootstrap.clone();
    let topic = topic.to_string();
    block_on(async move {
        let client = Client::connect(ClientConfig::new(&bootstrap)).await.expect("connect");
        assert_eq!(client.brokers().len(), 2, "each shard is a broker");
        create_topic(&client, &topic).await;

        let count = 3000;
        let sent = produce_all(&client, &topic, count, acks, compression).await;
        let fetched = fetch_all(&client, &topic, count).await;

        let mut per_partition: BTreeMap<i32, Vec<&ConsumerRecord>> = BTreeMap::new();
        for record in &fetched {
            per_partition.entry(record.partition).or_default().push(record);
        }
        for (partition, records) in &per_partition {
            for (index, record) in records.iter().enumerate() {
                assert_eq!(record.offset, index as i64, "offsets of partition {partition} are dense from 0");
            }
        }

        if acks == Acks::None {
            // Offsets are unknown with acks=0: match by header index instead.
            let mut by_header: BTreeMap<Vec<u8>, &Sent> = BTreeMap::new();
            for record in sent.values() {
                by_header.insert(record.header_value.clone(), record);
            }
            for record in &fetched {
                let header = record.headers[0].value.as_ref().expect("header value");
                let expected = by_header.get(&header[..]).expect("fetched record was sent");
                assert_eq!(record.value.as_deref(), Some(&expected.value[..]));
                assert_eq!(record.key.as_deref(), Some(&expected.key[..]));
            }
            return;
        }

        for record in &fetched {
            let expected = sent.get(&(record.partition, record.offset)).expect("fetched offset was acknowledged");
            assert_eq!(record.key.as_deref(), Some(&expected.key[..]));
            assert_eq!(record.value.as_deref(), Some(&expected.value[..]));
            assert_eq!(record.timestamp_ms, expected.timestamp_ms);
            assert_eq!(record.headers.len(), 1);
            assert_eq!(record.headers[0].key, "index");
            assert_eq!(record.headers[0].value.as_deref(), Some(&expected.header_value[..]));
        }

        let partitions: Vec<i32> = (0..PARTITIONS).collect();
        let latest = client.list_offsets(&topic, &partitions, OffsetSpec::Latest).await.expect("ListOffsets");
        let stored: i64 = latest.iter().map(|(_, offset)| offset).sum();
        assert_eq!(stored as usize, count, "log end offsets add up to the records sent");
    });
    drop(broker);
}

#[test]
fn round_trip_uncompressed_acks_leader() {
    check_round_trip(Acks::Leader, Compression::None, "plain");
}

#[test]
fn round_trip_gzip_acks_all() {
    check_round_trip(Acks::All, Compression::Gzip, "gzip");
}

#[test]
fn round_trip_snappy_acks_leader() {
    check_round_trip(Acks::Leader, Compression::Snappy, "snappy");
}

#[test]
fn round_trip_lz4_acks_all() {
    check_round_trip(Acks::All, Compression::Lz4, "lz4");
}

#[test]
fn round_trip_zstd_acks_none() {
    check_round_trip(Acks::None, Compression::Zstd, "zstd");
}

#[test]
fn deleted_topic_reports_kafka_code() {
    let broker = Broker::start(&["auto.create.topics.enable=false"]);
    let bootstrap = broker.bootstrap.clone();
    block_on(async move {
        let client = Client::connect(ClientConfig::new(&bootstrap)).await.expect("connect");
        create_topic(&client, "doomed").await;
        let results = client.delete_topics(&["doomed"], Duration::from_secs(10)).await.expect("DeleteTopics");
        results.into_iter().next().unwrap().expect("topic deleted");

        let again = client.delete_topics(&["doomed"], Duration::from_secs(10)).await.expect("DeleteTopics");
        let error = again.into_iter().next().unwrap().expect_err("second delete fails");
        assert_eq!(error.kafka_code(), Some(3), "UNKNOWN_TOPIC_OR_PARTITION: {error}");

        let producer = Producer::new(client.clone(), ProducerConfig::default()).expect("producer");
        let error = match producer.send(ProducerRecord::new("doomed", b"value")).await {
            Ok(_) => panic!("send to a deleted topic succeeded"),
            Err(error) => error,
        };
        assert_eq!(error.kafka_code(), Some(3), "{error}");
    });
}

fn group_config(group: &str) -> GroupConfig {
    GroupConfig {
        heartbeat_interval: Duration::from_millis(100),
        session_timeout: Duration::from_secs(6),
        rebalance_timeout: Duration::from_secs(5),
        ..GroupConfig::new(group)
    }
}

async fn join_group(bootstrap: &str, group: &str, topic: &str) -> GroupConsumer {
    let client = Client::connect(ClientConfig::new(bootstrap)).await.expect("connect");
    let config = ConsumerConfig { fetch_max_wait: Duration::from_millis(50), ..ConsumerConfig::default() };
    GroupConsumer::join(client, config, group_config(group), &[topic]).await.expect("join group")
}

async fn produce_values(client: &Client, topic: &str, first: usize, count: usize) {
    let producer = Producer::new(client.clone(), ProducerConfig::default()).expect("producer");
    for index in first..first + count {
        let value = format!("value-{index}");
        let record = ProducerRecord {
            partition: Some(index as i32 % PARTITIONS),
            ..ProducerRecord::new(topic, value.as_bytes())
        };
        producer.send(record).await.expect("send");
    }
    producer.flush().await;
}

fn assigned_partitions(member: &GroupConsumer) -> Vec<i32> {
    member.assignment().iter().flat_map(|(_, partitions)| partitions.iter().copied()).collect()
}

#[test]
fn group_members_split_and_resume() {
    let broker = Broker::start(&[]);
    let bootstrap = broker.bootstrap.clone();
    block_on(async move {
        let client = Client::connect(ClientConfig::new(&bootstrap)).await.expect("connect");
        create_topic(&client, "grouped").await;
        produce_values(&client, "grouped", 0, 400).await;

        let mut first = join_group(&bootstrap, "readers", "grouped").await;
        assert_eq!(assigned_partitions(&first), vec![0, 1, 2, 3], "a lone member gets every partition");
        let first_generation = first.generation_id();

        // The second join completes only once the first member rejoins,
        // which it does on its next poll after a heartbeat sees the rebalance.
        let deadline = Instant::now() + FETCH_DEADLINE;
        let mut first_records = Vec::new();
        let (mut second, ()) = futures::join!(join_group(&bootstrap, "readers", "grouped"), async {
            while first.generation_id() == first_generation {
                assert!(Instant::now() < deadline, "the first member never rejoined");
                let (mut records, _) = first.poll(Duration::from_millis(100)).await.expect("poll");
                first_records.append(&mut records);
            }
        });
        assert_eq!(first.generation_id(), second.generation_id());
        let mut split = assigned_partitions(&first);
        split.extend(assigned_partitions(&second));
        split.sort_unstable();
        assert_eq!(split, vec![0, 1, 2, 3], "partitions split without overlap");
        assert_eq!(assigned_partitions(&first).len(), 2);

        // Whatever the first member read before the rebalance was not
        // committed, so the new owners read it again: count distinct values.
        let mut seen = std::collections::BTreeSet::new();
        for record in &first_records {
            seen.insert(record.value.clone().expect("value"));
        }
        while seen.len() < 400 {
            assert!(Instant::now() < deadline, "read {} of 400 distinct values", seen.len());
            for member in [&mut first, &mut second] {
                let (records, errors) = member.poll(Duration::from_millis(100)).await.expect("poll");
                assert!(errors.is_empty(), "{errors:?}");
                for record in records {
                    seen.insert(record.value.expect("value"));
                }
            }
        }
        assert_eq!(seen.len(), 400);
        first.commit().await.expect("commit first");
        second.commit().await.expect("commit second");

        // After the first member leaves, the second owns every partition
        // and resumes at the committed offsets: only new records arrive.
        first.leave().await.expect("leave");
        produce_values(&client, "grouped", 400, 40).await;
        let mut fresh = Vec::new();
        while fresh.len() < 40 {
            assert!(Instant::now() < deadline, "read {} of 40 new records", fresh.len());
            let (mut records, _) = second.poll(Duration::from_millis(100)).await.expect("poll");
            fresh.append(&mut records);
        }
        assert_eq!(assigned_partitions(&second), vec![0, 1, 2, 3]);
        let mut values: Vec<String> =
            fresh.iter().map(|record| String::from_utf8(record.value.clone().unwrap().to_vec()).unwrap()).collect();
        values.sort();
        let mut expected: Vec<String> = (400..440).map(|index| format!("value-{index}")).collect();
        expected.sort();
        assert_eq!(values, expected, "only records after the commits are read again");
    });
    drop(broker);
}
