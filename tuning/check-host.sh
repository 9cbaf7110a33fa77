#!/usr/bin/env bash
# Read-only check of a Linux host before running the Weir broker on it.
#
# Prints one line per check on stdout:
#     OK   name: what was found
#     WARN name: what was found; fix: what to change
#     FAIL name: what was found; fix: what to change
# FAIL means the broker will not start or cannot keep its durability promise.
# WARN means it runs, but slower or less predictably, or the check could not
# be made on this host. A summary goes to stderr.
#
# Exit status: 0 when no check failed, 1 when at least one did, 2 on a usage error.
#
# The only thing written is a probe file that tests O_DIRECT, removed at once.
# It goes in the data directory, or in its nearest existing parent when the
# data directory does not exist yet. Limits are those of the shell that runs
# this script, because the systemd unit sets its own (LimitMEMLOCK,
# LimitNOFILE). Run it as the service user (sudo -u weir ...) for the closest
# picture.
#
# WEIR_SYSFS_ROOT and WEIR_PROCFS_ROOT replace /sys and /proc, for tests.

set -uo pipefail

usage() {
    cat <<'EOF'
Usage: check-host.sh [--data-dir DIR] [--shards N]

  --data-dir DIR   directory the broker stores partitions in (default /var/lib/weir/data)
  --shards N       number of shards the broker runs (default: one per online CPU)
  -h, --help       show this help

Prints OK, WARN or FAIL with a fix for each check. Exits 1 when any check fails.
EOF
}

SYS_ROOT=${WEIR_SYSFS_ROOT:-/sys}
PROC_ROOT=${WEIR_PROCFS_ROOT:-/proc}
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SYSCTL_CONF="$SCRIPT_DIR/sysctl.d/90-weir.conf"

# Locked memory glommio needs: it refuses to start an executor below the
# minimum, and each shard registers about 8 MiB of I/O buffers.
MEMLOCK_MIN_PER_SHARD_KIB=512
MEMLOCK_WANTED_PER_SHARD_KIB=8192
NOFILE_WANTED=65536
KERNEL_MIN="5.8"        # glommio 0.9 refuses older kernels
KERNEL_WANTED="5.10"    # oldest LTS kernel with the io_uring features glommio probes for
FREE_SPACE_MIN_KIB=$((1024 * 1024))  # 1 GiB: below this the next segment roll may fail
FREE_SPACE_WARN_PERCENT=10
O_DIRECT_PROBE_BYTES=4096

data_dir=/var/lib/weir/data
shards=""

while [ $# -gt 0 ]; do
    case "$1" in
        --data-dir)
            [ $# -ge 2 ] || { echo "check-host.sh: --data-dir needs a directory" >&2; exit 2; }
            data_dir=$2
            shift 2
            ;;
        --data-dir=*)
            data_dir=${1#--data-dir=}
            shift
            ;;
        --shards)
            [ $# -ge 2 ] || { echo "check-host.sh: --shards needs a number" >&2; exit 2; }
            shards=$2
            shift 2
            ;;
        --shards=*)
            shards=${1#--shards=}
            shift
            ;;
        -h|--help)
            usage
            exit 0
            ;;
        *)
            echo "check-host.sh: unknown argument '$1'" >&2
            usage >&2
            exit 2
            ;;
    esac
done

online_cpu_count() {
    local count
    count=$(getconf _NPROCESSORS_ONLN 2>/dev/null) || count=""
    if [[ ! "$count" =~ ^[0-9]+$ ]]; then
        count=$(nproc 2>/dev/null) || count=1
    fi
    echo "$count"
}

if [ -z "$shards" ]; then
    shards=$(online_cpu_count)
elif [[ ! "$shards" =~ ^[1-9][0-9]{0,5}$ ]]; then
    echo "check-host.sh: --shards must be a whole number from 1 to 999999, got '$shards'" >&2
    exit 2
fi

# --- Reporting --------------------------------------------------------------

ok_count=0
warn_count=0
fail_count=0

