"""Prints the latest criterion results (target/criterion) as a table of medians.

cargo bench -p ego-core --bench core && python benches/criterion_summary.py
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def main() -> None:
    target = Path(os.environ.get("CARGO_TARGET_DIR", Path.home() / ".cache" / "ego" / "target"))
    root = target / "criterion"
    rows = []
    for estimates in sorted(root.rglob("new/estimates.json")):
        bench = estimates.parent.parent
        meta = json.loads((estimates.parent / "benchmark.json").read_text())
        median_ns = json.loads(estimates.read_text())["median"]["point_estimate"]
        throughput = meta.get("throughput") or {}
        elements = throughput.get("Elements")
        rate = f"{elements / (median_ns / 1e9):,.0f}/s" if elements else ""
        rows.append((str(bench.relative_to(root)), median_ns, rate))
    print("| bench | median time | throughput |")
    print("|---|---|---|")
    for name, ns, rate in rows:
        t = f"{ns / 1e6:,.2f} ms" if ns >= 1e6 else f"{ns / 1e3:,.2f} us" if ns >= 1e3 else f"{ns:,.0f} ns"
        print(f"| {name} | {t} | {rate} |")


if __name__ == "__main__":
    main()
