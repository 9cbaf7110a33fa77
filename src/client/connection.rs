//! One TCP connection to one broker, with pipelined requests.
//!
//! Kafka brokers respond to the requests of one connection in the order they
//! arrived, so the client may send the next request before the previous
//! response is back. A connection runs two tasks on the caller's executor:
//!
//! - the writer drains the outbox of encoded frames onto the socket,
//!   copying runs of small frames into one buffer so they leave in one send;
//! - the reader cuts the byte stream into size-prefixed frames and hands
//!   each to the oldest waiting request, after checking that the response's
//!   correlation id is the one that request was sent with.
//!
//! [`LocalSemaphore`] bounds the requests between submit and response
//! (`max_in_flight`), which bounds both the outbox and the pending queue.
//! Any failure (socket error, malformed frame, time-out, mismatched
//! correlation id) closes the connection and fails every waiting request.
//! The owner ([`super::Client`]) opens a new connection on the next call.
//!
//! On connect the client asks the broker for its ApiVersions and later picks,
//! for each request, the highest version both sides support.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::{SocketAddr, ToSocketAddrs};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures::channel::oneshot;
use futures::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use kafka_protocol::messages::{ApiKey, ApiVersionsRequest, ApiVersionsResponse, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};

use super::error::ClientError;
use super::sync::{LocalSemaphore, Notify};
use crate::runtime::{spawn_local, Task, TcpStream};

/// Kafka's error code for a request version the broker does not support.
const UNSUPPORTED_VERSION: i16 = 35;
/// Highest ApiVersions version the client sends.
const API_VERSIONS_MAX: i16 = 3;
/// Frames shorter than this are copied together into one send.
const COALESCE_FRAME_BYTES_MAX: usize = 64 * 1024;
/// Initial read buffer; it grows to the size of the largest frame.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// Versions of each API this client can encode and decode, as (min, max).
/// The max stays below versions that identify topics by id only (Fetch 13+,
/// Produce 13) because the client addresses topics by name.
pub fn client_versions(api_key: i16) -> Option<(i16, i16)> {
    let range = match ApiKey::try_from(api_key).ok()? {
        ApiKey::Produce => (3, 11),
        ApiKey::Fetch => (4, 12),
        ApiKey::ListOffsets => (1, 7),
        ApiKey::Metadata => (1, 12),
        ApiKey::ApiVersions => (0, API_VERSIONS_MAX),
        ApiKey::CreateTopics => (2, 7),
        ApiKey::DeleteTopics => (1, 6),
        ApiKey::FindCoordinator => (0, 4),
        ApiKey::InitProducerId => (0, 5),
        ApiKey::JoinGroup => (0, 9),
        ApiKey::SyncGroup => (0, 5),
        ApiKey::Heartbeat => (0, 4),
        ApiKey::LeaveGroup => (0, 5),
        ApiKey::OffsetCommit => (2, 9),
        // Versions 8 and later name groups in a list; one group per request suffices.
        ApiKey::OffsetFetch => (1, 7),
        _ => return None,
    };
    Some(range)
}

/// Returns the API's name as Kafka spells it, e.g. "Produce".
pub fn api_name(api_key: i16) -> &'static str {
    match ApiKey::try_from(api_key) {
        Ok(ApiKey::Produce) => "Produce",
        Ok(ApiKey::Fetch) => "Fetch",
        Ok(ApiKey::ListOffsets) => "ListOffsets",
        Ok(ApiKey::Metadata) => "Metadata",
        Ok(ApiKey::ApiVersions) => "ApiVersions",
        Ok(ApiKey::CreateTopics) => "CreateTopics",
        Ok(ApiKey::DeleteTopics) => "DeleteTopics",
        Ok(ApiKey::FindCoordinator) => "FindCoordinator",
        Ok(ApiKey::InitProducerId) => "InitProducerId",
        Ok(ApiKey::JoinGroup) => "JoinGroup",
        Ok(ApiKey::SyncGroup) => "SyncGroup",
        Ok(ApiKey::Heartbeat) => "Heartbeat",
        Ok(ApiKey::LeaveGroup) => "LeaveGroup",
        Ok(ApiKey::OffsetCommit) => "OffsetCommit",
        Ok(ApiKey::OffsetFetch) => "OffsetFetch",
        _ => "request",
    }
}

