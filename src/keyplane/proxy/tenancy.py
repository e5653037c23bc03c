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
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final, Protocol

import orjson
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from keyplane import errors, logs
from keyplane.proxy import multipart
from keyplane.proxy.router import Deployment, Router
from keyplane.runtime import Runtime
from keyplane.store.models import ProviderObject

log = logging.getLogger("keyplane.proxy")

# Collections of provider objects -> the noun of OpenAI's "No such <noun> object" message.
COLLECTIONS: Final[dict[str, str]] = {
    "/v1/files": "File",
    "/v1/uploads": "Upload",
    "/v1/batches": "Batch",
    "/v1/vector_stores": "VectorStore",
    "/v1/assistants": "Assistant",
    "/v1/threads": "Thread",
    "/v1/fine_tuning/jobs": "FineTuningJob",
    "/v1/evals": "Eval",
    "/v1/conversations": "Conversation",
    "/v1/responses": "Response",
    "/v1/chat/completions": "ChatCompletion",
    "/v1/containers": "Container",
    "/v1/videos": "Video",
}
_STORES: Final = "/v1/vector_stores"
# Segments right under a collection that are endpoints, not object ids.
_NOT_IDS: Final = {"/v1/responses": frozenset({"input_tokens", "compact"}), "/v1/threads": frozenset({"runs"})}
# POST paths that create an object owned by the caller: the collections, and these.
_CREATES_ALSO: Final = frozenset({"/v1/threads/runs"})
# Model endpoints whose answer is stored at the provider only when asked (chat) or unless refused (responses).
_STORED_IF: Final = {"/v1/chat/completions": False, "/v1/responses": True}  # the default of `store`
# Request-body fields that name a provider object the request would read or use.
REF_FIELDS: Final[dict[str, str]] = {
    "previous_response_id": "Response",
    "conversation": "Conversation",
    "input_file_id": "File",
    "training_file": "File",
    "validation_file": "File",
    "file_id": "File",
    "file_ids": "File",
    "vector_store_ids": "VectorStore",
    "vector_store_id": "VectorStore",
    "assistant_id": "Assistant",
    "container": "Container",  # code_interpreter's container (a string id; {"type": "auto"} names none)
}
# A body is parsed when it names a field that refers to an object, or has a \u escape (a field name
# can be spelled with escapes: "previous_response\u005fid" is previous_response_id to any JSON parser).
_REF_RE: Final = re.compile(rb'"(?:' + b"|".join(k.encode() for k in REF_FIELDS) + rb')"\s*:|\\u')
_STORE_RE: Final = re.compile(rb'"store"\s*:\s*(true|false)')
_STREAM_ID_RE: Final = re.compile(rb'"id"\s*:\s*"((?:resp_|chatcmpl-)[A-Za-z0-9_\-]{1,120})"')
_MAX_REFS: Final = 1000
_MAX_FILE_REFS: Final = 10_000  # ids the requests of one batch input file may name, all lines together
# The kind a batch input file is recorded with when keyplane could not hold its requests to the ownership check
# (unreadable upload, or lines naming another project's objects): a batch may not run it (Tenancy.check).
UNCHECKED_FILE: Final = "file.unchecked"
# Eval data sources that select stored objects by a query rather than by id (proxy/tenancy.eval_refs).
_EVAL_QUERIES: Final = frozenset({"stored_completions", "responses"})
_CACHE_MAX: Final = 200_000
_MISS_MAX: Final = 10_000
_MISS_TTL: Final = 2.0  # seconds an unknown id is remembered as unknown (ids are random: only guesses miss)


class TenantRequest(Protocol):
    """What tenancy reads of a request (proxy/context.RequestContext has it)."""

    endpoint: str  # the canonical path
    method: str
    project_id: str | None
    body: bytes
    upstream: str | None  # the upstream that answered (after())


@dataclass(frozen=True, slots=True)
class Target:
    """The collection a path is under and the object id it names (None: the collection itself)."""

    collection: str
    noun: str
    object_id: str | None


@dataclass(frozen=True, slots=True)
class Owner:
    project_id: str
    upstream: str
    kind: str = ""  # the object's kind as recorded (UNCHECKED_FILE: a batch may not run it)


