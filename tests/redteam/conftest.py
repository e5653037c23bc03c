"""The red-team review's findings (issue #12 round 2), kept as regression tests: each failed while its hole
was open. A gateway on the project's fake upstream and template home, in-process limiter."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Mapping

import pytest
from aiohttp import web

from keyplane.testing import FakeUpstream
from tests.billing.conftest import config
from tests.proxy.conftest import make_gateway  # noqa: F401 - the fixture, shared
from tests.support import RunningServer


@pytest.fixture
def make_gw(make_gateway: Callable[..., RunningServer], fake: FakeUpstream) -> Callable[..., RunningServer]:  # noqa: F811
    def make(extra: str = "", config_text: str | None = None, **env: str) -> RunningServer:
        return make_gateway(config_text if config_text is not None else config(fake, extra), **env)

    return make


def serve_in_thread(
    path: str, handler: Callable[[web.Request], Awaitable[web.StreamResponse]], client_max_size: int = 1024**2
) -> int:
    """A stand-in upstream answering POST ``path`` with ``handler`` on its own loop and thread; its port."""
    return serve_routes({path: handler}, client_max_size)


def serve_routes(
    routes: Mapping[str | tuple[str, str], Callable[[web.Request], Awaitable[web.StreamResponse]]],
    client_max_size: int = 8 * 1024**2,
) -> int:
    """A stand-in provider answering each route of ``routes`` (a path: POST; or a (method, path)) on its own loop
    and thread; its port."""
    loop = asyncio.new_event_loop()
    started = threading.Event()
    port = 0

    async def main() -> None:
        nonlocal port
        app = web.Application(client_max_size=client_max_size)
        for route, handler in routes.items():
            method, path = ("POST", route) if isinstance(route, str) else route
            app.router.add_route(method, path, handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        started.set()

    threading.Thread(target=lambda: (loop.run_until_complete(main()), loop.run_forever()), daemon=True).start()
    assert started.wait(5)
    return port
