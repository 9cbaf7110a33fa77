//! Fetch: gathers stored batches from the owner shards and encodes the
//! response by hand, so record bytes go from storage to the socket without
//! being re-encoded.
//!
//! Long polls: when the first read finds fewer than `min_bytes`, the handler
//! requests a report of the next append from each partition's owner and waits for the
//! first report or `max_wait_ms`, then reads again. Nothing polls on a timer.
//!
//! Sessions (KIP-227) are not kept: every response carries session id 0, which
//! tells clients to keep sending full fetch requests.

use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use futures::future::{join_all, select, select_all, Either};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::FetchRequest;

use crate::runtime;
use crate::shard::{FetchOutcome, Shard, ShardMessage};

/// First Fetch version with flexible (compact, tagged) encoding.
const FIRST_FLEXIBLE_VERSION: i16 = 12;

/// One partition a fetch request names.
struct PartitionFetch {
    topic: String,
    partition: i32,
    offset: i64,
    max_bytes: usize,
    known: bool,
}

pub async fn fetch(shard: &Rc<Shard>, request: FetchRequest, version: i16, correlation_id: i32) -> Vec<Bytes> {
    let wait = Duration::from_millis(request.max_wait_ms.max(0) as u64);
    let deadline = Instant::now() + wait;
    let min_bytes = request.min_bytes.max(0) as usize;
    let response_max_bytes = if request.max_bytes <= 0 { i32::MAX as usize } else { request.max_bytes as usize };

    let mut wanted = Vec::new();
    for topic in &request.topics {
        let name = topic.topic.0.to_string();
        let partition_count = shard.metadata.borrow().topics.get(&name).map_or(0, |info| info.partition_count);
        for partition in &topic.partitions {
            wanted.push(PartitionFetch {
                topic: name.clone(),
                partition: partition.partition,
                offset: partition.fetch_offset,
                max_bytes: partition.partition_max_bytes.max(0) as usize,
                known: partition.partition >= 0 && partition.partition < partition_count,
            });
        }
    }

    let outcomes = loop {
        let mut outcomes = read_all(shard, &wanted, response_max_bytes).await;
        let total_bytes = trim_to_limit(&mut outcomes, response_max_bytes);
        let has_error = outcomes.iter().any(|outcome| outcome.error_code != 0);
        let now = Instant::now();
        if total_bytes >= min_bytes || has_error || now >= deadline || wanted.is_empty() {
            break outcomes;
        }
        wait_for_any_append(shard, &wanted, deadline - now).await;
    };
    encode_response(&request, &wanted, outcomes, version, correlation_id)
}

async fn read_all(shard: &Rc<Shard>, wanted: &[PartitionFetch], response_max_bytes: usize) -> Vec<FetchOutcome> {
    let reads = wanted.iter().map(|item| async move {
        if !item.known {
            return FetchOutcome {
                error_code: ResponseError::UnknownTopicOrPartition.code(),
                high_watermark: -1,
                log_start_offset: -1,
                ..Default::default()
            };
        }
        let owner = shard.owner_of(&item.topic, item.partition);
        let max_bytes = item.max_bytes.min(response_max_bytes);
        shard
            .call(owner, |reply| ShardMessage::Fetch {
                topic: item.topic.clone(),
                partition: item.partition,
                offset: item.offset,
                max_bytes,
                reply,
            })
            .await
            .unwrap_or(FetchOutcome {
                error_code: ResponseError::NotLeaderOrFollower.code(),
                high_watermark: -1,
                log_start_offset: -1,
                ..Default::default()
            })
    });
    join_all(reads).await
}

/// Drops whole batches past the response limit, keeping the first batch of
/// the response even when it alone exceeds the limit (KIP-74). Returns the
/// bytes kept.
fn trim_to_limit(outcomes: &mut [FetchOutcome], response_max_bytes: usize) -> usize {
    let mut total = 0usize;
    for outcome in outcomes.iter_mut() {
        let mut kept = 0;
        for batch in &outcome.batches {
            if total > 0 && total + batch.len() > response_max_bytes {
                break;
            }
            total += batch.len();
            kept += 1;
        }
        outcome.batches.truncate(kept);
        outcome.total_bytes = outcome.batches.iter().map(Bytes::len).sum();
    }
    total
}

async fn wait_for_any_append(shard: &Rc<Shard>, wanted: &[PartitionFetch], wait: Duration) {
    let waits: Vec<_> = wanted
        .iter()
        .filter(|item| item.known)
        .map(|item| {
            let owner = shard.owner_of(&item.topic, item.partition);
            Box::pin(shard.call(owner, |reply| ShardMessage::WaitForData {
                topic: item.topic.clone(),
                partition: item.partition,
                offset: item.offset,
                wait,
                reply,
            }))
        })
        .collect();
    let timer = Box::pin(runtime::sleep(wait));
    if waits.is_empty() {
        timer.await;
        return;
    }
    match select(select_all(waits), timer).await {
        Either::Left(_) | Either::Right(_) => {}
    }
}

