#!/usr/bin/env bash
# Builds the default image from the shipped spec and checks it with vmhpc's own tools and
# with independent readers (debugfs, e2fsck, cpio); then dedup of a second version,
# export/import, rm/gc, and damage that verify must find.
. "$(dirname "$0")/lib.sh"
set -e

spec="$VMHPC_SOURCE_ROOT/examples/tiny-mpi.ini"

"$VMHPC" image build "$spec" >"$WORK/build1.txt"
grep -q "built tiny-mpi:1" "$WORK/build1.txt" || fail "build did not report tiny-mpi:1"
ok "built the default image"
cat "$WORK/build1.txt"

[ "$(versions)" = "tiny-mpi:1" ] || fail "list shows $(versions)"
"$VMHPC" image list | grep -Eq '^tiny-mpi +1 ' || fail "table lacks tiny-mpi 1"
ok "list shows tiny-mpi:1"

stored1=$("$VMHPC" image list --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["stored_bytes"])')
[ "$stored1" -le 30000000 ] || fail "tiny-mpi stores $stored1 bytes, over the 30 MB goal"
ok "tiny-mpi stores $stored1 bytes (<= 30 MB)"

"$VMHPC" image show tiny-mpi >"$WORK/show.txt"
grep -q "kernel  *6\.1\." "$WORK/show.txt" || fail "show lacks the kernel release"
grep -q "mpich  *4\." "$WORK/show.txt" || fail "show lacks the mpich package version"
grep -q "libmpich.so.12 .*libmpich.so.12" "$WORK/show.txt" || fail "show lacks libmpich"
"$VMHPC" image show --json tiny-mpi:1 | python3 -c '
import json, sys
m = json.load(sys.stdin)
md = m["metadata"]
assert m["name"] == "tiny-mpi" and m["version"] == 1
assert md["arch"] == "x86_64" and md["os"] == "tiny"
assert md["kernel_release"].startswith("6.1."), md["kernel_release"]
assert md["kernel_package"] == "linux-source-6.1", md["kernel_package"]
assert md["kernel_boot"] == "pvh", md["kernel_boot"]
assert "libmpich12" in md["packages"] and "libc6" in md["packages"]
assert "libucp.so.0" in md["libraries"], md["libraries"].keys()
for p in ("kernel", "initramfs", "root", "index"):
    assert m["parts"][p]["size_bytes"] > 0, p
' || fail "show --json is missing fields"
ok "show and show --json carry the metadata"

"$VMHPC" image ls tiny-mpi /usr/bin >"$WORK/ls.txt"
grep -q ' /usr/bin/mpiexec.hydra  \[mpich 4' "$WORK/ls.txt" || fail "ls lacks mpiexec.hydra from mpich"
grep -q ' /usr/bin/busybox  \[busybox-static' "$WORK/ls.txt" || fail "ls lacks busybox"
grep -q ' /usr/bin/sh -> /usr/bin/busybox' "$WORK/ls.txt" || fail "ls lacks the sh applet link"
grep -q ' /usr/bin/vmhpc-exec  \[vmhpc\]' "$WORK/ls.txt" || fail "ls lacks vmhpc's own vmhpc-exec"
"$VMHPC" image ls --json tiny-mpi:1 /usr/lib/x86_64-linux-gnu | python3 -c '
import json, sys
entries = {e["path"]: e for e in json.load(sys.stdin)}
lib = entries["/usr/lib/x86_64-linux-gnu/libmpich.so.12.2.2"]
# The image ships the fixed libmpich that scripts/build-mpich.sh made (docs/mpi.md): a
# file of the spec, laid over the one from the package.
assert lib["size"] > 30_000_000 and lib["source"] == "spec", lib
assert entries["/usr/lib/x86_64-linux-gnu/libmpich.so.12"]["target"] == "libmpich.so.12.2.2"
assert any(p.startswith("/usr/lib/x86_64-linux-gnu/ucx/libuct_") for p in entries)
assert "/usr/lib/x86_64-linux-gnu/libc.so.6" in entries
' || fail "ls --json lacks the MPI libraries"
expect_fail "ls of a missing path" "has no /no/such" "$VMHPC" image ls tiny-mpi /no/such
ok "ls lists the root's files with their sources"

