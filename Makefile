# The stable interface: every workflow is one of these targets. CI runs `make test`.
.PHONY: test demo build bench setup lint

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
	command -v wrk >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null)
	scripts/build.sh
	scripts/bench.py $(BENCH_ARGS)
