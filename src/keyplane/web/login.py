"""Sign-in: email + password, then a TOTP code (enrolment is mandatory), recovery codes, sign-out.

Every success and failure lands in the audit log as ``login.succeeded`` / ``login.failed`` with a
``session`` actor (the platform's audit shape); ``logout.succeeded`` on sign-out.
"""

from __future__ import annotations

import math
from typing import Any
from urllib.parse import quote

import orjson
import segno
from markupsafe import Markup
from starlette.responses import Response
from starlette.routing import Route

from keyplane import control
from keyplane.store.models import User
from keyplane.web import auth
from keyplane.web.base import Ctx, safe_next, session_actor, view

_LOCKED = "Too many failed sign-in attempts from your address. Try again in {n} {unit}{s}."
_NO_PASSWORD = (
    "This account has no password yet. An administrator sets one on the server with "
    "`keyplane users set-password {email}`."
)


async def _audit(ctx: Ctx, type: str, user: User | None, details: dict[str, Any], email: str | None = None) -> None:
    async with ctx.rt.write() as s:
        await control.audit(s, session_actor(user, ctx.ip, email), type, details, resource_id=user.id if user else None)


def _locked_message(wait: float) -> str:
    if wait < 60:
        n, unit = max(1, math.ceil(wait)), "second"
    else:
        n, unit = auth.minutes(wait), "minute"
    return _LOCKED.format(n=n, unit=unit, s="" if n == 1 else "s")


async def _throttled(ctx: Ctx, email: str) -> float:
    """Seconds before this address may try this email again: per (email, address) and per address only,
    so a stranger failing on an owner's email never keeps the owner out."""
    return await ctx.web.shared.wait(email, ctx.ip)


async def _fail(ctx: Ctx, user: User | None, email: str, code: str, message: str) -> None:
    await ctx.web.shared.failure(email, ctx.ip)
    shown = email if "@" in email and " " not in email and len(email) <= 320 else None
    await _audit(ctx, "login.failed", user, {"error_code": code, "error_message": message}, shown)


def _next_q(nxt: str) -> str:
    return f"?next={quote(nxt, safe='/')}" if nxt != "/" else ""


# --- step 1: password --------------------------------------------------------------------------


@view(stage="anon")
async def login_page(ctx: Ctx) -> Response:
    if ctx.session.stage == "full" and ctx.session.user_id:
        return ctx.redirect("/")
    return ctx.render("login.html", email="", error=None, next=safe_next(ctx.request.query_params.get("next")))


@view(stage="anon")
async def login_submit(ctx: Ctx) -> Response:
    email = ctx.field("email").lower()[:320]
    password = ctx.form.get("password") if ctx.form is not None else None
    password = password if isinstance(password, str) else ""
    nxt = safe_next(ctx.field("next"))

    def again(error: str, status: int) -> Response:
        return ctx.render("login.html", status=status, email=email, error=error, next=nxt)

    if not email or not password:
        return again("Enter your email and password.", 400)
    async with ctx.rt.read() as s:
        user = await control.user_by_email(s, email)
    wait = await _throttled(ctx, email)
    if wait:
        await _audit(
            ctx, "login.failed", user, {"error_code": "locked_out", "error_message": "too many failed attempts"}, email
        )
        return again(_locked_message(wait), 429)
    ok = auth.verify_password(user.password_hash if user else None, password)
    if user is not None and not user.password_hash:
        await _fail(ctx, user, email, "no_password", "the account has no password")
        return again(_NO_PASSWORD.format(email=email), 403)
    if user is None or not ok:
        await _fail(ctx, user, email, "invalid_credentials", "incorrect email or password")
        return again("Incorrect email or password.", 401)
    ctx.session = ctx.web.sessions.start(user, "totp" if user.totp_enabled else "enroll")
    return ctx.redirect(("/login/totp" if user.totp_enabled else "/login/enroll") + _next_q(nxt))


# --- step 2: TOTP or a recovery code -----------------------------------------------------------


@view(stage="pending")
async def totp_page(ctx: Ctx) -> Response:
    if ctx.session.stage == "enroll":
        return ctx.redirect("/login/enroll")
    return ctx.render("login_totp.html", error=None, next=safe_next(ctx.request.query_params.get("next")))


@view(stage="pending")
async def totp_submit(ctx: Ctx) -> Response:
    user = ctx.user
    assert user is not None
    if ctx.session.stage == "enroll" or not user.totp_enabled:
        return ctx.redirect("/login/enroll")
    nxt = safe_next(ctx.field("next"))
    code = ctx.field("code")[:64]
    wait = await _throttled(ctx, user.email)
    if wait:
        await _audit(
            ctx, "login.failed", user, {"error_code": "locked_out", "error_message": "too many failed attempts"}
        )
        return ctx.render("login_totp.html", status=429, error=_locked_message(wait), next=nxt)
    secret = ctx.web.box.open(user.totp_secret or "")
    step = auth.totp_step(secret, code, ctx.rt.clock.now()) if secret else None
    method = None
    if step is not None and await ctx.web.shared.claim_step(user.id, step):
        method = "totp"
    elif step is None and len(auth.normalize_code(code)) == 10 and await _spend_recovery_code(ctx, user.id, code):
        method = "recovery_code"
    if method is None:
        await _fail(ctx, user, user.email, "invalid_mfa_code", "wrong or already used authentication code")
        return ctx.render(
            "login_totp.html",
            status=401,
            next=nxt,
            error="That code is not valid. Enter the current 6-digit code from your authenticator app "
            "(each code works once), or one of your recovery codes.",
        )
    return await _signed_in(ctx, user, method, nxt)


