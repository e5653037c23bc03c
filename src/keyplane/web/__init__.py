"""The web dashboard at / (server-rendered Jinja pages, htmx, uPlot; every asset vendored in static/).

``build_web_app(rt)`` is called once at start-up by app.py, which hands it every path
outside /v1 that no feature route claimed.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from keyplane.runtime import Runtime
from keyplane.scopes import AREAS
from keyplane.web.base import WebState

log = logging.getLogger("keyplane.web")
STATIC = Path(__file__).with_name("static")
MAX_BODY = 64 * 1024  # the largest form the dashboard takes

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


class _Guard:
    """Security headers on every answer, and a bound on request bodies before anything reads them."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        try:
            length = int(headers.get(b"content-length", b"0") or 0)
        except ValueError:
            length = MAX_BODY + 1
        secure = scope.get("scheme") == "https"
        if length > MAX_BODY:
            await _too_large(send)
            return
        received = 0

        async def bounded_receive() -> dict[str, Any]:
            nonlocal received
            msg: dict[str, Any] = await receive()
            if msg["type"] == "http.request":
                received += len(msg.get("body", b""))
                if received > MAX_BODY:
                    raise HTTPException(413, "The form is too large.")
            return msg  # type: ignore[no-any-return]

        started = False

        async def send_with_headers(msg: dict[str, Any]) -> None:
            nonlocal started
            if msg["type"] == "http.response.start":
                started = True
                h = list(msg.get("headers") or [])
                h += [
                    (b"content-security-policy", CSP.encode()),
                    (b"x-content-type-options", b"nosniff"),
                    (b"x-frame-options", b"DENY"),
                    (b"referrer-policy", b"same-origin"),
                    (b"permissions-policy", b"camera=(), microphone=(), geolocation=()"),
                    (b"cross-origin-opener-policy", b"same-origin"),
                ]
                if secure:
                    h.append((b"strict-transport-security", b"max-age=31536000"))
                msg = {**msg, "headers": h}
            await send(msg)

        try:
            await self.app(scope, bounded_receive, send_with_headers)
        except Exception:
            # Starlette re-raises after its 500 page has been sent (and logged by _server_error);
            # letting it reach the server would cut the connection under that page.
            if not started:
                raise


async def _too_large(send: Any) -> None:
    body = b"Request too large."
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


# The OpenAI API's areas: a client whose base URL lacks /v1 asks for these at the root. The first segment of every
# path a permission area covers (keyplane.scopes.AREAS), and the API's parts no area covers.
_API_AREAS = frozenset(
    {p.split("/")[2] for _, prefixes in AREAS.values() for p in prefixes} | {"realtime", "organization", "containers"}
)


async def _not_found(request: Request, exc: Exception) -> Response:
    code = exc.status_code if isinstance(exc, HTTPException) else 500
    path = request.url.path[:200]
    if code == 404 and (path.strip("/").split("/", 1)[0] in _API_AREAS or "authorization" in request.headers):
        # An SDK pointed at the server's root (base_url without /v1): an OpenAI-shaped error that says so, not a page.
        from keyplane import errors

        hint = f": keyplane serves the OpenAI API under /v1, did you mean /v1{path}? (an SDK's base_url ends in /v1)"
        e = errors.unknown_url(request.method, path, hint)
        return Response(e.body(), status_code=404, media_type="application/json")
    web: WebState = request.app.state.web
    title = {404: "Not found", 405: "Method not allowed", 413: "Too large"}.get(code, "Error")
    message = {404: "There is no page at this address.", 413: "The form is too large."}.get(
        code, "The request could not be handled."
    )
    html = web.templates.get_template("error_bare.html").render(title=title, message=message)
    return HTMLResponse(html, status_code=code)


async def _server_error(request: Request, exc: Exception) -> Response:
    log.error("dashboard error on %s %s: %s", request.method, request.url.path, type(exc).__name__, exc_info=exc)
    html = request.app.state.web.templates.get_template("error_bare.html").render(
        title="Something went wrong", message="The page could not be shown; the error is in the server log."
    )
    return HTMLResponse(html, status_code=500)


def build_web_app(rt: Runtime) -> Any:
    import anyio

    from keyplane.web import access, invites, keys, login, manage, pages, providers, roles, sso, sso_status, users

    # StaticFiles opens files through anyio, which imports that module lazily on first use: load it
    # at start-up rather than in the middle of the first request for a static file.
    anyio.open_file  # noqa: B018

    routes: list[Any] = [
        *login.ROUTES,
        *sso.ROUTES,
        *pages.ROUTES,
        *manage.ROUTES,
        *keys.ROUTES,
        *users.ROUTES,
        *invites.ROUTES,
        *providers.ROUTES,
        *roles.ROUTES,
        *access.ROUTES,
        *sso_status.ROUTES,
        Route("/favicon.ico", _favicon, methods=["GET"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: _not_found, Exception: _server_error})
    app.state.web = WebState(rt)
    app.state.web.templates.globals["sso_enabled"] = sso.enabled(rt.settings)  # the login page's SSO button
    app.state.web.templates.globals["providers_enabled"] = bool(rt.settings.file.providers)  # the nav's Providers
    return _Guard(app)


async def _favicon(request: Request) -> Response:
    return Response(
        (STATIC / "favicon.svg").read_bytes(),
        media_type="image/svg+xml",
        headers={"cache-control": "public, max-age=86400"},
    )
