//! `weir-bench encode`: compares the client's hand-built batch encoder with
//! kafka-protocol's `RecordBatchEncoder` on the same records, and times
//! decoding them with `RecordBatchDecoder`.

use std::time::{Duration, Instant};

use anyhow::Result;
use bytes::{Bytes, BytesMut};
use weir::client::batch::{compression_name, split_batches, BatchBuilder, Compression};

use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::records::{Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType};

/// Throughput of each implementation, in MB of record values per second.
#[derive(Debug)]
pub struct EncodeResult {
    pub hand_built_mb_per_sec: f64,
    pub reference_mb_per_sec: f64,
    pub decode_mb_per_sec: f64,
    pub batch_bytes: usize,
}

/// Encodes batches of `records_per_batch` values of `message_size` bytes
/// for at least `min_time` per implementation.
pub fn measure(
    message_size: usize,
    records_per_batch: usize,
    compression: Compression,
    min_time: Duration,
) -> Result<EncodeResult> {
    let value: Bytes = (0..message_size).map(|index| (index * 31 % 251) as u8).collect::<Vec<u8>>().into();
    let key = Bytes::from_static(b"key-000042");
    let payload_mb = (message_size * records_per_batch) as f64 / 1e6;
    let timestamp_ms = 1_700_000_000_000i64;

    let hand_built = || -> Result<Bytes> {
        let mut builder = BatchBuilder::new(compression, records_per_batch * (message_size + 32) + 64);
        for index in 0..records_per_batch {
            builder.append(timestamp_ms + index as i64, Some(&key), Some(&value), &[]);
        }
        Ok(builder.build()?)
    };

    // The reference encoder takes fully built records, as a client using it would.
    let reference = || -> Result<Bytes> {
        let records: Vec<Record> = (0..records_per_batch)
            .map(|index| Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: -1,
                producer_id: -1,
                producer_epoch: -1,
                timestamp_type: TimestampType::Creation,
                offset: index as i64,
                sequence: index as i32 - 1,
                timestamp: timestamp_ms + index as i64,
                key: Some(key.clone()),
                value: Some(value.clone()),
                headers: IndexMap::new(),
            })
            .collect();
        let mut buf = BytesMut::with_capacity(records_per_batch * (message_size + 32) + 64);
        RecordBatchEncoder::encode(&mut buf, &records, &RecordEncodeOptions { version: 2, compression })?;
        Ok(buf.freeze())
    };

    let batch = hand_built()?;
    let hand_built_mb_per_sec = rate(payload_mb, min_time, || hand_built().map(drop))?;
    let reference_mb_per_sec = rate(payload_mb, min_time, || reference().map(drop))?;
    let decode_mb_per_sec = rate(payload_mb, min_time, || {
        let raw = split_batches(batch.clone())?.remove(0);
        let records = raw.decode()?;
        anyhow::ensure!(records.len() == records_per_batch, "decoded {} records", records.len());
        Ok(())
    })?;
    Ok(EncodeResult { hand_built_mb_per_sec, reference_mb_per_sec, decode_mb_per_sec, batch_bytes: batch.len() })
}

fn rate(payload_mb: f64, min_time: Duration, mut operation: impl FnMut() -> Result<()>) -> Result<f64> {
    // One untimed round warms caches and allocator pools.
    operation()?;
    let started = Instant::now();
    let mut rounds = 0u64;
    while started.elapsed() < min_time {
        operation()?;
        rounds += 1;
    }
    Ok(payload_mb * rounds as f64 / started.elapsed().as_secs_f64())
}

/// Prints one line per compression codec.
pub fn print_all(message_size: usize, records_per_batch: usize, min_time: Duration) -> Result<()> {
    println!("{records_per_batch} records of {message_size} B per batch; MB/s of record values (higher is better)");
    println!(
        "{:<10}{:>14}{:>18}{:>10}{:>16}{:>14}",
        "codec", "hand-built", "RecordBatchEnc.", "ratio", "decode", "batch bytes"
    );
    for compression in [Compression::None, Compression::Gzip, Compression::Snappy, Compression::Lz4, Compression::Zstd]
    {
        let result = measure(message_size, records_per_batch, compression, min_time)?;
        println!(
            "{:<10}{:>14.0}{:>18.0}{:>10.2}{:>16.0}{:>14}",
            compression_name(compression),
            result.hand_built_mb_per_sec,
            result.reference_mb_per_sec,
            result.hand_built_mb_per_sec / result.reference_mb_per_sec,
            result.decode_mb_per_sec,
            result.batch_bytes
        );
    }
    Ok(())
}
