//! Broker configuration: an embedded default, an optional TOML file, and
//! `--set key=value` overrides, in that order of precedence (last wins).
//!
//! Keys use Kafka's names where Kafka has one (`log.segment.bytes`,
//! `socket.request.max.bytes`, ...). The file is flat: dotted keys may be
//! written quoted (`"log.segment.bytes" = 1073741824`) or as nested tables
//! (`[log] segment.bytes = ...`); both flatten to the same key.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::storage::{LogConfig, TimestampType};

/// Errors from reading or applying configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    // The I/O error is part of the message and deliberately not a `source`,
    // so `anyhow` does not print it twice.
    #[error("failed to read config file {path}: {reason}")]
    Read { path: PathBuf, reason: std::io::Error },
    #[error("invalid TOML in {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("unknown config key `{key}`; the README's configuration table and tuning/weir.toml in the source tree list the supported keys")]
    UnknownKey { key: String },
    #[error("invalid value `{value}` for `{key}`: expected {expected}")]
    InvalidValue { key: String, value: String, expected: &'static str },
    #[error("invalid override `{0}`: expected key=value")]
    InvalidOverride(String),
}

/// Listener layout: how shards are exposed to clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerMode {
    /// Each shard listens on its own port and is advertised as its own
    /// broker, so clients send each partition's requests to its owner core.
    PerShard,
    /// All shards accept on one port (SO_REUSEPORT) behind a single
    /// advertised broker; requests for other shards' partitions and groups
    /// are forwarded over the mesh.
    Shared,
}

/// The broker's settings after defaults, file and overrides are applied.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// Address of shard 0; shard i listens on the same host and port + i
    /// (each on an ephemeral port when the port is 0).
    pub listen: SocketAddr,
    /// `listener.mode`: `per-shard` (default) or `shared`.
    pub listener_mode: ListenerMode,
    /// Host name advertised in Metadata (default: the listen address' IP).
    pub advertised_host: Option<String>,
    pub data_dir: PathBuf,
    /// Number of shards (None: one per available core).
    pub shards: Option<usize>,
    /// Pin each shard to its own core.
    pub pin_shards: bool,
    pub socket_request_max_bytes: usize,
    pub message_max_bytes: u32,
    pub auto_create_topics_enable: bool,
    pub num_partitions: i32,
    pub log_segment_bytes: u64,
    pub log_segment_ms: Option<u64>,
    pub log_index_interval_bytes: u32,
    pub log_retention_ms: Option<u64>,
    pub log_retention_bytes: Option<u64>,
    pub log_retention_check_interval_ms: u64,
    pub log_flush_interval_ms: Option<u64>,
    pub log_message_timestamp_type: TimestampType,
    /// Bytes of recent batches each partition keeps in memory for fetches.
    pub log_hot_cache_bytes: usize,
    /// `queued.max.request.bytes`: request bytes one shard keeps in memory
    /// before its connections stop reading (at least socket.request.max.bytes).
    pub queued_max_request_bytes: usize,
    /// Requests one connection may have in flight before reading pauses.
    pub connection_max_in_flight_requests: usize,
    pub group_min_session_timeout_ms: i32,
    pub group_max_session_timeout_ms: i32,
    pub group_initial_rebalance_delay_ms: u64,
    pub offsets_retention_minutes: u64,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            listen: "127.0.0.1:9092".parse().expect("valid default address"),
            listener_mode: ListenerMode::PerShard,
            advertised_host: None,
            data_dir: PathBuf::from("weir-data"),
            shards: None,
            pin_shards: true,
            socket_request_max_bytes: 104_857_600,
            message_max_bytes: 1_048_588,
            auto_create_topics_enable: true,
            num_partitions: 1,
            log_segment_bytes: 1_073_741_824,
            log_segment_ms: None,
            log_index_interval_bytes: 4096,
            log_retention_ms: Some(168 * 3_600_000),
            log_retention_bytes: None,
            log_retention_check_interval_ms: 300_000,
            log_flush_interval_ms: None,
            log_message_timestamp_type: TimestampType::CreateTime,
            log_hot_cache_bytes: 4 * 1024 * 1024,
            queued_max_request_bytes: 256 * 1024 * 1024,
            connection_max_in_flight_requests: 64,
            group_min_session_timeout_ms: 6_000,
            group_max_session_timeout_ms: 1_800_000,
            group_initial_rebalance_delay_ms: 0,
            offsets_retention_minutes: 10_080,
        }
    }
}

