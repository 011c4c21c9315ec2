"""Group commit: requests that arrive while others are in the database go in together.

At most `concurrency` batches are in flight. A request that finds a free slot goes at
once, alone (no added wait when the shim is quiet); requests that arrive while every
slot is busy queue, and the next free slot takes up to `max_size` of them in one call:
one round trip, one transaction, one commit to wait for. If a batch fails for any
reason but an unreachable database, its items are run one at a time, so one bad item
answers only for itself.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

from .errors import is_unavailable

log = logging.getLogger("pyshim.batching")

Item = TypeVar("Item")


class GroupCommit(Generic[Item]):
    def __init__(
        self,
        run_batch: Callable[[Sequence[Item]], Awaitable[Sequence[Any]]],
        run_one: Callable[[Item], Awaitable[Any]],
        *,
        max_size: int,
        concurrency: int,
        observe: Callable[[int], None] | None = None,
    ):
        if max_size < 1 or concurrency < 1:
            raise ValueError("max_size and concurrency must be at least 1")
        self._run_batch, self._run_one = run_batch, run_one
        self.max_size, self.concurrency = max_size, concurrency
        self._observe = observe  # told the size of each batch taken (GET /metrics)
        self._queue: list[tuple[Item, asyncio.Future]] = []
        self._running = 0
        self._tasks: set[asyncio.Task] = set()

    async def submit(self, item: Item) -> Any:
        """The item's result, or the exception its run raised."""
        future = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        if self._running < self.concurrency:
            self._running += 1
            task = asyncio.create_task(self._drain())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await future

    async def _drain(self) -> None:
        try:
            while self._queue:
                taken = self._queue[: self.max_size]
                del self._queue[: self.max_size]
                await self._run(taken)
        finally:
            self._running -= 1

    async def _run(self, taken: list[tuple[Item, asyncio.Future]]) -> None:
        if self._observe is not None:
            self._observe(len(taken))
        if len(taken) == 1:
            await self._settle_one(*taken[0])
            return
        try:
            results = await self._run_batch([item for item, _ in taken])
        except BaseException as exc:  # noqa: BLE001 - every waiter must be answered
            if isinstance(exc, asyncio.CancelledError):
                for _, future in taken:
                    future.cancel()
                raise
            if is_unavailable(exc):
                for _, future in taken:
                    if not future.done():
                        future.set_exception(exc)
                return
            log.warning("a batch of %d failed (%s: %s); running its items one at a time",
                        len(taken), type(exc).__name__, getattr(getattr(exc, "diag", None), "message_primary", exc))
            for item, future in taken:
                await self._settle_one(item, future)
            return
        if len(results) != len(taken):
            error = RuntimeError(f"a batch of {len(taken)} returned {len(results)} results")
            for _, future in taken:
                if not future.done():
                    future.set_exception(error)
            return
        for (_, future), result in zip(taken, results):
            if not future.done():
                future.set_result(result)

    async def _settle_one(self, item: Item, future: asyncio.Future) -> None:
        try:
            result = await self._run_one(item)
        except asyncio.CancelledError:
            future.cancel()
            raise
        except BaseException as exc:  # noqa: BLE001 - the waiter re-raises it
            if not future.done():
                future.set_exception(exc)
        else:
            if not future.done():
                future.set_result(result)
