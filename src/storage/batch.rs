//! The Kafka v2 record batch header: parsing, validation and patching.
//!
//! A v2 batch starts with a fixed 61-byte header, all integers big-endian:
//!
//! ```text
//!  offset  size  field                  covered by CRC32C
//!  ------  ----  ---------------------  -----------------
//!       0     8  baseOffset             no  (broker-owned)
//!       8     4  batchLength            no  (bytes after this field)
//!      12     4  partitionLeaderEpoch   no  (broker-owned)
//!      16     1  magic (= 2)            no
//!      17     4  crc                    no
//!      21     2  attributes             yes
//!      23     4  lastOffsetDelta        yes
//!      27     8  baseTimestamp          yes
//!      35     8  maxTimestamp           yes (broker-owned for LogAppendTime)
//!      43     8  producerId             yes
//!      51     2  producerEpoch          yes
//!      53     4  baseSequence           yes
//!      57     4  recordsCount           yes
//!      61     -  records                yes
//! ```
//!
//! The broker never decodes the records. It checks the framing and the CRC,
//! then patches the fields it owns: the base offset and leader epoch in place
//! (outside the CRC), and for LogAppendTime topics the timestamp type bit and
//! max timestamp, which needs a CRC recompute.

use std::ops::Range;

/// Length of the fixed v2 batch header (base offset through record count).
pub const HEADER_LEN: usize = 61;

/// Bytes before `batchLength` counts: base offset (8) and the length field (4).
pub const LOG_OVERHEAD: usize = 12;

/// Smallest valid `batchLength`: a header with no record bytes.
pub const MIN_BATCH_LENGTH: i32 = (HEADER_LEN - LOG_OVERHEAD) as i32;

/// The only record batch format the broker stores.
pub const MAGIC_V2: i8 = 2;

/// Attribute bits holding the compression codec (none, gzip, snappy, lz4, zstd).
pub const COMPRESSION_CODEC_MASK: i16 = 0x07;

/// Highest codec id Kafka defines (zstd).
pub const COMPRESSION_CODEC_MAX: i16 = 4;

/// Attribute bit set when `maxTimestamp` is the broker's append time.
pub const TIMESTAMP_TYPE_LOG_APPEND_TIME: i16 = 0x08;

const BASE_OFFSET_AT: usize = 0;
const BATCH_LENGTH_AT: usize = 8;
const PARTITION_LEADER_EPOCH_AT: usize = 12;
const MAGIC_AT: usize = 16;
const CRC_AT: usize = 17;
const ATTRIBUTES_AT: usize = 21;
const LAST_OFFSET_DELTA_AT: usize = 23;
const BASE_TIMESTAMP_AT: usize = 27;
const MAX_TIMESTAMP_AT: usize = 35;
const PRODUCER_ID_AT: usize = 43;
const PRODUCER_EPOCH_AT: usize = 51;
const BASE_SEQUENCE_AT: usize = 53;
const RECORDS_COUNT_AT: usize = 57;

/// The fields of a v2 record batch header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    /// Length in bytes after the length field itself.
    pub batch_length: i32,
    pub partition_leader_epoch: i32,
    pub magic: i8,
    pub crc: u32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub records_count: i32,
}

/// Why a batch was rejected. Each maps to one Kafka error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// CORRUPT_MESSAGE (2): length, magic framing or CRC32C wrong.
    #[error("corrupt batch: {0}")]
    Corrupt(String),
    /// INVALID_RECORD (87): well-framed but inconsistent (count vs delta, empty set).
    #[error("invalid record batch: {0}")]
    InvalidRecord(String),
    /// MESSAGE_TOO_LARGE (10): batch larger than max.message.bytes.
    #[error("batch of {size_bytes} bytes exceeds max.message.bytes {max_bytes}")]
    TooLarge { size_bytes: usize, max_bytes: usize },
    /// UNSUPPORTED_COMPRESSION_TYPE (76).
    #[error("unsupported compression codec {0}")]
    UnsupportedCompression(i16),
    /// UNSUPPORTED_FOR_MESSAGE_FORMAT (43): magic other than 2.
    #[error("unsupported record batch magic {0}")]
    UnsupportedMagic(i8),
}

