//! Shared helpers for integration tests: a real `weir` process on loopback
//! with a temporary data directory, and a blocking Kafka protocol connection.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use indexmap::IndexMap;
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, StrBytes};
use kafka_protocol::records::{Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType};

/// How long a broker gets to print its listening line.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A `weir serve` process owned by the test; killed on drop.
pub struct Broker {
    child: Option<Child>,
    pub bootstrap: String,
    pub data_dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
    extra_args: Vec<String>,
    log_path: PathBuf,
}

impl Broker {
    /// Starts a broker with two shards and the given `--set` overrides.
    pub fn start(overrides: &[&str]) -> Broker {
        let temp = tempfile::tempdir().expect("temp dir");
        let data_dir = temp.path().join("data");
        let log_path = temp.path().join("weir.log");
        let extra_args = overrides.iter().flat_map(|item| ["--set".to_string(), item.to_string()]).collect();
        let mut broker =
            Broker { child: None, bootstrap: String::new(), data_dir, _temp: Some(temp), extra_args, log_path };
        broker.spawn();
        broker
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log_path).expect("log file");
        let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
            .args(["serve", "--listen", "127.0.0.1:0", "--shards", "2", "--data-dir"])
            .arg(&self.data_dir)
            .args(&self.extra_args)
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start weir");
        let stdout = child.stdout.take().expect("stdout");
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(address) = line.strip_prefix("listening bootstrap=") {
                    let _ = sender.send(address.to_string());
                }
            }
        });
        match receiver.recv_timeout(START_TIMEOUT) {
            Ok(address) => self.bootstrap = address,
            Err(_) => {
                let _ = child.kill();
                panic!("weir did not start; log:\n{}", self.log());
            }
        }
        self.child = Some(child);
    }

    /// Returns the broker's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Stops with SIGTERM and waits for a clean exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: sending a signal to our own child process by its pid.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let status = child.wait().expect("wait for weir");
            assert!(status.success(), "weir exited with {status}; log:\n{}", self.log());
        }
    }

    /// Kills with SIGKILL.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts again on the same data directory.
    pub fn restart(&mut self) {
        self.spawn();
    }

    /// Opens a protocol connection to the bootstrap shard.
    pub fn connect(&self) -> Connection {
        Connection::open(&self.bootstrap)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A blocking Kafka protocol connection.
pub struct Connection {
    pub stream: TcpStream,
    next_correlation_id: i32,
}

impl Connection {
    pub fn open(address: &str) -> Connection {
        let stream = TcpStream::connect(address).expect("connect to weir");
        stream.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
        Connection { stream, next_correlation_id: 1 }
    }

    /// Sends a request without waiting; returns its correlation id.
    pub fn send<R: Encodable + HeaderVersion>(&mut self, api_key: ApiKey, version: i16, request: &R) -> i32 {
        let correlation_id = self.next_correlation_id;
        self.next_correlation_id += 1;
        let header = RequestHeader::default()
            .with_request_api_key(api_key as i16)
            .with_request_api_version(version)
            .with_correlation_id(correlation_id)
            .with_client_id(Some(StrBytes::from_static_str("weir-tests")));
        let mut body = BytesMut::new();
        header.encode(&mut body, R::header_version(version)).expect("encode header");
        request.encode(&mut body, version).expect("encode request");
        self.send_raw(&body);
        correlation_id
    }

    /// Writes one length-prefixed frame.
    pub fn send_raw(&mut self, body: &[u8]) {
        let mut frame = Vec::with_capacity(body.len() + 4);
        frame.extend_from_slice(&(body.len() as i32).to_be_bytes());
        frame.extend_from_slice(body);
        self.stream.write_all(&frame).expect("write request");
    }

    /// Reads one response frame body; None when the broker closed the connection.
    pub fn read_frame(&mut self) -> Option<Bytes> {
        let mut length = [0u8; 4];
        self.stream.read_exact(&mut length).ok()?;
        let mut body = vec![0u8; i32::from_be_bytes(length) as usize];
        self.stream.read_exact(&mut body).ok()?;
        Some(Bytes::from(body))
    }

    /// Reads a response, checks its correlation id, decodes it.
    pub fn receive<T: Decodable + HeaderVersion>(&mut self, version: i16, correlation_id: i32) -> T {
        let mut frame = self.read_frame().expect("connection closed before the response");
        let header = ResponseHeader::decode(&mut frame, T::header_version(version)).expect("response header");
        assert_eq!(header.correlation_id, correlation_id, "responses must come back in request order");
        let response = T::decode(&mut frame, version).expect("response body");
        assert!(!frame.has_remaining(), "{} bytes left after the response", frame.remaining());
        response
    }

    /// Sends a request and waits for its response.
    pub fn request<Req, Resp>(&mut self, api_key: ApiKey, version: i16, request: &Req) -> Resp
    where
        Req: Encodable + HeaderVersion,
        Resp: Decodable + HeaderVersion,
    {
        let correlation_id = self.send(api_key, version, request);
        self.receive(version, correlation_id)
    }

    /// True once the broker closed this connection (within a bounded wait).
    pub fn is_closed_by_broker(&mut self) -> bool {
        self.stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        let mut byte = [0u8; 1];
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            match self.stream.read(&mut byte) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => return false,
                Err(_) => return true,
            }
        }
        false
    }
}

/// A record for [`batch`]: key, value, headers.
pub struct TestRecord {
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

impl TestRecord {
    pub fn value(value: &str) -> TestRecord {
        TestRecord { key: None, value: Some(value.as_bytes().to_vec()), headers: Vec::new() }
    }
}

/// Encodes records as one v2 record batch with the given compression.
pub fn batch(records: &[TestRecord], compression: Compression) -> Bytes {
    let now = 1_700_000_000_000i64;
    let records: Vec<Record> = records
        .iter()
        .enumerate()
        .map(|(index, record)| {
            let mut headers = IndexMap::new();
            for (key, value) in &record.headers {
                headers.insert(StrBytes::from_string(key.clone()), value.clone().map(Bytes::from));
            }
            Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: -1,
                producer_id: -1,
                producer_epoch: -1,
                timestamp_type: TimestampType::Creation,
                offset: index as i64,
                // The encoder starts a new batch wherever offset - sequence changes;
                // this keeps one batch with base sequence -1 (not idempotent).
                sequence: index as i32 - 1,
                timestamp: now + index as i64,
                key: record.key.clone().map(Bytes::from),
                value: record.value.clone().map(Bytes::from),
                headers,
            }
        })
        .collect();
    let mut buffer = BytesMut::new();
    RecordBatchEncoder::encode(&mut buffer, &records, &RecordEncodeOptions { version: 2, compression })
        .expect("encode batch");
    buffer.freeze()
}

/// Writes a big-endian i32 at `position` (for corrupting frames in tests).
pub fn put_i32_at(buffer: &mut BytesMut, position: usize, value: i32) {
    buffer[position..position + 4].copy_from_slice(&value.to_be_bytes());
}

/// Appends `value` as an i16 to a frame being built by hand.
pub fn put_i16(buffer: &mut BytesMut, value: i16) {
    buffer.put_i16(value);
}
