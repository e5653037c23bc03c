"""One Realtime session (proxy/realtime.py): the client socket, the upstream socket, the responses in flight.

Each response is admitted when the client asks for it (``response.create``, its ``max_output_tokens``
pinned to what was reserved) or when the upstream starts it unasked (server VAD: admitted on
``response.created``, else cancelled), and settled on its ``response.done``. The session's own
``max_output_tokens`` is pinned on connect and capped on every ``session.update``, so a response the
upstream starts writes no more than its reservation. Whatever is admitted is settled exactly once,
disconnects included (``finish``).

What a session may do (refused events, what ends it) is proxy/realtime_policy.py; what a response
reports and may write, proxy/realtime_usage.py; how a response is admitted, metered and settled,
proxy/realtime_meter.py.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from typing import Any, Final

import orjson
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from keyplane import errors, keys
from keyplane.proxy import realtime_meter as meter
from keyplane.proxy import realtime_policy as policy
from keyplane.proxy.context import RequestContext
from keyplane.proxy.handler import ProxyApp
from keyplane.proxy.object_refs import event_refs
from keyplane.proxy.realtime_meter import handshake_refused
from keyplane.proxy.realtime_policy import event_refusal, response_refusal
from keyplane.proxy.realtime_usage import output_cap
from keyplane.proxy.replies import new_request_id
from keyplane.runtime import Runtime
from keyplane.snapshot import KeyEntry

MAX_IN_FLIGHT: Final = 16  # responses admitted and not yet done, per session: each holds a reservation
DRAIN_SECONDS: Final = 5.0  # after the client left: how long to wait for the upstream's response.done
CUT: Final = 1008  # policy violation
# A rate limit refuses one response; anything else (budget, credit, unpriced model...) ends the session.
# A stale snapshot (this instance cannot confirm the key is still valid) refuses responses, as it refuses
# every /v1 request (app.py), until it can confirm again.
_SOFT: Final = frozenset({"rate_limit_exceeded", "authority_stale"})
# Client events that may name a stored prompt (``prompt: {"id": ...}``) or a model: checked for ownership.
_NAMES_OBJECTS: Final = frozenset({"session.update", "response.create"})

# realtime.py refuses a handshake through this module (handshake_refused is realtime_meter's).
__all__ = ["CUT", "MAX_IN_FLIGHT", "Session", "handshake_refused"]


class Session:
    """One client socket, its upstream socket, and its responses in flight (admitted, not yet done)."""

    def __init__(
        self, rt: Runtime, proxy: ProxyApp, entry: KeyEntry, model: str, send: Any, scope: dict[str, Any]
    ) -> None:
        self.rt = rt
        self.proxy = proxy
        self.entry = entry
        self.model = model
        self.send = send
        self.scope = scope
        self.upstream: ClientConnection | None = None
        self.upstream_name = ""
        self.secret = ""  # the upstream's API key (8+ characters), redacted from what is relayed
        self.generation: str | None = None  # a workload identity's rule generation at connect (realtime._check)
        self.pending: collections.deque[RequestContext] = collections.deque()  # admitted, not yet created
        self.asked: dict[str, RequestContext] = {}  # pending ones by the client's event_id (an upstream error names it)
        self.live: dict[str, RequestContext] = {}  # response id -> its context
        self.closed = False
        self.out_cap = output_cap(rt, model)  # what a response may write: its reservation covers this
        self.swallow_updated = False  # the session.updated answering keyplane's own pin is not the client's
        self.lock = asyncio.Lock()  # one admission at a time per session: responses in order
        client = scope.get("client")
        self.client_ip: str | None = client[0] if client else None
        self.user_agent: str | None = None
        for k, v in scope["headers"]:
            if k == b"user-agent":
                self.user_agent = v.decode("latin-1")[:256]

    # --- per response ------------------------------------------------------------------------------

    def _context(self, limit: int | None) -> RequestContext:
        return meter.response_context(
            self.entry, self.model, limit, self.client_ip, self.user_agent, self.upstream_name
        )

    async def admit(self, limit: int | None) -> RequestContext:
        """A response admitted (raises errors.APIError when refused, after metering the refusal)."""
        return await meter.admit(self.rt, self._context(limit))

    async def refused(self, e: errors.APIError) -> None:
        """A client event refused, not forwarded: metered like any refusal of the key, and watched by the kill
        switch (a key probing models or tools over a session is seen as over HTTP)."""
        await meter.refused(self.rt, self._context(None), e)

    async def settle(self, ctx: RequestContext, usage: dict[str, Any] | None, status: int) -> None:
        await meter.settle(self.rt, ctx, usage, status)

    # --- client -> upstream ------------------------------------------------------------------------

    async def from_client(self, text: str) -> bool:
        """Relay one client frame; False: the session is to end.

        Every frame is parsed, and what is forwarded is keyplane's own serialization of what it checked, never
        the client's bytes: a frame another parser would read differently (a duplicated ``type`` key, an
        escaped ``response\\u002ecreate``) cannot start an unadmitted response. A frame that is not a JSON
        object with a ``type`` is refused (an error event), not forwarded."""
        assert self.upstream is not None
        try:
            ev = orjson.loads(text)
        except orjson.JSONDecodeError:
            ev = None
        if not isinstance(ev, dict) or not isinstance(ev.get("type"), str):
            await self.error_event(
                errors.invalid_value(
                    "type",
                    "A realtime client event must be a JSON object with a string `type`; this frame was not forwarded.",
                ),
                None,
            )
            return True
        kind = ev["type"]
        if kind in _NAMES_OBJECTS:  # a stored prompt or fine-tuned model the project may not use (tenancy.py)
            try:
                await self.proxy.tenancy.check_refs(event_refs(ev), self.entry.project_id)
            except errors.APIError as e:  # not forwarded; the session goes on as it was
                await self.error_event(e, ev.get("event_id"))
                await self.refused(e)
                return True
        if kind == "response.create":
            return await self._response_create(ev)
        refused = event_refusal(ev, self.model)
        if refused is not None:  # not forwarded; the session goes on as it was
            await self.error_event(refused, ev.get("event_id"))
            await self.refused(refused)
            return True
        if kind == "session.update":
            sess = ev.get("session")
            if isinstance(sess, dict):
                asked = sess.get("max_output_tokens")
                if (
                    self.out_cap is not None
                    and "max_output_tokens" in sess
                    and not (isinstance(asked, int) and not isinstance(asked, bool) and 0 < asked <= self.out_cap)
                ):
                    sess["max_output_tokens"] = self.out_cap  # responses the upstream starts itself write no more
        await self.upstream.send(orjson.dumps(ev).decode())
        return True

    async def _response_create(self, ev: dict[str, Any]) -> bool:
        assert self.upstream is not None
        resp = ev.get("response")
        if not isinstance(resp, dict):
            resp = {}
            ev["response"] = resp
        refused = response_refusal(resp, self.model)
        if refused is not None:
            await self.error_event(refused, ev.get("event_id"))
            await self.refused(refused)
            return True
        asked = resp.get("max_output_tokens")
        limit = asked if isinstance(asked, int) and not isinstance(asked, bool) and asked > 0 else None
        async with self.lock:
            ended = policy.ended(self) or policy.model_refused(self)
            if ended is not None:
                await self.cut(ended)
                return False
            stale = policy.stale(self.rt)
            if stale is not None:
                await self.error_event(stale, ev.get("event_id"))
                return True
            if len(self.pending) + len(self.live) >= MAX_IN_FLIGHT:
                await self.error_event(
                    errors.invalid_value(
                        "response",
                        f"At most {MAX_IN_FLIGHT} responses may be in progress in one realtime session "
                        "through keyplane: wait for a response.done.",
                    ),
                    ev.get("event_id"),
                )
                return True
            try:
                ctx = await self.admit(limit)
            except errors.APIError as e:
                await self.error_event(e, ev.get("event_id"))
                return e.code in _SOFT
            if ctx.max_tokens is not None:  # what was reserved is what the upstream may write
                resp["max_output_tokens"] = ctx.max_tokens
            self.pending.append(ctx)
            eid = ev.get("event_id")
            if isinstance(eid, str) and len(self.asked) < 100:
                self.asked[eid] = ctx
            try:
                await self.upstream.send(orjson.dumps(ev).decode())
            except ConnectionClosed:
                self.pending.remove(ctx)
                ctx.error = "upstream_closed"
                await self.settle(ctx, None, 502)
                raise
        return True

    # --- upstream -> client ------------------------------------------------------------------------

    async def pin(self) -> None:
        """Before the client speaks: the session's own output limit set to what a response reserves."""
        if self.out_cap is not None and self.upstream is not None:
            await self.upstream.send(
                orjson.dumps(
                    {"type": "session.update", "session": {"type": "realtime", "max_output_tokens": self.out_cap}}
                ).decode()
            )
            self.swallow_updated = True

    async def from_upstream(self, text: str) -> bool:
        """Relay one upstream frame; False: the session is to end."""
        if self.swallow_updated and '"session.updated"' in text[:200]:
            self.swallow_updated = False
            return True
        if self.secret and self.secret in text:  # the provider's credential never reaches a client
            text = text.replace(self.secret, keys.mask(self.secret))
        if '"response.created"' in text or '"response.done"' in text:
            try:
                ev = orjson.loads(text)
            except orjson.JSONDecodeError:
                ev = None
            if isinstance(ev, dict):
                kind = ev.get("type")
                if kind == "response.created":
                    if not await self._created(ev):
                        return False
                elif kind == "response.done":
                    await self._done(ev)
        elif '"error"' in text[:300]:
            await self._upstream_error(text)
        if not self.closed:
            await self.send({"type": "websocket.send", "text": text})
        return True

    async def _upstream_error(self, text: str) -> None:
        """A response.create the upstream refused (its error names the event): settled at no cost. Should it
        be created after all, its response.created finds nothing pending and is admitted then."""
        try:
            ev = orjson.loads(text)
        except orjson.JSONDecodeError:
            return
        err = ev.get("error") if isinstance(ev, dict) and ev.get("type") == "error" else None
        eid = err.get("event_id") if isinstance(err, dict) else None
        ctx = self.asked.pop(eid, None) if isinstance(eid, str) else None
        if ctx is not None and ctx in self.pending:
            self.pending.remove(ctx)
            assert isinstance(err, dict)
            ctx.error = str(err.get("code") or "upstream_error")[:64]
            await self.settle(ctx, {}, 400)

    async def _created(self, ev: dict[str, Any]) -> bool:
        got = ev.get("response")
        resp: dict[str, Any] = got if isinstance(got, dict) else {}
        rid = str(resp.get("id") or "")
        if self.pending:
            ctx = self.pending.popleft()
            for eid in [k for k, v in self.asked.items() if v is ctx]:
                del self.asked[eid]
        else:  # created by the upstream itself (turn detection): admitted now, or cancelled
            try:
                async with self.lock:
                    refused = policy.ended(self) or policy.model_refused(self) or policy.stale(self.rt)
                    if refused is not None:
                        raise refused
                    if len(self.live) >= MAX_IN_FLIGHT:
                        raise errors.invalid_value(
                            "response",
                            f"At most {MAX_IN_FLIGHT} responses may be in "
                            "progress in one realtime session through keyplane.",
                        )
                    ctx = await self.admit(None)
            except errors.APIError as e:
                assert self.upstream is not None
                with contextlib.suppress(ConnectionClosed):
                    await self.upstream.send(orjson.dumps({"type": "response.cancel", "response_id": rid}).decode())
                await self.error_event(e, None)
                return e.code in _SOFT
        if ctx.ttft_ms is None:
            ctx.ttft_ms = (time.perf_counter() - ctx.started) * 1000
        if rid and len(self.live) < 1000:
            self.live[rid] = ctx
        else:
            self.pending.appendleft(ctx)
        return True

    async def _done(self, ev: dict[str, Any]) -> None:
        got = ev.get("response")
        resp: dict[str, Any] = got if isinstance(got, dict) else {}
        ctx = self.live.pop(str(resp.get("id") or ""), None)
        if ctx is None and self.pending:
            ctx = self.pending.popleft()
        if ctx is None:
            return
        status = resp.get("status")
        await self.settle(ctx, resp.get("usage"), 200 if status in ("completed", "cancelled", "incomplete") else 502)

    # --- ending --------------------------------------------------------------------------------------

    async def error_event(self, e: errors.APIError, event_id: Any) -> None:
        if self.closed:
            return
        err = orjson.loads(e.body())["error"]
        if isinstance(event_id, str):
            err["event_id"] = event_id[:128]
        with contextlib.suppress(Exception):
            await self.send(
                {
                    "type": "websocket.send",
                    "text": orjson.dumps(
                        {"type": "error", "event_id": "event_" + new_request_id().decode(), "error": err}
                    ).decode(),
                }
            )

    async def cut(self, e: errors.APIError) -> None:
        await self.error_event(e, None)
        await self.close(CUT, e.code or "")

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(Exception):
            await self.send({"type": "websocket.close", "code": code, "reason": reason[:120]})

    async def finish(self) -> None:
        """Every admitted response settled once: the upstream is asked to stop and given a moment to report."""
        up = self.upstream
        if up is not None and (self.live or self.pending):
            with contextlib.suppress(Exception):
                await up.send('{"type":"response.cancel"}')
                async with asyncio.timeout(DRAIN_SECONDS):
                    async for raw in up:
                        if isinstance(raw, str) and '"response.done"' in raw:
                            ev = orjson.loads(raw)
                            if isinstance(ev, dict):
                                await self._done(ev)
                        if not self.live and not self.pending:
                            break
        for ctx in [*self.live.values(), *self.pending]:
            ctx.disconnected = True
            await self.settle(ctx, None, 499)
        self.live.clear()
        self.pending.clear()
        if up is not None:
            with contextlib.suppress(Exception):
                await up.close()
