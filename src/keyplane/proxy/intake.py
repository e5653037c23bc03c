"""The canonical request: everything the proxy checks and reads before admission (DESIGN.md "The pipeline",
the first steps of :meth:`keyplane.proxy.handler.ProxyApp.__call__`).

    headers and path made canonical -> IP allowlists -> authenticate -> scope -> body read (or an upload
    begun) -> fields (model, stream, output limit) -> one reading of the body -> model and hosted tool
    permissions -> object ownership (tenancy) -> the upstreams that may serve it

Any refusal is an :class:`errors.APIError` raised from :meth:`Intake.read`; the handler answers it, and
meters it once the key is known (``Intake.entry``). A few requests are answered here and go no further:
the key's own metadata, a Realtime client secret, ``/v1/models``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from keyplane import errors
from keyplane.auth import authenticate
from keyplane.proxy import authority, canonical, client_secrets, replies, request, skipped, uploads
from keyplane.proxy.canonical import Endpoint
from keyplane.proxy.context import RequestContext
from keyplane.proxy.owners import fine_tuned_ids, foreign_model
from keyplane.proxy.request import Fields
from keyplane.snapshot import KeyEntry

if TYPE_CHECKING:
    from keyplane.proxy.handler import ProxyApp
    from keyplane.proxy.router import Deployment

# Endpoints whose streams report usage only when stream_options.include_usage is set.
_NEEDS_INCLUDE_USAGE: Final = frozenset({"/v1/chat/completions", "/v1/completions"})
# keyplane extension: any live key may read its own metadata (what `keyplane doctor` shows).
KEY_INFO_PATH: Final = "/v1/keyplane/key"
# Methods that take no body: keyplane checks POST bodies only, so it forwards no other.
_NO_BODY: Final = frozenset({"GET", "HEAD", "DELETE", "OPTIONS"})


class Intake:
    """One request as read and checked before admission. ``entry`` is set as soon as the key is known."""

    __slots__ = ("body", "entry", "ep", "fields", "method", "model", "path", "pool", "stream", "strip_usage", "upload")

    def __init__(self, scope: dict[str, Any]) -> None:
        self.method: str = scope["method"]
        self.path: str = scope["path"]  # replaced by the canonical path as soon as it is known
        self.entry: KeyEntry | None = None
        self.ep: Endpoint
        self.body = b""
        self.upload: uploads.Upload | None = None
        self.fields: Fields | None = None
        self.model: str | None = None
        self.stream = False
        self.strip_usage = False  # keyplane asked for the stream's usage chunk: not the client's to see
        self.pool: tuple[Deployment, ...] = ()

    async def read(self, app: ProxyApp, scope: dict[str, Any], receive: Any, send: Any, rid: bytes, t0: float) -> bool:
        """Check and read the request; False when it was answered here (nothing more to do)."""
        rt, access = app.rt, app.access
        method = self.method
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        request.check_headers(headers)
        raw = scope.get("raw_path")
        path = self.path = canonical.canonical_path(raw if raw is not None else self.path.encode("utf-8"))
        canonical.check_query(scope["query_string"])
        if access is not None:  # the organization's IP allowlist, before the key is even looked at
            access.check_org_ip(scope.get("client"), headers)
        entry = self.entry = authenticate(rt, headers, scope["query_string"])
        if access is not None:  # project and key IP allowlists, before anything else the key may do
            if access.behind(access.revision):  # (a key's policies are never older than the key: keyplane.access)
                await access.current()
            access.check_ip(entry.project_id, entry.id, scope.get("client"), headers)
        rt.last_used.touch(entry.id, rt.clock.now())
        if path == KEY_INFO_PATH and method == "GET":
            await replies.send_json(send, replies.key_info(rt, entry), rid, t0)
            return False
        if path == client_secrets.PATH and method == "POST":  # browser Realtime sessions (proxy/realtime.py)
            pid = entry.project_id
            answer = await client_secrets.mint(rt, entry, scope, receive, lambda m: own_model(app, m, pid))
            await replies.send_json(send, answer, rid, t0)
            return False
        ep = self.ep = canonical.classify(method, path)
        if ep.scope is None:
            raise errors.path_not_proxied(method, path)
        if not entry.permissions.allows(ep.scope):
            raise errors.missing_scope(ep.scope)
        if method in ("GET", "HEAD") and path.startswith("/v1/models"):  # filtered by model permissions
            await models(app, send, path, rid, t0, entry.project_id, entry.id)
            return False
        if method == "POST" and uploads.streamed(path):  # large multipart uploads stream (proxy/uploads.py)
            body, upload = await uploads.begin(scope, receive, app.max_body, path)
        else:
            body, upload = await request.read_body(scope, receive, app.max_body), None
            if body and method in _NO_BODY:  # never admitted nor checked: not forwarded either
                raise errors.bad_request(
                    f"A request with method {method} takes no body; keyplane refuses one rather than "
                    "forward it unchecked.",
                    code="unexpected_body",
                )
        if upload is not None:
            fields = upload.fields if ep.model or ep.spending else None
        else:
            fields = request.read_fields(ep, headers, body) if ep.model or ep.spending else None
            if body and method == "POST" and (fields is None or fields.form is None):  # read alike by all
                if len(body) > request.BIG_BODY:  # (not JSON: no ids to read)
                    await request.one_reading(body, strict=fields is not None)
                else:
                    request.check_one_reading(body, strict=fields is not None)
        model = fields.model if fields is not None else None
        if ep.model:
            assert fields is not None
            if not model:
                raise errors.missing_model()
            self.stream = fields.stream and ep.flavour != 0
            if self.stream and path in _NEEDS_INCLUDE_USAGE and not fields.include_usage:
                body = request.with_include_usage(body)
                self.strip_usage = True
        elif model is None and body and request.is_json(headers):
            model = request.parse_head(body).model  # routing only (e.g. a passthrough with a model)
        if access is not None:  # model and hosted tool permissions, before any upstream call
            access.check_request(
                entry.project_id, entry.id, path, method, model, ep.spending, body, request.is_json(headers)
            )
        # Objects another project owns answer 404 here, before any upstream call (proxy/tenancy.py).
        pinned = await app.tenancy.check(method, path, entry.project_id, body)
        if model and model.startswith("ft:"):  # a fine-tuned model is its project's own (proxy/owners.py)
            await own_model(app, model, entry.project_id)
        pool = app.tenancy.pool(path, entry.project_id, model, pinned)
        if (bound := rt.features.providers_keys) is not None:  # a project's own provider key
            pool = bound.apply(entry.project_id, pool)  # (keyplane.providers.bindings)
        if not pool:
            raise skipped.no_route(rt, model, entry.project_id, entry.id)
        # The body took as long as the client liked, and the checks since may have waited: the key is looked at
        # again, so a request finished after its key's revocation never goes upstream, and one whose key changed
        # meanwhile (narrower permissions, a new IP allowlist) is held to the key as it is now.
        if rt.snapshot.keys_by_id.get(entry.id) is not entry:
            entry = self.entry = self._still(app, entry, scope, headers)
        elif access is not None:
            access.check_ip(entry.project_id, entry.id, scope.get("client"), headers)
        self.body, self.upload, self.fields, self.model, self.pool = body, upload, fields, model, pool
        return True

    def again(self, app: ProxyApp, scope: dict[str, Any], headers: list[tuple[bytes, bytes]]) -> KeyEntry:
        """The same second look, once admission is done: admission may have waited (on Redis, or for a large
        upload it spools and measures before pricing it: billing/admission_audio.py, read after :meth:`read`
        returned), and a key revoked or narrowed meanwhile must not reach the upstream either. An upload's model
        is held to the model permissions as they are now, too. Returns the key's entry now."""
        entry = self.entry
        assert entry is not None
        if app.rt.snapshot.keys_by_id.get(entry.id) is not entry:
            entry = self.entry = self._still(app, entry, scope, headers)
        if self.upload is not None and app.access is not None:
            app.access.check_request(
                entry.project_id, entry.id, self.path, self.method, self.model, self.ep.spending, self.body, False
            )
        return entry

    def _still(
        self, app: ProxyApp, entry: KeyEntry, scope: dict[str, Any], headers: list[tuple[bytes, bytes]]
    ) -> KeyEntry:
        """The key's entry now, if it may still make this request: a 401/403 if it was revoked, suspended, deleted or
        expired (or its project archived) since it was authenticated, or if it no longer has the endpoint's scope."""
        cut = authority.ended(app.rt, RequestContext("", entry, entry.project_id, self.path))
        if cut is not None:
            raise cut
        now = app.rt.snapshot.keys_by_id[entry.id]
        if self.ep.scope is not None and not now.permissions.allows(self.ep.scope):
            raise errors.missing_scope(self.ep.scope)
        if app.access is not None:
            app.access.check_ip(now.project_id, now.id, scope.get("client"), headers)
        return now