impl BatchHeader {
    /// Parses the header at the start of `buf` without checking the CRC.
    pub fn parse(buf: &[u8]) -> Result<BatchHeader, BatchError> {
        if buf.len() < HEADER_LEN {
            return Err(BatchError::Corrupt(format!(
                "{} bytes left, a v2 batch header needs {HEADER_LEN}",
                buf.len()
            )));
        }
        Ok(BatchHeader {
            base_offset: read_i64(buf, BASE_OFFSET_AT),
            batch_length: read_i32(buf, BATCH_LENGTH_AT),
            partition_leader_epoch: read_i32(buf, PARTITION_LEADER_EPOCH_AT),
            magic: buf[MAGIC_AT] as i8,
            crc: read_i32(buf, CRC_AT) as u32,
            attributes: read_i16(buf, ATTRIBUTES_AT),
            last_offset_delta: read_i32(buf, LAST_OFFSET_DELTA_AT),
            base_timestamp: read_i64(buf, BASE_TIMESTAMP_AT),
            max_timestamp: read_i64(buf, MAX_TIMESTAMP_AT),
            producer_id: read_i64(buf, PRODUCER_ID_AT),
            producer_epoch: read_i16(buf, PRODUCER_EPOCH_AT),
            base_sequence: read_i32(buf, BASE_SEQUENCE_AT),
            records_count: read_i32(buf, RECORDS_COUNT_AT),
        })
    }

    /// Total size of the batch on disk: 12 + batch_length.
    pub fn total_len(&self) -> usize {
        LOG_OVERHEAD + self.batch_length.max(0) as usize
    }

    /// Offset of the last record: base offset plus last offset delta.
    pub fn last_offset(&self) -> i64 {
        self.base_offset + i64::from(self.last_offset_delta)
    }

    /// Compression codec id from the attributes (0 none .. 4 zstd).
    pub fn compression_codec(&self) -> i16 {
        self.attributes & COMPRESSION_CODEC_MASK
    }

    /// True when the batch comes from an idempotent or transactional producer.
    pub fn has_producer_id(&self) -> bool {
        self.producer_id >= 0
    }

    /// Sequence number of the last record, wrapping from `i32::MAX` to 0 as
    /// Kafka producers do.
    pub fn last_sequence(&self) -> i32 {
        let sum = i64::from(self.base_sequence) + i64::from(self.last_offset_delta);
        (sum % (i64::from(i32::MAX) + 1)) as i32
    }
}

/// Validates the record set of one produce partition: one or more complete v2
/// batches, each with a correct CRC32C, supported compression, records count
/// equal to last_offset_delta + 1, and at most `max_message_bytes`. Returns
/// each batch's byte range and header. An empty set is InvalidRecord.
pub fn validate(records: &[u8], max_message_bytes: usize) -> Result<Vec<(Range<usize>, BatchHeader)>, BatchError> {
    if records.is_empty() {
        return Err(BatchError::InvalidRecord("empty record set".into()));
    }

    let mut batches = Vec::new();
    let mut pos = 0;
    while pos < records.len() {
        let header = validate_one(&records[pos..], max_message_bytes)?;
        let end = pos + header.total_len();
        batches.push((pos..end, header));
        pos = end;
    }
    Ok(batches)
}