/// Settings of one connection.
#[derive(Debug, Clone)]
pub struct ConnectionConfig {
    /// The `client.id` sent in every request header.
    pub client_id: String,
    /// Maximum requests sent and still awaiting a response (Kafka's
    /// `max.in.flight.requests.per.connection`).
    pub max_in_flight: usize,
    /// Time a request may wait for its response before the connection is closed.
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    /// Largest response frame accepted; a larger size prefix closes the connection.
    pub max_response_bytes: usize,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        ConnectionConfig {
            client_id: "weir-client".to_string(),
            max_in_flight: 5,
            request_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            max_response_bytes: 256 * 1024 * 1024,
        }
    }
}

/// A connection to one broker. Dropping it stops its tasks and closes the socket.
pub struct Connection {
    shared: Rc<Shared>,
    _reader: Task<()>,
    _writer: Task<()>,
}

struct Shared {
    addr: String,
    client_id: StrBytes,
    request_timeout: Duration,
    max_response_bytes: usize,
    next_correlation_id: Cell<i32>,
    in_flight: Rc<LocalSemaphore>,
    outbox: RefCell<VecDeque<Outgoing>>,
    writer_wakeup: Notify,
    pending: RefCell<VecDeque<Pending>>,
    failure: RefCell<Option<ClientError>>,
    /// The broker's (min, max) version per API key.
    broker_versions: RefCell<HashMap<i16, (i16, i16)>>,
    bytes_sent: Cell<u64>,
    bytes_received: Cell<u64>,
}

struct Outgoing {
    frame: Bytes,
    /// A request without a response (Produce with acks=0) returns its
    /// in-flight permit once written.
    expects_response: bool,
}

struct Pending {
    correlation_id: i32,
    reply: oneshot::Sender<Result<Bytes, ClientError>>,
}

/// A response not received yet. Resolves to the decoded response, or to an
/// error after `request_timeout` (which also closes the connection).
pub struct ResponseFuture<R: Request> {
    shared: Rc<Shared>,
    api_key: i16,
    version: i16,
    receiver: Option<oneshot::Receiver<Result<Bytes, ClientError>>>,
    deadline: Pin<Box<crate::runtime::Timer>>,
    _request: std::marker::PhantomData<fn() -> R>,
}

impl Connection {
    /// Connects to `addr` (host:port) and negotiates API versions.
    pub async fn connect(addr: &str, config: &ConnectionConfig) -> Result<Connection, ClientError> {
        let socket_addr = resolve(addr).await?;
        let connect_error = |message: String| ClientError::Connect { addr: addr.to_string(), message };
        let stream = crate::runtime::timeout(config.connect_timeout, TcpStream::connect(socket_addr))
            .await
            .ok_or_else(|| connect_error(format!("timed out after {} ms", config.connect_timeout.as_millis())))?
            .map_err(|err| connect_error(err.to_string()))?;
        stream.set_nodelay(true).map_err(|err| connect_error(format!("failed to set TCP_NODELAY: {err}")))?;

        let (reader, writer) = stream.split();
        let shared = Rc::new(Shared {
            addr: addr.to_string(),
            client_id: StrBytes::from_string(config.client_id.clone()),
            request_timeout: config.request_timeout,
            max_response_bytes: config.max_response_bytes,
            next_correlation_id: Cell::new(1),
            in_flight: LocalSemaphore::new(config.max_in_flight.max(1)),
            outbox: RefCell::new(VecDeque::new()),
            writer_wakeup: Notify::default(),
            pending: RefCell::new(VecDeque::new()),
            failure: RefCell::new(None),
            broker_versions: RefCell::new(HashMap::new()),
            bytes_sent: Cell::new(0),
            bytes_received: Cell::new(0),
        });
        let connection = Connection {
            _reader: spawn_local(read_loop(shared.clone(), reader)),
            _writer: spawn_local(write_loop(shared.clone(), writer)),
            shared,
        };
        connection.negotiate_versions().await?;
        Ok(connection)
    }

    /// Returns the broker address this connection was opened to.
    pub fn addr(&self) -> &str {
        &self.shared.addr
    }

