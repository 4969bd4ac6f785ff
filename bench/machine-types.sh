#!/usr/bin/env bash
# Which QEMU machine type boots the tiny guest fastest with everything the VM runtime
# attaches: the DAX root on virtio-pmem (virtio-blk where pmem cannot work), the job folder
# through virtiofs (guest RAM a shared memfd), virtio-net on a tap (in a network namespace of
# its own, as a job's), the
# virtio-serial control port, QMP and the serial console; TCG with a sized translation
# buffer (and q35 with other buffer sizes). Each variant boots once per round, RUNS rounds
# (default 3); the table shows the wall time from spawning QEMU to "vmhpc-init: ready" on
# the console (each round and the median), QEMU's CPU time (user + system; steadier than
# wall time on a shared machine), RSS and PSS at that moment, and what a verbose boot
# showed: the root and virtiofs devices bound in the guest, and whether system_powerdown
# ends the guest.
#
# The VMs are started by the library itself (src/vm/qemu.c through a small driver compiled
# here against the build's libvmhpc.a), so the command line measured is the one vmhpc uses.
#
# usage: bench/machine-types.sh [BUILD_DIR]      (default: build)
#   env: RUNS=3  TB_MB=64  MEM_MB=256  TB_SWEEP="16 256 1024"  VIRTIOFSD=/usr/lib/qemu/virtiofsd
#        KERNEL=... INITRD=... ROOT=...  use these parts instead of building tiny-mpi (+ the
#        virtio_mmio and virtio_console modules) into a temporary store
# Not a timed test: run it by hand; docs/vm.md records what it printed.
set -euo pipefail

SRC=$(cd "$(dirname "$0")/.." && pwd)
BUILD=$(cd "${1:-$SRC/build}" && pwd)
RUNS=${RUNS:-3}
TB_MB=${TB_MB:-64}
MEM_MB=${MEM_MB:-256}
VIRTIOFSD=${VIRTIOFSD:-/usr/lib/qemu/virtiofsd}
QEMU=${VMHPC_QEMU:-qemu-system-x86_64}

