//! The hot-tail cache: the most recent batches of a partition, as stored.
//!
//! Every appended batch enters the cache as the same `Bytes` that the writer
//! queues, so caching costs no copy. The cache always contains a contiguous run
//! of batches that ends at the log end offset, evicting from the front once
//! its size passes the limit, so a read at or after its first offset never
//! needs the disk. Readers pass the high watermark and never see a batch
//! whose write has not completed.

use std::collections::VecDeque;

use bytes::Bytes;

use super::Offset;

#[derive(Debug, Clone)]
struct CachedBatch {
    base_offset: Offset,
    last_offset: Offset,
    bytes: Bytes,
}

/// Recent batches of one partition, bounded in bytes.
#[derive(Debug)]
pub(crate) struct HotCache {
    batches: VecDeque<CachedBatch>,
    size_bytes: usize,
    capacity_bytes: usize,
}

impl HotCache {
    pub(crate) fn new(capacity_bytes: usize) -> HotCache {
        HotCache {
            batches: VecDeque::new(),
            size_bytes: 0,
            capacity_bytes,
        }
    }

    #[cfg(test)]
    pub(crate) fn size_bytes(&self) -> usize {
        self.size_bytes
    }

    /// Adds the newest batch and evicts the oldest ones past the limit. A
    /// batch larger than the whole cache leaves the cache empty.
    pub(crate) fn insert(&mut self, base_offset: Offset, last_offset: Offset, bytes: Bytes) {
        if let Some(newest) = self.batches.back() {
            debug_assert_eq!(newest.last_offset + 1, base_offset, "hot cache batches must be contiguous");
        }
        self.size_bytes += bytes.len();
        self.batches.push_back(CachedBatch {
            base_offset,
            last_offset,
            bytes,
        });
        while self.size_bytes > self.capacity_bytes {
            match self.batches.pop_front() {
                Some(evicted) => self.size_bytes -= evicted.bytes.len(),
                None => break,
            }
        }
    }

    /// Drops every batch that ends before `offset` (after retention).
    pub(crate) fn evict_before(&mut self, offset: Offset) {
        while self.batches.front().is_some_and(|batch| batch.last_offset < offset) {
            if let Some(evicted) = self.batches.pop_front() {
                self.size_bytes -= evicted.bytes.len();
            }
        }
    }

    /// Returns the batches from the one containing `offset` on, below
    /// `high_watermark`, the first one whole and the rest while they fit
    /// `max_bytes`. None when `offset` is older than the cache.
    pub(crate) fn read(&self, offset: Offset, max_bytes: usize, high_watermark: Offset) -> Option<(Vec<Bytes>, usize)> {
        let oldest = self.batches.front()?;
        if offset < oldest.base_offset {
            return None;
        }
        let first = self.batches.partition_point(|batch| batch.last_offset < offset);

        let mut batches = Vec::new();
        let mut total_bytes = 0;
        for batch in self.batches.range(first..) {
            if batch.base_offset >= high_watermark {
                break;
            }
            if !batches.is_empty() && total_bytes + batch.bytes.len() > max_bytes {
                break;
            }
            total_bytes += batch.bytes.len();
            batches.push(batch.bytes.clone());
        }
        Some((batches, total_bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filled(capacity_bytes: usize) -> HotCache {
        let mut cache = HotCache::new(capacity_bytes);
        // Batches of 100 bytes at offsets 0..=1, 2..=3, 4..=5, 6..=7.
        for i in 0..4 {
            cache.insert(i * 2, i * 2 + 1, Bytes::from(vec![i as u8; 100]));
        }
        cache
    }

    #[test]
    fn eviction_keeps_newest_batches() {
        let cache = filled(250);
        assert_eq!(cache.size_bytes(), 200);
        assert!(cache.read(3, 1_000, 8).is_none());
        assert_eq!(cache.read(4, 1_000, 8).unwrap().0.len(), 2);
    }

    #[test]
    fn read_returns_first_batch_over_max_bytes() {
        let cache = filled(1_000);
        let (batches, total_bytes) = cache.read(3, 10, 8).unwrap();
        assert_eq!(batches.len(), 1);
        assert_eq!(total_bytes, 100);
        assert_eq!(batches[0][0], 1);
    }

    #[test]
    fn read_stops_at_high_watermark() {
        let cache = filled(1_000);
        let (batches, _) = cache.read(0, 1_000, 4).unwrap();
        assert_eq!(batches.len(), 2);
    }

    #[test]
    fn oversized_batch_empties_cache() {
        let mut cache = filled(250);
        cache.insert(8, 8, Bytes::from(vec![9; 300]));
        assert_eq!(cache.size_bytes(), 0);
        assert!(cache.read(8, 1_000, 9).is_none());
    }

    #[test]
    fn evict_before_drops_old_batches() {
        let mut cache = filled(1_000);
        cache.evict_before(4);
        assert_eq!(cache.size_bytes(), 200);
        assert!(cache.read(3, 1_000, 8).is_none());
    }
}
