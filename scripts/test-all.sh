#!/usr/bin/env bash
# Builds vmhpc twice (a -Werror build for everything, an ASan+UBSan build for the unit
# tests), runs every test, and ends with one line "N passed, N failed, N skipped".
#
# A skip is not a pass: every meson SKIP (exit code 77) and every cmocka case that called
# skip() ("[  SKIPPED ] name" in its output) is counted and named. On a machine that has
# what the skipped tests need (run as root, with qemu-system-x86_64 installed), any skip
# is a failure: nothing here has a reason to skip there.
#
# The unit tests that boot a real QEMU (tests/unit/test-qmp.c) get their guest from a
# small image built first into a temporary store (tests/scripts/test-guest.sh): its kernel
# and initramfs are passed as VMHPC_TEST_KERNEL and VMHPC_TEST_INITRD (meson test passes the
# environment on), so both builds share one guest.
set -uo pipefail
cd "$(dirname "$0")/.."

summarize() {
	python3 scripts/test-summary.py "$@"
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

strict_skips=0
if [ "$(id -u)" = 0 ] && command -v qemu-system-x86_64 >/dev/null; then
	strict_skips=1
fi

# The default image boots the kernel of our own (examples/tiny-mpi.ini, docs/kernel.md): built
# here, once per machine and cached, so that no test's timeout has to cover the build. A
# failure shows again in every test that builds the default image.
echo "== the guest kernel of the default image (vmhpc kernel build: minutes the first time on a machine, cached after)"
build/vmhpc kernel build >/dev/null || echo "vmhpc kernel build failed: the tests that build the default image will say why"

echo "== test guest for the real-QEMU unit tests"
guest_failed=0
GUEST_DIR=$(mktemp -d /tmp/vmhpc-test-guest.XXXXXX) || exit 1
trap 'rm -rf "$GUEST_DIR"' EXIT
if VMHPC=build/vmhpc tests/scripts/test-guest.sh "$GUEST_DIR"; then
	export VMHPC_TEST_KERNEL="$GUEST_DIR/kernel" VMHPC_TEST_INITRD="$GUEST_DIR/initramfs"
else
	# The real-QEMU cases then fail (they build no guest of their own when one was asked
	# for here); the summary names this step too.
	guest_failed=1
fi

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
STRICT_SKIPS=$strict_skips GUEST_FAILED=$guest_failed FORMAT_FAILED=$format_failed summarize build-asan/meson-logs/testlog.json build/meson-logs/testlog.json || status=1
exit $status