def target(path: str) -> Target | None:
    """The object collection (and id) a canonical path is about, or None; the model endpoints and the
    few collection paths every request uses are answered from a small memo."""
    try:
        return _TARGETS[path]
    except KeyError:
        pass
    t = _target(path)
    if (t is None or t.object_id is None) and len(_TARGETS) < 1024:  # ids are many: kept only without one
        _TARGETS[path] = t
    return t


_TARGETS: dict[str, Target | None] = {}


def _target(path: str) -> Target | None:
    for coll, noun in COLLECTIONS.items():
        if path == coll:
            return Target(coll, noun, None)
        if path.startswith(coll) and path[len(coll)] == "/":
            oid = path[len(coll) + 1 :].split("/", 1)[0]
            if oid in _NOT_IDS.get(coll, ()):
                return None
            return Target(coll, noun, oid)
    return None


def body_refs(body: bytes) -> list[tuple[str, str]]:
    """(field, id) for each provider object a JSON body names; [] when it names none or is not JSON."""
    if not body or body.startswith(b"--"):  # empty, or multipart (uploads): no JSON to name objects in
        return []
    if 0 in body[:4]:
        # UTF-16/32 JSON: some upstream parsers (Python's json) detect and read it; keyplane does not.
        raise errors.invalid_json()
    if _REF_RE.search(body) is None:
        return []
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        # It names an object but does not parse here (NaN, bad escapes...): a more lenient parser
        # upstream might read it, so it is refused rather than passed on unchecked.
        raise errors.invalid_json() from None
    return _walk(obj)


def _walk(obj: object) -> list[tuple[str, str]]:
    """(field, id) for each provider object a parsed JSON value names, wherever it stands."""
    out: list[tuple[str, str]] = []
    stack: list[tuple[object, int]] = [(obj, 0)]
    while stack and len(out) <= _MAX_REFS:
        node, depth = stack.pop()
        if depth > 64:  # no id stands this deep in any request schema: refused rather than left unchecked
            raise errors.bad_request("The request body is nested too deeply.", code="invalid_body")
        if isinstance(node, dict):
            for k, v in node.items():
                if k in REF_FIELDS:
                    out.extend((k, i) for i in _ids(v))
                # The annotations of an answer replayed as input (file citations) grant nothing; any other
                # place an id can stand is checked, whatever a "type" field says.
                if k != "annotations" and isinstance(v, (dict, list)):
                    stack.append((v, depth + 1))
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node if isinstance(v, (dict, list)))
    if len(out) > _MAX_REFS:
        raise errors.bad_request(f"The request names more than {_MAX_REFS} provider objects.", code="too_many_ids")
    return out


def _ids(v: object) -> Iterable[str]:
    if isinstance(v, str):
        return (v,)
    if isinstance(v, list):
        return (x for x in v if isinstance(x, str))
    if isinstance(v, dict) and isinstance(v.get("id"), str):  # conversation: {"id": "conv_..."}
        return (v["id"],)
    return ()