async def _spend_recovery_code(ctx: Ctx, user_id: str, code: str) -> bool:
    """Spend one of the user's recovery codes: True once per code, even when sign-ins on several instances send
    it at the same moment. PostgreSQL lets concurrent transactions read the same list (SQLite's BEGIN IMMEDIATE
    does not), so the row is locked as it is read, and the new list is written only over the very list read
    (the UPDATE's rowcount says whether it was): never two sign-ins on one code."""
    async with ctx.rt.write() as s:
        stored = await control.recovery_codes_for_update(s, user_id)
        rest = auth.use_recovery_code(ctx.rt.settings.secret_key, stored, code)
        if rest is None:
            return False
        return await control.replace_recovery_codes(s, user_id, stored, rest)


async def _signed_in(ctx: Ctx, user: User, method: str, nxt: str) -> Response:
    await ctx.web.shared.success(user.email, ctx.ip)
    await _audit(ctx, "login.succeeded", user, {"method": method})
    ctx.session = ctx.web.sessions.start(user, "full")
    remaining = len(orjson.loads(user.recovery_codes or "[]"))
    if method == "recovery_code":
        ctx.flash(
            f"Signed in with a recovery code; {remaining - 1 if remaining else 0} left. "
            "Reset your second factor from the Users page if you lost your authenticator."
        )
    return ctx.redirect(nxt)


# --- enrolment ---------------------------------------------------------------------------------


async def _pending_secret(ctx: Ctx, user: User) -> str:
    """The secret being enrolled: kept (encrypted) on the user until confirmed, so a reload keeps it."""
    existing = ctx.web.box.open(user.totp_secret) if user.totp_secret and not user.totp_enabled else None
    if existing:
        return existing
    secret = auth.new_totp_secret()
    async with ctx.rt.write() as s:
        row = await control.get_user(s, user.id)
        row.totp_secret, row.totp_enabled = ctx.web.box.seal(secret), False
    return secret


def _qr_svg(uri: str) -> Markup:
    svg = segno.make(uri, error="m").svg_inline(
        scale=5, border=3, dark="#111", light="#fff", omitsize=True, title="QR code for your authenticator app"
    )
    return Markup(svg)  # noqa: S704 - generated by segno from our own URI, no user markup


@view(stage="pending")
async def enroll_page(ctx: Ctx) -> Response:
    return await _enroll(ctx, None, 200)


async def _enroll(ctx: Ctx, error: str | None, status: int) -> Response:
    user = ctx.user
    assert user is not None
    if ctx.session.stage != "enroll":
        return ctx.redirect("/login/totp")
    secret = await _pending_secret(ctx, user)
    uri = auth.provisioning_uri(secret, user.email, ctx.web.org_name)
    grouped = " ".join(secret[i : i + 4] for i in range(0, len(secret), 4))
    nxt = safe_next(ctx.field("next") or ctx.request.query_params.get("next"))
    return ctx.render("login_enroll.html", status=status, qr=_qr_svg(uri), secret=grouped, error=error, next=nxt)


@view(stage="pending")
async def enroll_submit(ctx: Ctx) -> Response:
    user = ctx.user
    assert user is not None
    if ctx.session.stage != "enroll":
        return ctx.redirect("/login/totp")
    wait = await _throttled(ctx, user.email)
    if wait:
        return await _enroll(ctx, _locked_message(wait), 429)
    secret = ctx.web.box.open(user.totp_secret or "")
    step = auth.totp_step(secret, ctx.field("code")[:64], ctx.rt.clock.now()) if secret else None
    if step is None or not await ctx.web.shared.claim_step(user.id, step):
        await _fail(ctx, user, user.email, "invalid_mfa_code", "wrong code while enrolling an authenticator")
        return await _enroll(
            ctx, "That code does not match. Check the time on your phone and enter the current 6-digit code.", 401
        )
    codes = auth.new_recovery_codes()
    async with ctx.rt.write() as s:
        row = await control.get_user(s, user.id)
        row.totp_enabled = True
        row.recovery_codes = orjson.dumps([auth.recovery_digest(ctx.rt.settings.secret_key, c) for c in codes]).decode()
        await control.audit(
            s, ctx.actor, "user.updated", {"id": row.id, "changes_requested": {"mfa": "enrolled"}}, resource_id=row.id
        )
        await control.audit(s, ctx.actor, "login.succeeded", {"method": "totp_enrollment"}, resource_id=row.id)
        user = row
    await ctx.web.shared.success(user.email, ctx.ip)
    ctx.user = user
    ctx.session = ctx.web.sessions.start(user, "full")
    return ctx.render("login_codes.html", codes=codes, next=safe_next(ctx.field("next")))


# --- sign-out ----------------------------------------------------------------------------------


@view(stage="any")
async def logout(ctx: Ctx) -> Response:
    await _audit(ctx, "logout.succeeded", ctx.user, {})
    await ctx.web.shared.end_session(ctx.session)
    ctx.session = ctx.web.sessions.anonymous()
    return ctx.redirect("/login", "You are signed out.")


ROUTES = [
    Route("/login", login_page, methods=["GET"]),
    Route("/login", login_submit, methods=["POST"]),
    Route("/login/totp", totp_page, methods=["GET"]),
    Route("/login/totp", totp_submit, methods=["POST"]),
    Route("/login/enroll", enroll_page, methods=["GET"]),
    Route("/login/enroll", enroll_submit, methods=["POST"]),
    Route("/logout", logout, methods=["POST"]),
]
