//! weir-bench: load generator and end-to-end benchmark for Kafka-compatible
//! brokers, built on Weir's native client.
//!
//! - `weir-bench run` produces and consumes against a broker (or one it
//!   starts with `--broker-cmd`) and reports throughput, latency
//!   percentiles and errors by Kafka error code.
//! - `weir-bench limits` measures the disk and loopback limits the broker's
//!   figures are compared with.
//! - `weir-bench compare A.json B.json` puts two runs side by side.
//! - `weir-bench encode` times the client's batch encoder against
//!   kafka-protocol's.

mod broker;
mod config;
mod limits;
mod micro;
mod report;
mod runner;
mod stats;
mod svg;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use weir::client::StartOffset;

use crate::broker::BrokerProcess;
use crate::config::RunConfig;
use crate::limits::{Limits, LimitsConfig};
use crate::report::Report;
use crate::runner::{Plan, Stage};

#[derive(Parser)]
#[command(name = "weir-bench", version, about = "Load generator and end-to-end benchmark for Kafka-compatible brokers")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// The run arguments make `Run` much larger than the other variants, which
// does not matter for a value parsed once.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Produce and consume against a broker and report throughput and latency.
    Run(RunArgs),
    /// Measure sequential O_DIRECT write/read, fdatasync latency and loopback TCP bandwidth.
    Limits(LimitsArgs),
    /// Time the client's batch encoder against kafka-protocol's, per codec.
    Encode {
        /// Record value size in bytes.
        #[arg(long, default_value_t = 1024)]
        message_size: usize,
        /// Records per batch.
        #[arg(long, default_value_t = 128)]
        records: usize,
        /// Seconds spent timing each implementation and codec.
        #[arg(long, default_value_t = 1.0)]
        seconds: f64,
    },
    /// Compare two JSON reports written by `run --json`.
    Compare {
        /// The baseline report.
        a: PathBuf,
        /// The report compared with it.
        b: PathBuf,
    },
}

#[derive(Args)]
struct RunArgs {
    /// Workload file (TOML) with any of the run settings; flags override it.
    #[arg(long)]
    workload: Option<PathBuf>,
    /// Broker address host:port.
    #[arg(long)]
    bootstrap: Option<String>,
    /// Start a broker for the run with this shell command (default: the weir
    /// binary next to weir-bench, on 127.0.0.1:0 with a temporary data dir).
    /// `{data_dir}` in the command is replaced by a fresh temporary directory.
    #[arg(long, num_args = 0..=1, default_missing_value = "")]
    broker_cmd: Option<String>,
    /// Shards of the default broker command.
    #[arg(long, default_value_t = 2)]
    broker_shards: usize,
    /// Parent directory for the started broker's data (default: the system temp dir).
    #[arg(long)]
    broker_data_parent: Option<PathBuf>,
    /// Topic name prefix.
    #[arg(long)]
    topic: Option<String>,
    /// Number of topics.
    #[arg(long)]
    topics: Option<usize>,
    /// Partitions per topic.
    #[arg(long)]
    partitions: Option<i32>,
    /// Producers, each with its own connections.
    #[arg(long)]
    producers: Option<usize>,
    /// Consumers per consumer group.
    #[arg(long)]
    consumers: Option<usize>,
    /// Consumer groups, each reading every partition.
    #[arg(long)]
    consumer_groups: Option<usize>,
    /// "group" (partitions from the broker's group coordinator) or "direct".
    #[arg(long)]
    consumer_assignment: Option<String>,
    /// Message value size in bytes (at least 8).
    #[arg(long)]
    message_size: Option<usize>,
    /// Distinct keys; 0 sends keyless messages.
    #[arg(long)]
    key_spread: Option<u64>,
    /// Producer batch.size in bytes.
    #[arg(long)]
    batch_size: Option<usize>,
    /// Producer linger.ms.
    #[arg(long)]
    linger_ms: Option<u64>,
    /// none, gzip, snappy, lz4 or zstd.
    #[arg(long)]
    compression: Option<String>,
    /// 0, 1, -1 or all.
    #[arg(long, allow_hyphen_values = true)]
    acks: Option<String>,
    /// Target messages per second over all producers (open loop); 0 is unbounded.
    #[arg(long)]
    rate: Option<f64>,
    /// Seconds of warm-up excluded from the results.
    #[arg(long)]
    warmup_secs: Option<u64>,
    /// Seconds measured after warm-up.
    #[arg(long)]
    duration_secs: Option<u64>,
    /// Messages produced before consumers start.
    #[arg(long)]
    backlog_messages: Option<u64>,
    /// Bench threads, each pinned to a core (0: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Requests in flight per connection.
    #[arg(long)]
    max_in_flight: Option<usize>,
    /// Consumer fetch.max.wait.ms.
    #[arg(long)]
    fetch_max_wait_ms: Option<u64>,
    /// Maximum wait for consumers to catch up after producers stop, in seconds.
    #[arg(long)]
    drain_secs: Option<u64>,
    /// Write the report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write a latency-by-percentile plot (SVG) to this file.
    #[arg(long)]
    svg: Option<PathBuf>,
    /// Measure the machine limits first and report results as ratios of them.
    #[arg(long)]
    limits: bool,
    #[command(flatten)]
    limits_args: LimitsArgs,
}

