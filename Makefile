# The README's two commands. Both install what is missing from Debian's packages first.
#   make demo   the main job: an MPI program across 2 small VMs on this machine
#   make test   builds everything and runs every test (what CI runs)

.PHONY: demo test deps build bench clean

deps:
	./scripts/install-deps.sh

build: deps
	@[ -d build/meson-info ] || meson setup build
	ninja -C build

# The job folder is shared into the VMs: the program and its result file live there.
# The first run builds the default image tiny-mpi (about a minute).
demo: build
	mkdir -p demo-job
	cp build/mpi-ring demo-job/ring
	cd demo-job && ../build/vmhpc run --vms 2 -- ./ring
	cat demo-job/ring-result.txt

test: deps
	./scripts/test-all.sh

bench: build
	./bench/run-store.sh

clean:
	rm -rf build build-asan demo-job
