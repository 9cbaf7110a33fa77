//! The `weir` command: `weir serve` runs the broker, `weir groups` shows
//! consumer groups.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use tracing_subscriber::EnvFilter;

use weir::config::BrokerConfig;

#[global_allocator]
static GLOBAL: weir::alloc::BrokerAllocator = weir::alloc::BrokerAllocator;

#[derive(Parser)]
#[command(name = "weir", version, about = "A Kafka-compatible, thread-per-core message broker")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the broker.
    Serve(ServeArgs),
    /// List consumer groups with their members, committed offsets and lag.
    Groups(GroupsArgs),
}

#[derive(clap::Args)]
struct GroupsArgs {
    /// Address of any broker of the cluster, e.g. 127.0.0.1:9092.
    #[arg(long, value_name = "HOST:PORT")]
    bootstrap: String,
    /// Show only this group (default: every group of every broker).
    #[arg(long)]
    group: Option<String>,
    /// Print JSON instead of text tables.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Address of shard 0, the bootstrap address; shard i listens on port + i (port 0: ephemeral ports).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Directory for partition logs and metadata.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Number of shards, each pinned to its own core (default: one per available core).
    #[arg(long)]
    shards: Option<usize>,
    /// Host name advertised to clients in Metadata (default: the listen IP).
    #[arg(long)]
    advertised_host: Option<String>,
    /// TOML config file with Kafka-named keys (see tuning/weir.toml).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Override one config key, e.g. --set num.partitions=8 (repeatable; applied after the file).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::Groups(args) => groups(args),
    }
}

fn groups(args: GroupsArgs) -> anyhow::Result<()> {
    let reports = weir::admin::describe_groups(&args.bootstrap, args.group.as_deref())?;
    let output = if args.json {
        serde_json::to_string_pretty(&reports)? + "\n"
    } else {
        weir::admin::render_text(&reports)
    };
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(output.as_bytes())?;
    stdout.flush()?;
    Ok(())
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = BrokerConfig::load(args.config.as_deref(), &args.overrides)?;
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(data_dir) = args.data_dir {
        config.data_dir = data_dir;
    }
    if let Some(shards) = args.shards {
        config.shards = Some(shards.max(1));
    }
    if let Some(host) = args.advertised_host {
        config.advertised_host = Some(host);
    }

    // Register the handlers before the shards start so an early signal is not lost.
    let mut signals = Signals::new([SIGINT, SIGTERM]).context("failed to install signal handlers")?;
    let broker = weir::shard::run_broker(config)?;
    let addresses: Vec<String> = broker.shard_addresses.iter().map(ToString::to_string).collect();
    tracing::info!(target: "weir::broker", bootstrap = %broker.bootstrap(), shards = %addresses.join(","), "broker started");
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "listening bootstrap={}", broker.bootstrap())?;
        stdout.flush()?;
    }

    let signal = signals.forever().next();
    tracing::info!(target: "weir::broker", signal = ?signal, "stopping broker");
    broker.shutdown()?;
    tracing::info!(target: "weir::broker", "broker stopped");
    Ok(())
}
