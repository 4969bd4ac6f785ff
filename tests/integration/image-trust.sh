#!/usr/bin/env bash
# The store and the builder against hostile local users, hostile files and crashes (issue
# 19): planted links at temp names, store modes, files read with the sudo user's rights,
# special files as sources, damaged chunks repaired by a rebuild or re-import, concurrent
# builds, hostile manifests (huge version, fifo or directory as a version, control
# characters), an import into a full store. Needs root (sudo identity, tmpfs).
. "$(dirname "$0")/lib.sh"
set -e

[ "$(id -u)" -eq 0 ] || fail "image-trust needs root (it checks builds through sudo and mounts a tmpfs)"

build() { "$VMHPC" image build --level 1 "$@"; }
no_leftovers() { [ -z "$(leftovers)" ] || fail "$1: temp files left in the store: $(leftovers)"; }

small_spec small >"$WORK/small.ini"
build "$WORK/small.ini" >/dev/null
ok "a small image builds"

# Item 7: a store is private to its owner.
[ "$(stat -c %a "$VMHPC_STORE")" = 700 ] || fail "store mode $(stat -c %a "$VMHPC_STORE")"
for d in chunks tmp manifests manifests/small; do
	[ "$(stat -c %a "$VMHPC_STORE/$d")" = 700 ] || fail "$d mode $(stat -c %a "$VMHPC_STORE/$d")"
done
[ -z "$(find "$VMHPC_STORE/chunks" -type f ! -perm 0400)" ] || fail "chunks not 0400"
[ "$(stat -c %a "$VMHPC_STORE/manifests/small/1.json")" = 600 ] || fail "manifest not 0600"
chmod 755 "$VMHPC_STORE"
"$VMHPC" image list >/dev/null
[ "$(stat -c %a "$VMHPC_STORE")" = 700 ] || fail "an open did not close a world-readable store"
ok "the store is 0700 (chunks 0400, manifests 0600), and an old 0755 store is closed on open"

# Item 6: a link planted at the old temp name is never followed.
printf 'secret\n' >"$WORK/victim"
chmod 600 "$WORK/victim"
ln -s "$WORK/victim" "$WORK/out.tar.partial"
ln -s "$WORK/victim" "$WORK/kernel.partial"
"$VMHPC" image export small -o "$WORK/out.tar"
"$VMHPC" image cat small kernel -o "$WORK/kernel"
[ "$(cat "$WORK/victim")" = secret ] || fail "a planted link was followed: victim now $(head -c 40 "$WORK/victim")"
[ -L "$WORK/out.tar.partial" ] && [ -L "$WORK/kernel.partial" ] || fail "planted links were replaced"
tar -tf "$WORK/out.tar" | head -1 | grep -qx manifest.json || fail "export is not a tar with the manifest first"
[ "$(stat -c %a "$WORK/out.tar")" = 600 ] || fail "export mode $(stat -c %a "$WORK/out.tar")"
[ -z "$(find "$WORK" -maxdepth 1 -name '*.partial.*')" ] || fail "temp files left beside the output"
ok "export/cat -o write a fresh temp file, never a link planted at FILE.partial"

# Item 7: files are read with the rights of the user who ran sudo.
nobody_uid=$(id -u nobody)
nobody_gid=$(id -g nobody)
chmod 711 "$WORK"
mkdir -m 755 "$WORK/pub"
printf 'hello\n' >"$WORK/pub/hello.txt"
chmod 644 "$WORK/pub/hello.txt"
printf 'root only\n' >"$WORK/pub/private.txt"
chmod 600 "$WORK/pub/private.txt"
as_nobody() { SUDO_UID=$nobody_uid SUDO_GID=$nobody_gid "$@"; }
small_spec shadow 'files = /etc/shadow:/etc/stolen' >"$WORK/shadow.ini"
expect_fail "files = /etc/shadow through sudo" "/etc/shadow: Permission denied" as_nobody build "$WORK/shadow.ini"
small_spec private "files = $WORK/pub/private.txt:/etc/p" >"$WORK/private.ini"
expect_fail "a file the sudo user cannot read" "may read it" as_nobody build "$WORK/private.ini"
small_spec privdir "files = $WORK/pub:/srv/pub" >"$WORK/privdir.ini"
expect_fail "a tree holding a file the sudo user cannot read" "private.txt: Permission denied" \
	as_nobody build "$WORK/privdir.ini"
