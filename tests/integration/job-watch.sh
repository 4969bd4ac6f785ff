#!/usr/bin/env bash
# vmhpc-exec --job-watch (src/guest/jobwatch.h) on the host, against vmhpc-init's development
# exec service, with the host's MPICH hydra: a job whose ranks have all exited while mpiexec
# stays (here: each rank leaves a background child holding hydra's output pipes) is reported
# and ended with JOBWATCH_EXIT_STUCK (125) within its grace; a normal job's exit code passes
# through untouched; --count-ranks counts hydra's children. No VM: seconds.
. "$(dirname "$0")/lib.sh"
set -e

exec_bin="$(dirname "$VMHPC")/vmhpc-exec"
init_bin="${VMHPC_INIT:?}"
command -v mpiexec.hydra >/dev/null || fail "no mpiexec.hydra: install mpich"
export VMHPC_TOKEN=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
export VMHPC_EXEC_PORT=$((20000 + RANDOM % 20000))
"$init_bin" --serve "$VMHPC_EXEC_PORT" >"$WORK/serve.log" 2>&1 &
serve=$!
on_exit "kill $serve"
for _ in $(seq 1 50); do
	"$exec_bin" -n 127.0.0.1 -- true 2>/dev/null && break
	sleep 0.1
done

# --count-ranks sees the ranks of a running job, and none after it.
mpiexec.hydra -n 2 sleep 6 &
job=$!
on_exit "kill $job"
on_exit 'for p in $(cat "$WORK"/bg* 2>/dev/null); do kill $p; done'
for _ in $(seq 1 50); do
	n=$("$exec_bin" -n 127.0.0.1 -- "$exec_bin" --count-ranks)
	[ "$n" = 2 ] && break
	sleep 0.1
done
[ "$n" = 2 ] || fail "--count-ranks during a 2-rank job: $n"
wait "$job"
[ "$("$exec_bin" --count-ranks)" = 0 ] || fail "--count-ranks after the job: not 0"
ok "--count-ranks: 2 during a 2-rank job, 0 after"

# Ranks exit, mpiexec does not (their children keep its output pipes open): stopped and said.
start=$(date +%s)
set +e
timeout -s KILL 120 "$exec_bin" --job-watch --grace-s 3 --interval-ms 500 127.0.0.1 -- \
	mpiexec.hydra -n 2 sh -c "sleep 300 & echo \$! >>$WORK/bg; sleep 1; exit 0" >"$WORK/stuck.out" 2>"$WORK/stuck.err"
code=$?
set -e
took=$(($(date +%s) - start))
[ "$code" -eq 125 ] || fail "stuck mpiexec: exit $code, expected 125: $(cat "$WORK/stuck.err")"
grep -q "every rank of the job has exited, but mpiexec.hydra has not ended 3 s later" "$WORK/stuck.err" ||
	fail "no report: $(cat "$WORK/stuck.err")"
[ "$took" -lt 30 ] || fail "the stuck job took $took s to be stopped"
# The ranks' orphans (re-parented, outside mpiexec's process group) are not the watch's to
# end: in a guest they go with the VM at teardown; here the cleanup kills them by pid.
ok "ranks gone, mpiexec stuck: reported and stopped after $took s with exit 125"

# A job that ends by itself is not touched: its exit code comes back.
set +e
"$exec_bin" --job-watch --grace-s 3 --interval-ms 500 127.0.0.1 -- mpiexec.hydra -n 2 sh -c "sleep 2; exit 4" \
	>/dev/null 2>"$WORK/normal.err"
code=$?
set -e
[ "$code" -eq 4 ] || fail "normal job: exit $code, expected 4: $(cat "$WORK/normal.err")"
grep -q "every rank" "$WORK/normal.err" && fail "a normal job was reported as stuck"
ok "a job that ends by itself keeps its exit code (4) and no report"

# A host that does not answer is never taken for "no ranks left"; SIGTERM to the watch's
# process group (what the exec service's SIGNAL does) reaches mpiexec, and the watch then ends
# with it.
"$exec_bin" --job-watch --grace-s 2 --interval-ms 500 127.0.0.1,127.0.0.2 -- \
	mpiexec.hydra -n 1 sh -c "sleep 300 & echo \$! >$WORK/bg2; sleep 1; exit 0" >/dev/null 2>"$WORK/unknown.err" &
watch=$!
on_exit "kill -KILL -- -$watch"
sleep 12
kill -0 "$watch" 2>/dev/null || fail "with a host unanswered the watch stopped the job: $(cat "$WORK/unknown.err")"
grep -q "every rank" "$WORK/unknown.err" && fail "an unanswered host was taken for no ranks"
kill -TERM -- -"$watch"
for _ in $(seq 1 100); do kill -0 "$watch" 2>/dev/null || break; sleep 0.1; done
kill -0 "$watch" 2>/dev/null && fail "SIGTERM to the watch's group did not end the job in 10 s"
set +e
wait "$watch"
code=$?
set -e
# Its ranks had exited 0, so hydra ends with 0 too; 125 would mean the watch had stopped it.
[ "$code" -ne 125 ] || fail "after SIGTERM the watch reported a stuck job: $(cat "$WORK/unknown.err")"
ok "with one host unanswered, nothing is stopped; SIGTERM to the group ends the job (exit $code)"
finish
