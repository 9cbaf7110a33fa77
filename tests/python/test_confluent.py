"""confluent-kafka (librdkafka): topic administration and a 200,000-record round trip."""

import collections
import time

import pytest
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import NewTopic

from clients import (
    DeliveryLog,
    admin_client,
    assert_dense,
    create_topic,
    end_offsets,
    produce_all,
    producer,
    read_partitions,
)

CODECS = ["zstd", "lz4", "snappy", "gzip"]
RECORD_COUNT = 200_000
PARTITIONS = 8
FILLER = b"abcdefghijklmnopqrstuvwxyz0123456789" * 4


def make_record(index):
    """Record `index` of the mixed workload: (key, value, headers).

    Covers null keys, null values, empty values, records without headers,
    headers with empty and null values, and repeated header keys.
    """
    key = None if index % 11 == 0 else f"key-{index % 5000}".encode()
    if index % 97 == 0:
        value = None
    elif index % 89 == 0:
        value = b""
    else:
        value = f"value-{index}-".encode() + FILLER[: index % 100]
    if index % 3 == 0:
        headers = []
    elif index % 3 == 1:
        headers = [("index", str(index).encode())]
    else:
        headers = [
            ("index", str(index).encode()),
            ("empty", b""),
            ("null", None),
            ("repeated", b"1"),
            ("repeated", b"2"),
        ]
    return key, value, headers


def topic_names(bootstrap):
    return set(admin_client(bootstrap).list_topics(timeout=10).topics)


def create_error(bootstrap, new_topic):
    # The futures fail with _DESTROY if the client is collected first.
    admin = admin_client(bootstrap)
    futures = admin.create_topics([new_topic], operation_timeout=30)
    with pytest.raises(KafkaException) as raised:
        futures[new_topic.topic].result(30)
    return raised.value.args[0]


def test_admin_validate_only_creates_nothing(broker):
    admin = admin_client(broker.bootstrap)
    futures = admin.create_topics(
        [NewTopic("validated", num_partitions=8, replication_factor=1)],
        operation_timeout=30,
        validate_only=True,
    )
    assert futures["validated"].result(30) is None
    assert "validated" not in topic_names(broker.bootstrap)


def test_admin_create_twice_is_already_exists(broker):
    metadata = create_topic(broker.bootstrap, "twice", PARTITIONS)
    assert len(metadata.topics["twice"].partitions) == PARTITIONS

    error = create_error(broker.bootstrap, NewTopic("twice", num_partitions=3, replication_factor=1))
    assert error.code() == KafkaError.TOPIC_ALREADY_EXISTS

    after = admin_client(broker.bootstrap).list_topics(topic="twice", timeout=10)
    assert len(after.topics["twice"].partitions) == PARTITIONS


@pytest.mark.parametrize("name", ["bad/name", "has space", "..", "x" * 250, ""])
def test_admin_invalid_topic_name_is_rejected(broker, name):
    error = create_error(broker.bootstrap, NewTopic(name, num_partitions=1, replication_factor=1))
    assert error.code() == KafkaError.TOPIC_EXCEPTION, f"{name!r}: {error}"
    assert name not in topic_names(broker.bootstrap)


def test_admin_delete_topic_removes_it(broker):
    create_topic(broker.bootstrap, "doomed", 2)
    log = DeliveryLog()
    produce_all([producer(broker.bootstrap)], "doomed", range(10), make_record, log)
    assert len(log.delivered) == 10

    admin = admin_client(broker.bootstrap)
    futures = admin.delete_topics(["doomed"], operation_timeout=30)
    assert futures["doomed"].result(30) is None

    deadline = time.monotonic() + 30
    while "doomed" in topic_names(broker.bootstrap):
        assert time.monotonic() < deadline, "deleted topic still listed after 30s"
        time.sleep(0.1)  # poll interval

    # The name is free again and the new topic starts empty.
    create_topic(broker.bootstrap, "doomed", 2)
    assert end_offsets(broker.bootstrap, "doomed", 2) == {0: 0, 1: 0}


@pytest.mark.timeout(240)
def test_four_codecs_200k_records_round_trip(broker):
    create_topic(broker.bootstrap, "mixed", PARTITIONS)
    producers = [producer(broker.bootstrap, **{"compression.type": codec}) for codec in CODECS]
    log = DeliveryLog()

    started = time.monotonic()
    produce_all(producers, "mixed", range(RECORD_COUNT), make_record, log)
    produce_s = time.monotonic() - started

    assert log.errors == {}
    assert len(log.delivered) == RECORD_COUNT
    placed = log.by_partition()
    ends = {p: len(placed.get(p, {})) for p in range(PARTITIONS)}
    for partition, offsets in placed.items():
        assert sorted(offsets) == list(range(len(offsets))), (
            f"partition {partition}: acknowledged offsets are not dense from 0"
        )
    assert end_offsets(broker.bootstrap, "mixed", PARTITIONS) == ends

    started = time.monotonic()
    records, errors = read_partitions(broker.bootstrap, "mixed", ends, timeout_s=120)
    consume_s = time.monotonic() - started
    print(f"produced {RECORD_COUNT} records in {produce_s:.1f}s, consumed in {consume_s:.1f}s")

    assert errors == []
    assert_dense(records, "mixed")
    last_index_by_codec = collections.defaultdict(lambda: -1)
    for partition, items in records.items():
        last_index_by_codec.clear()
        for record in items:
            index = placed[partition][record.offset]
            key, value, headers = make_record(index)
            assert (record.key, record.value, record.headers) == (key, value, headers), (
                f"mixed-{partition} offset {record.offset} holds the wrong record for index {index}"
            )
            # Each producer sends its records in index order, so within a
            # partition its records must appear in that order.
            codec = index % len(CODECS)
            assert index > last_index_by_codec[codec], (
                f"mixed-{partition} offset {record.offset}: index {index} after "
                f"{last_index_by_codec[codec]} from the {CODECS[codec]} producer"
            )
            last_index_by_codec[codec] = index
