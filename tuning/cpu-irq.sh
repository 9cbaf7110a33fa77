#!/usr/bin/env bash
# CPU, interrupt and block queue settings for a host that runs Weir's shards.
#
# Dry run by default: prints each setting with its current value and the value
# it would write, and changes nothing. With --apply (as root) it writes them:
#   - CPU frequency governor "performance" on every CPU that has cpufreq;
#   - irqbalance stopped and disabled, because it rewrites IRQ affinities every
#     10 seconds and would undo the pinning below;
#   - NIC and NVMe interrupts moved off the shard CPUs (default) or spread over
#     them (--irqs-onto-shards);
#   - NVMe queues: scheduler "none", nr_requests at the hardware tag depth,
#     rq_affinity 2 and a small read_ahead_kb (see block_queue_settings below).
# None of this survives a reboot: README.md shows how to make it persistent.
#
# Output: one line per setting, "ACTION  what: detail", where ACTION is
#   keep       already at the wanted value
#   would-set  dry run: would change "current -> wanted"
#   set        --apply changed it
#   failed     --apply could not change it (the reason follows)
#   n/a        not available on this host, nothing to do
#   info       a fact worth knowing that this script does not change
#
# Exit status: 0 after a dry run or when every write succeeded, 1 when a write
# failed, 2 on a usage error.
#
# WEIR_SYSFS_ROOT and WEIR_PROCFS_ROOT replace /sys and /proc, for tests.

set -uo pipefail

usage() {
    cat <<'EOF'
Usage: cpu-irq.sh [--apply] [--shards N | --shard-cpus LIST] [--irqs-onto-shards]
                  [--nic IFACE]... [--device DISK]... [--read-ahead-kb KIB]

  --apply             write the settings (needs root); without it nothing changes
  --shards N          the broker runs N shards on the first N online CPUs
  --shard-cpus LIST   CPUs the shards run on, in kernel list format (0-7,16-23)
                      default: every online CPU, the broker's default of one shard per CPU
  --irqs-onto-shards  spread NIC and disk interrupts over the shard CPUs instead of
                      moving them to the other CPUs
  --nic IFACE         network interface whose interrupts to pin (repeatable)
                      default: every interface backed by a PCI or virtio device
  --device DISK       block device to tune and whose interrupts to pin, as named in
                      /sys/block (repeatable); default: every NVMe namespace
  --read-ahead-kb KIB read_ahead_kb for those devices (default 128)
  -h, --help          show this help
EOF
}

SYS_ROOT=${WEIR_SYSFS_ROOT:-/sys}
PROC_ROOT=${WEIR_PROCFS_ROOT:-/proc}

apply=0
shard_count=""
shard_cpu_list=""
irqs_onto_shards=0
read_ahead_kb=128
nics=()
devices=()

usage_error() {
    echo "cpu-irq.sh: $1" >&2
    usage >&2
    exit 2
}

while [ $# -gt 0 ]; do
    case "$1" in
        --apply) apply=1; shift ;;
        --irqs-onto-shards) irqs_onto_shards=1; shift ;;
        --shards)
            [ $# -ge 2 ] || usage_error "--shards needs a number"
            shard_count=$2; shift 2 ;;
        --shard-cpus)
            [ $# -ge 2 ] || usage_error "--shard-cpus needs a CPU list"
            shard_cpu_list=$2; shift 2 ;;
        --nic)
            [ $# -ge 2 ] || usage_error "--nic needs an interface name"
            nics+=("$2"); shift 2 ;;
        --device)
            [ $# -ge 2 ] || usage_error "--device needs a block device name"
            devices+=("$2"); shift 2 ;;
        --read-ahead-kb)
            [ $# -ge 2 ] || usage_error "--read-ahead-kb needs a number"
            read_ahead_kb=$2; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) usage_error "unknown argument '$1'" ;;
    esac
done

if [ -n "$shard_count" ] && [ -n "$shard_cpu_list" ]; then
    usage_error "use either --shards or --shard-cpus, not both"
fi
if [ -n "$shard_count" ] && [[ ! "$shard_count" =~ ^[1-9][0-9]{0,4}$ ]]; then
    usage_error "--shards must be a whole number from 1 to 99999, got '$shard_count'"