ok() {
    ok_count=$((ok_count + 1))
    printf 'OK   %s: %s\n' "$1" "$2"
}

# warn NAME FINDING FIX
warn() {
    warn_count=$((warn_count + 1))
    printf 'WARN %s: %s; fix: %s\n' "$1" "$2" "$3"
}

# fail NAME FINDING FIX
fail() {
    fail_count=$((fail_count + 1))
    printf 'FAIL %s: %s; fix: %s\n' "$1" "$2" "$3"
}

# --- Helpers ----------------------------------------------------------------

# Prints the first line of a file, or nothing (status 1) when it cannot be read.
read_first_line() {
    local line
    [ -r "$1" ] || return 1
    IFS= read -r line 2>/dev/null < "$1" || [ -n "${line:-}" ] || return 1
    printf '%s\n' "$line"
}

# Succeeds when version $1 (like 6.1.0-18-amd64) is at least $2 (like 5.10).
version_at_least() {
    local have_major have_minor want_major want_minor rest
    have_major=${1%%.*}
    rest=${1#*.}
    have_minor=${rest%%[!0-9]*}
    want_major=${2%%.*}
    want_minor=${2#*.}
    [[ "$have_major" =~ ^[0-9]+$ && "$have_minor" =~ ^[0-9]+$ ]] || return 1
    if [ "$have_major" -ne "$want_major" ]; then
        [ "$have_major" -gt "$want_major" ]
        return
    fi
    [ "$have_minor" -ge "$want_minor" ]
}

# Converts a ulimit value in KiB (or "unlimited") to a number; "unlimited" becomes -1.
limit_kib() {
    if [ "$1" = "unlimited" ]; then
        echo -1
    else
        echo "$1"
    fi
}

# Nearest existing directory at or above $1.
existing_ancestor() {
    local dir=$1
    while [ ! -d "$dir" ] && [ "$dir" != "/" ] && [ -n "$dir" ]; do
        dir=$(dirname "$dir")
    done
    [ -n "$dir" ] || dir=/
    echo "$dir"
}

# The scheduler name in brackets, from a line like "none [mq-deadline] kyber".
selected_scheduler() {
    local word
    for word in $1; do
        case "$word" in
            \[*\]) word=${word#[}; echo "${word%]}"; return 0 ;;
        esac
    done
    echo "$1"
}

# --- Checks -----------------------------------------------------------------

check_kernel() {
    local release
    release=$(uname -r 2>/dev/null) || release=""
    if [ -z "$release" ]; then
        warn kernel "uname -r printed nothing" "check that this is a Linux host"
    elif ! version_at_least "$release" "$KERNEL_MIN"; then
        fail kernel "$release is older than $KERNEL_MIN, the oldest kernel glommio 0.9 starts on" \
            "upgrade to a $KERNEL_WANTED or newer LTS kernel"
    elif ! version_at_least "$release" "$KERNEL_WANTED"; then
        warn kernel "$release is older than $KERNEL_WANTED, so some io_uring features glommio probes for are missing" \
            "upgrade to a $KERNEL_WANTED or newer LTS kernel"
    else
        ok kernel "$release (>= $KERNEL_WANTED)"
    fi
}

check_io_uring_disabled() {
    local value group
    if ! value=$(read_first_line "$PROC_ROOT/sys/kernel/io_uring_disabled"); then
        ok io_uring_disabled "no kernel.io_uring_disabled switch (kernels before 6.6 lack it), so io_uring is not disabled by sysctl"
        return
    fi
    case "$value" in
        0)
            ok io_uring_disabled "0 (every process may create io_uring instances)"
            ;;
        1)
            group=$(read_first_line "$PROC_ROOT/sys/kernel/io_uring_group") || group="-1"
            warn io_uring_disabled "1: only processes with CAP_SYS_ADMIN or in group id $group (kernel.io_uring_group) may use io_uring" \
                "add the weir user to that group (and SupplementaryGroups= in weir.service), or set kernel.io_uring_disabled=0"
            ;;
        2)
            fail io_uring_disabled "2: io_uring is disabled for every process, and glommio cannot run without it" \
                "set kernel.io_uring_disabled=0 (or 1 plus kernel.io_uring_group) in /etc/sysctl.d/"
            ;;
        *)
            warn io_uring_disabled "unexpected value '$value'" "expect 0, 1 or 2; read the kernel's sysctl documentation for this version"
            ;;
    esac
}

