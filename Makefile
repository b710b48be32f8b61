# The stable interface: every workflow is one of these targets. CI runs `make test`.
.PHONY: test demo build bench soak setup lint fuzz wasm-soak

test:
	scripts/test.sh

# `make demo` runs the all-in-one module; `make demo LAYOUT=split` one filter per stage.
demo:
	LAYOUT=$(LAYOUT) scripts/demo.sh

build:
	scripts/setup.sh
	scripts/build.sh

setup:
	scripts/setup.sh

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

bench:
	scripts/setup.sh
	scripts/setup-bench.sh
	scripts/build.sh
	scripts/bench.py $(BENCH_ARGS)

# The soak under faults (scripts/soak.py; 10 minutes by default, SOAK_ARGS="--minutes 2").
soak:
	scripts/setup.sh
	scripts/build.sh
	scripts/soak.py $(SOAK_ARGS)

# Every fuzz target for FUZZ_SECONDS each (default 60), nightly + cargo-fuzz (installed here).
fuzz:
	FUZZ_SECONDS=$(FUZZ_SECONDS) FUZZ_TARGETS="$(FUZZ_TARGETS)" scripts/fuzz.sh

# The release .wasm modules under random input, long run (PORTCULLIS_WASM_SOAK inputs per module).
wasm-soak:
	WASM_ONLY=1 scripts/build.sh
	PORTCULLIS_WASM_SOAK=$${PORTCULLIS_WASM_SOAK:-20000} cargo test --release -p portcullis-host-tests --test random_inputs soak -- --ignored --nocapture

# Release artefacts in dist/portcullis-<version>/: the .wasm modules, their OCI image layouts,
# static edge and connector binaries, an SBOM, SHA256SUMS (docs/dist.md).
.PHONY: dist
dist:
	scripts/setup.sh
	scripts/setup-dist.sh
	scripts/dist.sh
