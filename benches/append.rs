//! Append-path micro-benchmark: validate + patch + write through
//! `PartitionLog` (waiting for each write to complete), next to raw O_DIRECT
//! `DmaFile` writes of the same size measured in the same run.
//!
//! Run with `cargo bench --bench append`. Files go to `WEIR_BENCH_DIR` or
//! the system temporary directory, which must support O_DIRECT (not tmpfs).
//! After criterion's report, a summary prints MB/s for each case (mean over
//! every timed iteration, warm-up included) and the log/raw ratio.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use weir::runtime::{self, DmaOpenOptions};
use weir::storage::batch::{self, BatchBuilder};
use weir::storage::{LogConfig, PartitionLog, TimestampType};

/// Batch sizes measured, in bytes.
const BATCH_SIZES_BYTES: [usize; 2] = [16 << 10, 256 << 10];

/// Batches appended before one `wait_written` in the group commit case.
const GROUP_BATCH_COUNT: u64 = 16;

/// Bytes of each record's value; the batch is filled with such records.
const RECORD_VALUE_BYTES: usize = 1000;

/// Space the raw case reserves ahead, like the log's appender.
const RAW_PREALLOC_STEP_BYTES: u64 = 8 << 20;

/// Total bytes and time of every timed iteration, per case.
#[derive(Default)]
struct Totals {
    cases: Vec<(String, u64, Duration)>,
}

impl Totals {
    fn add(&mut self, case: &str, bytes: u64, elapsed: Duration) {
        match self.cases.iter_mut().find(|(name, _, _)| name == case) {
            Some((_, total_bytes, total_elapsed)) => {
                *total_bytes += bytes;
                *total_elapsed += elapsed;
            }
            None => self.cases.push((case.to_owned(), bytes, elapsed)),
        }
    }

    fn mb_per_s(&self, case: &str) -> f64 {
        let (_, bytes, elapsed) = self.cases.iter().find(|(name, _, _)| name == case).expect("every case ran");
        *bytes as f64 / elapsed.as_secs_f64() / 1e6
    }
}