fi
if [[ ! "$read_ahead_kb" =~ ^[0-9]{1,7}$ ]]; then
    usage_error "--read-ahead-kb must be a whole number of KiB, got '$read_ahead_kb'"
fi
if [ "$apply" -eq 1 ] && [ "$(id -u)" -ne 0 ]; then
    echo "cpu-irq.sh: --apply writes to /sys and /proc and needs root; run it with sudo, or drop --apply for a dry run" >&2
    exit 1
fi

# --- Reporting ----------------------------------------------------------------

pending_count=0
changed_count=0
failed_count=0

# report ACTION WHAT DETAIL
report() {
    printf '%-9s  %s: %s\n' "$1" "$2" "$3"
}

section() {
    printf '\n== %s\n' "$1"
}

# Prints the first line of a file, or nothing (status 1) when it cannot be read.
read_first_line() {
    local line
    [ -r "$1" ] || return 1
    IFS= read -r line 2>/dev/null < "$1" || [ -n "${line:-}" ] || return 1
    printf '%s\n' "$line"
}

# change WHAT FILE CURRENT WANTED [NOTE]
# Reports the setting and, with --apply, writes WANTED to FILE when CURRENT
# differs. NOTE, when given, follows the values in the output.
change() {
    local what=$1 file=$2 current=$3 wanted=$4 note=${5:+ ($5)} error
    if [ "$current" = "$wanted" ]; then
        report keep "$what" "$current"
        return
    fi
    if [ "$apply" -eq 0 ]; then
        pending_count=$((pending_count + 1))
        report would-set "$what" "$current -> $wanted$note"
        return
    fi
    if error=$( { printf '%s\n' "$wanted" > "$file"; } 2>&1 ); then
        changed_count=$((changed_count + 1))
        report set "$what" "$current -> $wanted$note"
    elif [[ "$file" == */smp_affinity_list && "$error" == *"Input/output error"* ]]; then
        # The kernel rejects affinity writes to interrupts it manages itself.
        report keep "$what" "$current (kernel-managed, so the kernel rejected the change)"
    else
        failed_count=$((failed_count + 1))
        report failed "$what" "writing '$wanted' to $file: ${error##*: }"
    fi
}

# --- CPU lists ------------------------------------------------------------------

# Expands a kernel CPU list ("0-3,8") into space-separated numbers. Fails on bad input.
expand_cpu_list() {
    local list=$1 part first last cpu out=""
    [ -n "$list" ] || return 1
    local IFS=,
    for part in $list; do
        part=${part//[[:space:]]/}
        if [[ "$part" =~ ^([0-9]+)-([0-9]+)$ ]]; then
            first=${BASH_REMATCH[1]}
            last=${BASH_REMATCH[2]}
            [ "$first" -le "$last" ] || return 1
            for ((cpu = first; cpu <= last; cpu++)); do
                out="$out $cpu"
            done
        elif [[ "$part" =~ ^[0-9]+$ ]]; then
            out="$out $part"
        elif [ -n "$part" ]; then
            return 1
        fi
    done
    echo "${out# }"
}

# Joins space-separated numbers with commas, the form smp_affinity_list accepts.
join_cpu_list() {
    local joined
    joined=$(echo "$*" | tr -s ' ' ',')
    echo "${joined#,}"
}

online_cpus() {
    local list count
    if list=$(read_first_line "$SYS_ROOT/devices/system/cpu/online") && expand_cpu_list "$list"; then
        return
    fi
    count=$(nproc 2>/dev/null) || count=1
    seq -s ' ' 0 $((count - 1))
}

# Sets shard_cpus and other_cpus (space-separated) from the options.
choose_cpus() {
    local -a online
    read -r -a online <<< "$(online_cpus)"
    if [ -n "$shard_cpu_list" ]; then
        shard_cpus=$(expand_cpu_list "$shard_cpu_list") || usage_error "--shard-cpus '$shard_cpu_list' is not a CPU list like 0-7,16-23"
        local shard_cpu
        for shard_cpu in $shard_cpus; do
            case " ${online[*]} " in
                *" $shard_cpu "*) ;;
                *) usage_error "CPU $shard_cpu in --shard-cpus is not online (online: ${online[*]})" ;;
            esac
        done
    elif [ -n "$shard_count" ]; then
        if [ "$shard_count" -gt "${#online[@]}" ]; then
            usage_error "--shards $shard_count is more than the ${#online[@]} online CPUs"
        fi
        shard_cpus="${online[*]:0:$shard_count}"
    else
        shard_cpus="${online[*]}"
    fi
    local cpu
    other_cpus=""
    for cpu in "${online[@]}"; do
        case " $shard_cpus " in
            *" $cpu "*) ;;
            *) other_cpus="$other_cpus $cpu" ;;
        esac
    done
    other_cpus=${other_cpus# }
}

