# The README's two commands. Both install what is missing from Debian's packages first.
#   make demo   the main job: an MPI program across 2 small VMs on this machine
#   make test   builds everything and runs every test (what CI runs)

.PHONY: demo test deps mpich build bench clean

deps:
	./scripts/install-deps.sh

# The default image ships Debian's libmpich rebuilt with the upstream fix for MPI_Finalize
# hanging over TCP (docs/mpi.md). Cached in /var/cache/vmhpc/mpich: a few minutes the first
# time on a machine, nothing after.
mpich: deps
	./scripts/build-mpich.sh

build: deps
	@[ -d build/meson-info ] || meson setup build
	ninja -C build

# The job folder is shared into the VMs: the program and its result file live there.
# The first run builds the default image tiny-mpi (about a minute) and, the first time on a
# machine, its guest kernel from Debian's linux-source-6.1 (~5 min of 2 idle cores; cached
# in /var/cache/vmhpc/kernel, docs/kernel.md).
demo: build mpich
	mkdir -p demo-job
	cp build/mpi-ring demo-job/ring
	cd demo-job && ../build/vmhpc run --vms 2 -- ./ring
	cat demo-job/ring-result.txt

test: deps mpich
	./scripts/test-all.sh

bench: build
	./bench/run-store.sh

clean:
	rm -rf build build-asan demo-job
