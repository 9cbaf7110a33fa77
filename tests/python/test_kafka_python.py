"""kafka-python: produce and consume with compression and headers."""

import collections
import time

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from clients import create_topic

RECORD_COUNT = 3000
PARTITIONS = 3


def make_record(index):
    key = None if index % 7 == 0 else f"key-{index % 50}".encode()
    if index % 19 == 0:
        value = None
    elif index % 17 == 0:
        value = b""
    else:
        value = f"kafka-python value {index}".encode()
    headers = [("index", str(index).encode())]
    if index % 2:
        headers.append(("null", None))
    return key, value, headers


def index_of(headers):
    return int(dict(headers)["index"])


@pytest.mark.parametrize("codec", ["gzip", "lz4"])
def test_kafka_python_round_trip(broker, codec):
    topic = f"kafka-python-{codec}"
    create_topic(broker.bootstrap, topic, PARTITIONS)

    sender = KafkaProducer(
        bootstrap_servers=broker.bootstrap,
        acks="all",
        compression_type=codec,
        linger_ms=5,
        batch_size=262_144,
        request_timeout_ms=30_000,
    )
    try:
        futures = []
        for index in range(RECORD_COUNT):
            key, value, headers = make_record(index)
            futures.append(sender.send(topic, key=key, value=value, headers=headers))
        sender.flush(timeout=60)
        metadata = [future.get(timeout=30) for future in futures]
    finally:
        sender.close(timeout=10)

    placed = collections.defaultdict(dict)
    for index, meta in enumerate(metadata):
        assert meta.topic == topic
        placed[meta.partition][meta.offset] = index
    for partition, offsets in placed.items():
        assert sorted(offsets) == list(range(len(offsets))), f"{topic}-{partition} offsets not dense"

    reader = KafkaConsumer(
        bootstrap_servers=broker.bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_bytes=52_428_800,
        max_partition_fetch_bytes=10_485_760,
    )
    received = collections.defaultdict(list)
    try:
        reader.assign([TopicPartition(topic, p) for p in range(PARTITIONS)])
        reader.seek_to_beginning()
        deadline = time.monotonic() + 60
        total = 0
        while total < RECORD_COUNT:
            assert time.monotonic() < deadline, f"consumed {total} of {RECORD_COUNT} in 60s"
            for tp, messages in reader.poll(timeout_ms=500, max_records=5000).items():
                received[tp.partition].extend(messages)
                total += len(messages)
    finally:
        reader.close()

    assert total == RECORD_COUNT
    for partition, messages in received.items():
        assert [m.offset for m in messages] == list(range(len(messages)))
        for message in messages:
            index = placed[partition][message.offset]
            key, value, headers = make_record(index)
            assert message.key == key
            assert message.value == value
            assert list(message.headers) == headers
            assert index_of(message.headers) == index
        indices = [placed[partition][m.offset] for m in messages]
        assert indices == sorted(indices), f"{topic}-{partition} out of produce order"
