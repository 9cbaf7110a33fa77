//! The Kafka v2 record batch header: parsing, validation and patching.
//!
//! CONTRACT for the storage helper; bodies to be filled in.

/// Length of the fixed v2 batch header (base offset through record count).
pub const HEADER_LEN: usize = 61;

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
        let _ = buf;
        todo!()
    }

    /// Total size of the batch on disk: 12 + batch_length.
    pub fn total_len(&self) -> usize {
        12 + self.batch_length as usize
    }
}

/// Validates the record set of one produce partition: one or more complete v2
/// batches, each with a correct CRC32C, supported compression, records count
/// equal to last_offset_delta + 1, and at most `max_message_bytes`. Returns
/// each batch's byte range and header. An empty set is InvalidRecord.
pub fn validate(records: &[u8], max_message_bytes: usize) -> Result<Vec<(std::ops::Range<usize>, BatchHeader)>, BatchError> {
    let _ = (records, max_message_bytes);
    todo!()
}
