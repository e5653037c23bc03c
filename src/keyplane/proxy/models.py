"""GET /v1/models and /v1/models/{id}: the models a key can reach through keyplane.

A model is listed when an upstream that this process may use serves it: the upstream's own list
(fetched off the request path, cached for ``ttl`` seconds) filtered by that upstream's ``models``
globs, plus the glob entries that name one model exactly. Answered in OpenAI's list shape.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from keyplane import errors
from keyplane.proxy.router import Deployment, Router
from keyplane.proxy.upstream import UpstreamClient


class ModelCatalog:
    def __init__(self, client: UpstreamClient, router: Router, ttl: float = 300.0) -> None:
        self.client = client
        self.router = router
        self.ttl = ttl
        self._cache: dict[str, tuple[float, list[dict[str, Any]]]] = {}
        self._lock = asyncio.Lock()

    async def _of(self, dep: Deployment) -> list[dict[str, Any]]:
        hit = self._cache.get(dep.name)
        now = time.monotonic()
        if hit is not None and now - hit[0] < self.ttl:
            return hit[1]
        data = await self.client.get_json(dep, "/v1/models")
        items = [m for m in (data or {}).get("data", []) if isinstance(m, dict) and isinstance(m.get("id"), str)]
        items = [m for m in items if dep.serves(m["id"])]
        seen = {m["id"] for m in items}
        items += [_synth(m, dep) for m in dep.concrete_models if m not in seen]
        # A failed fetch is retried sooner than a good answer is refreshed.
        self._cache[dep.name] = (now if data is not None else now - self.ttl + 30, items)
        return items

    async def list(self) -> list[dict[str, Any]]:
        async with self._lock:
            per = await asyncio.gather(*(self._of(d) for d in self.router.deployments))
        out: dict[str, dict[str, Any]] = {}
        for items in per:
            for m in items:
                out.setdefault(m["id"], m)
        return sorted(out.values(), key=lambda m: m["id"])

    async def get(self, model: str) -> dict[str, Any]:
        pool = self.router.serving(model)
        if not pool:
            raise errors.model_not_found(model)
        for m in await self.list():
            if m["id"] == model:
                return m
        return _synth(model, pool[0])


def _synth(model: str, dep: Deployment) -> dict[str, Any]:
    return {"id": model, "object": "model", "created": 0, "owned_by": dep.name}