    /// Whether the connection failed and must be replaced.
    pub fn is_closed(&self) -> bool {
        self.shared.failure.borrow().is_some()
    }

    /// Returns the number of requests still awaiting a response.
    pub fn in_flight(&self) -> usize {
        self.shared.pending.borrow().len()
    }

    /// Requests that can be sent now without waiting for a response.
    pub fn free_slots(&self) -> usize {
        if self.is_closed() {
            return 0;
        }
        self.shared.in_flight.available()
    }

    /// Bytes written to and read from the socket so far.
    pub fn byte_counts(&self) -> (u64, u64) {
        (self.shared.bytes_sent.get(), self.shared.bytes_received.get())
    }

    /// The version used for `R`: the highest both sides support.
    pub fn version_for<R: Request>(&self) -> Result<i16, ClientError> {
        let (client_min, client_max) = client_versions(R::KEY).ok_or_else(|| {
            ClientError::protocol(api_name(R::KEY), format!("API key {} is not supported by the client", R::KEY))
        })?;
        let (broker_min, broker_max) = self.shared.broker_versions.borrow().get(&R::KEY).copied().unwrap_or((-1, -1));
        let version = client_max.min(broker_max);
        if version < client_min || version < broker_min {
            return Err(ClientError::UnsupportedVersion {
                api: api_name(R::KEY),
                addr: self.shared.addr.clone(),
                broker_min,
                broker_max,
                client_min,
                client_max,
            });
        }
        Ok(version)
    }

    /// Sends `request` and waits for its response.
    pub async fn call<R: Request>(&self, request: &R) -> Result<R::Response, ClientError> {
        let version = self.version_for::<R>()?;
        self.send(request, version).await?.await
    }

    /// Queues `request` once an in-flight slot is free and returns the
    /// future of its response. Requests are written in the order `send`
    /// calls obtain their slot, which is the order of the calls.
    pub async fn send<R: Request>(&self, request: &R, version: i16) -> Result<ResponseFuture<R>, ClientError> {
        let receiver = self.submit(request, version, true).await?;
        Ok(ResponseFuture {
            shared: self.shared.clone(),
            api_key: R::KEY,
            version,
            receiver,
            deadline: Box::pin(crate::runtime::Timer::new(self.shared.request_timeout)),
            _request: std::marker::PhantomData,
        })
    }

    /// Queues a request the broker does not answer (Produce with acks=0).
    pub async fn send_without_response<R: Request>(&self, request: &R, version: i16) -> Result<(), ClientError> {
        self.submit(request, version, false).await.map(|_| ())
    }

    async fn submit<R: Request>(
        &self,
        request: &R,
        version: i16,
        expects_response: bool,
    ) -> Result<Option<oneshot::Receiver<Result<Bytes, ClientError>>>, ClientError> {
        let shared = &self.shared;
        shared.check_open()?;
        if shared.in_flight.acquire(1).await.is_err() {
            return Err(shared.failure_or_closed());
        }

        let correlation_id = shared.next_correlation_id.get();
        shared.next_correlation_id.set(correlation_id.wrapping_add(1));
        let frame = match encode_frame(request, version, correlation_id, &shared.client_id) {
            Ok(frame) => frame,
            Err(err) => {
                shared.in_flight.release(1);
                return Err(err);
            }
        };

        let receiver = if expects_response {
            let (sender, receiver) = oneshot::channel();
            shared.pending.borrow_mut().push_back(Pending { correlation_id, reply: sender });
            Some(receiver)
        } else {
            None
        };
        shared.outbox.borrow_mut().push_back(Outgoing { frame, expects_response });
        shared.writer_wakeup.notify();
        Ok(receiver)
    }

