"""Malformed and invalid requests over raw sockets.

Every case sends its bad input to one shared broker, then checks that the
broker still serves a normal client and that the records stored before the
case are unchanged.
"""

import random
import struct

import pytest

import kafka_wire as wire
from clients import DeliveryLog, admin_client, create_topic, end_offsets, produce_all, producer, read_partitions
from weir_broker import BrokerFactory

MAX_REQUEST_BYTES = 102_400
STORED_TOPIC = "stored"
RAW_TOPIC = "raw"


def stored_record(index):
    return f"key-{index}".encode(), f"value-{index}".encode(), [("index", str(index).encode())]


@pytest.fixture(scope="module")
def shared_broker(tmp_path_factory):
    factory = BrokerFactory(tmp_path_factory, "weir-bad-input")
    broker = factory(settings={"socket.request.max.bytes": MAX_REQUEST_BYTES})
    create_topic(broker.bootstrap, STORED_TOPIC, 2)
    create_topic(broker.bootstrap, RAW_TOPIC, 1)
    log = DeliveryLog()
    produce_all([producer(broker.bootstrap)], STORED_TOPIC, range(300), stored_record, log)
    assert log.errors == {}
    broker.stored = log.by_partition()
    yield broker
    factory.finish()


@pytest.fixture
def broker(request, shared_broker):
    """The shared broker; its log is attached to the report if the case fails."""
    request.node.weir_brokers = [shared_broker]
    return shared_broker


def assert_healthy(broker):
    assert broker.running(), "broker process exited"

    with wire.Connection(broker.bootstrap) as connection:
        body = connection.request(wire.api_versions_request(1), 1)
    error_code, versions = wire.parse_api_versions_v0(body)
    assert error_code == wire.ERROR_NONE
    assert wire.API_PRODUCE in versions

    stored = broker.stored
    ends = {p: len(stored.get(p, {})) for p in range(2)}
    assert end_offsets(broker.bootstrap, STORED_TOPIC, 2) == ends
    records, errors = read_partitions(broker.bootstrap, STORED_TOPIC, ends)
    assert errors == []
    for partition, items in records.items():
        assert [r.offset for r in items] == list(range(ends[partition]))
        for record in items:
            index = stored[partition][record.offset]
            assert (record.key, record.value, record.headers) == stored_record(index)


def leader_address(bootstrap, topic, partition):
    metadata = admin_client(bootstrap).list_topics(topic=topic, timeout=10)
    leader = metadata.topics[topic].partitions[partition].leader
    broker = metadata.brokers[leader]
    return f"{broker.host}:{broker.port}"


def raw_end_offset(bootstrap):
    return end_offsets(bootstrap, RAW_TOPIC, 1)[0]


# ---------------------------------------------------------------------------
# Framing


def test_frame_over_max_request_bytes_closes_connection(broker):
    with wire.Connection(broker.bootstrap) as connection:
        connection.send(struct.pack(">i", MAX_REQUEST_BYTES + 1) + b"\x00" * 64)
        assert connection.wait_closed() == b""

    assert_healthy(broker)


def test_frame_of_2gib_closes_connection(broker):
    with wire.Connection(broker.bootstrap) as connection:
        connection.send(struct.pack(">i", 0x7FFFFFFF) + b"\x00" * 64)
        assert connection.wait_closed() == b""

    assert_healthy(broker)


def test_negative_frame_length_closes_connection(broker):
    with wire.Connection(broker.bootstrap) as connection:
        connection.send(struct.pack(">i", -1) + b"\x00" * 16)
        assert connection.wait_closed() == b""

    assert_healthy(broker)


def test_truncated_frame_then_client_close(broker):
    frame = wire.api_versions_request(5)
    with wire.Connection(broker.bootstrap) as connection:
        connection.send(struct.pack(">i", 100) + frame[4:14])

    assert_healthy(broker)


def test_truncated_frame_then_half_close(broker):
    frame = wire.api_versions_request(5)
    with wire.Connection(broker.bootstrap) as connection:
        connection.send(frame[:-3])
        connection.sock.shutdown(1)  # SHUT_WR: the broker sees end of stream mid-frame
        assert connection.wait_closed() == b""

    assert_healthy(broker)


