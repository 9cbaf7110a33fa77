//! The run report: summary table, JSON file and comparison of two runs.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use weir::client::kafka_error_name;

use crate::config::RunConfig;
use crate::limits::Limits;
use crate::runner::StageResult;
use crate::stats::Percentiles;

/// Format version of the JSON report.
const REPORT_VERSION: u32 = 1;

/// Messages and bytes moved in one direction.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Throughput {
    pub messages: u64,
    pub bytes: u64,
    pub messages_per_sec: f64,
    pub mb_per_sec: f64,
}

impl Throughput {
    fn new(messages: u64, bytes: u64, secs: f64) -> Throughput {
        Throughput { messages, bytes, messages_per_sec: messages as f64 / secs, mb_per_sec: bytes as f64 / 1e6 / secs }
    }
}

/// Counts over every phase (backlog, warm-up, drain), for checking against
/// what the broker stored.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct AllPhases {
    pub acknowledged_messages: u64,
    pub acknowledged_bytes: u64,
    pub consumed_messages: u64,
    pub consumed_bytes: u64,
    /// Records the broker's log end offsets grew by during the run.
    pub broker_stored_messages: Option<u64>,
}

/// Result figures as fractions of the measured limits.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Ratios {
    /// Produced payload MB/s ÷ sequential O_DIRECT write MB/s.
    pub produce_of_disk_write: f64,
    /// Consumed payload MB/s ÷ loopback TCP MB/s.
    pub consume_of_loopback: f64,
    /// Produced payload MB/s ÷ loopback TCP MB/s.
    pub produce_of_loopback: f64,
    /// Produce p50 latency ÷ fdatasync p50 latency.
    pub produce_p50_of_fdatasync_p50: f64,
}

/// Everything one run measured.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Report {
    pub report_version: u32,
    pub config: RunConfig,
    pub started_unix_secs: u64,
    pub machine: Machine,
    pub broker_command: Option<String>,
    pub interrupted: bool,
    pub measured_secs: f64,
    /// Seconds until every consumer joined and producers began; they are
    /// part of the measured time when warm-up is shorter.
    #[serde(default)]
    pub consumers_ready_secs: Option<f64>,
    pub produced: Throughput,
    pub consumed: Throughput,
    pub produce_latency: Percentiles,
    pub fetch_latency: Percentiles,
    pub end_to_end_latency: Percentiles,
    /// "NAME (code)" → failed messages or requests.
    pub errors: BTreeMap<String, u64>,
    pub wire_sent_bytes: u64,
    pub wire_received_bytes: u64,
    pub all_phases: AllPhases,
    pub limits: Option<Limits>,
    pub ratios: Option<Ratios>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Machine {
    pub cpus: usize,
    pub bench_threads: usize,
    pub kernel: String,
}

impl Machine {
    pub fn current(bench_threads: usize) -> Machine {
        Machine {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            bench_threads,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|text| text.trim().to_string())
                .unwrap_or_default(),
        }
    }
}

