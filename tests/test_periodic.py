"""keyplane.periodic: the one helper for repeating background work, and the one backoff."""

from __future__ import annotations

import asyncio
import logging

import pytest

from keyplane.periodic import Periodic, backoff


def test_backoff_doubles_from_the_interval_up_to_the_cap():
    assert [backoff(f, 1.0) for f in range(7)] == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert backoff(3, 60.0, cap=30.0) == 60.0  # never below the interval itself
    assert backoff(10_000, 0.5) == 30.0  # no overflow


async def test_a_failing_step_is_logged_once_then_every_20th_and_recovery_is_said(caplog):
    calls = 0

    async def step() -> None:
        nonlocal calls
        calls += 1
        if calls <= 25:
            raise OSError("disk is away\nsecond line never logged")

    p = Periodic("test step", step, 1.0)
    caplog.set_level(logging.INFO, logger="keyplane")
    results = [await p.run_once() for _ in range(26)]
    assert results == [False] * 25 + [True]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and "OSError: disk is away" in warnings[0] and "second line" not in warnings[0]
    assert any("works again after 25 failure(s)" in r.getMessage() for r in caplog.records)
    assert p.failures == 0 and p.runs == 26


async def test_it_runs_every_interval_and_stops_cleanly_with_a_last_step():
    ran = asyncio.Event()
    seen: list[int] = []

    async def step() -> None:
        seen.append(len(seen))
        if len(seen) >= 3:
            ran.set()

    p = Periodic("fast", step, 0.001, first_delay=0).start()
    await asyncio.wait_for(ran.wait(), 5)
    await p.stop(final_step=True)
    n = len(seen)
    assert not p.running and n >= 4  # the steps, then the last one at stop
    await asyncio.sleep(0.01)
    assert len(seen) == n  # nothing runs after stop


async def test_last_used_times_survive_a_failed_flush(tmp_path):
    from keyplane.last_used import LastUsedRecorder

    class Down:
        def begin(self):
            raise ConnectionError("store away")

    r = LastUsedRecorder(Down(), 1.0)  # type: ignore[arg-type]
    r.touch("key_a", 100.0)
    with pytest.raises(ConnectionError):
        await r.flush()
    r.touch("key_b", 101.0)
    assert r.pending == {"key_a": 100, "key_b": 101}  # kept for the next flush
    r.pending["key_a"] = 200
    with pytest.raises(ConnectionError):
        await r.flush()
    assert r.pending["key_a"] == 200  # a newer use is never replaced by the older one


def test_a_task_that_swallows_a_cancellation_is_still_stopped() -> None:
    """Python 3.11's wait_for can swallow a cancellation; a loop that lost one ran on and hung keyplane's
    shutdown (the snapshot refresher). cancel_and_wait cancels again until the task has ended."""
    from keyplane.periodic import cancel_and_wait

    async def go() -> int:
        swallowed = 0

        async def stubborn() -> None:
            nonlocal swallowed
            while True:
                try:
                    await asyncio.sleep(3600)
                except asyncio.CancelledError:
                    if swallowed:
                        raise
                    swallowed += 1  # as wait_for on 3.11 when its awaitable just finished

        task = asyncio.get_running_loop().create_task(stubborn())
        await asyncio.sleep(0)
        await asyncio.wait_for(cancel_and_wait(task, again=0.01), 5)
        assert task.cancelled()
        return swallowed

    assert asyncio.run(go()) == 1
