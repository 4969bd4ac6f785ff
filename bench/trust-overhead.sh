#!/usr/bin/env bash
# What the trust work costs a job: `vmhpc run --vms 2 -- hostname` with this tree's vmhpc
# next to the one from before it (OLD_REV, default 6a3cc69: root virtiofsd on the user's
# path, the job bridge in the host's namespace, the token on the kernel command line, node
# cache parts trusted without a check). Both run in one session, alternating, each from a
# store of its own (the guest protocol differs); medians per phase and their ratio.
# The physical floor: the guest kernel's boot under TCG (~2.5 s to init here), which both
# pay alike; what differs is host-side set-up (namespace, sandboxed virtiofsd, the hash of
# the cached parts).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
build=${BUILD:-build}
new="$root/$build/vmhpc"
old_rev=${OLD_REV:-6a3cc69}
runs=${RUNS:-5}
work=$(mktemp -d /tmp/vmhpc-bench-trust.XXXXXX)
cleanup() {
	git -C "$root" worktree remove --force "$work/old-src" >/dev/null 2>&1 || true
	rm -rf "$work"
}
trap cleanup EXIT
[ -x "$new" ] || { echo "build vmhpc first (make build)" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || { echo "run as root: the old vmhpc needs it for its bridge" >&2; exit 1; }

echo "== building vmhpc at $old_rev"
git -C "$root" worktree add --detach "$work/old-src" "$old_rev" >/dev/null 2>&1
meson setup "$work/old-build" "$work/old-src" >/dev/null
ninja -C "$work/old-build" vmhpc vmhpc-init vmhpc-exec >/dev/null
old="$work/old-build/vmhpc"

mkdir -p "$work/job"
export VMHPC_CACHE=/var/cache/vmhpc
for v in old new; do
	bin=$old
	[ $v = new ] && bin=$new
	VMHPC_STORE="$work/store-$v" "$bin" image build --level 1 "$root/examples/tiny-mpi.ini" >/dev/null 2>&1
done

echo "== $runs runs each, alternating: vmhpc run --vms 2 -- hostname"
for i in $(seq 1 "$runs"); do
	for v in old new; do
		bin=$old
		[ $v = new ] && bin=$new
		(cd "$work/job" && VMHPC_STORE="$work/store-$v" "$bin" run --vms 2 --json -- hostname \
			>/dev/null 2>"$work/$v.$i.err") || { tail -5 "$work/$v.$i.err"; exit 1; }
		tail -n 1 "$work/$v.$i.err" >>"$work/$v.json"
	done
done
python3 - "$work/old.json" "$work/new.json" "$old_rev" <<'PY'
import json, statistics, sys
old = [json.loads(l) for l in open(sys.argv[1])]
new = [json.loads(l) for l in open(sys.argv[2])]
print("%-18s %10s %10s %8s" % ("median of %d" % len(old), sys.argv[3], "this tree", "ratio"))
for key in ("materialize_s", "boot_s", "run_s", "shutdown_s"):
    a = statistics.median(r[key] for r in old)
    b = statistics.median(r[key] for r in new)
    print("%-18s %8.2f s %8.2f s %7.2fx" % (key, a, b, b / a if a else float("nan")))
a = statistics.median(r["host_pss_total_kb"] for r in old) / 1024
b = statistics.median(r["host_pss_total_kb"] for r in new) / 1024
print("%-18s %6.0f MiB %6.0f MiB %7.2fx" % ("host PSS, 2 VMs", a, b, b / a))
PY
