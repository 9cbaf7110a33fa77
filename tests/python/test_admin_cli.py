"""`weir groups`: the admin subcommand that lists consumer groups, their
members, committed offsets, log end offsets and lag, against a running
broker with real confluent-kafka groups on both shards.
"""

import json
import subprocess

import pytest

from clients import create_topic, producer
from group_support import consume_and_commit, confluent_consumer, free_port_range, group_on_node, produce_numbers
from weir_broker import WEIR_BIN

TOPIC = "cli-orders"
PARTITIONS = 4
PER_PARTITION = 25
CLI_TIMEOUT_S = 60


def weir_groups(bootstrap, *args):
    """Run `weir groups` and return the completed process."""
    return subprocess.run(
        [str(WEIR_BIN), "groups", "--bootstrap", bootstrap, *args],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
    )


def weir_groups_json(bootstrap, *args):
    completed = weir_groups(bootstrap, "--json", *args)
    assert completed.returncode == 0, f"weir groups failed:\n{completed.stderr}"
    return {group["group_id"]: group for group in json.loads(completed.stdout)}


def expected_partitions(committed, ends, member_id):
    """The partition rows `weir groups` must print for a group."""
    rows = []
    for partition in range(PARTITIONS):
        offset = committed.get(partition)
        rows.append(
            {
                "topic": TOPIC,
                "partition": partition,
                "committed_offset": offset,
                "log_end_offset": ends[partition],
                "lag": None if offset is None else ends[partition] - offset,
                "member_id": member_id,
            }
        )
    return rows


@pytest.mark.timeout(180)
def test_weir_groups_shows_members_offsets_and_lag(broker):
    create_topic(broker.bootstrap, TOPIC, PARTITIONS)
    ends = produce_numbers(broker.bootstrap, TOPIC, PARTITIONS, PER_PARTITION)

    # An active group on each shard, and an empty one whose member committed and left.
    active = {node: group_on_node(broker.bootstrap, f"cli-active-{node}", node) for node in (0, 1)}
    empty = group_on_node(broker.bootstrap, "cli-empty", 1)
    members = {}
    committed = {}
    try:
        for node in (0, 1):
            member = confluent_consumer(broker.bootstrap, active[node], f"cli-client-{node}")
            member.subscribe([TOPIC])
            members[node] = member
            committed[active[node]] = consume_and_commit(member, TOPIC, 30 + node)
        leaver = confluent_consumer(broker.bootstrap, empty, "cli-leaver")
        leaver.subscribe([TOPIC])
        committed[empty] = consume_and_commit(leaver, TOPIC, 10)
        leaver.close()

        groups = weir_groups_json(broker.bootstrap)
        assert set(active.values()) | {empty} <= set(groups), f"listed groups: {sorted(groups)}"
        for node in (0, 1):
            group = groups[active[node]]
            assert group["coordinator"] == node
            assert group["state"] == "Stable"
            assert (group["protocol_type"], group["protocol"]) == ("consumer", "range")
            assert len(group["members"]) == 1
            (member,) = group["members"]
            assert member["client_id"] == f"cli-client-{node}"
            assert member["client_host"] == "/127.0.0.1"
            assert member["member_id"].startswith(f"cli-client-{node}-")
            assert member["group_instance_id"] is None
            assert member["assignment"] == [[TOPIC, p] for p in range(PARTITIONS)]
            assert group["partitions"] == expected_partitions(committed[active[node]], ends, member["member_id"])

        group = groups[empty]
        assert (group["state"], group["coordinator"], group["members"]) == ("Empty", 1, [])
        expected = [row for row in expected_partitions(committed[empty], ends, None) if row["committed_offset"] is not None]
        assert group["partitions"] == expected, "an empty group shows only its committed partitions"

        # Lag follows the log end offset.
        client = producer(broker.bootstrap)
        for _ in range(5):
            client.produce(TOPIC, value=b"more", partition=0)
        assert client.flush(30) == 0
        only = weir_groups_json(broker.bootstrap, "--group", active[1])
        assert list(only) == [active[1]], "--group shows that group alone"
        row = only[active[1]]["partitions"][0]
        assert row["log_end_offset"] == PER_PARTITION + 5
        if row["committed_offset"] is not None:
            assert row["lag"] == PER_PARTITION + 5 - row["committed_offset"]

        # The text form carries the same facts, one row per partition.
        text = weir_groups(broker.bootstrap, "--group", active[0])
        assert text.returncode == 0, text.stderr
        lines = text.stdout.splitlines()
        assert lines[0].split() == ["GROUP", active[0], "STATE", "Stable", "PROTOCOL", "consumer/range", "COORDINATOR", "0", "MEMBERS", "1"]
        member_row = lines[2].split()
        assert member_row[1:4] == ["-", "cli-client-0", "/127.0.0.1"]
        assert member_row[4] == ",".join(f"{TOPIC}-{p}" for p in range(PARTITIONS))
        assert lines[3].split() == ["TOPIC", "PARTITION", "COMMITTED-OFFSET", "LOG-END-OFFSET", "LAG", "MEMBER-ID"]
        partition_rows = [line.split() for line in lines[4:]]
        assert len(partition_rows) == PARTITIONS
        for partition, cells in enumerate(partition_rows):
            offset = committed[active[0]].get(partition)
            end = ends[partition] + (5 if partition == 0 else 0)
            expected_cells = [TOPIC, str(partition), "-" if offset is None else str(offset), str(end)]
            expected_cells.append("-" if offset is None else str(end - offset))
            assert cells[:5] == expected_cells
            assert cells[5] == member_row[0]
    finally:
        for member in members.values():
            member.close()

    missing = weir_groups(broker.bootstrap, "--group", "no-such-group")
    assert missing.returncode != 0
    assert "group no-such-group not found" in missing.stderr


def test_weir_groups_reports_unreachable_broker():
    # A port that was free a moment ago: nothing listens there.
    address = f"127.0.0.1:{free_port_range(1)}"
    completed = weir_groups(address)
    assert completed.returncode != 0
    assert f"cannot connect to broker {address}" in completed.stderr
