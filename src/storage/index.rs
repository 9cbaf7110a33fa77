//! Sparse offset and time indexes of one segment.
//!
//! Both indexes live in memory and are mirrored to files in Kafka's entry
//! layouts (big-endian):
//!
//! ```text
//!  .index      [relative offset u32][position u32]          8 bytes per entry
//!  .timeindex  [timestamp i64][relative offset u32]         12 bytes per entry
//! ```
//!
//! An offset index entry `(o, p)` means that the batch whose base offset is
//! `o` starts at byte `p` of the segment. One entry is added once more than
//! `index.interval.bytes` of batches were written since the previous entry,
//! so a lookup lands at most one interval (plus one batch) before the target.
//! The first batch of a segment is at position 0 and has no entry.
//!
//! A time index entry `(t, o)` is added together with an offset index entry
//! and means that every batch before offset `o` in the segment has a max
//! timestamp of at most `t`. Entries are added only when `t` grows, so the
//! file stays sorted. To find the first batch whose max timestamp reaches a
//! target, start at the last entry with `t` below the target.
//!
//! Both files are hints: recovery trusts an offset index entry only after the
//! batch it points at passed its checks, and rebuilds the rest from a scan.

use super::segment::FilePos;
use super::Offset;

/// Bytes of one `.index` entry.
pub(crate) const OFFSET_ENTRY_BYTES: usize = 8;
/// Bytes of one `.timeindex` entry.
pub(crate) const TIME_ENTRY_BYTES: usize = 12;

/// In-memory offset index of one segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OffsetIndex {
    base_offset: Offset,
    /// (relative offset, position), both strictly increasing.
    entries: Vec<(u32, u32)>,
}

