"""Hand-built Kafka frames for tests that talk to the broker over a raw socket.

Only non-flexible request versions are encoded here (ApiVersions v0-v2,
Metadata v1-v8, Produce v3-v8, FindCoordinator v0, JoinGroup v0), so every
request uses request header v1 and every response starts with response
header v0 (a bare correlation id).
Field layouts follow the Kafka protocol guide at kafka.apache.org/protocol.
"""

import socket
import struct
import time

import crc32c

API_PRODUCE = 0
API_FETCH = 1
API_LIST_OFFSETS = 2
API_METADATA = 3
API_FIND_COORDINATOR = 10
API_JOIN_GROUP = 11
API_API_VERSIONS = 18

ERROR_NONE = 0
ERROR_CORRUPT_MESSAGE = 2
ERROR_INVALID_TOPIC_EXCEPTION = 17
ERROR_INVALID_REQUIRED_ACKS = 21
ERROR_UNSUPPORTED_VERSION = 35
ERROR_INVALID_RECORD = 87


# ---------------------------------------------------------------------------
# Primitive encoders


def encode_string(value):
    if value is None:
        return struct.pack(">h", -1)
    raw = value.encode() if isinstance(value, str) else value
    return struct.pack(">h", len(raw)) + raw


def encode_bytes(value):
    if value is None:
        return struct.pack(">i", -1)
    return struct.pack(">i", len(value)) + value


def encode_varint(value):
    """Encode a signed 64-bit integer as a zigzag varint."""
    zigzag = (value << 1) ^ (value >> 63)
    out = bytearray()
    while True:
        byte = zigzag & 0x7F
        zigzag >>= 7
        if zigzag:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def encode_varint_bytes(value):
    if value is None:
        return encode_varint(-1)
    return encode_varint(len(value)) + value


# ---------------------------------------------------------------------------
# Record batches (magic 2)


def encode_record(offset_delta, timestamp_delta, key, value, headers=()):
    body = bytearray()
    body += struct.pack(">b", 0)  # attributes, unused
    body += encode_varint(timestamp_delta)
    body += encode_varint(offset_delta)
    body += encode_varint_bytes(key)
    body += encode_varint_bytes(value)
    body += encode_varint(len(headers))
    for header_key, header_value in headers:
        body += encode_varint_bytes(header_key.encode())
        body += encode_varint_bytes(header_value)
    return encode_varint(len(body)) + bytes(body)


def encode_record_batch(records, base_timestamp_ms=None, crc_override=None):
    """Build an uncompressed v2 record batch with base offset 0.

    `records` is a list of (key, value, headers) tuples. The CRC32C covers
    the bytes from the attributes field to the end of the batch; pass
    `crc_override` to store a different (wrong) checksum.
    """
    if base_timestamp_ms is None:
        base_timestamp_ms = int(time.time() * 1000)
    encoded = b"".join(
        encode_record(index, 0, key, value, headers)
        for index, (key, value, headers) in enumerate(records)
    )

    after_crc = bytearray()
    after_crc += struct.pack(">h", 0)  # attributes: no compression, CreateTime
    after_crc += struct.pack(">i", len(records) - 1)  # lastOffsetDelta
    after_crc += struct.pack(">q", base_timestamp_ms)  # baseTimestamp
    after_crc += struct.pack(">q", base_timestamp_ms)  # maxTimestamp
    after_crc += struct.pack(">q", -1)  # producerId
    after_crc += struct.pack(">h", -1)  # producerEpoch
    after_crc += struct.pack(">i", -1)  # baseSequence
    after_crc += struct.pack(">i", len(records))
    after_crc += encoded

    crc = crc32c.crc32c(bytes(after_crc))
    if crc_override is not None:
        crc = crc_override

    # batchLength counts everything after the batchLength field itself.
    batch_length = 4 + 1 + 4 + len(after_crc)
    header = struct.pack(">qiibI", 0, batch_length, -1, 2, crc)
    return header + bytes(after_crc)


# ---------------------------------------------------------------------------
# Requests


def encode_request(api_key, api_version, correlation_id, body, client_id="weir-tests"):
    """Frame a request with request header v1 and the 4-byte size prefix."""
    header = struct.pack(">hhi", api_key, api_version, correlation_id)
    header += encode_string(client_id)
    payload = header + body
    return struct.pack(">i", len(payload)) + payload


def api_versions_request(correlation_id, api_version=0):
    # ApiVersions v0-v2 have an empty request body.
    return encode_request(API_API_VERSIONS, api_version, correlation_id, b"")


def metadata_request(correlation_id, topics, api_version=1):
    body = struct.pack(">i", len(topics)) + b"".join(encode_string(t) for t in topics)
    if api_version >= 4:
        body += struct.pack(">?", False)  # allow_auto_topic_creation
    if api_version >= 8:
        body += struct.pack(">??", False, False)  # include authorized operations
    return encode_request(API_METADATA, api_version, correlation_id, body)


