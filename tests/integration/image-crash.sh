#!/usr/bin/env bash
# A build killed with SIGKILL at any point leaves no partial version and no helper
# process; the store still verifies; the next build or gc removes what it left. Two
# builds at once into one store each get their own version.
. "$(dirname "$0")/lib.sh"
set -e

spec="$VMHPC_SOURCE_ROOT/examples/tiny-mpi.ini"

# Warm the package cache so that the kills land in the build itself.
small_spec warm >"$WORK/warm.ini"
"$VMHPC" image build --level 1 "$WORK/warm.ini" >/dev/null
"$VMHPC" image rm warm:1 >/dev/null

for delay in 0.5 2 4 6 8; do
	"$VMHPC" image build --level 3 "$spec" >"$WORK/killed.log" 2>&1 &
	pid=$!
	sleep "$delay"
	kill -9 "$pid" 2>/dev/null || true
	wait "$pid" 2>/dev/null || true
	sleep 0.3
	if pgrep -f "mke2fs .*$VMHPC_STORE" >/dev/null || pgrep -f "dpkg-deb .*vmhpc" >/dev/null; then
		fail "a helper process outlived the killed build (delay $delay)"
	fi
	list=$(versions | grep -v '^warm' || true)
	case "$list" in
	"" | tiny-mpi:*) ;;
	*) fail "unexpected listing after kill at ${delay}s: $list" ;;
	esac
	"$VMHPC" image verify >"$WORK/verify.log" 2>&1 || fail "verify after a kill at ${delay}s: $(cat "$WORK/verify.log")"
	ok "killed at ${delay}s: store verifies; listing '$(echo $list)'"
done

# Whatever versions the kills let finish are complete; the rest left only garbage.
for v in $(versions); do
	"$VMHPC" image cat "$v" root | cmp -s - /dev/null && fail "$v has an empty root"
done
"$VMHPC" image gc >/dev/null
[ -z "$(leftovers)" ] || fail "gc left temp files: $(leftovers)"
"$VMHPC" image verify >/dev/null || fail "verify after gc"
ok "gc removes what killed builds left; the store verifies"

# Two builds at once.
before=$(versions | wc -l)
"$VMHPC" image build --level 1 "$WORK/warm.ini" >"$WORK/c1.log" 2>&1 &
p1=$!
"$VMHPC" image build --level 1 "$WORK/warm.ini" >"$WORK/c2.log" 2>&1 &
p2=$!
wait "$p1" || fail "concurrent build 1: $(cat "$WORK/c1.log")"
wait "$p2" || fail "concurrent build 2: $(cat "$WORK/c2.log")"
got=$(cat "$WORK/c1.log" "$WORK/c2.log" | grep -o 'built warm:[0-9]*' | sort | tr '\n' ' ')
[ "$got" = "built warm:2 built warm:3 " ] || fail "concurrent builds got: $got"
[ "$(versions | wc -l)" -eq $((before + 2)) ] || fail "concurrent builds: $(versions)"
"$VMHPC" image verify >/dev/null || fail "verify after concurrent builds"
[ -z "$(leftovers)" ] || fail "temp files left: $(leftovers)"
ok "two concurrent builds get versions 2 and 3 and both verify"
finish