impl Report {
    /// Builds the report of the measured stage, adding the backlog stage's
    /// counts to the all-phase totals.
    pub fn build(
        config: &RunConfig,
        machine: Machine,
        broker_command: Option<String>,
        measured: &StageResult,
        backlog: Option<&StageResult>,
        limits: Option<Limits>,
    ) -> Report {
        let totals = &measured.measured;
        let secs = measured.measured_secs;
        let mut all = measured.all.clone();
        if let Some(backlog) = backlog {
            all.add(&backlog.all);
        }
        let errors = all
            .errors
            .iter()
            .map(|(code, count)| {
                let name = if *code == -1 {
                    "client error (no Kafka code)".to_string()
                } else {
                    format!("{} ({code})", kafka_error_name(*code))
                };
                (name, *count)
            })
            .collect();

        let produced = Throughput::new(totals.produced_messages, totals.produced_bytes, secs);
        let consumed = Throughput::new(totals.consumed_messages, totals.consumed_bytes, secs);
        let produce_latency = Percentiles::from_histogram(&totals.produce_latency);
        let ratios = limits.as_ref().map(|limits| Ratios {
            produce_of_disk_write: produced.mb_per_sec / limits.direct_write_mb_per_sec,
            consume_of_loopback: consumed.mb_per_sec / limits.loopback_mb_per_sec,
            produce_of_loopback: produced.mb_per_sec / limits.loopback_mb_per_sec,
            produce_p50_of_fdatasync_p50: if limits.fdatasync_latency_ms.p50_ms > 0.0 {
                produce_latency.p50_ms / limits.fdatasync_latency_ms.p50_ms
            } else {
                0.0
            },
        });

        Report {
            report_version: REPORT_VERSION,
            config: config.clone(),
            started_unix_secs: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |elapsed| elapsed.as_secs()),
            machine,
            broker_command,
            interrupted: measured.interrupted,
            measured_secs: secs,
            consumers_ready_secs: measured.consumers_ready_secs,
            produced,
            consumed,
            produce_latency,
            fetch_latency: Percentiles::from_histogram(&totals.fetch_latency),
            end_to_end_latency: Percentiles::from_histogram(&totals.end_to_end_latency),
            errors,
            wire_sent_bytes: all.wire_sent_bytes,
            wire_received_bytes: all.wire_received_bytes,
            all_phases: AllPhases {
                acknowledged_messages: all.produced_messages,
                acknowledged_bytes: all.produced_bytes,
                consumed_messages: all.consumed_messages,
                consumed_bytes: all.consumed_bytes,
                broker_stored_messages: None,
            },
            limits,
            ratios,
        }
    }

    pub fn write_json(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self)?;
        std::fs::write(path, text + "\n").with_context(|| format!("failed to write {}", path.display()))
    }

    pub fn read_json(path: &Path) -> Result<Report> {
        let text = std::fs::read_to_string(path).with_context(|| format!("failed to read {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("{} is not a weir-bench JSON report", path.display()))
    }

    /// Formats the human-readable summary.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        self.write_settings(&mut out);
        self.write_throughput(&mut out);
        self.write_latency(&mut out);
        self.write_errors_and_counts(&mut out);
        self.write_limits(&mut out);
        out
    }

    fn write_settings(&self, out: &mut String) {
        let config = &self.config;
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "workload {}: {} producers, {} consumer groups x {} consumers, {} topics x {} partitions, {} B messages",
            config.name,
            config.producers,
            config.consumer_groups,
            config.consumers,
            config.topics,
            config.partitions,
            config.message_size
        );
        let _ = writeln!(
            out,
            "acks={} batch.size={} linger.ms={} compression={} rate={} key spread={}",
            config.acks,
            config.batch_size,
            config.linger_ms,
            config.compression,
            if config.rate > 0.0 { format!("{} msg/s", config.rate) } else { "unbounded".to_string() },
            config.key_spread
        );
        let _ = writeln!(
            out,
            "measured {:.1} s after {} s warm-up{}",
            self.measured_secs,
            config.warmup_secs,
            if self.interrupted { " (interrupted: partial results)" } else { "" }
        );
        if let Some(ready) = self.consumers_ready_secs {
            let _ = writeln!(out, "consumers ready and producers started {ready:.1} s after the start");
        }
    }

    fn write_throughput(&self, out: &mut String) {
        let _ = writeln!(out);
        let _ = writeln!(out, "{:<22}{:>14}{:>12}{:>16}{:>14}", "throughput", "msg/s", "MB/s", "messages", "MB");
        for (name, throughput) in [("produced (acked)", &self.produced), ("consumed", &self.consumed)] {
            let _ = writeln!(
                out,
                "{:<22}{:>14.0}{:>12.1}{:>16}{:>14.1}",
                name,
                throughput.messages_per_sec,
                throughput.mb_per_sec,
                throughput.messages,
                throughput.bytes as f64 / 1e6
            );
        }
    }

    fn write_latency(&self, out: &mut String) {
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "{:<22}{:>10}{:>10}{:>10}{:>10}{:>10}{:>10}{:>12}",
            "latency (ms)", "p50", "p90", "p99", "p99.9", "p99.99", "max", "samples"
        );
        for (name, latency) in [
            ("produce-ack", &self.produce_latency),
            ("fetch", &self.fetch_latency),
            ("end-to-end", &self.end_to_end_latency),
        ] {
            let _ = writeln!(
                out,
                "{:<22}{:>10.3}{:>10.3}{:>10.3}{:>10.3}{:>10.3}{:>10.3}{:>12}",
                name,
                latency.p50_ms,
                latency.p90_ms,
                latency.p99_ms,
                latency.p99_9_ms,
                latency.p99_99_ms,
                latency.max_ms,
                latency.count
            );
        }
    }

    fn write_errors_and_counts(&self, out: &mut String) {
        let _ = writeln!(out);
        if self.errors.is_empty() {
            let _ = writeln!(out, "errors: none");
        } else {
            let _ = writeln!(out, "errors:");
            for (name, count) in &self.errors {
                let _ = writeln!(out, "  {name}: {count}");
            }
        }
        let _ = writeln!(
            out,
            "wire bytes: sent {:.1} MB, received {:.1} MB",
            self.wire_sent_bytes as f64 / 1e6,
            self.wire_received_bytes as f64 / 1e6
        );
        let all = &self.all_phases;
        let _ = write!(
            out,
            "all phases: {} messages acknowledged, {} consumed",
            all.acknowledged_messages, all.consumed_messages
        );
        match all.broker_stored_messages {
            Some(stored) if stored == all.acknowledged_messages => {
                let _ = writeln!(out, ", broker stored {stored} (matches)");
            }
            Some(stored) => {
                let _ = writeln!(out, ", broker stored {stored} (MISMATCH)");
            }
            None => {
                let _ = writeln!(out);
            }
        }
    }

    fn write_limits(&self, out: &mut String) {
        if let (Some(limits), Some(ratios)) = (&self.limits, &self.ratios) {
            let _ = writeln!(out);
            let _ = writeln!(
                out,
                "limits: O_DIRECT write {:.0} MB/s ({} KiB I/Os), read {:.0} MB/s, fdatasync p50 {:.3} ms p99 {:.3} ms, loopback TCP {:.0} MB/s",
                limits.direct_write_mb_per_sec,
                limits.write_io_bytes / 1024,
                limits.direct_read_mb_per_sec,
                limits.fdatasync_latency_ms.p50_ms,
                limits.fdatasync_latency_ms.p99_ms,
                limits.loopback_mb_per_sec
            );
            let _ = writeln!(
                out,
                "ratios: produce/disk write {:.3}, produce/loopback {:.3}, consume/loopback {:.3}, produce p50/fdatasync p50 {:.2}",
                ratios.produce_of_disk_write,
                ratios.produce_of_loopback,
                ratios.consume_of_loopback,
                ratios.produce_p50_of_fdatasync_p50
            );
        }
    }
}

