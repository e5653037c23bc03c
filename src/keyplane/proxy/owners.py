"""Who owns each provider object created through keyplane (proxy/tenancy.py): the project that created it and
the upstream that holds it.

Kept in the store (``provider_objects``) and cached in process (:class:`OwnerStore`). Writes of concurrent
creates share one transaction (group commit), and a create's answer waits for its row, so an id is owned on
every instance of a fleet before the client can use it; a cache miss reads SQL. The row builders say which
objects an answer creates (:func:`created_rows`) or derives (:func:`derived_rows`: a batch's output files...).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Final

from sqlalchemy import Select, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from keyplane import errors
from keyplane.proxy.object_refs import MODEL_FIELD, NOUNS
from keyplane.runtime import Runtime
from keyplane.store.models import PROVIDER_ID_LIMIT, ProviderObject, provider_object_key

log = logging.getLogger("keyplane.proxy")

# The kind a batch input file is recorded with when keyplane could not hold its requests to the ownership check
# (unreadable upload, or lines naming another project's objects): a batch may not run it (Tenancy.check).
UNCHECKED_FILE: Final = "file.unchecked"
_CACHE_MAX: Final = 200_000
_MISS_MAX: Final = 10_000
_MAX_ITEMS: Final = 1000  # items recorded from one answer (a list page holds at most 100)
_MISS_TTL: Final = 2.0  # seconds an unknown id is remembered as unknown (ids are random: only guesses miss)


@dataclass(frozen=True, slots=True)
class Owner:
    project_id: str
    upstream: str
    kind: str = ""  # the object's kind as recorded (UNCHECKED_FILE: a batch may not run it)


class OwnerStore:
    """provider_objects: a write-through process cache over SQL; a miss reads SQL."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.cache: dict[str, Owner] = {}
        self.misses: dict[str, float] = {}
        self._pending: list[tuple[ProviderObject, asyncio.Future[None]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def owners(self, ids: Iterable[str]) -> dict[str, Owner]:
        """The owner of each id known to the store (ids not created through keyplane are left out)."""
        out: dict[str, Owner] = {}
        want: dict[str, str] = {}  # stored key -> the id asked (they differ for an id past 128 characters)
        now = self.rt.clock.monotonic()
        for i in ids:
            k = provider_object_key(i)
            o = self.cache.get(k)
            if o is not None:
                out[i] = o
            elif self.misses.get(k, 0.0) <= now:
                want[k] = i
        if want:
            async with self.rt.read() as s:
                rows = (await s.execute(_owners_of(list(want)))).all()
            for r in rows:
                out[want[r.id]] = self._remember(r.id, Owner(r.project_id, r.upstream, r.object or ""))
            if len(self.misses) >= _MISS_MAX:
                self.misses.clear()
            for k, i in want.items():
                if i not in out:
                    self.misses[k] = now + _MISS_TTL
        return out

    def forget_miss(self, oid: str) -> None:
        """Stop taking ``oid`` for unknown (an operator just assigned it: the next lookup reads SQL)."""
        self.misses.pop(provider_object_key(oid), None)

    def _remember(self, oid: str, owner: Owner) -> Owner:
        if len(self.cache) >= _CACHE_MAX:  # drop the oldest tenth (dicts keep insertion order)
            for k in list(self.cache)[: _CACHE_MAX // 10]:
                del self.cache[k]
        self.cache[oid] = owner
        self.misses.pop(oid, None)
        return owner

    async def record(self, rows: list[ProviderObject]) -> None:
        """Own these objects, committed (awaited): then this process's cache holds what the store holds. An id
        already owned keeps its first owner, whatever this process had cached (another instance, a restart, a
        cache that rolled over): the cache learns the owner from the store, never from the row offered."""
        fresh = [r for r in rows if r.id not in self.cache]
        if not fresh:
            return
        loop = asyncio.get_running_loop()
        futs = []
        for r in fresh:
            fut: asyncio.Future[None] = loop.create_future()
            self._pending.append((r, fut))
            futs.append(fut)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        await asyncio.shield(asyncio.gather(*futs))

    async def _flush(self) -> None:
        """Commit what is pending in one transaction (group commit); repeat while creates keep coming."""
        batch: list[tuple[ProviderObject, asyncio.Future[None]]] = []
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                values = [
                    {
                        "id": r.id,
                        "project_id": r.project_id,
                        "object": r.object,
                        "upstream": r.upstream,
                        "created_at": r.created_at,
                    }
                    for r, _ in batch
                ]
                ins = pg_insert if self.rt.engine.dialect.name == "postgresql" else sqlite_insert
                stmt = ins(ProviderObject).on_conflict_do_nothing(index_elements=["id"]).returning(ProviderObject.id)
                try:
                    async with self.rt.sessions() as s, s.begin():
                        inserted = set((await s.execute(stmt, values)).scalars())
                        taken = [r.id for r, _ in batch if r.id not in inserted]  # owned before: read who owns it
                        found = (await s.execute(_owners_of(taken))).all() if taken else []
                    for r, _ in batch:
                        if r.id in inserted:
                            self._remember(r.id, Owner(r.project_id, r.upstream, r.object or ""))
                    for f in found:
                        self._remember(f.id, Owner(f.project_id, f.upstream, f.object or ""))
                except Exception:
                    # Not recorded: owned by nobody, here and everywhere, so refused, never shown to another
                    # project (fail closed); the caller's create went through at the provider all the same.
                    log.exception("could not record the owners of %d provider objects", len(batch))
                _release(batch)
        finally:  # cancelled (shutdown): nobody waits forever
            _release(batch)
            _release(self._pending)


def _owners_of(keys: list[str]) -> Select[str, str, str, str]:
    """The owner rows (id, project, upstream, kind) of these stored keys."""
    return select(ProviderObject.id, ProviderObject.project_id, ProviderObject.upstream, ProviderObject.object).where(
        ProviderObject.id.in_(keys)
    )


def _release(batch: list[tuple[ProviderObject, asyncio.Future[None]]]) -> None:
    for _, fut in batch:
        if not fut.done():
            fut.set_result(None)


def object_row(oid: object, kind: object, pid: str, upstream: str, now: int) -> list[ProviderObject]:
    """The row owning one object to project ``pid`` (none for an id that is not a string of at most
    PROVIDER_ID_LIMIT characters); a long id (a fine-tuned model's name may pass 128) is owned by its digest."""
    if not isinstance(oid, str) or not oid or len(oid) > PROVIDER_ID_LIMIT:
        return []
    key = provider_object_key(oid)
    return [ProviderObject(id=key, project_id=pid, object=str(kind or "")[:64], upstream=upstream, created_at=now)]


def created_rows(obj: dict[str, object], pid: str, upstream: str, now: int) -> list[ProviderObject]:
    """The objects a create's answer made: the object itself, an upload's file, a run's thread."""
    rows = object_row(obj.get("id"), obj.get("object"), pid, upstream, now)
    f = obj.get("file")  # a completed upload carries the file it made
    if isinstance(f, dict):
        rows += object_row(f.get("id"), f.get("object") or "file", pid, upstream, now)
    rows += object_row(obj.get("thread_id"), "thread", pid, upstream, now)  # POST /v1/threads/runs
    return rows


def derived_rows(obj: object, pid: str, upstream: str, now: int) -> list[ProviderObject]:
    """Files the provider made for an object the caller owns: a batch's output and errors, a job's results, a
    completed upload's file."""
    if not isinstance(obj, dict):
        return []
    rows: list[ProviderObject] = []
    if obj.get("object") == "batch":
        for k in ("output_file_id", "error_file_id"):
            rows += object_row(obj.get(k), "file", pid, upstream, now)
    elif obj.get("object") == "upload" and isinstance(f := obj.get("file"), dict):
        # A completed upload's file (POST /v1/uploads/{id}/complete): its parts streamed through unread
        # (proxy/uploads.py), so as a batch input file its requests were never checked: no batch may run it.
        batch = str(f.get("purpose") or obj.get("purpose")).strip().lower() == "batch"
        rows += object_row(f.get("id"), UNCHECKED_FILE if batch else "file", pid, upstream, now)
    elif obj.get("object") == "fine_tuning.job":
        if isinstance(obj.get("result_files"), list):
            for f in obj["result_files"]:
                rows += object_row(f, "file", pid, upstream, now)
        # The model the job made is the project's own too (trained on its data): proxy/handler.py checks its use.
        if isinstance(m := obj.get("fine_tuned_model"), str) and m.startswith("ft:"):
            rows += object_row(m, "model", pid, upstream, now)
    return rows


def item_rows(obj: dict[str, object], pid: str, upstream: str, now: int) -> list[ProviderObject]:
    """The stored items an answer shows project ``pid`` (an input may reference them by id, object_refs.py): the
    output items of a response, the items of a list (a response's input items, a conversation's items), or the
    item itself (one conversation item)."""
    kind = obj.get("object")
    if kind == "response":
        items = obj.get("output")
    elif kind == "list":
        items = obj.get("data")
    else:
        items = [obj] if isinstance(obj.get("type"), str) else None
    if not isinstance(items, list):
        return []
    rows: list[ProviderObject] = []
    for it in items[:_MAX_ITEMS]:
        if isinstance(it, dict):
            rows += object_row(it.get("id"), "item", pid, upstream, now)
    return rows


def fine_tuned_ids(model: str) -> list[str]:
    """The ids a fine-tuned model request may be owned under: the model itself, and for a checkpoint
    (``ft:<base>:<org>:<suffix>:<id>:ckpt-step-<n>``) the model its job made."""
    if not model.startswith("ft:"):
        return []
    parts = model.split(":")
    return [model] if len(parts) <= 5 else [model, ":".join(parts[:5])]


def foreign_model(owners: dict[str, Owner], model: str, project_id: str) -> bool:
    """True when another project owns the fine-tuned ``model`` (or the model its checkpoint belongs to), given
    the owners of its :func:`fine_tuned_ids`. One made elsewhere and never assigned to a project has no owner."""
    return any((o := owners.get(i)) is not None and o.project_id != project_id for i in fine_tuned_ids(model))


def lookup_ids(refs: Iterable[tuple[str, str]]) -> Iterator[str]:
    """The ids whose owners decide the (field, id) ``refs``: each object's own, and for a fine-tuned model (field
    ``model``) its :func:`fine_tuned_ids` (the model, and the model a checkpoint belongs to)."""
    for name, i in refs:
        if name == MODEL_FIELD:
            yield from fine_tuned_ids(i)
        else:
            yield i


def owned(owners: dict[str, Owner], name: str, oid: str, pid: str) -> Owner | None:
    """The owner of ``oid`` (named in field ``name``) when it is project ``pid``'s, else a refusal (404): an
    object another project owns or none does; a fine-tuned model (field ``model``) another project made, by the
    rule of a top-level one (None when no other project made it)."""
    if name == MODEL_FIELD:  # a fine-tuned model named anywhere in the body (an eval run's, a grader's...)
        if foreign_model(owners, oid, pid):
            raise errors.model_not_found(oid)
        return None
    o = owners.get(oid)
    if o is None or o.project_id != pid:
        raise errors.object_not_found(NOUNS[name], oid, param=name)
    return o
