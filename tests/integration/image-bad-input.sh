#!/usr/bin/env bash
# Every bad input gets one clear error naming the thing and what to do, a non-zero exit,
# and leaves the store as it was: no version in `list`, no temp files.
. "$(dirname "$0")/lib.sh"
set -e

build() { "$VMHPC" image build --level 1 "$@"; }
spec() { local f="$WORK/$1.ini"; shift; printf '%s\n' "$@" >"$f"; echo "$f"; }
unchanged() {
	[ "$(versions)" = "$1" ] || fail "the store changed: it lists '$(versions)', expected '$1'"
	[ -z "$(leftovers)" ] || fail "temp files left in the store: $(leftovers)"
}

# Spec syntax and content.
expect_fail "missing spec file" "no-such.ini" build "$WORK/no-such.ini"
expect_fail "unknown key" ':4: unknown key "colour"' build "$(spec k '[image]' 'name = x' '[root]' 'colour = red')"
expect_fail "syntax error" ":2: " build "$(spec s '[image]' 'this is not a key value line')"
expect_fail "name with /" "image name 'a/b'" build "$(spec n1 '[image]' 'name = a/b')"
expect_fail "name .." "image name '..'" build "$(spec n2 '[image]' 'name = ..')"
expect_fail "name over 64 chars" "is too long" build "$(spec n3 '[image]' "name = $(printf 'x%.0s' $(seq 65))")"
unchanged ""

# Things the spec names that do not exist or are not usable.
small_spec bad-file 'files = does-not-exist.txt:/etc/x' >"$WORK/f.ini"
expect_fail "missing file" "does-not-exist.txt" build "$WORK/f.ini"
small_spec bad-pkg 'packages = no-such-package-vmhpc' >"$WORK/p.ini"
expect_fail "unknown Debian package" "Debian package 'no-such-package-vmhpc' not found" build "$WORK/p.ini"
small_spec bad-kmod >"$WORK/m.ini"
sed -i 's/^modules = .*/modules = no_such_module/' "$WORK/m.ini"
expect_fail "unknown kernel module" "kernel module 'no_such_module'" build "$WORK/m.ini"

printf '#!/bin/sh\necho hi\n' >"$WORK/script.sh"
chmod +x "$WORK/script.sh"
small_spec bad-elf "binaries = $WORK/script.sh" >"$WORK/e.ini"
expect_fail "binary that is not ELF" "is not an ELF program or library" build "$WORK/e.ini"

cp /bin/true "$WORK/arm-true"
printf '\xb7\x00' | dd of="$WORK/arm-true" bs=1 seek=18 conv=notrunc status=none
small_spec bad-arch "binaries = $WORK/arm-true" >"$WORK/a.ini"
expect_fail "binary for another architecture" "another architecture" build "$WORK/a.ini"

printf 'int vmhpc_missing(void) { return 0; }\n' >"$WORK/lib.c"
printf 'int vmhpc_missing(void);\nint main(void) { return vmhpc_missing(); }\n' >"$WORK/prog.c"
cc -shared -fPIC -o "$WORK/libvmhpcmissing.so" "$WORK/lib.c"
cc -o "$WORK/needs-lib" "$WORK/prog.c" -L"$WORK" -lvmhpcmissing
small_spec bad-lib "binaries = $WORK/needs-lib" >"$WORK/l.ini"
expect_fail "library that cannot be found" "libvmhpcmissing.so" build "$WORK/l.ini"
small_spec bad-bin "binaries = /usr/bin/no-such-program" >"$WORK/b.ini"
expect_fail "binary that does not exist" "/usr/bin/no-such-program" build "$WORK/b.ini"
unchanged ""

# A good small image, to have versions to ask about.
small_spec small >"$WORK/small.ini"
build "$WORK/small.ini" >/dev/null
unchanged "small:1"
ok "a small image builds"

