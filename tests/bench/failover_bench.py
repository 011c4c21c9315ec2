"""make bench (failover): about 10,000 chaos deliveries (30% duplicates, 20% reordered, 5%
concurrent copies; tests/chaos.py) through one shim on the formation's multi-host URL, the
primary's postmaster killed with SIGKILL when 40% are acknowledged, Patroni promoting the
synchronous standby. Prints deliveries, acknowledged, lost (must be 0), applied twice (must
be 0) and the seconds without a primary; exits non-zero when anything was lost or doubled.

    .venv/bin/python -m tests.bench.failover_bench [--deliveries N]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from tests import failover
from tests.bench.common import headline, table
from tests.ha import formation


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--deliveries", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=20261201)
    args = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, formation() as f:
        # The generator adds duplicates and copies to the events: aim a little below.
        result = failover.run(f, deliveries_target=int(args.deliveries * 0.96), seed=args.seed,
                              log=Path(tmp) / "shim.log")
        failover.check(f, result)
    table("failover under chaos deliveries (Patroni, synchronous standby, kill -9 of the primary's postmaster)",
          ["deliveries", "acknowledged", "lost", "applied twice", "s without a primary", "s to promotion",
           "answers"],
          [[f"{result.deliveries:,}", f"{result.acknowledged:,}", len(result.lost), result.applied_twice,
            f"{result.seconds_to_first_write:.2f}", f"{result.seconds_to_promotion:.2f}",
            " ".join(f"{k}:{v}" for k, v in sorted(result.statuses.items()))]])
    headline("failover: acknowledged deliveries lost", len(result.lost), 0, "", lower_is_better=True)
    headline("failover: deliveries applied twice", result.applied_twice, 0, "", lower_is_better=True)
    print("\n".join(result.timeline))
    print(f"(bookings wrong: {len(result.wrong)}, ops views not empty: {sorted(result.broken)}, "
          f"{time.perf_counter() - started:.0f} s in all)")
    if result.lost or result.applied_twice or result.wrong or result.broken:
        sys.exit(1)


if __name__ == "__main__":
    main()