impl OffsetIndex {
    pub(crate) fn new(base_offset: Offset) -> OffsetIndex {
        OffsetIndex {
            base_offset,
            entries: Vec::new(),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Adds an entry for the batch with base `offset` at `position`.
    pub(crate) fn push(&mut self, offset: Offset, position: FilePos) {
        let relative = relative_offset(self.base_offset, offset);
        let position = u32::try_from(position.0).expect("segment positions fit in u32: segments roll before 4 GiB");
        if let Some(&(last_relative, last_position)) = self.entries.last() {
            assert!(
                relative > last_relative && position > last_position,
                "offset index must grow: last entry ({last_relative}, {last_position}), new ({relative}, {position}), base offset {}",
                self.base_offset
            );
        }
        self.entries.push((relative, position));
    }

    /// Returns the entry with the greatest offset at or below `offset`, or
    /// the segment start when there is none.
    pub(crate) fn lookup(&self, offset: Offset) -> (Offset, FilePos) {
        let after = self
            .entries
            .partition_point(|&(relative, _)| self.base_offset + i64::from(relative) <= offset);
        match after.checked_sub(1) {
            Some(i) => self.entry(i),
            None => (self.base_offset, FilePos(0)),
        }
    }

    /// Returns entry `i` as (absolute offset, position).
    pub(crate) fn entry(&self, i: usize) -> (Offset, FilePos) {
        let (relative, position) = self.entries[i];
        (self.base_offset + i64::from(relative), FilePos(u64::from(position)))
    }

    /// Encodes entries `first..` in the `.index` file layout.
    pub(crate) fn encode_from(&self, first: usize, out: &mut Vec<u8>) {
        for &(relative, position) in &self.entries[first..] {
            out.extend_from_slice(&relative.to_be_bytes());
            out.extend_from_slice(&position.to_be_bytes());
        }
    }

    /// Decodes a `.index` file, keeping the longest prefix of entries that
    /// grow strictly and point below `log_size_bytes`. Zero padding and
    /// torn entries end the prefix.
    pub(crate) fn decode(base_offset: Offset, bytes: &[u8], log_size_bytes: u64) -> OffsetIndex {
        let mut index = OffsetIndex::new(base_offset);
        for entry in bytes.chunks_exact(OFFSET_ENTRY_BYTES) {
            let relative = u32::from_be_bytes([entry[0], entry[1], entry[2], entry[3]]);
            let position = u32::from_be_bytes([entry[4], entry[5], entry[6], entry[7]]);
            let grows = match index.entries.last() {
                Some(&(last_relative, last_position)) => relative > last_relative && position > last_position,
                None => relative > 0 && position > 0,
            };
            if !grows || u64::from(position) >= log_size_bytes {
                break;
            }
            index.entries.push((relative, position));
        }
        index
    }
}

/// In-memory time index of one segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TimeIndex {
    base_offset: Offset,
    /// (max timestamp of all earlier batches, relative offset), both increasing.
    entries: Vec<(i64, u32)>,
}

impl TimeIndex {
    pub(crate) fn new(base_offset: Offset) -> TimeIndex {
        TimeIndex {
            base_offset,
            entries: Vec::new(),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Records that every batch before `offset` has a max timestamp of at
    /// most `timestamp_ms`. Ignored unless the timestamp grows.
    pub(crate) fn push(&mut self, timestamp_ms: i64, offset: Offset) {
        if self.entries.last().is_some_and(|&(last, _)| last >= timestamp_ms) {
            return;
        }
        let relative = relative_offset(self.base_offset, offset);
        self.entries.push((timestamp_ms, relative));
    }

    /// Returns the offset from which a scan for the first batch with max
    /// timestamp >= `target_ms` must start.
    pub(crate) fn scan_start(&self, target_ms: i64) -> Offset {
        let below = self.entries.partition_point(|&(timestamp, _)| timestamp < target_ms);
        match below.checked_sub(1) {
            Some(i) => self.base_offset + i64::from(self.entries[i].1),
            None => self.base_offset,
        }
    }

    /// Encodes entries `first..` in the `.timeindex` file layout.
    pub(crate) fn encode_from(&self, first: usize, out: &mut Vec<u8>) {
        for &(timestamp, relative) in &self.entries[first..] {
            out.extend_from_slice(&timestamp.to_be_bytes());
            out.extend_from_slice(&relative.to_be_bytes());
        }
    }
}

/// Both indexes of a segment plus what is needed to extend them.
#[derive(Debug, Clone)]
pub(crate) struct SegmentIndexes {
    pub(crate) offsets: OffsetIndex,
    pub(crate) times: TimeIndex,
    interval_bytes: u64,
    bytes_since_entry: u64,
    /// Max timestamp over all batches so far, `i64::MIN` while empty.
    pub(crate) max_timestamp_ms: i64,
}

impl SegmentIndexes {
    pub(crate) fn new(base_offset: Offset, interval_bytes: u32) -> SegmentIndexes {
        SegmentIndexes {
            offsets: OffsetIndex::new(base_offset),
            times: TimeIndex::new(base_offset),
            interval_bytes: u64::from(interval_bytes.max(1)),
            bytes_since_entry: 0,
            max_timestamp_ms: i64::MIN,
        }
    }

    /// Accounts for the batch at `position`. The same rule runs when writing
    /// and when rebuilding on open, so both produce identical entries.
    pub(crate) fn on_batch(&mut self, position: FilePos, base_offset: Offset, len_bytes: u64, max_timestamp_ms: i64) {
        if self.bytes_since_entry >= self.interval_bytes && position.0 > 0 {
            self.offsets.push(base_offset, position);
            self.times.push(self.max_timestamp_ms, base_offset);
            self.bytes_since_entry = 0;
        }
        self.bytes_since_entry += len_bytes;
        self.max_timestamp_ms = self.max_timestamp_ms.max(max_timestamp_ms);
    }
}

/// Converts an absolute offset into one relative to the segment base.
fn relative_offset(base_offset: Offset, offset: Offset) -> u32 {
    let relative = offset - base_offset;
    u32::try_from(relative).unwrap_or_else(|_| {
        panic!("offset {offset} is not within u32 range of segment base {base_offset}: segments roll before that")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_returns_floor_entry() {
        let mut index = OffsetIndex::new(100);
        index.push(110, FilePos(4_000));
        index.push(125, FilePos(8_500));

        assert_eq!(index.lookup(100), (100, FilePos(0)));
        assert_eq!(index.lookup(109), (100, FilePos(0)));
        assert_eq!(index.lookup(110), (110, FilePos(4_000)));
        assert_eq!(index.lookup(124), (110, FilePos(4_000)));
        assert_eq!(index.lookup(999), (125, FilePos(8_500)));
    }

    #[test]
    fn offset_index_round_trips_through_file_layout() {
        let mut index = OffsetIndex::new(7);
        index.push(9, FilePos(100));
        index.push(20, FilePos(9_000));
        let mut bytes = Vec::new();
        index.encode_from(0, &mut bytes);

        assert_eq!(bytes.len(), 2 * OFFSET_ENTRY_BYTES);
        assert_eq!(OffsetIndex::decode(7, &bytes, 10_000), index);
    }

    #[test]
    fn decode_stops_at_padding_and_bad_positions() {
        let mut index = OffsetIndex::new(0);
        index.push(3, FilePos(100));
        index.push(8, FilePos(300));
        let mut bytes = Vec::new();
        index.encode_from(0, &mut bytes);
        bytes.extend_from_slice(&[0; 16]);

        assert_eq!(OffsetIndex::decode(0, &bytes, 10_000).len(), 2);
        assert_eq!(OffsetIndex::decode(0, &bytes, 300).len(), 1);
        assert_eq!(OffsetIndex::decode(0, &bytes[..12], 10_000).len(), 1);
    }

    #[test]
    fn time_index_scan_start_skips_older_batches() {
        let mut times = TimeIndex::new(0);
        times.push(1_000, 10);
        times.push(900, 15);
        times.push(2_000, 20);

        assert_eq!(times.len(), 2);
        assert_eq!(times.scan_start(500), 0);
        assert_eq!(times.scan_start(1_000), 0);
        assert_eq!(times.scan_start(1_001), 10);
        assert_eq!(times.scan_start(5_000), 20);
    }

    #[test]
    fn indexes_add_entries_every_interval() {
        let mut indexes = SegmentIndexes::new(0, 100);
        let mut position = 0;
        for i in 0..10 {
            indexes.on_batch(FilePos(position), i, 60, 1_000 + i);
            position += 60;
        }

        // Entries at batches 2, 4, 6, 8: each after at least 100 bytes.
        assert_eq!(indexes.offsets.len(), 4);
        assert_eq!(indexes.offsets.entry(0), (2, FilePos(120)));
        assert_eq!(indexes.times.scan_start(1_003), 2);
        assert_eq!(indexes.times.scan_start(1_004), 4);
        assert_eq!(indexes.max_timestamp_ms, 1_009);
    }
}
