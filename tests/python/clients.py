"""confluent-kafka helpers shared by the integration tests.

Every wait here polls with a deadline, so a broker that stops answering
fails the test with a message instead of hanging it.
"""

import collections
import functools
import threading
import time

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

Record = collections.namedtuple("Record", "partition offset key value headers timestamp")

ADMIN_TIMEOUT_S = 30.0
METADATA_TIMEOUT_S = 30.0


def admin_client(bootstrap):
    return AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": 10_000})


def wait_for_leaders(bootstrap, topic, partitions, timeout_s=METADATA_TIMEOUT_S):
    """Poll metadata until `topic` has `partitions` partitions, each with a leader."""
    admin = admin_client(bootstrap)
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        metadata = admin.list_topics(topic=topic, timeout=10)
        last = metadata.topics.get(topic)
        if (
            last is not None
            and last.error is None
            and len(last.partitions) == partitions
            and all(p.leader >= 0 and p.error is None for p in last.partitions.values())
        ):
            return metadata
        time.sleep(0.1)  # poll interval
    raise AssertionError(f"topic {topic!r} has no leader for all {partitions} partitions: {last}")


def create_topic(bootstrap, topic, partitions, config=None):
    """Create `topic` through the CreateTopics API and wait until it is usable."""
    admin = admin_client(bootstrap)
    new_topic = NewTopic(topic, num_partitions=partitions, replication_factor=1, config=config or {})
    futures = admin.create_topics([new_topic], operation_timeout=ADMIN_TIMEOUT_S)
    futures[topic].result(ADMIN_TIMEOUT_S)
    return wait_for_leaders(bootstrap, topic, partitions)


def producer(bootstrap, **config):
    settings = {
        "bootstrap.servers": bootstrap,
        "acks": "all",
        "linger.ms": 10,
        "batch.size": 1_000_000,
        "batch.num.messages": 10_000,
        "queue.buffering.max.messages": 500_000,
        "queue.buffering.max.kbytes": 1_048_576,
        "message.timeout.ms": 60_000,
    }
    settings.update(config)
    return Producer(settings)


class DeliveryLog:
    """Collects delivery reports: index -> (partition, offset) or error."""

    def __init__(self):
        self.lock = threading.Lock()
        self.delivered = {}
        self.errors = {}

    def callback(self, index, error, message):
        with self.lock:
            if error is not None:
                self.errors[index] = error
            else:
                self.delivered[index] = (message.partition(), message.offset())

    def for_index(self, index):
        return functools.partial(self.callback, index)

    def by_partition(self):
        """Return {partition: {offset: index}} for every delivered record."""
        placed = collections.defaultdict(dict)
        with self.lock:
            for index, (partition, offset) in self.delivered.items():
                assert offset not in placed[partition], (
                    f"partition {partition} offset {offset} acknowledged for records "
                    f"{placed[partition][offset]} and {index}"
                )
                placed[partition][offset] = index
        return placed


def produce_all(producers, topic, indices, make_record, log, partition=None, flush_timeout_s=120.0):
    """Produce record `i` for each `i` in `indices`, round-robin over `producers`.

    `make_record(i)` returns (key, value, headers). Waits for every delivery
    report and raises if any record is still queued after `flush_timeout_s`.
    """
    for position, index in enumerate(indices):
        key, value, headers = make_record(index)
        target = producers[position % len(producers)]
        kwargs = {"key": key, "value": value, "headers": headers, "on_delivery": log.for_index(index)}
        if partition is not None:
            kwargs["partition"] = partition
        while True:
            try:
                target.produce(topic, **kwargs)
                break
            except BufferError:
                target.poll(0.1)
        if position % 2000 == 0:
            target.poll(0)
    for target in producers:
        remaining = target.flush(flush_timeout_s)
        assert remaining == 0, f"{remaining} records still queued after {flush_timeout_s}s"


def consumer(bootstrap, errors, **config):
    settings = {
        "bootstrap.servers": bootstrap,
        "group.id": "weir-tests-reader",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "check.crcs": True,
        "fetch.max.bytes": 52_428_800,
        "max.partition.fetch.bytes": 10_485_760,
        "fetch.wait.max.ms": 100,
        "error_cb": errors.append,
    }
    settings.update(config)
    return Consumer(settings)


def read_partitions(bootstrap, topic, end_offsets, timeout_s=60.0):
    """Read every partition from offset 0 up to its end offset.

    `end_offsets` maps partition -> the offset after the last record
    expected. Returns ({partition: [Record, ...]}, [client error events]).
    Raises if a message carries an error or the deadline passes first.
    """
    errors = []
    reader = consumer(bootstrap, errors)
    records = {partition: [] for partition in end_offsets}
    pending = {p for p, end in end_offsets.items() if end > 0}
    try:
        reader.assign([TopicPartition(topic, p, 0) for p in end_offsets])
        deadline = time.monotonic() + timeout_s
        while pending:
            if time.monotonic() > deadline:
                progress = {p: len(records[p]) for p in end_offsets}
                raise AssertionError(
                    f"read {progress} of {end_offsets} records from {topic!r} "
                    f"within {timeout_s}s; client errors: {errors}"
                )
            for message in reader.consume(num_messages=10_000, timeout=0.5):
                error = message.error()
                if error is not None:
                    raise AssertionError(f"consumer message error on {topic!r}: {error}")
                partition = message.partition()
                if message.offset() >= end_offsets[partition]:
                    continue
                records[partition].append(
                    Record(
                        partition,
                        message.offset(),
                        message.key(),
                        message.value(),
                        message.headers() or [],
                        message.timestamp()[1],
                    )
                )
                if message.offset() + 1 >= end_offsets[partition]:
                    pending.discard(partition)
    finally:
        reader.close()
    return records, errors


def end_offsets(bootstrap, topic, partitions, timeout_s=10.0):
    """Return {partition: high watermark} as the broker reports it."""
    errors = []
    reader = consumer(bootstrap, errors)
    try:
        return {
            p: reader.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s)[1]
            for p in range(partitions)
        }
    finally:
        reader.close()


def assert_dense(records, topic):
    for partition, items in records.items():
        offsets = [r.offset for r in items]
        assert offsets == list(range(len(items))), (
            f"{topic}-{partition}: offsets are not dense from 0: "
            f"first differences at {first_mismatch(offsets)}"
        )


def first_mismatch(offsets):
    for expected, offset in enumerate(offsets):
        if offset != expected:
            return f"position {expected} has offset {offset}"
    return "none"
