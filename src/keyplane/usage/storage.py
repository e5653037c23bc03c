"""Vector store storage as the upstream reports it, for the Usage API's ``vector_stores`` bucket.

The provider reports a vector store's size on the object itself (``usage_bytes``); keyplane sees the
object whenever it passes through: created, retrieved, modified, listed (the caller's own only, after
tenancy's filter) or deleted (proxy/tenancy.py calls :meth:`VectorStores.observe`). A row is written
when a store's size or state changes (``usage_vector_stores``), so a client polling a store costs no
write; every instance of a fleet writes its own first observation, which reads the same.

A bucket reports, per project (or for the organization), the sum over the vector stores alive in it of
the largest size each was reported at while alive: its size when the bucket began (the last report
before it, unless deleted or expired by then: ``expires_at``, ``status: expired``) and every report
within it. A store keyplane never saw (created with the provider key directly) is not counted; one
that grows or expires at the provider without passing through keyplane keeps its last report until
its ``expires_at``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from keyplane.usage.models import VectorStoreSize

if TYPE_CHECKING:
    from keyplane.runtime import Runtime

log = logging.getLogger("keyplane.usage")

_CACHE_MAX = 50_000  # stores whose last state this process remembers (a write is skipped when unchanged)


@dataclass(frozen=True, slots=True)
class Seen:
    t: int
    usage_bytes: int
    expires_at: int | None
    gone: bool

    def alive(self, at: int) -> bool:
        return not self.gone and (self.expires_at is None or self.expires_at > at)


def _int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else None


def reading(obj: Any) -> tuple[str, int, int | None, bool] | None:
    """(id, usage_bytes, expires_at, gone) of a vector store object or its deletion; None for anything else."""
    if not isinstance(obj, dict):
        return None
    vid = obj.get("id")
    if not isinstance(vid, str) or not vid or len(vid) > 128:
        return None
    kind = obj.get("object")
    if kind == "vector_store.deleted":
        return (vid, 0, None, True) if obj.get("deleted") is True else None
    if kind != "vector_store":
        return None
    size = _int(obj.get("usage_bytes"))
    if size is None:
        return None
    gone = obj.get("status") == "expired"
    return vid, 0 if gone else size, _int(obj.get("expires_at")), gone


class VectorStores:
    """The observations of one process (rt.features.usage_vector_stores)."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.last: dict[str, tuple[int, int | None, bool]] = {}

    async def observe(self, project_id: str, objects: list[Any]) -> None:
        """Vector store objects (or deletions) an answer carried for ``project_id``: changes written."""
        now = int(self.rt.clock.now())
        rows: list[dict[str, Any]] = []
        for obj in objects:
            r = reading(obj)
            if r is None:
                continue
            vid, size, expires, gone = r
            if self.last.get(vid) == (size, expires, gone):
                continue
            if len(self.last) >= _CACHE_MAX:
                self.last.clear()
            self.last[vid] = (size, expires, gone)
            rows.append(
                {
                    "vector_store_id": vid,
                    "project_id": project_id,
                    "observed_at": now,
                    "usage_bytes": size,
                    "expires_at": expires,
                    "gone": gone,
                }
            )
        if not rows:
            return
        try:
            async with self.rt.sessions() as s, s.begin():
                await s.execute(insert(VectorStoreSize), rows)
        except Exception:  # storage is a gauge: the next report of the store writes it again
            for row in rows:
                self.last.pop(row["vector_store_id"], None)
            log.exception("could not record the size of %d vector stores", len(rows))


async def bucket_sizes(
    conn: AsyncConnection, buckets: list[int], width: int, project_ids: tuple[str, ...], by_project: bool
) -> dict[int, dict[str | None, int]]:
    """bucket start -> (project id, or None when not grouped) -> bytes (module docstring)."""
    if not buckets:
        return {}
    lo, hi = buckets[0], buckets[-1] + width
    t = VectorStoreSize.__table__.c
    where = [t.project_id.in_(project_ids)] if project_ids else []
    # Each store's last report before the range, then every report in it.
    last = (
        select(t.vector_store_id, func.max(t.observed_at).label("at"))
        .where(t.observed_at < lo, *where)
        .group_by(t.vector_store_id)
        .subquery()
    )
    cols = (t.seq, t.vector_store_id, t.project_id, t.observed_at, t.usage_bytes, t.expires_at, t.gone)
    before = (
        await conn.execute(
            select(*cols)
            .join(last, and_(t.vector_store_id == last.c.vector_store_id, t.observed_at == last.c.at))
            .where(*where)
        )
    ).all()
    within = (await conn.execute(select(*cols).where(t.observed_at >= lo, t.observed_at < hi, *where))).all()
    series: dict[str, tuple[str, list[Seen]]] = {}
    for r in sorted([*before, *within], key=lambda r: (r.observed_at, r.seq)):
        _, seen = series.setdefault(r.vector_store_id, (r.project_id, []))
        seen.append(Seen(r.observed_at, r.usage_bytes, r.expires_at, r.gone))
    out: dict[int, dict[str | None, int]] = {}
    for pid, seen in series.values():
        key = pid if by_project else None
        for b0 in buckets:
            size = _largest(seen, b0, b0 + width)
            if size is not None:
                slot = out.setdefault(b0, {})
                slot[key] = slot.get(key, 0) + size
    return out


def _largest(seen: list[Seen], b0: int, b1: int) -> int | None:
    """The largest size a store was reported at while alive in [b0, b1); None: not alive in it."""
    prev = None
    best: int | None = None
    for s in seen:
        if s.t < b0:
            prev = s
        elif s.t < b1:
            if s.alive(s.t):
                best = s.usage_bytes if best is None else max(best, s.usage_bytes)
        else:
            break
    if prev is not None and prev.alive(b0):
        best = prev.usage_bytes if best is None else max(best, prev.usage_bytes)
    return best
