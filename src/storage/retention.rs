//! Time and size retention: which whole segments to delete.
//!
//! Retention removes a prefix of the segment list, oldest first, and never
//! the active (last) segment. A segment goes when either rule selects it:
//!
//! - `retention.bytes`: while the log minus the oldest remaining segment is
//!   still at least the limit, that segment is deleted (as in Kafka, the log
//!   can stay above the limit by less than one segment);
//! - `retention.ms`: a segment whose largest batch max timestamp is more than
//!   `retention.ms` older than now is deleted, stopping at the first segment
//!   that is not.
//!
//! After deleting, the log start offset moves to the base offset of the first
//! remaining segment.

use std::io;
use std::path::Path;

use super::segment::{self, INDEX_SUFFIX, LOG_SUFFIX, TIME_INDEX_SUFFIX};
use super::{Offset, StorageError};

/// Size and age of one segment, as retention sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SegmentSummary {
    pub(crate) size_bytes: u64,
    /// Largest batch max timestamp, `i64::MIN` for an empty segment.
    pub(crate) max_timestamp_ms: i64,
}

/// Returns how many segments at the front of `segments` (oldest first, the
/// last one active) retention deletes.
pub(crate) fn expired_segment_count(
    segments: &[SegmentSummary],
    retention_bytes: Option<u64>,
    retention_ms: Option<u64>,
    now_ms: i64,
) -> usize {
    let deletable = segments.len().saturating_sub(1);

    let mut by_size = 0;
    if let Some(limit_bytes) = retention_bytes {
        let total_bytes: u64 = segments.iter().map(|segment| segment.size_bytes).sum();
        let mut excess_bytes = total_bytes.saturating_sub(limit_bytes);
        while by_size < deletable && excess_bytes >= segments[by_size].size_bytes && excess_bytes > 0 {
            excess_bytes -= segments[by_size].size_bytes;
            by_size += 1;
        }
    }

    let mut by_time = 0;
    if let Some(limit_ms) = retention_ms {
        let limit_ms = i64::try_from(limit_ms).unwrap_or(i64::MAX);
        while by_time < deletable {
            let max_timestamp_ms = segments[by_time].max_timestamp_ms;
            let expired = max_timestamp_ms != i64::MIN && now_ms.saturating_sub(max_timestamp_ms) > limit_ms;
            if !expired {
                break;
            }
            by_time += 1;
        }
    }

    by_size.max(by_time)
}

/// Removes a deleted segment's files: the log first, so a crash in between
/// leaves only index files without a log, which the next open removes.
pub(crate) async fn remove_segment_files(dir: &Path, base_offset: Offset) -> Result<(), StorageError> {
    for suffix in [LOG_SUFFIX, INDEX_SUFFIX, TIME_INDEX_SUFFIX] {
        let path = segment::segment_path(dir, base_offset, suffix);
        let owned = path.clone();
        let result = crate::runtime::spawn_blocking(move || std::fs::remove_file(owned)).await;
        match result {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(segment::io_failure("remove segment file", &path, err)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segments(sizes_and_times: &[(u64, i64)]) -> Vec<SegmentSummary> {
        sizes_and_times
            .iter()
            .map(|&(size_bytes, max_timestamp_ms)| SegmentSummary {
                size_bytes,
                max_timestamp_ms,
            })
            .collect()
    }

    #[test]
    fn size_rule_keeps_log_at_or_above_limit() {
        let log = segments(&[(100, 0), (100, 0), (100, 0), (50, 0)]);

        assert_eq!(expired_segment_count(&log, Some(350), None, 0), 0);
        assert_eq!(expired_segment_count(&log, Some(250), None, 0), 1);
        assert_eq!(expired_segment_count(&log, Some(150), None, 0), 2);
        assert_eq!(expired_segment_count(&log, Some(0), None, 0), 3);
    }

    #[test]
    fn time_rule_stops_at_first_recent_segment() {
        let log = segments(&[(10, 1_000), (10, 5_000), (10, 2_000), (10, 1_000)]);

        assert_eq!(expired_segment_count(&log, None, Some(3_000), 3_500), 0);
        assert_eq!(expired_segment_count(&log, None, Some(3_000), 7_500), 1);
        assert_eq!(expired_segment_count(&log, None, Some(3_000), 8_001), 3);
        assert_eq!(expired_segment_count(&log, None, Some(0), 1_000_000), 3);
    }

    #[test]
    fn active_segment_is_never_expired() {
        let log = segments(&[(1_000, 0)]);
        assert_eq!(expired_segment_count(&log, Some(0), Some(0), i64::MAX), 0);
        assert_eq!(expired_segment_count(&[], Some(0), Some(0), 0), 0);
    }

    #[test]
    fn either_rule_selects() {
        let log = segments(&[(100, 0), (100, 9_000), (100, 9_000)]);
        assert_eq!(expired_segment_count(&log, Some(200), Some(5_000), 10_000), 1);
        assert_eq!(expired_segment_count(&log, Some(1_000), Some(5_000), 10_000), 1);
        assert_eq!(expired_segment_count(&log, None, None, 10_000), 0);
    }
}
