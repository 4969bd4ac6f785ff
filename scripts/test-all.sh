#!/usr/bin/env bash
# Builds vmhpc twice (a -Werror build for everything, an ASan+UBSan build for the unit
# tests), runs every test, and ends with one line "N passed, N failed".
set -uo pipefail
cd "$(dirname "$0")/.."

summarize() {
	# meson's JSON test log: one object per test with its result.
	python3 - "$@" <<'PY'
import json, sys
import os
passed = failed = skipped = 0
if os.environ.get("FORMAT_FAILED") == "1":
    failed += 1
    print("failed: clang-format check")
else:
    passed += 1
for path in sys.argv[1:]:
    try:
        lines = open(path).read().splitlines()
    except OSError:
        failed += 1
        continue
    for line in lines:
        t = json.loads(line)
        r = t["result"]
        if r in ("OK", "EXPECTEDFAIL"):
            passed += 1
        elif r == "SKIP":
            skipped += 1
        else:
            failed += 1
            print("failed: %s (%s)" % (t["name"], r))
print("%d passed, %d failed, %d skipped" % (passed, failed, skipped))
sys.exit(1 if failed else 0)
PY
}

status=0
if [ ! -d build/meson-info ]; then
	meson setup build -Dwerror=true || exit 1
else
	meson configure build -Dwerror=true || exit 1
fi
ninja -C build || exit 1
if [ ! -d build-asan/meson-info ]; then
	meson setup build-asan -Db_sanitize=address,undefined -Db_lundef=false || exit 1
fi
ninja -C build-asan || exit 1

echo "== format check (clang-format, .clang-format)"
format_failed=0
bad=$(git ls-files 'src/*.c' 'src/*.h' 'tests/*.c' 'bench/*.c' 'examples/*.c' | while read -r f; do
	clang-format --dry-run "$f" 2>&1 | grep -q warning && echo "$f"
done)
if [ -n "$bad" ]; then
	echo "not clang-formatted (run clang-format -i on them): $(echo $bad)"
	format_failed=1
fi

echo "== unit tests under ASan+UBSan"
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
	meson test -C build-asan --suite unit --print-errorlogs
echo "== all tests"
meson test -C build --print-errorlogs --num-processes 1

echo "== summary"
FORMAT_FAILED=$format_failed summarize build-asan/meson-logs/testlog.json build/meson-logs/testlog.json || status=1
exit $status
