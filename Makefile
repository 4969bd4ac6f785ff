# The README's two commands. Both install what is missing from Debian's packages first.
#   make demo   builds the default image and shows it (the main job)
#   make test   builds everything and runs every test (what CI runs)

.PHONY: demo test deps build bench clean

deps:
	./scripts/install-deps.sh

build: deps
	@[ -d build/meson-info ] || meson setup build
	ninja -C build

demo: build
	./build/vmhpc image build examples/tiny-mpi.ini
	./build/vmhpc image list
	./build/vmhpc image show tiny-mpi

test: deps
	./scripts/test-all.sh

bench: build
	./bench/run-store.sh

clean:
	rm -rf build build-asan
