"""Consumer groups with real clients.

- confluent-kafka: members leave and join a group while a producer runs; the
  test tracks what each member consumed and committed.
- kafka-python and kafkajs: a consumer commits, the broker restarts, and the
  group resumes exactly at the committed offsets.
- confluent-kafka's AdminClient: list, describe and delete groups on both
  shards, and fetch their committed offsets.
- Committed offsets survive a kill -9 of the broker.
"""

import collections
import json
import pathlib
import subprocess
import threading
import time

import pytest
from confluent_kafka import (
    OFFSET_INVALID,
    Consumer,
    ConsumerGroupState,
    ConsumerGroupType,
    ConsumerGroupTopicPartitions,
    KafkaError,
    KafkaException,
    TopicPartition,
)
from kafka import KafkaConsumer
from kafka import TopicPartition as KafkaPythonTopicPartition
from kafka.structs import OffsetAndMetadata

from clients import DeliveryLog, admin_client, create_topic, end_offsets, producer
from group_support import consume_and_commit, confluent_consumer, group_on_node, produce_numbers

JS_DIR = pathlib.Path(__file__).resolve().parents[1] / "js"
ADMIN_TIMEOUT_S = 30.0
PHASE_TIMEOUT_S = 60.0
CONSUME_BATCH = 500
STEP_TIMEOUT_S = 0.05
POLL_INTERVAL_S = 0.05
# Records every member must consume after a stable point, to show that the
# group makes progress while the producer runs.
PROGRESS_RECORDS = 300
MEMBER_CLOSE_TIMEOUT_S = 30.0


