"""Idempotent producers: librdkafka across broker restarts and crashes, and
kafka-python with its default settings.

The librdkafka tests produce a numbered sequence while the broker is stopped
(SIGTERM) or killed (SIGKILL) and started again on the same ports. The
producer reconnects and retries its unacknowledged batches with their
original sequence numbers, so each partition must end up with every
acknowledged number exactly once and in order.
"""

import collections
import threading
import time

import pytest
from kafka import KafkaProducer

from clients import DeliveryLog, create_topic, end_offsets, producer, read_partitions
from group_support import read_batch_headers, start_fixed_port_broker  # noqa: F401 (fixture)

PARTITIONS = 2
RECORD_COUNT = 30_000
RESTART_AFTER_ACKED = 8_000
RECORDS_PER_POLL = 100
POLL_TIMEOUT_S = 0.01
RESTART_POLL_S = 0.001
RUN_TIMEOUT_S = 120.0


def idempotent_producer(bootstrap, errors):
    return producer(
        bootstrap,
        **{
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            # Small batches keep several produce requests in flight at the restart.
            "batch.num.messages": 100,
            "message.timeout.ms": 90_000,
            "reconnect.backoff.ms": 50,
            "reconnect.backoff.max.ms": 500,
            "error_cb": errors.append,
        },
    )


def produce_sequence_across_restart(broker, topic, restart):
    """Produce 0..RECORD_COUNT-1 (number n to partition n % PARTITIONS) as
    fast as the broker takes them, and run `restart()` from another thread
    as soon as RESTART_AFTER_ACKED numbers are acknowledged.

    Returns (DeliveryLog, client error events, records outstanding at the restart).
    """
    errors = []
    log = DeliveryLog()
    client = idempotent_producer(broker.bootstrap, errors)
    deadline = time.monotonic() + RUN_TIMEOUT_S
    restart_outcome = {}

    def restart_when_due():
        while time.monotonic() < deadline:
            if len(log.delivered) >= RESTART_AFTER_ACKED:
                restart_outcome["outstanding"] = len(client)
                try:
                    restart()
                except BaseException as error:  # reported by the main thread
                    restart_outcome["error"] = error
                return
            time.sleep(RESTART_POLL_S)
        restart_outcome["error"] = AssertionError(f"only {len(log.delivered)} records acknowledged in {RUN_TIMEOUT_S}s")

    restarter = threading.Thread(target=restart_when_due, daemon=True)
    restarter.start()
    for number in range(RECORD_COUNT):
        while True:
            try:
                client.produce(
                    topic,
                    value=str(number).encode(),
                    partition=number % PARTITIONS,
                    on_delivery=log.for_index(number),
                )
                break
            except BufferError:
                client.poll(POLL_TIMEOUT_S)
        if number % RECORDS_PER_POLL == 0:
            client.poll(0)
        assert time.monotonic() < deadline, f"produced only {number} records in {RUN_TIMEOUT_S}s"

    while restarter.is_alive() and time.monotonic() < deadline:
        client.poll(POLL_TIMEOUT_S)
    restarter.join(max(deadline - time.monotonic(), 0.1))
    assert "error" not in restart_outcome, f"restart failed: {restart_outcome.get('error')}"
    assert "outstanding" in restart_outcome, "the broker was not restarted"

    remaining = client.flush(max(deadline - time.monotonic(), 1.0))
    assert remaining == 0, f"{remaining} records still queued; client errors: {errors}"
    return log, errors, restart_outcome["outstanding"]


