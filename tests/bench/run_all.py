"""make bench: every benchmark, the whole set twice (issue 14: two runs show the spread),
then each figure that has a goal beside the other run's.

    .venv/bin/python -m tests.bench.run_all [--runs N] [--only holds_bench,webhook_bench]

Each benchmark prints its own tables as it goes (its figures beside the baselines measured
in the same run); the summary at the end collects the lines they mark with
tests.bench.common.headline. A benchmark that fails (an invariant view not empty, a
delivery lost) makes the whole run fail after the others have run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from tests.bench.common import table

BENCHES = ("holds_bench", "bookings_bench", "ingest_bench", "webhook_bench", "queue_bench", "onsale_bench",
           "failover_bench", "cache_bench", "console_bench")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--only", default="", help="comma-separated bench modules (default: all)")
    args = parser.parse_args()
    benches = [b for b in args.only.split(",") if b] or list(BENCHES)
    figures: dict[str, dict] = {}  # figure -> {"goal": ..., "runs": [(shown, met)]}
    failed = []
    for run in range(1, args.runs + 1):
        for bench in benches:
            print(f"\n===== run {run} of {args.runs}: tests.bench.{bench} ({time.strftime('%H:%M:%S')}) =====", flush=True)
            with tempfile.NamedTemporaryFile("r", suffix=".jsonl") as summary:
                code = subprocess.call([sys.executable, "-m", f"tests.bench.{bench}"],
                                       env=dict(os.environ, BENCH_SUMMARY=summary.name))
                for line in summary.read().splitlines():
                    h = json.loads(line)
                    entry = figures.setdefault(h["figure"], {"goal": h["goal"], "runs": {}})
                    entry["runs"][run] = (h["shown"], h["met"])
            if code != 0:
                failed.append(f"{bench} (run {run}, exit {code})")
    table(f"goals, {args.runs} runs of make bench (load average now {' '.join(f'{x:.1f}' for x in os.getloadavg())})",
          ["figure", "goal", *(f"run {r}" for r in range(1, args.runs + 1)), "met in every run"],
          [[name, e["goal"], *(e["runs"].get(r, ("-", False))[0] for r in range(1, args.runs + 1)),
            "yes" if all(e["runs"].get(r, ("-", False))[1] for r in range(1, args.runs + 1)) else "NO"]
           for name, e in figures.items()])
    if failed:
        print("\nfailed: " + ", ".join(failed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