def wait_for(what, condition, timeout_s=PHASE_TIMEOUT_S):
    """Poll `condition` until it returns a true value and return that value."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout_s}s waiting for {what}"
        time.sleep(POLL_INTERVAL_S)


# ---------------------------------------------------------------------------
# Rebalancing under load


class Ledger:
    """What the members of one group consumed and committed.

    Between two rebalances a member owns each of its partitions alone, so it
    must receive that partition's records contiguously, starting exactly at
    the group's committed offset. A record is delivered twice only when its
    first consumer had not committed it when the partition moved.
    """

    def __init__(self, topic):
        self.topic = topic
        # Members run in their own threads.
        self.lock = threading.Lock()
        self.committed = {}
        self.deliveries = collections.defaultdict(list)
        self.next_offset = {}
        self.redelivered = []
        self.commit_failures = []
        # (partition, offset) of records consumed but left uncommitted by a failed commit.
        self.uncommitted = set()
        self.discarded = 0

    def record(self, member, assignment, partition, offset, number):
        with self.lock:
            key = (member, assignment, partition)
            expected = self.next_offset.get(key, self.committed.get(partition, 0))
            assert offset == expected, (
                f"{member} (assignment {assignment}) received {self.topic}-{partition} offset {offset}, "
                f"expected {expected}; committed offset is {self.committed.get(partition)}"
            )
            self.next_offset[key] = offset + 1
            if self.deliveries[(partition, offset)]:
                self.redelivered.append((partition, offset))
            self.deliveries[(partition, offset)].append((member, number))

    def commit_succeeded(self, partition, offset):
        with self.lock:
            self.committed[partition] = offset

    def commit_failed(self, member, partition, offset, error):
        with self.lock:
            self.commit_failures.append((member, partition, offset, error))
            first = self.committed.get(partition, 0)
            self.uncommitted.update((partition, uncommitted) for uncommitted in range(first, offset))


class Member:
    """One confluent-kafka group member that consumes in its own thread, as
    an application would.

    A member blocked in a synchronous commit must not stop the others: with
    cooperative-sticky, librdkafka sends the commit behind the member's
    pending JoinGroup, which completes only once the other members rejoin.

    With an eager assignor every rebalance revokes and reassigns all
    partitions. With cooperative-sticky the callbacks name only the
    partitions that move.
    """

    def __init__(self, name, bootstrap, group, ledger, strategy):
        self.name = name
        self.ledger = ledger
        self.incremental = strategy == "cooperative-sticky"
        self.assignment = set()
        # Partition -> number of the assignment that gave it to this member.
        self.assigned_by = {}
        self.assignment_count = 0
        self.consumed = 0
        self.errors = []

        self.consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": group,
                "client.id": name,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "partition.assignment.strategy": strategy,
                "session.timeout.ms": 10_000,
                "heartbeat.interval.ms": 500,
                "fetch.wait.max.ms": 100,
                "error_cb": self.errors.append,
            }
        )
        self.consumer.subscribe(
            [ledger.topic], on_assign=self.on_assign, on_revoke=self.on_revoke, on_lost=self.on_revoke
        )

        self.failure = None
        self.stop_requested = threading.Event()
        self.thread = threading.Thread(target=self.run, name=name, daemon=True)
        self.thread.start()

    def run(self):
        try:
            while not self.stop_requested.is_set():
                self.step()
        except BaseException as error:  # raised again by the test thread
            self.failure = error
        finally:
            self.consumer.close()

    def on_assign(self, consumer, partitions):
        self.assignment_count += 1
        added = {tp.partition for tp in partitions}
        self.assignment = self.assignment | added if self.incremental else added
        for partition in added:
            self.assigned_by[partition] = self.assignment_count

    def on_revoke(self, consumer, partitions):
        revoked = {tp.partition for tp in partitions}
        self.assignment = self.assignment - revoked if self.incremental else set()

    def step(self):
        """Consume one batch, process it, and commit it synchronously."""
        messages = self.consumer.consume(num_messages=CONSUME_BATCH, timeout=STEP_TIMEOUT_S)
        processed = {}
        for message in messages:
            assert message.error() is None, f"{self.name}: message error {message.error()}"
            partition = message.partition()
            if partition not in self.assignment:
                # Fetched before a revocation that ran inside this consume
                # call. It is not processed, so the partition's next owner receives it.
                self.ledger.discarded += 1
                continue
            assignment = self.assigned_by[partition]
            self.ledger.record(self.name, assignment, partition, message.offset(), int(message.value()))
            self.consumed += 1
            processed[partition] = message.offset() + 1
        if processed:
            self.commit(processed)

    def commit(self, offsets):
        request = [TopicPartition(self.ledger.topic, partition, offset) for partition, offset in offsets.items()]
        try:
            result = self.consumer.commit(offsets=request, asynchronous=False)
        except KafkaException as error:
            for partition, offset in offsets.items():
                self.ledger.commit_failed(self.name, partition, offset, error.args[0].name())
            return
        for tp in result:
            if tp.error is not None:
                self.ledger.commit_failed(self.name, tp.partition, tp.offset, tp.error.name())
            else:
                self.ledger.commit_succeeded(tp.partition, tp.offset)

    def close(self):
        """Stop consuming, leave the group, and raise what failed in the member's thread."""
        self.stop_requested.set()
        self.thread.join(MEMBER_CLOSE_TIMEOUT_S)
        assert not self.thread.is_alive(), f"{self.name} did not close within {MEMBER_CLOSE_TIMEOUT_S}s"
        if self.failure is not None:
            raise self.failure


def balanced(members, partitions, per_member):
    """Return whether every member owns `per_member` partitions and together they own all, once each."""
    owned = [partition for member in members for partition in member.assignment]
    return sorted(owned) == list(range(partitions)) and all(len(m.assignment) == per_member for m in members)


def pump(members, what, condition, timeout_s=PHASE_TIMEOUT_S):
    """Wait while the members consume until `condition()` returns true."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        for member in members:
            if member.failure is not None:
                raise member.failure
        if time.monotonic() > deadline:
            state = {m.name: (sorted(m.assignment), m.consumed, m.errors[-3:]) for m in members}
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}; members: {state}")
        time.sleep(POLL_INTERVAL_S)


def check_broker_view(bootstrap, group, members, per_member, strategy):
    """Check that DescribeGroups shows the group Stable with the members' own assignments."""
    admin = admin_client(bootstrap)
    expected = {member.name: sorted(member.assignment) for member in members}

    def described():
        futures = admin.describe_consumer_groups([group], request_timeout=ADMIN_TIMEOUT_S)
        description = futures[group].result(ADMIN_TIMEOUT_S)
        found = {
            m.client_id: sorted(tp.partition for tp in m.assignment.topic_partitions) for m in description.members
        }
        if description.state == ConsumerGroupState.STABLE and found == expected:
            return description
        return None

    description = wait_for(f"DescribeGroups to show {expected}", described, timeout_s=ADMIN_TIMEOUT_S)
    assert description.partition_assignor == strategy
    assert all(len(partitions) == per_member for partitions in expected.values())