# --- CPU frequency ----------------------------------------------------------------

cpu_governors() {
    section "CPU frequency governor (all CPUs)"
    local file cpu current available found=0
    for file in "$SYS_ROOT"/devices/system/cpu/cpu[0-9]*/cpufreq/scaling_governor; do
        [ -e "$file" ] || continue
        found=1
        cpu=${file%/cpufreq/scaling_governor}
        cpu=${cpu##*/}
        current=$(read_first_line "$file") || current="?"
        available=$(read_first_line "${file%/*}/scaling_available_governors") || available=""
        case " $available " in
            *" performance "*) change "$cpu scaling_governor" "$file" "$current" performance ;;
            *) report n/a "$cpu scaling_governor" "'performance' is not among the available governors ($available)" ;;
        esac
    done
    if [ "$found" -eq 0 ]; then
        report n/a "scaling_governor" "not available on this host (no cpufreq driver; virtual machines usually leave frequency to the hypervisor)"
    fi
}

# --- irqbalance ---------------------------------------------------------------------

irqbalance_state() {
    section "irqbalance"
    local under_systemd=0
    if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet irqbalance 2>/dev/null; then
        under_systemd=1
    elif ! pgrep -x irqbalance >/dev/null 2>&1; then
        report keep irqbalance "not running"
        return
    fi
    if [ "$under_systemd" -eq 0 ]; then
        local detail="running outside systemd; stop it with the init system that started it, or it undoes the IRQ pinning"
        if [ "$apply" -eq 1 ]; then
            failed_count=$((failed_count + 1))
            report failed irqbalance "$detail"
        else
            pending_count=$((pending_count + 1))
            report would-set irqbalance "$detail"
        fi
        return
    fi
    if [ "$apply" -eq 0 ]; then
        pending_count=$((pending_count + 1))
        report would-set irqbalance "active -> stopped and disabled (systemctl disable --now irqbalance)"
    elif systemctl disable --now irqbalance >/dev/null 2>&1; then
        changed_count=$((changed_count + 1))
        report set irqbalance "active -> stopped and disabled"
    else
        failed_count=$((failed_count + 1))
        report failed irqbalance "systemctl disable --now irqbalance failed"
    fi
}

# --- Interrupts ---------------------------------------------------------------------

# Prints the IRQ numbers of the device at sysfs path $1, looking at it and up
# to three parents: a virtio or NVMe function sits below the PCI device that
# owns the MSI-X vectors.
device_irqs() {
    local dir irq
    dir=$(cd "$1" 2>/dev/null && pwd -P) || return 0
    for _ in 0 1 2 3; do
        if [ -d "$dir/msi_irqs" ]; then
            for irq in "$dir"/msi_irqs/*; do
                [ -e "$irq" ] && echo "${irq##*/}"
            done
            return 0
        fi
        if irq=$(read_first_line "$dir/irq") && [[ "$irq" =~ ^[1-9][0-9]*$ ]]; then
            echo "$irq"
            return 0
        fi
        [ "$dir" != "/" ] && [ "$dir" != "$sys_root_real" ] && [ "$dir" != "$sys_root_real/devices" ] || return 0
        dir=$(dirname "$dir")
    done
}

default_nics() {
    local path
    for path in "$SYS_ROOT"/class/net/*; do
        [ -e "$path/device" ] && echo "${path##*/}"
    done
}

default_devices() {
    local path
    for path in "$SYS_ROOT"/block/nvme*; do
        [ -e "$path" ] && echo "${path##*/}"
    done
}

