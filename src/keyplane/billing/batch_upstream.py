"""Calls to the upstream that holds a batch (billing/batches.py): retrieving it, reading its output file,
cancelling it; and a fine-tuning job or eval run (billing/job_poll.py). Made with the credential the object's
project uses there (its own provider key, if any)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from keyplane import errors

if TYPE_CHECKING:
    from keyplane.runtime import Runtime


class OutputUnreadable(Exception):
    """A batch's output file that can never be read (gone, or too large): the batch is billed at its reservation."""


class BatchUpstream:
    """The upstream calls of batch metering and the background poll, for one process."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    def holder(self, router: Any, upstream: str | None, project_id: str) -> Any:
        """The upstream holding the batch, with the credential the project's requests use there."""
        dep = router.by_name(upstream) if upstream else None
        bound = self.rt.features.providers_keys  # a project's own provider key (keyplane.providers)
        if dep is not None and bound is not None:
            pool = bound.apply(project_id, (dep,))
            dep = pool[0] if pool else None
        if dep is None:
            raise errors.upstream_error(f"The upstream `{upstream}` that holds the batch or job is not usable.")
        return dep

    async def call(
        self, router: Any, client: Any, upstream: str | None, project_id: str, method: str, path: str
    ) -> tuple[int, bytes]:
        """(status, body) of a call to the upstream holding the batch; raises OutputUnreadable for a body larger
        than keyplane reads."""
        dep = self.holder(router, upstream, project_id)
        resp = await client.request(dep, method, path, [], b"")
        parts: list[bytes] = []
        size = 0
        limit = max(self.rt.settings.max_body_bytes * 4, 256 * 1024 * 1024)
        async for chunk in resp.chunks():
            size += len(chunk)
            if size > limit:
                resp.close()
                raise OutputUnreadable(f"the output file {path} is larger than keyplane reads ({limit} bytes)")
            parts.append(chunk)
        return resp.status, b"".join(parts)

    async def get_bytes(self, router: Any, client: Any, upstream: str | None, project_id: str, path: str) -> bytes:
        """A GET's body; OutputUnreadable when it is gone (404, 410) or too large, an upstream error (tried again
        later) for any other failure."""
        status, body = await self.call(router, client, upstream, project_id, "GET", path)
        if status in (404, 410):
            raise OutputUnreadable(f"the upstream answered {status} reading {path} (deleted or expired)")
        if status >= 400:
            raise errors.upstream_error(f"The upstream answered {status} reading {path}.")
        return body

    async def get_json(self, router: Any, client: Any, upstream: str | None, project_id: str, path: str) -> Any:
        try:
            return orjson.loads(await self.get_bytes(router, client, upstream, project_id, path))
        except Exception:  # unreachable, an error answer, not JSON: not metered now, a later read tries again
            return None
