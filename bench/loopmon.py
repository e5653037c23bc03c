"""Servers of bench/compare.py, each with an event-loop stall monitor, run as child processes.

    python bench/loopmon.py bare --port N --loop-file F       the bare proxy (bare_proxy.py)
    python bench/loopmon.py keyplane --port N --loop-file F   keyplane's serving process (KEYPLANE_HOME set)

The monitor is a task that sleeps 10 ms and notes how late it wakes up: a callback that holds the
loop (a big SQL statement built on the loop, a snapshot reload, an fsync) shows up as lateness.
Once a second it appends "<unix time> <largest lateness in ms over that second>" to the loop file.
Cost: 100 wake-ups a second (a few µs each), the same in both servers.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

Message = MutableMapping[str, Any]
ASGIApp = Callable[[Message, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]]
TICK = 0.010


async def monitor(path: Path) -> None:
    loop = asyncio.get_running_loop()
    worst = 0.0
    second = int(time.time())
    with path.open("a", buffering=1) as f:
        while True:
            t0 = loop.time()
            await asyncio.sleep(TICK)
            worst = max(worst, loop.time() - t0 - TICK)
            now = int(time.time())
            if now != second:
                f.write(f"{second} {worst * 1000:.2f}\n")
                second, worst = now, 0.0


def wrap(app: ASGIApp, path: Path) -> ASGIApp:
    """The app, plus the monitor started on the server's loop at its first call (the lifespan)."""
    tasks: list[asyncio.Task[None]] = []

    async def wrapped(
        scope: Message, receive: Callable[[], Awaitable[Message]], send: Callable[[Message], Awaitable[None]]
    ) -> None:
        if not tasks:
            tasks.append(asyncio.get_running_loop().create_task(monitor(path), name="bench-loop-monitor"))
        await app(scope, receive, send)

    return wrapped


def serve_bare(port: int, path: Path) -> None:
    import uvicorn

    sys.path.insert(0, str(Path(__file__).parent))
    from bare_proxy import app

    uvicorn.run(
        wrap(app, path),
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
        lifespan="on",
    )


def serve_keyplane(port: int, path: Path) -> None:
    """The serving process `keyplane serve --host 127.0.0.1 --port N` execs into (keyplane.serving), its
    app wrapped (one worker: same process)."""
    from keyplane import serving

    opts = serving.ServeOptions(host="127.0.0.1", port=port, workers=1)
    serving.run(opts, factory=lambda: wrap(serving.build_app(opts), path))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("server", choices=["bare", "keyplane"])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--loop-file", type=Path, required=True)
    a = ap.parse_args()
    (serve_bare if a.server == "bare" else serve_keyplane)(a.port, a.loop_file)


if __name__ == "__main__":
    main()
