"""Request plumbing of the dashboard: state, the session on each request, CSRF, roles, rendering."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote

import jinja2
from markupsafe import Markup
from starlette.datastructures import FormData, UploadFile
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from keyplane import fmt
from keyplane.control import Actor, get_org, user_by_id
from keyplane.domain import DomainError, status_of
from keyplane.errors import APIError
from keyplane.members import grants, permissions
from keyplane.runtime import Runtime
from keyplane.store.models import User
from keyplane.web import auth
from keyplane.web.fleet import SharedSignIn

TEMPLATES = Path(__file__).with_name("templates")

# What a dashboard action may be refused with: the domain's refusals (keyplane.domain) and the HTTP-shaped
# errors of the code the dashboard shares with the admin API. A page shows ``e.message`` (and answers with
# :func:`refused_status`): the dashboard's one mapping of the domain's errors.
Refused = (DomainError, APIError)


def refused_status(e: DomainError | APIError) -> int:
    return e.status if isinstance(e, APIError) else status_of(e)


MAX_FORM_FIELDS = 200
MAX_FIELD = 4096


class WebState:
    """Everything the dashboard keeps for the life of the process."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.sessions = auth.Sessions(rt.settings.secret_key, rt.clock)
        self.shared = SharedSignIn(rt)  # ended sessions, used TOTP steps, throttle: fleet-wide
        self.box = auth.SecretBox(rt.settings.secret_key)
        self.templates = make_env()
        self.org_name = ""

    async def organization_name(self) -> str:
        if not self.org_name:
            async with self.rt.read() as s:
                org = await get_org(s)
            self.org_name = org.name if org else ""
        return self.org_name


# --- formatting ------------------------------------------------------------------------------


def usd(value: Any) -> str:
    """Dollars spent as keyplane.fmt shows them everywhere (the CLI and error messages too): rounded up."""
    return fmt.usd_dollars(value, "up")


def left(value: Any) -> str:
    """Dollars available (a credit balance): rounded down, never showing more than there is."""
    return fmt.usd_dollars(value, "down")


def cents(value: Any) -> str:
    try:
        return usd(int(value) / 100)
    except (TypeError, ValueError):
        return "-"


def num(value: Any) -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "-" if value is None else str(value)
    return f"{int(v):,}" if v == int(v) else f"{v:,.2f}"