# Independent readers: e2fsprogs for the root, GNU cpio for the initramfs.
"$VMHPC" image cat tiny-mpi root -o "$WORK/root.ext4"
e2fsck -fn "$WORK/root.ext4" >/dev/null || fail "e2fsck finds errors in the root image"
debugfs -R 'stat /usr/lib/x86_64-linux-gnu/libmpich.so.12.2.2' "$WORK/root.ext4" 2>/dev/null |
	grep -q "Size: 4" || fail "debugfs does not find libmpich in the root"
debugfs -R 'ls -l /usr/bin' "$WORK/root.ext4" 2>/dev/null | grep -q mpiexec.hydra || fail "debugfs: no mpiexec.hydra"
debugfs -R 'stats' "$WORK/root.ext4" 2>/dev/null | grep -q 'Block size: *4096' || fail "root is not 4 KiB blocks (DAX needs them)"
debugfs -R 'stat /lib64' "$WORK/root.ext4" 2>/dev/null | grep -q 'Fast link dest: "usr/lib64"' || fail "no /lib64 link"
ok "e2fsck and debugfs read the root: 4 KiB blocks, libmpich, hydra, usr-merge links"

"$VMHPC" image cat tiny-mpi initramfs | zstd -dc >"$WORK/initrd.cpio"
cpio -t <"$WORK/initrd.cpio" 2>/dev/null >"$WORK/initrd.list"
grep -qx init "$WORK/initrd.list" || fail "initramfs lacks /init"
! grep -q '\.ko$' "$WORK/initrd.list" || fail "the default image's initramfs has modules; its kernel has all built in"
mkdir "$WORK/initrd" && (cd "$WORK/initrd" && cpio -id --quiet <"$WORK/initrd.cpio")
cmp "$WORK/initrd/init" "${VMHPC_INIT:-$(dirname "$VMHPC")/vmhpc-init}" || fail "/init is not vmhpc-init"
file "$WORK/initrd/init" 2>/dev/null | grep -q 'statically linked' || ldd "$WORK/initrd/init" 2>&1 | grep -q 'not a dynamic' || fail "vmhpc-init is not static"
ok "GNU cpio reads the initramfs: static /init, no modules (our kernel has them built in)"

# A Debian kernel package (lib.sh's small spec): its modules go in, in dependency order.
small_spec debkernel >"$WORK/debkernel.ini"
"$VMHPC" image build "$WORK/debkernel.ini" >/dev/null || fail "the Debian-kernel spec did not build"
"$VMHPC" image cat debkernel initramfs | zstd -dc >"$WORK/dk.cpio"
mkdir "$WORK/dk" && (cd "$WORK/dk" && cpio -id --quiet <"$WORK/dk.cpio")
grep -n libnvdimm "$WORK/dk/etc/vmhpc/modules" | cut -d: -f1 >"$WORK/a"
grep -n nd_pmem "$WORK/dk/etc/vmhpc/modules" | cut -d: -f1 >"$WORK/b"
[ -n "$(cat "$WORK/a")" ] && [ -n "$(cat "$WORK/b")" ] || fail "the Debian-kernel initramfs lacks libnvdimm or nd_pmem"
[ "$(cat "$WORK/a")" -lt "$(cat "$WORK/b")" ] || fail "libnvdimm is not loaded before nd_pmem"
"$VMHPC" image rm debkernel:1 >/dev/null
ok "a Debian-kernel image: modules in its initramfs, in dependency order"

"$VMHPC" image verify >"$WORK/verify.txt" || fail "verify of a fresh store failed: $(cat "$WORK/verify.txt")"
grep -q ": 0 problems" "$WORK/verify.txt" || fail "verify: $(cat "$WORK/verify.txt")"
ok "verify re-hashes every chunk: $(tail -n 1 "$WORK/verify.txt")"

