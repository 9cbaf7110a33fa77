"""Records survive a clean restart and a kill -9 of the broker."""

import threading
import time

import pytest

from clients import (
    DeliveryLog,
    assert_dense,
    create_topic,
    end_offsets,
    produce_all,
    producer,
    read_partitions,
)

PARTITIONS = 4
# Small segments make a restart recover several segments per partition.
SEGMENT_SETTINGS = {"log.segment.bytes": 1_048_576}
PAYLOAD = bytes(range(256)) * 2


def make_record(index):
    key = f"key-{index % 1000}".encode()
    value = f"{index}:".encode() + PAYLOAD[: 200 + index % 300]
    return key, value, [("index", str(index).encode())]


def index_of(record):
    headers = dict(record.headers)
    return int(headers["index"])


def check_log(bootstrap, topic, acknowledged):
    """Read the whole topic and check it against `acknowledged`.

    `acknowledged` maps partition -> {offset: record index}. Every partition
    must be dense from offset 0, hold every acknowledged record at its
    acknowledged offset, and hold only records this test produced.
    Returns the end offset of each partition.
    """
    ends = end_offsets(bootstrap, topic, PARTITIONS)
    for partition, placed in acknowledged.items():
        if placed:
            assert ends[partition] >= max(placed) + 1, (
                f"{topic}-{partition}: end offset {ends[partition]} is below acknowledged "
                f"offset {max(placed)}"
            )

    records, errors = read_partitions(bootstrap, topic, ends, timeout_s=90)
    assert errors == [], f"client errors while reading {topic}: {errors}"
    assert_dense(records, topic)

    for partition, items in records.items():
        placed = acknowledged.get(partition, {})
        for record in items:
            index = index_of(record)
            assert (record.key, record.value) == make_record(index)[:2], (
                f"{topic}-{partition} offset {record.offset}: record {index} is corrupt"
            )
            if record.offset in placed:
                assert index == placed[record.offset], (
                    f"{topic}-{partition} offset {record.offset}: holds record {index}, "
                    f"acknowledged record {placed[record.offset]}"
                )
        missing = set(placed) - {r.offset for r in items}
        assert not missing, f"{topic}-{partition}: acknowledged offsets missing: {sorted(missing)[:10]}"
    return ends


@pytest.mark.timeout(180)
def test_restart_keeps_records_and_offsets(start_broker):
    broker = start_broker(settings=SEGMENT_SETTINGS)
    create_topic(broker.bootstrap, "kept", PARTITIONS)
    log = DeliveryLog()
    produce_all([producer(broker.bootstrap)], "kept", range(8000), make_record, log)
    assert log.errors == {}
    first = log.by_partition()

    assert broker.stop() == 0
    broker.start()
    ends_before = check_log(broker.bootstrap, "kept", first)
    assert sum(ends_before.values()) == 8000

    # Offsets continue densely after the restart.
    more = DeliveryLog()
    produce_all([producer(broker.bootstrap)], "kept", range(8000, 11000), make_record, more)
    assert more.errors == {}
    second = more.by_partition()
    for partition, placed in second.items():
        assert sorted(placed) == list(range(ends_before[partition], ends_before[partition] + len(placed))), (
            f"kept-{partition}: offsets after restart do not continue from {ends_before[partition]}"
        )

    combined = {p: {**first.get(p, {}), **second.get(p, {})} for p in range(PARTITIONS)}
    ends_after = check_log(broker.bootstrap, "kept", combined)
    assert sum(ends_after.values()) == 11000

    # A second restart must also recover the segments written after the first.
    assert broker.stop() == 0
    broker.start()
    check_log(broker.bootstrap, "kept", combined)


class BackgroundProducer:
    """Produces records with acks=all from a thread until told to stop."""

    MAX_RECORDS = 2_000_000

    def __init__(self, bootstrap, topic, first_index):
        self.topic = topic
        self.next_index = first_index
        self.log = DeliveryLog()
        self.stop_event = threading.Event()
        self.failure = None
        self.producer = producer(
            bootstrap,
            **{"linger.ms": 2, "message.timeout.ms": 10_000, "retries": 0, "log_level": 0},
        )
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        try:
            limit = self.next_index + self.MAX_RECORDS
            while not self.stop_event.is_set() and self.next_index < limit:
                key, value, headers = make_record(self.next_index)
                try:
                    self.producer.produce(
                        self.topic, key=key, value=value, headers=headers,
                        on_delivery=self.log.for_index(self.next_index),
                    )
                    self.next_index += 1
                except BufferError:
                    pass
                self.producer.poll(0 if self.next_index % 100 else 0.001)
            self.producer.purge()
            self.producer.flush(15)
        except Exception as error:  # reported by the test thread
            self.failure = error

    def wait_for_acks(self, count, timeout_s):
        deadline = time.monotonic() + timeout_s
        while len(self.log.delivered) < count:
            assert self.failure is None, f"producer thread failed: {self.failure!r}"
            assert time.monotonic() < deadline, (
                f"only {len(self.log.delivered)} of {count} records acknowledged in {timeout_s}s; "
                f"errors: {list(self.log.errors.values())[:3]}"
            )
            time.sleep(0.01)  # poll interval

    def finish(self):
        self.stop_event.set()
        self.thread.join(30)
        assert not self.thread.is_alive(), "producer thread did not stop within 30s"
        assert self.failure is None, f"producer thread failed: {self.failure!r}"


@pytest.mark.timeout(240)
def test_kill9_loses_no_acknowledged_record(start_broker):
    broker = start_broker(settings=SEGMENT_SETTINGS)
    create_topic(broker.bootstrap, "crash", PARTITIONS)
    acknowledged = {p: {} for p in range(PARTITIONS)}
    next_index = 0

    for round_number in range(2):
        background = BackgroundProducer(broker.bootstrap, "crash", next_index)
        background.thread.start()
        try:
            background.wait_for_acks(20_000, timeout_s=60)
            broker.kill9()
        finally:
            background.finish()
        next_index = background.next_index

        for partition, placed in background.log.by_partition().items():
            for offset, index in placed.items():
                previous = acknowledged[partition].setdefault(offset, index)
                assert previous == index, (
                    f"crash-{partition} offset {offset} acknowledged twice: records {previous} and {index}"
                )
        acked = sum(len(p) for p in acknowledged.values())
        print(f"round {round_number}: {acked} records acknowledged before kill -9")

        broker.start()
        check_log(broker.bootstrap, "crash", acknowledged)