# Calls io_uring_setup(2) for a 4-entry ring and closes it. A seccomp profile
# (container runtimes often block io_uring) or the sysctl above shows up here.
check_io_uring_setup() {
    local machine result
    if ! command -v python3 >/dev/null 2>&1; then
        warn io_uring_setup "python3 not found, so io_uring_setup(2) was not tried" "install python3 and rerun"
        return
    fi
    machine=$(uname -m 2>/dev/null) || machine=unknown
    case "$machine" in
        x86_64|i686|aarch64|armv7l|riscv64|ppc64le|ppc64|s390x|loongarch64) ;;
        *)
            warn io_uring_setup "the io_uring_setup(2) number for $machine is not known to this script, so it was not tried" \
                "start the broker once and read its log"
            return
            ;;
    esac
    # 425 is io_uring_setup(2) in the shared system call table of the architectures above.
    # struct io_uring_params is 120 bytes, zeroed.
    result=$(python3 - 2>&1 <<'PY'
import ctypes, errno, os
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
params = ctypes.create_string_buffer(120)
fd = libc.syscall(ctypes.c_long(425), ctypes.c_uint(4), params)
if fd < 0:
    code = ctypes.get_errno()
    print(f"{errno.errorcode.get(code, code)}: {os.strerror(code)}")
    raise SystemExit(1)
os.close(fd)
print("ok")
PY
    )
    if [ "$result" = "ok" ]; then
        ok io_uring_setup "io_uring_setup(2) created a ring as user $(id -un 2>/dev/null || id -u)"
        return
    fi
    case "$result" in
        ENOSYS*)
            fail io_uring_setup "io_uring_setup(2) failed with $result: the kernel lacks io_uring or a seccomp filter blocks it" \
                "use a kernel built with CONFIG_IO_URING, or allow io_uring_setup, io_uring_enter and io_uring_register in the container's seccomp profile"
            ;;
        EPERM*)
            fail io_uring_setup "io_uring_setup(2) failed with $result: kernel.io_uring_disabled or a seccomp filter forbids it" \
                "set kernel.io_uring_disabled=0, or allow the io_uring system calls in the seccomp profile"
            ;;
        ENOMEM*)
            fail io_uring_setup "io_uring_setup(2) failed with $result: kernels before 5.12 charge rings to RLIMIT_MEMLOCK" \
                "raise the memlock limit (LimitMEMLOCK=infinity in weir.service, ulimit -l unlimited)"
            ;;
        *)
            fail io_uring_setup "io_uring_setup(2) failed: $result" "read the error above; glommio needs a working io_uring"
            ;;
    esac
}

check_memlock() {
    local soft hard usable_kib min_kib wanted_kib
    soft=$(ulimit -S -l 2>/dev/null) || soft=""
    hard=$(ulimit -H -l 2>/dev/null) || hard=""
    if [ -z "$soft" ] || [ -z "$hard" ]; then
        warn memlock "RLIMIT_MEMLOCK could not be read" "run the check from bash on the broker host"
        return
    fi
    min_kib=$((MEMLOCK_MIN_PER_SHARD_KIB * shards))
    wanted_kib=$((MEMLOCK_WANTED_PER_SHARD_KIB * shards))
    # The broker raises its soft limit up to the hard limit at start, so the hard limit is what counts.
    usable_kib=$(limit_kib "$hard")
    local found="soft $soft KiB, hard $hard KiB with shards=$shards"
    local fix="set LimitMEMLOCK=infinity (as in tuning/weir.service), or add 'weir - memlock unlimited' to /etc/security/limits.d/weir.conf"
    if [ "$usable_kib" -eq -1 ] || [ "$usable_kib" -ge "$wanted_kib" ]; then
        ok memlock "$found (>= $wanted_kib KiB wanted)"
    elif [ "$usable_kib" -ge "$min_kib" ]; then
        warn memlock "$found: enough to start but below the $wanted_kib KiB of registered buffers the shards want" "$fix"
    else
        fail memlock "$found: below the $min_kib KiB glommio needs to start that many executors" "$fix"
    fi
}

