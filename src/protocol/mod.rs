//! The Kafka protocol layer: decodes requests, runs one handler per API, and
//! encodes responses.
//!
//! Requests and most responses go through the `kafka-protocol` crate. Two
//! paths are hand-written to avoid copying record data: produce record sets
//! stay `Bytes` slices of the request frame all the way to the owner shard,
//! and Fetch responses are encoded as header bytes interleaved with the stored
//! batch slices (see `fetch`).

mod admin;
mod coordinator;
mod fetch;
mod groups;
mod offsets;
mod produce;
pub mod versions;

use std::net::SocketAddr;
use std::rc::Rc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind, ResponseHeader, ResponseKind};
use kafka_protocol::protocol::{Decodable, Encodable};

use crate::group::ClientInfo;
use crate::shard::Shard;

/// A decoded request with its header.
pub struct Request {
    pub api_key: ApiKey,
    pub api_version: i16,
    pub header: RequestHeader,
    pub body: RequestKind,
}

/// A frame that could not be turned into a [`Request`].
pub enum DecodeError {
    /// ApiVersions of a version we do not support: Kafka replies with a v0
    /// response carrying UNSUPPORTED_VERSION and the supported ranges.
    UnsupportedApiVersions { correlation_id: i32 },
    /// Anything else: the connection is closed with this reason.
    Fatal(String),
}

impl DecodeError {
    /// Returns the encoded reply to send, or the reason to close the connection.
    pub fn into_reply(self) -> Result<Vec<Bytes>, String> {
        match self {
            DecodeError::UnsupportedApiVersions { correlation_id } => {
                Ok(versions::unsupported_version_reply(correlation_id))
            }
            DecodeError::Fatal(message) => Err(message),
        }
    }
}

/// Decodes a request frame (without its length prefix).
pub fn decode_request(frame: Bytes) -> Result<Request, DecodeError> {
    if frame.len() < 8 {
        return Err(DecodeError::Fatal(format!("request of {} bytes is shorter than a request header", frame.len())));
    }
    let mut peek = &frame[..8];
    let raw_key = peek.get_i16();
    let api_version = peek.get_i16();
    let correlation_id = peek.get_i32();

    let api_key = ApiKey::try_from(raw_key).map_err(|_| DecodeError::Fatal(format!("unknown api key {raw_key}")))?;
    let Some(range) = versions::supported(api_key) else {
        return Err(DecodeError::Fatal(format!("unsupported api {api_key:?} (key {raw_key})")));
    };
    if api_version < range.decode_min || api_version > range.max {
        if api_key == ApiKey::ApiVersions {
            return Err(DecodeError::UnsupportedApiVersions { correlation_id });
        }
        return Err(DecodeError::Fatal(format!(
            "unsupported version {api_version} of {api_key:?}; supported {}..={}",
            range.decode_min, range.max
        )));
    }

    let mut body = frame;
    let header_version = api_key.request_header_version(api_version);
    let header = RequestHeader::decode(&mut body, header_version)
        .map_err(|err| DecodeError::Fatal(format!("malformed {api_key:?} v{api_version} request header: {err}")))?;
    let request = RequestKind::decode(api_key, &mut body, api_version)
        .map_err(|err| DecodeError::Fatal(format!("malformed {api_key:?} v{api_version} request: {err}")))?;
    Ok(Request { api_key, api_version, header, body: request })
}

