"""Sending a request upstream with retries and fallback, up to (never past) the first byte.

Attempts go in rounds: round 0 tries each candidate upstream once, in the router's order (by weight,
breakers open left out), so a failure moves on to the next upstream at once; round n retries each
upstream that allows n retries, after exponential backoff with jitter, or after the upstream's own
``retry-after-ms`` / ``retry-after`` when it sent one (a wait longer than ``max_retry_wait`` is not
waited: that upstream is given up). Retried: connection errors, timeouts, 408, 429 and 5xx, and a
2xx whose body is not what the endpoint promises (non-JSON, a stream that dies before its first
event). Nothing is sent to the client before an attempt is accepted, so a retry is never visible.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from aiohttp import ClientConnectorError, ClientResponseError, ConnectionTimeoutError

from keyplane import errors, periodic
from keyplane.proxy import usage as _usage
from keyplane.proxy.router import Deployment, Router
from keyplane.proxy.upstream import RETRYABLE_ERRORS, UpstreamClient, UpstreamResponse

if TYPE_CHECKING:
    from keyplane.proxy.context import RequestContext
    from keyplane.proxy.uploads import Upload

# What a retry may follow: the connection failing, the answer timing out, an unreadable body, a stream cut.
_RETRY_ON: tuple[type[BaseException], ...] = (*RETRYABLE_ERRORS, *_usage.BadBody, StopAsyncIteration)

JSON: Final = 0  # read the whole body and its usage (non-streaming model endpoints)
SSE: Final = 1  # read up to the first chunk, then relay (streaming model endpoints)
RAW: Final = 2  # relay as is (pass-through paths)
# Object paths whose JSON answer keyplane must see whole (creates, lists: proxy/tenancy.py): read up to
# MAX_OBJECT_BODY; an answer that is not JSON (a stream, a file's bytes) is relayed as in RAW.
OBJECT: Final = 3
MAX_OBJECT_BODY: Final = 32 * 1024 * 1024

_RETRY_STATUS = frozenset({408, 429})


@dataclass(slots=True)
class Outcome:
    dep: Deployment
    resp: UpstreamResponse
    body: bytes | None = None  # whole body (JSON mode, and every error answer)
    first: bytes | None = None  # first chunk (SSE mode)
    rest: AsyncIterator[bytes] | None = None  # the chunks after `first` (SSE), or all of them (RAW)
    usage: _usage.Usage | None = None


def retry_after(headers: list[tuple[bytes, bytes]], now: float) -> float | None:
    """Seconds the upstream asks to wait: retry-after-ms first, then retry-after (seconds or a date)."""
    ms = sec = None
    for k, v in headers:
        if k == b"retry-after-ms":
            ms = v
        elif k == b"retry-after":
            sec = v
    try:
        if ms is not None:
            return max(0.0, float(ms) / 1000)
        if sec is not None:
            try:
                return max(0.0, float(sec))
            except ValueError:
                when = email.utils.parsedate_to_datetime(sec.decode("latin-1"))
                return max(0.0, when.timestamp() - now)
    except (ValueError, TypeError):
        return None
    return None


def backoff(dep: Deployment, n: int, rng: random.Random) -> float:
    """Exponential from retry_backoff, doubling, capped, minus up to 25% jitter (as the OpenAI SDKs do)."""
    c = dep.config
    return periodic.backoff(n - 1, c.retry_backoff, c.retry_backoff_max) * (1 - 0.25 * rng.random())


def _attempt_error(dep: Deployment, e: BaseException) -> errors.APIError:
    if isinstance(e, TimeoutError):
        return errors.upstream_timeout(dep.name)
    if isinstance(e, _usage.BadBody):
        return errors.upstream_bad_response(dep.name, 200)
    if isinstance(e, StopAsyncIteration):
        return errors.upstream_stream_broken(dep.name)
    if isinstance(e, ClientResponseError):
        return errors.upstream_bad_response(dep.name, None)
    return errors.upstream_unreachable(dep.name)


def _received(e: BaseException, answered: bool) -> bool:
    """Whether a failed attempt reached the upstream for sure: it answered (then its body failed), or the read
    timed out while the upstream was working (not a connect timeout: nothing was sent), or its answer was not
    valid HTTP (it answered something)."""
    if answered or isinstance(e, ClientResponseError):
        return True
    return isinstance(e, TimeoutError) and not isinstance(e, ConnectionTimeoutError)


class TooLarge(Exception):
    """An upstream answer larger than keyplane reads whole."""


async def _read_bounded(resp: UpstreamResponse, limit: int) -> bytes:
    parts: list[bytes] = []
    size = 0
    async for chunk in resp.chunks():
        size += len(chunk)
        if size > limit:
            resp.close()
            raise TooLarge
        parts.append(chunk)
    return b"".join(parts)


async def _accept(resp: UpstreamResponse, dep: Deployment, mode: int) -> Outcome:
    if mode == RAW or (mode == OBJECT and resp.content_type != "application/json"):
        return Outcome(dep, resp, rest=resp.chunks())
    if mode == OBJECT:
        try:
            return Outcome(dep, resp, body=await _read_bounded(resp, MAX_OBJECT_BODY))
        except TooLarge:
            raise errors.upstream_error(
                f"The upstream `{dep.name}` answered with more than {MAX_OBJECT_BODY // (1024 * 1024)} MiB of JSON."
            ) from None
    if mode == SSE and resp.content_type == "text/event-stream":
        it = resp.chunks().__aiter__()
        first = await it.__anext__()
        return Outcome(dep, resp, first=first, rest=it)
    body = await resp.read()
    return Outcome(dep, resp, body=body, usage=_usage.from_body(body))


class Forwarder:
    def __init__(
        self,
        client: UpstreamClient,
        router: Router,
        rng: random.Random | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
    ) -> None:
        self.client = client
        self.router = router
        self.rng = rng or random.Random()
        self.sleep: Callable[[float], Awaitable[None]] = sleep or asyncio.sleep
        # Why a request may not go on (its key revoked...: proxy/authority.py ended), asked before each retry: a
        # retry may fire sooner than the patrol's next look. Set by the proxy app; None: never asked.
        self.still: Callable[[RequestContext], errors.APIError | None] | None = None

    async def send(
        self,
        pool: tuple[Deployment, ...],
        method: str,
        path_qs: str,
        headers: list[tuple[bytes, bytes]],
        body: bytes | Upload,
        mode: int,
        model: str | None,
        ctx: RequestContext,
    ) -> Outcome:
        """The accepted answer (2xx, a final 4xx, or the last retryable error) or an APIError.

        ``ctx.attempts`` counts the attempts (and ``ctx.upstream`` names the last one tried).
        """
        router = self.router
        cands = router.candidates(pool)
        if not cands:
            wait = router.retry_after(pool)
            err = errors.no_upstream(model)
            err.headers = {"retry-after": str(max(1, int(wait + 0.999)))}
            raise err
        monotonic = router.monotonic
        tenant = ctx.project_id or ctx.key.id
        waits: dict[str, float | None] = {}
        last: Outcome | errors.APIError | None = None
        n = 0
        while True:
            progressed = False
            for dep in cands:
                c = dep.config
                if n > c.max_retries:
                    continue
                if not isinstance(body, bytes) and not body.replayable:
                    continue  # a streamed upload went out once: never sent again (proxy/uploads.py)
                if n > 0:
                    if not dep.breaker.available(monotonic()):
                        continue
                    delay = waits.get(dep.name)
                    if delay is not None and delay > c.max_retry_wait:
                        continue
                    await self.sleep(delay if delay is not None else backoff(dep, n, self.rng))
                    if self.still is not None and (cut := self.still(ctx)) is not None:
                        raise cut  # its key or project ended while it waited: no retry goes upstream
                progressed = True
                ctx.attempts += 1
                ctx.upstream = dep.name
                resp = None
                try:
                    resp = await self.client.request(dep, method, path_qs, headers, body)
                    status = resp.status
                    if status < 400:
                        out = await _accept(resp, dep, mode)
                        dep.breaker.success()
                        return out
                    data = await resp.read()
                except _RETRY_ON as e:
                    if resp is not None:
                        resp.close()
                    if not isinstance(body, bytes) and body.error is not None:
                        raise body.error from None  # keyplane cut the upload (too large, malformed, client gone)
                    # A connection never made is the upstream's fault alone; anything after the request
                    # was sent may be the request's doing, and counts against its tenant (router.Breaker).
                    dep.breaker.failure(monotonic(), None if isinstance(e, ClientConnectorError) else tenant)
                    waits[dep.name] = None
                    last = err = _attempt_error(dep, e)
                    whole = not isinstance(body, bytes) and body.finished  # an upload that went out whole
                    if ctx.spending and (whole or _received(e, answered=resp is not None)):
                        # The provider has it (it answered, or was still working when the read timed out): it
                        # may run and bill it, and would again if sent again, metered once. Not retried; the
                        # handler bills it at its estimate. A connection that closed before any answer (a
                        # stale keep-alive connection) is retried as before.
                        ctx.upstream_received = True
                        raise err from None
                    continue
                except BaseException:
                    if resp is not None:
                        resp.close()
                    raise
                out = Outcome(dep, resp, body=data)
                if status in _RETRY_STATUS or status >= 500:
                    if status >= 500:
                        dep.breaker.failure(monotonic(), tenant)
                    waits[dep.name] = retry_after(resp.headers, time.time())
                    last = out
                    continue
                dep.breaker.success()  # a 4xx: the upstream works; the request is at fault
                return out
            if not progressed:
                break
            n += 1
        if isinstance(last, errors.APIError):
            raise last
        assert last is not None
        return last
