//! Protocol-level tests: the real `weir` binary on loopback with two shards,
//! driven by hand-built Kafka requests, one `check`-style helper per API.

mod common;

use std::collections::BTreeMap;

use bytes::{Bytes, BytesMut};
use common::{batch, Broker, Connection, TestRecord};
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{Compression, RecordBatchDecoder};

const CORRUPT_MESSAGE: i16 = 2;
const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
const MESSAGE_TOO_LARGE: i16 = 10;
const OFFSET_OUT_OF_RANGE: i16 = 1;
const INVALID_TOPIC_EXCEPTION: i16 = 17;
const INVALID_REQUIRED_ACKS: i16 = 21;
const UNSUPPORTED_VERSION: i16 = 35;
const TOPIC_ALREADY_EXISTS: i16 = 36;
const INVALID_PARTITIONS: i16 = 37;
const INVALID_REPLICATION_FACTOR: i16 = 38;
const INVALID_CONFIG: i16 = 40;
const UNSUPPORTED_COMPRESSION_TYPE: i16 = 76;
const INVALID_RECORD: i16 = 87;

fn topic_name(name: &str) -> TopicName {
    TopicName(StrBytes::from_string(name.to_string()))
}

fn create_topic(connection: &mut Connection, name: &str, partitions: i32, configs: &[(&str, &str)], validate_only: bool) -> (i16, Option<String>) {
    let topic = CreatableTopic::default()
        .with_name(topic_name(name))
        .with_num_partitions(partitions)
        .with_replication_factor(1)
        .with_configs(
            configs
                .iter()
                .map(|(key, value)| {
                    CreatableTopicConfig::default()
                        .with_name(StrBytes::from_string(key.to_string()))
                        .with_value(Some(StrBytes::from_string(value.to_string())))
                })
                .collect(),
        );
    let request = CreateTopicsRequest::default().with_topics(vec![topic]).with_timeout_ms(10_000).with_validate_only(validate_only);
    let response: CreateTopicsResponse = connection.request(ApiKey::CreateTopics, 7, &request);
    let result = &response.topics[0];
    (result.error_code, result.error_message.as_ref().map(ToString::to_string))
}

fn produce(connection: &mut Connection, topic: &str, partition: i32, records: Bytes, acks: i16) -> (i16, i64) {
    let request = ProduceRequest::default().with_acks(acks).with_timeout_ms(10_000).with_topic_data(vec![TopicProduceData::default()
        .with_name(topic_name(topic))
        .with_partition_data(vec![PartitionProduceData::default().with_index(partition).with_records(Some(records))])]);
    let response: ProduceResponse = connection.request(ApiKey::Produce, 9, &request);
    let partition = &response.responses[0].partition_responses[0];
    (partition.error_code, partition.base_offset)
}

fn fetch_request(topic: &str, partition: i32, offset: i64, max_bytes: i32, max_wait_ms: i32) -> FetchRequest {
    FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(max_wait_ms)
        .with_min_bytes(1)
        .with_max_bytes(max_bytes)
        .with_topics(vec![FetchTopic::default().with_topic(topic_name(topic)).with_partitions(vec![FetchPartition::default()
            .with_partition(partition)
            .with_fetch_offset(offset)
            .with_partition_max_bytes(max_bytes)])])
}

/// Fetches and decodes every record: (offset, value) pairs.
fn fetch(connection: &mut Connection, topic: &str, partition: i32, offset: i64, max_bytes: i32) -> (i16, Vec<(i64, Vec<u8>)>) {
    let response: FetchResponse = connection.request(ApiKey::Fetch, 12, &fetch_request(topic, partition, offset, max_bytes, 0));
    let data = &response.responses[0].partitions[0];
    let mut records = Vec::new();
    if let Some(bytes) = &data.records {
        let mut bytes = bytes.clone();
        for set in RecordBatchDecoder::decode_all(&mut bytes).expect("stored batches decode") {
            for record in set.records {
                records.push((record.offset, record.value.map(|value| value.to_vec()).unwrap_or_default()));
            }
        }
    }
    (data.error_code, records)
}

fn values(prefix: &str, count: usize) -> Vec<TestRecord> {
    (0..count).map(|index| TestRecord::value(&format!("{prefix}-{index}"))).collect()
}