fn encode_response(
    request: &FetchRequest,
    wanted: &[PartitionFetch],
    outcomes: Vec<FetchOutcome>,
    version: i16,
    correlation_id: i32,
) -> Vec<Bytes> {
    let flexible = version >= FIRST_FLEXIBLE_VERSION;
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut head = BytesMut::with_capacity(128);

    head.put_i32(correlation_id);
    if flexible {
        put_unsigned_varint(&mut head, 0);
    }
    head.put_i32(0); // throttle_time_ms
    if version >= 7 {
        head.put_i16(0); // error_code
        head.put_i32(0); // session_id: no session
    }

    let mut outcomes = outcomes.into_iter();
    let mut index = 0;
    put_array_len(&mut head, request.topics.len(), flexible);
    for topic in &request.topics {
        put_string(&mut head, &topic.topic.0, flexible);
        put_array_len(&mut head, topic.partitions.len(), flexible);
        for _ in &topic.partitions {
            let item = &wanted[index];
            index += 1;
            let outcome = outcomes.next().expect("one outcome per partition");
            head.put_i32(item.partition);
            head.put_i16(outcome.error_code);
            head.put_i64(outcome.high_watermark);
            head.put_i64(outcome.high_watermark); // last_stable_offset: no transactions
            if version >= 5 {
                head.put_i64(outcome.log_start_offset);
            }
            // aborted_transactions: null
            if flexible {
                put_unsigned_varint(&mut head, 0);
            } else {
                head.put_i32(-1);
            }
            if version >= 11 {
                head.put_i32(-1); // preferred_read_replica
            }
            let records_bytes = outcome.total_bytes;
            if flexible {
                put_unsigned_varint(&mut head, records_bytes as u32 + 1);
            } else {
                head.put_i32(records_bytes as i32);
            }
            if !outcome.batches.is_empty() {
                chunks.push(head.split().freeze());
                chunks.extend(outcome.batches);
            }
            if flexible {
                put_unsigned_varint(&mut head, 0); // partition tagged fields
            }
        }
        if flexible {
            put_unsigned_varint(&mut head, 0); // topic tagged fields
        }
    }
    if flexible {
        put_unsigned_varint(&mut head, 0); // response tagged fields
    }
    chunks.push(head.freeze());

    let length: usize = chunks.iter().map(Bytes::len).sum();
    let mut frame = Vec::with_capacity(chunks.len() + 1);
    frame.push(Bytes::copy_from_slice(&(length as i32).to_be_bytes()));
    frame.extend(chunks);
    frame
}

fn put_unsigned_varint(buffer: &mut BytesMut, mut value: u32) {
    while value >= 0x80 {
        buffer.put_u8((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    buffer.put_u8(value as u8);
}

fn put_array_len(buffer: &mut BytesMut, len: usize, flexible: bool) {
    if flexible {
        put_unsigned_varint(buffer, len as u32 + 1);
    } else {
        buffer.put_i32(len as i32);
    }
}

fn put_string(buffer: &mut BytesMut, text: &str, flexible: bool) {
    if flexible {
        put_unsigned_varint(buffer, text.len() as u32 + 1);
    } else {
        buffer.put_i16(text.len() as i16);
    }
    buffer.put_slice(text.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
    use kafka_protocol::messages::{FetchResponse, ResponseHeader, TopicName};
    use kafka_protocol::protocol::{Decodable, StrBytes};

    fn request() -> FetchRequest {
        FetchRequest::default().with_topics(vec![FetchTopic::default()
            .with_topic(TopicName(StrBytes::from_static_str("events")))
            .with_partitions(vec![
                FetchPartition::default().with_partition(0).with_fetch_offset(5),
                FetchPartition::default().with_partition(1),
            ])])
    }

    fn wanted() -> Vec<PartitionFetch> {
        (0..2)
            .map(|partition| PartitionFetch {
                topic: "events".into(),
                partition,
                offset: 0,
                max_bytes: 1000,
                known: true,
            })
            .collect()
    }

    /// Encodes with our encoder and decodes with the kafka-protocol crate.
    fn round_trip(version: i16) {
        let batch = Bytes::from(vec![7u8; 70]);
        let outcomes = vec![
            FetchOutcome {
                error_code: 0,
                high_watermark: 9,
                log_start_offset: 0,
                batches: vec![batch.clone(), batch.clone()],
                total_bytes: 140,
            },
            FetchOutcome { error_code: 1, high_watermark: -1, log_start_offset: -1, batches: vec![], total_bytes: 0 },
        ];
        let chunks = encode_response(&request(), &wanted(), outcomes, version, 42);
        let mut joined = BytesMut::new();
        for chunk in &chunks {
            joined.extend_from_slice(chunk);
        }
        let mut frame = joined.freeze();
        let length = i32::from_be_bytes(frame[..4].try_into().unwrap()) as usize;
        assert_eq!(length, frame.len() - 4);
        bytes::Buf::advance(&mut frame, 4);
        let header_version = if version >= FIRST_FLEXIBLE_VERSION { 1 } else { 0 };
        let header = ResponseHeader::decode(&mut frame, header_version).expect("header");
        assert_eq!(header.correlation_id, 42);
        let response = FetchResponse::decode(&mut frame, version).expect("body");
        assert!(frame.is_empty(), "v{version}: {} trailing bytes", frame.len());
        let partitions = &response.responses[0].partitions;
        assert_eq!(partitions[0].high_watermark, 9);
        assert_eq!(partitions[0].records.as_ref().map(Bytes::len), Some(140));
        assert_eq!(partitions[1].error_code, 1);
        assert_eq!(partitions[1].records.as_ref().map(Bytes::len), Some(0));
    }

    #[test]
    fn encoder_matches_codec_for_every_version() {
        for version in 4..=12 {
            round_trip(version);
        }
    }

    #[test]
    fn first_batch_is_kept_over_the_limit() {
        let big = Bytes::from(vec![0u8; 500]);
        let mut outcomes = vec![
            FetchOutcome { batches: vec![big.clone(), big.clone()], total_bytes: 1000, ..Default::default() },
            FetchOutcome { batches: vec![big.clone()], total_bytes: 500, ..Default::default() },
        ];
        let total = trim_to_limit(&mut outcomes, 100);
        assert_eq!(total, 500);
        assert_eq!(outcomes[0].batches.len(), 1);
        assert!(outcomes[1].batches.is_empty());
    }
}
