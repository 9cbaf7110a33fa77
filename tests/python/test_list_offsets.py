"""ListOffsets through confluent-kafka: earliest, latest, by timestamp and max timestamp."""

import time

import pytest
from confluent_kafka import TopicPartition
from confluent_kafka.admin import OffsetSpec

from clients import DeliveryLog, admin_client, consumer, create_topic, producer

RECORD_COUNT = 100
BATCH_RECORDS = 25
STEP_MS = 100


@pytest.fixture
def timed_topic(broker):
    """Topic `timed`: partition 0 holds 100 records in 4 batches, timestamps
    base, base+100ms, ...; partition 1 is empty. Returns the base timestamp.
    """
    create_topic(broker.bootstrap, "timed", 2)
    base_ms = int(time.time() * 1000) - 60_000
    log = DeliveryLog()
    sender = producer(broker.bootstrap)
    for index in range(RECORD_COUNT):
        sender.produce(
            "timed",
            key=str(index).encode(),
            value=b"v",
            partition=0,
            timestamp=base_ms + index * STEP_MS,
            on_delivery=log.for_index(index),
        )
        if (index + 1) % BATCH_RECORDS == 0:
            assert sender.flush(30) == 0
    assert log.errors == {}
    assert [log.delivered[i] for i in range(RECORD_COUNT)] == [(0, i) for i in range(RECORD_COUNT)]
    return base_ms


def list_offsets(bootstrap, specs):
    """Run AdminClient.list_offsets for {(topic, partition): OffsetSpec}."""
    request = {TopicPartition("timed", p): spec for p, spec in specs.items()}
    admin = admin_client(bootstrap)
    futures = admin.list_offsets(request, request_timeout=30)
    return {tp.partition: future.result(30) for tp, future in futures.items()}


def test_list_offsets_earliest_and_latest(broker, timed_topic):
    earliest = list_offsets(broker.bootstrap, {0: OffsetSpec.earliest(), 1: OffsetSpec.earliest()})
    latest = list_offsets(broker.bootstrap, {0: OffsetSpec.latest(), 1: OffsetSpec.latest()})

    assert earliest[0].offset == 0
    assert earliest[1].offset == 0
    assert latest[0].offset == RECORD_COUNT
    assert latest[1].offset == 0


def test_watermarks_match_log(broker, timed_topic):
    errors = []
    reader = consumer(broker.bootstrap, errors)
    try:
        assert reader.get_watermark_offsets(TopicPartition("timed", 0), timeout=10) == (0, 100)
        assert reader.get_watermark_offsets(TopicPartition("timed", 1), timeout=10) == (0, 0)
    finally:
        reader.close()


@pytest.mark.parametrize(
    "target_delta_ms, expected_offset",
    [
        (-1_000, 0),  # before the first record
        (0, 0),  # exactly the first record
        (35 * STEP_MS, 35),  # exactly a record inside the second batch
        (35 * STEP_MS - 50, 35),  # between two records: the later one
        (50 * STEP_MS, 50),  # the first record of the third batch
        (99 * STEP_MS, 99),  # the last record
        (99 * STEP_MS + 1, -1),  # after the last record: no such offset
    ],
)
def test_list_offsets_by_timestamp(broker, timed_topic, target_delta_ms, expected_offset):
    target_ms = timed_topic + target_delta_ms

    result = list_offsets(broker.bootstrap, {0: OffsetSpec.for_timestamp(target_ms)})
    assert result[0].offset == expected_offset
    if expected_offset >= 0:
        assert result[0].timestamp == timed_topic + expected_offset * STEP_MS

    errors = []
    reader = consumer(broker.bootstrap, errors)
    try:
        [found] = reader.offsets_for_times([TopicPartition("timed", 0, target_ms)], timeout=10)
    finally:
        reader.close()
    assert found.error is None
    assert found.offset == expected_offset


def test_list_offsets_by_timestamp_on_empty_partition(broker, timed_topic):
    result = list_offsets(broker.bootstrap, {1: OffsetSpec.for_timestamp(timed_topic)})
    assert result[1].offset == -1


def test_list_offsets_max_timestamp(broker, timed_topic):
    result = list_offsets(broker.bootstrap, {0: OffsetSpec.max_timestamp()})
    assert result[0].offset == RECORD_COUNT - 1
    assert result[0].timestamp == timed_topic + (RECORD_COUNT - 1) * STEP_MS