# Action name from /proc/interrupts (its last column), or "?".
irq_name() {
    local name
    name=$(awk -v irq="$1:" '$1 == irq { print $NF; exit }' "$PROC_ROOT/interrupts" 2>/dev/null) || name=""
    echo "${name:-?}"
}

# Succeeds when the kernel manages IRQ $1's affinity (debugfs shows it; the
# kernel then rejects writes). Per-queue NVMe interrupts are usually managed.
irq_is_managed() {
    grep -q AFFINITY_MANAGED "$SYS_ROOT/kernel/debug/irq/irqs/$1" 2>/dev/null
}

# pin_irq IRQ OWNER TARGET_CPUS
pin_irq() {
    local irq=$1 owner=$2 target=$3 file current current_set target_set what
    file="$PROC_ROOT/irq/$irq/smp_affinity_list"
    what="irq $irq ($owner $(irq_name "$irq")) smp_affinity_list"
    if ! current=$(read_first_line "$file"); then
        report n/a "$what" "not available on this host ($file missing)"
        return
    fi
    if irq_is_managed "$irq"; then
        report keep "$what" "$current (kernel-managed: the NVMe driver binds each queue's interrupt to the CPUs that submit on it)"
        return
    fi
    # Compare as sets, because the kernel prints "2-3" where we would write "2,3".
    current_set=$(expand_cpu_list "$current") || current_set=$current
    target_set=$(expand_cpu_list "$target") || target_set=$target
    if [ "$current_set" = "$target_set" ]; then
        report keep "$what" "$current"
    else
        change "$what" "$file" "$current" "$target"
    fi
}