/// Runs the handler for `request`. Returns the encoded response frame, or
/// None when the request expects no response (produce with acks=0).
pub async fn handle(shard: &Rc<Shard>, request: Request, peer: Option<SocketAddr>) -> Option<Vec<Bytes>> {
    let Request { api_key, api_version: version, header, body } = request;
    let correlation_id = header.correlation_id;
    let client_info = || ClientInfo {
        client_id: header.client_id.as_ref().map(ToString::to_string).unwrap_or_default(),
        client_host: peer.map(|address| format!("/{}", address.ip())).unwrap_or_default(),
    };
    let response = match body {
        RequestKind::ApiVersions(_) => ResponseKind::ApiVersions(versions::api_versions_response(version)),
        RequestKind::Metadata(request) => ResponseKind::Metadata(admin::metadata(shard, request, version).await),
        RequestKind::CreateTopics(request) => {
            ResponseKind::CreateTopics(admin::create_topics(shard, request, version).await)
        }
        RequestKind::DeleteTopics(request) => {
            ResponseKind::DeleteTopics(admin::delete_topics(shard, request, version).await)
        }
        RequestKind::CreatePartitions(request) => {
            ResponseKind::CreatePartitions(admin::create_partitions(shard, request, version).await)
        }
        RequestKind::DescribeConfigs(request) => {
            ResponseKind::DescribeConfigs(admin::describe_configs(shard, request, version))
        }
        RequestKind::DescribeCluster(request) => {
            ResponseKind::DescribeCluster(admin::describe_cluster(shard, request, version))
        }
        RequestKind::FindCoordinator(request) => {
            ResponseKind::FindCoordinator(coordinator::find_coordinator(shard, request, version))
        }
        RequestKind::OffsetFetch(request) if version >= groups::OFFSET_FETCH_FIRST_MULTI_GROUP_VERSION => {
            ResponseKind::OffsetFetch(groups::offset_fetch_groups(shard, request, version, client_info()).await)
        }
        RequestKind::ListGroups(request) => {
            ResponseKind::ListGroups(groups::list_groups(shard, request, version).await)
        }
        RequestKind::DescribeGroups(request) => {
            ResponseKind::DescribeGroups(groups::describe_groups(shard, request, version, client_info()).await)
        }
        RequestKind::DeleteGroups(request) => {
            ResponseKind::DeleteGroups(groups::delete_groups(shard, request, version, client_info()).await)
        }
        RequestKind::InitProducerId(request) => {
            ResponseKind::InitProducerId(groups::init_producer_id(shard, request, version).await)
        }
        RequestKind::Produce(request) => {
            let acks = request.acks;
            let response = produce::produce(shard, request, version).await;
            if acks == 0 {
                return None;
            }
            ResponseKind::Produce(response)
        }
        RequestKind::Fetch(request) => {
            return Some(fetch::fetch(shard, request, version, correlation_id).await);
        }
        RequestKind::ListOffsets(request) => {
            ResponseKind::ListOffsets(offsets::list_offsets(shard, request, version).await)
        }
        RequestKind::OffsetForLeaderEpoch(request) => {
            ResponseKind::OffsetForLeaderEpoch(offsets::offset_for_leader_epoch(shard, request, version).await)
        }
        other => match groups::single_group_id(&other) {
            Some(group_id) => groups::single_group(shard, &group_id, other, version, client_info()).await?,
            None => {
                tracing::warn!(target: "weir::protocol", shard = shard.id, api = ?api_key, version, "no handler for request");
                return None;
            }
        },
    };
    match encode_response(api_key, version, correlation_id, &response) {
        Ok(frame) => Some(vec![frame]),
        Err(err) => {
            tracing::error!(target: "weir::protocol", shard = shard.id, api = ?api_key, version, error = %err,
                "failed to encode response");
            None
        }
    }
}

/// Handles a consumer group request forwarded from another shard.
pub async fn handle_forwarded_group_request(
    shard: &Rc<Shard>,
    body: RequestKind,
    version: i16,
    client: ClientInfo,
) -> Option<ResponseKind> {
    groups::handle_forwarded(shard, body, version, client).await
}

/// Encodes a response with its header and length prefix.
pub fn encode_response(
    api_key: ApiKey,
    version: i16,
    correlation_id: i32,
    response: &ResponseKind,
) -> anyhow::Result<Bytes> {
    let mut buffer = BytesMut::with_capacity(256);
    buffer.put_i32(0);
    ResponseHeader::default()
        .with_correlation_id(correlation_id)
        .encode(&mut buffer, api_key.response_header_version(version))?;
    response.encode(&mut buffer, version)?;
    let length = (buffer.len() - 4) as i32;
    buffer[..4].copy_from_slice(&length.to_be_bytes());
    Ok(buffer.freeze())
}
