"""python -m pyshim worker with a fault planted, for the tests that kill a worker between an
outside side effect and its record: before recording a refund Stripe made
(api.record_stripe_refund) it waits PAUSE_S seconds, time for the test to kill it there.

    python -m tests.e2e.fault_worker PAUSE_S   (the environment of python -m pyshim worker)
"""

from __future__ import annotations

import asyncio
import sys

from pyshim.worker import Worker, main

# The call that records a side effect already made (pyshim/db.py WORKER_QUERIES).
RECORDING_CALL = "record_stripe_refund"
COMMAND = [sys.executable, "-m", "tests.e2e.fault_worker"]


class PausingBeforeRecordWorker(Worker):
    def __init__(self, pause_s: float):
        super().__init__()
        self.pause_s = pause_s

    async def call(self, name: str, params: list, correlation_id: str | None = None):
        if name == RECORDING_CALL:
            await asyncio.sleep(self.pause_s)
        return await super().call(name, params, correlation_id)


if __name__ == "__main__":
    pause_s = float(sys.argv[1])
    sys.exit(main(sys.argv[2:], make_worker=lambda: PausingBeforeRecordWorker(pause_s)))
