"""The Python work ego adds per published record, without a broker: a journal of 50,000 bank
events on a memory store, handed to the publisher runner (render + Record per event) in
batches of 1,000 with a publisher that acknowledges at once. Prints the best of 7 runs in
microseconds per record; compare two builds by running it in each checkout alternately.

    python benches/publish_overhead.py [--events 50000] [--runs 7]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from publishers import journal  # noqa: E402

from ego.publishers.runner import PublisherRunner  # noqa: E402


class Null:
    def publish(self, records: object) -> None:
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    engine, records = journal(args.events)
    sources = [r.source for r in records]
    best = float("inf")
    for _ in range(args.runs):
        runner = PublisherRunner(Null(), "null")
        started = time.perf_counter()
        for i in range(0, len(sources), 1000):
            runner(sources[i : i + 1000])
        best = min(best, time.perf_counter() - started)
    engine.stop()
    print(f"runner + render per record: {best / len(sources) * 1e6:.2f} us (best of {args.runs}, {len(sources):,} events)")


if __name__ == "__main__":
    main()
