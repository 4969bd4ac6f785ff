#!/usr/bin/env bash
# The user's own program: `vmhpc run` refuses before booting a program whose libraries the
# image lacks, naming each library and its Debian package (a Fortran MPI program against
# tiny-mpi); `binaries = ./PROGRAM` builds an image that holds the program and its whole
# closure, found by name in the VMs; bad ./PROGRAM entries fail the build naming the line.
. "$(dirname "$0")/lib.sh"
set -e

[ "$(id -u)" -eq 0 ] || { echo "skip: needs root (taps, bridges, virtiofsd)"; exit 77; }
ring="${VMHPC_BUILD_ROOT:?}/mpi-ring"
[ -x "$ring" ] || fail "no $ring: build with libmpich-dev installed"
command -v mpif90 >/dev/null || fail "no mpif90: run scripts/install-deps.sh (libmpich-dev, gfortran)"

export VMHPC_CACHE="${VMHPC_CACHE:-/var/cache/vmhpc}"
"$VMHPC" image build --level 1 "$VMHPC_SOURCE_ROOT/examples/tiny-mpi.ini" >/dev/null
job="$WORK/job"
mkdir -p "$job"
chmod 0755 "$WORK" "$job"
use_own_run_dir
run() { (cd "$job" && "$VMHPC" run "$@"); }

# A Fortran MPI program, built with the host's mpif90.
cat >"$job/hello.f90" <<'EOF'
program hello
  use mpi
  implicit none
  integer :: ierr, rank, nranks
  call MPI_Init(ierr)
  call MPI_Comm_rank(MPI_COMM_WORLD, rank, ierr)
  call MPI_Comm_size(MPI_COMM_WORLD, nranks, ierr)
  print '(a,i0,a,i0)', 'fortran hello from rank ', rank, ' of ', nranks
  call MPI_Finalize(ierr)
end program hello
EOF
(cd "$job" && mpif90 -o hello hello.f90) || fail "mpif90 could not build hello.f90: install gfortran"
cp "$ring" "$job/ring"

# 1. Refused before booting, every missing library named with its package; no VM started.
start=$(date +%s)
run --vms 1 -- ./hello >"$WORK/f.out" 2>"$WORK/f.err" && code=0 || code=$?
[ "$code" -eq 1 ] || fail "a Fortran program on tiny-mpi: exit $code: $(cat "$WORK/f.err")"
grep -qF "./hello needs libgfortran.so.5, which image tiny-mpi:1 lacks; add package libgfortran5 to the image's packages" "$WORK/f.err" ||
	fail "no libgfortran5 hint: $(cat "$WORK/f.err")"
grep -qF "./hello needs libmpichfort.so.12, which image tiny-mpi:1 lacks; add package libmpich12" "$WORK/f.err" ||
	fail "no libmpich12 hint: $(cat "$WORK/f.err")"
grep -qF 'docs/image-spec.md "My program needs library X"' "$WORK/f.err" || fail "no docs pointer: $(cat "$WORK/f.err")"
grep -q "booting\|ready after" "$WORK/f.err" && fail "it booted: $(cat "$WORK/f.err")"
[ $(($(date +%s) - start)) -le 10 ] || fail "the refusal took $(($(date +%s) - start)) s"
[ -z "$(ls "$VMHPC_RUN_DIR/jobs" 2>/dev/null)" ] || fail "a job directory was made"
ok "./hello (Fortran MPI) on tiny-mpi: refused before booting (exit $code), libgfortran.so.5 -> libgfortran5, libmpichfort.so.12 -> libmpich12"

# 2. Bad ./PROGRAM entries: the build fails naming the spec line.
spec_dir="$WORK/specs"
mkdir -p "$spec_dir/adir"
printf 'data\n' >"$spec_dir/data"
bad() { small_spec bad "$1" >"$spec_dir/bad.ini"; }
bad "binaries = ./nope"
expect_fail "missing ./nope" "bad.ini:9: binaries ./nope ($spec_dir/nope): No such file or directory" \
	"$VMHPC" image build --level 1 "$spec_dir/bad.ini"
bad "binaries = ./adir"
expect_fail "a directory" "bad.ini:9: binaries ./adir ($spec_dir/adir) is a directory" \
	"$VMHPC" image build --level 1 "$spec_dir/bad.ini"
bad "binaries = ./data"
expect_fail "not executable" "bad.ini:9: binaries ./data ($spec_dir/data) is not executable" \
	"$VMHPC" image build --level 1 "$spec_dir/bad.ini"
chmod +x "$spec_dir/data"
expect_fail "not ELF" "bad.ini:9: binaries ./data ($spec_dir/data) is not an ELF program" \
	"$VMHPC" image build --level 1 "$spec_dir/bad.ini"
[ -z "$(leftovers)" ] || fail "failed builds left: $(leftovers)"

# 3. An image with the user's programs: tiny-mpi's spec plus the Fortran runtime's package
# and binaries = ./ring ./hello, in the job folder (relative to the spec's folder).
sed 's/^name = tiny-mpi$/name = own/' "$VMHPC_SOURCE_ROOT/examples/tiny-mpi.ini" >"$job/own.ini"
printf "packages = libgfortran5 libquadmath0 libgcc-s1\nbinaries = ./ring ./hello\n" >>"$job/own.ini"
"$VMHPC" image build --level 1 "$job/own.ini" >"$WORK/own.out" 2>&1 || fail "own image: $(tail -3 "$WORK/own.out")"
"$VMHPC" image ls own >"$WORK/ls.out"
grep -qE '^-rwx.* /usr/local/bin/ring  \[spec\]$' "$WORK/ls.out" || fail "no /usr/local/bin/ring: $(grep local "$WORK/ls.out")"
grep -qE ' /usr/local/bin/hello  \[spec\]$' "$WORK/ls.out" || fail "no /usr/local/bin/hello"
grep -qE ' /usr/lib/x86_64-linux-gnu/libgfortran.so.5.* \[libgfortran5 ' "$WORK/ls.out" || fail "libgfortran not from its package: $(grep gfortran "$WORK/ls.out")"
grep -qE ' /usr/lib/x86_64-linux-gnu/libmpichfort.so.12.* \[libmpich12 ' "$WORK/ls.out" || fail "libmpichfort not from libmpich12"
! grep -F '[host]' "$WORK/ls.out" || fail "files from the host in own:1 (docs/image-spec.md says none)"
ok "binaries = ./ring ./hello: /usr/local/bin/ring and hello in own:1, every library from its package"

rm -f "$job/ring" # by name from the image, not from the job folder
run --vms 1 --image own -- ring >"$WORK/ring.out" 2>"$WORK/ring.err" || fail "ring by name: $(tail -5 "$WORK/ring.err")"
grep -q "ring of 1 ranks: .*VERIFIED" "$WORK/ring.out" || fail "ring: $(cat "$WORK/ring.out")"
ok "vmhpc run --image own -- ring: found by name in the image, VERIFIED"

run --vms 1 --image own -- ./hello >"$WORK/hello.out" 2>"$WORK/hello.err" || fail "./hello on own: $(tail -5 "$WORK/hello.err")"
grep -q "fortran hello from rank 0 of 1" "$WORK/hello.out" || fail "hello: $(cat "$WORK/hello.out")"
nothing_left "own programs"
ok "./hello passes the check on own:1 and runs"
finish