def eval_refs(body: bytes) -> list[tuple[str, str]]:
    """The files an eval call (POST /v1/evals...) names in its data sources as ``{"type": "file_id", "id": ...}``
    (field ``file_id``), for the ownership check. A data source that selects stored chat completions or stored
    responses by a query (``stored_completions``, a ``responses`` source) is refused: the provider would pick them
    among everything stored under its key, every project's. Read once, strictly (a key given twice is refused:
    parsers that keep the first and the last value would read two different sources)."""
    if not body.strip():
        return []
    if 0 in body[:4]:
        raise errors.invalid_json()
    try:
        obj = json.loads(body, object_pairs_hook=_one_of_each)
    except (ValueError, RecursionError):
        raise errors.invalid_json() from None
    out: list[tuple[str, str]] = []
    stack: list[tuple[object, int]] = [(obj, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > 64:
            raise errors.bad_request("The request body is nested too deeply.", code="invalid_body")
        if isinstance(node, dict):
            src = node.get("source")
            if isinstance(src, dict) and src.get("type") in _EVAL_QUERIES:
                raise errors.access_refused(
                    "An eval may not read stored chat completions or stored responses by query through keyplane: "
                    "the provider would select them among every project's that share its key. Give the items in a "
                    "file your project uploaded (`file_id`) or inline (`file_content`).",
                    "eval_source_not_permitted",
                )
            if node.get("type") == "file_id" and "id" in node:
                fid = node["id"]
                if not isinstance(fid, str):
                    raise errors.invalid_value("id", "A data source's file `id` must be a string.")
                out.append(("file_id", fid))
            stack.extend((v, depth + 1) for v in node.values() if isinstance(v, (dict, list)))
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node if isinstance(v, (dict, list)))
        if len(out) > _MAX_REFS:
            raise errors.bad_request(f"The request names more than {_MAX_REFS} provider objects.", code="too_many_ids")
    return out


def _one_of_each(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise errors.bad_request(
                f"The request body gives the key '{k[:40]}' twice in one object.", param=k[:40], code="duplicate_key"
            )
        out[k] = v
    return out


def batch_file_refs(content: bytes) -> list[tuple[int, str, str]]:
    """(line, field, id) for each provider object the requests of a batch input file (JSONL) name: the provider
    runs them under the same key as any request, so they are held to the same ownership check. Read line by
    line at every LF (a CR is JSON whitespace to a parser that splits at LF only, so it never hides a key from
    this reading); a line that names an object and does not parse, or a file that is not UTF-8 text, is an
    APIError (refused rather than passed on unchecked)."""
    if b"\x00" in content:
        raise errors.bad_request("A batch input file must be UTF-8 JSONL text.", code="invalid_body")
    if _REF_RE.search(content) is None:
        return []
    out: list[tuple[int, str, str]] = []
    for n, line in enumerate(content.split(b"\n"), 1):
        if _REF_RE.search(line) is None:
            continue
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            raise errors.bad_request(
                f"Line {n} of the batch input file names a provider object and is not one JSON "
                "object keyplane can read.",
                code="invalid_body",
            ) from None
        out.extend((n, k, i) for k, i in _walk(obj))
        if len(out) > _MAX_FILE_REFS:
            raise errors.bad_request(
                f"The batch input file names more than {_MAX_FILE_REFS} provider objects.", code="too_many_ids"
            )
    return out


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
        want: list[str] = []
        now = self.rt.clock.monotonic()
        for i in ids:
            o = self.cache.get(i)
            if o is not None:
                out[i] = o
            elif self.misses.get(i, 0.0) <= now and len(i) <= 128:
                want.append(i)
        if want:
            async with self.rt.read() as s:
                rows = (
                    await s.execute(
                        select(
                            ProviderObject.id, ProviderObject.project_id, ProviderObject.upstream, ProviderObject.object
                        ).where(ProviderObject.id.in_(want))
                    )
                ).all()
            for r in rows:
                out[r.id] = self._remember(r.id, Owner(r.project_id, r.upstream, r.object or ""))
            if len(self.misses) >= _MISS_MAX:
                self.misses.clear()
            for i in want:
                if i not in out:
                    self.misses[i] = now + _MISS_TTL
        return out

    def _remember(self, oid: str, owner: Owner) -> Owner:
        if len(self.cache) >= _CACHE_MAX:  # drop the oldest tenth (dicts keep insertion order)
            for k in list(self.cache)[: _CACHE_MAX // 10]:
                del self.cache[k]
        self.cache[oid] = owner
        self.misses.pop(oid, None)
        return owner

    async def record(self, rows: list[ProviderObject]) -> None:
        """Own these objects now in this process, and once committed on every instance (awaited).
        An id already owned keeps its first owner."""
        fresh = [r for r in rows if r.id not in self.cache]
        if not fresh:
            return
        for r in fresh:
            self._remember(r.id, Owner(r.project_id, r.upstream, r.object or ""))
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
                try:
                    async with self.rt.sessions() as s, s.begin():
                        await s.execute(ins(ProviderObject).on_conflict_do_nothing(index_elements=["id"]), values)
                except Exception:
                    # Kept in this process's cache; after a restart (or on another instance) the objects are
                    # owned by nobody: refused, never shown to another project (fail closed).
                    log.exception("could not record the owners of %d provider objects", len(batch))
                _release(batch)
        finally:  # cancelled (shutdown): nobody waits forever
            _release(batch)
            _release(self._pending)


def _release(batch: list[tuple[ProviderObject, asyncio.Future[None]]]) -> None:
    for _, fut in batch:
        if not fut.done():
            fut.set_result(None)


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
        wanted.extend(i for _, i in refs)
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
            o = owners.get(oid)
            if o is None or o.project_id != pid:
                raise errors.object_not_found(REF_FIELDS[name], oid, param=name)
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
            _row(
                m.group(1).decode("ascii"),
                "response" if req.endpoint == "/v1/responses" else "chat.completion",
                req.project_id or "",
                req.upstream or "",
                int(self.rt.clock.now()),
            )
        )

    def wants_body(self, req: TenantRequest) -> bool:
        """True when after() must see the whole JSON answer (creates, lists, batch and job retrievals, a vector
        store's retrieval, modification or deletion: its size is metered, usage/storage.py)."""
        t = target(req.endpoint)
        if (
            t is not None
            and t.collection == _STORES
            and t.object_id is not None
            and req.endpoint == f"{_STORES}/{t.object_id}"
        ):
            return True
        if req.method == "POST":
            return req.endpoint in _CREATES_ALSO or (
                t is not None and (t.object_id is None or req.endpoint.endswith(("/complete", "/cancel")))
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
        if not (create or listing or self.wants_body(req)):
            return body
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
                rows.extend(_derived(item, pid, upstream, now))
            seen = obj["data"]  # the caller's own items only
        else:
            if create:
                rows.extend(_created(obj, pid, upstream, now))
            rows.extend(_derived(obj, pid, upstream, now))
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
                rows = [r if r.id != obj.get("id") else _row(r.id, UNCHECKED_FILE, pid, upstream, now)[0] for r in rows]
        if rows:
            await self.store.record(rows)
        if t is not None and t.collection == _STORES and (sizes := self.rt.features.usage_vector_stores):
            await sizes.observe(pid, seen)  # usage_bytes, for the Usage API's vector_stores bucket
        kind = obj.get("object")
        if kind == "batch" or (kind == "file" and create):
            await self._batches(req, obj, create)
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
        owners = await self.store.owners({i for _, _, i in refs})
        for line, name, oid in refs:
            o = owners.get(oid)
            if o is None or o.project_id != pid:
                return f"line {line} names {REF_FIELDS[name]} `{oid[:64]}` ({name}), which the project does not own"
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


def _stored(endpoint: str, body: bytes) -> bool:
    m = _STORE_RE.search(body)
    return _STORED_IF[endpoint] if m is None else m.group(1) == b"true"


def _row(oid: object, kind: object, pid: str, upstream: str, now: int) -> list[ProviderObject]:
    if not isinstance(oid, str) or not oid or len(oid) > 128:
        return []
    return [ProviderObject(id=oid, project_id=pid, object=str(kind or "")[:64], upstream=upstream, created_at=now)]


def _created(obj: dict[str, object], pid: str, upstream: str, now: int) -> list[ProviderObject]:
    rows = _row(obj.get("id"), obj.get("object"), pid, upstream, now)
    f = obj.get("file")  # a completed upload carries the file it made
    if isinstance(f, dict):
        rows += _row(f.get("id"), f.get("object") or "file", pid, upstream, now)
    rows += _row(obj.get("thread_id"), "thread", pid, upstream, now)  # POST /v1/threads/runs
    return rows


def _derived(obj: object, pid: str, upstream: str, now: int) -> list[ProviderObject]:
    """Files the provider made for an object the caller owns: a batch's output and errors, a job's results."""
    if not isinstance(obj, dict):
        return []
    rows: list[ProviderObject] = []
    if obj.get("object") == "batch":
        for k in ("output_file_id", "error_file_id"):
            rows += _row(obj.get(k), "file", pid, upstream, now)
    elif obj.get("object") == "fine_tuning.job" and isinstance(obj.get("result_files"), list):
        for f in obj["result_files"]:
            rows += _row(f, "file", pid, upstream, now)
    return rows
