"""Tests for the host scripts in tuning/.

check-host.sh runs against real temporary data directories, with limits
lowered through `ulimit` and with fake /proc and /sys trees (the scripts read
WEIR_PROCFS_ROOT and WEIR_SYSFS_ROOT in place of /proc and /sys). cpu-irq.sh
runs only as a dry run, on this host and on a fake /sys and /proc tree that
offers a change for every setting it manages. Both runs must leave every file
untouched. --apply is never run here.
"""

import os
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TUNING = REPO / "tuning"
CHECK_HOST = TUNING / "check-host.sh"
CPU_IRQ = TUNING / "cpu-irq.sh"
SYSCTL_CONF = TUNING / "sysctl.d" / "90-weir.conf"
SCRIPT_TIMEOUT_S = 60

CHECK_LINE = re.compile(r"^(?P<status>OK  |WARN|FAIL) (?P<name>[a-z_]+(?: [a-z0-9_.-]+)?): (?P<detail>.+)$")
CHECK_SUMMARY = re.compile(r"^check-host\.sh: (\d+) OK, (\d+) WARN, (\d+) FAIL$")
ACTION_LINE = re.compile(r"^(?P<action>keep|would-set|set|failed|n/a|info) +(?P<what>[^:]+): (?P<detail>.+)$")
SHELL_ERROR = re.compile(r"line \d+:|unbound variable|command not found|syntax error|integer expression expected")

HOST_CHECKS = {
    "kernel",
    "io_uring_disabled",
    "io_uring_setup",
    "memlock",
    "nofile",
    "shards",
    "data_dir",
    "filesystem",
    "o_direct",
    "io_scheduler",
    "glommio_block_info",
    "cpu_governor",
    "transparent_hugepages",
    "swap",
    "clocksource",
    "disk_space",
}


def sysctl_keys():
    keys = []
    for line in SYSCTL_CONF.read_text().splitlines():
        setting = line.split("#", 1)[0]
        if "=" in setting:
            keys.append(setting.split("=", 1)[0].strip())
    return keys


def run_script(script, *args, env=None, limits=""):
    """Run a tuning script through bash, optionally after `ulimit` commands."""
    command = f'{limits}{" && " if limits else ""}exec "$0" "$@"'
    return subprocess.run(
        ["bash", "-c", command, str(script), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=SCRIPT_TIMEOUT_S,
        env={**os.environ, **(env or {})},
    )


def parse_check_lines(result):
    """Map each check name to (status, detail); fail on any malformed line."""
    checks = {}
    for line in result.stdout.splitlines():
        match = CHECK_LINE.match(line)
        assert match, f"line without OK/WARN/FAIL status: {line!r}"
        status = match["status"].strip()
        if status != "OK":
            assert "; fix: " in match["detail"], f"{status} line without a fix: {line!r}"
        assert match["name"] not in checks, f"check reported twice: {match['name']}"
        checks[match["name"]] = (status, match["detail"])
    return checks


def assert_check_host_consistent(result):
    """Check the stderr summary and the exit status against the lines printed."""
    assert not SHELL_ERROR.search(result.stderr), result.stderr
    checks = parse_check_lines(result)
    statuses = [status for status, _ in checks.values()]
    summary = CHECK_SUMMARY.match(result.stderr.strip())
    assert summary, f"unexpected stderr: {result.stderr!r}"
    assert [int(n) for n in summary.groups()] == [statuses.count(s) for s in ("OK", "WARN", "FAIL")]
    expected_status = 1 if "FAIL" in statuses else 0
    assert result.returncode == expected_status, result.stdout
    return checks


def write_files(root, files):
    for relative, content in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)


def snapshot_tree(root):
    """Contents of every regular file under root, by path."""
    return {
        path: path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file() and not path.is_symlink()
    }


# --- check-host.sh ---------------------------------------------------------


def test_check_host_reports_every_check(tmp_path):
    result = run_script(CHECK_HOST, "--data-dir", tmp_path, "--shards", 1)

    checks = assert_check_host_consistent(result)
    expected = HOST_CHECKS | {f"sysctl {key}" for key in sysctl_keys()}
    assert set(checks) == expected


def test_check_host_o_direct_probe_cleans_up(tmp_path):
    result = run_script(CHECK_HOST, "--data-dir", tmp_path, "--shards", 1)

    checks = assert_check_host_consistent(result)
    assert list(tmp_path.iterdir()) == []
    filesystem_status, filesystem_detail = checks["filesystem"]
    if filesystem_detail.endswith(("on ext4", "on xfs")):
        assert filesystem_status == "OK"
        assert checks["o_direct"][0] == "OK", checks["o_direct"]