/// Side-by-side table of two reports with B ÷ A.
pub fn compare(a: &Report, b: &Report, a_name: &str, b_name: &str) -> String {
    let mut rows: Vec<(String, f64, f64)> = vec![
        ("produced msg/s".into(), a.produced.messages_per_sec, b.produced.messages_per_sec),
        ("produced MB/s".into(), a.produced.mb_per_sec, b.produced.mb_per_sec),
        ("consumed msg/s".into(), a.consumed.messages_per_sec, b.consumed.messages_per_sec),
        ("consumed MB/s".into(), a.consumed.mb_per_sec, b.consumed.mb_per_sec),
    ];
    for (kind, left, right) in [
        ("produce-ack", &a.produce_latency, &b.produce_latency),
        ("fetch", &a.fetch_latency, &b.fetch_latency),
        ("end-to-end", &a.end_to_end_latency, &b.end_to_end_latency),
    ] {
        let pairs = [
            ("p50", left.p50_ms, right.p50_ms),
            ("p90", left.p90_ms, right.p90_ms),
            ("p99", left.p99_ms, right.p99_ms),
            ("p99.9", left.p99_9_ms, right.p99_9_ms),
            ("p99.99", left.p99_99_ms, right.p99_99_ms),
            ("max", left.max_ms, right.max_ms),
        ];
        for (label, left, right) in pairs {
            rows.push((format!("{kind} {label} ms"), left, right));
        }
    }
    let errors = |report: &Report| report.errors.values().sum::<u64>() as f64;
    rows.push(("errors".into(), errors(a), errors(b)));

    let mut out = String::new();
    if a.config != b.config {
        let _ = writeln!(out, "note: the two runs used different settings ({} vs {})", a.config.name, b.config.name);
    }
    let _ = writeln!(out, "{:<24}{:>16}{:>16}{:>10}", "metric", short(a_name), short(b_name), "B/A");
    for (name, left, right) in rows {
        let ratio = if left > 0.0 { format!("{:.3}", right / left) } else { "-".to_string() };
        let _ = writeln!(out, "{:<24}{:>16.3}{:>16.3}{:>10}", name, left, right, ratio);
    }
    out
}

fn short(name: &str) -> String {
    let file = Path::new(name).file_name().and_then(|file| file.to_str()).unwrap_or(name);
    file.chars().take(15).collect()
}
