//! Cluster metadata: topics, their ids, partition counts, configs, and the
//! placement of partitions on shards.
//!
//! Shard 0 owns the metadata: it validates every change, appends it to the
//! metadata log (`<data-dir>/__weir_metadata/metadata.log`, one JSON record
//! per line, fdatasynced before the change is applied) and pushes it to every
//! shard's read-only [`MetadataView`]. On start each shard replays the log
//! itself before serving, so all views begin identical.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Maximum topic name length Kafka accepts, in characters.
pub const TOPIC_NAME_MAX_CHARS: usize = 249;

/// A topic as recorded in the metadata log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicInfo {
    pub name: String,
    /// Kafka topic id (a UUID), stable for the topic's life.
    pub id: uuid::Uuid,
    pub partition_count: i32,
    /// Topic-level config overrides, by Kafka name.
    pub configs: BTreeMap<String, String>,
}

/// One change to the metadata, as stored in the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum MetadataChange {
    CreateTopic(TopicInfo),
    DeleteTopic { name: String, id: uuid::Uuid },
    SetPartitionCount { name: String, partition_count: i32 },
    ClusterId { cluster_id: String },
}

/// A shard's copy of the metadata.
#[derive(Debug, Clone, Default)]
pub struct MetadataView {
    pub cluster_id: String,
    pub topics: HashMap<String, TopicInfo>,
}

impl MetadataView {
    /// Applies one change. Changes are idempotent so replay is safe.
    pub fn apply(&mut self, change: &MetadataChange) {
        match change {
            MetadataChange::CreateTopic(info) => {
                self.topics.insert(info.name.clone(), info.clone());
            }
            MetadataChange::DeleteTopic { name, id } => {
                if self.topics.get(name).is_some_and(|topic| topic.id == *id) {
                    self.topics.remove(name);
                }
            }
            MetadataChange::SetPartitionCount { name, partition_count } => {
                if let Some(topic) = self.topics.get_mut(name) {
                    topic.partition_count = *partition_count;
                }
            }
            MetadataChange::ClusterId { cluster_id } => self.cluster_id = cluster_id.clone(),
        }
    }

    /// Finds a topic by its id.
    pub fn topic_by_id(&self, id: uuid::Uuid) -> Option<&TopicInfo> {
        self.topics.values().find(|topic| topic.id == id)
    }
}

/// Errors reading or writing the metadata log.
#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    #[error("i/o error on metadata log {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Path of the metadata log under a data directory.
pub fn log_path(data_dir: &Path) -> PathBuf {
    data_dir.join("__weir_metadata").join("metadata.log")
}

/// Reads the metadata log (blocking; call before serving or off the reactor).
/// A torn last line from a crash mid-write is ignored and reported.
pub fn load(data_dir: &Path) -> Result<MetadataView, MetadataError> {
    let path = log_path(data_dir);
    let mut view = MetadataView::default();
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(view),
        Err(source) => return Err(MetadataError::Io { path, source }),
    };
    for (number, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<MetadataChange>(line) {
            Ok(change) => view.apply(&change),
            Err(err) => {
                tracing::warn!(target: "weir::metadata", path = %path.display(), line = number + 1, error = %err,
                    "ignoring unreadable metadata record (torn write from a crash?)");
            }
        }
    }
    Ok(view)
}

/// Appends changes to the metadata log and fdatasyncs it (blocking; run it
/// through `runtime::spawn_blocking`).
pub fn append(data_dir: &Path, changes: &[MetadataChange]) -> Result<(), MetadataError> {
    let path = log_path(data_dir);
    let io_err = |source| MetadataError::Io { path: path.clone(), source };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io_err)?;
    }
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&path).map_err(io_err)?;
    let mut text = String::new();
    for change in changes {
        text.push_str(&serde_json::to_string(change).expect("metadata changes serialize"));
        text.push('\n');
    }
    file.write_all(text.as_bytes()).map_err(io_err)?;
    file.sync_data().map_err(io_err)?;
    Ok(())
}

/// Checks a topic name the way Kafka does: 1 to 249 characters from
/// `[a-zA-Z0-9._-]`, and not `.` or `..`.
pub fn validate_topic_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("topic name is empty".to_string());
    }
    if name == "." || name == ".." {
        return Err(format!("topic name `{name}` is not allowed"));
    }
    if name.len() > TOPIC_NAME_MAX_CHARS {
        return Err(format!("topic name is {} characters long; the maximum is {TOPIC_NAME_MAX_CHARS}", name.len()));
    }
    if let Some(bad) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '.' || *c == '_' || *c == '-')) {
        return Err(format!(
            "topic name `{name}` contains `{bad}`; only ASCII letters, digits, '.', '_' and '-' are allowed"
        ));
    }
    if name.starts_with("__weir") {
        return Err(format!("topic name `{name}` uses the reserved prefix __weir"));
    }
    Ok(())
}

/// The shard that owns a partition: a deterministic function of topic and
/// partition, spreading a topic's partitions round-robin from a hashed start.
pub fn owner_shard(topic: &str, partition: i32, shard_count: usize) -> usize {
    let start = fnv1a(topic.as_bytes()) as usize;
    start.wrapping_add(partition.max(0) as usize) % shard_count.max(1)
}

/// Returns the shard that coordinates a consumer group.
pub fn group_shard(group_id: &str, shard_count: usize) -> usize {
    fnv1a(group_id.as_bytes()) as usize % shard_count.max(1)
}

/// Directory holding one partition's segments.
pub fn partition_dir(data_dir: &Path, topic: &str, partition: i32) -> PathBuf {
    data_dir.join(format!("{topic}-{partition}"))
}

fn fnv1a(bytes: &[u8]) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in bytes {
        hash ^= u32::from(*byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_follow_kafka_rules() {
        assert!(validate_topic_name("orders.v1_a-b").is_ok());
        assert!(validate_topic_name("").is_err());
        assert!(validate_topic_name("..").is_err());
        assert!(validate_topic_name("has space").is_err());
        assert!(validate_topic_name(&"x".repeat(250)).is_err());
        assert!(validate_topic_name(&"x".repeat(249)).is_ok());
    }

    #[test]
    fn placement_spreads_partitions_over_shards() {
        let mut counts = [0usize; 4];
        for partition in 0..16 {
            counts[owner_shard("events", partition, 4)] += 1;
        }
        assert_eq!(counts, [4, 4, 4, 4]);
        assert_eq!(owner_shard("events", 3, 4), owner_shard("events", 3, 4));
    }

    #[test]
    fn metadata_log_replays_creates_and_deletes() {
        let dir = tempfile::tempdir().expect("temp dir");
        let topic =
            TopicInfo { name: "a".into(), id: uuid::Uuid::new_v4(), partition_count: 3, configs: BTreeMap::new() };
        let other = TopicInfo { name: "b".into(), id: uuid::Uuid::new_v4(), ..topic.clone() };
        append(dir.path(), &[MetadataChange::CreateTopic(topic.clone()), MetadataChange::CreateTopic(other.clone())])
            .expect("append");
        append(dir.path(), &[MetadataChange::DeleteTopic { name: "b".into(), id: other.id }]).expect("append");
        let view = load(dir.path()).expect("load");
        assert_eq!(view.topics.len(), 1);
        assert_eq!(view.topics.get("a"), Some(&topic));
    }
}