small_spec public "files = $WORK/pub/hello.txt:/etc/hello.txt" >"$WORK/public.ini"
as_nobody build "$WORK/public.ini" >/dev/null
"$VMHPC" image ls public /etc/hello.txt | grep -q '/etc/hello.txt' || fail "the readable file is missing"
build "$WORK/private.ini" >/dev/null # root without sudo: root's own rights
chmod 700 "$WORK"
ok "through sudo, [root] files are read with the user's rights; without sudo, with root's"

# Item 7: special files are refused at once, not read forever.
small_spec zero 'files = /dev/zero:/zero' >"$WORK/zero.ini"
expect_fail "/dev/zero as a source" "/dev/zero is a character device" timeout 120 "$VMHPC" image build --level 1 "$WORK/zero.ini"
mkfifo "$WORK/fifo"
small_spec fifo "files = $WORK/fifo:/fifo" >"$WORK/fifo.ini"
expect_fail "a fifo as a source" "is a fifo" timeout 120 "$VMHPC" image build --level 1 "$WORK/fifo.ini"
no_leftovers "special files"

# Item 10: a damaged chunk is repaired by a rebuild, and by a re-import.
"$VMHPC" image export small:1 -o "$WORK/small1.tar"
damage() { # $1 = part: flips a byte in the middle of that part's first chunk
	python3 - "$VMHPC_STORE" "$1" <<'PY'
import json, os, sys
store, part = sys.argv[1], sys.argv[2]
m = json.load(open(os.path.join(store, "manifests/small/1.json")))
cid = m["parts"][part]["chunks"][0][0]
p = os.path.join(store, "chunks", cid[:2], cid)
os.chmod(p, 0o600)
data = bytearray(open(p, "rb").read())
data[len(data) // 2] ^= 0x55
open(p, "wb").write(data)
print(cid)
PY
}
cid=$(damage root)
expect_fail "verify finds the damaged chunk" "chunk $cid: corrupt" "$VMHPC" image verify
build "$WORK/small.ini" >/dev/null
"$VMHPC" image verify >"$WORK/verify.log" 2>&1 || fail "verify after a rebuild: $(cat "$WORK/verify.log")"
cid=$(damage kernel)
expect_fail "verify finds the damaged kernel chunk" "chunk $cid: corrupt" "$VMHPC" image verify
"$VMHPC" image import "$WORK/small1.tar" >/dev/null
"$VMHPC" image verify >"$WORK/verify.log" 2>&1 || fail "verify after a re-import: $(cat "$WORK/verify.log")"
ok "a damaged chunk is written again by a rebuild and by a re-import; verify is clean"

# Item 12: hostile manifests.
rewrite_export() { # $1 = in, $2 = out, $3 = python code changing the dict m
	python3 - "$1" "$2" "$3" <<'PY'
import io, json, sys, tarfile
src, dst, code = sys.argv[1:4]
with tarfile.open(src) as tin, tarfile.open(dst, "w", format=tarfile.PAX_FORMAT) as tout:
    for member in tin.getmembers():
        data = tin.extractfile(member).read()
        if member.name == "manifest.json":
            m = json.loads(data)
            exec(code)
            data = json.dumps(m).encode()
        member.size = len(data)
        tout.addfile(member, io.BytesIO(data))
PY
}
rewrite_export "$WORK/small1.tar" "$WORK/v100000.tar" 'm["version"] = 100000; m["name"] = "huge"'
"$VMHPC" image import "$WORK/v100000.tar" | grep -qx "imported huge:1" || fail "version 100000 kept its number"
sed 's/^name = small$/name = huge/' "$WORK/small.ini" >"$WORK/huge.ini"
build "$WORK/huge.ini" | grep -q "built huge:2" || fail "a build after a version-100000 import"
ok "an imported \"version\": 100000 is renumbered, and later builds still get numbers"

rewrite_export "$WORK/small1.tar" "$WORK/ctrl.tar" 'm["owner"] = "evil\x1b]0;pwned\x07\x1b[2J"; m["name"] = "ctrl"'
expect_fail "control characters in an imported manifest" "control characters" "$VMHPC" image import "$WORK/ctrl.tar"
"$VMHPC" image import "$WORK/ctrl.tar" 2>&1 | grep -q $'\x1b' && fail "an escape reached the terminal"
mkdir -p "$VMHPC_STORE/manifests/ctrl"
python3 - "$VMHPC_STORE" <<'PY'
import json, os, sys
store = sys.argv[1]
m = json.load(open(os.path.join(store, "manifests/small/1.json")))
m["name"], m["version"] = "ctrl", 1
m["metadata"]["description"] = "about\x1b[31mred\x9b"
open(os.path.join(store, "manifests/ctrl/1.json"), "w").write(json.dumps(m))
PY
"$VMHPC" image show ctrl:1 >"$WORK/show.log" 2>&1 && fail "show of a manifest with control characters succeeded"
grep -q $'\x1b' "$WORK/show.log" && fail "show printed an escape: $(cat -v "$WORK/show.log")"
grep -q 'control characters' "$WORK/show.log" || fail "show does not say why: $(cat "$WORK/show.log")"
"$VMHPC" image rm ctrl:1 >/dev/null
ok "control characters are refused at import and never printed by show"

for kind in fifo dir link; do
	v="$VMHPC_STORE/manifests/small/50.json"
	case $kind in
	fifo) mkfifo "$v" ;;
	dir) mkdir -p "$v/inner" ;;
	link) ln -s 1.json "$v" ;;
	esac
	timeout 60 "$VMHPC" image list >"$WORK/list.log" 2>&1 || fail "list with a $kind manifest: $(cat "$WORK/list.log")"
	grep -q "small .*50 .*damaged: .*not a regular file" "$WORK/list.log" || fail "list does not flag the $kind: $(cat "$WORK/list.log")"
	expect_fail "verify with a $kind as small:50" "small:50: " timeout 60 "$VMHPC" image verify
	expect_fail "gc with a $kind as small:50" "gc refused" timeout 60 "$VMHPC" image gc
	expect_fail "show of a $kind as small:50" "not a regular file" timeout 60 "$VMHPC" image show small:50
	"$VMHPC" image rm small:50 >/dev/null
	[ ! -e "$v" ] && [ ! -L "$v" ] || fail "rm left the $kind"
	rm -f "$VMHPC_STORE/manifests/small/50.removed"