@pytest.mark.timeout(300)
@pytest.mark.parametrize("strategy", ["range", "cooperative-sticky"])
def test_group_rebalances_under_load(broker, strategy):
    topic, partitions = "rebalance", 12
    create_topic(broker.bootstrap, topic, partitions)
    group = "rebalance-group"
    ledger = Ledger(topic)

    # A producer thread writes numbered records until `stop` is set.
    stop = threading.Event()
    log = DeliveryLog()
    produced = []

    def produce_until_stopped():
        client = producer(broker.bootstrap, **{"linger.ms": 5})
        number = 0
        while not stop.is_set():
            for _ in range(20):
                client.produce(topic, value=str(number).encode(), partition=number % partitions, on_delivery=log.for_index(number))
                number += 1
            client.poll(0.01)
        produced.append((number, client.flush(30)))

    writer = threading.Thread(target=produce_until_stopped, daemon=True)
    writer.start()

    members = [Member(f"member-{index}", broker.bootstrap, group, ledger, strategy) for index in range(3)]
    try:
        pump(members, "three members with 4 partitions each", lambda: balanced(members, partitions, 4))
        check_broker_view(broker.bootstrap, group, members, 4, strategy)
        progress_from = {m.name: m.consumed for m in members}
        pump(members, "progress with three members", lambda: all(m.consumed >= progress_from[m.name] + PROGRESS_RECORDS for m in members))

        leaving = members.pop()
        leaving.close()
        pump(members, "two members with 6 partitions each", lambda: balanced(members, partitions, 6))
        check_broker_view(broker.bootstrap, group, members, 6, strategy)
        progress_from = {m.name: m.consumed for m in members}
        pump(members, "progress with two members", lambda: all(m.consumed >= progress_from[m.name] + PROGRESS_RECORDS for m in members))

        members.append(Member("member-3", broker.bootstrap, group, ledger, strategy))
        pump(members, "three members again with 4 partitions each", lambda: balanced(members, partitions, 4))
        check_broker_view(broker.bootstrap, group, members, 4, strategy)
        progress_from = {m.name: m.consumed for m in members}
        pump(members, "progress after the join", lambda: all(m.consumed >= progress_from[m.name] + PROGRESS_RECORDS for m in members))

        stop.set()
        writer.join(60)
        assert produced and produced[0][1] == 0, f"producer did not finish: {produced}"
        assert log.errors == {}, f"delivery errors: {list(log.errors.items())[:5]}"
        ends = end_offsets(broker.bootstrap, topic, partitions)
        pump(
            members,
            f"the group to consume and commit up to the end offsets {ends}",
            lambda: all(ledger.committed.get(p, 0) == ends[p] for p in range(partitions)),
        )
    finally:
        stop.set()
        failures = []
        for member in members:
            try:
                member.close()
            except BaseException as error:
                failures.append(error)
        if failures:
            raise failures[0]

    # Every acknowledged record was consumed, as the record the producer sent.
    acknowledged = log.by_partition()
    for partition in range(partitions):
        consumed_offsets = sorted(offset for (p, offset) in ledger.deliveries if p == partition)
        assert consumed_offsets == list(range(ends[partition])), f"partition {partition}: consumed offsets have gaps"
        for offset, number in acknowledged[partition].items():
            numbers = {seen for _, seen in ledger.deliveries[(partition, offset)]}
            assert numbers == {number}, f"{topic}-{partition} offset {offset}: consumed {numbers}, produced {number}"
    assert sum(len(placed) for placed in acknowledged.values()) == sum(ends.values())

    # Each member started a partition at the committed offset (the ledger
    # checks it), so only records whose commit failed can come twice.
    unexpected = sorted(set(ledger.redelivered) - ledger.uncommitted)
    assert unexpected == [], (
        f"records redelivered although committed: {unexpected[:10]}; failed commits: {ledger.commit_failures[:5]}"
    )

    admin = admin_client(broker.bootstrap)
    request = [ConsumerGroupTopicPartitions(group, [TopicPartition(topic, p) for p in range(partitions)])]
    result = admin.list_consumer_group_offsets(request)[group].result(ADMIN_TIMEOUT_S)
    committed = {tp.partition: tp.offset for tp in result.topic_partitions}
    assert committed == ends, "final committed offsets equal the log end offsets"