def test_http_request_closes_connection(broker):
    with wire.Connection(broker.bootstrap) as connection:
        connection.send(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert connection.wait_closed() == b""

    assert_healthy(broker)


def test_random_bytes_close_connection(broker):
    garbage = random.Random(20240601).randbytes(4096)
    with wire.Connection(broker.bootstrap) as connection:
        connection.send(garbage)
        # The first four bytes decode as some frame length; whatever the
        # broker makes of the rest, it must not answer with a valid frame.
        received = connection.wait_closed()
    assert received == b""

    assert_healthy(broker)


def test_malformed_request_body_closes_connection(broker):
    # A Metadata v1 request whose topic array claims 2^31-1 entries.
    body = struct.pack(">i", 0x7FFFFFFF) + b"\x00\x03abc"
    frame = wire.encode_request(wire.API_METADATA, 1, 7, body)
    with wire.Connection(broker.bootstrap) as connection:
        connection.send(frame)
        assert connection.wait_closed() == b""

    assert_healthy(broker)


def test_unknown_api_key_closes_connection(broker):
    frame = wire.encode_request(9999, 0, 11, b"")
    with wire.Connection(broker.bootstrap) as connection:
        connection.send(frame)
        assert connection.wait_closed() == b""

    assert_healthy(broker)


def test_api_versions_future_version_gets_v0_error_response(broker):
    with wire.Connection(broker.bootstrap) as connection:
        body = connection.request(wire.api_versions_request(21, api_version=127), 21)
        error_code, versions = wire.parse_api_versions_v0(body)

        assert error_code == wire.ERROR_UNSUPPORTED_VERSION
        for api_key in (wire.API_PRODUCE, wire.API_FETCH, wire.API_METADATA, wire.API_API_VERSIONS):
            assert api_key in versions, f"api key {api_key} missing from {versions}"
        assert versions[wire.API_API_VERSIONS][0] == 0
        assert versions[wire.API_API_VERSIONS][1] >= 3

        # The connection stays usable: a supported version gets a normal answer.
        body = connection.request(wire.api_versions_request(22, api_version=0), 22)
        assert wire.parse_api_versions_v0(body)[0] == wire.ERROR_NONE

    assert_healthy(broker)


# ---------------------------------------------------------------------------
# Produce with hand-built record batches


def produce_raw(broker, records_bytes, topic=RAW_TOPIC, acks=-1, correlation_id=31):
    address = leader_address(broker.bootstrap, RAW_TOPIC, 0)
    frame = wire.produce_request(correlation_id, {topic: [(0, records_bytes)]}, acks=acks)
    with wire.Connection(address) as connection:
        body = connection.request(frame, correlation_id)
        result = wire.parse_produce_response(body)
        # An error answer must leave the connection usable.
        versions = connection.request(wire.api_versions_request(correlation_id + 1), correlation_id + 1)
        assert wire.parse_api_versions_v0(versions)[0] == wire.ERROR_NONE
    return result


def test_hand_built_batch_is_stored(broker):
    before = raw_end_offset(broker.bootstrap)
    records = [
        (b"raw-key", b"raw-value", [("h1", b"one")]),
        (None, b"", []),
        (b"no-value", None, [("h2", None)]),
    ]

    result = produce_raw(broker, wire.encode_record_batch(records))

    assert result == {(RAW_TOPIC, 0): (wire.ERROR_NONE, before)}
    read, errors = read_partitions(broker.bootstrap, RAW_TOPIC, {0: before + 3})
    assert errors == []
    got = [(r.offset, r.key, r.value, r.headers) for r in read[0][before:]]
    assert got == [
        (before, b"raw-key", b"raw-value", [("h1", b"one")]),
        (before + 1, None, b"", []),
        (before + 2, b"no-value", None, [("h2", None)]),
    ]

    assert_healthy(broker)


def test_wrong_crc_is_corrupt_message(broker):
    before = raw_end_offset(broker.bootstrap)
    batch = wire.encode_record_batch([(b"k", b"v", [])])
    good_crc = struct.unpack(">I", batch[17:21])[0]
    bad_batch = wire.encode_record_batch([(b"k", b"v", [])], crc_override=good_crc ^ 0xFFFF)

    result = produce_raw(broker, bad_batch)

    assert result[(RAW_TOPIC, 0)][0] == wire.ERROR_CORRUPT_MESSAGE
    assert raw_end_offset(broker.bootstrap) == before

    assert_healthy(broker)


def test_empty_record_set_is_rejected(broker):
    before = raw_end_offset(broker.bootstrap)

    result = produce_raw(broker, b"")

    assert result[(RAW_TOPIC, 0)][0] in (wire.ERROR_INVALID_RECORD, wire.ERROR_CORRUPT_MESSAGE)
    assert raw_end_offset(broker.bootstrap) == before

    assert_healthy(broker)


def test_truncated_batch_is_corrupt_message(broker):
    before = raw_end_offset(broker.bootstrap)
    batch = wire.encode_record_batch([(b"k", b"v" * 100, [])])

    result = produce_raw(broker, batch[:-20])

    assert result[(RAW_TOPIC, 0)][0] in (wire.ERROR_CORRUPT_MESSAGE, wire.ERROR_INVALID_RECORD)
    assert raw_end_offset(broker.bootstrap) == before

    assert_healthy(broker)


def test_invalid_topic_name_in_produce(broker):
    batch = wire.encode_record_batch([(b"k", b"v", [])])

    result = produce_raw(broker, batch, topic="bad topic!")

    assert result[("bad topic!", 0)][0] == wire.ERROR_INVALID_TOPIC_EXCEPTION
    assert "bad topic!" not in admin_client(broker.bootstrap).list_topics(timeout=10).topics

    assert_healthy(broker)


def test_invalid_acks_is_rejected(broker):
    before = raw_end_offset(broker.bootstrap)
    batch = wire.encode_record_batch([(b"k", b"v", [])])

    result = produce_raw(broker, batch, acks=5)

    assert result[(RAW_TOPIC, 0)][0] == wire.ERROR_INVALID_REQUIRED_ACKS
    assert raw_end_offset(broker.bootstrap) == before

    assert_healthy(broker)
