//! Run settings: defaults, workload files (TOML) and command-line overrides.
//!
//! A workload file sets any of the [`RunConfig`] fields by name; unknown
//! fields and values of the wrong type are rejected with the field's name.
//! Command-line flags override the file.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use weir::client::{batch::parse_compression, Acks};

/// Everything one `weir-bench run` does.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    /// Workload name shown in reports.
    pub name: String,
    pub description: String,
    /// `host:port` of a broker; empty when `broker_cmd` starts one.
    pub bootstrap: String,
    /// Topic name prefix; topics are `<topic>-0`, `<topic>-1`, ...
    pub topic: String,
    pub topics: usize,
    pub partitions: i32,
    pub producers: usize,
    /// Consumers in each consumer group.
    pub consumers: usize,
    /// Each group reads every partition once (fan-out = number of groups).
    pub consumer_groups: usize,
    /// How consumers get partitions: "group" (the broker's group
    /// coordinator) or "direct" (split round-robin by the bench).
    pub consumer_assignment: String,
    pub message_size: usize,
    /// Distinct keys (0 sends keyless records spread by the sticky partitioner).
    pub key_spread: u64,
    pub batch_size: usize,
    pub linger_ms: u64,
    pub compression: String,
    /// 0, 1, -1 or "all".
    #[serde(deserialize_with = "integer_or_string")]
    pub acks: String,
    /// Messages per second over all producers; 0 sends as fast as possible.
    pub rate: f64,
    pub warmup_secs: u64,
    pub duration_secs: u64,
    /// Messages produced before consumers start (catch-up workloads).
    pub backlog_messages: u64,
    /// Bench threads, each pinned to a core; 0 uses one per core.
    pub threads: usize,
    pub max_in_flight: usize,
    pub fetch_max_wait_ms: u64,
    /// Maximum wait, in seconds, for consumers to catch up after producers stop.
    pub drain_secs: u64,
}

impl Default for RunConfig {
    fn default() -> Self {
        RunConfig {
            name: "custom".to_string(),
            description: String::new(),
            bootstrap: String::new(),
            topic: "weir-bench".to_string(),
            topics: 1,
            partitions: 8,
            producers: 1,
            consumers: 1,
            consumer_groups: 1,
            consumer_assignment: "group".to_string(),
            message_size: 1024,
            key_spread: 0,
            batch_size: 128 * 1024,
            linger_ms: 5,
            compression: "none".to_string(),
            acks: "1".to_string(),
            rate: 0.0,
            warmup_secs: 5,
            duration_secs: 30,
            backlog_messages: 0,
            threads: 0,
            max_in_flight: 5,
            fetch_max_wait_ms: 100,
            drain_secs: 10,
        }
    }
}

fn integer_or_string<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Value {
        Integer(i64),
        Text(String),
    }
    Ok(match Value::deserialize(deserializer)? {
        Value::Integer(value) => value.to_string(),
        Value::Text(value) => value,
    })
}

/// Smallest message that carries the 8-byte send timestamp used for
/// end-to-end latency.
pub const TIMESTAMP_BYTES: usize = 8;

impl RunConfig {
    /// Reads a workload file over the defaults.
    pub fn from_file(path: &Path) -> Result<RunConfig> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("failed to read workload {}", path.display()))?;
        Self::from_toml(&text).with_context(|| format!("invalid workload {}", path.display()))
    }

    pub fn from_toml(text: &str) -> Result<RunConfig> {
        let config: RunConfig =
            toml::from_str(text).map_err(|err| anyhow::anyhow!("{}", err.to_string().trim_end()))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every field; the error names the first invalid one.
    pub fn validate(&self) -> Result<()> {
        if self.topic.is_empty() {
            bail!("topic must not be empty");
        }
        if self.topics == 0 {
            bail!("topics must be at least 1, got 0");
        }
        if self.partitions < 1 {
            bail!("partitions must be at least 1, got {}", self.partitions);
        }
        if self.producers == 0 && self.backlog_messages == 0 && self.consumer_groups == 0 {
            bail!("producers and consumer_groups are both 0: nothing to run");
        }
        if self.consumer_groups > 0 && self.consumers == 0 {
            bail!("consumers must be at least 1 when consumer_groups is {}", self.consumer_groups);
        }
        if !matches!(self.consumer_assignment.as_str(), "group" | "direct") {
            bail!("consumer_assignment must be \"group\" or \"direct\", got {:?}", self.consumer_assignment);
        }
        if self.message_size < TIMESTAMP_BYTES {
            bail!(
                "message_size must be at least {TIMESTAMP_BYTES} bytes (the send timestamp), got {}",
                self.message_size
            );
        }
        if self.batch_size == 0 {
            bail!("batch_size must be positive");
        }
        parse_compression(&self.compression).map_err(|err| anyhow::anyhow!("compression: {err}"))?;
        Acks::parse(&self.acks).map_err(|err| anyhow::anyhow!("acks: {err}"))?;
        if !self.rate.is_finite() || self.rate < 0.0 {
            bail!("rate must be 0 (unbounded) or a positive number of messages per second, got {}", self.rate);
        }
        if self.duration_secs == 0 {
            bail!("duration_secs must be at least 1");
        }
        if self.max_in_flight == 0 {
            bail!("max_in_flight must be at least 1");
        }
        if self.backlog_messages > 0 && self.producers == 0 {
            bail!("backlog_messages needs at least one producer");
        }
        Ok(())
    }

    pub fn acks(&self) -> Acks {
        Acks::parse(&self.acks).expect("validated")
    }

    pub fn topic_names(&self) -> Vec<String> {
        (0..self.topics).map(|index| format!("{}-{index}", self.topic)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workload_file_overrides_defaults() {
        let config = RunConfig::from_toml("name = \"x\"\npartitions = 3\nacks = \"all\"\nrate = 1000.0\n").unwrap();
        assert_eq!(config.partitions, 3);
        assert_eq!(config.acks(), Acks::All);
        let config = RunConfig::from_toml("acks = -1\n").unwrap();
        assert_eq!(config.acks(), Acks::All);
        assert_eq!(config.message_size, RunConfig::default().message_size);
    }

    #[test]
    fn unknown_field_is_named() {
        let error = RunConfig::from_toml("partitionz = 3\n").unwrap_err().to_string();
        assert!(error.contains("partitionz"), "{error}");
    }

    #[test]
    fn wrong_type_is_named() {
        let error = format!("{:#}", RunConfig::from_toml("partitions = \"many\"\n").unwrap_err());
        assert!(error.contains("partitions"), "{error}");
    }

    #[test]
    fn invalid_value_is_named() {
        let error = RunConfig::from_toml("compression = \"brotli\"\n").unwrap_err().to_string();
        assert!(error.starts_with("compression"), "{error}");
        let error = RunConfig::from_toml("message_size = 4\n").unwrap_err().to_string();
        assert!(error.starts_with("message_size"), "{error}");
        let error = RunConfig::from_toml("acks = \"2\"\n").unwrap_err().to_string();
        assert!(error.starts_with("acks"), "{error}");
    }

    #[test]
    fn standard_workloads_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../workloads");
        let mut count = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|ext| ext == "toml") {
                let config = RunConfig::from_file(&path).unwrap_or_else(|err| panic!("{}: {err:#}", path.display()));
                assert_eq!(Some(config.name.as_str()), path.file_stem().and_then(|stem| stem.to_str()));
                count += 1;
            }
        }
        assert_eq!(count, 10, "one file per standard workload");
    }
}
