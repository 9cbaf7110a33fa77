//! Idempotent producer state of one partition.
//!
//! For each producer id seen in the partition, the table stores the current
//! epoch and the sequence ranges and offsets of the last
//! [`BATCHES_PER_PRODUCER`] batches. Before an append, a batch from a producer
//! with an id is checked against it:
//!
//! - an epoch older than the stored one is fenced (`ProducerFenced`);
//! - a newer epoch must start at sequence 0 and replaces the stored state;
//! - in the same epoch, a batch whose sequence range equals one of the stored
//!   batches is a retry: the original offsets are returned and nothing is
//!   appended again;
//! - otherwise its first sequence must follow the last stored sequence,
//!   wrapping from `i32::MAX` to 0 (`OutOfOrderSequence`).
//!
//! A producer the table does not know may start at any sequence, as in Kafka,
//! because its earlier batches may have been removed by retention.
//!
//! The state is not persisted separately: on open it is rebuilt by replaying
//! every batch header in the log.

use std::collections::{HashMap, VecDeque};

use super::batch::BatchHeader;
use super::{Offset, StorageError};

/// Batches remembered per producer for duplicate detection, as in Kafka.
pub(crate) const BATCHES_PER_PRODUCER: usize = 5;

/// Sequence range and offsets of one appended batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BatchMetadata {
    pub(crate) first_sequence: i32,
    pub(crate) last_sequence: i32,
    pub(crate) base_offset: Offset,
    pub(crate) last_offset: Offset,
}

/// Outcome of the sequence check of one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SequenceCheck {
    /// New data: append it.
    Append,
    /// A retry of a batch already in the log.
    Duplicate(BatchMetadata),
}

#[derive(Debug, Clone)]
struct ProducerEntry {
    epoch: i16,
    batches: VecDeque<BatchMetadata>,
}

/// Producer id → epoch and recent batches.
// TODO: entries never expire (Kafka drops producers idle for
// producer.id.expiration.ms), so the table grows with the number of
// distinct producer ids that ever wrote to the partition.
#[derive(Debug, Clone, Default)]
pub(crate) struct ProducerStateTable {
    producers: HashMap<i64, ProducerEntry>,
}

impl ProducerStateTable {
    pub(crate) fn new() -> ProducerStateTable {
        ProducerStateTable::default()
    }

    /// Number of producers tracked.
    pub(crate) fn len(&self) -> usize {
        self.producers.len()
    }

    /// Checks an idempotent batch against the stored state.
    pub(crate) fn check(&self, header: &BatchHeader) -> Result<SequenceCheck, StorageError> {
        let producer_id = header.producer_id;
        let Some(entry) = self.producers.get(&producer_id) else {
            return Ok(SequenceCheck::Append);
        };

        let epoch = header.producer_epoch;
        let first_sequence = header.base_sequence;
        if epoch < entry.epoch {
            return Err(StorageError::ProducerFenced {
                producer_id,
                current: entry.epoch,
                received: epoch,
            });
        }
        if epoch > entry.epoch {
            if first_sequence != 0 {
                return Err(StorageError::OutOfOrderSequence {
                    producer_id,
                    expected: 0,
                    received: first_sequence,
                });
            }
            return Ok(SequenceCheck::Append);
        }

        let last_sequence = header.last_sequence();
        let retried = entry
            .batches
            .iter()
            .find(|batch| batch.first_sequence == first_sequence && batch.last_sequence == last_sequence);
        if let Some(original) = retried {
            return Ok(SequenceCheck::Duplicate(*original));
        }

        if let Some(last) = entry.batches.back() {
            let expected = next_sequence(last.last_sequence);
            if first_sequence != expected {
                return Err(StorageError::OutOfOrderSequence {
                    producer_id,
                    expected,
                    received: first_sequence,
                });
            }
        }
        Ok(SequenceCheck::Append)
    }

    /// Records a batch that was appended (or replayed from the log).
    pub(crate) fn record(&mut self, header: &BatchHeader, base_offset: Offset, last_offset: Offset) {
        let entry = self.producers.entry(header.producer_id).or_insert_with(|| ProducerEntry {
            epoch: header.producer_epoch,
            batches: VecDeque::with_capacity(BATCHES_PER_PRODUCER),
        });
        if header.producer_epoch < entry.epoch {
            // Only possible on replay of a log written by a broker that did
            // not fence; the newer epoch's state wins.
            return;
        }
        if header.producer_epoch > entry.epoch {
            entry.epoch = header.producer_epoch;
            entry.batches.clear();
        }

        if entry.batches.len() == BATCHES_PER_PRODUCER {
            entry.batches.pop_front();
        }
        entry.batches.push_back(BatchMetadata {
            first_sequence: header.base_sequence,
            last_sequence: header.last_sequence(),
            base_offset,
            last_offset,
        });
    }
}

