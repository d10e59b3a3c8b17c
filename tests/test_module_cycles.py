"""The module-cycle check of `make lint` (scripts/check_cycles.py): it passes on the project
and fails, naming the cycle, when two modules use each other."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "check_cycles.py"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=60)


def test_the_project_has_no_module_cycle() -> None:
    result = run("--rust", str(ROOT / "rust/core/src"), "--rust", str(ROOT / "rust/py/src"), "--python", str(ROOT / "python/ego"))
    assert result.returncode == 0, result.stdout


def test_a_rust_cycle_fails_and_is_named(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "store").mkdir(parents=True)
    (src / "lib.rs").write_text("pub mod engine;\npub mod entity;\npub mod store;\n")
    (src / "engine.rs").write_text("use crate::entity::Entity;\npub struct Shared;\n")
    (src / "entity.rs").write_text("pub struct Entity(crate::engine::Shared);\n")
    (src / "store" / "mod.rs").write_text("pub mod memory;\npub trait Store {}\n")
    # A child naming its parent is fine; only a parent naming the child back closes a cycle.
    (src / "store" / "memory.rs").write_text("use super::Store;\n")
    result = run("--rust", str(src))
    assert result.returncode == 1
    assert "engine -> entity -> engine" in result.stdout
    assert "store" not in result.stdout


def test_a_python_cycle_fails_and_is_named(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from pkg.a import A\n")
    (pkg / "a.py").write_text("from pkg import b\nA = 1\n")
    (pkg / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.a import A\n")
    result = run("--python", str(pkg))
    assert result.returncode == 1
    assert "pkg.a -> pkg.b -> pkg.a" in result.stdout


def test_a_package_without_cycles_passes(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from pkg.a import A\n")
    (pkg / "a.py").write_text("from pkg.b import B\nA = B\n")
    (pkg / "b.py").write_text("B = 1\n")
    assert run("--python", str(pkg)).returncode == 0