async def own_model(app: ProxyApp, model: str, project_id: str | None) -> None:
    """404, as for a model that does not exist, when another project's fine-tuning job made ``model`` (or
    the model a checkpoint belongs to). A fine-tuned model not made through keyplane (nor assigned to a project)
    has no owner here. The same rule holds a fine-tuned model named deeper in a JSON body (proxy/tenancy.py)."""
    found = await app.tenancy.store.owners(fine_tuned_ids(model))
    if foreign_model(found, model, project_id or ""):
        raise errors.model_not_found(model)


async def models(
    app: ProxyApp, send: Any, path: str, rid: bytes, t0: float, project_id: str | None = None, key_id: str = ""
) -> None:
    """GET /v1/models (and one model): only the models the key's project and key model permissions allow
    (keyplane.access); the others are listed nowhere and retrieved as if they did not exist."""
    access = app.access

    def visible(model: str) -> bool:
        return access is None or bool(access.model_visible(project_id, key_id, model))

    if path in ("/v1/models", "/v1/models/"):
        data = [m for m in await app.catalog.list() if visible(m["id"])]
        tuned = [m["id"] for m in data if isinstance(m.get("id"), str) and m["id"].startswith("ft:")]
        if tuned:  # another project's fine-tuned models are listed nowhere either
            found = await app.tenancy.store.owners(tuned)
            data = [m for m in data if (o := found.get(m["id"])) is None or o.project_id == (project_id or "")]
        await replies.send_json(send, {"object": "list", "data": data}, rid, t0)
        return
    model = path[len("/v1/models/") :]
    if not visible(model):
        raise errors.model_not_found(model)
    if model.startswith("ft:"):
        await own_model(app, model, project_id)
    try:
        obj = await app.catalog.get(model)
    except errors.APIError as e:  # served by an upstream skipped for want of its key: say so (503)
        if e.code != "model_not_found":
            raise
        raise skipped.no_route(app.rt, model, project_id, key_id) from None
    await replies.send_json(send, obj, rid, t0)