check_nofile() {
    local soft hard
    soft=$(ulimit -S -n 2>/dev/null) || soft=""
    hard=$(ulimit -H -n 2>/dev/null) || hard=""
    if [ -z "$soft" ]; then
        warn nofile "RLIMIT_NOFILE could not be read" "run the check from bash on the broker host"
        return
    fi
    local found="soft $soft, hard $hard open files"
    if [ "$soft" = "unlimited" ] || [ "$soft" -ge "$NOFILE_WANTED" ]; then
        ok nofile "$found (>= $NOFILE_WANTED)"
    else
        warn nofile "$found: each client connection and each segment's .log, .index and .timeindex file takes one" \
            "set LimitNOFILE=1048576 (as in tuning/weir.service), or raise nofile in /etc/security/limits.d/"
    fi
}

check_shards() {
    local cpus
    cpus=$(online_cpu_count)
    if [ "$shards" -le "$cpus" ]; then
        ok shards "shards=$shards with $cpus online CPUs"
    else
        warn shards "shards=$shards but only $cpus CPUs are online, so shards would share cores" \
            "set shards to at most $cpus in weir.toml"
    fi
}

# Sets probe_dir: the data directory, or its nearest existing ancestor.
check_data_dir() {
    probe_dir=$data_dir
    if [ ! -e "$data_dir" ]; then
        probe_dir=$(existing_ancestor "$data_dir")
        warn data_dir "$data_dir does not exist yet, so the checks below use $probe_dir" \
            "create it on the broker's data file system (install -d -o weir -g weir $data_dir)"
    elif [ ! -d "$data_dir" ]; then
        fail data_dir "$data_dir exists but is not a directory" "point data.dir in weir.toml at a directory"
        probe_dir=$(existing_ancestor "$(dirname "$data_dir")")
    elif [ ! -w "$data_dir" ]; then
        warn data_dir "$data_dir is not writable by user $(id -un 2>/dev/null || id -u)" \
            "chown it to the service user, or rerun this check as that user"
    else
        ok data_dir "$data_dir is a writable directory"
    fi
}

# Prints the file system type of $1.
filesystem_type() {
    local fstype=""
    if command -v findmnt >/dev/null 2>&1; then
        fstype=$(findmnt -n -o FSTYPE -T "$1" 2>/dev/null | head -n 1) || fstype=""
    fi
    if [ -z "$fstype" ]; then
        # stat reports ext2, ext3 and ext4 alike as "ext2/ext3".
        fstype=$(stat -f -c %T "$1" 2>/dev/null) || fstype=""
    fi
    echo "$fstype"
}

check_filesystem() {
    local fstype
    fstype=$(filesystem_type "$probe_dir")
    case "$fstype" in
        xfs|ext4)
            ok filesystem "$probe_dir is on $fstype"
            ;;
        "")
            warn filesystem "the file system type of $probe_dir could not be read" \
                "check with 'findmnt -T $probe_dir'; XFS or ext4 are expected"
            ;;
        tmpfs|ramfs)
            fail filesystem "$probe_dir is on $fstype: nothing survives a reboot, and glommio opens files there without O_DIRECT" \
                "put data.dir on an XFS or ext4 file system on a local disk"
            ;;
        *)
            warn filesystem "$probe_dir is on $fstype; Weir is tested on XFS and ext4 only" \
                "put data.dir on an XFS or ext4 file system on a local disk"
            ;;
    esac
}