# A second version with one extra binary costs a small fraction of the first.
cp "$spec" "$WORK/tiny-mpi-2.ini"
sed -i 's|^binaries = /usr/bin/busybox|binaries = /usr/bin/mpichversion /usr/bin/busybox|' "$WORK/tiny-mpi-2.ini"
grep -q mpichversion "$WORK/tiny-mpi-2.ini" || fail "could not make the second spec"
"$VMHPC" image build "$WORK/tiny-mpi-2.ini" >/dev/null
"$VMHPC" image ls tiny-mpi:2 /usr/bin/mpichversion >/dev/null || fail "v2 lacks mpichversion"
"$VMHPC" image list --json | python3 -c '
import json, sys
v = {e["version"]: e for e in json.load(sys.stdin)}
added = v[2]["unique_bytes"]
ratio = added / v[1]["stored_bytes"]
print("v2 adds %d bytes = %.2f%% of v1" % (added, 100 * ratio))
assert ratio < 0.10, ratio
' || fail "the second version is not deduplicated"
ok "a second version with one more binary adds < 10 % of the first"

# Export and import into another store.
"$VMHPC" image export tiny-mpi:1 -o "$WORK/tiny.tar"
[ ! -e "$WORK/tiny.tar.partial" ] || fail "export left a partial file"
VMHPC_STORE="$WORK/store2" "$VMHPC" image import "$WORK/tiny.tar" | grep -q "imported tiny-mpi:1" || fail "import"
VMHPC_STORE="$WORK/store2" "$VMHPC" image verify >/dev/null || fail "verify after import"
VMHPC_STORE="$WORK/store2" "$VMHPC" image ls tiny-mpi /usr/bin/busybox >/dev/null || fail "ls after import"
VMHPC_STORE="$WORK/store2" "$VMHPC" image import <"$WORK/tiny.tar" | grep -q "imported tiny-mpi:1" || fail "re-import"
[ "$(VMHPC_STORE="$WORK/store2" versions)" = "tiny-mpi:1" ] || fail "re-import added a version"
VMHPC_STORE="$WORK/store2" "$VMHPC" image cat tiny-mpi root | cmp - "$WORK/root.ext4" || fail "imported root differs"
ok "export + import moves tiny-mpi:1 byte for byte; importing twice adds nothing"

head -c 100000 "$WORK/tiny.tar" >"$WORK/short.tar"
expect_fail "import of a truncated stream" "import:" env VMHPC_STORE="$WORK/store3" "$VMHPC" image import "$WORK/short.tar"
[ -z "$(VMHPC_STORE="$WORK/store3" versions)" ] || fail "truncated import left a version"

# rm + gc.
"$VMHPC" image rm tiny-mpi:2 >/dev/null
[ "$(versions)" = "tiny-mpi:1" ] || fail "rm left $(versions)"
"$VMHPC" image gc | tee "$WORK/gc.txt" | grep -Eq "removed [1-9][0-9]* unused chunks" || fail "gc freed nothing: $(cat "$WORK/gc.txt")"
"$VMHPC" image verify >/dev/null || fail "verify after gc"
"$VMHPC" image build "$spec" >"$WORK/build3.txt"
grep -q "built tiny-mpi:3" "$WORK/build3.txt" || fail "version after rm is not 3: $(cat "$WORK/build3.txt")"
ok "rm + gc free the removed version's chunks; version numbers stay monotonic"

# Damage: verify names every corrupt or missing chunk and what it breaks.
chunk=$(find "$VMHPC_STORE/chunks" -type f | sort | head -n 1)
id=$(basename "$chunk")
id=${id%%.*}
printf 'X' | dd of="$chunk" bs=1 seek=20 conv=notrunc status=none
other=$(find "$VMHPC_STORE/chunks" -type f | sort | sed -n 2p)
oid=$(basename "$other")
oid=${oid%%.*}
truncate -s 10 "$other"
if "$VMHPC" image verify >"$WORK/verify2.txt" 2>&1; then fail "verify passed a corrupt store"; fi
grep -q "chunk $id: corrupt; breaks tiny-mpi:" "$WORK/verify2.txt" || fail "verify did not name chunk $id: $(cat "$WORK/verify2.txt")"
grep -q "chunk $oid: corrupt" "$WORK/verify2.txt" || fail "verify did not name truncated chunk $oid"
rm -f "$other"
"$VMHPC" image verify >"$WORK/verify3.txt" 2>&1 || true
grep -q "chunk $oid: missing; breaks tiny-mpi:" "$WORK/verify3.txt" || fail "verify did not report the missing chunk: $(cat "$WORK/verify3.txt")"
ok "verify reports corrupt, truncated and missing chunks and the images they break"

[ -z "$(leftovers)" ] || fail "temp files left in the store: $(leftovers)"
ok "no temp files left in the store"
finish
