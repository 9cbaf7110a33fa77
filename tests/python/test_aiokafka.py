"""aiokafka: produce and consume with compression and headers."""

import asyncio
import collections

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from clients import create_topic

RECORD_COUNT = 3000
PARTITIONS = 3


def make_record(index):
    key = None if index % 5 == 0 else f"key-{index % 40}".encode()
    if index % 23 == 0:
        value = None
    elif index % 13 == 0:
        value = b""
    else:
        value = f"aiokafka value {index}".encode() * (1 + index % 4)
    headers = [("index", str(index).encode()), ("codec-test", b"yes")]
    return key, value, headers


async def produce(bootstrap, topic, codec):
    sender = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        compression_type=codec,
        linger_ms=5,
        max_batch_size=262_144,
        request_timeout_ms=30_000,
    )
    await sender.start()
    try:
        futures = []
        for index in range(RECORD_COUNT):
            key, value, headers = make_record(index)
            futures.append(await sender.send(topic, key=key, value=value, headers=headers))
        return await asyncio.wait_for(asyncio.gather(*futures), 60)
    finally:
        await sender.stop()


async def consume(bootstrap, topic):
    reader = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_bytes=52_428_800,
        max_partition_fetch_bytes=10_485_760,
    )
    await reader.start()
    received = collections.defaultdict(list)
    try:
        reader.assign([TopicPartition(topic, p) for p in range(PARTITIONS)])
        await reader.seek_to_beginning()
        total = 0
        async with asyncio.timeout(60):
            while total < RECORD_COUNT:
                batches = await reader.getmany(timeout_ms=500, max_records=5000)
                for tp, messages in batches.items():
                    received[tp.partition].extend(messages)
                    total += len(messages)
    finally:
        await reader.stop()
    return received


@pytest.mark.parametrize("codec", ["gzip", "zstd"])
def test_aiokafka_round_trip(broker, codec):
    topic = f"aiokafka-{codec}"
    create_topic(broker.bootstrap, topic, PARTITIONS)

    metadata = asyncio.run(produce(broker.bootstrap, topic, codec))

    placed = collections.defaultdict(dict)
    for index, meta in enumerate(metadata):
        placed[meta.partition][meta.offset] = index
    for partition, offsets in placed.items():
        assert sorted(offsets) == list(range(len(offsets))), f"{topic}-{partition} offsets not dense"

    received = asyncio.run(consume(broker.bootstrap, topic))

    assert sum(len(m) for m in received.values()) == RECORD_COUNT
    for partition, messages in received.items():
        assert [m.offset for m in messages] == list(range(len(messages)))
        for message in messages:
            index = placed[partition][message.offset]
            key, value, headers = make_record(index)
            assert message.key == key
            assert message.value == value
            assert list(message.headers) == headers
        indices = [placed[partition][m.offset] for m in messages]
        assert indices == sorted(indices), f"{topic}-{partition} out of produce order"
