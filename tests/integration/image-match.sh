#!/usr/bin/env bash
# The image manager's matching (`vmhpc image match`, docs/matching.md) over real versions in a
# store: what matches and in which order, why nothing matches (per version, and the closest),
# and the errors a mistyped expression gets. `vmhpc run --require` is tested in run-mpi.sh.
. "$(dirname "$0")/lib.sh"
set -e

export VMHPC_CACHE="${VMHPC_CACHE:-/var/cache/vmhpc}"
small_spec plain >"$WORK/plain.ini"
small_spec fortran "packages = libgfortran5" >"$WORK/fortran.ini"
"$VMHPC" image build --level 1 "$WORK/plain.ini" >/dev/null
"$VMHPC" image build --level 1 "$WORK/fortran.ini" >/dev/null
sleep 1 # a later creation time for the second version of plain
"$VMHPC" image build --level 1 "$WORK/plain.ini" >/dev/null
gfortran_version=$("$VMHPC" image show --json fortran | python3 -c 'import json,sys; print(json.load(sys.stdin)["metadata"]["packages"]["libgfortran5"])')
[ -n "$gfortran_version" ] || fail "no libgfortran5 in fortran's metadata"

match() { "$VMHPC" image match "$@"; }

# 1. What matches, best (newest) first.
out=$(match 'os == "tiny" && kernel >= "6.1"' | cut -f1)
[ "$out" = "$(printf 'plain:2\nfortran:1\nplain:1')" ] || fail "newest first: $out"
ok "three versions match os and kernel, newest first"
out=$(match 'has("libgfortran5")' | cut -f1)
[ "$out" = "fortran:1" ] || fail "has(libgfortran5): $out"
out=$(match "libgfortran5 >= \"$gfortran_version\" && libgfortran5 < \"$gfortran_version.1\"" | cut -f1)
[ "$out" = "fortran:1" ] || fail "package version range: $out"
out=$(match --name plain 'version >= 1' | cut -f1)
[ "$out" = "$(printf 'plain:2\nplain:1')" ] || fail "--name plain: $out"
out=$(match --rank smallest 'os == "tiny"' | head -n 1 | cut -f1)
case "$out" in plain:*) ;; *) fail "--rank smallest: $out first" ;; esac
out=$(match --rank libgfortran5 'os == "tiny"' | head -n 1 | cut -f1)
[ "$out" = "fortran:1" ] || fail "--rank libgfortran5: $out first"
ok "has(), package version ranges, --name and --rank pick the right versions"

# 2. Nothing matches: every version's failing clauses, then the closest; exit 1.
set +e
match 'has("libgfortran5") && kernel >= "7"' >"$WORK/none.out" 2>"$WORK/none.err"
code=$?
set -e
[ "$code" -eq 1 ] || fail "no match: exit $code"
grep -q '^vmhpc: no image version matches: has("libgfortran5") && kernel >= "7"' "$WORK/none.err" || fail "no match: $(cat "$WORK/none.err")"
grep -q '^  plain:2 fails 2 clauses: has("libgfortran5") (neither a package, a library nor a binary of this version); kernel >= "7" (kernel is "6\.' "$WORK/none.err" ||
	fail "no per-version reason: $(cat "$WORK/none.err")"
grep -q '^vmhpc: the closest is fortran:1 (1 clause fails)' "$WORK/none.err" || fail "no closest: $(cat "$WORK/none.err")"
ok "no match: each version's failing clauses and the closest version (exit 1)"

# 3. Mistakes: a column and a caret, exit 2.
expect_fail "a type mismatch" 'column 10: kernel is a version string; write the number in quotes: "5"' match 'kernel > 5'
expect_fail "a single =" "column 4: '=' alone is not an operator: write '=='" match 'os = "tiny"'
expect_fail "an unknown name" "column 1: unknown name 'libgfortran6'" match 'libgfortran6 >= "1"'
expect_fail "an unclosed parenthesis" "expected ')' to close the '(' at column 1" match '(os == "tiny"'
expect_fail "a bad --rank" "--rank 'a b'" match --rank 'a b' 'os == "tiny"'
set +e
match 'os == "tiny" &&' >/dev/null 2>"$WORK/caret.err"
code=$?
set -e
[ "$code" -eq 2 ] || fail "syntax error: exit $code"
[ "$(sed -n 3p "$WORK/caret.err")" = "                 ^" ] || fail "no caret under column 16: $(cat -A "$WORK/caret.err")"
ok "a syntax error shows the expression with a caret at the column (exit 2)"

# 4. An empty store has nothing to match: said so, with the command that builds one.
VMHPC_STORE="$WORK/empty" expect_fail "an empty store" "holds no image versions to match; build one" match 'os == "tiny"'
finish