WORK=$(mktemp -d /tmp/vmhpc-bench-mt.XXXXXX)
VFS_PID=
cleanup() {
	if [ -n "$VFS_PID" ]; then
		kill "$VFS_PID" 2>/dev/null || true
		wait "$VFS_PID" 2>/dev/null || true
	fi
	rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- the driver: one boot, measured ----
cat >"$WORK/vmboot.c" <<'EOF'
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "vm/qemu.h"
#include "vm/qmp.h"

static int64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* CPU time QEMU has used so far (user + system, ms): unlike wall time, it hardly depends on
 * what else the machine runs. */
static int64_t cpu_ms(pid_t pid)
{
	char path[64], buf[1024], *p;
	unsigned long long ut = 0, st = 0;
	FILE *f;
	size_t n;

	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	f = fopen(path, "re");
	if (!f)
		return -1;
	n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = '\0';
	p = strrchr(buf, ')');
	if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
		return -1;
	return (int64_t)((ut + st) * 1000 / (unsigned long long)sysconf(_SC_CLK_TCK));
}

/* Reads what the console has; returns 1 at the ready line, -1 at EOF. */
static int drain(int fd, FILE *out, char *win, size_t *len, int wait_ms)
{
	struct pollfd pfd = { .fd = fd, .events = POLLIN };
	ssize_t n;

	if (poll(&pfd, 1, wait_ms) <= 0)
		return 0;
	if (*len > 2048) {
		memmove(win, win + *len - 64, 64);
		*len = 64;
	}
	n = read(fd, win + *len, 4096 - *len);
	if (n <= 0)
		return -1;
	if (out)
		fwrite(win + *len, 1, (size_t)n, out);
	*len += (size_t)n;
	return memmem(win, *len, "vmhpc-init: ready", 17) ? 1 : 0;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "machine", 1, NULL, 'm' }, { "firmware", 1, NULL, 'f' },
		{ "root-kind", 1, NULL, 'k' }, { "kernel", 1, NULL, 'K' },
		{ "initrd", 1, NULL, 'I' }, { "root", 1, NULL, 'R' },
		{ "virtiofs", 1, NULL, 'v' }, { "tap", 1, NULL, 'n' },
		{ "control", 1, NULL, 'c' }, { "cmdline", 1, NULL, 'a' },
		{ "mem", 1, NULL, 'M' }, { "tb", 1, NULL, 't' },
		{ "console-out", 1, NULL, 'o' }, { "powerdown", 0, NULL, 'p' },
		{ "print-argv", 0, NULL, 'P' }, { "root-size", 1, NULL, 'S' }, { 0 },
	};
	struct qemu_vm_config c = {
		.name = "bench", .accel = ACCEL_TCG, .mem_mb = 256, .root_kind = QEMU_ROOT_PMEM,
		.net = QEMU_NET_NONE, .mac = "52:54:00:be:0c:01", .console_pipe = true,
	};
	const char *console_out = NULL;
	int powerdown = 0, print_argv = 0, opt, r, status = -1;
	char win[4097];
	size_t len = 0;
	struct qemu_vm *vm = NULL;
	struct qmp_client *qmp = NULL;
	int64_t t0, ready_ms = -1, down_ms = -1, cpu = -1;
	uint64_t rss = 0, pss = 0;
	FILE *out = NULL;

	while ((opt = getopt_long(argc, argv, "", opts, NULL)) >= 0) {
		switch (opt) {
		case 'm': c.machine = optarg; break;
		case 'f': c.firmware = optarg; break;
		case 'k': c.root_kind = strcmp(optarg, "blk") == 0 ? QEMU_ROOT_BLK : QEMU_ROOT_PMEM; break;
		case 'K': c.kernel = optarg; break;
		case 'I': c.initrd = optarg; break;
		case 'R': c.root_image = optarg; break;
		case 'v': c.virtiofs_socket = optarg; break;
		case 'n': c.net = QEMU_NET_TAP; c.net_tap = optarg; break;
		case 'c': c.control_socket = optarg; break;
		case 'a': c.cmdline = optarg; break;
		case 'M': c.mem_mb = (unsigned)atoi(optarg); break;
		case 't': c.tcg_tb_mb = (unsigned)atoi(optarg); break;
		case 'o': console_out = optarg; break;
		case 'p': powerdown = 1; break;
		case 'P': print_argv = 1; break;
		case 'S': c.root_size_bytes = strtoull(optarg, NULL, 10); break;
		default: return 2;
		}
	}
	if (print_argv) {
		char **av = NULL, *error = NULL;

		if (qemu_build_argv(&c, &av, &error) < 0) {
			fprintf(stderr, "vmboot: %s\n", error ? error : "cannot build argv");
			return 1;
		}
		/* one option and its value per line, values with blanks quoted */
		for (char **a = av; *a; a++) {
			const char *q = strchr(*a, ' ') || !**a ? "'" : "";

			if (a != av && (*a)[0] == '-')
				printf(" \\\n  ");
			else if (a != av)
				printf(" ");
			printf("%s%s%s", q, *a, q);
		}
		printf("\n");
		qemu_argv_free(av);
		return 0;
	}
	if (console_out && !(out = fopen(console_out, "we")))
		return 1;
	t0 = now_ms();
	r = qemu_vm_start(&c, &vm);
	if (r < 0) {
		fprintf(stderr, "vmboot: starting QEMU: %s\n", strerror(-r));
		return 1;
	}
	if (qmp_client_new(qemu_vm_take_qmp_fd(vm), &qmp) < 0)
		return 1;
	for (;;) {
		r = drain(qemu_vm_console_fd(vm), out, win, &len, 200);
		if (r > 0) {
			ready_ms = now_ms() - t0;
			break;
		}
		if (r < 0 || now_ms() - t0 > 120000)
			break;
	}
	if (ready_ms >= 0) {
		cpu = cpu_ms(qemu_vm_pid(vm));
		qemu_vm_host_memory(qemu_vm_pid(vm), &rss, &pss);
		if (qmp_command(qmp, "query-status", NULL, NULL, 10000) < 0)
			fprintf(stderr, "vmboot: QMP query-status failed\n");
	}
	if (ready_ms >= 0 && powerdown) {
		int64_t t1 = now_ms();

		if (qmp_command(qmp, "system_powerdown", NULL, NULL, 10000) == 0)
			while (now_ms() - t1 < 5000) {
				if (qemu_vm_wait(vm, 0, &status) == 0) {
					down_ms = now_ms() - t1;
					break;
				}
				drain(qemu_vm_console_fd(vm), out, win, &len, 50);
			}
	}
	if (qemu_vm_wait(vm, 0, &status) == -ETIMEDOUT) {
		qmp_command(qmp, "quit", NULL, NULL, 10000);
		if (qemu_vm_wait(vm, 10000, &status) < 0)
			qemu_vm_kill(vm);
	}
	qmp_client_free(qmp);
	qemu_vm_free(vm);
	if (out)
		fclose(out);
	printf("ready_ms=%" PRId64 " cpu_ms=%" PRId64 " rss_kb=%" PRIu64 " pss_kb=%" PRIu64
	       " powerdown_ms=%" PRId64 "\n",
	       ready_ms, cpu, rss, pss, down_ms);
	return ready_ms >= 0 ? 0 : 1;
}
EOF
ninja -C "$BUILD" libvmhpc.a >/dev/null
# shellcheck disable=SC2046
cc -std=gnu17 -O2 -D_GNU_SOURCE -I"$SRC/src" -o "$WORK/vmboot" "$WORK/vmboot.c" \
	"$BUILD/libvmhpc.a" $(pkg-config --libs jansson libcrypto libzstd libarchive)

