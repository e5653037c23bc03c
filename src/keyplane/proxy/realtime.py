"""The Realtime API over WebSocket (``/v1/realtime?model=...``), governed like a chat request per response.

    connect -> authenticate -> authorize (api.model.request, the project's upstreams for the model)
    -> open the upstream socket -> accept -> relay both ways, frame by frame
       client ``response.create``  -> admit (a RequestContext per response: rate limits, budgets,
                                      credit) and pin ``max_output_tokens`` to what was reserved
       upstream ``response.created`` with no admitted response (server VAD) -> admitted then, else cancelled
       upstream ``response.done``  -> settle -> record -> observe with its usage
    -> cut (an ``error`` event, close 1008) when the key is revoked, suspended or deleted, the project
       archived, or a budget refuses a response

A response's input is the whole conversation of the session, which keyplane does not see: it is reserved
up to the model's context window (admission's ``context_ref``), its output up to ``max_output_tokens``.
Frames are relayed one at a time (bounded by ``MAX_FRAME``); nothing buffers a session.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Final
from urllib.parse import parse_qsl, quote

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from keyplane import errors
from keyplane.auth import authenticate
from keyplane.identity import tokens as workload_tokens
from keyplane.proxy import client_secrets, realtime_policy, skipped
from keyplane.proxy.handler import ProxyApp
from keyplane.proxy.intake import own_model
from keyplane.proxy.realtime_policy import PATH
from keyplane.proxy.realtime_session import CUT, Session, handshake_refused
from keyplane.runtime import Runtime
from keyplane.snapshot import KeyEntry

log = logging.getLogger("keyplane.proxy")

SCOPE: Final = "api.model.request"
MAX_FRAME: Final = 16 * 1024 * 1024  # a frame of base64 audio may be large; a session is never buffered
WATCH_SECONDS: Final = 0.5  # how often an idle session's authority is checked
_SUBPROTOCOL_KEY: Final = "openai-insecure-api-key."


async def serve(rt: Runtime | None, proxy: ProxyApp | None, scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The app's entry for ``websocket`` scopes (app.py)."""
    if rt is None or proxy is None:
        await send({"type": "websocket.close", "code": 1013})
        return
    if not rt.snapshot.is_fresh(rt.settings.max_staleness_seconds):
        await receive()  # websocket.connect
        await _deny(scope, send, errors.stale_authority(rt.snapshot.staleness()))
        return
    app = rt.features.realtime
    if app is None:
        app = rt.features.realtime = RealtimeApp(rt, proxy)
    await app(scope, receive, send)


