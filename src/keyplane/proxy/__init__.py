"""The /v1 proxy (data plane): routing to upstreams, the upstream client, SSE relay, retries.

Request flow (handler.py): authenticate (auth.py) -> authorize (scopes.py) -> read the body
(request.py) -> admit (hook) -> forward with retries and fallback (forward.py, router.py,
upstream.py) -> relay (sse.py) -> settle (hook; context.py). ``demo.py`` is the offline upstream.
"""

from __future__ import annotations

import asyncio
import logging

from keyplane.proxy import estimate, skipped
from keyplane.proxy.forward import Forwarder
from keyplane.proxy.handler import ProxyApp
from keyplane.proxy.models import ModelCatalog
from keyplane.proxy.router import Router, default_upstreams, usable_upstreams
from keyplane.proxy.upstream import UpstreamClient
from keyplane.runtime import Runtime

log = logging.getLogger("keyplane.proxy")


async def build_proxy(rt: Runtime) -> ProxyApp:
    """The proxy ASGI app; its upstream connection pool is open until ``aclose()``."""
    deployments, notes = usable_upstreams(rt.settings)
    for note in notes:
        log.info("%s", note)
    router = Router(deployments, rt.clock.monotonic)
    # What was left out for want of a key, so that a request for it says so (proxy/skipped.py).
    rt.features.skipped_upstreams = skipped.Skipped.of(
        rt.settings.file.upstreams or default_upstreams(), (d.name for d in deployments if not d.disabled)
    )
    if any(d.is_demo for d in deployments):
        # The demo counts tokens with o200k_base: load it now, not on the first request.
        await asyncio.to_thread(estimate.count, "warm up")
    client = UpstreamClient()
    await client.start()
    app = ProxyApp(rt, router, Forwarder(client, router), ModelCatalog(client, router))
    rt.features.proxy = app
    return app