# ---- the guest ----
# tiny-mpi plus the modules microvm (virtio_mmio) and the control port (virtio_console)
# need, so that every variant's guest binds every device it is given.
if [ -z "${KERNEL:-}" ]; then
	export VMHPC_STORE="$WORK/store"
	add=""
	for m in virtio_mmio virtio_console; do
		grep -q "^modules = .*\b$m\b" "$SRC/examples/tiny-mpi.ini" || add="$add $m"
	done
	sed -e 's/^name = .*/name = mt-bench/' -e "/^modules = /s/\$/$add/" \
		"$SRC/examples/tiny-mpi.ini" >"$WORK/mt-bench.ini"
	"$BUILD/vmhpc" image build --level 1 "$WORK/mt-bench.ini" >/dev/null
	"$BUILD/vmhpc" image cat mt-bench kernel -o "$WORK/kernel"
	"$BUILD/vmhpc" image cat mt-bench initramfs -o "$WORK/initramfs"
	"$BUILD/vmhpc" image cat mt-bench root -o "$WORK/root.img"
	KERNEL=$WORK/kernel INITRD=$WORK/initramfs ROOT=$WORK/root.img
fi
mkdir -p "$WORK/share"
CMDLINE="console=ttyS0 quiet panic=-1 swiotlb=noforce"

start_virtiofsd() {
	rm -f "$WORK/fs.sock"
	"$VIRTIOFSD" --socket-path="$WORK/fs.sock" -o source="$WORK/share" -o cache=auto \
		-o sandbox=chroot >"$WORK/virtiofsd.log" 2>&1 &
	VFS_PID=$!
	for _ in $(seq 100); do
		[ -S "$WORK/fs.sock" ] && return 0
		sleep 0.05
	done
	echo "virtiofsd did not start:" >&2
	cat "$WORK/virtiofsd.log" >&2
	exit 1
}

stop_virtiofsd() {
	kill "$VFS_PID" 2>/dev/null || true
	wait "$VFS_PID" 2>/dev/null || true
	VFS_PID=
}

# microvm has no HPET and no ACPI PM timer: under TCG (where the guest's TSC is the host's,
# read at emulation speed) its calibration against the PIT fails often and the guest hangs.
# Telling the kernel the TSC frequency avoids the calibration.
TSC_KHZ=$(awk -F: '/^cpu MHz/ { printf "%d", $2 * 1000; exit }' /proc/cpuinfo)

# name | -machine | firmware | root kind | extra kernel arguments | tb-size MiB (empty: TB_MB)
VARIANTS=(
	"q35|q35||pmem||"
	"q35+qboot|q35|/usr/share/qemu/qboot.rom|pmem||"
	"pc|pc||pmem||"
	"pc+qboot|pc|/usr/share/qemu/qboot.rom|pmem||"
	"microvm|microvm||blk|tsc_early_khz=$TSC_KHZ|"
	"microvm,pcie=on|microvm,pcie=on,x-option-roms=off||pmem|tsc_early_khz=$TSC_KHZ|"
)
# The translation buffer: the kept machine type with other tb-sizes.
for tb in ${TB_SWEEP:-16 256 1024}; do
	VARIANTS+=("q35 tb-size=$tb|q35||pmem||$tb")
done

boot() { # machine firmware kind console-out cmdline [extra...]
	local machine=$1 firmware=$2 kind=$3 console=$4 cmdline=$5
	shift 5
	start_virtiofsd
	local args=(--machine "$machine" --root-kind "$kind" --kernel "$KERNEL" --initrd "$INITRD"
		--root "$ROOT" --virtiofs "$WORK/fs.sock" --tap tap0
		--control "$WORK/ctl.sock" --cmdline "$cmdline" --mem "$MEM_MB" --tb "$TB_MB"
		--console-out "$console")
	[ -n "$firmware" ] && args+=(--firmware "$firmware")
	local r=0
	# A network namespace of its own with one tap, as a job's VM has (net/netns.h).
	unshare --net sh -c 'ip tuntap add dev tap0 mode tap && ip link set tap0 up && exec "$@"' \
		sh "$WORK/vmboot" "${args[@]}" "$@" || r=$?
	stop_virtiofsd
	return $r
}