/// Validates the batch at the start of `buf` and returns its header.
fn validate_one(buf: &[u8], max_message_bytes: usize) -> Result<BatchHeader, BatchError> {
    if buf.len() <= MAGIC_AT {
        return Err(BatchError::Corrupt(format!(
            "{} trailing bytes are too short to hold a batch header",
            buf.len()
        )));
    }
    let magic = buf[MAGIC_AT] as i8;
    if magic != MAGIC_V2 {
        return Err(BatchError::UnsupportedMagic(magic));
    }

    let header = BatchHeader::parse(buf)?;
    if header.batch_length < MIN_BATCH_LENGTH {
        return Err(BatchError::Corrupt(format!(
            "batch length {} is below the minimum {MIN_BATCH_LENGTH}",
            header.batch_length
        )));
    }
    let size_bytes = header.total_len();
    if size_bytes > buf.len() {
        return Err(BatchError::Corrupt(format!(
            "batch of {size_bytes} bytes extends past the {} bytes received",
            buf.len()
        )));
    }
    if size_bytes > max_message_bytes {
        return Err(BatchError::TooLarge {
            size_bytes,
            max_bytes: max_message_bytes,
        });
    }

    let batch = &buf[..size_bytes];
    let computed = compute_crc(batch);
    if computed != header.crc {
        return Err(BatchError::Corrupt(format!(
            "CRC32C mismatch: header has {:#010x}, content has {computed:#010x}",
            header.crc
        )));
    }

    check_semantics(&header)?;
    Ok(header)
}

/// Checks the header fields that the CRC cannot vouch for.
fn check_semantics(header: &BatchHeader) -> Result<(), BatchError> {
    let codec = header.compression_codec();
    if !(0..=COMPRESSION_CODEC_MAX).contains(&codec) {
        return Err(BatchError::UnsupportedCompression(codec));
    }
    if header.records_count <= 0 {
        return Err(BatchError::InvalidRecord(format!(
            "batch contains {} records, at least one is required",
            header.records_count
        )));
    }
    if i64::from(header.records_count) != i64::from(header.last_offset_delta) + 1 {
        return Err(BatchError::InvalidRecord(format!(
            "records count {} does not match last offset delta {} + 1",
            header.records_count, header.last_offset_delta
        )));
    }
    if header.has_producer_id() && header.base_sequence < 0 {
        return Err(BatchError::InvalidRecord(format!(
            "producer {} sent base sequence {}, idempotent batches need a sequence >= 0",
            header.producer_id, header.base_sequence
        )));
    }
    Ok(())
}

/// Computes the CRC32C of a whole batch over attributes..end.
pub fn compute_crc(batch: &[u8]) -> u32 {
    crc32c::crc32c(&batch[ATTRIBUTES_AT..])
}

/// Returns true when the CRC stored in `batch` matches its content.
pub fn crc_matches(batch: &[u8]) -> bool {
    batch.len() >= HEADER_LEN && read_i32(batch, CRC_AT) as u32 == compute_crc(batch)
}

/// Overwrites the base offset. The field lies outside the CRC.
pub fn set_base_offset(batch: &mut [u8], base_offset: i64) {
    batch[BASE_OFFSET_AT..BASE_OFFSET_AT + 8].copy_from_slice(&base_offset.to_be_bytes());
}

/// Overwrites the partition leader epoch. The field lies outside the CRC.
pub fn set_partition_leader_epoch(batch: &mut [u8], epoch: i32) {
    let at = PARTITION_LEADER_EPOCH_AT;
    batch[at..at + 4].copy_from_slice(&epoch.to_be_bytes());
}

