//! Client errors. Failures the broker reports keep their Kafka error code.

use kafka_protocol::ResponseError;

/// An error from the client. Cloneable, because one failed request fails
/// every record or caller that waited on it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// The broker answered with a non-zero Kafka error code.
    #[error("{api} failed{}: {} (Kafka error code {code})", describe_target(.topic, .partition), kafka_error_name(*.code))]
    Kafka { api: &'static str, topic: Option<String>, partition: Option<i32>, code: i16 },
    #[error("failed to connect to {addr}: {message}")]
    Connect { addr: String, message: String },
    #[error("connection to {addr} failed: {message}")]
    Io { addr: String, message: String },
    #[error("connection to {addr} closed with {pending} requests awaiting a response")]
    Disconnected { addr: String, pending: usize },
    #[error("{api} to {addr} timed out after {timeout_ms} ms")]
    Timeout { api: &'static str, addr: String, timeout_ms: u64 },
    #[error("invalid {api} message: {message}")]
    Protocol { api: &'static str, message: String },
    #[error("broker {addr} supports {api} versions {broker_min}..={broker_max}, the client needs {client_min}..={client_max}")]
    UnsupportedVersion {
        api: &'static str,
        addr: String,
        broker_min: i16,
        broker_max: i16,
        client_min: i16,
        client_max: i16,
    },
    #[error("no leader known for {topic}-{partition}; the topic may not exist yet")]
    NoLeader { topic: String, partition: i32 },
    #[error("topic {topic} not found in metadata")]
    UnknownTopic { topic: String },
    #[error("broker {node_id} is not in the cluster metadata")]
    UnknownBroker { node_id: i32 },
    #[error("corrupt record batch at offset {offset}: {message}")]
    CorruptBatch { offset: i64, message: String },
    #[error("{compression} compression failed: {message}")]
    Compression { compression: &'static str, message: String },
    #[error("record of {size_bytes} bytes exceeds max.request.size {max_bytes}")]
    RecordTooLarge { size_bytes: usize, max_bytes: usize },
    #[error("invalid client configuration: {0}")]
    Config(String),
    #[error("the producer is closed")]
    Closed,
}

impl ClientError {
    /// Kafka error code carried by this error: the broker's code, or the
    /// code Kafka clients use for the same local condition (a time-out is
    /// REQUEST_TIMED_OUT, a dropped connection NETWORK_EXCEPTION).
    pub fn kafka_code(&self) -> Option<i16> {
        match self {
            ClientError::Kafka { code, .. } => Some(*code),
            ClientError::Timeout { .. } => Some(ResponseError::RequestTimedOut.code()),
            ClientError::Disconnected { .. } | ClientError::Io { .. } | ClientError::Connect { .. } => {
                Some(ResponseError::NetworkException.code())
            }
            ClientError::NoLeader { .. } => Some(ResponseError::LeaderNotAvailable.code()),
            ClientError::UnknownTopic { .. } => Some(ResponseError::UnknownTopicOrPartition.code()),
            ClientError::RecordTooLarge { .. } => Some(ResponseError::MessageTooLarge.code()),
            ClientError::CorruptBatch { .. } => Some(ResponseError::CorruptMessage.code()),
            ClientError::UnsupportedVersion { .. } => Some(ResponseError::UnsupportedVersion.code()),
            _ => None,
        }
    }

    /// Whether retrying after a metadata refresh may succeed.
    pub fn is_retriable(&self) -> bool {
        match self {
            ClientError::Kafka { code, .. } => ResponseError::try_from_code(*code).is_some_and(|e| e.is_retriable()),
            ClientError::Timeout { .. }
            | ClientError::Disconnected { .. }
            | ClientError::Io { .. }
            | ClientError::Connect { .. }
            | ClientError::NoLeader { .. }
            | ClientError::UnknownBroker { .. } => true,
            _ => false,
        }
    }

    pub(crate) fn kafka(api: &'static str, topic: &str, partition: i32, code: i16) -> ClientError {
        ClientError::Kafka { api, topic: Some(topic.to_string()), partition: Some(partition), code }
    }

    pub(crate) fn protocol(api: &'static str, error: impl std::fmt::Display) -> ClientError {
        ClientError::Protocol { api, message: error.to_string() }
    }
}

/// Returns Kafka's name for an error code, e.g. `NOT_LEADER_OR_FOLLOWER` for 6.
pub fn kafka_error_name(code: i16) -> String {
    match ResponseError::try_from_code(code) {
        None => "NONE".to_string(),
        Some(ResponseError::Unknown(code)) => format!("UNKNOWN_CODE_{code}"),
        Some(error) => screaming_snake_case(&format!("{error:?}")),
    }
}

fn screaming_snake_case(camel: &str) -> String {
    let mut out = String::with_capacity(camel.len() + 8);
    for (index, ch) in camel.chars().enumerate() {
        if ch.is_ascii_uppercase() && index > 0 {
            out.push('_');
        }
        out.push(ch.to_ascii_uppercase());
    }
    out
}

fn describe_target(topic: &Option<String>, partition: &Option<i32>) -> String {
    match (topic, partition) {
        (Some(topic), Some(partition)) => format!(" for {topic}-{partition}"),
        (Some(topic), None) => format!(" for topic {topic}"),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_names_follow_kafka_spelling() {
        assert_eq!(kafka_error_name(6), "NOT_LEADER_OR_FOLLOWER");
        assert_eq!(kafka_error_name(3), "UNKNOWN_TOPIC_OR_PARTITION");
        assert_eq!(kafka_error_name(-1), "UNKNOWN_SERVER_ERROR");
        assert_eq!(kafka_error_name(0), "NONE");
        assert_eq!(kafka_error_name(9999), "UNKNOWN_CODE_9999");
    }

    #[test]
    fn kafka_error_message_names_partition_and_code() {
        let error = ClientError::kafka("Produce", "orders", 3, 6);
        assert_eq!(error.to_string(), "Produce failed for orders-3: NOT_LEADER_OR_FOLLOWER (Kafka error code 6)");
        assert_eq!(error.kafka_code(), Some(6));
        assert!(error.is_retriable());
    }
}