# Opens a probe file with O_DIRECT and writes one aligned block, then removes it.
check_o_direct() {
    local probe result
    if [ ! -w "$probe_dir" ]; then
        warn o_direct "$probe_dir is not writable by user $(id -un 2>/dev/null || id -u), so O_DIRECT was not tried" \
            "rerun as the service user or as root"
        return
    fi
    if ! probe=$(mktemp "$probe_dir/.weir-o-direct-probe.XXXXXX" 2>/dev/null); then
        warn o_direct "could not create a probe file in $probe_dir" "check free space and permissions"
        return
    fi
    if command -v python3 >/dev/null 2>&1; then
        # mmap returns page-aligned memory, which satisfies O_DIRECT's buffer alignment.
        result=$(python3 - "$probe" "$O_DIRECT_PROBE_BYTES" 2>&1 <<'PY'
import mmap, os, sys
path, size = sys.argv[1], int(sys.argv[2])
try:
    fd = os.open(path, os.O_WRONLY | os.O_DIRECT)
except OSError as err:
    print(f"open with O_DIRECT failed: {err.strerror}")
    raise SystemExit(1)
try:
    buf = mmap.mmap(-1, size)
    buf.write(b"\x57" * size)
    written = os.pwrite(fd, buf, 0)
    os.fdatasync(fd)
except OSError as err:
    print(f"aligned write with O_DIRECT failed: {err.strerror}")
    raise SystemExit(1)
finally:
    os.close(fd)
if written != size:
    print(f"short O_DIRECT write: {written} of {size} bytes")
    raise SystemExit(1)
print("ok")
PY
        )
    elif command -v dd >/dev/null 2>&1; then
        if dd if=/dev/zero of="$probe" bs="$O_DIRECT_PROBE_BYTES" count=1 oflag=direct conv=notrunc,fdatasync status=none 2>/dev/null; then
            result=ok
        else
            result="dd oflag=direct failed"
        fi
    else
        result="neither python3 nor dd is installed"
    fi
    rm -f -- "$probe"
    if [ "$result" = "ok" ]; then
        ok o_direct "a $O_DIRECT_PROBE_BYTES-byte aligned O_DIRECT write and fdatasync succeeded in $probe_dir"
    else
        fail o_direct "$result in $probe_dir" "put data.dir on a file system that supports O_DIRECT (XFS or ext4 on a local disk)"
    fi
}

# Prints "MAJOR:MINOR" of the device that contains $1.
device_number() {
    local number=""
    if command -v findmnt >/dev/null 2>&1; then
        number=$(findmnt -n -o MAJ:MIN -T "$1" 2>/dev/null | head -n 1 | tr -d ' ') || number=""
    fi
    if [ -z "$number" ] && command -v python3 >/dev/null 2>&1; then
        number=$(python3 -c 'import os, sys; d = os.stat(sys.argv[1]).st_dev; print(f"{os.major(d)}:{os.minor(d)}")' "$1" 2>/dev/null) || number=""
    fi
    echo "$number"
}

# Sets block_dir to the sysfs directory of the whole disk behind $probe_dir, or "".
find_block_device() {
    local dir
    block_dir=""
    block_number=$(device_number "$probe_dir")
    [ -n "$block_number" ] || return 0
    dir=$(cd "$SYS_ROOT/dev/block/$block_number" 2>/dev/null && pwd -P) || return 0
    # A partition's queue settings live on its parent disk.
    if [ -e "$dir/partition" ]; then
        dir=$(dirname "$dir")
    fi
    block_dir=$dir
}

