# The stable interface: every workflow is one of these targets. CI runs `make test`.
.PHONY: test demo build bench soak setup lint

test:
	scripts/test.sh

demo:
	scripts/demo.sh

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