impl BrokerConfig {
    /// Builds the config from the defaults, an optional file, then overrides.
    pub fn load(file: Option<&Path>, overrides: &[String]) -> Result<BrokerConfig, ConfigError> {
        let mut config = BrokerConfig::default();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path)
                .map_err(|reason| ConfigError::Read { path: path.to_path_buf(), reason })?;
            let table: toml::Table = text.parse().map_err(|err: toml::de::Error| ConfigError::Parse {
                path: path.to_path_buf(),
                message: err.to_string(),
            })?;
            let mut flat = BTreeMap::new();
            flatten("", &toml::Value::Table(table), &mut flat);
            for (key, value) in flat {
                config.set(&key, &value)?;
            }
        }
        for item in overrides {
            let (key, value) = item.split_once('=').ok_or_else(|| ConfigError::InvalidOverride(item.clone()))?;
            config.set(key.trim(), value.trim())?;
        }
        Ok(config)
    }

    /// Applies one `key = value` setting given as text.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), ConfigError> {
        let value = value.trim_matches('"');
        match key {
            "listen" | "listeners" => {
                let address = value.strip_prefix("PLAINTEXT://").unwrap_or(value);
                self.listen = parse(key, address, "an address like 127.0.0.1:9092")?;
            }
            "listener.mode" => {
                self.listener_mode = match value {
                    "per-shard" => ListenerMode::PerShard,
                    "shared" => ListenerMode::Shared,
                    _ => {
                        return Err(ConfigError::InvalidValue {
                            key: key.to_string(),
                            value: value.to_string(),
                            expected: "per-shard or shared",
                        })
                    }
                };
            }
            "advertised.host" | "advertised.host.name" => self.advertised_host = Some(value.to_string()),
            "data.dir" | "log.dirs" | "log.dir" => self.data_dir = PathBuf::from(value),
            "shards" => {
                let shards: usize = parse(key, value, "a positive integer")?;
                self.shards = if shards == 0 { None } else { Some(shards) };
            }
            "pin.shards" => self.pin_shards = parse(key, value, "true or false")?,
            "socket.request.max.bytes" => self.socket_request_max_bytes = parse(key, value, "a byte count")?,
            "message.max.bytes" => self.message_max_bytes = at_least(key, value, MESSAGE_MAX_BYTES_MIN, "a byte count of at least 128")?,
            "auto.create.topics.enable" => self.auto_create_topics_enable = parse(key, value, "true or false")?,
            "num.partitions" => self.num_partitions = positive(key, value)?,
            "log.segment.bytes" => self.log_segment_bytes = at_least(key, value, SEGMENT_BYTES_MIN, "a byte count of at least 1048576")?,
            "log.roll.ms" => self.log_segment_ms = Some(parse(key, value, "milliseconds")?),
            "log.roll.hours" => self.log_segment_ms = Some(parse::<u64>(key, value, "hours")? * 3_600_000),
            "log.index.interval.bytes" => self.log_index_interval_bytes = parse(key, value, "a byte count")?,
            "log.retention.ms" => self.log_retention_ms = optional_limit(key, value, 1)?,
            "log.retention.minutes" => self.log_retention_ms = optional_limit(key, value, 60_000)?,
            "log.retention.hours" => self.log_retention_ms = optional_limit(key, value, 3_600_000)?,
            "log.retention.bytes" => self.log_retention_bytes = optional_limit(key, value, 1)?,
            "log.retention.check.interval.ms" => {
                self.log_retention_check_interval_ms = parse(key, value, "milliseconds")?
            }
            "log.flush.interval.ms" => self.log_flush_interval_ms = optional_limit(key, value, 1)?,
            "log.message.timestamp.type" => {
                self.log_message_timestamp_type = parse_timestamp_type(key, value)?;
            }
            "log.hot.cache.bytes" => self.log_hot_cache_bytes = parse(key, value, "a byte count")?,
            "queued.max.request.bytes" => {
                let bytes: i64 = parse(key, value, "a byte count, or -1 for the default")?;
                if bytes > 0 {
                    self.queued_max_request_bytes = bytes as usize;
                }
            }
            "connection.max.in.flight.requests" => {
                self.connection_max_in_flight_requests = parse(key, value, "a positive integer")?
            }
            "group.min.session.timeout.ms" => self.group_min_session_timeout_ms = parse(key, value, "milliseconds")?,
            "group.max.session.timeout.ms" => self.group_max_session_timeout_ms = parse(key, value, "milliseconds")?,
            "group.initial.rebalance.delay.ms" => {
                self.group_initial_rebalance_delay_ms = parse(key, value, "milliseconds")?
            }
            "offsets.retention.minutes" => self.offsets_retention_minutes = parse(key, value, "minutes")?,
            // Accepted for compatibility with Kafka configs; a single node has one replica.
            "default.replication.factor" | "offsets.topic.replication.factor" | "broker.id" | "node.id" => {}
            _ => {
                return Err(ConfigError::UnknownKey { key: key.to_string() });
            }
        }
        Ok(())
    }

    /// Request bytes a shard may hold: never less than one maximum-size request.
    pub fn request_bytes_budget(&self) -> usize {
        self.queued_max_request_bytes.max(self.socket_request_max_bytes)
    }

    /// Returns the log settings for a partition of a topic with the given overrides
    /// (topic-level Kafka names such as `segment.bytes`, `retention.ms`).
    pub fn log_config(&self, topic_configs: &BTreeMap<String, String>) -> LogConfig {
        let mut log = LogConfig {
            segment_bytes: self.log_segment_bytes,
            segment_ms: self.log_segment_ms,
            index_interval_bytes: self.log_index_interval_bytes,
            max_message_bytes: self.message_max_bytes,
            retention_bytes: self.log_retention_bytes,
            retention_ms: self.log_retention_ms,
            timestamp_type: self.log_message_timestamp_type,
            hot_cache_bytes: self.log_hot_cache_bytes,
            flush_ms: self.log_flush_interval_ms,
        };
        for (key, value) in topic_configs {
            // Topic configs were validated when the topic was created.
            match key.as_str() {
                "segment.bytes" => log.segment_bytes = value.parse().unwrap_or(log.segment_bytes),
                "segment.ms" => log.segment_ms = value.parse().ok(),
                "index.interval.bytes" => log.index_interval_bytes = value.parse().unwrap_or(log.index_interval_bytes),
                "max.message.bytes" => log.max_message_bytes = value.parse().unwrap_or(log.max_message_bytes),
                "retention.bytes" => {
                    log.retention_bytes = value.parse::<i64>().ok().filter(|v| *v >= 0).map(|v| v as u64)
                }
                "retention.ms" => log.retention_ms = value.parse::<i64>().ok().filter(|v| *v >= 0).map(|v| v as u64),
                "message.timestamp.type" => {
                    if let Ok(kind) = parse_timestamp_type(key, value) {
                        log.timestamp_type = kind;
                    }
                }
                "flush.ms" => {
                    log.flush_ms = value.parse::<i64>().ok().filter(|v| *v >= 0 && *v < i64::MAX).map(|v| v as u64)
                }
                _ => {}
            }
        }
        log
    }
}

