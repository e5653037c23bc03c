"""The /v1 request flow, raw ASGI, top to bottom in :meth:`ProxyApp.__call__` (DESIGN.md "The pipeline"):

    canonical request -> authenticate -> authorize -> read -> route -> admit -> (cache) -> forward
    -> relay -> settle -> record -> observe

One handler for every proxied path. Model endpoints (chat/completions, completions, embeddings,
responses) have their usage read; /v1/models is answered here; any other /v1 path a permission area
covers is passed through (object paths checked for their project: proxy/tenancy.py). The features'
steps are keyplane.pipeline's: once admitted, a request is always settled, recorded and observed,
client disconnects and upstream failures included (proxy/context.py holds what each step leaves).
proxy/replies.py writes keyplane's own answers and passes the upstream's headers on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Final

from keyplane import errors, logs
from keyplane.auth import authenticate
from keyplane.cache import attach as attach_cache
from keyplane.proxy import canonical, client_secrets, estimate, replies, request, skipped, sse, uploads
from keyplane.proxy.canonical import MODEL_ENDPOINTS
from keyplane.proxy.context import RequestContext
from keyplane.proxy.forward import JSON, OBJECT, RAW, SSE, Forwarder, Outcome
from keyplane.proxy.models import ModelCatalog
from keyplane.proxy.owners import fine_tuned_ids
from keyplane.proxy.replies import new_request_id
from keyplane.proxy.router import Router
from keyplane.proxy.tenancy import Tenancy
from keyplane.proxy.upstream import RETRYABLE_ERRORS
from keyplane.proxy.usage import READ_WHOLE, fill_units, tool_calls
from keyplane.runtime import Runtime
from keyplane.snapshot import KeyEntry

log = logging.getLogger("keyplane.proxy")

# Endpoints whose streams report usage only when stream_options.include_usage is set.
_NEEDS_INCLUDE_USAGE: Final = frozenset({"/v1/chat/completions", "/v1/completions"})

# keyplane extension: any live key may read its own metadata (what `keyplane doctor` shows).
KEY_INFO_PATH: Final = "/v1/keyplane/key"


_NO_BODY: Final = frozenset({"GET", "HEAD", "DELETE", "OPTIONS"})


class _Watch:
    """Cancels the handler task when the client disconnects (DESIGN.md hot-path rule 7)."""

    __slots__ = ("armed", "fired", "settled", "task")

    def __init__(self, task: asyncio.Task[Any] | None) -> None:
        self.task = task
        self.armed = True
        self.fired = False
        self.settled = False

    def __call__(self, fut: asyncio.Future[Any]) -> None:
        if not self.armed or fut.cancelled() or fut.exception() is not None:
            return
        if fut.result().get("type") == "http.disconnect" and self.task is not None:
            self.fired = True
            self.task.cancel()


class ProxyApp:
    def __init__(self, rt: Runtime, router: Router, forwarder: Forwarder, catalog: ModelCatalog) -> None:
        self.rt = rt
        self.router = router
        self.forwarder = forwarder
        self.catalog = catalog
        self.max_body = rt.settings.max_body_bytes
        self.cache = attach_cache(rt, router)  # prefix routing and response cache (docs/caching.md); None: off
        self.tenancy = Tenancy(rt, router)  # projects isolated at the provider (proxy/tenancy.py)
        self.tenancy.attach_client(forwarder.client)  # batch metering reads output files (billing/batches.py)
        self.access = rt.features.access  # model and hosted tool permissions (keyplane.access)
        self.identity = rt.features.identity  # workload identity rules (keyplane.identity)

    async def aclose(self) -> None:
        await self.forwarder.client.aclose()
        if self.cache is not None:
            await self.cache.aclose()

    # --- responses -------------------------------------------------------------------------------

    async def _own_model(self, model: str, project_id: str | None) -> None:
        """404, as for a model that does not exist, when another project's fine-tuning job made ``model`` (or
        the model a checkpoint belongs to). A fine-tuned model not made through keyplane has no owner here."""
        found = await self.tenancy.store.owners(fine_tuned_ids(model))
        if any(o.project_id != (project_id or "") for o in found.values()):
            raise errors.model_not_found(model)

    # --- the flow -------------------------------------------------------------------------------

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        t0 = time.perf_counter()
        rt = self.rt
        rid = new_request_id()
        method: str = scope["method"]
        path: str = scope["path"]  # replaced by the canonical path as soon as it is known
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        entry: KeyEntry | None = None
        try:
            request.check_headers(headers)
            raw = scope.get("raw_path")
            path = canonical.canonical_path(raw if raw is not None else path.encode("utf-8"))
            canonical.check_query(scope["query_string"])
            if self.access is not None:  # the organization's IP allowlist, before the key is even looked at
                self.access.check_org_ip(scope.get("client"), headers)
            entry = authenticate(rt, headers, scope["query_string"])
            if self.access is not None:  # project and key IP allowlists, before anything else the key may do
                await self.access.current()  # (a key's policies are never older than the key: keyplane.access)
                self.access.check_ip(entry.project_id, entry.id, scope.get("client"), headers)
            rt.last_used.touch(entry.id, rt.clock.now())
            if path == KEY_INFO_PATH and method == "GET":
                await replies.send_json(send, replies.key_info(rt, entry), rid, t0)
                return
            if path == client_secrets.PATH and method == "POST":  # browser Realtime sessions (proxy/realtime.py)
                await replies.send_json(send, await client_secrets.mint(rt, entry, scope, receive), rid, t0)
                return
            ep = canonical.classify(method, path)
            if ep.scope is None:
                raise errors.path_not_proxied(method, path)
            if not entry.permissions.allows(ep.scope):
                raise errors.missing_scope(ep.scope)
            if method in ("GET", "HEAD") and path.startswith("/v1/models"):  # filtered by model permissions
                await self._models(send, path, rid, t0, entry.project_id, entry.id)
                return
            if method == "POST" and uploads.streamed(path):  # large multipart uploads stream (proxy/uploads.py)
                body, upload = await uploads.begin(scope, receive, self.max_body, path)
            else:
                body, upload = await request.read_body(scope, receive, self.max_body), None
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
                    await request.one_reading(body, strict=fields is not None)  # (not JSON: no ids to read)
            model = fields.model if fields is not None else None
            stream = strip_usage = False
            if ep.model:
                assert fields is not None
                if not model:
                    raise errors.missing_model()
                stream = fields.stream and ep.flavour != 0
                if stream and path in _NEEDS_INCLUDE_USAGE and not fields.include_usage:
                    body = request.with_include_usage(body)
                    strip_usage = True
            elif model is None and body and request.is_json(headers):
                model = request.parse_head(body).model  # routing only (e.g. a passthrough with a model)
            if self.access is not None:  # model and hosted tool permissions, before any upstream call
                self.access.check_request(
                    entry.project_id, entry.id, path, method, model, ep.spending, body, request.is_json(headers)
                )
            # Objects another project owns answer 404 here, before any upstream call (proxy/tenancy.py).
            pinned = await self.tenancy.check(method, path, entry.project_id, body)
            if model and model.startswith("ft:"):  # a fine-tuned model is its project's own (proxy/owners.py)
                await self._own_model(model, entry.project_id)
            pool = self.tenancy.pool(path, entry.project_id, model, pinned)
            if (bound := rt.features.providers_keys) is not None:  # a project's own provider key
                pool = bound.apply(entry.project_id, pool)  # (keyplane.providers.bindings)
            if not pool:
                raise skipped.no_route(rt, model, entry.project_id)
        except errors.APIError as e:
            await replies.send_error(send, e, rid, t0)
            if entry is not None:  # an authenticated key refused: metered, and the kill switch watches
                await self._refused(RequestContext(rid.decode(), entry, entry.project_id, path, method), e)
            return
        except request.ClientGone:
            return
        except Exception:
            log.exception("proxy error before forwarding %s %s", method, logs.safe(path))
            await replies.send_error(send, errors.internal_error(), rid, t0)
            return
        ctx = RequestContext(
            rid.decode(),
            entry,
            entry.project_id,
            path,
            method,
            model,
            stream,
            body,
            fields.output_limit if fields is not None else None,
        )
        ctx.spending = ep.spending
        ctx.query = scope["query_string"]
        if path == "/v1/files" and method == "POST":  # a batch input file is priced from the upload
            cts = [v for k, v in headers if k == b"content-type"]
            ctx.content_type = cts[0] if len(cts) == 1 else None
        if fields is not None:
            ctx.context_ref = fields.context_ref
            ctx.form = fields.form
        ctx.upload = upload
        ctx.pool = pool  # billing reserves a request naming no service tier at its upstreams' default tier
        ctx.started = t0
        client = scope.get("client")
        if client:
            ctx.client_ip = client[0]
        for k, v in headers:
            if k == b"user-agent":
                ctx.user_agent = v.decode("latin-1")
                break
        try:  # admit: rate limits, budgets, credit, reserved in one atomic step (keyplane.pipeline)
            await rt.pipeline.admit(ctx)
        except errors.APIError as e:
            await replies.send_error(send, e, rid, t0, ctx.extra_headers)
            await self._refused(ctx, e)
            return
        except Exception:
            log.exception("admission failed for %s", ctx.request_id)
            await replies.send_error(send, errors.internal_error(), rid, t0, ctx.extra_headers)
            return
        # Transcriptions and moderations: the JSON answer is read whole (small) for its usage.
        mode = (
            (SSE if stream else JSON)
            if ep.model
            else (OBJECT if self.tenancy.wants_body(ctx) or path in READ_WHOLE else RAW)
        )
        if self.cache is not None and ep.model:
            send = await self.cache.serve(ctx, headers, send, lambda: self._finish(ctx, t0, _Watch(None)))
            if send is None:  # answered from the response cache
                return
            pool = self.router.route(pool, ctx)
        # ctx.body, not body: admission may have set the output limit it reserved (docs/limits-and-billing.md)
        sent: bytes | uploads.Upload = ctx.body
        if upload is not None:  # the rest of the body streams upstream; the disconnect watch waits for its end
            receive, sent = upload.receive_after, upload
        await self._forward(scope, receive, send, ctx, pool, sent, mode, ep.flavour, strip_usage, t0)

    async def _forward(
        self,
        scope: dict[str, Any],
        receive: Any,
        send: Any,
        ctx: RequestContext,
        pool: Any,
        body: bytes | uploads.Upload,
        mode: int,
        flavour: int,
        strip_usage: bool,
        t0: float,
    ) -> None:
        watch = _Watch(asyncio.current_task())
        waiter = asyncio.ensure_future(receive())
        waiter.add_done_callback(watch)
        relay: sse.StreamRelay | None = None
        out: Outcome | None = None
        started = False
        try:
            qs = scope["query_string"]
            path_qs = ctx.endpoint + "?" + qs.decode("latin-1") if qs else ctx.endpoint
            try:
                out = await self.forwarder.send(pool, ctx.method, path_qs, scope["headers"], body, mode, ctx.model, ctx)
            except errors.APIError as e:
                ctx.status, ctx.error = e.status, e.code
                if ctx.upstream_received:  # the provider may have run (and billed) it: billed at its estimate
                    self._usage_from_relay(ctx, None)
                await self._finish(ctx, t0, watch)
                await replies.send_error(send, e, ctx.request_id.encode(), t0, ctx.extra_headers)
                return
            ctx.upstream = out.dep.name
            status = out.resp.status
            if out.body is not None:  # JSON answers and every upstream error
                payload = replies.redact(out.body, out.dep.api_key)
                wrapped = status >= 400 and not replies.is_openai_error(payload)
                if wrapped:
                    payload = replies.wrap_error(out.dep.name, status, payload)
                if out.usage is not None:
                    ctx.prompt_tokens, ctx.cached_tokens, ctx.completion_tokens = out.usage.numbers()
                    ctx.tool_calls = tool_calls(out.usage)
                    ctx.audio_tokens = out.usage.audio()
                    ctx.service_tier = out.usage.service_tier
                if status < 300:
                    fill_units(ctx, out.body)
                ctx.status = status
                if status < 300:  # record created objects, keep the caller's own in a list (proxy/tenancy.py)
                    try:
                        payload = await self.tenancy.after(ctx, status, payload)
                    except errors.APIError as e:  # what the answer started could not be kept (fail closed)
                        ctx.status, ctx.error = e.status, e.code
                        await self._finish(ctx, t0, watch)
                        await replies.send_error(send, e, ctx.request_id.encode(), t0, ctx.extra_headers)
                        return
                h = replies.response_headers(out, ctx, t0, len(payload), wrapped)
                await self._finish(ctx, t0, watch)
                started = True
                await send({"type": "http.response.start", "status": status, "headers": h})
                await send({"type": "http.response.body", "body": payload})
                return
            ctx.status = status
            if out.first is None:  # pass-through (RAW, or an object path answered with a stream or bytes)
                started = True
                await self._relay_raw(send, out, ctx, t0, watch)
                return
            relay = sse.StreamRelay(flavour, strip_usage)
            if out.first is not None:
                await self.tenancy.streamed(ctx, out.first)  # a stored response's id: owned before it is seen
            started = True
            await send(
                {
                    "type": "http.response.start",
                    "status": status,
                    "headers": replies.response_headers(out, ctx, t0, None),
                }
            )
            flow = self.rt.pipeline
            flow.stream_started()  # the active-streams gauge (metering)
            try:
                await self._relay_sse(send, out, relay, ctx, t0, watch)
            finally:
                flow.stream_ended()
        except asyncio.CancelledError:
            if not watch.fired:
                raise
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            if out is not None:
                out.resp.close()
            ctx.disconnected = True
            if not started:
                ctx.status = 499  # client closed the request (nginx's convention)
            self._usage_from_relay(ctx, relay)
            await self._finish(ctx, t0, watch)
        except Exception:
            # A bug, not the upstream's fault: answer in OpenAI's shape if nothing was sent yet, settle anyway.
            log.exception("proxy error for %s", ctx.request_id)
            if out is not None:
                out.resp.close()
            ctx.error = ctx.error or "internal_error"
            if not started:
                ctx.status = 500
            self._usage_from_relay(ctx, relay)
            await self._finish(ctx, t0, watch)
            if not started:
                await replies.send_error(send, errors.internal_error(), ctx.request_id.encode(), t0, ctx.extra_headers)
        finally:
            watch.armed = False
            if not waiter.done():
                waiter.cancel()

    async def _relay_sse(
        self, send: Any, out: Outcome, relay: sse.StreamRelay, ctx: RequestContext, t0: float, watch: _Watch
    ) -> None:
        assert out.first is not None and out.rest is not None
        data = relay.feed(out.first)
        if data:
            ctx.ttft_ms = (time.perf_counter() - t0) * 1000
            await send({"type": "http.response.body", "body": data, "more_body": True})
        try:
            async for chunk in out.rest:
                cut = self._authority_ended(ctx)
                if cut is not None:
                    out.resp.close()
                    await send({"type": "http.response.body", "body": sse.error_event(cut), "more_body": True})
                    break
                data = relay.feed(chunk)
                if data:
                    if ctx.ttft_ms is None:
                        ctx.ttft_ms = (time.perf_counter() - t0) * 1000
                    await send({"type": "http.response.body", "body": data, "more_body": True})
            tail = relay.flush()
            if tail:
                await send({"type": "http.response.body", "body": tail, "more_body": True})
            final = relay.held
        except RETRYABLE_ERRORS as e:
            out.resp.close()
            err = (
                errors.upstream_timeout(out.dep.name)
                if isinstance(e, TimeoutError)
                else errors.upstream_stream_broken(out.dep.name)
            )
            ctx.error = err.code
            log.warning("upstream %s broke a stream mid-way (%s): %s", out.dep.name, ctx.request_id, type(e).__name__)
            final = relay.held + sse.error_event(err)
        self._usage_from_relay(ctx, relay)
        await self._finish(ctx, t0, watch)
        await send({"type": "http.response.body", "body": final, "more_body": False})

    async def _relay_raw(self, send: Any, out: Outcome, ctx: RequestContext, t0: float, watch: _Watch) -> None:
        assert out.rest is not None
        await send(
            {
                "type": "http.response.start",
                "status": out.resp.status,
                "headers": replies.response_headers(out, ctx, t0, None),
            }
        )
        is_sse = out.resp.content_type == "text/event-stream"
        try:
            async for chunk in out.rest:
                cut = self._authority_ended(ctx)
                if cut is not None:
                    out.resp.close()
                    if is_sse:
                        await send({"type": "http.response.body", "body": sse.error_event(cut), "more_body": True})
                    break
                if ctx.ttft_ms is None:
                    ctx.ttft_ms = (time.perf_counter() - t0) * 1000
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except RETRYABLE_ERRORS:
            out.resp.close()
            err = errors.upstream_stream_broken(out.dep.name)
            ctx.error = err.code
            if is_sse:
                await send({"type": "http.response.body", "body": sse.error_event(err), "more_body": True})
        await self._finish(ctx, t0, watch)
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    def _authority_ended(self, ctx: RequestContext) -> errors.APIError | None:
        """Why a stream in flight must be cut now (its key revoked, suspended, deleted or expired, its project
        archived: docs/guard.md; a workload token's federation rule or provider disabled), or None. A few
        dict lookups and an identity check per chunk."""
        snap, key = self.rt.snapshot, ctx.key
        now_key = snap.keys_by_id.get(key.id)
        if now_key is not key and (now_key is None or now_key.revoked_at or now_key.suspended_at):
            why = now_key.inactive_reason(self.rt.clock.now()) if now_key else "has been deleted."
            ctx.error = "key_disabled"
            return errors.key_inactive(key.redacted_value, why or "is no longer active.")
        if now_key is not None and now_key.expires_at is not None:  # a key that expires mid-stream
            why = now_key.inactive_reason(self.rt.clock.now())
            if why:
                ctx.error = "key_disabled"
                return errors.key_inactive(key.redacted_value, why)
        if self.identity is not None and (ended := self.identity.key_ended(key.id)):  # a keyless key's rule
            ctx.error = "key_disabled"
            return errors.key_inactive(key.redacted_value, ended)
        if ctx.project_id is not None:
            p = snap.projects.get(ctx.project_id)
            if p is None or p.status != "active":
                ctx.error = "project_archived"
                return errors.project_archived(key.redacted_value, p.name if p else ctx.project_id, ctx.project_id)
        return None

    def _usage_from_relay(self, ctx: RequestContext, relay: sse.StreamRelay | None) -> None:
        if relay is not None and relay.usage is not None:
            ctx.prompt_tokens, ctx.cached_tokens, ctx.completion_tokens = relay.usage.numbers()
            ctx.tool_calls = tool_calls(relay.usage)
            ctx.audio_tokens = relay.usage.audio()
            ctx.service_tier = relay.usage.service_tier
            return
        if ctx.model is None or ctx.endpoint not in MODEL_ENDPOINTS:
            return
        # No usage from the upstream: estimate what was generated until the stream stopped.
        ctx.usage_estimated = True
        ctx.prompt_tokens = estimate.prompt_tokens(ctx.body)
        # Past the text kept, every 3 bytes of events counts as a token: an upper bound, never less.
        ctx.completion_tokens = estimate.relayed_tokens(relay.pieces) + relay.uncounted // 3 if relay is not None else 0

    async def _refused(self, ctx: RequestContext, e: errors.APIError) -> None:
        """An authenticated key refused before the upstream: metered, and watched by the kill switch."""
        ctx.status, ctx.error = e.status, e.code
        await self.rt.pipeline.refused(ctx)

    async def _finish(self, ctx: RequestContext, t0: float, watch: _Watch) -> None:
        """settle -> record -> observe, once, before the last byte goes out (the usage is recorded even if
        the client vanishes next)."""
        watch.armed = False
        if watch.settled:
            return
        watch.settled = True
        ctx.latency_ms = (time.perf_counter() - t0) * 1000
        if ctx.ttft_ms is None and ctx.status and ctx.status < 400:
            ctx.ttft_ms = ctx.latency_ms
        await self.rt.pipeline.settle(ctx)  # never raises: each step's failure is logged

    async def _models(
        self, send: Any, path: str, rid: bytes, t0: float, project_id: str | None = None, key_id: str = ""
    ) -> None:
        # Only the models the key's project and key model permissions allow (keyplane.access); the others
        # are listed nowhere and retrieved as if they did not exist.
        def visible(model: str) -> bool:
            return self.access is None or bool(self.access.model_visible(project_id, key_id, model))

        if path in ("/v1/models", "/v1/models/"):
            data = [m for m in await self.catalog.list() if visible(m["id"])]
            tuned = [m["id"] for m in data if isinstance(m.get("id"), str) and m["id"].startswith("ft:")]
            if tuned:  # another project's fine-tuned models are listed nowhere either
                found = await self.tenancy.store.owners(tuned)
                data = [m for m in data if (o := found.get(m["id"])) is None or o.project_id == (project_id or "")]
            await replies.send_json(send, {"object": "list", "data": data}, rid, t0)
            return
        model = path[len("/v1/models/") :]
        if not visible(model):
            raise errors.model_not_found(model)
        if model.startswith("ft:"):
            await self._own_model(model, project_id)
        try:
            obj = await self.catalog.get(model)
        except errors.APIError as e:  # served by an upstream skipped for want of its key: say so (503)
            if e.code != "model_not_found":
                raise
            raise skipped.no_route(self.rt, model, project_id) from None
        await replies.send_json(send, obj, rid, t0)