#[test]
fn api_versions_lists_supported_ranges() {
    let broker = Broker::start(&[]);
    let mut connection = broker.connect();
    let response: ApiVersionsResponse = connection.request(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default());
    assert_eq!(response.error_code, 0);
    let range = |key: ApiKey| response.api_keys.iter().find(|api| api.api_key == key as i16).map(|api| (api.min_version, api.max_version));
    assert_eq!(range(ApiKey::Produce), Some((0, 11)));
    assert_eq!(range(ApiKey::Fetch), Some((4, 12)));
    assert_eq!(range(ApiKey::Metadata), Some((0, 12)));
    assert_eq!(range(ApiKey::ApiVersions), Some((0, 4)));
}

#[test]
fn api_versions_of_unknown_version_gets_v0_error() {
    let broker = Broker::start(&[]);
    let mut connection = broker.connect();
    let mut body = BytesMut::new();
    common::put_i16(&mut body, ApiKey::ApiVersions as i16);
    common::put_i16(&mut body, 99);
    body.extend_from_slice(&5i32.to_be_bytes());
    body.extend_from_slice(&(-1i16).to_be_bytes());
    connection.send_raw(&body);
    let frame = connection.read_frame().expect("a v0 response");
    assert_eq!(&frame[..4], &5i32.to_be_bytes());
    assert_eq!(i16::from_be_bytes([frame[4], frame[5]]), UNSUPPORTED_VERSION);
    let count = i32::from_be_bytes(frame[6..10].try_into().unwrap());
    assert!(count > 5, "the error response still lists the supported APIs");

    // The connection stays usable.
    let response: ApiVersionsResponse = connection.request(ApiKey::ApiVersions, 0, &ApiVersionsRequest::default());
    assert_eq!(response.error_code, 0);
}

#[test]
fn metadata_auto_creates_topic_and_lists_every_shard() {
    let broker = Broker::start(&["num.partitions=6"]);
    let mut connection = broker.connect();
    let request = MetadataRequest::default()
        .with_topics(Some(vec![MetadataRequestTopic::default().with_name(Some(topic_name("auto")))]))
        .with_allow_auto_topic_creation(true);
    let response: MetadataResponse = connection.request(ApiKey::Metadata, 12, &request);
    assert_eq!(response.brokers.len(), 2, "each shard is advertised as a broker");
    let topic = &response.topics[0];
    assert_eq!(topic.error_code, 0);
    assert_eq!(topic.partitions.len(), 6);
    assert!(!topic.topic_id.is_nil());
    let leaders: std::collections::BTreeSet<i32> = topic.partitions.iter().map(|partition| partition.leader_id.0).collect();
    assert_eq!(leaders.len(), 2, "partitions are spread over both shards");
}

#[test]
fn metadata_without_auto_create_reports_unknown_topic() {
    let broker = Broker::start(&["auto.create.topics.enable=false"]);
    let mut connection = broker.connect();
    let request = MetadataRequest::default()
        .with_topics(Some(vec![
            MetadataRequestTopic::default().with_name(Some(topic_name("missing"))),
            MetadataRequestTopic::default().with_name(Some(topic_name("bad name!"))),
        ]))
        .with_allow_auto_topic_creation(true);
    let response: MetadataResponse = connection.request(ApiKey::Metadata, 12, &request);
    assert_eq!(response.topics[0].error_code, UNKNOWN_TOPIC_OR_PARTITION);
    assert_eq!(response.topics[1].error_code, INVALID_TOPIC_EXCEPTION);
}

#[test]
fn create_topics_reports_each_error() {
    let broker = Broker::start(&[]);
    let mut connection = broker.connect();
    assert_eq!(create_topic(&mut connection, "orders", 4, &[], false).0, 0);
    assert_eq!(create_topic(&mut connection, "orders", 4, &[], false).0, TOPIC_ALREADY_EXISTS);
    assert_eq!(create_topic(&mut connection, "bad/name", 1, &[], false).0, INVALID_TOPIC_EXCEPTION);
    assert_eq!(create_topic(&mut connection, "zero", 0, &[], false).0, INVALID_PARTITIONS);
    assert_eq!(create_topic(&mut connection, "conf", 1, &[("retention.ms", "soon")], false).0, INVALID_CONFIG);

    let topic = CreatableTopic::default().with_name(topic_name("replicated")).with_num_partitions(1).with_replication_factor(3);
    let response: CreateTopicsResponse =
        connection.request(ApiKey::CreateTopics, 7, &CreateTopicsRequest::default().with_topics(vec![topic]));
    assert_eq!(response.topics[0].error_code, INVALID_REPLICATION_FACTOR);

    assert_eq!(create_topic(&mut connection, "dry-run", 2, &[], true).0, 0);
    assert_eq!(create_topic(&mut connection, "dry-run", 2, &[], false).0, 0, "validate_only created nothing");
}