def test_check_host_missing_data_dir_uses_parent(tmp_path):
    data_dir = tmp_path / "not" / "yet"

    result = run_script(CHECK_HOST, "--data-dir", data_dir, "--shards", 1)

    checks = assert_check_host_consistent(result)
    status, detail = checks["data_dir"]
    assert status == "WARN"
    assert f"checks below use {tmp_path}" in detail
    assert not (tmp_path / "not").exists()


def test_check_host_fails_below_memlock_minimum(tmp_path):
    # 256 KiB is below the 512 KiB glommio needs for one executor.
    result = run_script(CHECK_HOST, "--data-dir", tmp_path, "--shards", 1, limits="ulimit -l 256")

    checks = assert_check_host_consistent(result)
    assert checks["memlock"][0] == "FAIL"
    assert result.returncode == 1


def test_check_host_warns_below_memlock_wanted(tmp_path):
    # 1024 KiB starts two executors (2 x 512 KiB) but is below 2 x 8 MiB.
    result = run_script(CHECK_HOST, "--data-dir", tmp_path, "--shards", 2, limits="ulimit -l 1024")

    checks = assert_check_host_consistent(result)
    assert checks["memlock"][0] == "WARN"


def test_check_host_warns_on_low_nofile(tmp_path):
    result = run_script(CHECK_HOST, "--data-dir", tmp_path, "--shards", 1, limits="ulimit -n 1024")

    checks = assert_check_host_consistent(result)
    status, detail = checks["nofile"]
    assert status == "WARN"
    assert "soft 1024" in detail


def test_check_host_fails_when_io_uring_disabled(tmp_path):
    proc = tmp_path / "proc"
    write_files(proc, {"sys/kernel/io_uring_disabled": "2\n"})
    data_dir = tmp_path / "data"
    data_dir.mkdir()

    result = run_script(
        CHECK_HOST, "--data-dir", data_dir, "--shards", 1, env={"WEIR_PROCFS_ROOT": str(proc)}
    )

    checks = assert_check_host_consistent(result)
    assert checks["io_uring_disabled"][0] == "FAIL"
    assert result.returncode == 1


def test_check_host_compares_sysctls_by_direction(tmp_path):
    proc = tmp_path / "proc"
    write_files(
        proc,
        {
            # Above the file's minimum, element by element: OK.
            "sys/net/core/somaxconn": "65535\n",
            "sys/net/ipv4/tcp_rmem": "8192\t262144\t33554432\n",
            # One element below the file's minimum: WARN.
            "sys/net/ipv4/tcp_wmem": "4096\t16384\t4194304\n",
            # Below the file's maximum: OK.
            "sys/vm/swappiness": "0\n",
            # Must match exactly: WARN.
            "sys/net/ipv4/tcp_slow_start_after_idle": "1\n",
            "sys/net/core/busy_poll": "0\n",
        },
    )
    data_dir = tmp_path / "data"
    data_dir.mkdir()

    result = run_script(
        CHECK_HOST, "--data-dir", data_dir, "--shards", 1, env={"WEIR_PROCFS_ROOT": str(proc)}
    )

    checks = assert_check_host_consistent(result)
    assert checks["sysctl net.core.somaxconn"][0] == "OK"
    assert checks["sysctl net.ipv4.tcp_rmem"][0] == "OK"
    assert checks["sysctl net.ipv4.tcp_wmem"][0] == "WARN"
    assert checks["sysctl vm.swappiness"][0] == "OK"
    assert checks["sysctl net.ipv4.tcp_slow_start_after_idle"][0] == "WARN"
    assert checks["sysctl net.core.busy_poll"][0] == "OK"
    status, detail = checks["sysctl vm.max_map_count"]
    assert status == "WARN"
    assert "not available on this host" in detail


def test_check_host_without_sys_and_proc(tmp_path):
    empty_sys = tmp_path / "sys"
    empty_proc = tmp_path / "proc"
    empty_sys.mkdir()
    empty_proc.mkdir()
    data_dir = tmp_path / "data"
    data_dir.mkdir()

    result = run_script(
        CHECK_HOST,
        "--data-dir",
        data_dir,
        "--shards",
        1,
        env={"WEIR_SYSFS_ROOT": str(empty_sys), "WEIR_PROCFS_ROOT": str(empty_proc)},
    )

    checks = assert_check_host_consistent(result)
    for name in ("io_scheduler", "cpu_governor", "clocksource", "swap"):
        status, detail = checks[name]
        assert status == "WARN", (name, detail)
        assert "not available on this host" in detail, (name, detail)


@pytest.mark.parametrize(
    "arguments",
    [["--shards", "abc"], ["--shards", "0"], ["--shards"], ["--data-dir"], ["--verbose"]],
)
def test_check_host_rejects_bad_arguments(arguments):
    result = run_script(CHECK_HOST, *arguments)

    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith("check-host.sh: ")


