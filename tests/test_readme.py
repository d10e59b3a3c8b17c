"""The README's quick start runs as written: in this environment, and in a fresh virtual
environment after `pip install .`."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def quickstart() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quick start", 1)[1]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert blocks, "no python block in the quick start"
    return blocks[0]


def run_quickstart(python: str, workdir: Path) -> str:
    script = workdir / "quickstart.py"
    script.write_text(quickstart())
    env = dict(os.environ, PYTHONPATH=str(ROOT / "examples" / "bank"))
    result = subprocess.run([python, str(script)], cwd=workdir, capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_quickstart_runs(tmp_path: Path) -> None:
    out = run_quickstart(sys.executable, tmp_path)
    assert out.splitlines() == ["150 2", "rejected: a credit must be positive"]
    # It wrote to RocksDB: running it again finds the account already there.
    assert (tmp_path / "data" / "quickstart").is_dir()


@pytest.mark.slow
@pytest.mark.timeout(3600)  # building the extension from source: the install alone may take 3000 s
def test_pip_install_in_a_fresh_venv_then_quickstart(tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = str(env_dir / "bin" / "python")
    # Reuse the compiled RocksDB of the other builds (the Makefile exports the same default).
    env = dict(os.environ)
    env.setdefault("CARGO_TARGET_DIR", str(Path.home() / ".cache" / "ego" / "target"))
    install = subprocess.run(
        [python, "-m", "pip", "install", "-q", str(ROOT)], capture_output=True, text=True, timeout=3000, env=env
    )
    assert install.returncode == 0, install.stderr[-3000:]
    work = tmp_path / "work"
    work.mkdir()
    out = run_quickstart(python, work)
    assert out.splitlines()[0] == "150 2"