#[test]
fn produce_rejects_invalid_batches() {
    let broker = Broker::start(&["message.max.bytes=2000"]);
    let mut connection = broker.connect();
    create_topic(&mut connection, "strict", 1, &[], false);
    let good = batch(&values("x", 3), Compression::None);

    let mut wrong_crc = BytesMut::from(&good[..]);
    let last = wrong_crc.len() - 1;
    wrong_crc[last] ^= 0xff;
    assert_eq!(produce(&mut connection, "strict", 0, wrong_crc.freeze(), -1).0, CORRUPT_MESSAGE);

    assert_eq!(produce(&mut connection, "strict", 0, Bytes::new(), -1).0, INVALID_RECORD);
    assert_eq!(produce(&mut connection, "strict", 0, good.slice(..good.len() - 5), -1).0, CORRUPT_MESSAGE);

    let mut bad_codec = BytesMut::from(&good[..]);
    bad_codec[22] |= 0x07;
    let crc = crc32c::crc32c(&bad_codec[21..]);
    bad_codec[17..21].copy_from_slice(&crc.to_be_bytes());
    assert_eq!(produce(&mut connection, "strict", 0, bad_codec.freeze(), -1).0, UNSUPPORTED_COMPRESSION_TYPE);

    let big = batch(&[TestRecord::value(&"y".repeat(5000))], Compression::None);
    assert_eq!(produce(&mut connection, "strict", 0, big, -1).0, MESSAGE_TOO_LARGE);
    assert_eq!(produce(&mut connection, "strict", 0, good.clone(), 5).0, INVALID_REQUIRED_ACKS);
    assert_eq!(produce(&mut connection, "nope", 0, good.clone(), -1).0, UNKNOWN_TOPIC_OR_PARTITION);
    assert_eq!(produce(&mut connection, "bad name", 0, good.clone(), -1).0, INVALID_TOPIC_EXCEPTION);

    // Nothing was stored by the rejected requests; a good batch lands at offset 0.
    assert_eq!(produce(&mut connection, "strict", 0, good, -1), (0, 0));
    let (error, records) = fetch(&mut connection, "strict", 0, 0, 1 << 20);
    assert_eq!(error, 0);
    assert_eq!(records.len(), 3);
}

#[test]
fn produce_and_fetch_through_either_shard() {
    let broker = Broker::start(&[]);
    let mut connection = broker.connect();
    create_topic(&mut connection, "spread", 4, &[], false);
    let metadata: MetadataResponse = connection.request(
        ApiKey::Metadata,
        12,
        &MetadataRequest::default().with_topics(Some(vec![MetadataRequestTopic::default().with_name(Some(topic_name("spread")))])),
    );
    let addresses: BTreeMap<i32, String> = metadata
        .brokers
        .iter()
        .map(|broker| (broker.node_id.0, format!("{}:{}", broker.host, broker.port)))
        .collect();

    for partition in 0..4 {
        // Write through shard 0 (forwarded when shard 1 owns the partition) ...
        let mut expected = Vec::new();
        for round in 0..3 {
            let records = values(&format!("p{partition}-r{round}"), 10);
            expected.extend(records.iter().map(|record| record.value.clone().unwrap()));
            let (error, base) = produce(&mut connection, "spread", partition, batch(&records, Compression::Zstd), 1);
            assert_eq!(error, 0);
            assert_eq!(base, round * 10, "offsets are dense per partition");
        }
        // ... and read back from every shard.
        for address in addresses.values() {
            let mut direct = Connection::open(address);
            let (error, records) = fetch(&mut direct, "spread", partition, 0, 1 << 20);
            assert_eq!(error, 0);
            let offsets: Vec<i64> = records.iter().map(|(offset, _)| *offset).collect();
            assert_eq!(offsets, (0..30).collect::<Vec<i64>>());
            let got: Vec<Vec<u8>> = records.into_iter().map(|(_, value)| value).collect();
            assert_eq!(got, expected);
        }
    }
}

#[test]
fn fetch_returns_first_batch_over_max_bytes() {
    let broker = Broker::start(&[]);
    let mut connection = broker.connect();
    create_topic(&mut connection, "kip74", 1, &[], false);
    let big = batch(&[TestRecord::value(&"z".repeat(10_000))], Compression::None);
    produce(&mut connection, "kip74", 0, big.clone(), 1);
    produce(&mut connection, "kip74", 0, big, 1);
    let (error, records) = fetch(&mut connection, "kip74", 0, 0, 100);
    assert_eq!(error, 0);
    assert_eq!(records.len(), 1, "exactly the first batch, although it exceeds max_bytes");
}

