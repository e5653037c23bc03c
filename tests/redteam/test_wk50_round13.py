"""Week 50 red-team review, round 13: keyplane's own HTTP/1.1 upstream client (proxy/http1.py, http1_answer.py) and
the settlement of a call the authority patrol (proxy/authority.py) cuts. Each test states the secure behaviour and is
marked xfail (strict) while the hole is open. Upstreams are raw socket servers written here (a hostile or broken
provider) or tests/redteam/conftest.py's stand-ins; the gateway is tests/redteam/conftest.py's (in-process limiter)."""

from __future__ import annotations

import asyncio
import gzip
import time
import tracemalloc
from collections.abc import Awaitable, Callable

import aiohttp
import httpx

from keyplane.proxy import http1, http1_answer
from tests.billing.conftest import PRICED, UPSTREAM_KEY_ENV
from tests.proxy.test_http1 import _read_request
from tests.redteam.test_wk49_round4 import _project
from tests.redteam.test_wk50_round11 import _settled

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def _upstream(port: int, extra: str = "", prices: str = PRICED) -> str:
    return (
        f'[[upstreams]]\nname = "openai"\nbase_url = "http://127.0.0.1:{port}/v1"\n'
        f'api_key_env = "{UPSTREAM_KEY_ENV}"\nmodels = ["gpt-*"]\nmax_retries = 0\n{extra}\n\n' + prices
    )


# --- 1. a header that never ends -----------------------------------------------------------------------------------


