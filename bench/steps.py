"""keyplane's own CPU per request, step by step, without the HTTP server or the load generator's noise.

    .venv/bin/python bench/steps.py [--requests 5000] [--profile] [--top 40] [--prompt-bytes N]

Sets keyplane up exactly as bench/compare.py does (nginx fixed-answer upstream, `keyplane init`, rate
limits raised but enforced, a spend limit, a credit grant, the default kill-switch rules), then drives
chat completions through the ASGI app in this process, one after another, and the bare proxy
(bench/bare_proxy.py) the same way. It reports the process CPU per request of each (background work
included: the usage flush, the applier thread, the access log, over the run and 3 s after it) and,
with --profile, cProfile's table of where keyplane's time goes. CPU time, not wall time: a busy
machine changes these figures far less than it changes wrk's. A yardstick for a change, beside
compare.py (what users see), not instead of it. ``--prompt-bytes N`` sends a prompt of about N bytes of prose
instead of compare.py's 94-byte body: what keyplane's checks, token count and quote cost per KB of a real prompt.

``--opcodes`` counts instead the bytecode instructions the serving thread executes per request (sys.settrace
with opcode events, over 200 requests and the event loop's work between them), by module and by function: a
deterministic measure of the interpreted work, for changes too small for timings to show (in-process timings
move by several percent from run to run; the count does not). Pure-Python asyncio internals in the list run in
C under uvloop when keyplane serves: compare keyplane's own lines.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import cProfile
import json
import os
import pstats
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import compare  # noqa: E402
from compare_kit import Processes  # noqa: E402

BODY = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello."}],"max_tokens":32}'
PROSE = "The quick brown fox jumps over the lazy dog; pack my box with five dozen liquor jugs. "


def prompt_body(size: int) -> bytes:
    """A chat completion whose user message is about ``size`` bytes of prose (a system message before it)."""
    text = (PROSE * (size // len(PROSE) + 1))[:size]
    messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": text}]
    return json.dumps({"model": "gpt-4o-mini", "messages": messages, "max_tokens": 32}).encode()


App = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


async def lifespan(app: App) -> Callable[[], Awaitable[None]]:
    """Start ``app``'s lifespan; returns the function that stops it."""
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    task = asyncio.ensure_future(app({"type": "lifespan", "asgi": {"version": "3.0"}}, inbox.get, outbox.put))
    await inbox.put({"type": "lifespan.startup"})
    msg = await outbox.get()
    assert msg["type"] == "lifespan.startup.complete", msg

    async def stop() -> None:
        await inbox.put({"type": "lifespan.shutdown"})
        await outbox.get()
        await task

    return stop


async def one(app: App, key: str) -> int:
    sent = False
    status = 0
    gate = asyncio.Event()

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": BODY, "more_body": False}
        await gate.wait()  # like a server: the disconnect comes only when the client goes
        return {"type": "http.disconnect"}

    async def send(msg: dict[str, Any]) -> None:
        nonlocal status
        if msg["type"] == "http.response.start":
            status = msg["status"]

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/chat/completions",
        "raw_path": b"/v1/chat/completions",
        "root_path": "",
        "query_string": b"",
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8000),
        "headers": [
            (b"host", b"127.0.0.1:8000"),
            (b"user-agent", b"wrk"),
            (b"content-type", b"application/json"),
            (b"authorization", b"Bearer " + key.encode()),
            (b"content-length", b"%d" % len(BODY)),
        ],
    }
    await app(scope, receive, send)
    gate.set()
    return status


async def drive(app: App, key: str, n: int, prof: cProfile.Profile | Opcodes | None) -> float:
    """CPU seconds per request over ``n`` requests and the 3 s of background work after them."""
    for _ in range(300):  # warm: caches, pools, the tokenizer
        assert await one(app, key) == 200
    await asyncio.sleep(1.5)
    c0 = time.process_time()
    if prof is not None:
        prof.enable()
    for _ in range(n):
        status = await one(app, key)
        if status != 200:
            raise RuntimeError(f"answered {status}")
    await asyncio.sleep(0.3 if isinstance(prof, Opcodes) else 3)  # the flush, the applier and the access log (counted)
    if prof is not None:
        prof.disable()
    return (time.process_time() - c0) / n