expect_fail "image that does not exist" "no image named 'nosuch'" "$VMHPC" image show nosuch
expect_fail "version that does not exist" "has no version 7" "$VMHPC" image show small:7
expect_fail "bad version" "not a positive whole number" "$VMHPC" image show small:x
expect_fail "rm without version" "say which version" "$VMHPC" image rm small
expect_fail "rm of a missing version" "no image small:9" "$VMHPC" image rm small:9
expect_fail "export of a missing image" "no image named 'nosuch'" "$VMHPC" image export nosuch -o "$WORK/x.tar"
[ ! -e "$WORK/x.tar" ] && [ ! -e "$WORK/x.tar.partial" ] || fail "failed export left a file"
expect_fail "import of garbage" "import:" sh -c "head -c 5000 /dev/urandom | '$VMHPC' image import"
expect_fail "bad chunk size" "not usable" "$VMHPC" image build --chunk-avg 1000 "$WORK/small.ini"
expect_fail "unknown verb" "unknown verb" "$VMHPC" image frobnicate
unchanged "small:1"

# A damaged manifest: list says so, show explains, verify reports it, gc refuses.
mkdir -p "$VMHPC_STORE/manifests/broken"
printf '{ "format": 1, "name": ' >"$VMHPC_STORE/manifests/broken/1.json"
"$VMHPC" image list | grep -q "broken .*damaged" || fail "list does not flag the damaged manifest"
expect_fail "show of a damaged manifest" "is damaged" "$VMHPC" image show broken:1
expect_fail "verify with a damaged manifest" "damaged" "$VMHPC" image verify
expect_fail "gc with a damaged manifest" "gc refused" "$VMHPC" image gc
"$VMHPC" image rm broken:1 >/dev/null
"$VMHPC" image verify >/dev/null || fail "verify after removing the damaged manifest"
ok "a damaged manifest is reported, blocks gc, and can be removed"

# A manifest that names chunks the store lacks.
"$VMHPC" image cat small index -o /dev/null
[ -c /dev/null ] || fail "cat -o /dev/null replaced the device with a file"
idx=$("$VMHPC" image show --json small | python3 -c 'import json,sys; print(json.load(sys.stdin)["parts"]["index"]["chunks"])')
[ "$idx" -ge 1 ] || fail "no index chunks"
python3 - "$VMHPC_STORE" <<'PY'
import json, os, sys
store = sys.argv[1]
m = json.load(open(os.path.join(store, "manifests/small/1.json")))
cid = m["parts"]["index"]["chunks"][0][0]
os.chmod(os.path.join(store, "chunks", cid[:2], cid), 0o644)
os.remove(os.path.join(store, "chunks", cid[:2], cid))
PY
expect_fail "ls with a missing chunk" "run \`vmhpc image verify\`" "$VMHPC" image ls small
expect_fail "verify with a missing chunk" "missing; breaks small:1 (index)" "$VMHPC" image verify
expect_fail "export with a missing chunk" "export small:1: chunk" "$VMHPC" image export small -o "$WORK/y.tar"
[ ! -e "$WORK/y.tar" ] || fail "failed export left a file"

# A full disk during a build, twice: while staging the root, and while writing chunks.
if [ "$(id -u)" -eq 0 ]; then
	for size in 12m 120m; do
		mnt="$WORK/full-$size"
		mkdir -p "$mnt"
		mount -t tmpfs -o size=$size vmhpc-test "$mnt"
		on_exit "umount '$mnt'"
		export VMHPC_STORE="$mnt/store"
		expect_fail "full disk ($size)" "no space left on the device holding the store" \
			"$VMHPC" image build --level 1 "$VMHPC_SOURCE_ROOT/examples/tiny-mpi.ini"
		unchanged ""
		"$VMHPC" image verify >/dev/null || fail "verify after a full disk ($size)"
		umount "$mnt"
	done
	ok "a full disk leaves the store valid, with no version and no temp files"
else
	echo "skip: full-disk checks need root (tmpfs mounts)"
fi
finish
