"""One Realtime session (proxy/realtime.py): the client socket, the upstream socket, the responses in flight.

Each response is a RequestContext of its own, admitted when the client asks for it (``response.create``,
its ``max_output_tokens`` pinned to what was reserved) or when the upstream starts it unasked (server
VAD: admitted on ``response.created``, else cancelled), and settled -> recorded -> observed on its
``response.done`` with the usage reported, by modality (text and audio input, cached, output: each at its
own rate of the price table, billing/prices.py). The session's own
``max_output_tokens`` is pinned on connect and capped on every ``session.update``, so a response the
upstream starts writes no more than its reservation. Whatever is admitted is settled exactly once,
disconnects included (``finish``).
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
from keyplane.billing.prices import Tokens
from keyplane.proxy import client_secrets
from keyplane.proxy.context import RequestContext
from keyplane.proxy.handler import ProxyApp, new_request_id
from keyplane.runtime import Runtime
from keyplane.snapshot import KeyEntry

PATH: Final = "/v1/realtime"
SCOPE: Final = "api.model.request"
MAX_IN_FLIGHT: Final = 16  # responses admitted and not yet done, per session: each holds a reservation
OVERDUE_FRACTION: Final = 0.8  # of reservation_ttl_seconds: a response not done by then ends its session
DRAIN_SECONDS: Final = 5.0  # after the client left: how long to wait for the upstream's response.done
CUT: Final = 1008  # policy violation
# The per-response context is quoted as a Responses call (token prices, input up to the context window),
# then recorded under the realtime path: the Usage API reports it in the completions bucket, as OpenAI does.
_QUOTE_AS: Final = "/v1/responses"
# A rate limit refuses one response; anything else (budget, credit, unpriced model...) ends the session.
# A stale snapshot (this instance cannot confirm the key is still valid) refuses responses, as it refuses
# every /v1 request (app.py), until it can confirm again.
_SOFT: Final = frozenset({"rate_limit_exceeded", "authority_stale"})


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
        self.out_cap = _output_cap(rt, model)  # what a response may write: its reservation covers this
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
        ctx = RequestContext(
            new_request_id().decode(),
            self.entry,
            self.entry.project_id,
            _QUOTE_AS,
            "POST",
            self.model,
            True,
            orjson.dumps({"model": self.model, "input": ""}),
            limit,
        )
        ctx.spending = True
        ctx.context_ref = True
        ctx.started = time.perf_counter()
        ctx.client_ip, ctx.user_agent = self.client_ip, self.user_agent
        ctx.upstream = self.upstream_name
        return ctx

    async def admit(self, limit: int | None) -> RequestContext:
        """A response admitted (raises errors.APIError when refused, after metering the refusal)."""
        ctx = self._context(limit)
        try:
            await self.rt.pipeline.admit(ctx)
        except errors.APIError as e:
            ctx.endpoint = PATH
            ctx.status, ctx.error = e.status, e.code
            await self.rt.pipeline.refused(ctx)
            raise
        ctx.endpoint = PATH
        return ctx

    async def settle(self, ctx: RequestContext, usage: dict[str, Any] | None, status: int) -> None:
        ctx.status = status
        if isinstance(usage, dict):
            by = usage_tokens(usage)  # text and audio billed at their own rates (billing's settle)
            ctx.prompt_tokens, ctx.cached_tokens, ctx.completion_tokens = by.prompt, by.cached, by.completion
            ctx.modalities = by
        else:  # never reported (the upstream went away): the output reserved is billed, flagged as estimated
            ctx.usage_estimated = True
            ctx.completion_tokens = ctx.max_tokens or 0
        ctx.latency_ms = (time.perf_counter() - ctx.started) * 1000
        if ctx.ttft_ms is None:
            ctx.ttft_ms = ctx.latency_ms
        await self.rt.pipeline.settle(ctx)  # never raises

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
        if kind == "response.create":
            return await self._response_create(ev)
        refused = self._event_refusal(ev)
        if refused is not None:  # not forwarded; the session goes on as it was
            await self.error_event(refused, ev.get("event_id"))
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

    def _event_refusal(self, ev: dict[str, Any]) -> errors.APIError | None:
        """A client event keyplane cannot govern, whatever its shape (GA or beta field names)."""
        kind = ev["type"]
        if kind.startswith("transcription_session."):
            return errors.invalid_value(
                "type",
                "Transcription sessions are billed per audio minute, which keyplane "
                "does not meter yet, so they are refused.",
            )
        if kind == "session.update":
            sess = ev.get("session")
            if not isinstance(sess, dict):
                return errors.invalid_value("session", "'session' must be an object.")
            return self._session_refusal(sess)
        return None

    def _session_refusal(self, sess: dict[str, Any]) -> errors.APIError | None:
        """A session.update keyplane cannot govern: another model (authorized and priced at connect only),
        or input transcription (billed apart by the provider, not metered here yet)."""
        model = sess.get("model")
        if model is not None and model != self.model:
            return errors.invalid_value(
                "session.model",
                f"This session is for `{self.model}`: a realtime session "
                "cannot change its model through keyplane (open a new one).",
            )
        if sess.get("type", "realtime") != "realtime":
            return errors.invalid_value(
                "session.type",
                "keyplane relays realtime sessions only (`type: realtime`): "
                "transcription sessions are not metered yet.",
            )
        for beta in ("max_response_output_tokens", "input_audio_transcription"):  # the beta API's spellings
            if beta in sess:
                return errors.invalid_value(
                    f"session.{beta}",
                    f"`session.{beta}` (the beta Realtime API) is not "
                    "accepted through keyplane: use `max_output_tokens`; input audio "
                    "transcription is not metered yet.",
                )
        audio = sess.get("audio")
        inp = audio.get("input") if isinstance(audio, dict) else None
        if isinstance(inp, dict) and inp.get("transcription") is not None:
            return errors.invalid_value(
                "session.audio.input.transcription",
                "Input audio transcription in a realtime session is not metered by keyplane yet, so it is refused.",
            )
        return None

    def _response_refusal(self, resp: dict[str, Any]) -> errors.APIError | None:
        """A response.create whose output keyplane could not bound or whose model it did not authorize."""
        if "max_response_output_tokens" in resp:  # the beta spelling: it would not be pinned to the reservation
            return errors.invalid_value(
                "response.max_response_output_tokens",
                "`max_response_output_tokens` (the "
                "beta Realtime API) is not accepted through keyplane: use "
                "`max_output_tokens`.",
            )
        model = resp.get("model")
        if model is not None and model != self.model:
            return errors.invalid_value(
                "response.model",
                f"This session is for `{self.model}`: a response cannot use another model through keyplane.",
            )
        return None

    async def _response_create(self, ev: dict[str, Any]) -> bool:
        assert self.upstream is not None
        resp = ev.get("response")
        if not isinstance(resp, dict):
            resp = {}
            ev["response"] = resp
        refused = self._response_refusal(resp)
        if refused is not None:
            await self.error_event(refused, ev.get("event_id"))
            return True
        asked = resp.get("max_output_tokens")
        limit = asked if isinstance(asked, int) and not isinstance(asked, bool) and asked > 0 else None
        async with self.lock:
            ended = self.ended() or self.model_refused()
            if ended is not None:
                await self.cut(ended)
                return False
            stale = self.stale()
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
                    refused = self.ended() or self.model_refused() or self.stale()
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

    def ended(self) -> errors.APIError | None:
        """Why the session must end now: its key revoked, suspended, deleted or expired, its project archived,
        its key's federation rule or provider disabled (a workload identity's), an IP allowlist that now
        leaves its address out, or the key no longer allowed the model scope. The key's current entry is what
        admits the next response (its limits, permissions)."""
        cut = self.proxy._authority_ended(RequestContext("", self.entry, self.entry.project_id, PATH))
        if cut is not None:
            return cut
        if (access := self.rt.features.access) is not None:  # an IP allowlist set since the session opened
            try:
                access.check_ip(self.entry.project_id, self.entry.id, self.scope.get("client"), self.scope["headers"])
            except errors.APIError as e:
                return e
        if self.overdue():
            return errors.upstream_timeout(self.upstream_name)
        now_key = self.rt.snapshot.keys_by_id.get(self.entry.id)
        if now_key is not None:
            self.entry = now_key
        if self.entry.expires_at is not None:
            why = self.entry.inactive_reason(self.rt.clock.now())
            if why:
                return errors.key_inactive(self.entry.redacted_value, why)
        why = client_secrets.workload_ended(self.rt, self.entry.id, self.generation)
        if why:
            return errors.key_inactive(self.entry.redacted_value, why)
        if not self.entry.permissions.allows(SCOPE):
            return errors.missing_scope(SCOPE)
        return None

    def overdue(self) -> bool:
        """A response admitted longer ago than its reservation is sure to hold (the limiter drops a reservation
        never settled after ``reservation_ttl_seconds``): the session ends and it is settled now, at what it
        reserved, before the budget it holds could be handed to other requests."""
        ttl = getattr(self.rt.settings, "reservation_ttl_seconds", 900.0)
        started = [c.started for c in (*self.live.values(), *self.pending)]
        return bool(started) and time.perf_counter() - min(started) > ttl * OVERDUE_FRACTION

    def stale(self) -> errors.APIError | None:
        """Refused while this instance cannot confirm its keys are current (a revocation may not have arrived)."""
        snap, bound = self.rt.snapshot, self.rt.settings.max_staleness_seconds
        return None if snap.is_fresh(bound) else errors.stale_authority(snap.staleness())

    def model_refused(self) -> errors.APIError | None:
        """The key's model permissions (keyplane.access) as they are now: a model taken away ends the session."""
        access = self.rt.features.access
        if access is None:
            return None
        try:
            access.check_request(self.entry.project_id, self.entry.id, PATH, "GET", self.model, False, b"", False)
        except errors.APIError as e:
            return e
        return None

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