def produce_request(correlation_id, topic_partitions, acks=-1, timeout_ms=10_000, api_version=3):
    """Encode a Produce request.

    `topic_partitions` maps a topic name to a list of (partition, records
    bytes) pairs. The records bytes may be None for a null record set.
    """
    body = bytearray()
    body += encode_string(None)  # transactional_id
    body += struct.pack(">hi", acks, timeout_ms)
    body += struct.pack(">i", len(topic_partitions))
    for topic, partitions in topic_partitions.items():
        body += encode_string(topic)
        body += struct.pack(">i", len(partitions))
        for partition, records in partitions:
            body += struct.pack(">i", partition)
            body += encode_bytes(records)
    return encode_request(API_PRODUCE, api_version, correlation_id, bytes(body))


def find_coordinator_request(correlation_id, group_id):
    # FindCoordinator v0: the key is a group id.
    return encode_request(API_FIND_COORDINATOR, 0, correlation_id, encode_string(group_id))


def join_group_request(correlation_id, group_id, session_timeout_ms=10_000):
    """JoinGroup v0 for a consumer member with one range-assignor protocol."""
    body = bytearray()
    body += encode_string(group_id)
    body += struct.pack(">i", session_timeout_ms)
    body += encode_string("")  # member_id: empty on the first join
    body += encode_string("consumer")
    body += struct.pack(">i", 1)
    body += encode_string("range")
    body += encode_bytes(b"")
    return encode_request(API_JOIN_GROUP, 0, correlation_id, bytes(body))


# ---------------------------------------------------------------------------
# Response decoding


class Reader:
    """Sequential big-endian reader over one response body."""

    def __init__(self, data):
        self.data = data
        self.position = 0

    def take(self, size):
        if self.position + size > len(self.data):
            raise ValueError(
                f"response truncated: need {size} bytes at {self.position}, have {len(self.data)}"
            )
        chunk = self.data[self.position : self.position + size]
        self.position += size
        return chunk

    def unpack(self, fmt):
        values = struct.unpack(fmt, self.take(struct.calcsize(fmt)))
        return values[0] if len(values) == 1 else values

    def string(self):
        length = self.unpack(">h")
        return None if length < 0 else self.take(length).decode()

    def remaining(self):
        return len(self.data) - self.position


def parse_api_versions_v0(body):
    """Return (error_code, {api_key: (min_version, max_version)})."""
    reader = Reader(body)
    error_code = reader.unpack(">h")
    count = reader.unpack(">i")
    versions = {}
    for _ in range(count):
        api_key, min_version, max_version = reader.unpack(">hhh")
        versions[api_key] = (min_version, max_version)
    return error_code, versions


def parse_produce_response(body, api_version=3):
    """Return {(topic, partition): (error_code, base_offset)}."""
    reader = Reader(body)
    results = {}
    for _ in range(reader.unpack(">i")):
        topic = reader.string()
        for _ in range(reader.unpack(">i")):
            partition, error_code, base_offset = reader.unpack(">ihq")
            if api_version >= 2:
                reader.unpack(">q")  # log_append_time_ms
            if api_version >= 5:
                reader.unpack(">q")  # log_start_offset
            if api_version >= 8:
                for _ in range(reader.unpack(">i")):  # record_errors
                    reader.unpack(">i")
                    reader.string()
                reader.string()  # error_message
            results[(topic, partition)] = (error_code, base_offset)
    return results


def parse_find_coordinator_v0(body):
    """Return (error_code, node_id, "host:port")."""
    reader = Reader(body)
    error_code, node_id = reader.unpack(">hi")
    host = reader.string()
    port = reader.unpack(">i")
    return error_code, node_id, f"{host}:{port}"


# ---------------------------------------------------------------------------
# Socket helpers


class Connection:
    """A blocking socket to one broker with a deadline on every read."""

    def __init__(self, address, timeout_s=10.0):
        host, port = address.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=timeout_s)
        self.timeout_s = timeout_s

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send(self, data):
        self.sock.sendall(data)

    def read_exact(self, size):
        chunks = bytearray()
        while len(chunks) < size:
            chunk = self.sock.recv(size - len(chunks))
            if not chunk:
                raise ConnectionError(f"connection closed after {len(chunks)} of {size} bytes")
            chunks += chunk
        return bytes(chunks)

    def read_response(self):
        """Read one size-prefixed response; return (correlation_id, body)."""
        (size,) = struct.unpack(">i", self.read_exact(4))
        payload = self.read_exact(size)
        (correlation_id,) = struct.unpack(">i", payload[:4])
        return correlation_id, payload[4:]

    def request(self, frame, correlation_id):
        self.send(frame)
        got_id, body = self.read_response()
        if got_id != correlation_id:
            raise AssertionError(f"response correlation id {got_id}, expected {correlation_id}")
        return body

    def wait_closed(self):
        """Return the bytes the peer sent before closing; raise on timeout.

        A reset counts as closed. A broker that neither responds nor closes
        within `timeout_s` fails the test with socket.timeout or TimeoutError.
        """
        received = bytearray()
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            try:
                chunk = self.sock.recv(65536)
            except (ConnectionResetError, BrokenPipeError):
                return bytes(received)
            if not chunk:
                return bytes(received)
            received += chunk
        raise TimeoutError(f"connection still open after {self.timeout_s}s")