# pin_device_irqs OWNER SYSFS_PATH
pin_device_irqs() {
    local owner=$1 path=$2 irq target
    local -a irqs shard_array
    read -r -a shard_array <<< "$shard_cpus"
    mapfile -t irqs < <(device_irqs "$path" | sort -n -u)
    if [ "${#irqs[@]}" -eq 0 ]; then
        report n/a "$owner interrupts" "not available on this host (no msi_irqs or irq entry under $path)"
        return
    fi
    for irq in "${irqs[@]}"; do
        if [ "$irqs_onto_shards" -eq 1 ]; then
            # The k-th interrupt pinned in this run goes to shard CPU k mod n, so
            # each shard core takes an even share across all devices.
            target=${shard_array[$((spread_index % ${#shard_array[@]}))]}
            spread_index=$((spread_index + 1))
        else
            target=$(join_cpu_list "$other_cpus")
        fi
        pin_irq "$irq" "$owner" "$target"
    done
}

interrupts() {
    if [ "$irqs_onto_shards" -eq 1 ]; then
        section "Interrupts (spread over shard CPUs $(join_cpu_list "$shard_cpus"))"
    else
        section "Interrupts (moved off shard CPUs $(join_cpu_list "$shard_cpus") onto ${other_cpus:-no other CPU})"
        if [ -z "$other_cpus" ]; then
            report n/a "interrupt pinning" "every online CPU runs a shard, so there is no CPU to move interrupts to; pass --shards N to leave CPUs free, or --irqs-onto-shards"
            return
        fi
    fi
    local nic device
    for nic in "${nics[@]}"; do
        if [ ! -e "$SYS_ROOT/class/net/$nic" ]; then
            report n/a "nic $nic" "no interface named $nic on this host"
            continue
        fi
        pin_device_irqs "nic $nic" "$SYS_ROOT/class/net/$nic/device"
    done
    [ "${#nics[@]}" -gt 0 ] || report n/a "nic interrupts" "no network interface backed by a device on this host"
    for device in "${devices[@]}"; do
        if [ ! -e "$SYS_ROOT/block/$device" ]; then
            report n/a "disk $device" "no block device named $device on this host"
            continue
        fi
        pin_device_irqs "disk $device" "$SYS_ROOT/block/$device/device"
    done
    [ "${#devices[@]}" -gt 0 ] || report n/a "disk interrupts" "no NVMe namespace on this host (name others with --device)"
}

# --- Block queues -------------------------------------------------------------------

# Settings for the disks that hold data.dir. Weir reads and writes segments with
# O_DIRECT through io_uring:
#   scheduler none     flash gains nothing from reordering, and a scheduler adds a lock and latency
#   nr_requests        as deep as the hardware tag set, so queued O_DIRECT requests are not throttled
#   rq_affinity 2      complete each request on the CPU that submitted it, which is the shard's core
#   read_ahead_kb      O_DIRECT never uses readahead; only buffered readers of the disk (backups,
#                      tools) do, and a multi-MiB value set by some udev rules makes them evict page cache
block_queue_settings() {
    local device=$1 queue current available tags poll
    queue="$SYS_ROOT/block/$device/queue"
    if [ ! -d "$queue" ]; then
        report n/a "$device queue" "not available on this host ($queue missing)"
        return
    fi

    if current=$(read_first_line "$queue/scheduler"); then
        available=${current//[\[\]]/}
        local selected=$current
        [[ "$current" =~ \[([^]]+)\] ]] && selected=${BASH_REMATCH[1]}
        case " $available " in
            *" none "*) change "$device scheduler" "$queue/scheduler" "$selected" none ;;
            *) report n/a "$device scheduler" "'none' is not offered ($current)" ;;
        esac
    else
        report n/a "$device scheduler" "not available on this host"
    fi

    if tags=$(read_first_line "$SYS_ROOT/block/$device/mq/0/nr_tags") && [[ "$tags" =~ ^[0-9]+$ ]]; then
        current=$(read_first_line "$queue/nr_requests") || current="?"
        change "$device nr_requests" "$queue/nr_requests" "$current" "$tags" \
            "the hardware tag depth, the most the queue holds without a scheduler"
    else
        report n/a "$device nr_requests" "not available on this host (no mq/0/nr_tags to size it from)"
    fi

    if current=$(read_first_line "$queue/rq_affinity"); then
        change "$device rq_affinity" "$queue/rq_affinity" "$current" 2
    else
        report n/a "$device rq_affinity" "not available on this host"
    fi

    if current=$(read_first_line "$queue/read_ahead_kb"); then
        change "$device read_ahead_kb" "$queue/read_ahead_kb" "$current" "$read_ahead_kb"
    else
        report n/a "$device read_ahead_kb" "not available on this host"
    fi

    # glommio submits O_DIRECT reads and writes to a polled ring when the device
    # accepts polled I/O; NVMe does only with poll queues (the nvme.poll_queues module
    # parameter), which needs a driver reload or reboot, so this is only reported.
    if poll=$(read_first_line "$queue/io_poll"); then
        report info "$device io_poll" "$poll (1: polled completions available; NVMe needs nvme.poll_queues=N on the kernel command line)"
    fi
}

block_queues() {
    section "Block queues"
    local device
    for device in "${devices[@]}"; do
        block_queue_settings "$device"
    done
    [ "${#devices[@]}" -gt 0 ] || report n/a "block queues" "no NVMe namespace on this host (name others with --device)"
    local poll_queues
    if poll_queues=$(read_first_line "$SYS_ROOT/module/nvme/parameters/poll_queues"); then
        report info "nvme poll_queues" "$poll_queues"
    fi
}

# --- Main -----------------------------------------------------------------------------

sys_root_real=$(cd "$SYS_ROOT" 2>/dev/null && pwd -P) || sys_root_real=$SYS_ROOT
shard_cpus=""
other_cpus=""
spread_index=0
choose_cpus

if [ "${#nics[@]}" -eq 0 ]; then
    mapfile -t nics < <(default_nics)
fi
if [ "${#devices[@]}" -eq 0 ]; then
    mapfile -t devices < <(default_devices)
fi

if [ "$apply" -eq 1 ]; then
    echo "cpu-irq.sh: applying settings (shard CPUs $(join_cpu_list "$shard_cpus"))"
else
    echo "cpu-irq.sh: dry run, nothing is changed (shard CPUs $(join_cpu_list "$shard_cpus"))"
fi

cpu_governors
irqbalance_state
interrupts
block_queues

echo
if [ "$apply" -eq 1 ]; then
    echo "cpu-irq.sh: $changed_count settings changed, $failed_count failed"
    [ "$failed_count" -eq 0 ] || exit 1
else
    echo "cpu-irq.sh: dry run: $pending_count settings would change; rerun as root with --apply to change them"
fi
exit 0
