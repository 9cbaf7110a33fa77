//! The API versions Weir advertises, and ApiVersions itself.
//!
//! Floors follow Kafka 4.x. Produce is advertised from v0 because older
//! librdkafka releases decide whether the broker supports compressed v2
//! batches from the advertised Produce range; requests below v3 cannot carry
//! v2 batches and close the connection. Fetch is capped at v12 so clients keep
//! addressing topics by name.

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{ApiKey, ApiVersionsResponse};

/// Version range of one API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VersionRange {
    /// Lowest version advertised.
    pub min: i16,
    /// Lowest version actually decoded; requests below it close the connection.
    pub decode_min: i16,
    pub max: i16,
}

const fn range(min: i16, max: i16) -> VersionRange {
    VersionRange { min, decode_min: min, max }
}

/// Every API Weir serves, with its versions.
pub const SUPPORTED: &[(ApiKey, VersionRange)] = &[
    (ApiKey::Produce, VersionRange { min: 0, decode_min: 3, max: 11 }),
    (ApiKey::Fetch, range(4, 12)),
    (ApiKey::ListOffsets, range(1, 7)),
    (ApiKey::Metadata, range(0, 12)),
    (ApiKey::ApiVersions, range(0, 4)),
    (ApiKey::CreateTopics, range(2, 7)),
    (ApiKey::DeleteTopics, range(1, 6)),
    (ApiKey::DescribeConfigs, range(1, 4)),
    (ApiKey::CreatePartitions, range(0, 3)),
    (ApiKey::DescribeCluster, range(0, 1)),
    (ApiKey::OffsetForLeaderEpoch, range(2, 4)),
    (ApiKey::FindCoordinator, range(0, 4)),
    (ApiKey::JoinGroup, range(0, 9)),
    (ApiKey::SyncGroup, range(0, 5)),
    (ApiKey::Heartbeat, range(0, 4)),
    (ApiKey::LeaveGroup, range(0, 5)),
    (ApiKey::OffsetCommit, range(2, 9)),
    (ApiKey::OffsetFetch, range(1, 9)),
    (ApiKey::ListGroups, range(0, 5)),
    (ApiKey::DescribeGroups, range(0, 6)),
    (ApiKey::DeleteGroups, range(0, 2)),
    (ApiKey::InitProducerId, range(0, 5)),
];

/// Returns the versions of `api_key` Weir serves, if any.
pub fn supported(api_key: ApiKey) -> Option<VersionRange> {
    SUPPORTED.iter().find(|(key, _)| *key == api_key).map(|(_, range)| *range)
}

fn api_list() -> Vec<ApiVersion> {
    SUPPORTED
        .iter()
        .map(|(key, range)| {
            ApiVersion::default().with_api_key(*key as i16).with_min_version(range.min).with_max_version(range.max)
        })
        .collect()
}

/// The ApiVersions response for a supported request version.
pub fn api_versions_response(_version: i16) -> ApiVersionsResponse {
    ApiVersionsResponse::default().with_error_code(0).with_api_keys(api_list())
}

/// The v0-format reply to an ApiVersions request of an unknown version: error
/// UNSUPPORTED_VERSION plus the supported ranges, so the client can retry
/// with a version we know.
pub fn unsupported_version_reply(correlation_id: i32) -> Vec<Bytes> {
    let apis = api_list();
    let mut buffer = BytesMut::with_capacity(16 + apis.len() * 6);
    buffer.put_i32(0);
    buffer.put_i32(correlation_id);
    buffer.put_i16(ResponseError::UnsupportedVersion.code());
    buffer.put_i32(apis.len() as i32);
    for api in &apis {
        buffer.put_i16(api.api_key);
        buffer.put_i16(api.min_version);
        buffer.put_i16(api.max_version);
    }
    let length = (buffer.len() - 4) as i32;
    buffer[..4].copy_from_slice(&length.to_be_bytes());
    vec![buffer.freeze()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advertised_ranges_are_decodable() {
        for (key, range) in SUPPORTED {
            let valid = key.valid_versions();
            assert!(range.decode_min >= valid.min, "{key:?} decodes below the codec's minimum");
            assert!(range.max <= valid.max, "{key:?} advertises past the codec's maximum");
        }
    }

    #[test]
    fn unsupported_version_reply_is_v0_format() {
        let frame = unsupported_version_reply(7).remove(0);
        assert_eq!(&frame[4..8], &7i32.to_be_bytes());
        assert_eq!(&frame[8..10], &35i16.to_be_bytes());
        let count = i32::from_be_bytes(frame[10..14].try_into().unwrap()) as usize;
        assert_eq!(count, SUPPORTED.len());
        assert_eq!(frame.len(), 14 + count * 6);
    }
}
