#!/usr/bin/env bash
# `vmhpc run` with an Open MPI image (examples/openmpi.ini) under TCG: the image is built into
# a temp store, an MPI ring is compiled on the host with mpicc.openmpi in a temp job folder and
# run over 2 VMs (orterun in VM 0, orted in VM 1 through the exec service); --label puts the
# prefix at the start of every line, also for a line written in pieces; a failing rank's exit
# code comes back; a job whose ranks are gone while the launcher stays is stopped by the job
# watch (exit 125 and a message); images without an MPI launcher, or with two, are refused
# before booting. After every case nothing may be left.
. "$(dirname "$0")/lib.sh"
set -e

[ "$(id -u)" -eq 0 ] || { echo "skip: needs root (taps, bridges, virtiofsd)"; exit 77; }
command -v mpicc.openmpi >/dev/null || fail "no mpicc.openmpi: install libopenmpi-dev (scripts/install-deps.sh)"

export VMHPC_CACHE="${VMHPC_CACHE:-/var/cache/vmhpc}"
"$VMHPC" image build --level 1 "$VMHPC_SOURCE_ROOT/examples/openmpi.ini" >"$WORK/build.out" 2>&1 ||
	fail "building examples/openmpi.ini: $(tail -5 "$WORK/build.out")"
job="$WORK/job"
mkdir -p "$job"
chmod 0755 "$WORK" "$job"
mpicc.openmpi -O2 -o "$job/ring" "$VMHPC_SOURCE_ROOT/examples/mpi-ring.c" || fail "mpicc.openmpi"
use_own_run_dir

run() { (cd "$job" && "$VMHPC" run --image openmpi --vms 2 --time 300 "$@"); }

# 1. Ring + allreduce across 2 VMs, labelled; the result file in the job folder.
run --label -- ./ring >"$WORK/ring.out" 2>"$WORK/ring.err" || fail "ring: $(cat "$WORK/ring.err")"
grep -q '^\[0@vm0\] ring of 2 ranks: .*VERIFIED' "$WORK/ring.out" || fail "ring not verified or not labelled: $(cat "$WORK/ring.out")"
grep -q "ranks=2 token=1 sum=3 VERIFIED" "$job/ring-result.txt" || fail "result file: $(cat "$job/ring-result.txt" 2>&1)"
grep -q "image openmpi:1, exit 0" "$WORK/ring.err" || fail "report: $(cat "$WORK/ring.err")"
nothing_left "ring"
ok "Open MPI ring + allreduce over 2 VMs verified, labelled [0@vm0]"

# 2. Hello from both VMs, and a line written in three pieces is one labelled line per rank.
run --label -- sh -c 'echo -n "one "; sleep 1; echo -n "two "; sleep 1; echo "three"; hostname' \
	>"$WORK/label.out" 2>"$WORK/label.err" || fail "label: $(cat "$WORK/label.err")"
for r in "0@vm0" "1@vm1"; do
	grep -qx "\[$r\] one two three" "$WORK/label.out" || fail "[$r] line in pieces: $(cat "$WORK/label.out")"
done
[ "$(grep -c '^\[[01]@vm[01]\] ' "$WORK/label.out")" = 4 ] && [ "$(wc -l <"$WORK/label.out")" = 4 ] ||
	fail "every line labelled once: $(cat "$WORK/label.out")"
nothing_left "label"
ok "--label: a line written in three pieces comes out as one line with one prefix, per rank"

# 3. A failing rank's exit code comes back.
set +e
run -- ./ring --fail-rank 1 >/dev/null 2>"$WORK/fail.err"
code=$?
set -e
[ "$code" -eq 3 ] || fail "failing rank: exit $code, expected 3: $(tail -5 "$WORK/fail.err")"
grep -q "the job failed with exit code 3" "$WORK/fail.err" || fail "no failure message: $(tail -5 "$WORK/fail.err")"
nothing_left "failing rank"
ok "a rank failing with code 3 (MPI_Abort) makes vmhpc run exit 3"

# 4. Every rank exits, the launcher does not (each rank, after 5 s so that the watch saw it,
# stops its parent: orterun in VM 0, orted in VM 1): the job watch stops the job and vmhpc run says so.
start=$(date +%s)
set +e
run -- sh -c 'sleep 5; kill -STOP $PPID' >/dev/null 2>"$WORK/stuck.err"
code=$?
set -e
took=$(($(date +%s) - start))
[ "$code" -eq 125 ] || fail "stuck launcher: exit $code, expected 125: $(tail -5 "$WORK/stuck.err")"
grep -q "every rank had exited but mpirun did not end within 20 s; the job was stopped" "$WORK/stuck.err" ||
	fail "no message: $(cat "$WORK/stuck.err")"
[ "$took" -lt 150 ] || fail "the stuck job took $took s"
nothing_left "stuck launcher"
ok "ranks gone, orterun stopped: the job watch ends the job after $took s, exit 125 with a message"

# 5. An image without an MPI launcher, or with both, is refused before booting.
small_spec nompi >"$WORK/nompi.ini"
"$VMHPC" image build --level 1 "$WORK/nompi.ini" >/dev/null 2>&1 || fail "building nompi"
expect_fail "image without MPI" "image nompi:1 has no MPI launcher" \
	sh -c "cd '$job' && '$VMHPC' run --image nompi -- ./ring"
small_spec both "packages = mpich openmpi-bin" >"$WORK/both.ini"
"$VMHPC" image build --level 1 "$WORK/both.ini" >/dev/null 2>&1 || fail "building both"
expect_fail "image with two MPIs" "has both MPICH (package mpich) and Open MPI" \
	sh -c "cd '$job' && '$VMHPC' run --image both -- ./ring"
nothing_left "refusals"
finish