fn bench_dir() -> PathBuf {
    std::env::var_os("WEIR_BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from)
}

fn log_config() -> LogConfig {
    LogConfig {
        segment_bytes: 1 << 30,
        segment_ms: None,
        index_interval_bytes: 4096,
        max_message_bytes: 1 << 20,
        retention_bytes: None,
        retention_ms: None,
        timestamp_type: TimestampType::CreateTime,
        hot_cache_bytes: 1 << 20,
        flush_ms: None,
    }
}

/// Builds one uncompressed batch of about `size_bytes`.
fn build_batch(size_bytes: usize) -> Vec<u8> {
    let record_overhead_bytes = 12;
    let record_count = (size_bytes - batch::HEADER_LEN) / (RECORD_VALUE_BYTES + record_overhead_bytes);
    BatchBuilder::new(0).records(record_count.max(1), RECORD_VALUE_BYTES).build()
}

/// Appends `iterations` copies of `input` (validating each), waiting for the
/// write after every `group` appends. Returns the time spent.
async fn time_log_appends(dir: &Path, input: Rc<Vec<u8>>, iterations: u64, group: u64) -> Duration {
    let log = PartitionLog::open(dir, log_config()).await.expect("open bench log");
    let start = Instant::now();
    for i in 0..iterations {
        let batches = batch::validate(&input, 1 << 20).expect("bench batch is valid");
        let (range, header) = &batches[0];
        let info = log.append(&input[range.clone()], header, 0).expect("append");
        if (i + 1) % group == 0 || i + 1 == iterations {
            log.wait_written(info.last_offset).await.expect("wait_written");
        }
    }
    let elapsed = start.elapsed();
    log.delete().await.expect("delete bench log");
    elapsed
}

/// Writes `iterations` aligned buffers of `size_bytes` back to back with
/// O_DIRECT, one at a time. Returns the time spent.
async fn time_raw_writes(dir: &Path, size_bytes: usize, iterations: u64) -> Duration {
    runtime::prime_direct_io(dir).await.expect("probe direct i/o");
    let path = dir.join("raw.bin");
    let file = DmaOpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .dma_open(&path)
        .await
        .expect("create raw file");
    assert!(runtime::is_direct_io(&file), "raw bench file must use O_DIRECT");
    let write_bytes = file.align_up(size_bytes as u64) as usize;

    let start = Instant::now();
    let mut reserved_bytes = 0;
    for i in 0..iterations {
        let position = i * write_bytes as u64;
        if position + write_bytes as u64 > reserved_bytes {
            reserved_bytes = position + write_bytes as u64 + RAW_PREALLOC_STEP_BYTES;
            file.pre_allocate(reserved_bytes, true).await.expect("fallocate");
        }
        let mut buffer = file.alloc_dma_buffer(write_bytes);
        buffer.as_bytes_mut().fill(0x5a);
        let written = file.write_at(buffer, position).await.expect("raw write");
        assert_eq!(written, write_bytes);
    }
    let elapsed = start.elapsed();

    file.close().await.expect("close raw file");
    std::fs::remove_file(&path).expect("remove raw file");
    elapsed
}

fn main() {
    let totals = Rc::new(RefCell::new(Totals::default()));
    let mut criterion = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();

    for size_bytes in BATCH_SIZES_BYTES {
        let input = Rc::new(build_batch(size_bytes));
        let mut group = criterion.benchmark_group(format!("append_{}KiB", size_bytes >> 10));
        group.throughput(Throughput::Bytes(input.len() as u64));

        let input_len = input.len();
        let cases: [(&str, u64); 2] = [("partition_log", 1), ("partition_log_group16", GROUP_BATCH_COUNT)];
        for (case, batches_per_wait) in cases {
            let case_name = format!("{case}/{}KiB", size_bytes >> 10);
            group.bench_function(case, |bencher| {
                bencher.iter_custom(|iterations| {
                    let dir = tempfile::tempdir_in(bench_dir()).expect("bench dir");
                    let log_dir = dir.path().join("bench-0");
                    let input = input.clone();
                    let elapsed = runtime::block_on(async move {
                        time_log_appends(&log_dir, input, iterations, batches_per_wait).await
                    });
                    totals.borrow_mut().add(&case_name, iterations * input_len as u64, elapsed);
                    elapsed
                })
            });
        }

        let case_name = format!("raw_dma_write/{}KiB", size_bytes >> 10);
        group.bench_function("raw_dma_write", |bencher| {
            bencher.iter_custom(|iterations| {
                let dir = tempfile::tempdir_in(bench_dir()).expect("bench dir");
                let dir_path = dir.path().to_path_buf();
                let elapsed = runtime::block_on(async move { time_raw_writes(&dir_path, input_len, iterations).await });
                totals.borrow_mut().add(&case_name, iterations * input_len as u64, elapsed);
                elapsed
            })
        });
        group.finish();
        println!("batch of {input_len} bytes for the {}KiB cases", size_bytes >> 10);
    }
    criterion.final_summary();
    print_summary(&totals.borrow());
}

fn print_summary(totals: &Totals) {
    println!();
    println!("summary (MB/s = 10^6 bytes per second, mean over all timed iterations)");
    println!("{:<12} {:>16} {:>22} {:>14} {:>10}", "batch", "log MB/s", "log group16 MB/s", "raw MB/s", "log/raw");
    for size_bytes in BATCH_SIZES_BYTES {
        let label = format!("{}KiB", size_bytes >> 10);
        let log = totals.mb_per_s(&format!("partition_log/{label}"));
        let grouped = totals.mb_per_s(&format!("partition_log_group16/{label}"));
        let raw = totals.mb_per_s(&format!("raw_dma_write/{label}"));
        println!("{label:<12} {log:>16.1} {grouped:>22.1} {raw:>14.1} {:>10.2}", log / raw);
    }
}