def when(ts: Any, empty: str = "never") -> Markup:
    """A <time> in UTC; static/app.js rewrites the text in the viewer's time zone."""
    if ts in (None, "", 0):
        return Markup('<span class="muted">{}</span>').format(empty)
    try:
        dt = datetime.fromtimestamp(float(ts), UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        return Markup("{}").format(ts)
    return Markup('<time datetime="{}">{} UTC</time>').format(
        dt.strftime("%Y-%m-%dT%H:%M:%SZ"), dt.strftime("%Y-%m-%d %H:%M")
    )


def day(ts: Any) -> Markup:
    """A UTC calendar day (a daily usage bucket): shown as a date, never shifted to the viewer's zone."""
    try:
        dt = datetime.fromtimestamp(float(ts), UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        return Markup("-")
    return Markup('<time datetime="{}" data-day="1">{}</time>').format(dt.strftime("%Y-%m-%d"), dt.strftime("%Y-%m-%d"))


def make_env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        usd=usd,
        left=left,
        cents=cents,
        num=num,
        when=when,
        day=day,
        urlq=lambda v: quote(str(v), safe=""),
        countdown=lambda end, now: fmt.duration(float(end) - float(now)),
    )
    return env


# --- the session on a request ----------------------------------------------------------------


@dataclass
class Ctx:
    request: Request
    web: WebState
    session: auth.Session
    user: User | None = None
    form: FormData | None = None
    granted: frozenset[str] = frozenset()  # the user's effective admin permissions (keyplane.members.grants)

    @property
    def rt(self) -> Runtime:
        return self.web.rt

    @property
    def ip(self) -> str:
        return self.request.client.host if self.request.client else "unknown"

    @property
    def is_owner(self) -> bool:
        """May change things: holds every permission of the table (the owner role, or custom roles that add
        up to it); the same effective permissions the admin API checks (keyplane.members.permissions)."""
        return self.user is not None and permissions.ROLES["owner"] <= self.granted

    def may(self, method: str, api_path: str) -> bool:
        """Whether the user's effective permissions allow the admin API call ``method api_path`` (a page's twin
        in the API): the very check the admin API makes (keyplane.members.permissions.required)."""
        return self.user is not None and permissions.required(method, api_path) in self.granted

    @property
    def actor(self) -> Actor:
        return session_actor(self.user, self.ip)

    def field(self, name: str, default: str = "") -> str:
        v = self.form.get(name) if self.form is not None else None
        return v.strip() if isinstance(v, str) else default

    def fields(self, name: str) -> list[str]:
        return [v for v in (self.form.getlist(name) if self.form is not None else []) if isinstance(v, str)]

    def flash(self, message: str) -> None:
        self.session.flash = message[:500]
        self.session.dirty = True

    def redirect(self, url: str, flash: str | None = None) -> Response:
        if flash:
            self.flash(flash)
        return RedirectResponse(url, status_code=303)

    def render(self, template: str, status: int = 200, **values: Any) -> HTMLResponse:
        flash = self.session.flash
        if flash:
            self.session.flash = None
            self.session.dirty = True
        html = self.web.templates.get_template(template).render(
            user=self.user,
            is_owner=self.is_owner,
            csrf=self.session.csrf,
            flash=flash,
            path=self.request.url.path,
            org_name=self.web.org_name,
            htmx=self.is_htmx,
            now=self.rt.clock.now(),
            **values,
        )
        return HTMLResponse(html, status_code=status)

    @property
    def is_htmx(self) -> bool:
        return self.request.headers.get("hx-request") == "true"


def session_actor(user: User | None, ip: str, email: str | None = None) -> Actor:
    uid = user.id if user else None
    return Actor("session", uid, {"user": {"id": uid, "email": user.email if user else email}, "ip_address": ip})


def secure_request(request: Request) -> bool:
    # uvicorn rewrites the scheme from X-Forwarded-Proto only for proxies in FORWARDED_ALLOW_IPS.
    return request.url.scheme == "https"


def save_session(request: Request, web: WebState, session: auth.Session, response: Response) -> Response:
    if session.dirty:
        secure = secure_request(request)
        response.set_cookie(
            auth.COOKIE_SECURE if secure else auth.COOKIE,
            web.sessions.dump(session),
            max_age=int(max(60, session.expires_at - web.rt.clock.now())),
            path="/",
            secure=secure,
            httponly=True,
            samesite="lax",
        )
    return response


def clear_session(request: Request, response: Response) -> Response:
    secure = secure_request(request)
    response.delete_cookie(
        auth.COOKIE_SECURE if secure else auth.COOKIE, path="/", secure=secure, httponly=True, samesite="lax"
    )
    return response


async def load_session(request: Request, web: WebState) -> auth.Session:
    """The cookie's session, or a new anonymous one when it is missing, forged, expired or signed out."""
    name = auth.COOKIE_SECURE if secure_request(request) else auth.COOKIE
    session = web.sessions.load(request.cookies.get(name))
    if session is None or (session.user_id is not None and await web.shared.session_ended(session)):
        return web.sessions.anonymous()
    return session


class FormError(ValueError):
    pass


async def read_form(request: Request) -> FormData:
    """URL-encoded forms only (the dashboard uploads no files), bounded in fields and size."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    body = await request.body()
    if not body:
        return FormData()
    if ctype != "application/x-www-form-urlencoded":
        raise FormError("unsupported form encoding")
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=MAX_FORM_FIELDS)
    except (UnicodeDecodeError, ValueError):
        raise FormError("unreadable form") from None
    if any(len(v) > MAX_FIELD for _, v in pairs):
        raise FormError("a field is too large")
    fields: list[tuple[str, str | UploadFile]] = list(pairs)
    return FormData(fields)


def error_page(ctx: Ctx, status: int, title: str, message: str) -> Response:
    if ctx.is_htmx:
        return HTMLResponse(
            ctx.web.templates.get_template("_error.html").render(title=title, message=message),
            status_code=status,
            headers={"HX-Retarget": "#flash-slot", "HX-Reswap": "innerHTML"},
        )
    return ctx.render("error.html", status=status, title=title, message=message)


def not_permitted(ctx: Ctx, method: str, api_path: str) -> Response | None:
    """The 403 page when the user may not make the admin API call ``method api_path`` (see Ctx.may)."""
    if ctx.may(method, api_path):
        return None
    need = permissions.required(method, api_path)
    return error_page(
        ctx,
        403,
        "Not allowed",
        f"This needs the permission {need}, which your roles do not give "
        "you: you can see this page but not change it. Ask an owner to make this change.",
    )


Handler = Callable[[Ctx], Awaitable[Response]]


def view(*, owner: bool = False, stage: str = "full") -> Callable[[Handler], Callable[[Request], Awaitable[Response]]]:
    """Wrap a page: load the session, check CSRF on POST, load the user, enforce the role.

    ``stage="full"``: a signed-in user (password and second factor done). ``stage="anon"``: anyone
    (login pages); ``stage="pending"``: between password and TOTP. ``owner``: refuse readers (403).
    """

    def deco(fn: Handler) -> Callable[[Request], Awaitable[Response]]:
        @functools.wraps(fn)
        async def endpoint(request: Request) -> Response:
            web: WebState = request.app.state.web
            refused = _outside_allowlist(request, web)  # every page, sign-in included: before the session is read
            if refused is not None:
                return refused
            await web.organization_name()
            session = await load_session(request, web)
            ctx = Ctx(request, web, session)
            response = await _guarded(ctx, fn, owner, stage)
            if isinstance(response, HTMLResponse):
                response.headers["cache-control"] = "no-store"
            return save_session(request, web, ctx.session, response)

        return endpoint

    return deco


def _outside_allowlist(request: Request, web: WebState) -> Response | None:
    """The 403 page when the organization's IP allowlist refuses the client's address (docs/access-control.md)."""
    access = web.rt.features.access
    if access is None:
        return None
    try:
        access.check_org_ip(request.scope.get("client"), request.scope["headers"])
    except APIError as e:
        html = web.templates.get_template("error_bare.html").render(
            title="Not allowed from this address",
            message=e.message + " An owner can change the list from an allowed address, or lift it on the server "
            "with `keyplane access ip-allowlist clear`.",
        )
        return HTMLResponse(html, status_code=403, headers={"cache-control": "no-store"})
    return None


async def _guarded(ctx: Ctx, fn: Handler, owner: bool, stage: str) -> Response:
    request, session = ctx.request, ctx.session
    if request.method == "POST":
        try:
            ctx.form = await read_form(request)
        except FormError:
            return error_page(ctx, 400, "Bad request", "The form could not be read (too many or too large fields).")
        given = request.headers.get("x-csrf-token") or ctx.field("csrf_token")
        if not auth.csrf_ok(session, given):
            return error_page(
                ctx,
                403,
                "Form expired",
                "The form was not accepted (missing or stale security token). Reload the page and try again.",
            )
    if stage == "anon":
        return await fn(ctx)
    if session.user_id is None:
        return _to_login(ctx)
    async with ctx.rt.read() as s:
        user = await user_by_id(s, session.user_id)
        ctx.granted = await grants.of_user(s, user.id) if user is not None else frozenset()
    if user is None or session.stamp != ctx.web.sessions.stamp(user):
        ctx.session = ctx.web.sessions.anonymous()
        return _to_login(ctx, "Your session has ended. Sign in again.")
    ctx.user = user
    if stage == "any":
        return await fn(ctx)
    if stage == "pending":
        if session.stage not in ("totp", "enroll"):
            return ctx.redirect("/")
        return await fn(ctx)
    if session.stage != "full":
        return ctx.redirect("/login/enroll" if session.stage == "enroll" else "/login/totp")
    if owner and not ctx.is_owner:
        return error_page(
            ctx,
            403,
            "Not allowed",
            "Your role (reader) can see everything but change nothing. Ask an owner to make this change.",
        )
    return await fn(ctx)


def _to_login(ctx: Ctx, flash: str | None = None) -> Response:
    target = ctx.request.url.path
    nxt = f"?next={quote(target, safe='/')}" if ctx.request.method == "GET" and target not in ("/", "/login") else ""
    if ctx.is_htmx:
        r: Response = Response(status_code=204, headers={"HX-Redirect": "/login" + nxt})
    else:
        r = ctx.redirect("/login" + nxt, flash)
    return r


def safe_next(value: str | None) -> str:
    """Only local paths: never an open redirect."""
    if value and value.startswith("/") and not value.startswith("//") and "\\" not in value and len(value) < 512:
        return value
    return "/"