# ---------------------------------------------------------------------------
# Admin API


def committed_offsets(admin, group, topic, partitions):
    """Return {partition: committed offset} of `group` through OffsetFetch.

    librdkafka reports a partition without a committed offset as OFFSET_INVALID (-1001).
    """
    request = [ConsumerGroupTopicPartitions(group, [TopicPartition(topic, p) for p in range(partitions)])]
    result = admin.list_consumer_group_offsets(request)[group].result(ADMIN_TIMEOUT_S)
    for tp in result.topic_partitions:
        assert tp.error is None, f"{group} {tp}"
    return {tp.partition: tp.offset for tp in result.topic_partitions}


@pytest.mark.timeout(180)
def test_admin_lists_describes_and_deletes_groups(broker):
    topic, partitions = "admin-groups", 4
    create_topic(broker.bootstrap, topic, partitions)
    produce_numbers(broker.bootstrap, topic, partitions, 25)
    admin = admin_client(broker.bootstrap)

    # On each shard: an active group with one member, and an empty group
    # whose only member committed and left.
    active = {node: group_on_node(broker.bootstrap, f"active-{node}", node) for node in (0, 1)}
    empty = {node: group_on_node(broker.bootstrap, f"empty-{node}", node) for node in (0, 1)}
    expected_offsets = {}
    members = {}
    try:
        for node in (0, 1):
            leaver = confluent_consumer(broker.bootstrap, empty[node], f"leaver-{node}")
            leaver.subscribe([topic])
            expected_offsets[empty[node]] = consume_and_commit(leaver, topic, 30)
            leaver.close()

            member = confluent_consumer(broker.bootstrap, active[node], f"client-{node}")
            member.subscribe([topic])
            members[node] = member
            expected_offsets[active[node]] = consume_and_commit(member, topic, 40)

        listed = admin.list_consumer_groups(request_timeout=ADMIN_TIMEOUT_S).result(ADMIN_TIMEOUT_S)
        assert listed.errors == []
        states = {group.group_id: group.state for group in listed.valid}
        for node in (0, 1):
            assert states.get(active[node]) == ConsumerGroupState.STABLE, f"listing: {states}"
            assert states.get(empty[node]) == ConsumerGroupState.EMPTY, f"listing: {states}"
        assert all(not group.is_simple_consumer_group for group in listed.valid if group.group_id in states)

        stable_only = admin.list_consumer_groups(
            request_timeout=ADMIN_TIMEOUT_S, states={ConsumerGroupState.STABLE}
        ).result(ADMIN_TIMEOUT_S)
        assert sorted(group.group_id for group in stable_only.valid) == sorted(active.values())

        futures = admin.describe_consumer_groups(list(active.values()) + list(empty.values()), request_timeout=ADMIN_TIMEOUT_S)
        for node in (0, 1):
            description = futures[active[node]].result(ADMIN_TIMEOUT_S)
            assert description.state == ConsumerGroupState.STABLE
            assert description.coordinator.id == node, "the group's shard coordinates it"
            assert description.partition_assignor == "range"
            assert not description.is_simple_consumer_group
            assert len(description.members) == 1
            (member,) = description.members
            assert member.client_id == f"client-{node}"
            assert member.host == "/127.0.0.1"
            assert member.member_id.startswith(f"client-{node}-")
            assigned = sorted((tp.topic, tp.partition) for tp in member.assignment.topic_partitions)
            assert assigned == [(topic, p) for p in range(partitions)]

            description = futures[empty[node]].result(ADMIN_TIMEOUT_S)
            assert description.state == ConsumerGroupState.EMPTY
            assert description.members == []

        for group, positions in expected_offsets.items():
            expected = {p: positions.get(p, OFFSET_INVALID) for p in range(partitions)}
            assert committed_offsets(admin, group, topic, partitions) == expected, group

        # Only empty groups can be deleted.
        futures = admin.delete_consumer_groups([active[0], empty[0], empty[1]], request_timeout=ADMIN_TIMEOUT_S)
        with pytest.raises(KafkaException) as refused:
            futures[active[0]].result(ADMIN_TIMEOUT_S)
        assert refused.value.args[0].code() == KafkaError.NON_EMPTY_GROUP
        for node in (0, 1):
            futures[empty[node]].result(ADMIN_TIMEOUT_S)

        listed = admin.list_consumer_groups(request_timeout=ADMIN_TIMEOUT_S).result(ADMIN_TIMEOUT_S)
        remaining = {group.group_id for group in listed.valid}
        assert set(active.values()) <= remaining
        assert not set(empty.values()) & remaining, f"deleted groups are still listed: {remaining}"
        for node in (0, 1):
            assert committed_offsets(admin, empty[node], topic, partitions) == {p: OFFSET_INVALID for p in range(partitions)}
            assert committed_offsets(admin, active[node], topic, partitions) == {
                p: expected_offsets[active[node]].get(p, OFFSET_INVALID) for p in range(partitions)
            }
    finally:
        for member in members.values():
            member.close()