def check_sequence(bootstrap, topic, log, errors):
    """Check that each partition contains every acknowledged number once, in order."""
    fatal = [error for error in errors if error.fatal()]
    assert fatal == [], f"fatal producer errors: {fatal}"
    assert log.errors == {}, f"{len(log.errors)} records failed, e.g. {list(log.errors.items())[:5]}"
    assert len(log.delivered) == RECORD_COUNT

    ends = end_offsets(bootstrap, topic, PARTITIONS)
    records, read_errors = read_partitions(bootstrap, topic, ends, timeout_s=60)
    assert read_errors == []
    acknowledged = log.by_partition()
    for partition in range(PARTITIONS):
        numbers = [int(record.value) for record in records[partition]]
        counts = collections.Counter(numbers)
        duplicates = sorted(number for number, count in counts.items() if count > 1)
        assert duplicates == [], f"partition {partition}: numbers stored twice: {duplicates[:20]}"

        expected = [number for number in range(RECORD_COUNT) if number % PARTITIONS == partition]
        assert numbers == expected, (
            f"partition {partition}: stored numbers are not exactly 0..{RECORD_COUNT - 1} in order; "
            f"first difference at position {first_difference(numbers, expected)}"
        )
        by_offset = {record.offset: int(record.value) for record in records[partition]}
        wrong = {
            offset: (number, by_offset.get(offset))
            for offset, number in acknowledged[partition].items()
            if by_offset.get(offset) != number
        }
        assert wrong == {}, f"partition {partition}: acknowledged offset holds another number: {list(wrong.items())[:5]}"

        for header in read_batch_headers(bootstrap, topic, partition):
            assert header["producer_id"] >= 0, f"partition {partition}: batch without a producer id: {header}"


def first_difference(actual, expected):
    for position, (got, want) in enumerate(zip(actual, expected)):
        if got != want:
            return f"{position} (stored {got}, expected {want})"
    return f"{min(len(actual), len(expected))} (lengths {len(actual)} and {len(expected)})"


@pytest.mark.timeout(240)
def test_idempotent_producer_survives_clean_restart(start_fixed_port_broker):
    broker = start_fixed_port_broker()
    create_topic(broker.bootstrap, "idempotent-restart", PARTITIONS)

    def restart():
        assert broker.stop() == 0
        broker.start()

    log, errors, outstanding = produce_sequence_across_restart(broker, "idempotent-restart", restart)
    assert outstanding > 0, "records were unacknowledged when the broker stopped"
    check_sequence(broker.bootstrap, "idempotent-restart", log, errors)


@pytest.mark.timeout(240)
def test_idempotent_producer_survives_kill9(start_fixed_port_broker):
    broker = start_fixed_port_broker()
    create_topic(broker.bootstrap, "idempotent-crash", PARTITIONS)

    def crash():
        broker.kill9()
        broker.start()

    log, errors, outstanding = produce_sequence_across_restart(broker, "idempotent-crash", crash)
    assert outstanding > 0, "records were unacknowledged when the broker was killed"
    check_sequence(broker.bootstrap, "idempotent-crash", log, errors)


def test_kafka_python_default_idempotence(broker):
    create_topic(broker.bootstrap, "kafka-python-idempotent", PARTITIONS)
    client = KafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=5, request_timeout_ms=10_000)
    try:
        assert client.config["enable_idempotence"], "kafka-python enables idempotence by default"
        futures = [
            client.send("kafka-python-idempotent", value=str(number).encode(), partition=number % PARTITIONS)
            for number in range(2_000)
        ]
        client.flush(timeout=30)
        placed = [future.get(timeout=30) for future in futures]
    finally:
        client.close(timeout=10)

    for number, metadata in enumerate(placed):
        assert metadata.partition == number % PARTITIONS
        assert metadata.offset == number // PARTITIONS, f"record {number} stored at {metadata.offset}"

    producer_ids = set()
    for partition in range(PARTITIONS):
        headers = read_batch_headers(broker.bootstrap, "kafka-python-idempotent", partition)
        next_sequence = 0
        for header in headers:
            producer_ids.add((header["producer_id"], header["producer_epoch"]))
            assert header["base_sequence"] == next_sequence, f"partition {partition}: {header}"
            next_sequence += header["record_count"]
        assert next_sequence == 1_000
    assert len(producer_ids) == 1, f"one producer id and epoch for the whole run: {producer_ids}"
    ((producer_id, epoch),) = producer_ids
    assert producer_id >= 0, "InitProducerId gave the producer an id"
    assert epoch == 0
