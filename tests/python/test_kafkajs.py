"""kafkajs (Node.js): produce with gzip and consume with a consumer group."""

import json
import pathlib
import struct
import subprocess

import pytest

import kafka_wire as wire
from clients import create_topic, read_partitions

JS_DIR = pathlib.Path(__file__).resolve().parents[1] / "js"
RECORD_COUNT = 600
PARTITIONS = 3
CONSUME_TIMEOUT_MS = 30_000


def expected_record(index):
    """The record round_trip.js builds for `index`: (key, value, headers)."""
    key = None if index % 9 == 0 else f"key-{index % 20}"
    value = None if index % 31 == 0 else f"kafkajs value {index}"
    return key, value, {"index": str(index), "client": "kafkajs"}


def run_node(*args, timeout_s=90):
    if not (JS_DIR / "node_modules" / "kafkajs").is_dir():
        raise AssertionError(f"kafkajs is not installed: run `npm ci` in {JS_DIR}")
    return subprocess.run(
        ["node", str(JS_DIR / "round_trip.js"), *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        cwd=JS_DIR,
    )


def expected_offsets(requests):
    """Map each record index to (partition, offset) from the produce responses.

    Request r carries records 100*r .. 100*r+99; record i goes to partition
    i % PARTITIONS, so its offset is that partition's base offset plus its
    position among the request's records for that partition.
    """
    placed = {}
    for request_number, responses in enumerate(requests):
        base = {r["partition"]: int(r["baseOffset"]) for r in responses}
        for response in responses:
            assert response["errorCode"] == 0, f"produce request {request_number}: {response}"
        start = request_number * 100
        seen = {p: 0 for p in range(PARTITIONS)}
        for index in range(start, min(RECORD_COUNT, start + 100)):
            partition = index % PARTITIONS
            placed[index] = (partition, base[partition] + seen[partition])
            seen[partition] += 1
    return placed


def group_api_error(bootstrap):
    """Return why the broker cannot serve consumer groups, or None if it can."""
    with wire.Connection(bootstrap) as connection:
        error_code, versions = wire.parse_api_versions_v0(
            connection.request(wire.api_versions_request(1), 1)
        )
    if error_code != wire.ERROR_NONE:
        return f"ApiVersions returned error {error_code}"
    for api_key in (wire.API_FIND_COORDINATOR, wire.API_JOIN_GROUP):
        if api_key not in versions:
            return f"ApiVersions does not list api key {api_key}"

    try:
        with wire.Connection(bootstrap) as connection:
            body = connection.request(wire.find_coordinator_request(2, "weir-probe"), 2)
    except ConnectionError as error:
        return f"FindCoordinator closed the connection: {error}"
    error_code, _, coordinator = wire.parse_find_coordinator_v0(body)
    if error_code != wire.ERROR_NONE:
        return f"FindCoordinator returned error {error_code}"

    try:
        with wire.Connection(coordinator, timeout_s=30) as connection:
            body = connection.request(wire.join_group_request(3, "weir-probe"), 3)
    except ConnectionError as error:
        return f"JoinGroup closed the connection: {error}"
    (error_code,) = struct.unpack(">h", body[:2])
    if error_code != wire.ERROR_NONE:
        return f"JoinGroup returned error {error_code}"
    return None


def test_kafkajs_produce_then_group_consume(broker):
    create_topic(broker.bootstrap, "kafkajs", PARTITIONS)

    produced = run_node("produce", broker.bootstrap, "kafkajs", str(RECORD_COUNT), str(PARTITIONS))
    assert produced.returncode == 0, f"kafkajs produce failed:\n{produced.stderr}"
    placed = expected_offsets(json.loads(produced.stdout)["requests"])

    # Check what kafkajs stored with librdkafka before reading it with kafkajs.
    ends = {p: RECORD_COUNT // PARTITIONS for p in range(PARTITIONS)}
    stored, errors = read_partitions(broker.bootstrap, "kafkajs", ends)
    assert errors == []
    by_position = {position: index for index, position in placed.items()}
    for partition, records in stored.items():
        assert [r.offset for r in records] == list(range(ends[partition]))
        for record in records:
            index = by_position[(partition, record.offset)]
            key, value, headers = expected_record(index)
            assert record.key == (None if key is None else key.encode())
            assert record.value == (None if value is None else value.encode())
            assert dict((k, v.decode()) for k, v in record.headers) == headers

    consumed = run_node("consume", broker.bootstrap, "kafkajs", str(RECORD_COUNT), str(CONSUME_TIMEOUT_MS))
    if consumed.returncode != 0:
        reason = group_api_error(broker.bootstrap)
        if reason is not None:
            pytest.xfail(f"needs consumer groups: {reason}")
    assert consumed.returncode == 0, f"kafkajs consume failed:\n{consumed.stderr}"

    records = json.loads(consumed.stdout)["records"]
    assert len(records) == RECORD_COUNT
    for record in records:
        position = (record["partition"], int(record["offset"]))
        index = by_position[position]
        key, value, headers = expected_record(index)
        assert (record["key"], record["value"], record["headers"]) == (key, value, headers)
    got = sorted((r["partition"], int(r["offset"])) for r in records)
    assert got == sorted(by_position)
