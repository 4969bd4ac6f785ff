#!/usr/bin/env bash
# The image manager's versions (docs/image-manager.md): a derived version (base =) shares its
# base's chunks; `vmhpc image diff`; `vmhpc image update` makes no version when nothing changed
# (builds are reproducible) and one when something did; ownership through sudo; the mistakes a
# derived spec can make. Matching is tested in image-match.sh.
. "$(dirname "$0")/lib.sh"
set -e

export VMHPC_CACHE="${VMHPC_CACHE:-/var/cache/vmhpc}"
cd "$WORK"
echo "first motd" >motd
small_spec base "files = motd:/etc/motd" >base.ini
printf '[image]\nname = fortran\nbase = base\n[root]\npackages = libgfortran5 libquadmath0 libgcc-s1\nbinaries = /usr/lib/x86_64-linux-gnu/libgfortran.so.5\nremove_files = /etc/motd\n' >derived.ini
"$VMHPC" image build --level 1 base.ini >/dev/null 2>&1 || fail "building base: $("$VMHPC" image build --level 1 base.ini 2>&1 | tail -3)"

# 1. A derived version: the base's spec plus its own, recorded; it shares the base's chunks.
"$VMHPC" image build --level 1 derived.ini >derived.out 2>derived.err || fail "derived: $(cat derived.err)"
"$VMHPC" image show --json fortran >fortran.json
python3 - fortran.json <<'PY' || fail "derived metadata: $(head -c 600 fortran.json)"
import json, sys
m = json.load(open(sys.argv[1]))["metadata"]
assert m["base"] == "base:1", m["base"]
spec = "\n".join(m["spec"])
assert "name = fortran" in spec and "busybox-static" in spec and "libgfortran5" in spec, spec
assert "/etc/motd" not in spec, spec
assert "libgfortran5" in m["packages"] and "busybox-static" in m["packages"]
PY
"$VMHPC" image ls fortran /etc/motd >/dev/null 2>&1 && fail "remove_files left /etc/motd in the derived version"
"$VMHPC" image ls fortran /usr/lib/x86_64-linux-gnu/libgfortran.so.5 >/dev/null || fail "no libgfortran in the derived version"
ok "a derived version takes its base's spec, adds and removes, and records both"

# 2. diff: packages, files, and the bytes a node holding the base fetches.
"$VMHPC" image diff base fortran >diff.out || fail "diff: $(cat diff.out)"
grep -q '^  + libgfortran5 ' diff.out || fail "diff: no package added: $(cat diff.out)"
grep -q '^  - /etc/motd ' diff.out || fail "diff: no file removed: $(cat diff.out)"
grep -q '^  + /usr/lib/x86_64-linux-gnu/libgfortran.so.5.0.0 ' diff.out || fail "diff: no file added: $(cat diff.out)"
fetch=$(sed -n 's/^bytes: .* (\([0-9.]*\)%)$/\1/p' diff.out)
[ -n "$fetch" ] || fail "diff: no byte line: $(cat diff.out)"
# The base's kernel, initramfs and root files are shared: what is new is about the added
# libraries (a few MB of a ~18 MB version), not a whole image.
python3 -c "import sys; sys.exit(0 if float('$fetch') < 35 else 1)" || fail "a node holding base fetches $fetch% of fortran"
"$VMHPC" image diff base base >same.out
grep -q "fetches 0 chunks" same.out || fail "diff of a version with itself: $(cat same.out)"
ok "image diff: packages, files, and $fetch% of the derived version's bytes to fetch"

# 3. update: nothing changed -> no new version; a host file changed -> a new version.
"$VMHPC" image update base >upd1.out 2>upd1.err || fail "update: $(cat upd1.err)"
grep -q "^base:1 is up to date" upd1.out || fail "update with nothing changed: $(cat upd1.out)"
[ "$(versions | grep -c '^base:')" -eq 1 ] || fail "update made a version though nothing changed: $(versions)"
echo "second motd" >motd
"$VMHPC" image update base >upd2.out 2>upd2.err || fail "update: $(cat upd2.err)"
grep -q "^updated base:1 -> base:2" upd2.out || fail "update after a change: $(cat upd2.out)"
"$VMHPC" image cat base root -o root.img
debugfs -R "cat /etc/motd" root.img 2>/dev/null | grep -q "second motd" || fail "base:2 lacks the new motd"
new=$(sed -n 's/^stored \(.*\) new of .*/\1/p' upd2.out)
ok "update: no version when nothing changed; base:2 when a file changed ($new new)"

# 4. A derived version is updated from its own recorded spec (the base's content included).
"$VMHPC" image update fortran >upd3.out 2>upd3.err || fail "update fortran: $(cat upd3.err)"
grep -q "^fortran:1 is up to date" upd3.out || fail "update of the derived version: $(cat upd3.out)"
ok "a derived version updates from its recorded spec"

# 5. Mistakes.
printf '[image]\nname = x\nbase = nosuch\n' >nobase.ini
expect_fail "a base that does not exist" "base nosuch: " "$VMHPC" image build nobase.ini
printf '[image]\nname = x\nbase = base:1\n[root]\nremove_packages = libfoo1\n' >norm.ini
expect_fail "a removal the base lacks" "remove_packages: libfoo1 is not among the packages of the base base:1" "$VMHPC" image build norm.ini
"$VMHPC" image rm base:1 >/dev/null
printf '[image]\nname = x\nbase = base:1\n' >gone.ini
expect_fail "a removed base" "base base:1: " "$VMHPC" image build gone.ini
expect_fail "update of a version that does not exist" "nosuch" "$VMHPC" image update nosuch
# A version from before specs were recorded: its manifest without them.
m="$VMHPC_STORE/manifests/base/2.json"
python3 - "$m" <<'PY'
import json, sys
p = sys.argv[1]
d = json.load(open(p))
del d["metadata"]["spec"]
json.dump(d, open(p, "w"))
PY
expect_fail "update of a version without a recorded spec" "built before vmhpc recorded specs" "$VMHPC" image update base:2
[ -z "$(leftovers)" ] || fail "left in the store: $(leftovers)"

# 6. Ownership: through sudo, a user removes only their own versions; root itself all.
nobody_uid=$(id -u nobody)
expect_fail "sudo for another user" "fortran:1 belongs to root, not to nobody" env SUDO_UID="$nobody_uid" SUDO_GID="$nobody_uid" "$VMHPC" image rm fortran:1
"$VMHPC" image rm fortran:1 >/dev/null || fail "root could not remove fortran:1"
finish
