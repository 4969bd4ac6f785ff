#!/usr/bin/env bash
# `vmhpc run` with the default MPICH image under TCG: the job watch is wired in (a job whose
# ranks all exit while mpiexec cannot end is stopped, exit 125 with a message, nothing left),
# and --label puts hydra's ranks' prefixes at the start of lines, also for lines written in
# pieces (hydra's own -prepend-pattern prefixed every write). Open MPI's side is in
# run-openmpi.sh.
. "$(dirname "$0")/lib.sh"
set -e

[ "$(id -u)" -eq 0 ] || { echo "skip: needs root (taps, bridges, virtiofsd)"; exit 77; }

export VMHPC_CACHE="${VMHPC_CACHE:-/var/cache/vmhpc}"
"$VMHPC" image build --level 1 "$VMHPC_SOURCE_ROOT/examples/tiny-mpi.ini" >/dev/null
job="$WORK/job"
mkdir -p "$job"
chmod 0755 "$WORK" "$job"
use_own_run_dir

run() { (cd "$job" && "$VMHPC" run --vms 2 --time 300 "$@"); }

# 1. Every rank exits but mpiexec cannot end: each rank stops its hydra_pmi_proxy (SIGSTOP)
# and exits (after 5 s: the watch, probing every 2 s, must
# have seen a rank alive once), so no proxy reports its rank's end and mpiexec waits for them forever, as with a
# proxy that hangs. The watch sees no rank left in any VM, waits its 20 s, stops mpiexec.
start=$(date +%s)
set +e
run -- sh -c 'sleep 5; kill -STOP $PPID' >/dev/null 2>"$WORK/stuck.err"
code=$?
set -e
took=$(($(date +%s) - start))
[ "$code" -eq 125 ] || fail "stuck mpiexec: exit $code, expected 125: $(tail -5 "$WORK/stuck.err")"
grep -q "every rank had exited but mpiexec did not end within 20 s; the job was stopped" "$WORK/stuck.err" ||
	fail "no message: $(cat "$WORK/stuck.err")"
grep -q "exit code 125" "$WORK/stuck.err" && ! grep -q "the job failed with exit code 125" "$WORK/stuck.err" ||
	fail "reported as a plain exit code: $(cat "$WORK/stuck.err")"
[ "$took" -lt 150 ] || fail "the stuck job took $took s"
nothing_left "stuck mpiexec"
ok "ranks gone, proxies stopped: the job watch ends the job after $took s, exit 125 with a message"

# 2. A job that ends by itself is untouched by the watch: its exit code comes back.
set +e
run -- sh -c 'exit 7' >/dev/null 2>"$WORK/seven.err"
code=$?
set -e
[ "$code" -eq 7 ] || fail "exit 7: got $code: $(tail -5 "$WORK/seven.err")"
grep -q "every rank" "$WORK/seven.err" && fail "a normal job was reported as stuck"
nothing_left "exit 7"
ok "a job that ends by itself keeps its exit code (7), no report from the watch"

# 3. --label: a line written in three pieces, a second after each other, is one line with one
# prefix; every line has its rank's prefix at its start.
run --label -- sh -c 'echo -n "one "; sleep 1; echo -n "two "; sleep 1; echo "three"; echo "four" >&2' \
	>"$WORK/label.out" 2>"$WORK/label.err" || fail "label: $(cat "$WORK/label.err")"
for r in "0@vm0" "1@vm1"; do
	grep -qx "\[$r\] one two three" "$WORK/label.out" || fail "[$r] line in pieces: $(cat "$WORK/label.out")"
	grep -qx "\[$r\] four" "$WORK/label.err" || fail "[$r] stderr: $(cat "$WORK/label.err")"
done
[ "$(wc -l <"$WORK/label.out")" = 2 ] || fail "stdout: $(cat "$WORK/label.out")"
nothing_left "label"
ok "--label: one prefix per line, at its start, on stdout and stderr, for lines written in pieces"
finish
