#!/usr/bin/env bash
# Checks scripts/test-summary.py (make test's summary) on made-up meson logs: a cmocka
# case that called skip() inside a passing test, and a test that exited 77, are counted
# as skips and named; with STRICT_SKIPS=1 (root and QEMU present) each is a failure and
# the exit status is non-zero.
set -u
SUMMARY="${VMHPC_SOURCE_ROOT:-$(cd "$(dirname "$0")/../.." && pwd)}/scripts/test-summary.py"
WORK=$(mktemp -d /tmp/vmhpc-test-summary.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
fail() {
	echo "FAIL: $*" >&2
	exit 1
}
mkdir -p "$WORK/build/meson-logs"
LOG="$WORK/build/meson-logs/testlog.json"
python3 - "$LOG" <<'PY'
import json, sys
cm = ("[==========] Running 2 test(s).\n[ RUN      ] test_a\n[       OK ] test_a\n"
      "[ RUN      ] test_real\n[  SKIPPED ] test_real\n[==========] 2 test(s) run.\n"
      "[  PASSED  ] 1 test(s).\n[  SKIPPED ] 1 test(s), listed below:\n[  SKIPPED ] test_real\n")
with open(sys.argv[1], "w") as f:
    for t in ({"name": "vmhpc:unit / qmp", "result": "OK", "stdout": cm, "stderr": ""},
              {"name": "vmhpc:integration / guest", "result": "SKIP", "stdout": "", "stderr": ""},
              {"name": "vmhpc:unit / store", "result": "OK", "stdout": "[  PASSED  ] 3 test(s).\n", "stderr": ""}):
        f.write(json.dumps(t) + "\n")
PY

out=$(STRICT_SKIPS=0 FORMAT_FAILED=0 python3 "$SUMMARY" "$LOG") || fail "non-strict run failed: $out"
echo "$out" | grep -qx "3 passed, 0 failed, 2 skipped" || fail "non-strict counts: $out"
echo "$out" | grep -q "skipped: build: vmhpc:unit / qmp/test_real$" || fail "cmocka skip not named: $out"
echo "$out" | grep -q "skipped: build: vmhpc:integration / guest$" || fail "exit-77 skip not named: $out"
echo "ok 1 - skips counted and named"

if out=$(STRICT_SKIPS=1 FORMAT_FAILED=0 python3 "$SUMMARY" "$LOG"); then
	fail "strict run passed with skips: $out"
fi
echo "$out" | grep -qx "3 passed, 2 failed, 0 skipped" || fail "strict counts: $out"
echo "$out" | grep -q "failed: skipped build: vmhpc:unit / qmp/test_real " || fail "strict: cmocka skip not named: $out"
echo "ok 2 - with root and QEMU, a skip fails"

sed -n 3p "$LOG" >"$LOG.clean"
out=$(STRICT_SKIPS=1 FORMAT_FAILED=0 python3 "$SUMMARY" "$LOG.clean") || fail "strict run without skips failed: $out"
echo "$out" | grep -qx "2 passed, 0 failed, 0 skipped" || fail "clean counts: $out"
echo "ok 3 - without skips, strict passes"
