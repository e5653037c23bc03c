"""The /v1 request flow, raw ASGI, top to bottom in :meth:`ProxyApp.__call__` (DESIGN.md "The pipeline"):

    canonical request -> authenticate -> authorize -> read -> route -> admit -> (cache) -> forward
    -> relay -> settle -> record -> observe

The steps up to routing are proxy/intake.py's :class:`Intake` (everything checked before admission).

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
from typing import Any

from keyplane import errors, logs
from keyplane.cache import attach as attach_cache
from keyplane.proxy import authority, estimate, replies, request, sse, uploads
from keyplane.proxy.authority import Patrol, Watch
from keyplane.proxy.context import RequestContext
from keyplane.proxy.forward import JSON, OBJECT, RAW, SSE, Forwarder, Outcome
from keyplane.proxy.intake import Intake
from keyplane.proxy.models import ModelCatalog
from keyplane.proxy.replies import new_request_id
from keyplane.proxy.router import Router
from keyplane.proxy.tenancy import Tenancy
from keyplane.proxy.upstream import RETRYABLE_ERRORS
from keyplane.proxy.usage import IMAGES, READ_WHOLE, AnswerEdges, fill_units, image_tokens, tool_calls
from keyplane.runtime import Runtime

log = logging.getLogger("keyplane.proxy")


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
        self.patrol = Patrol(rt)  # a running request whose key or project ends is cut (proxy/authority.py)
        forwarder.still = lambda ctx: authority.ended(rt, ctx)  # and is never retried (proxy/forward.py)

    async def aclose(self) -> None:
        await self.patrol.aclose()
        await self.forwarder.client.aclose()
        if self.cache is not None:
            await self.cache.aclose()

    # --- the flow -------------------------------------------------------------------------------

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        t0 = time.perf_counter()
        rt = self.rt
        rid = new_request_id()
        req = Intake(scope)  # the canonical request: checked and read before admission (proxy/intake.py)
        try:
            if not await req.read(self, scope, receive, send, rid, t0):
                return  # answered there (the key's metadata, a client secret, /v1/models)
        except errors.APIError as e:
            await replies.send_error(send, e, rid, t0)
            if req.entry is not None:  # an authenticated key refused: metered, and the kill switch watches
                known = req.entry
                await self._refused(RequestContext(rid.decode(), known, known.project_id, req.path, req.method), e)
            return
        except request.ClientGone:
            return
        except Exception:
            log.exception("proxy error before forwarding %s %s", req.method, logs.safe(req.path))
            await replies.send_error(send, errors.internal_error(), rid, t0)
            return
        entry, ep, path, method, body, fields, upload, pool = (
            req.entry,
            req.ep,
            req.path,
            req.method,
            req.body,
            req.fields,
            req.upload,
            req.pool,
        )
        assert entry is not None
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        ctx = RequestContext(
            rid.decode(),
            entry,
            entry.project_id,
            path,
            method,
            req.model,
            req.stream,
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
        if upload is not None or rt.snapshot.keys_by_id.get(entry.id) is not entry:  # admission waited meanwhile
            try:  # (a spooled upload, read whole only now): the key as it is now, before any upstream call
                ctx.key = entry = req.again(self, scope, headers)
            except errors.APIError as e:
                ctx.status, ctx.error = e.status, e.code
                if upload is not None:
                    upload.close()
                await self._finish(ctx, t0, Watch(None))  # nothing went upstream: the reservation is released
                await replies.send_error(send, e, rid, t0, ctx.extra_headers)
                return
        # Transcriptions and moderations: the JSON answer is read whole (small) for its usage.
        mode = (
            (SSE if req.stream else JSON)
            if ep.model
            else (OBJECT if self.tenancy.wants_body(ctx) or path in READ_WHOLE else RAW)
        )
        if self.cache is not None and ep.model:
            send = await self.cache.serve(ctx, headers, send, lambda: self._finish(ctx, t0, Watch(None)))
            if send is None:  # answered from the response cache
                return
            pool = self.router.route(pool, ctx)
        # ctx.body, not body: admission may have set the output limit it reserved (docs/limits-and-billing.md)
        sent: bytes | uploads.Upload = ctx.body
        if upload is not None:  # the rest of the body streams upstream; the disconnect watch waits for its end
            receive, sent = upload.receive_after, upload
        await self._forward(scope, receive, send, ctx, pool, sent, mode, ep.flavour, req.strip_usage, t0)

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
        watch = Watch(asyncio.current_task(), ctx)
        self.patrol.add(watch)
        watch.listen(receive)  # the client's disconnect cancels this task (proxy/authority.py)
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
                    estimate.usage_from_relay(ctx, None)
                await self._finish(ctx, t0, watch)
                await replies.send_error(send, e, ctx.request_id.encode(), t0, ctx.extra_headers)
                return
            ctx.upstream = out.dep.name
            status = out.resp.status
            if out.body is not None:  # JSON answers and every upstream error
                # The whole answer is in: recording what it created (a batch, a file...) and settling its usage
                # are never cut by a disconnect or a revocation from here on (proxy/authority.py).
                watch.armed = False
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
                await self._finish(ctx, t0, watch, observe=False)
                started = True
                try:
                    await send({"type": "http.response.start", "status": status, "headers": h})
                    await send({"type": "http.response.body", "body": payload})
                finally:
                    self.rt.pipeline.observe(ctx)
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
            task = asyncio.current_task()
            if not watch.fired:
                # Cancelled from outside (the server stopping past its graceful timeout): settled and recorded at
                # what was relayed, as a client that left is (its hold freed: not billed at its whole reservation
                # at the next start), then the cancellation goes on.
                if task is not None:
                    task.uncancel()
                if out is not None:
                    out.resp.close()
                if not started:
                    ctx.status = 499
                ctx.error = ctx.error or "cancelled"
                if out is None or out.usage is None:
                    estimate.usage_from_relay(ctx, relay)
                await self._finish(ctx, t0, watch)
                raise
            if task is not None:
                task.uncancel()
            if out is not None:
                out.resp.close()
            cut = watch.cut  # the key or project ended while the call waited (proxy/authority.py), else the client left
            ctx.disconnected = cut is None
            if not started:
                ctx.status = 499 if cut is None else cut.status  # 499: client closed the request (nginx's)
            if out is None or out.usage is None:  # an answer read whole keeps the usage it reported
                estimate.usage_from_relay(ctx, relay)
            await self._finish(ctx, t0, watch)
            if cut is not None and not started:
                await replies.send_error(send, cut, ctx.request_id.encode(), t0, ctx.extra_headers)
            elif cut is not None:  # a stream under way: an error event where the answer is events, then its end
                events = relay is not None or (out is not None and out.resp.content_type == "text/event-stream")
                await send(
                    {"type": "http.response.body", "body": sse.error_event(cut) if events else b"", "more_body": False}
                )
        except Exception:
            # A bug, not the upstream's fault: answer in OpenAI's shape if nothing was sent yet, settle anyway.
            log.exception("proxy error for %s", ctx.request_id)
            if out is not None:
                out.resp.close()
            ctx.error = ctx.error or "internal_error"
            if not started:
                ctx.status = 500
            if out is None or out.usage is None:  # an answer read whole keeps the usage it reported
                estimate.usage_from_relay(ctx, relay)
            await self._finish(ctx, t0, watch)
            if not started:
                await replies.send_error(send, errors.internal_error(), ctx.request_id.encode(), t0, ctx.extra_headers)
        finally:
            watch.stop()
            self.patrol.discard(watch)

    async def _relay_sse(
        self, send: Any, out: Outcome, relay: sse.StreamRelay, ctx: RequestContext, t0: float, watch: Watch
    ) -> None:
        assert out.first is not None and out.rest is not None
        data = relay.feed(out.first)
        if data:
            ctx.ttft_ms = (time.perf_counter() - t0) * 1000
            await send({"type": "http.response.body", "body": data, "more_body": True})
        try:
            async for chunk in out.rest:
                cut = authority.ended(self.rt, ctx)
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
        if relay.item_ids:  # a stored response's output items: the project's own before it sees them
            await self.tenancy.stream_items(ctx, relay.item_ids)
        if relay.audio_ids:  # a chat answer's audio: the project's own (a later turn may name it)
            await self.tenancy.audio_answers(ctx, relay.audio_ids)
        estimate.usage_from_relay(ctx, relay)
        await self._finish(ctx, t0, watch)
        await send({"type": "http.response.body", "body": final, "more_body": False})

    async def _relay_raw(self, send: Any, out: Outcome, ctx: RequestContext, t0: float, watch: Watch) -> None:
        assert out.rest is not None
        await send(
            {
                "type": "http.response.start",
                "status": out.resp.status,
                "headers": replies.response_headers(out, ctx, t0, None),
            }
        )
        is_sse = out.resp.content_type == "text/event-stream"
        # An Images API answer's usage (a GPT image model's tokens) is read off its edges as it passes (billing).
        edges = AnswerEdges() if ctx.endpoint in IMAGES and out.resp.status < 300 else None
        try:
            async for chunk in out.rest:
                cut = authority.ended(self.rt, ctx)
                if cut is not None:
                    out.resp.close()
                    if is_sse:
                        await send({"type": "http.response.body", "body": sse.error_event(cut), "more_body": True})
                    break
                if ctx.ttft_ms is None:
                    ctx.ttft_ms = (time.perf_counter() - t0) * 1000
                if edges is not None:
                    edges.feed(chunk)
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            else:
                if edges is not None and (u := edges.usage()) is not None:
                    ctx.prompt_tokens, ctx.cached_tokens, ctx.completion_tokens = u.numbers()
                    ctx.modalities = image_tokens(u)
        except RETRYABLE_ERRORS:
            out.resp.close()
            err = errors.upstream_stream_broken(out.dep.name)
            ctx.error = err.code
            if is_sse:
                await send({"type": "http.response.body", "body": sse.error_event(err), "more_body": True})
        await self._finish(ctx, t0, watch)
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _refused(self, ctx: RequestContext, e: errors.APIError) -> None:
        """An authenticated key refused before the upstream: metered, and watched by the kill switch."""
        ctx.status, ctx.error = e.status, e.code
        await self.rt.pipeline.refused(ctx)

    async def _finish(self, ctx: RequestContext, t0: float, watch: Watch, observe: bool = True) -> None:
        """settle -> record -> observe, once, before the last byte goes out (the usage is recorded even if
        the client vanishes next). ``observe=False`` (a JSON answer, written whole at once): the caller runs the
        pipeline's observe steps right after writing it, on the same turn of the loop, so that its client does not
        wait for metrics, the access log and the kill switch's windows (bench/compare.py's added p50)."""
        watch.armed = False
        if watch.settled:
            return
        watch.settled = True
        ctx.latency_ms = (time.perf_counter() - t0) * 1000
        if ctx.ttft_ms is None and ctx.status and ctx.status < 400:
            ctx.ttft_ms = ctx.latency_ms
        await self.rt.pipeline.settle(ctx, observe)  # never raises: each step's failure is logged