#[test]
fn fetch_past_the_end_is_out_of_range() {
    let broker = Broker::start(&[]);
    let mut connection = broker.connect();
    create_topic(&mut connection, "short", 1, &[], false);
    produce(&mut connection, "short", 0, batch(&values("a", 2), Compression::None), 1);
    assert_eq!(fetch(&mut connection, "short", 0, 2, 1 << 20), (0, Vec::new()));
    assert_eq!(fetch(&mut connection, "short", 0, 50, 1 << 20).0, OFFSET_OUT_OF_RANGE);
}

#[test]
fn long_poll_is_woken_by_append_and_responses_stay_in_order() {
    let broker = Broker::start(&[]);
    let mut setup = broker.connect();
    create_topic(&mut setup, "poll", 1, &[], false);

    let mut consumer = broker.connect();
    let fetch_id = consumer.send(ApiKey::Fetch, 12, &fetch_request("poll", 0, 0, 1 << 20, 20_000));
    let metadata_id = consumer.send(ApiKey::Metadata, 12, &MetadataRequest::default());

    produce(&mut setup, "poll", 0, batch(&values("wake", 1), Compression::None), 1);

    let response: FetchResponse = consumer.receive(12, fetch_id);
    let records = response.responses[0].partitions[0].records.clone().unwrap_or_default();
    assert!(!records.is_empty(), "the long poll returned the appended batch");
    let _: MetadataResponse = consumer.receive(12, metadata_id);
}

#[test]
fn list_offsets_reports_earliest_latest_and_by_time() {
    let broker = Broker::start(&[]);
    let mut connection = broker.connect();
    create_topic(&mut connection, "times", 1, &[], false);
    produce(&mut connection, "times", 0, batch(&values("t", 5), Compression::None), 1);
    let lookup = |connection: &mut Connection, timestamp: i64| {
        let request = ListOffsetsRequest::default().with_replica_id(BrokerId(-1)).with_topics(vec![ListOffsetsTopic::default()
            .with_name(topic_name("times"))
            .with_partitions(vec![ListOffsetsPartition::default().with_partition_index(0).with_timestamp(timestamp)])]);
        let response: ListOffsetsResponse = connection.request(ApiKey::ListOffsets, 7, &request);
        let partition = response.topics[0].partitions[0].clone();
        (partition.error_code, partition.offset)
    };
    assert_eq!(lookup(&mut connection, -2), (0, 0));
    assert_eq!(lookup(&mut connection, -1), (0, 5));
    // The test batch's records carry timestamps 1_700_000_000_000 + index.
    assert_eq!(lookup(&mut connection, 1_700_000_000_000).1, 0);
    assert_eq!(lookup(&mut connection, 4_000_000_000_000).1, -1);
}

#[test]
fn malformed_frames_close_only_their_connection() {
    let broker = Broker::start(&["socket.request.max.bytes=10000"]);
    let mut healthy = broker.connect();
    create_topic(&mut healthy, "safe", 1, &[], false);
    produce(&mut healthy, "safe", 0, batch(&values("keep", 4), Compression::None), -1);

    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("oversized frame", 1_000_000i32.to_be_bytes().to_vec()),
        ("negative length", (-1i32).to_be_bytes().to_vec()),
        ("garbage", b"\x00\x00\x00\x08\xde\xad\xbe\xef\xde\xad\xbe\xef".to_vec()),
        ("unknown api key", [&10i32.to_be_bytes()[..], &[0x7f, 0x00, 0, 0, 0, 0, 0, 1, 0xff, 0xff]].concat()),
        ("truncated header", [&2i32.to_be_bytes()[..], &[0, 3]].concat()),
    ];
    for (name, bytes) in cases {
        let mut bad = broker.connect();
        std::io::Write::write_all(&mut bad.stream, &bytes).expect("write");
        assert!(bad.is_closed_by_broker(), "{name}: the broker closes the connection");
    }

    let (error, records) = fetch(&mut healthy, "safe", 0, 0, 1 << 20);
    assert_eq!(error, 0);
    assert_eq!(records.len(), 4, "stored data is intact and other connections keep working");
}