done
"$VMHPC" image verify >/dev/null || fail "verify after removing the special manifests"
ok "a fifo, directory or link named N.json is a damaged version: reported at once, removable"

# Item 11: concurrent builds and gc do not remove each other's work directories.
before=$(versions | grep -c '^small:')
pids=()
for i in $(seq 12); do
	timeout 900 "$VMHPC" image build --level 1 "$WORK/small.ini" >"$WORK/c$i.log" 2>&1 &
	pids+=($!)
done
sleep 1
"$VMHPC" image gc >"$WORK/gc.log" 2>&1 || fail "gc during builds: $(cat "$WORK/gc.log")"
for i in $(seq 12); do
	wait "${pids[$((i - 1))]}" || fail "concurrent build $i of 12 failed: $(cat "$WORK/c$i.log")"
done
[ "$(versions | grep -c '^small:')" -eq $((before + 12)) ] || fail "concurrent builds: $(versions | tr '\n' ' ')"
"$VMHPC" image verify >/dev/null || fail "verify after concurrent builds"
no_leftovers "concurrent builds"
ok "12 concurrent builds (and a gc among them) all succeed"

# Item 13: an import into a full store says what happened and leaves no half file.
size=$(($(stat -c %s "$WORK/small1.tar") / 2 / 1024))
mnt="$WORK/full"
mkdir -p "$mnt"
mount -t tmpfs -o size=${size}k vmhpc-test "$mnt"
on_exit "umount '$mnt'"
export VMHPC_STORE="$mnt/store"
out=$("$VMHPC" image import "$WORK/small1.tar" 2>&1) && fail "an import into a full store succeeded"
case "$out" in
*"no space left on the device holding the store"*"small:1 was not added"*"chunks it stored are complete"*) ;;
*) fail "full-store import message: $out" ;;
esac
case "$out" in *"nothing was added"*) fail "the message says nothing was added: $out" ;; esac
ok "full store: $(echo "$out" | cut -c1-160)"
[ -z "$(versions)" ] || fail "a version appeared: $(versions)"
no_leftovers "full store import"
"$VMHPC" image verify >/dev/null || fail "verify after a full-store import"
ok "a full-store import leaves only whole chunks (verify is clean) and no temp files"
umount "$mnt"
finish
