"""Helpers for the consumer group, idempotent producer and admin CLI tests.

`FixedPortBroker` restarts on the ports it had before, so that clients
created before a restart can reconnect to it, as they would to a real
broker that comes back. `read_batch_headers` reads the v2 batch headers of a
partition over the wire, to check the producer id and sequence numbers a
client wrote.
"""

import socket
import struct
import time

import pytest
from confluent_kafka import Consumer, TopicPartition

import kafka_wire as wire
from clients import DeliveryLog, producer
from weir_broker import Broker, BrokerFactory

CONSUME_TIMEOUT_S = 60.0
PORT_PAIR_ATTEMPTS = 50
FETCH_MAX_BYTES = 4 * 1024 * 1024
# Bytes of a v2 batch header, from the base offset up to and including the record count.
BATCH_HEADER_BYTES = 61


def free_port_range(count):
    """Return a port p such that p .. p+count-1 are free on 127.0.0.1 right now."""
    for _ in range(PORT_PAIR_ATTEMPTS):
        probes = []
        try:
            first = socket.socket()
            first.bind(("127.0.0.1", 0))
            probes.append(first)
            port = first.getsockname()[1]
            for offset in range(1, count):
                probe = socket.socket()
                probes.append(probe)
                probe.bind(("127.0.0.1", port + offset))
            return port
        except OSError:
            continue
        finally:
            for probe in probes:
                probe.close()
    raise AssertionError(f"found no {count} consecutive free ports in {PORT_PAIR_ATTEMPTS} attempts")


class FixedPortBroker(Broker):
    """A broker that listens on the same ports after every restart."""

    def __init__(self, base_dir, shards=2, settings=None):
        super().__init__(base_dir, shards=shards, settings=settings)
        self.port = free_port_range(shards)

    def command(self):
        command = super().command()
        command[command.index("--listen") + 1] = f"127.0.0.1:{self.port}"
        return command


@pytest.fixture
def start_fixed_port_broker(request, tmp_path_factory):
    """Start a `FixedPortBroker` with optional settings; its exit is checked at teardown."""
    factory = BrokerFactory(tmp_path_factory, "weir-fixed")
    request.node.weir_brokers = factory.brokers

    def start(shards=2, settings=None):
        broker = FixedPortBroker(tmp_path_factory.mktemp("weir-fixed"), shards=shards, settings=settings)
        factory.brokers.append(broker)
        return broker.start()

    yield start
    factory.finish()


def fetch_request(correlation_id, topic, partition, offset):
    """Encode a Fetch v4 request for one partition, starting at `offset`."""
    body = struct.pack(">iiiib", -1, 0, 1, FETCH_MAX_BYTES, 0)  # replica, max wait, min bytes, max bytes, isolation
    body += struct.pack(">i", 1) + wire.encode_string(topic)
    body += struct.pack(">i", 1) + struct.pack(">iqi", partition, offset, FETCH_MAX_BYTES)
    return wire.encode_request(wire.API_FETCH, 4, correlation_id, body)


def parse_fetch_v4(body):
    """Return (error_code, high_watermark, records bytes) of the only partition."""
    reader = wire.Reader(body)
    reader.unpack(">i")  # throttle_time_ms
    assert reader.unpack(">i") == 1, "one topic in the response"
    reader.string()
    assert reader.unpack(">i") == 1, "one partition in the response"
    _, error_code, high_watermark, _ = reader.unpack(">ihqq")
    aborted = reader.unpack(">i")
    for _ in range(max(aborted, 0)):
        reader.unpack(">qq")
    size = reader.unpack(">i")
    records = b"" if size < 0 else reader.take(size)
    return error_code, high_watermark, records


def read_batch_headers(address, topic, partition):
    """Return every batch header of a partition as dicts, in offset order.

    Each dict has base_offset, record_count, producer_id, producer_epoch and
    base_sequence, parsed from the stored v2 batches.
    """
    headers = []
    offset = 0
    with wire.Connection(address, timeout_s=10.0) as connection:
        for correlation_id in range(1, 10_000):
            frame = fetch_request(correlation_id, topic, partition, offset)
            error_code, high_watermark, records = parse_fetch_v4(connection.request(frame, correlation_id))
            assert error_code == wire.ERROR_NONE, f"fetch {topic}-{partition} at {offset}: error {error_code}"
            position = 0
            while position + BATCH_HEADER_BYTES <= len(records):
                base_offset, length = struct.unpack_from(">qi", records, position)
                if position + 12 + length > len(records):
                    break  # a partial batch at the end of the response
                (last_offset_delta,) = struct.unpack_from(">i", records, position + 23)
                producer_id, producer_epoch, base_sequence, record_count = struct.unpack_from(
                    ">qhii", records, position + 43
                )
                headers.append(
                    {
                        "base_offset": base_offset,
                        "record_count": record_count,
                        "producer_id": producer_id,
                        "producer_epoch": producer_epoch,
                        "base_sequence": base_sequence,
                    }
                )
                offset = base_offset + last_offset_delta + 1
                position += 12 + length
            if offset >= high_watermark:
                return headers
    raise AssertionError(f"{topic}-{partition}: fetch made no progress past offset {offset}")


def group_on_node(bootstrap, prefix, node_id, attempts=64):
    """Return a group id starting with `prefix` whose coordinator is `node_id`."""
    for index in range(attempts):
        group = f"{prefix}-{index}"
        with wire.Connection(bootstrap) as connection:
            body = connection.request(wire.find_coordinator_request(1, group), 1)
        error_code, coordinator, _ = wire.parse_find_coordinator_v0(body)
        assert error_code == wire.ERROR_NONE, f"FindCoordinator for {group}: error {error_code}"
        if coordinator == node_id:
            return group
    raise AssertionError(f"none of {attempts} group ids starting with {prefix!r} is coordinated by node {node_id}")


def produce_numbers(bootstrap, topic, partitions, per_partition):
    """Write `per_partition` records numbered from 0 to each partition and return the end offsets."""
    client = producer(bootstrap)
    log = DeliveryLog()
    for partition in range(partitions):
        for number in range(per_partition):
            client.produce(topic, value=str(number).encode(), partition=partition, on_delivery=log.for_index((partition, number)))
    assert client.flush(30) == 0
    assert log.errors == {}
    return {partition: per_partition for partition in range(partitions)}


def confluent_consumer(bootstrap, group, name, **config):
    settings = {
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "client.id": name,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "partition.assignment.strategy": "range",
        "session.timeout.ms": 10_000,
        "heartbeat.interval.ms": 500,
        "fetch.wait.max.ms": 100,
    }
    settings.update(config)
    return Consumer(settings)


def consume_and_commit(consumer, topic, count):
    """Consume `count` records, then commit the next offset of each consumed partition synchronously.

    Returns {partition: committed offset}.
    """
    positions = {}
    consumed = 0
    deadline = time.monotonic() + CONSUME_TIMEOUT_S
    while consumed < count:
        assert time.monotonic() < deadline, f"consumed {consumed} of {count} records of {topic}"
        for message in consumer.consume(num_messages=count - consumed, timeout=0.2):
            assert message.error() is None, message.error()
            positions[message.partition()] = message.offset() + 1
            consumed += 1
    consumer.commit(offsets=[TopicPartition(topic, p, o) for p, o in positions.items()], asynchronous=False)
    return positions