    async fn negotiate_versions(&self) -> Result<(), ClientError> {
        let request = ApiVersionsRequest::default()
            .with_client_software_name(StrBytes::from_static_str("weir-client"))
            .with_client_software_version(StrBytes::from_static_str(env!("CARGO_PKG_VERSION")));

        // A broker that does not support the requested ApiVersions version
        // responds with UNSUPPORTED_VERSION in the v0 layout and lists the
        // versions it supports. The second attempt uses one of those.
        let mut version = API_VERSIONS_MAX;
        for _attempt in 0..2 {
            let receiver = self.submit(&request, version, true).await?;
            let frame = ResponseFuture::<ApiVersionsRequest> {
                shared: self.shared.clone(),
                api_key: ApiVersionsRequest::KEY,
                version,
                receiver,
                deadline: Box::pin(crate::runtime::Timer::new(self.shared.request_timeout)),
                _request: std::marker::PhantomData,
            }
            .raw()
            .await?;

            let response = decode_response::<ApiVersionsRequest>(frame.clone(), version)
                .or_else(|_| decode_response::<ApiVersionsRequest>(frame, 0))?;
            if response.error_code == UNSUPPORTED_VERSION && version > 0 {
                version = broker_api_versions_max(&response).min(API_VERSIONS_MAX);
                continue;
            }
            if response.error_code != 0 {
                return Err(ClientError::Kafka {
                    api: "ApiVersions",
                    topic: None,
                    partition: None,
                    code: response.error_code,
                });
            }
            let mut versions = self.shared.broker_versions.borrow_mut();
            for api in &response.api_keys {
                versions.insert(api.api_key, (api.min_version, api.max_version));
            }
            return Ok(());
        }
        Err(ClientError::protocol(
            "ApiVersions",
            format!("broker {} rejected every ApiVersions version", self.shared.addr),
        ))
    }
}

fn broker_api_versions_max(response: &ApiVersionsResponse) -> i16 {
    response.api_keys.iter().find(|api| api.api_key == ApiVersionsRequest::KEY).map_or(0, |api| api.max_version)
}

impl<R: Request> ResponseFuture<R> {
    /// Waits for the response frame (after the size prefix, header included).
    async fn raw(mut self) -> Result<Bytes, ClientError> {
        std::future::poll_fn(|cx| self.poll_raw(cx)).await
    }

    fn poll_raw(&mut self, cx: &mut Context<'_>) -> Poll<Result<Bytes, ClientError>> {
        let Some(receiver) = self.receiver.as_mut() else {
            return Poll::Ready(Err(ClientError::protocol(api_name(self.api_key), "the request expects no response")));
        };
        if let Poll::Ready(result) = Pin::new(receiver).poll(cx) {
            self.receiver = None;
            return Poll::Ready(match result {
                Ok(result) => result,
                Err(oneshot::Canceled) => Err(self.shared.failure_or_closed()),
            });
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
            self.receiver = None;
            let error = ClientError::Timeout {
                api: api_name(self.api_key),
                addr: self.shared.addr.clone(),
                timeout_ms: self.shared.request_timeout.as_millis() as u64,
            };
            self.shared.fail(error.clone());
            return Poll::Ready(Err(error));
        }
        Poll::Pending
    }
}