# --- cpu-irq.sh --------------------------------------------------------------


def parse_actions(result):
    """Map each reported setting to (action, detail); fail on any malformed line."""
    actions = {}
    for line in result.stdout.splitlines():
        if not line or line.startswith("== ") or line.startswith("cpu-irq.sh: "):
            continue
        match = ACTION_LINE.match(line)
        assert match, f"line without an action: {line!r}"
        actions[match["what"]] = (match["action"], match["detail"])
    return actions


def host_tuning_files():
    """Every host file cpu-irq.sh may write, with its current contents."""
    patterns = [
        "/sys/devices/system/cpu/cpu*/cpufreq/scaling_governor",
        "/sys/block/*/queue/scheduler",
        "/sys/block/*/queue/nr_requests",
        "/sys/block/*/queue/rq_affinity",
        "/sys/block/*/queue/read_ahead_kb",
        "/proc/irq/*/smp_affinity_list",
    ]
    contents = {}
    for pattern in patterns:
        for path in Path("/").glob(pattern.lstrip("/")):
            try:
                contents[path] = path.read_bytes()
            except OSError:
                continue
    return contents


# NOTE: a running irqbalance rewrites /proc/irq/*/smp_affinity_list on its
# own schedule and can fail this test on hosts that run it.
def test_cpu_irq_dry_run_leaves_host_unchanged():
    devices = sorted(
        path.name
        for path in Path("/sys/block").glob("*")
        if (path / "queue" / "scheduler").exists() and not path.name.startswith(("loop", "ram", "zram"))
    )
    arguments = [argument for device in devices for argument in ("--device", device)]
    if (os.cpu_count() or 1) > 1:
        # Leave a CPU free so that the interrupt pinning path runs too.
        arguments += ["--shards", "1"]
    before = host_tuning_files()

    result = run_script(CPU_IRQ, *arguments)

    assert result.returncode == 0, result.stderr
    assert not SHELL_ERROR.search(result.stderr), result.stderr
    assert host_tuning_files() == before
    actions = parse_actions(result)
    assert {action for action, _ in actions.values()} <= {"keep", "would-set", "n/a", "info"}
    assert result.stdout.splitlines()[0].startswith("cpu-irq.sh: dry run, nothing is changed")
    assert "dry run:" in result.stdout.splitlines()[-1]


def build_fake_host(root):
    """A /sys and /proc tree with four CPUs, a virtio NIC and an NVMe disk."""
    sys_root = root / "sys"
    proc_root = root / "proc"
    nic_pci = "devices/pci0000:00/0000:00:04.0"
    nvme_pci = "devices/pci0000:00/0000:00:05.0"
    files = {"devices/system/cpu/online": "0-3\n"}
    for cpu in range(4):
        cpufreq = f"devices/system/cpu/cpu{cpu}/cpufreq"
        files[f"{cpufreq}/scaling_governor"] = "performance\n" if cpu == 3 else "powersave\n"
        files[f"{cpufreq}/scaling_available_governors"] = "powersave\n" if cpu == 2 else "performance powersave\n"
    for irq in (40, 41):
        files[f"{nic_pci}/msi_irqs/{irq}"] = "msix\n"
    for irq in (50, 51):
        files[f"{nvme_pci}/msi_irqs/{irq}"] = "msix\n"
    files[f"{nic_pci}/virtio3/net/eth9/mtu"] = "1500\n"
    namespace = f"{nvme_pci}/nvme/nvme0/nvme0n1"
    files.update(
        {
            f"{namespace}/queue/scheduler": "[mq-deadline] kyber none\n",
            f"{namespace}/queue/nr_requests": "64\n",
            f"{namespace}/queue/rq_affinity": "1\n",
            f"{namespace}/queue/read_ahead_kb": "4096\n",
            f"{namespace}/queue/io_poll": "0\n",
            f"{namespace}/mq/0/nr_tags": "1023\n",
            "module/nvme/parameters/poll_queues": "0\n",
            "kernel/debug/irq/irqs/51": "handler:  handle_edge_irq\nflags:    0x80\n             IRQD_AFFINITY_MANAGED\n",
        }
    )
    write_files(sys_root, files)
    (sys_root / "class" / "net").mkdir(parents=True)
    (sys_root / "block").mkdir()
    os.symlink(f"../../{nic_pci}/virtio3/net/eth9", sys_root / "class" / "net" / "eth9")
    os.symlink("../../../virtio3", sys_root / nic_pci / "virtio3" / "net" / "eth9" / "device")
    os.symlink(f"../{namespace}", sys_root / "block" / "nvme0n1")
    os.symlink("../../nvme0", sys_root / namespace / "device")

    proc_files = {
        "interrupts": (
            "           CPU0       CPU1       CPU2       CPU3\n"
            " 40:          5          0          0          0  PCI-MSIX-0000:00:04.0   1-edge      virtio3-input.0\n"
            " 41:          7          0          0          0  PCI-MSIX-0000:00:04.0   2-edge      virtio3-output.0\n"
            " 50:          1          0          0          0  PCI-MSIX-0000:00:05.0   0-edge      nvme0q0\n"
            " 51:          9          0          0          0  PCI-MSIX-0000:00:05.0   1-edge      nvme0q1\n"
        )
    }
    for irq in (40, 41, 50, 51):
        proc_files[f"irq/{irq}/smp_affinity_list"] = "0-3\n"
    write_files(proc_root, proc_files)
    return {"WEIR_SYSFS_ROOT": str(sys_root), "WEIR_PROCFS_ROOT": str(proc_root)}