/// Returns the sequence after `sequence`, wrapping from `i32::MAX` to 0.
pub(crate) fn next_sequence(sequence: i32) -> i32 {
    if sequence == i32::MAX {
        0
    } else {
        sequence + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::batch::BatchBuilder;

    fn header(producer_id: i64, epoch: i16, base_sequence: i32, record_count: usize) -> BatchHeader {
        let batch = BatchBuilder::new(0)
            .producer(producer_id, epoch, base_sequence)
            .records(record_count, 1)
            .build();
        BatchHeader::parse(&batch).unwrap()
    }

    /// Checks `header` and records it at `base_offset` when it is new.
    fn append(table: &mut ProducerStateTable, header: &BatchHeader, base_offset: Offset) -> SequenceCheck {
        let check = table.check(header).unwrap();
        if check == SequenceCheck::Append {
            table.record(header, base_offset, base_offset + i64::from(header.last_offset_delta));
        }
        check
    }

    #[test]
    fn retry_of_recent_batch_is_duplicate() {
        let mut table = ProducerStateTable::new();
        let first = header(7, 0, 0, 3);
        let second = header(7, 0, 3, 2);
        append(&mut table, &first, 100);
        append(&mut table, &second, 103);

        let expected = BatchMetadata {
            first_sequence: 0,
            last_sequence: 2,
            base_offset: 100,
            last_offset: 102,
        };
        assert_eq!(table.check(&first).unwrap(), SequenceCheck::Duplicate(expected));
    }

    #[test]
    fn only_last_five_batches_are_remembered() {
        let mut table = ProducerStateTable::new();
        let batches: Vec<_> = (0..6).map(|i| header(7, 0, i, 1)).collect();
        for (i, batch) in batches.iter().enumerate() {
            append(&mut table, batch, i as Offset);
        }

        assert!(matches!(table.check(&batches[1]).unwrap(), SequenceCheck::Duplicate(_)));
        assert!(matches!(
            table.check(&batches[0]),
            Err(StorageError::OutOfOrderSequence {
                expected: 6,
                received: 0,
                ..
            })
        ));
    }

    #[test]
    fn gap_in_sequence_is_out_of_order() {
        let mut table = ProducerStateTable::new();
        append(&mut table, &header(7, 0, 0, 2), 0);

        let result = table.check(&header(7, 0, 5, 1));

        assert!(matches!(
            result,
            Err(StorageError::OutOfOrderSequence {
                producer_id: 7,
                expected: 2,
                received: 5
            })
        ));
    }

    #[test]
    fn older_epoch_is_fenced() {
        let mut table = ProducerStateTable::new();
        append(&mut table, &header(7, 3, 0, 1), 0);

        let result = table.check(&header(7, 2, 1, 1));

        assert!(matches!(
            result,
            Err(StorageError::ProducerFenced {
                producer_id: 7,
                current: 3,
                received: 2
            })
        ));
    }

    #[test]
    fn new_epoch_must_start_at_zero() {
        let mut table = ProducerStateTable::new();
        append(&mut table, &header(7, 0, 0, 4), 0);

        assert!(matches!(
            table.check(&header(7, 1, 4, 1)),
            Err(StorageError::OutOfOrderSequence {
                expected: 0,
                received: 4,
                ..
            })
        ));
        assert_eq!(append(&mut table, &header(7, 1, 0, 1), 4), SequenceCheck::Append);
        assert!(matches!(
            table.check(&header(7, 0, 4, 1)),
            Err(StorageError::ProducerFenced { current: 1, .. })
        ));
    }

    #[test]
    fn unknown_producer_may_start_anywhere() {
        let table = ProducerStateTable::new();
        assert_eq!(table.check(&header(9, 0, 1_000, 1)).unwrap(), SequenceCheck::Append);
    }

    #[test]
    fn sequence_wraps_after_i32_max() {
        let mut table = ProducerStateTable::new();
        append(&mut table, &header(7, 0, i32::MAX - 1, 2), 0);

        assert_eq!(table.check(&header(7, 0, 0, 1)).unwrap(), SequenceCheck::Append);
        assert_eq!(next_sequence(i32::MAX), 0);
    }
}