def _output_cap(rt: Runtime, model: str) -> int | None:
    """The output a response of ``model`` may write: the price table's max_output (billing's default
    without one); None without billing."""
    billing = rt.features.billing
    if billing is None:
        return None
    price = billing.prices.lookup(model)
    cap = price.max_output if price is not None else None
    return cap or billing.default_max_tokens


def usage_tokens(usage: dict[str, Any]) -> Tokens:
    """A response.done usage by modality: ``input_token_details`` (text, audio, image, cached, and
    ``cached_tokens_details`` by modality) and ``output_token_details`` (text, audio). The totals stand for
    what the details do not attribute (image input, details missing), which is billed at the dearest rates."""
    d = _dict(usage.get("input_token_details"))
    text, audio = _int(d.get("text_tokens")), _int(d.get("audio_tokens"))
    prompt = max(_int(usage.get("input_tokens")), text + audio)
    cached = min(_int(d.get("cached_tokens")), prompt)
    cd = _dict(d.get("cached_tokens_details"))
    c_audio = min(_int(cd.get("audio_tokens")), audio, cached)
    c_text = min(_int(cd.get("text_tokens")), text, cached - c_audio)
    o = _dict(usage.get("output_token_details"))
    t_out, a_out = _int(o.get("text_tokens")), _int(o.get("audio_tokens"))
    completion = max(_int(usage.get("output_tokens")), t_out + a_out)
    return Tokens(
        text_in=text,
        audio_in=audio,
        other_in=prompt - text - audio,
        cached_text=c_text,
        cached_audio=c_audio,
        cached_rest=cached - c_text - c_audio,
        text_out=t_out,
        audio_out=a_out,
        other_out=completion - t_out - a_out,
    )


def _dict(v: Any) -> dict[str, Any]:
    return v if isinstance(v, dict) else {}


def _int(v: Any) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else 0
