# Shared by the integration tests: a private work directory removed on exit (even on
# failure), checks that say what they expected, and small image specs.
set -u

: "${VMHPC:?run through meson test, or set VMHPC to the vmhpc binary}"
: "${VMHPC_SOURCE_ROOT:=$(cd "$(dirname "$0")/../.." && pwd)}"

WORK=$(mktemp -d /tmp/vmhpc-test.XXXXXX)
export VMHPC_STORE="$WORK/store"
CHECKS=0
CLEANUPS=()

cleanup() {
	local c
	for c in "${CLEANUPS[@]}"; do eval "$c" >/dev/null 2>&1 || true; done
	rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

on_exit() { CLEANUPS+=("$1"); }

fail() {
	echo "FAIL: $*" >&2
	exit 1
}

ok() {
	CHECKS=$((CHECKS + 1))
	echo "ok $CHECKS - $*"
}

# expect_fail "what" "needle in stderr" CMD...: CMD must exit non-zero and say needle.
expect_fail() {
	local what=$1 needle=$2 out
	shift 2
	if out=$("$@" 2>&1); then
		fail "$what: expected failure, got success: $out"
	fi
	case "$out" in
	*"$needle"*) ok "$what: $(echo "$out" | tail -n 1 | cut -c1-150)" ;;
	*) fail "$what: message lacks '$needle': $out" ;;
	esac
}

# The versions `vmhpc image list` shows, one "name:version" per line.
versions() {
	"$VMHPC" image list --json | python3 -c '
import json, sys
for e in json.load(sys.stdin):
    print("%s:%d" % (e["name"], e["version"]))'
}

# A small spec (busybox only) that builds in a few seconds; $1 = name, rest = extra lines.
small_spec() {
	local name=$1
	shift
	printf '[image]\nname = %s\n[kernel]\npackage = linux-image-cloud-amd64\nmodules = virtio_pci virtio_pmem nd_pmem\n[root]\npackages = busybox-static\nbinaries = /usr/bin/busybox\n' "$name"
	printf '%s\n' "$@"
}

# Temp files and directories under the store that a finished operation must not leave.
leftovers() {
	find "$VMHPC_STORE/tmp" -mindepth 1 2>/dev/null
	find "$VMHPC_STORE/manifests" -name '*.tmp.*' 2>/dev/null
}

finish() {
	echo "$CHECKS checks passed"
}

# Jobs of this test run in a run folder of their own ($VMHPC_RUN_DIR), so that what the test
# checks (and cleans) is its own, whatever else runs on the machine.
use_own_run_dir() {
	export VMHPC_RUN_DIR="$WORK/run"
	mkdir -p "$VMHPC_RUN_DIR"
	chmod 0700 "$VMHPC_RUN_DIR"
	on_exit "'$VMHPC' cleanup"
}

# nothing_left WHAT: no QEMU, virtiofsd or job folder of this test's jobs is left. A
# virtiofsd is known by its socket to QEMU, named in its job's folder (even once that is
# gone); the job network needs no check of its own: it goes with the last QEMU.
nothing_left() {
	local what=$1 left
	sleep 0.3
	left=$( (pgrep -a -f "qemu-system-x86_64 .*$VMHPC_RUN_DIR/jobs/" || true
		ss -xapn 2>/dev/null | grep -F "$VMHPC_RUN_DIR/jobs/" | grep -o 'users:.*' || true
		ls "$VMHPC_RUN_DIR/jobs" 2>/dev/null || true) | head -5)
	[ -z "$left" ] || fail "$what left: $left"
}

# A plain user's job makes taps in its own namespaces through /dev/net/tun, which Debian's
# udev leaves open to all (0666); machines without udev have it 0600. Opened up for the
# test and put back as it was on exit.
allow_unprivileged_taps() {
	local mode
	mode=$(stat -c %a /dev/net/tun)
	if [ "$mode" != 666 ]; then
		on_exit "chmod $mode /dev/net/tun"
		chmod 0666 /dev/net/tun
	fi
}

# Jobs of a test in the background, for the fault cases (run-faults, run-ucx, run-shm): $job
# is the job folder, $VMHPC_RUN_DIR the test's own run folder (use_own_run_dir).
# Starts `vmhpc run ARGS` in the background ($pid) with stderr in $WORK/$1.err and waits
# until its VMs are ready.
start_bg() {
	local name=$1
	shift
	(cd "$job" && exec "$VMHPC" run "$@") >"$WORK/$name.out" 2>"$WORK/$name.err" &
	pid=$!
	for _ in $(seq 1 480); do grep -q "ready after" "$WORK/$name.err" 2>/dev/null && break; sleep 0.25; done
	grep -q "ready after" "$WORK/$name.err" || fail "$name: the job never became ready: $(cat "$WORK/$name.err")"
}

# wait_bounded PID SECONDS: waits for PID at most SECONDS; sets $code and $took.
wait_bounded() {
	local p=$1 limit=$2 t0=$SECONDS
	for _ in $(seq 1 $((limit * 4))); do kill -0 "$p" 2>/dev/null || break; sleep 0.25; done
	took=$((SECONDS - t0))
	if kill -0 "$p" 2>/dev/null; then
		kill -KILL "$p"
		fail "vmhpc run (pid $p) did not end within $limit s"
	fi
	set +e
	wait "$p"
	code=$?
	set -e
}

qemu_of() { pgrep -f "qemu-system-x86_64 -name guest=$1 .*$VMHPC_RUN_DIR/jobs/" | head -1; }
