//! Starts a broker for a run (`--broker-cmd`) and stops it afterwards.
//!
//! The command runs through `sh -c "exec ..."`, so the child's pid is the
//! broker's. `{data_dir}` in the command is replaced by a fresh temporary
//! directory. The broker must print `listening bootstrap=HOST:PORT` on
//! stdout once it accepts connections, as `weir serve` does.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

const START_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
const LISTENING_PREFIX: &str = "listening bootstrap=";

/// A broker process owned by the bench.
pub struct BrokerProcess {
    child: Option<Child>,
    pub bootstrap: String,
    pub command: String,
    _data_dir: tempfile::TempDir,
}

/// Returns the default broker command: the `weir` binary next to
/// `weir-bench` (or on PATH) with `shards` shards on an ephemeral loopback port.
pub fn default_command(shards: usize) -> String {
    let sibling = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("weir")))
        .filter(|path| path.exists());
    let binary = sibling.map_or_else(|| "weir".to_string(), |path| path.display().to_string());
    format!("{binary} serve --listen 127.0.0.1:0 --data-dir {{data_dir}} --shards {shards}")
}

impl BrokerProcess {
    /// Starts `command` and waits for its listening line.
    pub fn start(command: &str, data_parent: Option<&PathBuf>) -> Result<BrokerProcess> {
        let data_dir = match data_parent {
            Some(parent) => tempfile::tempdir_in(parent),
            None => tempfile::tempdir(),
        }
        .context("failed to create the broker's data directory")?;
        let command = command.replace("{data_dir}", &data_dir.path().join("data").display().to_string());
        let log_path = data_dir.path().join("broker.log");
        let log = std::fs::File::create(&log_path).context("failed to create the broker log")?;

        // A process group of its own keeps a terminal's Ctrl-C from reaching
        // the broker, so the bench can still drain and read its offsets.
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(format!("exec {command}"))
            .process_group(0)
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .with_context(|| format!("failed to start broker: {command}"))?;
        let stdout = child.stdout.take().context("broker stdout")?;
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(address) = line.strip_prefix(LISTENING_PREFIX) {
                    let _ = sender.send(address.trim().to_string());
                }
            }
        });

        let mut broker = BrokerProcess {
            child: Some(child),
            bootstrap: String::new(),
            command: command.clone(),
            _data_dir: data_dir,
        };
        match receiver.recv_timeout(START_TIMEOUT) {
            Ok(address) => broker.bootstrap = address,
            Err(_) => {
                broker.stop();
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(20).collect();
                bail!(
                    "broker printed no `{LISTENING_PREFIX}` line within {} s: {command}\nlast log lines:\n{}",
                    START_TIMEOUT.as_secs(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
        }
        Ok(broker)
    }

    /// Sends SIGTERM and waits for the exit; SIGKILL after the time-out.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SAFETY: signalling our own child process by its pid.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = std::time::Instant::now() + STOP_TIMEOUT;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("weir-bench: broker did not exit within {} s of SIGTERM; killing it", STOP_TIMEOUT.as_secs());
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        self.stop();
    }
}