def _client_failure(handler: Handler, read_timeout: float = 3.0) -> tuple[BaseException | None, float]:
    """The exception (and seconds until it) of one request on http1.Client to a raw server running ``handler``."""

    async def main() -> tuple[BaseException | None, float]:
        srv = await asyncio.start_server(handler, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        c = http1.Client()
        o = c.origin("http", "127.0.0.1", port)
        t = time.monotonic()
        try:
            resp = await c.request(
                o, b"POST /v1/chat/completions HTTP/1.1", b"{}", connect_timeout=1, read_timeout=read_timeout
            )
            await resp.read()
            return None, time.monotonic() - t
        except Exception as e:
            return e, time.monotonic() - t
        finally:
            await c.aclose()
            srv.close()

    return asyncio.run(main())


def test_a_header_value_that_never_ends_is_refused_at_the_header_cap():
    """A hostile or broken upstream answers `HTTP/1.1 200 OK` and then one header whose value never ends. httptools
    accumulates a header's value across reads (on_header_value) and calls on_header only when the header is complete,
    so MAX_HEADER_BYTES (64 KiB) is never checked: every byte is kept in the parser's buffer (a bytes += per read,
    quadratic copying too) until the read timeout, 600 s by default; each request to that upstream pins as much memory
    as the upstream cares to send. aiohttp refused a header line over 8 KiB at once (LineTooLong, a
    ClientResponseError). Expected: InvalidAnswer once the header passes the cap, long before the read timeout (here:
    8 MiB sent, then the upstream stalls)."""

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await _read_request(r)
        w.write(b"HTTP/1.1 200 OK\r\nX-Endless: ")
        try:
            for _ in range(8):
                w.write(b"a" * (1024 * 1024))
                await w.drain()
            await asyncio.sleep(10)
        except (ConnectionError, asyncio.CancelledError):
            pass

    err, took = _client_failure(handler, read_timeout=3.0)
    assert isinstance(err, http1_answer.InvalidAnswer) and took < 2.5, (repr(err), took)


# --- 2. a request waiting for a pooled connection waits forever ------------------------------------------------------


def test_a_request_waiting_for_room_in_the_pool_fails_at_its_connect_timeout():
    """The pool holds `limit` connections (512, every origin together). aiohttp's ClientTimeout.connect (which
    upstream.py set to the deployment's connect_timeout) bounds "waiting for a free connection from a pool"; a request
    that cannot get one fails with ConnectionTimeoutError and proxy/forward.py moves on to the next upstream (nothing
    was sent). http1.Client._acquire awaits its waiter with no deadline: once one tenant holds every connection (512
    slow streams, on any origin), every other request of every project, to every upstream, hangs without limit.
    Expected: the waiting request fails with aiohttp.ConnectionTimeoutError at its connect_timeout (here 0.5 s, while
    the only connection is held 5 s)."""

    async def slow(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            await _read_request(r)
            await asyncio.sleep(5)
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await w.drain()
        except (ConnectionError, asyncio.CancelledError, asyncio.IncompleteReadError):
            pass

    async def main() -> tuple[BaseException | None, float]:
        srv = await asyncio.start_server(slow, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        c = http1.Client(limit=1)
        o = c.origin("http", "127.0.0.1", port)
        head = b"POST /v1/chat/completions HTTP/1.1"
        held = asyncio.ensure_future(c.request(o, head, b"{}", connect_timeout=0.5, read_timeout=30))
        await asyncio.sleep(0.2)
        t = time.monotonic()
        try:
            await asyncio.wait_for(c.request(o, head, b"{}", connect_timeout=0.5, read_timeout=30), 3)
            return None, time.monotonic() - t
        except BaseException as e:
            return e, time.monotonic() - t
        finally:
            held.cancel()
            await c.aclose()
            srv.close()

    err, took = asyncio.run(main())
    assert isinstance(err, aiohttp.ConnectionTimeoutError) and took < 1.5, (repr(err), took)


# --- 3. a call cut while it waits is billed its body, not the stored input it named ---------------------------------

_CONTEXT = 128_000
_INPUT_PRICED = f'[prices."gpt-4o-mini"]\ninput = 16\noutput = 1600\ncontext_window = {_CONTEXT}\n'


def test_a_call_cut_by_revocation_is_billed_the_stored_input_it_named(make_gw):
    """A non-streamed Responses call naming `previous_response_id` (its project's own stored response) is reserved
    up to the model's context window for the input the body does not show (billing/quote_tokens.py: context_ref).
    The provider reads that stored input as soon as it takes the call and bills it whether or not the answer is
    read. When the call is cut while it waits (proxy/authority.py Patrol after the key is revoked, or the client
    leaving: the same branch), estimate.usage_from_relay bills the reserved OUTPUT ("a call it received whose
    answer never came") but the input at prompt_tokens(ctx.body), a few tokens: the context-window reservation is
    released unbilled. A key holder repeats "name a long stored response, leave after a second" and the provider
    bills ~128k input tokens per call while keyplane bills ~10, far past any hard limit. Expected: the cut call's
    input billed at what admission reserved for it (here the 128k context window at $16 per 1M: >= $1)."""
    from aiohttp import web

    from tests.proxy.conftest import admin
    from tests.redteam.conftest import serve_routes
    from tests.redteam.test_wk50_round12 import _owned

    received: list[bytes] = []

    async def responses(req: web.Request) -> web.StreamResponse:
        received.append(await req.read())
        await asyncio.sleep(6)  # a long context read, a reasoning model thinking
        usage = {"input_tokens": _CONTEXT - 1000, "output_tokens": 5, "total_tokens": _CONTEXT - 995}
        return web.json_response(
            {"id": "resp_r13_b", "object": "response", "status": "completed", "output": [], "usage": usage}
        )

    port = serve_routes({("POST", "/v1/responses"): responses})
    srv = make_gw(config_text=_upstream(port, prices=_INPUT_PRICED))
    pid, _ = _project(srv)
    k = admin(srv, "POST", f"/projects/{pid}/api_keys", {"name": "soon revoked"})
    _owned(srv, "resp_r13_a_long_context", pid, "response")

    async def go() -> int:
        body = {
            "model": "gpt-4o-mini",
            "input": "go on",
            "previous_response_id": "resp_r13_a_long_context",
            "max_output_tokens": 5,
        }
        h = {"Authorization": f"Bearer {k['value']}"}

        async def revoke() -> None:
            await asyncio.sleep(1.0)
            await asyncio.to_thread(admin, srv, "DELETE", f"/projects/{pid}/api_keys/{k['id']}")

        task = asyncio.ensure_future(revoke())
        async with httpx.AsyncClient(timeout=30) as c:
            r = await c.post(srv.v1 + "/responses", json=body, headers=h)
        await task
        return r.status_code

    status = asyncio.run(go())
    assert received and status in (401, 403), status  # the provider took it; the call was cut
    spent = _settled(srv, pid)
    assert spent >= 1_000_000, spent  # micro-dollars: the context window's input at $16 per 1M


# --- 4. one compressed read decodes to up to 256 MiB at once -------------------------------------------------------


def test_a_bounded_read_of_a_gzip_answer_never_holds_more_than_a_few_chunks():
    """proxy/forward.py reads an object path's JSON answer up to MAX_OBJECT_BODY (32 MiB) and cuts it past that;
    http1_answer pauses the socket past HIGH_WATER (256 KiB) of unread answer. Neither bound holds for a compressed
    answer: Response._feed hands zlib a whole socket read and lets it decode up to MAX_DECODED (256 MiB) in one call,
    so ~256 KiB of gzip from a hostile upstream is one 256 MiB allocation per request (and read() joins the parts:
    twice that), whatever the reader's limit; a few concurrent calls exhaust the gateway's memory. aiohttp decoded
    a chunk at a time (DeflateBuffer: max_length of its chunk size, back-pressure between). Expected: a read bounded
    at 1 MiB holds no more than a few MiB (decoding in HIGH_WATER-sized steps)."""
    from keyplane.proxy.forward import TooLarge, _read_bounded

    bomb = gzip.compress(b"\0" * (200 * 1024 * 1024), compresslevel=9)  # ~200 KiB on the wire

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            await _read_request(r)
            w.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\n")
            w.write(b"Content-Length: %d\r\n\r\n%s" % (len(bomb), bomb))
            await w.drain()
            await asyncio.sleep(5)
        except (ConnectionError, asyncio.CancelledError):
            pass

    async def main() -> tuple[str, int]:
        srv = await asyncio.start_server(handler, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        c = http1.Client()
        o = c.origin("http", "127.0.0.1", port)
        await asyncio.sleep(0.1)
        tracemalloc.start()
        try:
            resp = await c.request(o, b"GET /v1/files HTTP/1.1", b"", connect_timeout=1, read_timeout=3)
            try:
                await _read_bounded(resp, 1024 * 1024)
                outcome = "read whole"
            except TooLarge:
                outcome = "too large"
            except aiohttp.ClientPayloadError as e:
                outcome = f"cut: {e}"
            return outcome, tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
            await c.aclose()
            srv.close()

    outcome, peak = asyncio.run(main())
    assert peak < 16 * 1024 * 1024, (outcome, peak // (1024 * 1024))
