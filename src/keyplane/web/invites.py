"""The one-time invite link (/invite/<token>): the invited person sets a password and becomes a user
(keyplane.members.invites). No session needed; the page works once, then the person signs in at /login."""

from __future__ import annotations

import anyio
from starlette.responses import Response
from starlette.routing import Route

from keyplane.members import invites
from keyplane.web import auth
from keyplane.web.base import Ctx, Refused, view

_INVALID = "This invite link is not valid: it was used, deleted, or has expired. Ask an owner for a new invite."


@view(stage="anon")
async def invite_page(ctx: Ctx) -> Response:
    token = ctx.request.path_params["token"]
    async with ctx.rt.read() as s:
        inv = await invites.find_by_token(s, ctx.rt.settings.secret_key, token, ctx.rt.clock.now())
        problem = await invites.sender_problem(s, inv) if inv is not None else None
    if inv is None:
        return ctx.render("invite_accept.html", status=404, invite=None, error=_INVALID)
    if problem is not None:  # its sender no longer holds what it gives: say so before a password is chosen
        return ctx.render("invite_accept.html", status=403, invite=None, error=problem)
    return ctx.render("invite_accept.html", invite=inv, error=None)


@view(stage="anon")
async def invite_submit(ctx: Ctx) -> Response:
    token = ctx.request.path_params["token"]
    rt = ctx.rt
    async with rt.read() as s:
        inv = await invites.find_by_token(s, rt.settings.secret_key, token, rt.clock.now())
    if inv is None:
        return ctx.render("invite_accept.html", status=404, invite=None, error=_INVALID)
    password = ctx.form.get("password") if ctx.form is not None else None
    password = password if isinstance(password, str) else ""
    problem = auth.password_problem(password)
    if problem is None and password != ctx.field("password2"):
        problem = "The two passwords differ."
    if problem is not None:
        return ctx.render("invite_accept.html", status=400, invite=inv, error=problem)
    hashed = await anyio.to_thread.run_sync(auth.hash_password, password)
    try:
        async with rt.write() as s:
            await invites.accept_invite(
                s, rt.settings.secret_key, token, password_hash=hashed, name=ctx.field("name")[:256]
            )
    except Refused as e:
        if e.code == "invite_sender_unauthorized":
            return ctx.render("invite_accept.html", status=403, invite=None, error=e.message)
        return ctx.render("invite_accept.html", status=400, invite=None, error=_INVALID)
    return ctx.redirect("/login", "Your account is ready: sign in with your email and the new password.")


ROUTES = [
    Route("/invite/{token}", invite_page, methods=["GET"]),
    Route("/invite/{token}", invite_submit, methods=["POST"]),
]