class Opcodes:
    """Counts the bytecode instructions executed between :meth:`enable` and :meth:`disable`, per (file, function)
    (the same two methods as cProfile.Profile: :func:`drive` takes either)."""

    def __init__(self) -> None:
        self.counts: collections.Counter[tuple[str, str]] = collections.Counter()

    def _trace(self, frame: Any, event: str, arg: Any) -> Any:
        if event == "call":
            frame.f_trace_opcodes = True
        elif event == "opcode":
            co = frame.f_code
            self.counts[(co.co_filename, co.co_name)] += 1
        return self._trace

    def enable(self) -> None:
        sys.settrace(self._trace)

    def disable(self) -> None:
        sys.settrace(None)

    def report(self, requests: int, top: int) -> str:
        def short(path: str) -> str:
            for cut in ("/src/", "site-packages/", "/lib/python3.11/", "/bench/"):
                if cut in path:
                    return path.split(cut, 1)[1]
            return path

        total = sum(self.counts.values())
        by_file: collections.Counter[str] = collections.Counter()
        for (f, _), c in self.counts.items():
            by_file[short(f)] += c
        own = sum(c for f, c in by_file.items() if f.startswith("keyplane/"))
        lines = [f"opcodes per request: {total / requests:,.0f} (keyplane's own modules: {own / requests:,.0f})", ""]
        lines += [f"{c / requests:8,.0f}  {f}" for f, c in by_file.most_common(top)]
        lines.append("")
        lines += [f"{c / requests:8,.0f}  {short(f)} {fn}" for (f, fn), c in self.counts.most_common(top)]
        return "\n".join(lines)


async def measure_keyplane(
    home_env: dict[str, str], key: str, n: int, prof: cProfile.Profile | Opcodes | None
) -> float:
    os.environ.update(home_env)
    from keyplane import footprint

    footprint.prepare()
    from keyplane.app import create_app
    from keyplane.config import load_settings

    app = create_app(load_settings(None, create_secret=True))
    stop = await lifespan(app)
    try:
        return await drive(app, key, n, prof)
    finally:
        await stop()


async def measure_bare(n: int) -> float:
    import bare_proxy

    return await drive(bare_proxy.app, "x", n, None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=5000)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--top", type=int, default=40)
    ap.add_argument("--sort", default="tottime")
    ap.add_argument("--callers", help="also print the callers of the functions matching this")
    ap.add_argument("--dump", help="with --profile: also write cProfile's stats to this file (pstats format)")
    ap.add_argument("--opcodes", action="store_true", help="count bytecode instructions per request (200 requests)")
    ap.add_argument("--prompt-bytes", type=int, default=0, help="a prompt of about this many bytes (0: 94-byte body)")
    a = ap.parse_args()
    if a.opcodes and a.profile:
        ap.error("--opcodes and --profile are two different measurements: one at a time")
    if a.opcodes:
        a.requests = 200
    if a.prompt_bytes < 0:
        ap.error("--prompt-bytes must be at least 0")
    if a.prompt_bytes:
        global BODY
        BODY = prompt_body(a.prompt_bytes)
    with tempfile.TemporaryDirectory(prefix="kp-steps-") as tmp:
        ps = Processes(Path(tmp))
        try:
            up = compare.start_nginx(ps)
            base = up.url.rsplit("/v1/", 1)[0]
            os.environ["BENCH_UPSTREAM"] = base
            t = compare.start_keyplane(ps, base, [])  # the set-up compare.py does; then it is stopped
            os.killpg(t.pid, signal.SIGTERM)
            while ps.procs[-1].poll() is None:
                time.sleep(0.1)
            env = {"KEYPLANE_HOME": str(Path(tmp) / "kp-home"), "BENCH_UPSTREAM_KEY": compare.UPSTREAM_KEY}
            bare = asyncio.run(measure_bare(a.requests))
            prof: cProfile.Profile | Opcodes | None = (
                cProfile.Profile() if a.profile else Opcodes() if a.opcodes else None
            )
            kp = asyncio.run(measure_keyplane(env, t.key, a.requests, prof))
        finally:
            ps.stop_all()
        if isinstance(prof, Opcodes):
            print(prof.report(a.requests, a.top))
            return
        print(
            f"bare proxy: {bare * 1e6:.0f} us CPU/request; keyplane: {kp * 1e6:.0f} us ({kp / bare:.2f}x)"
            + (" [keyplane under cProfile: inflated]" if prof else "")
        )
        if prof is not None:
            st = pstats.Stats(prof).sort_stats(a.sort)
            st.print_stats(a.top)
            if a.dump:
                st.dump_stats(a.dump)
            if a.callers:
                st.print_callers(a.callers)


if __name__ == "__main__":
    main()