check_scheduler() {
    local name line selected rotational
    if [ -z "$block_dir" ]; then
        warn io_scheduler "not available on this host (no $SYS_ROOT/dev/block entry for the device ${block_number:-?} under $probe_dir)" \
            "check the scheduler of the data disk by hand: cat /sys/block/DISK/queue/scheduler"
        return
    fi
    name=$(basename "$block_dir")
    if ! line=$(read_first_line "$block_dir/queue/scheduler"); then
        warn io_scheduler "$name has no queue/scheduler file (not available on this host)" \
            "if $name is a device-mapper or md device, check the scheduler of the disks in $block_dir/slaves"
        return
    fi
    selected=$(selected_scheduler "$line")
    rotational=$(read_first_line "$block_dir/queue/rotational") || rotational=0
    if [ "$selected" = "none" ]; then
        ok io_scheduler "$name uses 'none'"
    elif [ "$rotational" = "1" ]; then
        warn io_scheduler "$name is a rotational disk using '$selected'" \
            "use an SSD or NVMe device for data.dir; keep mq-deadline on spinning disks"
    else
        warn io_scheduler "$name uses '$selected'; O_DIRECT writes from io_uring gain nothing from request reordering on flash" \
            "echo none > /sys/block/$name/queue/scheduler (tuning/cpu-irq.sh --apply does this for NVMe disks)"
    fi
}

# glommio 0.9 reads the queue limits of /sys/dev/block/MAJOR:0 (minor forced to
# zero) when it opens a DMA file, and panics when that entry exists without
# them. Without the entry it assumes a memory device with 512-byte blocks.
check_glommio_block_info() {
    local major entry missing="" file
    if [ -z "${block_number:-}" ]; then
        warn glommio_block_info "not available on this host (device number of $probe_dir unknown)" \
            "check that /sys/dev/block/MAJOR:0/queue exists for the data disk"
        return
    fi
    major=${block_number%%:*}
    entry="$SYS_ROOT/dev/block/$major:0"
    if [ ! -e "$entry" ]; then
        warn glommio_block_info "$entry does not exist, so glommio treats the data device as memory with 512-byte blocks" \
            "put data.dir on a local disk that has a /sys/dev/block entry"
        return
    fi
    for file in rotational minimum_io_size optimal_io_size logical_block_size physical_block_size \
        max_sectors_kb max_segment_size write_cache; do
        [ -r "$entry/queue/$file" ] || missing="$missing $file"
    done
    [ -d "$entry/slaves" ] || missing="$missing ../slaves"
    if [ -n "$missing" ]; then
        fail glommio_block_info "$entry lacks queue entries glommio reads:$missing" \
            "put data.dir on a disk whose MAJOR:0 node is a whole disk (glommio reads MAJOR:0, not the partition)"
    else
        ok glommio_block_info "$entry has the queue limits glommio reads ($(basename "$(cd "$entry" && pwd -P)"))"
    fi
}

check_cpu_governor() {
    local file governor others="" performance_count=0 total=0
    for file in "$SYS_ROOT"/devices/system/cpu/cpu[0-9]*/cpufreq/scaling_governor; do
        [ -r "$file" ] || continue
        governor=$(read_first_line "$file") || continue
        total=$((total + 1))
        if [ "$governor" = "performance" ]; then
            performance_count=$((performance_count + 1))
        else
            local cpu=${file%/cpufreq/scaling_governor}
            others="$others ${cpu##*/}=$governor"
        fi
    done
    if [ "$total" -eq 0 ]; then
        warn cpu_governor "not available on this host (no cpufreq scaling_governor; virtual machines usually leave frequency to the hypervisor)" \
            "on bare metal, load the cpufreq driver and run tuning/cpu-irq.sh --apply"
    elif [ "$performance_count" -eq "$total" ]; then
        ok cpu_governor "all $total CPUs use 'performance'"
    else
        warn cpu_governor "not every CPU uses 'performance':$others" \
            "tuning/cpu-irq.sh --apply, or cpupower frequency-set -g performance"
    fi
}

