#!/usr/bin/env bash
# Installs, from Debian's packages, everything vmhpc needs to build, test and run.
# Idempotent: packages already present are left alone and no network is used.
set -euo pipefail

packages=(
  # build
  build-essential meson ninja-build pkg-config clang-format
  libssl-dev libzstd-dev libjansson-dev libarchive-dev libseccomp-dev libsqlite3-dev libcmocka-dev
  libcurl4-openssl-dev
  # image builder
  dpkg-dev e2fsprogs erofs-utils kmod cpio zstd busybox-static
  # the guest kernel of our own (vmhpc kernel build, docs/kernel.md): Debian's source and
  # what its build needs (binutils' readelf checks the PVH note)
  linux-source-6.1 bc bison flex libelf-dev xz-utils binutils
  # decompressors of Debian bzImage payloads (the PVH vmlinux is extracted from them)
  lz4 gzip bzip2
  # guests and MPI
  qemu-system-x86 qemu-utils mpich libmpich-dev iproute2
  # the UCX transport over the shared-memory channel (scripts/build-uct-ivshmem.sh) and its
  # host test (ucx_info, ucx_perftest)
  libucx-dev ucx-utils dpkg-dev
  # Fortran MPI programs (mpif90) in tests/integration/own-program.sh
  gfortran
  # Open MPI images (examples/openmpi.ini) and programs for them (mpicc.openmpi)
  openmpi-bin libopenmpi-dev
  # the tests' own tools
  python3 file procps
  # a real OCI registry for the push/pull tests, htpasswd for its auth, openssl for its
  # tokens, skopeo as an independent OCI client
  docker-registry apache2-utils openssl skopeo
  # the node daemon: MUNGE authenticates peers (libmunge, and munged in the cluster tests);
  # tc (iproute2) shapes links in bench/distribution.sh
  munge libmunge-dev
  # the Slurm tier (docs/slurm.md): the SPANK plugin builds against libslurm-dev's
  # slurm/spank.h; tests/cluster/slurm.sh runs a real slurmctld and slurmds (nsenter and
  # unshare from util-linux)
  slurm-wlm slurmctld slurmd slurm-client libslurm-dev util-linux
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done

if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps: missing Debian packages: ${missing[*]}" >&2
    echo "install-deps: run as root, or: sudo apt-get install ${missing[*]}" >&2
    exit 1
  fi
  echo "install-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# Open MPI's alternatives outrank MPICH's (50 against 40): with both installed, plain mpicc,
# mpirun and <mpi.h> would become Open MPI's. The default image is MPICH, so they stay MPICH's;
# Open MPI is there as mpicc.openmpi and mpirun.openmpi (docs/mpi.md).
if [ "$(id -u)" -eq 0 ] && [ -e /usr/bin/mpicc.mpich ]; then
  update-alternatives --quiet --set mpi /usr/bin/mpicc.mpich
  update-alternatives --quiet --set mpirun /usr/bin/mpirun.mpich
  [ -d /usr/include/x86_64-linux-gnu/mpich ] &&
    update-alternatives --quiet --set mpi-x86_64-linux-gnu /usr/include/x86_64-linux-gnu/mpich
fi

# The image builder downloads packages with apt-get download: it needs package lists.
if [ "$(id -u)" -eq 0 ] && ! ls /var/lib/apt/lists/*_Packages* >/dev/null 2>&1; then
  apt-get update -q
fi