impl<R: Request> Future for ResponseFuture<R> {
    type Output = Result<R::Response, ClientError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        match this.poll_raw(cx) {
            Poll::Ready(Ok(frame)) => Poll::Ready(decode_response::<R>(frame, this.version)),
            Poll::Ready(Err(err)) => Poll::Ready(Err(err)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Shared {
    fn check_open(&self) -> Result<(), ClientError> {
        match &*self.failure.borrow() {
            Some(err) => Err(err.clone()),
            None => Ok(()),
        }
    }

    fn failure_or_closed(&self) -> ClientError {
        self.failure
            .borrow()
            .clone()
            .unwrap_or_else(|| ClientError::Disconnected { addr: self.addr.clone(), pending: 0 })
    }

    /// Closes the connection: every waiting request gets `error`.
    fn fail(&self, error: ClientError) {
        if self.failure.borrow().is_some() {
            return;
        }
        tracing::debug!(target: "weir::client", addr = %self.addr, error = %error, "connection closed");
        *self.failure.borrow_mut() = Some(error.clone());
        self.in_flight.close();
        self.outbox.borrow_mut().clear();
        let pending: Vec<Pending> = self.pending.borrow_mut().drain(..).collect();
        for request in pending {
            let _ = request.reply.send(Err(error.clone()));
        }
        self.writer_wakeup.notify();
    }

    /// Hands a response frame to the oldest pending request.
    fn complete(&self, frame: Bytes) -> Result<(), ClientError> {
        if frame.len() < 4 {
            return Err(ClientError::protocol(
                "response",
                format!("frame of {} bytes has no correlation id", frame.len()),
            ));
        }
        let correlation_id = (&frame[..4]).get_i32();
        let Some(request) = self.pending.borrow_mut().pop_front() else {
            return Err(ClientError::protocol(
                "response",
                format!("unexpected response with correlation id {correlation_id}; no request is pending"),
            ));
        };
        if request.correlation_id != correlation_id {
            return Err(ClientError::protocol(
                "response",
                format!(
                    "correlation id {correlation_id} does not match the oldest pending request {}",
                    request.correlation_id
                ),
            ));
        }
        self.in_flight.release(1);
        // The receiver may have given up (time-out), which is fine.
        let _ = request.reply.send(Ok(frame));
        Ok(())
    }
}

fn encode_frame<R: Request>(
    request: &R,
    version: i16,
    correlation_id: i32,
    client_id: &StrBytes,
) -> Result<Bytes, ClientError> {
    let api = api_name(R::KEY);
    let header = RequestHeader::default()
        .with_request_api_key(R::KEY)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(client_id.clone()));
    let header_version = R::header_version(version);
    let size = header
        .compute_size(header_version)
        .and_then(|header_size| Ok(header_size + request.compute_size(version)?))
        .map_err(|err| ClientError::protocol(api, err))?;
    let size_prefix =
        i32::try_from(size).map_err(|_| ClientError::protocol(api, format!("request of {size} bytes exceeds i32")))?;

    let mut buf = BytesMut::with_capacity(4 + size);
    buf.put_i32(size_prefix);
    header
        .encode(&mut buf, header_version)
        .and_then(|()| request.encode(&mut buf, version))
        .map_err(|err| ClientError::protocol(api, err))?;
    debug_assert_eq!(buf.len(), 4 + size, "compute_size disagrees with encode for {api} v{version}");
    Ok(buf.freeze())
}

/// Decodes a response frame (header and body) sent for version `version` of `R`.
pub fn decode_response<R: Request>(mut frame: Bytes, version: i16) -> Result<R::Response, ClientError> {
    let api = api_name(R::KEY);
    let header_version = <R::Response as HeaderVersion>::header_version(version);
    ResponseHeader::decode(&mut frame, header_version).map_err(|err| ClientError::protocol(api, err))?;
    <R::Response as Decodable>::decode(&mut frame, version).map_err(|err| ClientError::protocol(api, err))
}

async fn resolve(addr: &str) -> Result<SocketAddr, ClientError> {
    if let Ok(socket_addr) = addr.parse::<SocketAddr>() {
        return Ok(socket_addr);
    }
    // Name resolution blocks, so it runs off the executor thread.
    let owned = addr.to_string();
    let resolved = crate::runtime::spawn_blocking(move || owned.to_socket_addrs().map(|mut addrs| addrs.next())).await;
    match resolved {
        Ok(Some(socket_addr)) => Ok(socket_addr),
        Ok(None) => {
            Err(ClientError::Connect { addr: addr.to_string(), message: "the name resolved to no address".into() })
        }
        Err(err) => Err(ClientError::Connect { addr: addr.to_string(), message: format!("failed to resolve: {err}") }),
    }
}

async fn read_loop(shared: Rc<Shared>, mut reader: ReadHalf<TcpStream>) {
    let error = read_frames(&shared, &mut reader).await;
    shared.fail(error);
}

/// Reads frames until the connection fails; returns why it stopped.
async fn read_frames(shared: &Shared, reader: &mut ReadHalf<TcpStream>) -> ClientError {
    let mut buf = BytesMut::with_capacity(READ_CHUNK_BYTES);
    loop {
        // Hand over every complete frame already buffered.
        let mut wanted_bytes = 4;
        while buf.len() >= 4 {
            let frame_len = (&buf[..4]).get_i32();
            if frame_len < 0 || frame_len as usize > shared.max_response_bytes {
                return ClientError::protocol(
                    "response",
                    format!("frame size {frame_len} from {} is outside 0..={}", shared.addr, shared.max_response_bytes),
                );
            }
            let total = 4 + frame_len as usize;
            if buf.len() < total {
                wanted_bytes = total;
                break;
            }
            buf.advance(4);
            let frame = buf.split_to(frame_len as usize).freeze();
            if let Err(err) = shared.complete(frame) {
                return err;
            }
        }

        // Read at least up to the end of the current frame.
        let start = buf.len();
        let read_len = wanted_bytes.saturating_sub(start).max(READ_CHUNK_BYTES);
        buf.resize(start + read_len, 0);
        match reader.read(&mut buf[start..]).await {
            Ok(0) => {
                buf.truncate(start);
                return ClientError::Disconnected { addr: shared.addr.clone(), pending: shared.pending.borrow().len() };
            }
            Ok(read) => {
                buf.truncate(start + read);
                shared.bytes_received.set(shared.bytes_received.get() + read as u64);
            }
            Err(err) => return ClientError::Io { addr: shared.addr.clone(), message: err.to_string() },
        }
    }
}

async fn write_loop(shared: Rc<Shared>, mut writer: WriteHalf<TcpStream>) {
    let mut coalesced = BytesMut::with_capacity(COALESCE_FRAME_BYTES_MAX);
    loop {
        if shared.failure.borrow().is_some() {
            let _ = writer.close().await;
            return;
        }
        let batch: Vec<Outgoing> = shared.outbox.borrow_mut().drain(..).collect();
        if batch.is_empty() {
            shared.writer_wakeup.notified().await;
            continue;
        }

        if let Err(err) = write_batch(&shared, &mut writer, &mut coalesced, batch).await {
            shared.fail(ClientError::Io { addr: shared.addr.clone(), message: err.to_string() });
        }
    }
}

async fn write_batch(
    shared: &Shared,
    writer: &mut WriteHalf<TcpStream>,
    coalesced: &mut BytesMut,
    batch: Vec<Outgoing>,
) -> std::io::Result<()> {
    let mut unanswered_written = 0;
    for outgoing in batch {
        if outgoing.frame.len() < COALESCE_FRAME_BYTES_MAX {
            if coalesced.len() + outgoing.frame.len() > COALESCE_FRAME_BYTES_MAX {
                flush_coalesced(shared, writer, coalesced).await?;
            }
            coalesced.extend_from_slice(&outgoing.frame);
        } else {
            flush_coalesced(shared, writer, coalesced).await?;
            writer.write_all(&outgoing.frame).await?;
            shared.bytes_sent.set(shared.bytes_sent.get() + outgoing.frame.len() as u64);
        }
        if !outgoing.expects_response {
            unanswered_written += 1;
        }
    }
    flush_coalesced(shared, writer, coalesced).await?;
    if unanswered_written > 0 {
        shared.in_flight.release(unanswered_written);
    }
    Ok(())
}

async fn flush_coalesced(
    shared: &Shared,
    writer: &mut WriteHalf<TcpStream>,
    coalesced: &mut BytesMut,
) -> std::io::Result<()> {
    if coalesced.is_empty() {
        return Ok(());
    }
    writer.write_all(coalesced).await?;
    shared.bytes_sent.set(shared.bytes_sent.get() + coalesced.len() as u64);
    coalesced.clear();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::{block_on, TcpListener};
    use futures::io::{AsyncReadExt, AsyncWriteExt};
    use kafka_protocol::messages::api_versions_response::ApiVersion;
    use kafka_protocol::messages::{MetadataRequest, MetadataResponse};

    /// Reads one request frame and returns its correlation id.
    async fn read_request(stream: &mut TcpStream) -> i32 {
        let mut size = [0u8; 4];
        stream.read_exact(&mut size).await.expect("request size");
        let mut body = vec![0u8; i32::from_be_bytes(size) as usize];
        stream.read_exact(&mut body).await.expect("request body");
        // api key (2), api version (2), then the correlation id.
        i32::from_be_bytes(body[4..8].try_into().unwrap())
    }

    async fn write_response<M: Encodable>(stream: &mut TcpStream, correlation_id: i32, body: &M, version: i16) {
        let mut buf = BytesMut::new();
        buf.put_i32(0);
        buf.put_i32(correlation_id);
        body.encode(&mut buf, version).expect("encode response");
        let size = (buf.len() - 4) as i32;
        buf[..4].copy_from_slice(&size.to_be_bytes());
        stream.write_all(&buf).await.expect("write response");
    }

    /// Accepts one connection and answers its ApiVersions request.
    async fn accept_and_negotiate(listener: &TcpListener) -> TcpStream {
        let mut stream = listener.accept().await.expect("accept");
        let correlation_id = read_request(&mut stream).await;
        let versions = ApiVersionsResponse::default().with_api_keys(vec![
            ApiVersion::default().with_api_key(ApiVersionsRequest::KEY).with_min_version(0).with_max_version(3),
            ApiVersion::default().with_api_key(MetadataRequest::KEY).with_min_version(0).with_max_version(1),
        ]);
        // ApiVersions responses use header v0 (no tagged fields) at every version.
        write_response(&mut stream, correlation_id, &versions, API_VERSIONS_MAX).await;
        stream
    }

    fn test_config() -> ConnectionConfig {
        ConnectionConfig { request_timeout: Duration::from_millis(300), ..ConnectionConfig::default() }
    }

    #[test]
    fn pipelined_responses_match_in_order() {
        block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
            let addr = listener.local_addr().unwrap().to_string();
            let server = spawn_local(async move {
                let mut stream = accept_and_negotiate(&listener).await;
                let first = read_request(&mut stream).await;
                let second = read_request(&mut stream).await;
                for (correlation_id, controller) in [(first, 1), (second, 2)] {
                    let response = MetadataResponse::default().with_controller_id(controller.into());
                    write_response(&mut stream, correlation_id, &response, 1).await;
                }
                stream
            });

            let connection = Connection::connect(&addr, &test_config()).await.expect("connect");
            assert_eq!(connection.version_for::<MetadataRequest>().unwrap(), 1, "capped at the broker's max");
            let request = MetadataRequest::default().with_topics(Some(vec![]));
            let first = connection.send(&request, 1).await.expect("send first");
            let second = connection.send(&request, 1).await.expect("send second");
            assert_eq!(connection.in_flight(), 2);
            assert_eq!(first.await.expect("first response").controller_id.0, 1);
            assert_eq!(second.await.expect("second response").controller_id.0, 2);
            assert!(!connection.is_closed());
            drop(server);
        });
    }