#[test]
fn restart_keeps_every_record_and_offset() {
    let mut broker = Broker::start(&[]);
    let mut connection = broker.connect();
    create_topic(&mut connection, "durable", 2, &[], false);
    for partition in 0..2 {
        for round in 0..5 {
            produce(&mut connection, "durable", partition, batch(&values(&format!("r{round}"), 20), Compression::Lz4), -1);
        }
    }
    drop(connection);
    broker.stop();
    broker.restart();

    let mut connection = broker.connect();
    for partition in 0..2 {
        let (error, records) = fetch(&mut connection, "durable", partition, 0, 1 << 20);
        assert_eq!(error, 0);
        assert_eq!(records.len(), 100);
        assert!(records.iter().enumerate().all(|(index, (offset, _))| *offset == index as i64));
        let (error, base) = produce(&mut connection, "durable", partition, batch(&values("after", 1), Compression::None), -1);
        assert_eq!((error, base), (0, 100), "offsets continue after a restart");
    }
}

#[test]
fn forged_array_length_closes_connection() {
    let broker = Broker::start(&[]);
    let mut healthy = broker.connect();
    create_topic(&mut healthy, "still-here", 1, &[], false);

    // Metadata v1 with a topics array that claims i32::MAX entries, and a
    // CreateTopics v2 that claims as many topics with config arrays.
    let forged: [(i16, i16); 2] = [(ApiKey::Metadata as i16, 1), (ApiKey::CreateTopics as i16, 2)];
    for (api_key, version) in forged {
        let mut body = BytesMut::new();
        common::put_i16(&mut body, api_key);
        common::put_i16(&mut body, version);
        body.extend_from_slice(&9i32.to_be_bytes());
        body.extend_from_slice(&(-1i16).to_be_bytes());
        body.extend_from_slice(&i32::MAX.to_be_bytes());
        body.extend_from_slice(&[0, 1, b'a']);
        let mut bad = broker.connect();
        bad.send_raw(&body);
        assert!(bad.is_closed_by_broker(), "api {api_key}: the broker closes the connection");
    }

    let response: MetadataResponse = healthy.request(ApiKey::Metadata, 12, &MetadataRequest::default().with_topics(None));
    assert_eq!(response.topics.len(), 1, "the broker is still serving");
}

#[test]
fn shared_listener_forwards_partitions_and_groups() {
    const MEMBER_ID_REQUIRED: i16 = 79;
    let broker = Broker::start(&["listener.mode=shared"]);
    let mut connection = broker.connect();
    create_topic(&mut connection, "one-port", 4, &[], false);

    let metadata: MetadataResponse = connection.request(ApiKey::Metadata, 12, &MetadataRequest::default().with_topics(None));
    assert_eq!(metadata.brokers.len(), 1, "all shards hide behind one advertised broker");
    assert!(metadata.topics[0].partitions.iter().all(|partition| partition.leader_id.0 == 0));

    for partition in 0..4 {
        let (error, base) = produce(&mut connection, "one-port", partition, batch(&values("s", 5), Compression::None), 1);
        assert_eq!((error, base), (0, 0));
        let (error, records) = fetch(&mut connection, "one-port", partition, 0, 1 << 20);
        assert_eq!(error, 0);
        assert_eq!(records.len(), 5);
    }

    // Groups hash to both shards. Each coordinator handles JoinGroup itself, so no response is NOT_COORDINATOR.
    let group_ids: Vec<String> = (0..8).map(|index| format!("group-{index}")).collect();
    let owners: std::collections::BTreeSet<usize> =
        group_ids.iter().map(|group| weir::metadata::group_shard(group, 2)).collect();
    assert_eq!(owners.len(), 2, "the chosen groups cover both shards");
    for group in &group_ids {
        let request = JoinGroupRequest::default()
            .with_group_id(GroupId(StrBytes::from_string(group.clone())))
            .with_session_timeout_ms(10_000)
            .with_rebalance_timeout_ms(10_000)
            .with_protocol_type(StrBytes::from_static_str("consumer"))
            .with_protocols(vec![kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol::default()
                .with_name(StrBytes::from_static_str("range"))]);
        let response: JoinGroupResponse = connection.request(ApiKey::JoinGroup, 9, &request);
        assert_eq!(response.error_code, MEMBER_ID_REQUIRED, "group {group}");
        assert!(!response.member_id.is_empty());
    }
}

#[test]
fn second_broker_on_same_data_dir_fails() {
    let broker = Broker::start(&[]);
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["serve", "--listen", "127.0.0.1:0", "--shards", "2", "--data-dir"])
        .arg(&broker.data_dir)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("run a second weir");
    assert!(!output.status.success(), "a second broker on the same data dir must not start");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("is in use by another weir process"), "stderr: {stderr}");

    let mut connection = broker.connect();
    let response: ApiVersionsResponse = connection.request(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default());
    assert_eq!(response.error_code, 0, "the first broker keeps serving");
}