def test_admin_lists_groups_by_type(broker):
    create_topic(broker.bootstrap, "typed-groups", 2)
    produce_numbers(broker.bootstrap, "typed-groups", 2, 5)
    member = confluent_consumer(broker.bootstrap, "typed-group", "typed-client")
    member.subscribe(["typed-groups"])
    try:
        consume_and_commit(member, "typed-groups", 4)
        admin = admin_client(broker.bootstrap)

        classic = admin.list_consumer_groups(
            request_timeout=ADMIN_TIMEOUT_S, types={ConsumerGroupType.CLASSIC}
        ).result(ADMIN_TIMEOUT_S)
        assert [(group.group_id, group.type) for group in classic.valid] == [("typed-group", ConsumerGroupType.CLASSIC)]

        consumer_type = admin.list_consumer_groups(
            request_timeout=ADMIN_TIMEOUT_S, types={ConsumerGroupType.CONSUMER}
        ).result(ADMIN_TIMEOUT_S)
        assert consumer_type.valid == [], "the broker has no groups of the consumer (KIP-848) type"
    finally:
        member.close()


# ---------------------------------------------------------------------------
# Durability of committed offsets


@pytest.mark.timeout(180)
def test_committed_offsets_survive_kill9(start_broker):
    broker = start_broker()
    topic, partitions = "kill9-offsets", 6
    create_topic(broker.bootstrap, topic, partitions)
    groups = [group_on_node(broker.bootstrap, f"durable-{node}", node) for node in (0, 1)]

    # Each group commits many times; the last commit of each partition wins.
    expected = {}
    for group in groups:
        client = confluent_consumer(broker.bootstrap, group, "committer")
        try:
            for round_number in range(1, 51):
                offsets = [
                    TopicPartition(topic, p, round_number * 10 + p, metadata=f"{group}:{round_number}")
                    for p in range(partitions)
                ]
                result = client.commit(offsets=offsets, asynchronous=False)
                assert all(tp.error is None for tp in result)
            expected[group] = {p: (500 + p, f"{group}:50") for p in range(partitions)}
        finally:
            client.close()

    broker.kill9()
    broker.start()

    admin = admin_client(broker.bootstrap)
    for group in groups:
        request = [ConsumerGroupTopicPartitions(group, [TopicPartition(topic, p) for p in range(partitions)])]
        result = admin.list_consumer_group_offsets(request)[group].result(ADMIN_TIMEOUT_S)
        found = {tp.partition: (tp.offset, tp.metadata) for tp in result.topic_partitions}
        assert found == expected[group], f"{group} after kill -9"


# ---------------------------------------------------------------------------
# Resuming from committed offsets after a broker restart


def check_resume(first_run, committed, second_run, ends):
    """Check that the second run started each partition at the committed offset.

    `first_run` and `second_run` map partition -> consumed offsets in order.
    The second run must start at `committed` (0 where nothing was committed),
    read contiguously to `ends`, and so redeliver exactly the first run's
    uncommitted tail.
    """
    for partition, end in ends.items():
        start = committed.get(partition, 0)
        offsets = second_run.get(partition, [])
        assert offsets == list(range(start, end)), (
            f"partition {partition}: resumed at {offsets[:1]}, expected {start}; "
            f"read {len(offsets)} offsets, expected {end - start}"
        )
        tail = [offset for offset in first_run.get(partition, []) if offset >= start]
        redelivered = [offset for offset in offsets if offset in set(first_run.get(partition, []))]
        assert redelivered == tail, f"partition {partition}: redelivered {redelivered}, uncommitted tail {tail}"