/// Marks the batch as LogAppendTime with `time_ms` as its max timestamp and
/// recomputes the CRC, since both fields are covered by it.
pub fn set_log_append_time(batch: &mut [u8], time_ms: i64) {
    let attributes = read_i16(batch, ATTRIBUTES_AT) | TIMESTAMP_TYPE_LOG_APPEND_TIME;
    batch[ATTRIBUTES_AT..ATTRIBUTES_AT + 2].copy_from_slice(&attributes.to_be_bytes());
    batch[MAX_TIMESTAMP_AT..MAX_TIMESTAMP_AT + 8].copy_from_slice(&time_ms.to_be_bytes());

    let crc = compute_crc(batch);
    batch[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
}

fn read_i16(buf: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([buf[at], buf[at + 1]])
}

fn read_i32(buf: &[u8], at: usize) -> i32 {
    let mut bytes = [0; 4];
    bytes.copy_from_slice(&buf[at..at + 4]);
    i32::from_be_bytes(bytes)
}

fn read_i64(buf: &[u8], at: usize) -> i64 {
    let mut bytes = [0; 8];
    bytes.copy_from_slice(&buf[at..at + 8]);
    i64::from_be_bytes(bytes)
}

/// Builder of uncompressed v2 batches for tests, benchmarks and tools. The
/// broker itself never encodes records.
#[derive(Debug, Clone)]
pub struct BatchBuilder {
    base_timestamp_ms: i64,
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
    attributes: i16,
    values: Vec<Vec<u8>>,
}

impl BatchBuilder {
    /// Starts a batch without a producer id whose records carry timestamps
    /// `base_timestamp_ms`, `base_timestamp_ms + 1`, ...
    pub fn new(base_timestamp_ms: i64) -> BatchBuilder {
        BatchBuilder {
            base_timestamp_ms,
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: -1,
            attributes: 0,
            values: Vec::new(),
        }
    }

    /// Sets the idempotent producer fields.
    pub fn producer(mut self, producer_id: i64, producer_epoch: i16, base_sequence: i32) -> BatchBuilder {
        self.producer_id = producer_id;
        self.producer_epoch = producer_epoch;
        self.base_sequence = base_sequence;
        self
    }

    /// Sets the raw attributes field (codec bits are not acted upon: the
    /// records stay uncompressed).
    pub fn attributes(mut self, attributes: i16) -> BatchBuilder {
        self.attributes = attributes;
        self
    }

    /// Adds one record with a null key.
    pub fn record(mut self, value: &[u8]) -> BatchBuilder {
        self.values.push(value.to_vec());
        self
    }

    /// Adds `record_count` records whose values are `value_bytes` long.
    pub fn records(mut self, record_count: usize, value_bytes: usize) -> BatchBuilder {
        for i in 0..record_count {
            let fill = (i % 251) as u8;
            self.values.push(vec![fill; value_bytes]);
        }
        self
    }

    /// Encodes the batch with base offset 0 and a correct CRC.
    pub fn build(&self) -> Vec<u8> {
        let mut records = Vec::new();
        for (i, value) in self.values.iter().enumerate() {
            encode_record(&mut records, i, value);
        }

        let record_count = self.values.len() as i32;
        let last_offset_delta = record_count - 1;
        let max_timestamp = self.base_timestamp_ms + i64::from(last_offset_delta.max(0));
        let batch_length = (HEADER_LEN - LOG_OVERHEAD + records.len()) as i32;

        let mut batch = Vec::with_capacity(HEADER_LEN + records.len());
        batch.extend_from_slice(&0i64.to_be_bytes());
        batch.extend_from_slice(&batch_length.to_be_bytes());
        batch.extend_from_slice(&0i32.to_be_bytes());
        batch.push(MAGIC_V2 as u8);
        batch.extend_from_slice(&0u32.to_be_bytes());
        batch.extend_from_slice(&self.attributes.to_be_bytes());
        batch.extend_from_slice(&last_offset_delta.to_be_bytes());
        batch.extend_from_slice(&self.base_timestamp_ms.to_be_bytes());
        batch.extend_from_slice(&max_timestamp.to_be_bytes());
        batch.extend_from_slice(&self.producer_id.to_be_bytes());
        batch.extend_from_slice(&self.producer_epoch.to_be_bytes());
        batch.extend_from_slice(&self.base_sequence.to_be_bytes());
        batch.extend_from_slice(&record_count.to_be_bytes());
        batch.extend_from_slice(&records);

        let crc = compute_crc(&batch);
        batch[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
        batch
    }
}

/// Appends one record (null key, no headers) in the v2 record encoding.
fn encode_record(out: &mut Vec<u8>, index: usize, value: &[u8]) {
    let mut body = Vec::with_capacity(value.len() + 16);
    body.push(0); // attributes
    put_varlong(&mut body, index as i64); // timestamp delta
    put_varlong(&mut body, index as i64); // offset delta
    put_varlong(&mut body, -1); // key length: null key
    put_varlong(&mut body, value.len() as i64);
    body.extend_from_slice(value);
    put_varlong(&mut body, 0); // header count

    put_varlong(out, body.len() as i64);
    out.extend_from_slice(&body);
}

/// Writes a zigzag varint, the integer encoding of v2 record fields.
fn put_varlong(out: &mut Vec<u8>, value: i64) {
    let mut zigzag = ((value << 1) ^ (value >> 63)) as u64;
    while zigzag >= 0x80 {
        out.push((zigzag as u8) | 0x80);
        zigzag >>= 7;
    }
    out.push(zigzag as u8);
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 1 << 20;

    fn batch_of(record_count: usize) -> Vec<u8> {
        BatchBuilder::new(1_000).records(record_count, 10).build()
    }

    /// Rewrites a CRC-covered i32 field and fixes the CRC so only the field is wrong.
    fn with_i32_field(mut batch: Vec<u8>, at: usize, value: i32) -> Vec<u8> {
        batch[at..at + 4].copy_from_slice(&value.to_be_bytes());
        let crc = compute_crc(&batch);
        batch[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
        batch
    }

    #[test]
    fn parse_reads_every_field() {
        let batch = BatchBuilder::new(5_000).producer(42, 3, 7).records(4, 8).build();
        let header = BatchHeader::parse(&batch).unwrap();

        assert_eq!(header.base_offset, 0);
        assert_eq!(header.total_len(), batch.len());
        assert_eq!(header.magic, 2);
        assert_eq!(header.crc, compute_crc(&batch));
        assert_eq!(header.last_offset_delta, 3);
        assert_eq!(header.base_timestamp, 5_000);
        assert_eq!(header.max_timestamp, 5_003);
        assert_eq!(header.producer_id, 42);
        assert_eq!(header.producer_epoch, 3);
        assert_eq!(header.base_sequence, 7);
        assert_eq!(header.records_count, 4);
        assert_eq!(header.last_sequence(), 10);
    }

    #[test]
    fn parse_rejects_short_buffer() {
        let batch = batch_of(1);
        assert!(matches!(BatchHeader::parse(&batch[..60]), Err(BatchError::Corrupt(_))));
    }

    #[test]
    fn validate_accepts_several_batches() {
        let first = batch_of(3);
        let second = batch_of(1);
        let mut set = first.clone();
        set.extend_from_slice(&second);

        let batches = validate(&set, MAX).unwrap();

        assert_eq!(batches.len(), 2);
        assert_eq!(batches[0].0, 0..first.len());
        assert_eq!(batches[1].0, first.len()..set.len());
        assert_eq!(batches[0].1.records_count, 3);
        assert_eq!(batches[1].1.records_count, 1);
    }

    #[test]
    fn validate_rejects_empty_set() {
        assert!(matches!(validate(&[], MAX), Err(BatchError::InvalidRecord(_))));
    }

    #[test]
    fn validate_rejects_truncated_batch() {
        let batch = batch_of(2);
        let cut = &batch[..batch.len() - 1];
        assert!(matches!(validate(cut, MAX), Err(BatchError::Corrupt(_))));
        assert!(matches!(validate(&batch[..30], MAX), Err(BatchError::Corrupt(_))));
        assert!(matches!(validate(&batch[..10], MAX), Err(BatchError::Corrupt(_))));
    }

    #[test]
    fn validate_rejects_trailing_garbage() {
        let mut set = batch_of(2);
        set.extend_from_slice(&[0; 5]);
        assert!(matches!(validate(&set, MAX), Err(BatchError::Corrupt(_))));
    }

    #[test]
    fn validate_rejects_short_batch_length() {
        let mut batch = batch_of(1);
        batch[BATCH_LENGTH_AT..BATCH_LENGTH_AT + 4].copy_from_slice(&48i32.to_be_bytes());
        assert!(matches!(validate(&batch, MAX), Err(BatchError::Corrupt(_))));

        batch[BATCH_LENGTH_AT..BATCH_LENGTH_AT + 4].copy_from_slice(&(-5i32).to_be_bytes());
        assert!(matches!(validate(&batch, MAX), Err(BatchError::Corrupt(_))));
    }

    #[test]
    fn validate_rejects_other_magic() {
        let mut batch = batch_of(1);
        batch[MAGIC_AT] = 1;
        assert_eq!(validate(&batch, MAX), Err(BatchError::UnsupportedMagic(1)));
    }

    #[test]
    fn validate_rejects_flipped_bit() {
        let mut batch = batch_of(2);
        let last = batch.len() - 1;
        batch[last] ^= 0x01;
        assert!(matches!(validate(&batch, MAX), Err(BatchError::Corrupt(_))));
    }

    #[test]
    fn validate_ignores_broker_owned_fields_in_crc() {
        let mut batch = batch_of(2);
        set_base_offset(&mut batch, 1234);
        set_partition_leader_epoch(&mut batch, 9);

        let batches = validate(&batch, MAX).unwrap();

        assert_eq!(batches[0].1.base_offset, 1234);
        assert_eq!(batches[0].1.partition_leader_epoch, 9);
    }

    #[test]
    fn validate_rejects_unknown_codec() {
        let batch = BatchBuilder::new(0).attributes(5).records(1, 4).build();
        assert_eq!(validate(&batch, MAX), Err(BatchError::UnsupportedCompression(5)));

        let zstd = BatchBuilder::new(0).attributes(4).records(1, 4).build();
        assert!(validate(&zstd, MAX).is_ok());
    }

    #[test]
    fn validate_rejects_count_delta_mismatch() {
        let batch = with_i32_field(batch_of(3), RECORDS_COUNT_AT, 2);
        assert!(matches!(validate(&batch, MAX), Err(BatchError::InvalidRecord(_))));

        let batch = with_i32_field(batch_of(3), LAST_OFFSET_DELTA_AT, 5);
        assert!(matches!(validate(&batch, MAX), Err(BatchError::InvalidRecord(_))));
    }

    #[test]
    fn validate_rejects_zero_records() {
        let batch = with_i32_field(batch_of(1), RECORDS_COUNT_AT, 0);
        let batch = with_i32_field(batch, LAST_OFFSET_DELTA_AT, -1);
        assert!(matches!(validate(&batch, MAX), Err(BatchError::InvalidRecord(_))));
    }

    #[test]
    fn validate_rejects_idempotent_batch_without_sequence() {
        let batch = BatchBuilder::new(0).producer(7, 0, -1).records(1, 4).build();
        assert!(matches!(validate(&batch, MAX), Err(BatchError::InvalidRecord(_))));
    }

    #[test]
    fn validate_rejects_oversized_batch() {
        let batch = batch_of(10);
        let limit = batch.len() - 1;
        assert_eq!(
            validate(&batch, limit),
            Err(BatchError::TooLarge {
                size_bytes: batch.len(),
                max_bytes: limit
            })
        );
        assert!(validate(&batch, batch.len()).is_ok());
    }

    #[test]
    fn log_append_time_keeps_crc_valid() {
        let mut batch = batch_of(2);
        set_log_append_time(&mut batch, 99_999);

        let header = validate(&batch, MAX).unwrap()[0].1;

        assert_eq!(header.max_timestamp, 99_999);
        assert_ne!(header.attributes & TIMESTAMP_TYPE_LOG_APPEND_TIME, 0);
        assert!(crc_matches(&batch));
    }

    #[test]
    fn last_sequence_wraps_at_i32_max() {
        let batch = BatchBuilder::new(0).producer(1, 0, i32::MAX - 1).records(4, 1).build();
        let header = BatchHeader::parse(&batch).unwrap();
        assert_eq!(header.last_sequence(), 1);
    }

    #[test]
    fn varint_encoding_matches_zigzag() {
        let cases: [(i64, &[u8]); 5] = [(0, &[0]), (-1, &[1]), (1, &[2]), (63, &[0x7e]), (64, &[0x80, 0x01])];
        for (value, expected) in cases {
            let mut out = Vec::new();
            put_varlong(&mut out, value);
            assert_eq!(out, expected, "value {value}");
        }
    }
}
