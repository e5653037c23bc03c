"""Projects are isolated at the provider (docs/proxy.md "What is isolated between projects").

Every project reaches the provider through the same upstream key unless it has its own, so the
provider alone cannot keep one project out of another's files, stored responses or batches. keyplane
does: each object created through it (the ``id`` and ``object`` of a successful create's JSON answer)
is recorded with the project that created it and the upstream that holds it, and then

- a path naming an object (``/v1/files/{id}``, ``/v1/responses/{id}/input_items``...) answers 404
  ``No such File object: file-...`` before any upstream call unless the caller's project owns it;
- ids a request body refers to (``previous_response_id``, ``input_file_id``, ``training_file``,
  ``file_id``, ``vector_store_ids``...) must be owned by the caller's project too;
- list answers (``GET /v1/files``...) keep only the caller's objects;
- a path with no model goes to the one upstream that holds the object it names, else to the
  project's first upstream (router.passthrough_for): never to an upstream picked by weight.

Ownership is kept in the store (``provider_objects``) and cached in process. A create's answer is
sent only once its row is committed (writes of concurrent creates share one transaction), so an id
is owned on every instance of a fleet before the client can use it; a cache miss reads SQL.

This module holds the per-endpoint rules (what to check, where to route, what an answer creates);
proxy/object_refs.py reads which objects a path or body names, proxy/owners.py keeps who owns them. Its after
hook also hands billing what outlives the request at the provider: batch input files and batches
(billing/batches.py), and the fine-tuning jobs and eval runs a key starts, cancelled once the key or its
project is stopped (billing/job_poll.py).
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any, Final, Protocol

import orjson

from keyplane import errors, logs
from keyplane.proxy import multipart
from keyplane.proxy.object_refs import MODEL_FIELD, NOUNS, batch_file_refs, body_refs, eval_refs, target
from keyplane.proxy.owners import (
    UNCHECKED_FILE,
    OwnerStore,
    created_rows,
    derived_rows,
    foreign_model,
    item_rows,
    lookup_ids,
    object_row,
    owned,
)
from keyplane.proxy.router import Deployment, Router
from keyplane.runtime import Runtime
from keyplane.snapshot import KeyEntry
from keyplane.store.models import ProviderObject

log = logging.getLogger("keyplane.proxy")

_STORES: Final = "/v1/vector_stores"
# POST paths that create an object owned by the caller: the collections, and these.
_CREATES_ALSO: Final = frozenset({"/v1/threads/runs"})
# POST paths that start a job running at the provider for hours: kept with the key that started it, so that it
# is cancelled once the key or its project is stopped (billing/job_poll.py).
_STARTS_JOB: Final = re.compile(r"^/v1/(?:fine_tuning/jobs|evals/[^/]+/runs)$")
# Model endpoints whose answer is stored at the provider only when asked (chat) or unless refused (responses).
_STORED_IF: Final = {"/v1/chat/completions": False, "/v1/responses": True}  # the default of `store`
_STORE_RE: Final = re.compile(rb'"store"\s*:\s*(true|false)')
_CHAT: Final = "/v1/chat/completions"
# A chat answer's audio (``choices[].message.audio.id``): recorded as the project's (Tenancy.audio_answers).
_AUDIO_ANSWER_ID: Final = re.compile(rb'"audio"\s*:\s*\{[^{}]*?"id"\s*:\s*"([A-Za-z0-9_\-]{1,128})"')
_STREAM_ID_RE: Final = re.compile(rb'"id"\s*:\s*"((?:resp_|chatcmpl-)[A-Za-z0-9_\-]{1,120})"')
# Answers that show stored items of an object the caller owns (a response retrieved, its input items, a
# conversation's items): their ids are recorded, so that an input may reference them (object_refs.py).
_SHOWS_ITEMS: Final = re.compile(r"^/v1/(?:responses/[^/]+(?:/input_items)?|conversations/[^/]+/items(?:/[^/]+)?)$")


class TenantRequest(Protocol):
    """What tenancy reads of a request (proxy/context.RequestContext has it)."""

    endpoint: str  # the canonical path
    method: str
    project_id: str | None
    key: KeyEntry  # the key that sent it
    body: bytes
    upstream: str | None  # the upstream that answered (after())


class Tenancy:
    """The ownership checks of the proxy; built once per process from the Runtime and the Router."""

    def __init__(self, rt: Runtime, router: Router) -> None:
        self.rt = rt
        self.router = router
        self.store = OwnerStore(rt)
        self.client: Any = None  # the upstream client (the proxy's), for batch metering (billing/batches.py)

    def attach_client(self, client: Any) -> None:
        """The proxy's upstream client: batch metering reads output files with it (billing/batches.py)."""
        self.client = client
        batches = self.rt.features.batches
        if batches is not None:
            batches.attach(self.router, client)

    def _name(self, project_id: str) -> str | None:
        p = self.rt.snapshot.projects.get(project_id)
        return p.name if p is not None else None

    async def check(self, method: str, endpoint: str, project_id: str | None, body: bytes) -> str | None:
        """Refuse (404, OpenAI's shape) a path or body naming an object the caller's project does not own,
        before any upstream call. Returns the upstream that holds the object the request names, if any."""
        pid = project_id or ""
        t = target(endpoint)
        refs = body_refs(body) if method == "POST" else []
        if method == "POST" and endpoint.startswith("/v1/evals"):  # data sources name files their own way
            refs.extend(eval_refs(body))
        if (t is None or t.object_id is None) and not refs:
            return None
        wanted = [t.object_id] if t is not None and t.object_id is not None else []
        wanted.extend(lookup_ids(refs))
        owners = await self.store.owners(wanted)
        pinned: str | None = None
        if t is not None and t.object_id is not None:
            o = owners.get(t.object_id)
            if o is None or o.project_id != pid:
                raise errors.object_not_found(t.noun, t.object_id)
            pinned = o.upstream
            if method == "GET" and t.collection == "/v1/files" and endpoint.endswith("/content"):
                await self._output_read(t.object_id, pid)  # a batch's output read: metered first
        for name, oid in refs:
            o = owned(owners, name, oid, pid)
            if o is None:  # a fine-tuned model no other project made
                continue
            if o.kind == UNCHECKED_FILE and name == "input_file_id" and endpoint == "/v1/batches":
                raise errors.access_refused(
                    f"The input file `{oid}` cannot run as a batch: keyplane could not read its requests at the "
                    "upload, or they name provider objects (responses, files, vector stores...) that your project "
                    "does not own. Upload it again through POST /v1/files (multipart/form-data, purpose=batch), "
                    "naming only your project's objects.",
                    "batch_input_unchecked",
                )
            pinned = pinned or o.upstream
        return pinned

    async def check_refs(self, refs: list[tuple[str, str]], project_id: str | None) -> None:
        """Refuse, as :meth:`check` does, the first of ``refs`` (object_refs.event_refs: a realtime client event's
        stored prompts and fine-tuned models) the caller's project may not use."""
        if not refs:
            return
        pid = project_id or ""
        owners = await self.store.owners(set(lookup_ids(refs)))
        for name, oid in refs:
            owned(owners, name, oid, pid)

    def pool(
        self, endpoint: str, project_id: str | None, model: str | None, pinned: str | None
    ) -> tuple[Deployment, ...]:
        """The upstreams to try: a model request among the project's upstreams serving the model (only the
        one holding a referenced object, e.g. previous_response_id, when it serves it); any other request
        under an object collection, or with no model, one upstream (DESIGN.md "Tenants at the provider")."""
        pid = project_id or ""
        name = self._name(pid)
        if model and (target(endpoint) is None or endpoint in _STORED_IF):
            pool = self.router.serving(model, pid, name)
            if pinned is not None:
                held = tuple(d for d in pool if d.name == pinned)
                return held or pool
            return pool
        return self.router.passthrough_for(pid, name, pinned)

    async def streamed(self, req: TenantRequest, first: bytes) -> None:
        """Record the stored response or chat completion a stream creates (its id is in the first event)."""
        if req.method != "POST" or req.endpoint not in _STORED_IF or not _stored(req.endpoint, req.body):
            return
        m = _STREAM_ID_RE.search(first)
        if m is None:
            log.warning("no object id in the first event of a stored stream: it stays unowned (%s)", req.endpoint)
            return
        await self.store.record(
            object_row(
                m.group(1).decode("ascii"),
                "response" if req.endpoint == "/v1/responses" else "chat.completion",
                req.project_id or "",
                req.upstream or "",
                int(self.rt.clock.now()),
            )
        )

    async def stream_items(self, req: TenantRequest, item_ids: list[str]) -> None:
        """Record the output items of a stored response's stream (from its terminal event), before the client
        sees that event: an input may then reference them by id (object_refs.py)."""
        if req.method != "POST" or req.endpoint != "/v1/responses" or not _stored(req.endpoint, req.body):
            return
        await self._own_quietly(req, item_ids, "item", 1000, "output items of a stored response stream")

    async def audio_answers(self, req: TenantRequest, audio_ids: list[str]) -> None:
        """Record the audio answers of a chat completion (streamed or not) as the project's own: a later turn may
        give one back by id (``{"role": "assistant", "audio": {"id": ...}}``, object_refs.AUDIO_FIELD). The
        provider keeps them whatever ``store`` says."""
        await self._own_quietly(req, audio_ids[:64], "audio", 64, "audio answers of a chat completion")

    async def _own_quietly(self, req: TenantRequest, ids: list[str], kind: str, limit: int, what: str) -> None:
        """Record ``ids`` (at most ``limit`` rows of ``kind``) as the caller's project's, never in the way of the
        answer's settle: an id not recorded is refused later (fail closed)."""
        now = int(self.rt.clock.now())
        rows = [r for i in ids for r in object_row(i, kind, req.project_id or "", req.upstream or "", now)]
        try:
            await self.store.record(rows[:limit])
        except Exception:
            log.exception("could not record the %s", what)

    def wants_body(self, req: TenantRequest) -> bool:
        """True when after() must see the whole JSON answer (creates, eval runs started, lists, batch and job
        retrievals, a vector store's retrieval, modification or deletion: its size is metered, usage/storage.py;
        answers that show stored items)."""
        if _shows_items(req.method, req.endpoint):
            return True
        t = target(req.endpoint)
        if (
            t is not None
            and t.collection == _STORES
            and t.object_id is not None
            and req.endpoint == f"{_STORES}/{t.object_id}"
        ):
            return True
        if req.method == "POST":
            return (
                req.endpoint in _CREATES_ALSO
                or _STARTS_JOB.match(req.endpoint) is not None
                or (t is not None and (t.object_id is None or req.endpoint.endswith(("/complete", "/cancel"))))
            )
        return (
            req.method == "GET"
            and t is not None
            and (t.object_id is None or t.collection in ("/v1/batches", "/v1/fine_tuning/jobs"))
        )

    async def after(self, req: TenantRequest, status: int, body: bytes) -> bytes:
        """Record the objects a successful answer created; keep only the caller's items of a list."""
        if not 200 <= status < 300 or not body:
            return body
        t = target(req.endpoint)
        create = req.method == "POST" and (req.endpoint in _CREATES_ALSO or (t is not None and t.object_id is None))
        listing = req.method == "GET" and t is not None and t.object_id is None
        shows_items = (create and req.endpoint == "/v1/responses") or _shows_items(req.method, req.endpoint)
        if not (create or listing or self.wants_body(req)):
            return body
        if req.endpoint == _CHAT and req.method == "POST" and b'"audio"' in body:
            audio = [m.decode("ascii") for m in _AUDIO_ANSWER_ID.findall(body)]
            if audio:
                await self.audio_answers(req, audio)
        if create and req.endpoint in _STORED_IF and not _stored(req.endpoint, req.body):
            return body
        try:
            obj = orjson.loads(body)
        except orjson.JSONDecodeError:
            return body
        if not isinstance(obj, dict):
            return body
        pid = req.project_id or ""
        upstream = req.upstream or ""
        now = int(self.rt.clock.now())
        rows: list[ProviderObject] = []
        if listing and obj.get("object") == "list" and isinstance(obj.get("data"), list):
            body = await self._filter(obj, pid, body)
            for item in obj["data"]:
                rows.extend(derived_rows(item, pid, upstream, now))
            seen = obj["data"]  # the caller's own items only
        else:
            if create:
                rows.extend(created_rows(obj, pid, upstream, now))
            rows.extend(derived_rows(obj, pid, upstream, now))
            if shows_items:  # the path's object is the caller's (checked): so are the items it shows
                rows.extend(item_rows(obj, pid, upstream, now))
            seen = [obj]
        if (
            create
            and req.endpoint == "/v1/files"
            and obj.get("object") == "file"
            and str(obj.get("purpose")).strip().lower() == "batch"
        ):
            try:
                why = await self._batch_input_problem(req, pid)
            except Exception:  # the store unreachable...: not checked, so not runnable (fail closed)
                log.exception("could not check the requests of batch input file %s", logs.safe(str(obj.get("id"))))
                why = "keyplane could not check its requests"
            if why is not None:  # its requests could not be held to the ownership check: no batch may run it
                log.warning("batch input file %s of project %s: %s", logs.safe(str(obj.get("id"))), pid, why)
                rows = [
                    r if r.id != obj.get("id") else object_row(r.id, UNCHECKED_FILE, pid, upstream, now)[0]
                    for r in rows
                ]
        if rows:
            await self.store.record(rows)
        if t is not None and t.collection == _STORES and (sizes := self.rt.features.usage_vector_stores):
            await sizes.observe(pid, seen)  # usage_bytes, for the Usage API's vector_stores bucket
        kind = obj.get("object")
        if kind == "batch" or (kind == "file" and create):
            await self._batches(req, obj, create)
        elif req.method == "POST" and _STARTS_JOB.match(req.endpoint):
            await self._job_started(req, obj)
        return body

    async def _batch_input_problem(self, req: TenantRequest, pid: str) -> str | None:
        """Why the requests of a batch input file just uploaded cannot run for project ``pid`` (an upload keyplane
        cannot read, or a line naming an object another project owns), or None."""
        ct = getattr(req, "content_type", None)
        try:
            if not ct:
                raise errors.bad_request("no Content-Type")
            content = multipart.file_part([(b"content-type", ct)], req.body)
            refs = (
                await asyncio.to_thread(batch_file_refs, content)
                if len(content) > 64 * 1024
                else batch_file_refs(content)
            )
        except errors.APIError as e:
            return f"keyplane could not read its requests ({e.message})"
        owners = await self.store.owners(set(lookup_ids((name, i) for _, name, i in refs)))
        for line, name, oid in refs:
            if name == MODEL_FIELD:
                if foreign_model(owners, oid, pid):
                    return f"line {line} names the fine-tuned model `{oid[:128]}`, which another project made"
                continue
            o = owners.get(oid)
            if o is None or o.project_id != pid:
                return f"line {line} names {NOUNS[name]} `{oid[:64]}` ({name}), which the project does not own"
        return None

    async def _batches(self, req: TenantRequest, obj: dict[str, Any], create: bool) -> None:
        """Batch billing (billing/batches.py): a batch input file priced, a batch's reservation kept, a
        terminal batch metered. Its failures are logged; the answer goes on (an unpriced file fails closed)."""
        batches = self.rt.features.batches
        if batches is None:
            return
        try:
            if obj.get("object") == "file":
                await batches.file_uploaded(req, obj)
            elif create and req.endpoint == "/v1/batches":
                await batches.batch_created(req, obj)
            else:
                await batches.batch_seen(req, obj, self.router, self.client)
        except Exception:
            log.exception("batch billing failed for %s %s", req.method, req.endpoint)

    async def _job_started(self, req: TenantRequest, obj: dict[str, Any]) -> None:
        """A fine-tuning job or eval run just started: kept with the key that started it, so that billing's
        background poll cancels it at the provider once that key or its project is stopped (billing/job_poll.py).
        When it cannot be kept (the store down), the job is cancelled at once and the call fails (503): a job
        that would outlive a revocation never starts (fail closed)."""
        batches = self.rt.features.batches
        if batches is None:
            return
        try:
            await batches.jobs.started(req.endpoint, obj, req.project_id or "", req.key.id, req.upstream)
        except Exception:
            log.exception("could not keep the job %s started by key %s", logs.safe(str(obj.get("id"))), req.key.id)
            await batches.jobs.cancel_unkept(req.endpoint, obj, req.project_id or "", req.key.id, req.upstream)
            raise errors.store_unavailable("database") from None

    async def _output_read(self, file_id: str, project_id: str) -> None:
        batches = self.rt.features.batches
        if batches is None:
            return
        try:
            await batches.output_read(file_id, project_id, self.router, self.client)
        except Exception:
            log.exception("batch metering failed on reading %s", file_id)

    async def _filter(self, obj: dict[str, object], pid: str, body: bytes) -> bytes:
        data = obj["data"]
        assert isinstance(data, list)
        ids = [it["id"] for it in data if isinstance(it, dict) and isinstance(it.get("id"), str)]
        owners = await self.store.owners(ids)
        kept = [
            it
            for it in data
            if isinstance(it, dict) and (o := owners.get(str(it.get("id")))) is not None and o.project_id == pid
        ]
        if len(kept) == len(data):
            return body
        obj["data"] = kept
        if "first_id" in obj:
            obj["first_id"] = kept[0]["id"] if kept else None
        if "last_id" in obj:
            obj["last_id"] = kept[-1]["id"] if kept else None
        return orjson.dumps(obj)


def _shows_items(method: str, endpoint: str) -> bool:
    """A retrieval of a response, its input items or a conversation's items, or items added to a conversation."""
    if method == "GET":
        return _SHOWS_ITEMS.match(endpoint) is not None
    return method == "POST" and endpoint.startswith("/v1/conversations/") and _SHOWS_ITEMS.match(endpoint) is not None


def _stored(endpoint: str, body: bytes) -> bool:
    m = _STORE_RE.search(body)
    return _STORED_IF[endpoint] if m is None else m.group(1) == b"true"