check_transparent_hugepages() {
    local line selected
    if ! line=$(read_first_line "$SYS_ROOT/kernel/mm/transparent_hugepage/enabled"); then
        ok transparent_hugepages "not available on this host (kernel built without THP)"
        return
    fi
    selected=$(selected_scheduler "$line")
    case "$selected" in
        madvise|never)
            ok transparent_hugepages "'$selected'"
            ;;
        *)
            warn transparent_hugepages "'$selected': page faults and khugepaged may stall shards while they compact memory" \
                "echo madvise > /sys/kernel/mm/transparent_hugepage/enabled (or transparent_hugepage=madvise on the kernel command line)"
            ;;
    esac
}

check_swap() {
    local swap_count=0 swappiness
    if [ -r "$PROC_ROOT/swaps" ]; then
        # The first line of /proc/swaps is a header.
        swap_count=$(($(wc -l < "$PROC_ROOT/swaps") - 1))
        [ "$swap_count" -ge 0 ] || swap_count=0
    else
        warn swap "not available on this host ($PROC_ROOT/swaps unreadable)" "check with swapon --show"
        return
    fi
    swappiness=$(read_first_line "$PROC_ROOT/sys/vm/swappiness") || swappiness="?"
    if [ "$swap_count" -eq 0 ]; then
        ok swap "no swap device active"
    elif [[ "$swappiness" =~ ^[0-9]+$ ]] && [ "$swappiness" -le 1 ]; then
        ok swap "$swap_count swap devices active with vm.swappiness=$swappiness"
    else
        warn swap "$swap_count swap devices active with vm.swappiness=$swappiness: a swapped-out shard stalls every partition it owns" \
            "set vm.swappiness=1 (tuning/sysctl.d/90-weir.conf) or disable swap with swapoff -a"
    fi
}

check_clocksource() {
    local source
    if ! source=$(read_first_line "$SYS_ROOT/devices/system/clocksource/clocksource0/current_clocksource"); then
        warn clocksource "not available on this host (no current_clocksource)" "check dmesg for the clocksource in use"
        return
    fi
    case "$source" in
        tsc|kvm-clock|arch_sys_counter|hyperv_clocksource_tsc_page)
            ok clocksource "'$source' (clock_gettime runs in the vDSO without a system call)"
            ;;
        *)
            warn clocksource "'$source': every clock_gettime may become a slow system call or device read" \
                "use tsc where the CPU has an invariant TSC (clocksource=tsc on the kernel command line)"
            ;;
    esac
}

# Succeeds when every number in $1 is at least the matching number in $2.
each_at_least() {
    local -a have want
    local i
    read -r -a have <<< "$1"
    read -r -a want <<< "$2"
    [ "${#have[@]}" -eq "${#want[@]}" ] || return 1
    for i in "${!want[@]}"; do
        [[ "${have[$i]}" =~ ^[0-9]+$ && "${want[$i]}" =~ ^[0-9]+$ ]] || return 1
        [ "${have[$i]}" -ge "${want[$i]}" ] || return 1
    done
}

# Succeeds when every number in $1 is at most the matching number in $2.
each_at_most() {
    each_at_least "$2" "$1"
}

# Whether a running value may differ from the file's in one direction:
# "min" for limits and queue sizes, "max" for swappiness, "exact" otherwise.
sysctl_comparison() {
    case "$1" in
        net.core.somaxconn|net.ipv4.tcp_max_syn_backlog|net.core.netdev_max_backlog|\
        net.core.rmem_max|net.core.wmem_max|net.ipv4.tcp_rmem|net.ipv4.tcp_wmem|\
        vm.max_map_count|fs.file-max|fs.nr_open|fs.aio-max-nr)
            echo min ;;
        vm.swappiness)
            echo max ;;
        *)
            echo exact ;;
    esac
}