#[derive(Args, Clone)]
struct LimitsArgs {
    /// Directory for the O_DIRECT test file (must be on a disk filesystem).
    #[arg(long, default_value = ".")]
    limits_dir: PathBuf,
    /// Bytes written and read in the disk tests.
    #[arg(long, default_value_t = 1 << 30)]
    limits_file_bytes: u64,
    /// fdatasync calls timed.
    #[arg(long, default_value_t = 200)]
    limits_sync_count: usize,
    /// Bytes sent in the loopback test.
    #[arg(long, default_value_t = 4 << 30)]
    limits_loopback_bytes: u64,
    /// Write the limits as JSON to this file (`limits` command only).
    #[arg(long)]
    limits_json: Option<PathBuf>,
}

impl LimitsArgs {
    fn measure(&self) -> Result<Limits> {
        limits::measure(
            &self.limits_dir,
            &LimitsConfig {
                file_bytes: self.limits_file_bytes,
                sync_count: self.limits_sync_count,
                loopback_bytes: self.limits_loopback_bytes,
            },
        )
    }
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run(args),
        Command::Limits(args) => run_limits(&args),
        Command::Compare { a, b } => run_compare(&a, &b),
        Command::Encode { message_size, records, seconds } => {
            micro::print_all(message_size, records, std::time::Duration::from_secs_f64(seconds))
        }
    };
    if let Err(err) = result {
        eprintln!("weir-bench: {err:#}");
        std::process::exit(1);
    }
}

fn run_limits(args: &LimitsArgs) -> Result<()> {
    let limits = args.measure()?;
    println!(
        "O_DIRECT sequential write: {:.0} MB/s ({} KiB writes, {} MiB file in {})",
        limits.direct_write_mb_per_sec,
        limits.write_io_bytes / 1024,
        limits.file_bytes >> 20,
        limits.directory
    );
    println!(
        "O_DIRECT sequential read:  {:.0} MB/s ({} KiB reads)",
        limits.direct_read_mb_per_sec,
        limits.read_io_bytes / 1024
    );
    let sync = &limits.fdatasync_latency_ms;
    println!(
        "fdatasync after 4 KiB write: p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms ({} samples)",
        sync.p50_ms, sync.p99_ms, sync.max_ms, sync.count
    );
    println!("loopback TCP:              {:.0} MB/s", limits.loopback_mb_per_sec);
    if let Some(path) = &args.limits_json {
        std::fs::write(path, serde_json::to_string_pretty(&limits)? + "\n")
            .with_context(|| format!("failed to write {}", path.display()))?;
    }
    Ok(())
}

fn run_compare(a: &Path, b: &Path) -> Result<()> {
    let left = Report::read_json(a)?;
    let right = Report::read_json(b)?;
    print!("{}", report::compare(&left, &right, &a.display().to_string(), &b.display().to_string()));
    Ok(())
}

fn build_config(args: &RunArgs) -> Result<RunConfig> {
    let mut config = match &args.workload {
        Some(path) => RunConfig::from_file(path)?,
        None => RunConfig::default(),
    };
    macro_rules! override_fields {
        ($($field:ident),*) => {
            $(if let Some(value) = &args.$field {
                config.$field = value.clone();
            })*
        };
    }
    override_fields!(
        bootstrap,
        topic,
        topics,
        partitions,
        producers,
        consumers,
        consumer_groups,
        consumer_assignment,
        message_size,
        key_spread,
        batch_size,
        linger_ms,
        compression,
        acks,
        rate,
        warmup_secs,
        duration_secs,
        backlog_messages,
        threads,
        max_in_flight,
        fetch_max_wait_ms,
        drain_secs
    );
    config.validate()?;
    Ok(config)
}

