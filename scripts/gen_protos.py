"""Generates python/ego/v1/*_pb2.py(i) from protos/ with grpcio-tools' protoc.

The runtime-version check that new protoc releases put in generated code is removed, so the
package works with every protobuf runtime from 4.21 on (the builder API it uses exists since
3.20); tests/test_protos.py checks the committed files are up to date.

    python scripts/gen_protos.py [--check]
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# (directory of .proto files, directory the modules go to)
TREES = [
    (ROOT / "protos", ROOT / "python"),
    (ROOT / "examples" / "bank", ROOT / "examples" / "bank"),
    (ROOT / "examples" / "upcasting", ROOT / "examples" / "upcasting"),
    (ROOT / "examples" / "transfers", ROOT / "examples" / "transfers"),
    (ROOT / "examples" / "inventory", ROOT / "examples" / "inventory"),
    (ROOT / "tests" / "protos", ROOT / "tests"),
]


def generate(src: Path, out: Path) -> None:
    sources = sorted(p.relative_to(src).as_posix() for p in src.rglob("*.proto"))
    if not sources:
        return
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{src}", f"--python_out={out}", f"--pyi_out={out}", *sources],
        check=True,
    )
    for path in out.rglob("*_pb2.py"):
        text = path.read_text()
        text = re.sub(r"from google\.protobuf import runtime_version as _runtime_version\n", "", text)
        text = re.sub(r"_runtime_version\.ValidateProtobufRuntimeVersion\(\n(?:.*\n)*?\)\n", "", text)
        text = re.sub(r"# Protobuf Python Version: .*\n", "", text)
        path.write_text(text)


def main() -> int:
    check = "--check" in sys.argv
    stale = []
    for src, out in TREES:
        with tempfile.TemporaryDirectory() as tmp:
            generate(src, Path(tmp))
            for produced in Path(tmp).rglob("*_pb2.py*"):
                target = out / produced.relative_to(tmp)
                if check:
                    if not target.exists() or target.read_text() != produced.read_text():
                        stale.append(str(target.relative_to(ROOT)))
                else:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_text(produced.read_text())
    if stale:
        print("stale generated files:", *stale, sep="\n  ")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