    #[test]
    fn out_of_order_response_closes_connection() {
        block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
            let addr = listener.local_addr().unwrap().to_string();
            let server = spawn_local(async move {
                let mut stream = accept_and_negotiate(&listener).await;
                let _first = read_request(&mut stream).await;
                let second = read_request(&mut stream).await;
                write_response(&mut stream, second, &MetadataResponse::default(), 1).await;
                stream
            });

            let connection = Connection::connect(&addr, &test_config()).await.expect("connect");
            let request = MetadataRequest::default().with_topics(Some(vec![]));
            let first = connection.send(&request, 1).await.expect("send first");
            let second = connection.send(&request, 1).await.expect("send second");
            let error = first.await.expect_err("mismatched correlation id");
            assert!(error.to_string().contains("does not match"), "{error}");
            assert!(second.await.is_err(), "the other pending request fails too");
            assert!(connection.is_closed());
            assert!(connection.send(&request, 1).await.is_err(), "a closed connection takes no request");
            drop(server);
        });
    }

    #[test]
    fn unanswered_request_times_out() {
        block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
            let addr = listener.local_addr().unwrap().to_string();
            let server = spawn_local(async move {
                let mut stream = accept_and_negotiate(&listener).await;
                let _ignored = read_request(&mut stream).await;
                stream
            });

            let connection = Connection::connect(&addr, &test_config()).await.expect("connect");
            let request = MetadataRequest::default().with_topics(Some(vec![]));
            let error = connection.call(&request).await.expect_err("no response");
            assert!(matches!(error, ClientError::Timeout { timeout_ms: 300, .. }), "{error}");
            assert_eq!(error.kafka_code(), Some(7), "REQUEST_TIMED_OUT");
            assert!(connection.is_closed());
            drop(server);
        });
    }
}