def test_cpu_irq_dry_run_on_fake_host(tmp_path):
    env = build_fake_host(tmp_path)
    before = snapshot_tree(tmp_path)

    result = run_script(CPU_IRQ, "--shards", 2, env=env)

    assert result.returncode == 0, result.stderr
    assert not SHELL_ERROR.search(result.stderr), result.stderr
    assert snapshot_tree(tmp_path) == before
    actions = parse_actions(result)
    assert actions["cpu0 scaling_governor"] == ("would-set", "powersave -> performance")
    assert actions["cpu1 scaling_governor"] == ("would-set", "powersave -> performance")
    assert actions["cpu2 scaling_governor"][0] == "n/a"
    assert actions["cpu3 scaling_governor"] == ("keep", "performance")
    assert actions["irq 40 (nic eth9 virtio3-input.0) smp_affinity_list"] == ("would-set", "0-3 -> 2,3")
    assert actions["irq 41 (nic eth9 virtio3-output.0) smp_affinity_list"] == ("would-set", "0-3 -> 2,3")
    assert actions["irq 50 (disk nvme0n1 nvme0q0) smp_affinity_list"] == ("would-set", "0-3 -> 2,3")
    managed_action, managed_detail = actions["irq 51 (disk nvme0n1 nvme0q1) smp_affinity_list"]
    assert managed_action == "keep"
    assert "kernel-managed" in managed_detail
    assert actions["nvme0n1 scheduler"] == ("would-set", "mq-deadline -> none")
    assert actions["nvme0n1 nr_requests"][0] == "would-set"
    assert actions["nvme0n1 nr_requests"][1].startswith("64 -> 1023")
    assert actions["nvme0n1 rq_affinity"] == ("would-set", "1 -> 2")
    assert actions["nvme0n1 read_ahead_kb"] == ("would-set", "4096 -> 128")
    assert actions["nvme0n1 io_poll"][0] == "info"
    would_set_count = sum(1 for action, _ in actions.values() if action == "would-set")
    summary = result.stdout.splitlines()[-1]
    irqbalance_pending = actions["irqbalance"][0] == "would-set"
    assert summary.startswith(f"cpu-irq.sh: dry run: {would_set_count} settings would change")
    assert would_set_count == 9 + irqbalance_pending


def test_cpu_irq_spreads_irqs_onto_shards(tmp_path):
    env = build_fake_host(tmp_path)
    before = snapshot_tree(tmp_path)

    result = run_script(CPU_IRQ, "--shard-cpus", "0-1", "--irqs-onto-shards", env=env)

    assert result.returncode == 0, result.stderr
    assert snapshot_tree(tmp_path) == before
    actions = parse_actions(result)
    assert actions["irq 40 (nic eth9 virtio3-input.0) smp_affinity_list"] == ("would-set", "0-3 -> 0")
    assert actions["irq 41 (nic eth9 virtio3-output.0) smp_affinity_list"] == ("would-set", "0-3 -> 1")
    assert actions["irq 50 (disk nvme0n1 nvme0q0) smp_affinity_list"] == ("would-set", "0-3 -> 0")


def test_cpu_irq_no_free_cpu_skips_irqs(tmp_path):
    env = build_fake_host(tmp_path)

    result = run_script(CPU_IRQ, env=env)

    assert result.returncode == 0, result.stderr
    actions = parse_actions(result)
    action, detail = actions["interrupt pinning"]
    assert action == "n/a"
    assert "every online CPU runs a shard" in detail
    assert not any(what.startswith("irq ") for what in actions)


@pytest.mark.parametrize(
    "arguments",
    [
        ["--shards", "0"],
        ["--shards", "9999"],
        ["--shard-cpus", "3-1"],
        ["--shard-cpus", "0", "--shards", "1"],
        ["--read-ahead-kb", "-1"],
        ["--device"],
        ["--bogus"],
    ],
)
def test_cpu_irq_rejects_bad_arguments(arguments):
    result = run_script(CPU_IRQ, *arguments)

    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith("cpu-irq.sh: ")