@pytest.mark.timeout(180)
def test_kafka_python_resumes_after_restart(start_broker):
    broker = start_broker()
    topic, partitions, per_partition = "kafka-python-resume", 3, 100
    create_topic(broker.bootstrap, topic, partitions)
    ends = produce_numbers(broker.bootstrap, topic, partitions, per_partition)
    group = "kafka-python-resume"

    def kafka_python_consumer(bootstrap):
        consumer = KafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=10_000,
            heartbeat_interval_ms=500,
            fetch_max_wait_ms=100,
            max_poll_records=20,
        )
        consumer.subscribe([topic])
        return consumer

    def consume(consumer, count, into):
        consumed = 0
        deadline = time.monotonic() + PHASE_TIMEOUT_S
        while consumed < count:
            assert time.monotonic() < deadline, f"kafka-python consumed {consumed} of {count} records"
            batches = consumer.poll(timeout_ms=200, max_records=min(20, count - consumed))
            for tp, records in batches.items():
                into.setdefault(tp.partition, []).extend(record.offset for record in records)
                consumed += len(records)

    first_run = {}
    consumer = kafka_python_consumer(broker.bootstrap)
    try:
        consume(consumer, 150, first_run)
        committed = {partition: offsets[-1] + 1 for partition, offsets in first_run.items()}
        consumer.commit({KafkaPythonTopicPartition(topic, p): OffsetAndMetadata(o, "", -1) for p, o in committed.items()})
        # The tail: consumed, never committed.
        consume(consumer, 60, first_run)
    finally:
        consumer.close(autocommit=False)

    assert broker.stop() == 0
    broker.start()

    second_run = {}
    consumer = kafka_python_consumer(broker.bootstrap)
    try:
        remaining = sum(ends.values()) - sum(committed.values())
        consume(consumer, remaining, second_run)
        # Nothing beyond the end comes later either.
        extra = consumer.poll(timeout_ms=500)
        assert not any(extra.values()), f"records after the end: {extra}"
    finally:
        consumer.close(autocommit=False)
    check_resume(first_run, committed, second_run, ends)


def run_groups_js(*args, timeout_s=90):
    if not (JS_DIR / "node_modules" / "kafkajs").is_dir():
        raise AssertionError(f"kafkajs is not installed: run `npm ci` in {JS_DIR}")
    completed = subprocess.run(
        ["node", str(JS_DIR / "groups.js"), *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        cwd=JS_DIR,
    )
    assert completed.returncode == 0, f"groups.js {args[0]} failed with {completed.returncode}:\n{completed.stderr}"
    return json.loads(completed.stdout)


def offsets_by_partition(records):
    by_partition = {}
    for record in records:
        by_partition.setdefault(record["partition"], []).append(int(record["offset"]))
    return by_partition


@pytest.mark.timeout(240)
def test_kafkajs_resumes_after_restart(start_broker):
    broker = start_broker()
    topic, partitions, per_partition = "kafkajs-resume", 3, 100
    create_topic(broker.bootstrap, topic, partitions)
    ends = produce_numbers(broker.bootstrap, topic, partitions, per_partition)
    group = "kafkajs-resume"

    first = run_groups_js("consume-commit", broker.bootstrap, topic, group, "150", "60", "60000")
    committed = {int(partition): int(offset) for partition, offset in first["committed"].items()}
    first_run = offsets_by_partition(first["records"])
    assert sum(len(offsets) for offsets in first_run.values()) == 210

    admin = admin_client(broker.bootstrap)
    assert committed_offsets(admin, group, topic, partitions) == {p: committed.get(p, OFFSET_INVALID) for p in range(partitions)}

    assert broker.stop() == 0
    broker.start()

    remaining = sum(ends.values()) - sum(committed.values())
    second = run_groups_js("consume-commit", broker.bootstrap, topic, group, str(remaining), "0", "60000")
    check_resume(first_run, committed, offsets_by_partition(second["records"]), ends)
