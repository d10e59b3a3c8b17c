"""Running measurements in fresh processes: the benchmarks that compare builds or sizes run
each measurement as a child process, which prints ``RESULT <json>`` on a line of its own, and
let the things compared take turns.

    value = result_of(sys.executable, "import json; print('RESULT', json.dumps(42))", what="the answer")
    found = take_turns(["baseline", "candidate"], 5, lambda name: result_of(pythons[name], code, what=name))
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path
from typing import Any, TypeVar

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")

HERE = Path(__file__).resolve().parent

#: The start of a child program that imports the workloads of this directory.
IMPORT_WORKLOADS = f"import sys, json; sys.path.insert(0, {str(HERE)!r}); "


def result_of(python: str, code: str, *, what: str, timeout: float = 1800, cwd: Path | None = HERE) -> Any:
    """Runs ``python -c code`` and returns the JSON value after its ``RESULT `` line; raises
    ``RuntimeError`` with the end of its stderr (naming ``what``) when there is none."""
    # A relative path names a python from where the benchmark was started, not from `cwd`.
    executable = str(Path(python).absolute()) if "/" in python else python
    out = subprocess.run([executable, "-c", code], capture_output=True, text=True, timeout=timeout, cwd=cwd)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"{what} failed with {python}:\n{out.stderr[-2000:]}")


def take_turns(names: Sequence[K], runs: int, measure: Callable[[K], T]) -> dict[K, list[T]]:
    """Calls ``measure(name)`` ``runs`` times for each name, in order on even runs and in
    reverse on odd ones, so drift of the machine (heat, other load) weighs on all; returns the
    results per name, in run order."""
    found: dict[K, list[T]] = {name: [] for name in names}
    for run in range(runs):
        for name in names if run % 2 == 0 else list(reversed(names)):
            found[name].append(measure(name))
    return found