/// Topic-level config keys accepted by CreateTopics, with a check for each value.
pub fn validate_topic_config(key: &str, value: &str) -> Result<(), String> {
    let as_i64 = || value.parse::<i64>().map(|_| ()).map_err(|_| format!("`{key}` must be an integer, got `{value}`"));
    match key {
        "segment.bytes"
        | "segment.ms"
        | "index.interval.bytes"
        | "max.message.bytes"
        | "retention.bytes"
        | "retention.ms"
        | "flush.ms"
        | "flush.messages"
        | "min.insync.replicas"
        | "delete.retention.ms"
        | "segment.index.bytes"
        | "file.delete.delay.ms"
        | "segment.jitter.ms"
        | "min.compaction.lag.ms"
        | "max.compaction.lag.ms"
        | "local.retention.ms"
        | "local.retention.bytes" => as_i64(),
        "message.timestamp.type" => parse_timestamp_type(key, value).map(|_| ()).map_err(|err| err.to_string()),
        "cleanup.policy" => match value {
            "delete" => Ok(()),
            "compact" | "compact,delete" | "delete,compact" => {
                Err("cleanup.policy=compact is not supported yet; use delete".to_string())
            }
            _ => Err(format!("`cleanup.policy` must be delete, got `{value}`")),
        },
        "compression.type" => match value {
            "producer" | "uncompressed" | "gzip" | "snappy" | "lz4" | "zstd" => Ok(()),
            _ => Err(format!("unknown compression.type `{value}`")),
        },
        "unclean.leader.election.enable" | "preallocate" | "message.downconversion.enable" => Ok(()),
        _ => Err(format!("unknown topic config `{key}`")),
    }
}

