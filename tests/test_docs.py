"""The examples of the documentation pages run as written (on the bank example's domain)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def blocks(page: str) -> str:
    text = (ROOT / "docs" / page).read_text()
    found = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert found, f"no python example in {page}"
    return "\n\n".join(found)


@pytest.mark.parametrize("page", ["testkit.md", "observability.md", "sagas.md"])
def test_the_examples_of_a_page_run(page: str, tmp_path: Path) -> None:
    code = blocks(page)
    script = tmp_path / f"test_{page.removesuffix('.md')}_examples.py"
    script.write_text(code)
    path = [str(ROOT / "examples" / "bank"), str(ROOT / "examples" / "transfers"), str(ROOT / "tests")]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(path))
    if "def test_" in code:
        # Pages with tests run under pytest, so their fixtures (the ego plugin's) work.
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(script)]
    else:
        command = [sys.executable, str(script)]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    if "def test_" in code:
        passed = re.search(r"(\d+) passed", result.stdout)
        assert passed and int(passed.group(1)) == code.count("\ndef test_") + code.startswith("def test_"), result.stdout
