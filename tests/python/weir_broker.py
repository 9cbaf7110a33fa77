"""Start, stop and crash the real weir binary for the integration tests.

Each `Broker` owns one weir process on loopback with ephemeral ports and a
data directory under pytest's tmp dir. The broker's stderr goes to a log
file beside the data directory.
"""

import atexit
import os
import pathlib
import re
import signal
import subprocess
import threading
import time

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
WEIR_BIN = pathlib.Path(os.environ.get("WEIR_BIN", REPO_ROOT / "target" / "release" / "weir"))

STARTUP_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0
LOG_TAIL_LINES = 60
MAX_NOTABLE_LINES = 20

READY_LINE = re.compile(r"^listening bootstrap=(\S+):(\d+)$")

# Every Broker created in this pytest process, so that failure reports can
# show their logs and an interrupted run still ends their processes.
_BROKERS = []


class BrokerError(Exception):
    pass


class Broker:
    """One weir process: `serve --listen 127.0.0.1:0 --shards N` on a fixed data dir."""

    def __init__(self, base_dir, shards=2, settings=None):
        self.base_dir = pathlib.Path(base_dir)
        self.data_dir = self.base_dir / "data"
        self.shards = shards
        self.settings = dict(settings or {})
        self.process = None
        self.bootstrap = None
        self.log_paths = []
        self.stdout_lines = []
        self._stdout_thread = None
        # Set when a test ends the process on purpose (stop or kill9), so the
        # teardown can tell an expected exit from a crash.
        self._stopped_on_purpose = True
        _BROKERS.append(self)

    # -- process control ----------------------------------------------------

    def command(self):
        command = [
            str(WEIR_BIN),
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            str(self.data_dir),
            "--shards",
            str(self.shards),
        ]
        for key, value in self.settings.items():
            command += ["--set", f"{key}={value}"]
        return command

    def start(self):
        """Start the broker and wait for its `listening bootstrap=` line."""
        if self.running():
            raise BrokerError(f"broker pid {self.process.pid} is already running")
        if not WEIR_BIN.is_file():
            raise BrokerError(f"{WEIR_BIN} not found; run `cargo build --release` first")

        self.data_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.base_dir / f"weir-{len(self.log_paths) + 1}.log"
        self.log_paths.append(log_path)
        env = dict(os.environ)
        env.setdefault("RUST_LOG", "info")
        env.setdefault("NO_COLOR", "1")

        with open(log_path, "wb") as log_file:
            self.process = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log_file,
                env=env,
            )
        self._stopped_on_purpose = False
        self.bootstrap = None

        ready = threading.Event()
        found = []
        self._stdout_thread = threading.Thread(
            target=self._read_stdout, args=(self.process, ready, found), daemon=True
        )
        self._stdout_thread.start()

        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not ready.wait(0.05):
            if self.process.poll() is not None:
                code = self.process.returncode
                self._stopped_on_purpose = True
                raise BrokerError(
                    f"weir exited with code {code} before listening\n{self.describe()}"
                )
            if time.monotonic() > deadline:
                self.cleanup()
                raise BrokerError(
                    f"weir printed no `listening bootstrap=` line within "
                    f"{STARTUP_TIMEOUT_S}s\n{self.describe()}"
                )
        self.bootstrap = found[0]
        return self

    def _read_stdout(self, process, ready, found):
        # Drains stdout for the whole life of the process, so the pipe can
        # never fill and block the broker.
        for raw in process.stdout:
            line = raw.decode(errors="replace").rstrip("\r\n")
            self.stdout_lines.append(line)
            match = READY_LINE.match(line)
            if match and not ready.is_set():
                found.append(f"{match.group(1)}:{match.group(2)}")
                ready.set()
        process.stdout.close()

    def running(self):
        return self.process is not None and self.process.poll() is None

    def stop(self):
        """Send SIGTERM, wait for the exit and return the exit code."""
        if not self.running():
            raise BrokerError(f"stop: broker is not running\n{self.describe()}")
        self._stopped_on_purpose = True
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(STOP_TIMEOUT_S)
            raise BrokerError(
                f"weir pid {self.process.pid} did not exit within {STOP_TIMEOUT_S}s of "
                f"SIGTERM and was killed\n{self.describe()}"
            )
        self._join_stdout()
        return code

    def kill9(self):
        """Kill the broker with SIGKILL, as a crash or power loss would."""
        if not self.running():
            raise BrokerError(f"kill9: broker is not running\n{self.describe()}")
        self._stopped_on_purpose = True
        self.process.kill()
        self.process.wait(STOP_TIMEOUT_S)
        self._join_stdout()

    def restart(self):
        """Stop the broker cleanly if it runs, then start it on the same data dir.

        The new process listens on fresh ephemeral ports, so clients must use
        the new `bootstrap`.
        """
        if self.running():
            code = self.stop()
            if code != 0:
                raise BrokerError(f"weir exited with code {code} on SIGTERM\n{self.describe()}")
        return self.start()

    def cleanup(self):
        """Kill this broker's own process if it still runs (by PID)."""
        if self.process is not None and self.process.poll() is None:
            self._stopped_on_purpose = True
            self.process.kill()
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                pass
        self._join_stdout()

    def _join_stdout(self):
        if self._stdout_thread is not None:
            self._stdout_thread.join(5)
            self._stdout_thread = None

    # -- diagnostics --------------------------------------------------------

    def log_tail(self, lines=LOG_TAIL_LINES):
        """Return the panics and errors of every log, then each log's last lines.

        Backtraces can push a panic message out of the tail, so panic and
        ERROR lines are listed first.
        """
        parts = []
        for path in self.log_paths:
            try:
                text = path.read_text(errors="replace").splitlines()
            except OSError as error:
                text = [f"<cannot read log: {error}>"]
            notable = []
            for number, line in enumerate(text):
                if "panicked at" in line:
                    notable.extend(text[number : number + 2])
                elif " ERROR " in line:
                    notable.append(line)
            if notable:
                parts.append(f"--- {path}: panics and errors (first {MAX_NOTABLE_LINES}) ---")
                parts.extend(notable[:MAX_NOTABLE_LINES])
            parts.append(f"--- {path}: last {lines} lines ---")
            parts.extend(text[-lines:])
        return "\n".join(parts)

    def describe(self):
        command = " ".join(self.command())
        stdout = "\n".join(self.stdout_lines[-10:])
        return f"command: {command}\nstdout:\n{stdout}\n{self.log_tail()}"

    def check_exit(self):
        """Stop a broker left running and raise if it crashed or exited badly."""
        if self.process is None:
            return
        if not self._stopped_on_purpose:
            if not self.running():
                code = self.process.returncode
                self._stopped_on_purpose = True
                raise BrokerError(
                    f"weir exited on its own with code {code} during the test\n{self.describe()}"
                )
            code = self.stop()
            if code != 0:
                raise BrokerError(f"weir exited with code {code} on SIGTERM\n{self.describe()}")


@atexit.register
def _kill_leftover_brokers():
    for broker in _BROKERS:
        broker.cleanup()


class BrokerFactory:
    """Starts brokers for one fixture scope and checks their exits on teardown."""

    def __init__(self, tmp_path_factory, name):
        self.tmp_path_factory = tmp_path_factory
        self.name = name
        self.brokers = []

    def __call__(self, shards=2, settings=None):
        base_dir = self.tmp_path_factory.mktemp(self.name)
        broker = Broker(base_dir, shards=shards, settings=settings)
        self.brokers.append(broker)
        return broker.start()

    def finish(self):
        errors = []
        for broker in self.brokers:
            try:
                broker.check_exit()
            except BrokerError as error:
                errors.append(str(error))
            finally:
                broker.cleanup()
        if errors:
            raise BrokerError("\n\n".join(errors))