fn parse_timestamp_type(key: &str, value: &str) -> Result<TimestampType, ConfigError> {
    match value {
        "CreateTime" => Ok(TimestampType::CreateTime),
        "LogAppendTime" => Ok(TimestampType::LogAppendTime),
        _ => Err(ConfigError::InvalidValue {
            key: key.to_string(),
            value: value.to_string(),
            expected: "CreateTime or LogAppendTime",
        }),
    }
}

fn parse<T: std::str::FromStr>(key: &str, value: &str, expected: &'static str) -> Result<T, ConfigError> {
    value.parse().map_err(|_| ConfigError::InvalidValue { key: key.to_string(), value: value.to_string(), expected })
}

/// Smallest `log.segment.bytes` accepted; smaller segments would roll on almost every batch.
const SEGMENT_BYTES_MIN: u64 = 1024 * 1024;
/// Smallest `message.max.bytes` accepted: a v2 batch header plus one small record.
const MESSAGE_MAX_BYTES_MIN: u32 = 128;

fn at_least<T>(key: &str, value: &str, minimum: T, expected: &'static str) -> Result<T, ConfigError>
where
    T: std::str::FromStr + PartialOrd,
{
    match value.parse::<T>() {
        Ok(number) if number >= minimum => Ok(number),
        _ => Err(ConfigError::InvalidValue {
            key: key.to_string(),
            value: value.to_string(),
            expected,
        }),
    }
}

fn positive(key: &str, value: &str) -> Result<i32, ConfigError> {
    match value.parse::<i32>() {
        Ok(number) if number > 0 => Ok(number),
        _ => Err(ConfigError::InvalidValue {
            key: key.to_string(),
            value: value.to_string(),
            expected: "a positive integer",
        }),
    }
}

/// Parses a Kafka-style limit where -1 means unlimited, scaled to the base unit.
fn optional_limit(key: &str, value: &str, scale: u64) -> Result<Option<u64>, ConfigError> {
    let number: i64 = parse(key, value, "an integer, or -1 for no limit")?;
    if number < 0 {
        Ok(None)
    } else {
        Ok(Some((number as u64).saturating_mul(scale)))
    }
}

fn flatten(prefix: &str, value: &toml::Value, out: &mut BTreeMap<String, String>) {
    match value {
        toml::Value::Table(table) => {
            for (key, inner) in table {
                let full = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
                flatten(&full, inner, out);
            }
        }
        toml::Value::String(text) => {
            out.insert(prefix.to_string(), text.clone());
        }
        other => {
            out.insert(prefix.to_string(), other.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_win_over_defaults() {
        let config =
            BrokerConfig::load(None, &["num.partitions=8".to_string(), "auto.create.topics.enable=false".to_string()])
                .expect("valid overrides");
        assert_eq!(config.num_partitions, 8);
        assert!(!config.auto_create_topics_enable);
    }

    #[test]
    fn file_keys_flatten_from_tables() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("weir.toml");
        std::fs::write(&path, "\"message.max.bytes\" = 2000\n[log]\n\"segment.bytes\" = 1048576\n").expect("write");
        let config = BrokerConfig::load(Some(&path), &[]).expect("valid file");
        assert_eq!(config.log_segment_bytes, 1_048_576);
        assert_eq!(config.message_max_bytes, 2000);
    }

    #[test]
    fn unknown_key_is_rejected() {
        let err = BrokerConfig::load(None, &["no.such.key=1".to_string()]).unwrap_err();
        assert!(err.to_string().contains("no.such.key"));
    }

    #[test]
    fn tiny_sizes_are_rejected() {
        assert!(BrokerConfig::load(None, &["log.segment.bytes=10".to_string()]).is_err());
        assert!(BrokerConfig::load(None, &["message.max.bytes=0".to_string()]).is_err());
        assert!(BrokerConfig::load(None, &["log.segment.bytes=1048576".to_string()]).is_ok());
    }

    #[test]
    fn retention_minus_one_means_unlimited() {
        let config = BrokerConfig::load(None, &["log.retention.hours=-1".to_string()]).expect("valid");
        assert_eq!(config.log_retention_ms, None);
    }
}