fn run(args: RunArgs) -> Result<()> {
    let mut config = build_config(&args)?;
    let interrupted = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGINT, interrupted.clone())
        .context("failed to install the Ctrl-C handler")?;

    let limits = if args.limits {
        eprintln!("measuring machine limits in {} ...", args.limits_args.limits_dir.display());
        Some(args.limits_args.measure()?)
    } else {
        None
    };

    let mut broker = match &args.broker_cmd {
        Some(command) => {
            let command =
                if command.is_empty() { broker::default_command(args.broker_shards) } else { command.clone() };
            let broker = BrokerProcess::start(&command, args.broker_data_parent.as_ref())?;
            eprintln!("started broker at {}: {}", broker.bootstrap, broker.command);
            config.bootstrap = broker.bootstrap.clone();
            Some(broker)
        }
        None => None,
    };
    if config.bootstrap.is_empty() {
        bail!("no broker: pass --bootstrap HOST:PORT, set bootstrap in the workload, or start one with --broker-cmd");
    }

    let result =
        run_with_broker(&config, &args, limits, broker.as_ref().map(|broker| broker.command.clone()), &interrupted);
    if let Some(broker) = broker.as_mut() {
        broker.stop();
    }
    result
}

fn run_with_broker(
    config: &RunConfig,
    args: &RunArgs,
    limits: Option<Limits>,
    broker_command: Option<String>,
    interrupted: &Arc<AtomicBool>,
) -> Result<()> {
    let available = weir::runtime::available_cpus();
    let thread_count = if config.threads == 0 { available.len() } else { config.threads };
    let cpus: Vec<Option<usize>> = (0..thread_count).map(|index| Some(available[index % available.len()])).collect();
    weir::runtime::ensure_memlock(thread_count + 1)?;

    let run_id =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_secs());
    let plan = Arc::new(Plan {
        config: config.clone(),
        run_id,
        epoch: std::time::Instant::now(),
        bootstrap: config.bootstrap.clone(),
        topics: config.topic_names(),
        cpus,
    });
    let start_offsets = {
        let plan = plan.clone();
        weir::runtime::block_on(async move { runner::prepare_topics(&plan).await })?
    };

    let backlog = if config.backlog_messages > 0 {
        eprintln!("producing a backlog of {} messages ...", config.backlog_messages);
        let stage = Stage {
            messages_per_producer: Some(config.backlog_messages.div_ceil(config.producers as u64)),
            rate: 0.0,
            with_consumers: false,
            consumer_start: StartOffset::Latest,
            warmup_secs: 0,
            duration_secs: None,
            print_progress: false,
        };
        let result = runner::run_stage(&plan, &stage, interrupted)?;
        eprintln!("backlog: {} messages acknowledged in {:.1} s", result.all.produced_messages, result.measured_secs);
        Some(result)
    } else {
        None
    };

    let stage = Stage {
        messages_per_producer: None,
        rate: config.rate,
        with_consumers: config.consumer_groups > 0,
        consumer_start: if config.backlog_messages > 0 { StartOffset::Earliest } else { StartOffset::Latest },
        warmup_secs: config.warmup_secs,
        duration_secs: Some(config.duration_secs),
        print_progress: true,
    };
    let measured = runner::run_stage(&plan, &stage, interrupted)?;

    let mut report = Report::build(
        config,
        report::Machine::current(thread_count),
        broker_command,
        &measured,
        backlog.as_ref(),
        limits,
    );
    let stored = {
        let plan = plan.clone();
        weir::runtime::block_on(async move { runner::stored_since(&plan, &start_offsets).await })
    };
    match stored {
        Ok(stored) => report.all_phases.broker_stored_messages = Some(stored),
        Err(err) => eprintln!("weir-bench: could not read the broker's end offsets: {err:#}"),
    }

    print!("{}", report.summary());
    if let Some(path) = &args.json {
        report.write_json(path)?;
    }
    if let Some(path) = &args.svg {
        let title = format!("weir-bench {}: latency by percentile", config.name);
        let plot = svg::render(
            &title,
            &[
                ("produce-ack", &report.produce_latency),
                ("fetch", &report.fetch_latency),
                ("end-to-end", &report.end_to_end_latency),
            ],
        );
        std::fs::write(path, plot).with_context(|| format!("failed to write {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_definition_is_valid() {
        <Cli as clap::CommandFactory>::command().debug_assert();
    }
}
