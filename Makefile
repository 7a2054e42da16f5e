# gpuledger — run `make` for the list of targets.
#
# One cargo profile (release) serves tests, the demo and benchmarks: RocksDB's
# C++ takes ~18 minutes to build on 2 cores, so it is built once, into a
# target directory outside the clone that later runs and CI reuse.

SHELL := /bin/bash
export CARGO_TARGET_DIR ?= /var/tmp/gpuledger-target
BIN := $(CARGO_TARGET_DIR)/release/gpuledger
TRACE ?= data/philly/philly.csv
DEMO_DIR ?= /var/tmp/gpuledger-demo
BENCH_DIR ?= /var/tmp/gpuledger-bench
CARGO := cargo

.DEFAULT_GOAL := help

.PHONY: help
help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}'

.PHONY: deps
deps: ## install what the build and tests need (Debian packages, the local broker, the local S3 server), if missing
	@scripts/install-deps.sh
	@scripts/broker.sh install
	@scripts/s3.sh install

.PHONY: build
build: deps ## build the gpuledger binary (release)
	$(CARGO) build --release --locked

.PHONY: test
test: deps ## run every test (unit, integration, property, golden), a fuzz smoke and the bench harness on a tiny workload
	$(CARGO) test --release --locked
	@$(MAKE) --no-print-directory fuzz-smoke
	@$(MAKE) --no-print-directory bench-smoke

.PHONY: fuzz-smoke
fuzz-smoke: ## every fuzz target for 12 s from its seed corpus (part of make test); a crash fails
	@scripts/fuzz.sh 12

.PHONY: fuzz
fuzz: ## every fuzz target for FUZZ_SECONDS (default 600) with cargo-afl; figures in docs/fuzzing.md
	@scripts/fuzz.sh $${FUZZ_SECONDS:-600}

.PHONY: demo
demo: build ## the Philly workload through the live processor on a local broker; prints balances
	@scripts/demo.sh "$(BIN)" "$(TRACE)" "$(DEMO_DIR)"

.PHONY: demo-batch
demo-batch: build ## the Philly workload in batch mode (no broker), audited; prints balances
	@scripts/demo-batch.sh "$(BIN)" "$(TRACE)" "$(DEMO_DIR)-batch"

.PHONY: bench-fold
bench-fold: build ## batch-mode fold throughput on the full Philly workload (3 runs)
	@scripts/bench-fold.sh "$(BIN)" "$(TRACE)" "$(BENCH_DIR)"

.PHONY: bench
bench: build ## gpuledger beside the broker's raw produce/consume, one run: bench/results/*.json + a table in docs/benchmarks.md
	$(CARGO) build --release --locked --examples
	python3 bench/run.py

.PHONY: bench-smoke
bench-smoke: build ## the whole bench harness on a tiny workload (part of make test; under 2 minutes)
	$(CARGO) build --release --locked --examples
	BENCH_EVENTS=20000 RUNS=1 LATENCY_RATE=2000 LATENCY_SECONDS=3 PEER_IDLE=3 QUERY_RATE=200 python3 bench/run.py --smoke

.PHONY: profile
profile: build ## perf profile of gpuledger run catching up on the Philly workload (JOBS=N for a part)
	@scripts/profile-run.sh "$(BIN)" "$(TRACE)" "$(BENCH_DIR)/profile"

.PHONY: bench-replay
bench-replay: build ## replay throughput beside the broker's raw consume rate, full Philly workload (3 runs)
	$(CARGO) build --release --locked --example raw_consume
	@scripts/bench-replay.sh "$(BIN)" "$(CARGO_TARGET_DIR)/release/examples/raw_consume" "$(TRACE)" "$(BENCH_DIR)/replay"

.PHONY: golden
golden: build ## regenerate tests/data/golden/expected (review the diff!)
	$(BIN) fold --rates tests/data/golden/rates.jsonl --deals tests/data/golden/deals.jsonl \
		--metering tests/data/golden/metering.jsonl --out tests/data/golden/expected --max-future 60d
	$(BIN) audit tests/data/golden/expected

.PHONY: completions
completions: build ## shell completions (bash, zsh, fish) and the man page into $(CARGO_TARGET_DIR)/share
	@mkdir -p $(CARGO_TARGET_DIR)/share/completions $(CARGO_TARGET_DIR)/share/man/man1
	@for shell in bash zsh fish; do $(BIN) completions $$shell > $(CARGO_TARGET_DIR)/share/completions/gpuledger.$$shell; done
	@$(BIN) manpage > $(CARGO_TARGET_DIR)/share/man/man1/gpuledger.1
	@echo "completions and man page in $(CARGO_TARGET_DIR)/share (man -l $(CARGO_TARGET_DIR)/share/man/man1/gpuledger.1)"

.PHONY: fmt
fmt: ## format the code
	$(CARGO) fmt

.PHONY: lint
lint: deps ## clippy with warnings as errors
	$(CARGO) clippy --release --all-targets -- -D warnings
