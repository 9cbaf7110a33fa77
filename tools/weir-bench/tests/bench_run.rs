//! A short weir-bench run against a real broker: the counts and bytes the
//! report gives must equal what the broker stored.
//!
//! The broker is the `weir` binary of the same target directory, which
//! `cargo test --workspace` builds before running tests.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

fn weir_binary() -> PathBuf {
    // target/<profile>/deps/bench_run-<hash> → target/<profile>/weir
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).expect("target profile directory");
    let weir = profile_dir.join("weir");
    assert!(
        weir.exists(),
        "{} is missing; build it first with `cargo build -p weir` (or run `cargo test --workspace`)",
        weir.display()
    );
    weir
}

fn run_bench(extra_args: &[&str]) -> Value {
    let dir = tempfile::tempdir().expect("temp dir");
    let json_path = dir.path().join("report.json");
    let svg_path = dir.path().join("latency.svg");
    let broker_cmd =
        format!("{} serve --listen 127.0.0.1:0 --data-dir {{data_dir}} --shards 2", weir_binary().display());
    let output = Command::new(env!("CARGO_BIN_EXE_weir-bench"))
        .args(["run", "--broker-cmd", &broker_cmd, "--threads", "1", "--json"])
        .arg(&json_path)
        .arg("--svg")
        .arg(&svg_path)
        .args(extra_args)
        .output()
        .expect("run weir-bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "weir-bench failed\nstdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("latency (ms)"), "summary table missing:\n{stdout}");

    let svg = std::fs::read_to_string(&svg_path).expect("svg written");
    assert!(svg.contains("<polyline"), "the plot has no latency line");
    let text = std::fs::read_to_string(&json_path).expect("json written");
    serde_json::from_str(&text).expect("valid json")
}

fn number(report: &Value, path: &[&str]) -> u64 {
    let mut value = report;
    for key in path {
        value = &value[key];
    }
    value.as_u64().unwrap_or_else(|| panic!("{} is not a number: {value}", path.join(".")))
}

#[test]
fn short_run_counts_match_broker() {
    let message_size = 512u64;
    let report = run_bench(&[
        "--partitions",
        "4",
        "--producers",
        "2",
        "--consumers",
        "1",
        "--message-size",
        &message_size.to_string(),
        "--rate",
        "5000",
        "--warmup-secs",
        "1",
        "--duration-secs",
        "3",
        "--acks",
        "all",
    ]);

    let acknowledged = number(&report, &["all_phases", "acknowledged_messages"]);
    let stored = number(&report, &["all_phases", "broker_stored_messages"]);
    let consumed = number(&report, &["all_phases", "consumed_messages"]);
    assert!(acknowledged > 5000, "a 4 s run at 5000 msg/s acknowledged only {acknowledged}");
    assert_eq!(stored, acknowledged, "the broker stored exactly the acknowledged messages");
    assert_eq!(consumed, acknowledged, "the consumer read every acknowledged message once");
    assert_eq!(number(&report, &["all_phases", "acknowledged_bytes"]), acknowledged * message_size);
    assert_eq!(number(&report, &["all_phases", "consumed_bytes"]), consumed * message_size);

    let measured = number(&report, &["produced", "messages"]);
    assert!(measured > 0, "no message acknowledged after warm-up");
    assert!(measured <= acknowledged, "{measured} measured > {acknowledged} in all phases");
    assert_eq!(number(&report, &["produce_latency", "count"]), measured, "one latency sample per acknowledged message");
    assert!(report["errors"].as_object().expect("errors map").is_empty(), "errors: {}", report["errors"]);
    assert!(number(&report, &["wire_sent_bytes"]) > acknowledged * message_size, "wire bytes include every payload");
}

#[test]
fn backlog_run_consumes_from_the_start() {
    let report = run_bench(&[
        "--partitions",
        "2",
        "--producers",
        "1",
        "--consumers",
        "2",
        "--message-size",
        "100",
        "--backlog-messages",
        "20000",
        "--rate",
        "2000",
        "--warmup-secs",
        "0",
        "--duration-secs",
        "2",
        "--compression",
        "lz4",
    ]);
    let acknowledged = number(&report, &["all_phases", "acknowledged_messages"]);
    assert!(acknowledged >= 20000, "backlog included: {acknowledged}");
    // Most records read are backlog records, produced before the consumers
    // joined, so their end-to-end latency is their age when read.
    let end_to_end_p50 = report["end_to_end_latency"]["p50_ms"].as_f64().expect("p50");
    assert!(end_to_end_p50 > 5.0, "backlog records look fresh: p50 {end_to_end_p50} ms");
    assert_eq!(number(&report, &["all_phases", "broker_stored_messages"]), acknowledged);
    assert_eq!(number(&report, &["all_phases", "consumed_messages"]), acknowledged);
}

#[test]
fn bad_workload_names_the_field() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "partitions = 0\n").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_weir-bench"))
        .args(["run", "--bootstrap", "127.0.0.1:1", "--workload"])
        .arg(&path)
        .output()
        .expect("run weir-bench");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("partitions must be at least 1"), "{stderr}");
}

#[test]
fn compare_prints_ratios() {
    let report = run_bench(&[
        "--partitions",
        "2",
        "--consumer-assignment",
        "direct",
        "--rate",
        "1000",
        "--warmup-secs",
        "0",
        "--duration-secs",
        "1",
    ]);
    assert_eq!(
        number(&report, &["all_phases", "consumed_messages"]),
        number(&report, &["all_phases", "acknowledged_messages"]),
        "a directly assigned consumer reads everything"
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let a = dir.path().join("a.json");
    let mut faster = report.clone();
    let rate = faster["produced"]["messages_per_sec"].as_f64().unwrap();
    faster["produced"]["messages_per_sec"] = serde_json::json!(rate * 2.0);
    let b = dir.path().join("b.json");
    std::fs::write(&a, serde_json::to_string(&report).unwrap()).unwrap();
    std::fs::write(&b, serde_json::to_string(&faster).unwrap()).unwrap();

    let output =
        Command::new(env!("CARGO_BIN_EXE_weir-bench")).arg("compare").arg(&a).arg(&b).output().expect("compare");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().find(|line| line.starts_with("produced msg/s")).expect("throughput row");
    assert!(line.trim_end().ends_with("2.000"), "{line}");
}
