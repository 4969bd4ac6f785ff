#!/usr/bin/env bash
# Builds vmhpc twice (a -Werror build for everything, an ASan+UBSan build for the unit
# tests), runs every test, and ends with one line "N passed, N failed".
set -uo pipefail
cd "$(dirname "$0")/.."

summarize() {
	# meson's JSON test log: one object per test with its result.
	python3 - "$@" <<'PY'
import json, sys
passed = failed = skipped = 0
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

echo "== format check (clang-format)"
if command -v clang-format >/dev/null; then
	bad=$(git ls-files 'src/*.c' 'src/*.h' 'tests/*.c' 'bench/*.c' | while read -r f; do
		clang-format --dry-run "$f" 2>&1 | grep -q warning && echo "$f"
	done)
	[ -z "$bad" ] || echo "note: not clang-formatted: $(echo $bad)"
fi

echo "== unit tests under ASan+UBSan"
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
	meson test -C build-asan --suite unit --print-errorlogs
echo "== all tests"
meson test -C build --print-errorlogs --num-processes 1

echo "== summary"
summarize build-asan/meson-logs/testlog.json build/meson-logs/testlog.json || status=1
exit $status
