"""kcat (librdkafka's command line client) against a two-shard broker."""

import collections
import json
import subprocess

from clients import create_topic

KCAT_TIMEOUT_S = 60


def kcat(*args, input_text=None):
    result = subprocess.run(
        ["kcat", *args],
        input=input_text,
        capture_output=True,
        text=True,
        timeout=KCAT_TIMEOUT_S,
    )
    assert result.returncode == 0, (
        f"kcat {' '.join(args)} exited with {result.returncode}\nstderr:\n{result.stderr}"
    )
    return result.stdout


def consume_lines(bootstrap, topic, *extra):
    output = kcat(
        "-b", bootstrap, "-t", topic, "-C", "-e", "-o", "beginning", "-q",
        "-f", "%p\t%o\t%k\t%s\n", *extra,
    )
    rows = []
    for line in output.splitlines():
        partition, offset, key, value = line.split("\t")
        rows.append((int(partition), int(offset), key, value))
    return rows


def test_kcat_metadata_lists_shards_and_topic(broker):
    create_topic(broker.bootstrap, "kcat-metadata", 8)

    metadata = json.loads(kcat("-b", broker.bootstrap, "-L", "-J", "-t", "kcat-metadata"))

    brokers = {b["id"]: b["name"] for b in metadata["brokers"]}
    assert sorted(brokers) == [0, 1]
    ports = {int(name.rsplit(":", 1)[1]) for name in brokers.values()}
    assert len(ports) == 2, f"both shards advertise the same address: {brokers}"
    assert brokers[0] == broker.bootstrap

    [topic] = metadata["topics"]
    assert topic["topic"] == "kcat-metadata"
    assert "error" not in topic
    partitions = {p["partition"]: p for p in topic["partitions"]}
    assert sorted(partitions) == list(range(8))
    leaders = {p["leader"] for p in partitions.values()}
    assert leaders == {0, 1}, f"8 partitions should be spread over both shards, leaders: {leaders}"
    for partition in partitions.values():
        assert [r["id"] for r in partition["replicas"]] == [partition["leader"]]


def test_kcat_keyed_lines_round_trip_in_order(broker):
    create_topic(broker.bootstrap, "kcat-lines", 1)
    lines = [f"key-{i % 7}:line {i} with a colon: inside" for i in range(1000)]

    kcat("-b", broker.bootstrap, "-t", "kcat-lines", "-P", "-K", ":",
         input_text="\n".join(lines) + "\n")

    rows = consume_lines(broker.bootstrap, "kcat-lines")
    expected = [
        (0, i, f"key-{i % 7}", f"line {i} with a colon: inside") for i in range(1000)
    ]
    assert rows == expected


def test_kcat_compressed_keyed_partitions_keep_order(broker):
    create_topic(broker.bootstrap, "kcat-partitioned", 4)
    lines = [f"user-{i % 13}:event {i}" for i in range(3000)]

    kcat("-b", broker.bootstrap, "-t", "kcat-partitioned", "-P", "-K", ":", "-z", "lz4",
         input_text="\n".join(lines) + "\n")

    rows = consume_lines(broker.bootstrap, "kcat-partitioned")
    assert len(rows) == 3000

    by_partition = collections.defaultdict(list)
    partition_of_key = {}
    for partition, offset, key, value in rows:
        by_partition[partition].append((offset, key, value))
        assert partition_of_key.setdefault(key, partition) == partition, (
            f"key {key} appears in partitions {partition_of_key[key]} and {partition}"
        )

    for partition, items in by_partition.items():
        offsets = [offset for offset, _, _ in items]
        assert offsets == list(range(len(items))), f"partition {partition} offsets not dense"
        sequence = [int(value.split()[1]) for _, _, value in items]
        assert sequence == sorted(sequence), f"partition {partition} out of produce order"
        for _, key, value in items:
            assert key == f"user-{int(value.split()[1]) % 13}"

    sent = sorted(int(line.split(" ")[1]) for line in lines)
    got = sorted(int(value.split()[1]) for _, _, _, value in rows)
    assert got == sent