check_sysctls() {
    local line key wanted current comparison path checked=0
    if [ ! -r "$SYSCTL_CONF" ]; then
        warn sysctl "$SYSCTL_CONF not found, so sysctl values were not compared" "run the check from a full copy of tuning/"
        return
    fi
    while IFS= read -r line || [ -n "$line" ]; do
        line=${line%%#*}
        [[ "$line" == *=* ]] || continue
        key=${line%%=*}
        wanted=${line#*=}
        key=$(echo "$key" | tr -d '[:space:]')
        key=${key#-}
        wanted=$(echo "$wanted" | tr -s '[:space:]' ' ' | sed 's/^ //; s/ $//')
        [ -n "$key" ] || continue
        checked=$((checked + 1))
        path="$PROC_ROOT/sys/${key//.//}"
        if ! current=$(read_first_line "$path"); then
            warn "sysctl $key" "not available on this host ($path missing)" \
                "none on a kernel without this setting; in a container, set it on the host"
            continue
        fi
        current=$(echo "$current" | tr -s '[:space:]' ' ' | sed 's/^ //; s/ $//')
        comparison=$(sysctl_comparison "$key")
        local fix="sysctl -w $key=\"$wanted\", or install tuning/sysctl.d/90-weir.conf and run sysctl --system"
        if [ "$current" = "$wanted" ]; then
            ok "sysctl $key" "$current"
        elif [ "$comparison" = "min" ] && each_at_least "$current" "$wanted"; then
            ok "sysctl $key" "$current (>= $wanted)"
        elif [ "$comparison" = "max" ] && each_at_most "$current" "$wanted"; then
            ok "sysctl $key" "$current (<= $wanted)"
        else
            local relation="expected"
            [ "$comparison" = "min" ] && relation="expected at least"
            [ "$comparison" = "max" ] && relation="expected at most"
            warn "sysctl $key" "$current, $relation $wanted" "$fix"
        fi
    done < "$SYSCTL_CONF"
    if [ "$checked" -eq 0 ]; then
        warn sysctl "$SYSCTL_CONF contains no settings" "restore it from the Weir source tree"
    fi
}

check_disk_space() {
    local line size_kib avail_kib free_percent
    if ! line=$(df -P -k "$probe_dir" 2>/dev/null | tail -n 1) || [ -z "$line" ]; then
        warn disk_space "df could not read $probe_dir" "check free space with df -h"
        return
    fi
    # df -P columns: file system, size, used, available, capacity, mount point.
    size_kib=$(echo "$line" | awk '{ print $2 }')
    avail_kib=$(echo "$line" | awk '{ print $4 }')
    if [[ ! "$size_kib" =~ ^[0-9]+$ || ! "$avail_kib" =~ ^[0-9]+$ || "$size_kib" -eq 0 ]]; then
        warn disk_space "df printed an unexpected line for $probe_dir: $line" "check free space with df -h"
        return
    fi
    free_percent=$((avail_kib * 100 / size_kib))
    local found="$((avail_kib / 1024)) MiB free of $((size_kib / 1024)) MiB ($free_percent%) under $probe_dir"
    if [ "$avail_kib" -lt "$FREE_SPACE_MIN_KIB" ]; then
        fail disk_space "$found: less than $((FREE_SPACE_MIN_KIB / 1024)) MiB, the next segment roll may fail with ENOSPC" \
            "free space or lower log.retention.bytes / log.retention.hours in weir.toml"
    elif [ "$free_percent" -lt "$FREE_SPACE_WARN_PERCENT" ]; then
        warn disk_space "$found: below $FREE_SPACE_WARN_PERCENT%" \
            "free space or lower log.retention.bytes / log.retention.hours in weir.toml"
    else
        ok disk_space "$found"
    fi
}

# --- Main -------------------------------------------------------------------

probe_dir=$data_dir
block_dir=""
block_number=""

check_kernel
check_io_uring_disabled
check_io_uring_setup
check_memlock
check_nofile
check_shards
check_data_dir
check_filesystem
check_o_direct
find_block_device
check_scheduler
check_glommio_block_info
check_cpu_governor
check_transparent_hugepages
check_swap
check_clocksource
check_sysctls
check_disk_space

echo "check-host.sh: $ok_count OK, $warn_count WARN, $fail_count FAIL" >&2
if [ "$fail_count" -gt 0 ]; then
    exit 1
fi
exit 0
