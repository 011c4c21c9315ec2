"""pyshim.batching.GroupCommit on its own: who goes together, and who gets which answer."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from pyshim.batching import GroupCommit
from pyshim.settings import ConfigError, Settings


class Recorder:
    """run_batch / run_one that record their calls; the batch fails as told."""

    def __init__(self, batch_error: BaseException | None = None):
        self.batch_error = batch_error
        self.batches: list[list[int]] = []
        self.ones: list[int] = []
        self.in_flight = self.most_in_flight = 0

    async def run_batch(self, items):
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            self.batches.append(list(items))
            await asyncio.sleep(0.01)
            if self.batch_error is not None:
                raise self.batch_error
            return [item * 10 for item in items]
        finally:
            self.in_flight -= 1

    async def run_one(self, item):
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            self.ones.append(item)
            await asyncio.sleep(0.01)
            if item == 13:
                raise ValueError("thirteen")
            return item * 10
        finally:
            self.in_flight -= 1


def run(recorder: Recorder, items, *, max_size=8, concurrency=2):
    async def main():
        group = GroupCommit(recorder.run_batch, recorder.run_one, max_size=max_size, concurrency=concurrency)
        return await asyncio.gather(*(group.submit(i) for i in items), return_exceptions=True)
    return asyncio.run(main())


def test_requests_that_arrive_together_share_batches_within_the_limits():
    recorder = Recorder()
    results = run(recorder, range(40), max_size=8, concurrency=2)
    assert results == [i * 10 for i in range(40)]
    # All forty were queued before a slot ran: five batches of eight, two at a time.
    assert recorder.ones == []
    assert recorder.batches == [list(range(i, i + 8)) for i in range(0, 40, 8)]
    assert recorder.most_in_flight == 2


def test_a_lone_request_goes_at_once_and_alone():
    recorder = Recorder()
    assert run(recorder, [7]) == [70]
    assert (recorder.ones, recorder.batches) == ([7], [])


def test_a_failed_batch_is_run_one_at_a_time_and_each_gets_its_own_answer():
    recorder = Recorder(batch_error=psycopg.errors.RaiseException("one bad event"))
    results = run(recorder, [1, 2, 13, 4, 5, 6], max_size=8, concurrency=1)
    assert results[:2] == [10, 20] and results[3:] == [40, 50, 60]
    assert isinstance(results[2], ValueError)
    assert recorder.batches == [[1, 2, 13, 4, 5, 6]]
    assert recorder.ones == [1, 2, 13, 4, 5, 6]


@pytest.mark.parametrize("error", [psycopg.OperationalError("connection refused")], ids=["unreachable"])
def test_an_unreachable_database_fails_the_whole_batch_without_retrying_each(error):
    recorder = Recorder(batch_error=error)
    results = run(recorder, [1, 2, 3, 4], max_size=8, concurrency=1)
    assert all(r is error for r in results)
    assert (recorder.batches, recorder.ones) == ([[1, 2, 3, 4]], [])


def test_limits_below_one_are_refused():
    with pytest.raises(ValueError):
        GroupCommit(Recorder().run_batch, Recorder().run_one, max_size=0, concurrency=1)


@pytest.mark.parametrize("name, value", [("WEBHOOK_BATCH_CONCURRENCY", "0"), ("WEBHOOK_BATCH_MAX", "101"),
                                         ("WEBHOOK_BATCH_MAX", "eight")])
def test_batch_settings_out_of_range_are_refused_by_name(name, value):
    env = {"DATABASE_URL": "postgresql://127.0.0.1:1/x", "STRIPE_WEBHOOK_SECRET": "whsec_x", name: value}
    with pytest.raises(ConfigError, match=name):
        Settings.from_env(env)
    assert Settings.from_env({**env, name: "3"}).__getattribute__(name.lower()) == 3
