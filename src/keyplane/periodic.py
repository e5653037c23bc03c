"""Background work that repeats: one helper for "run this every N seconds", and one backoff.

A :class:`Periodic` is a named asyncio task that awaits its step every ``interval`` seconds. A step
that raises is logged (the first failure, then every 20th, never with the secret-bearing exception
text beyond its first line) and retried after :func:`backoff`; the first success after failures says
so. ``stop`` cancels it cleanly, and optionally runs the step once more (a last flush).

:func:`cancel_and_wait` stops any background task for good: on Python 3.11 a cancellation that meets an inner
``asyncio.wait_for`` whose awaitable just finished is swallowed, and a loop that lost it runs on, so that a plain
``task.cancel(); await task`` hung keyplane's shutdown (seen in the test suite under load: the snapshot
refresher went on polling while the lifespan waited for it).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger("keyplane")


async def cancel_and_wait(task: asyncio.Task[object] | asyncio.Task[None] | None, again: float = 0.5) -> None:
    """Cancel ``task`` and wait until it has ended, cancelling it again every ``again`` seconds in case a
    cancellation was swallowed; what it ends with is consumed (an exception is logged, not raised: a stop goes
    on with the rest of the shutdown)."""
    if task is None:
        return
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=again)
    if not task.cancelled() and (e := task.exception()) is not None:  # retrieved, and said
        log.warning("background task %s ended with %s: %s", task.get_name(), type(e).__name__, str(e)[:200])


def backoff(failures: int, base: float, cap: float = 30.0) -> float:
    """Seconds to wait after ``failures`` consecutive failures: ``base`` doubled per failure, at most ``cap``
    (and never less than ``base``)."""
    if failures <= 0:
        return base
    return max(base, min(cap, base * 2.0 ** min(failures, 32)))


class Periodic:
    """``step`` every ``interval`` seconds in a task of its own (first after ``first_delay``, default one
    interval). Failures back off up to ``max(cap, interval)``."""

    def __init__(
        self,
        name: str,
        step: Callable[[], Awaitable[object]],
        interval: float,
        *,
        first_delay: float | None = None,
        cap: float = 30.0,
        level: int = logging.WARNING,
    ) -> None:
        self.name = name
        self.step = step
        self.interval = interval
        self.first_delay = interval if first_delay is None else first_delay
        self.cap = max(cap, interval)
        self.level = level
        self.failures = 0
        self.runs = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> Periodic:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=self.name)
        return self

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def run_once(self) -> bool:
        """One step now, failures logged and counted; True when it succeeded."""
        try:
            await self.step()
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self.failures += 1
            if self.failures == 1 or self.failures % 20 == 0:
                first_line = str(e).splitlines()[0][:200] if str(e) else ""
                log.log(
                    self.level,
                    "%s failed (%s%s); retrying in %.0f s (failure %d)",
                    self.name,
                    type(e).__name__,
                    f": {first_line}" if first_line else "",
                    backoff(self.failures, self.interval, self.cap),
                    self.failures,
                )
            return False
        finally:
            self.runs += 1
        if self.failures:
            log.info("%s works again after %d failure(s)", self.name, self.failures)
            self.failures = 0
        return True

    async def _run(self) -> None:
        await asyncio.sleep(self.first_delay)
        while True:
            await self.run_once()
            await asyncio.sleep(backoff(self.failures, self.interval, self.cap))

    async def stop(self, final_step: bool = False) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)
        if final_step:
            await self.run_once()