median() { printf '%s\n' "$@" | grep -E '^[0-9]+$' | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
field() { sed -n "s/.*$1=\\(-\\?[0-9]*\\).*/\\1/p" <<<"$2"; }

check_guest() { # kind console-log: what the guest bound
	local kind=$1 log=$2 seen
	if [ "$kind" = pmem ]; then
		if grep -q "nd_pmem.*\(probe of .* failed\|could not reserve\)" "$log"; then
			seen="pmem FAILED"
		elif grep -q "nd_pmem namespace" "$log"; then
			seen="pmem"
		else
			seen="no pmem"
		fi
	else
		grep -q "virtio_blk.*\[vda\]" "$log" && seen="vda" || seen="no vda"
	fi
	grep -q "virtiofs virtio" "$log" && seen="$seen+fs" || seen="$seen, no fs"
	echo "$seen"
}

echo "machine types: $(uname -n), $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs ($(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)), $($QEMU --version | head -1)"
echo "guest: $(basename "$KERNEL") + initramfs, root $(stat -c %s "$ROOT") bytes; TCG, ${MEM_MB} MiB RAM, tb-size ${TB_MB} MiB unless named; $RUNS rounds"
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"

# One verbose, untimed boot per machine variant: does the guest bind the root device and
# the virtiofs device? Does an ACPI power-button press (system_powerdown) end the guest?
declare -A SEEN POWERDOWN TIMES CPUS RSS PSS
OK=()
for v in "${VARIANTS[@]}"; do
	IFS='|' read -r name machine firmware kind extra tb <<<"$v"
	if [ -n "$tb" ]; then
		OK+=("$v")
		SEEN[$name]="-" POWERDOWN[$name]="-"
		continue
	fi
	if out=$(boot "$machine" "$firmware" "$kind" "$WORK/verbose.log" \
		"console=ttyS0 loglevel=7 panic=-1 swiotlb=noforce $extra" --powerdown 2>"$WORK/err.log"); then
		SEEN[$name]=$(check_guest "$kind" "$WORK/verbose.log")
		d=$(field powerdown_ms "$out")
		if [ "$d" -ge 0 ] 2>/dev/null; then POWERDOWN[$name]="off in ${d} ms"; else POWERDOWN[$name]="ignored"; fi
		OK+=("$v")
	else
		echo "$name: does not boot: $(grep -m1 qemu "$WORK/verbose.log" || tail -1 "$WORK/err.log")"
	fi
done

# Timed boots in rounds, each round every variant once: on a shared machine the load
# drifts, and interleaving spreads the drift over all variants alike.
for round in $(seq "$RUNS"); do
	for v in "${OK[@]}"; do
		IFS='|' read -r name machine firmware kind extra tb <<<"$v"
		if out=$(TB_MB=${tb:-$TB_MB} boot "$machine" "$firmware" "$kind" "$WORK/console.log" \
			"$CMDLINE $extra" 2>>"$WORK/err.log"); then
			TIMES[$name]+="$(field ready_ms "$out") "
			CPUS[$name]+="$(field cpu_ms "$out") "
			RSS[$name]+="$(($(field rss_kb "$out") / 1024)) "
			PSS[$name]+="$(($(field pss_kb "$out") / 1024)) "
		else
			TIMES[$name]+="fail "
		fi
	done
	echo "round $round of $RUNS done (load $(cut -d' ' -f1 /proc/loadavg))" >&2
done

echo
printf '%-18s %-5s %-30s %7s %7s  %-14s %7s %7s  %s\n' variant root "ms to ready, each round" median "CPU ms" "guest bound" \
	"RSS MiB" "PSS MiB" "system_powerdown"
for v in "${OK[@]}"; do
	IFS='|' read -r name machine firmware kind extra tb <<<"$v"
	# shellcheck disable=SC2086
	printf '%-18s %-5s %-30s %7s %7s  %-14s %7s %7s  %s\n' "$name" "$kind" "${TIMES[$name]}" \
		"$(median ${TIMES[$name]})" "$(median ${CPUS[$name]:-0})" "${SEEN[$name]}" \
		"$(median ${RSS[$name]:-0})" "$(median ${PSS[$name]:-0})" "${POWERDOWN[$name]}"
done
echo
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "command line of the kept variant (q35, pmem root; paths as vmhpc would give them):"
"$WORK/vmboot" --print-argv --machine q35 --kernel /var/cache/vmhpc/IMAGE/kernel \
	--initrd /var/cache/vmhpc/IMAGE/initramfs --root /var/cache/vmhpc/IMAGE/root.img \
	--virtiofs /run/vmhpc/JOB/vm0.fs.sock --tap tap0 \
	--control /run/vmhpc/JOB/vm0.ctl --cmdline "$CMDLINE" --mem "$MEM_MB" --tb "$TB_MB" \
	--root-size "$(stat -c %s "$ROOT")"
