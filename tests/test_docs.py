"""The examples of the documentation pages run as written: a page's python blocks, one after
the other, as one program (on the domains of the examples/ folder)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: Runs a page's program as `python -m asyncio` would: top-level `await` allowed.
RUNNER = """
import ast, asyncio, inspect, sys
path = sys.argv[1]
with open(path) as f:
    code = compile(f.read(), path, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
result = eval(code, {"__name__": "__main__"})
if inspect.iscoroutine(result):
    asyncio.run(result)
"""


def blocks(page: str) -> str:
    text = (ROOT / "docs" / page).read_text()
    found = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert found, f"no python example in {page}"
    return "\n\n".join(found)


@pytest.mark.parametrize("page", ["guide.md", "stores.md", "projections.md", "testkit.md", "observability.md", "sagas.md"])
def test_the_examples_of_a_page_run(page: str, tmp_path: Path) -> None:
    code = blocks(page)
    script = tmp_path / f"test_{page.removesuffix('.md')}_examples.py"
    script.write_text(code)
    path = [
        ROOT / "examples" / "bank",
        ROOT / "examples" / "sqlite_store",
        ROOT / "examples" / "upcasting",
        ROOT / "examples" / "transfers",
        ROOT / "tests",
    ]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(map(str, path)))
    tests = "def test_" in code or "class Test" in code
    if tests:
        # Pages with tests run under pytest, so their fixtures (the ego plugin's) work.
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(script)]
    else:
        command = [sys.executable, "-W", "error", "-c", RUNNER, str(script)]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    if tests:
        passed = re.search(r"(\d+) passed", result.stdout)
        assert passed, result.stdout
        if "class Test" not in code:
            assert int(passed.group(1)) == code.count("\ndef test_") + code.startswith("def test_"), result.stdout