class RealtimeApp:
    """The ASGI ``websocket`` scope handler for /v1/realtime."""

    def __init__(self, rt: Runtime, proxy: ProxyApp) -> None:
        self.rt = rt
        self.proxy = proxy

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        msg = await receive()
        if msg["type"] != "websocket.connect":
            return
        known: list[KeyEntry] = []  # the key, once authenticated: its refusals are metered and watched
        try:
            if (access := self.rt.features.access) is not None:
                await access.current()  # a key's access policies are never older than the key (keyplane.access)
            entry, model, subprotocol, generation = self._check(scope, known)
            await own_model(self.proxy, model, entry.project_id)  # another project's fine-tuned model: 404
            pool = self.proxy.tenancy.pool("/v1/chat/completions", entry.project_id, model, None)
            if (bound := self.rt.features.providers_keys) is not None:  # a project's own provider key
                pool = bound.apply(entry.project_id, pool)  # (keyplane.providers.bindings)
            deps = [d for d in self.proxy.router.candidates(pool) if not d.is_demo] if pool else []
            if not deps:
                raise skipped.no_route(self.rt, model, entry.project_id, entry.id)
        except errors.APIError as e:
            await _deny(scope, send, e)
            if known:
                await handshake_refused(self.rt, known[0], e, scope)
            return
        session = Session(self.rt, self.proxy, entry, model, send, scope)
        session.generation = generation
        for dep in deps:  # in the router's order; the next one when an upstream cannot be reached
            try:
                session.upstream = await connect(
                    _ws_url(dep.config.base_url, model),
                    additional_headers={"Authorization": f"Bearer {dep.api_key}"},
                    max_size=MAX_FRAME,
                    open_timeout=10,
                )
                break
            except (OSError, TimeoutError, InvalidStatus) as exc:
                log.warning("realtime upstream %s refused the session: %s", dep.name, type(exc).__name__)
        if session.upstream is None:
            await _deny(scope, send, errors.upstream_unreachable(dep.name))
            return
        session.upstream_name = dep.name
        session.secret = dep.api_key if len(dep.api_key) >= 8 else ""
        try:
            await session.pin()
        except ConnectionClosed:
            await _deny(scope, send, errors.upstream_unreachable(dep.name))
            return
        await send({"type": "websocket.accept", **({"subprotocol": subprotocol} if subprotocol else {})})
        self.rt.pipeline.stream_started()
        try:
            await self._relay(session, receive)
        except Exception:
            log.exception("realtime session error")
            await session.cut(errors.internal_error())
        finally:
            self.rt.pipeline.stream_ended()
            await session.finish()
            await session.close()

    def _check(self, scope: dict[str, Any], known: list[KeyEntry]) -> tuple[KeyEntry, str, str | None, str | None]:
        """(the key, the model, the subprotocol to answer, and for a workload identity the rule generation its
        token was issued under: the session ends when the rule or provider changes, as the token does)."""
        headers: list[tuple[bytes, bytes]] = list(scope["headers"])
        subprotocol = None
        for k, v in scope["headers"]:
            if k == b"sec-websocket-protocol":  # the browser form: realtime, openai-insecure-api-key.<key>
                for p in v.decode("latin-1").split(","):
                    p = p.strip()
                    if p.startswith(_SUBPROTOCOL_KEY) and not any(n == b"authorization" for n, _ in headers):
                        headers.append((b"authorization", b"Bearer " + p[len(_SUBPROTOCOL_KEY) :].encode("latin-1")))
                    elif p == "realtime":
                        subprotocol = "realtime"
        path = scope["path"].rstrip("/")
        if path != PATH:
            raise errors.unknown_url("GET", path)
        auth = next((v for k, v in headers if k == b"authorization"), b"")
        query = dict(parse_qsl(scope["query_string"].decode("latin-1")))
        model = query.get("model", "")
        generation: str | None = None
        if (access := self.rt.features.access) is not None:  # the organization's IP allowlist, before any key
            access.check_org_ip(scope.get("client"), headers)
        if auth[7:].startswith(client_secrets.PREFIX.encode()):  # a browser's ephemeral client secret
            entry, bound, generation = client_secrets.verify(self.rt, auth[7:].decode("latin-1"))
            if bound is not None:
                if model and model != bound:
                    raise errors.invalid_value("model", f"This client secret opens sessions of `{bound}` only.")
                model = bound
        else:
            entry = authenticate(self.rt, headers, scope["query_string"])
            token = auth[7:].decode("latin-1").strip()
            if token.startswith(workload_tokens.PREFIX):
                generation = workload_tokens.generation_of(self.rt.settings.secret_key, token, self.rt.clock.now())
        known.append(entry)
        self.rt.last_used.touch(entry.id, self.rt.clock.now())
        if not entry.permissions.allows(SCOPE):
            raise errors.missing_scope(SCOPE)
        if not model or len(model) > 256:
            raise errors.missing_model()
        if (access := self.rt.features.access) is not None:  # IP allowlists, model permissions (keyplane.access)
            access.check_ip(entry.project_id, entry.id, scope.get("client"), scope["headers"])
            access.check_request(entry.project_id, entry.id, PATH, "GET", model, False, b"", False)
        if "call_id" in query:  # a call keyplane did not open may belong to another project at the provider
            raise errors.invalid_value(
                "call_id", "Joining an existing call (call_id) is not supported through keyplane."
            )
        if query.get("intent", "conversation") != "conversation":
            raise errors.invalid_value(
                "intent",
                "keyplane relays conversation sessions only: transcription "
                "sessions are billed per audio minute, which it does not meter yet.",
            )
        return entry, model, subprotocol, generation

    async def _relay(self, s: Session, receive: Any) -> None:
        up = s.upstream
        assert up is not None

        access = self.rt.features.access

        async def client_side() -> None:
            while True:
                msg = await receive()
                if msg["type"] == "websocket.disconnect":
                    return
                text = msg.get("text")
                if text is None:
                    data = msg.get("bytes") or b""
                    text = data.decode("utf-8", "replace")
                if len(text) > MAX_FRAME:
                    await s.cut(errors.too_large(MAX_FRAME))
                    return
                if access is not None:  # hosted tool and model permissions of each client event (keyplane.access)
                    try:
                        access.check_request(
                            s.entry.project_id, s.entry.id, PATH, "POST", None, False, text.encode(), True
                        )
                    except errors.APIError as e:  # refused, not forwarded: the session goes on
                        await s.error_event(e, None)
                        await s.refused(e)
                        continue
                if not await s.from_client(text):
                    await s.close(CUT, "refused")
                    return

        async def upstream_side() -> None:
            async for raw in up:
                cut = realtime_policy.ended(s)
                if cut is not None:
                    await s.cut(cut)
                    return
                text = raw if isinstance(raw, str) else raw.decode("utf-8", "replace")
                if not await s.from_upstream(text):
                    await s.close(CUT, "refused")
                    return
            await s.close(1011 if up.close_code not in (1000, None) else 1000, "upstream closed")

        async def watch() -> None:
            while True:
                await asyncio.sleep(WATCH_SECONDS)
                cut = realtime_policy.ended(s)
                if cut is not None:
                    await s.cut(cut)
                    return

        tasks = [asyncio.ensure_future(c()) for c in (client_side, upstream_side, watch)]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                exc = t.exception()
                if exc is not None and not isinstance(exc, ConnectionClosed):
                    raise exc
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


def _ws_url(base_url: str, model: str) -> str:
    """The upstream's realtime URL for the model. Nothing else of the client's query is passed on: ``call_id``
    would join a call keyplane did not open (another project's, at the same provider account), and
    ``intent=transcription`` is a session billed per audio minute, which keyplane does not meter."""
    base = base_url.rstrip("/")
    if base.startswith("https://"):
        base = "wss://" + base[8:]
    elif base.startswith("http://"):
        base = "ws://" + base[7:]
    return f"{base}/realtime?model={quote(model, safe='')}"


async def _deny(scope: dict[str, Any], send: Any, e: errors.APIError) -> None:
    """Refuse before accepting: an HTTP answer in OpenAI's shape where the server can send one, else close."""
    if "websocket.http.response" in scope.get("extensions", {}):
        body = e.body()
        h = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        h.extend((k.encode(), v.encode()) for k, v in e.headers.items())
        await send({"type": "websocket.http.response.start", "status": e.status, "headers": h})
        await send({"type": "websocket.http.response.body", "body": body})
        return
    await send({"type": "websocket.close", "code": CUT, "reason": (e.code or "refused")[:120]})
