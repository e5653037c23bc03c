"""Users (add with a one-time password, role, 2FA reset, removal) and the signed-in user's Account page."""

from __future__ import annotations

from typing import Any

from starlette.responses import Response
from starlette.routing import Route

from keyplane import control
from keyplane.web import auth
from keyplane.web.base import Ctx, Refused, error_page, view


def _problem(ctx: Ctx, message: str, status: int = 400) -> Response:
    return error_page(ctx, status, "Not done", message)


# --- users -------------------------------------------------------------------------------------


async def _users_page(ctx: Ctx, secret: dict[str, Any] | None = None) -> Response:
    async with ctx.rt.read() as s:
        users = await control.all_users(s)
    return ctx.render("users.html", nav="users", users=users, secret=secret)


@view()
async def users_page(ctx: Ctx) -> Response:
    return await _users_page(ctx)


@view(owner=True)
async def user_add(ctx: Ctx) -> Response:
    password = auth.generate_password()
    try:
        async with ctx.rt.write() as s:
            u = await control.add_user(
                s,
                ctx.actor,
                email=ctx.field("email"),
                role=ctx.field("role", "reader"),
                name=ctx.field("name"),
                password_hash=auth.hash_password(password),
            )
    except Refused as e:
        return _problem(ctx, e.message)
    secret = {
        "title": "User added",
        "name": u.email,
        "id": u.id,
        "value": password,
        "kind": "password",
        "back": "/users",
    }
    if ctx.is_htmx:
        return ctx.render("_secret.html", secret=secret)
    return await _users_page(ctx, secret)


async def _user_change(ctx: Ctx, action: str) -> Response:
    uid = ctx.request.path_params["uid"]
    assert ctx.user is not None
    try:
        async with ctx.rt.write() as s:
            u = await control.get_user(s, uid)
            email = u.email
            if action == "role":
                await control.update_user_role(s, ctx.actor, uid, ctx.field("role"))
                msg = f"{email} is now {u.role}."
            elif action == "reset-2fa":
                u.totp_secret, u.totp_enabled, u.recovery_codes = None, False, None
                await control.audit(
                    s, ctx.actor, "user.updated", {"id": uid, "changes_requested": {"mfa": "reset"}}, resource_id=uid
                )
                msg = f"Second factor of {email} reset: they enrol a new authenticator at their next sign-in."
            else:
                await control.delete_user(s, ctx.actor, uid)
                msg = f"{email} removed; their user keys are revoked."
    except Refused as e:
        return _problem(ctx, e.message)
    if uid == ctx.user.id and action != "role":
        return ctx.redirect("/login", msg)
    return ctx.redirect("/users", msg)


@view(owner=True)
async def user_role(ctx: Ctx) -> Response:
    return await _user_change(ctx, "role")


@view(owner=True)
async def user_reset_2fa(ctx: Ctx) -> Response:
    return await _user_change(ctx, "reset-2fa")


@view(owner=True)
async def user_remove(ctx: Ctx) -> Response:
    return await _user_change(ctx, "remove")


# --- the signed-in user's own account ------------------------------------------------------------


@view()
async def account_page(ctx: Ctx) -> Response:
    return ctx.render("account.html", nav="account", error=None)


@view()
async def account_password(ctx: Ctx) -> Response:
    user = ctx.user
    assert user is not None
    form = ctx.form
    current = form.get("current") if form is not None else None
    new = form.get("new") if form is not None else None
    again = form.get("again") if form is not None else None
    if not all(isinstance(x, str) for x in (current, new, again)):
        return ctx.render("account.html", status=400, nav="account", error="Fill in every field.")
    assert isinstance(current, str) and isinstance(new, str)
    if not auth.verify_password(user.password_hash, current):
        return ctx.render("account.html", status=400, nav="account", error="The current password is not right.")
    problem = auth.password_problem(new) or (None if new == again else "The two new passwords differ.")
    if problem:
        return ctx.render("account.html", status=400, nav="account", error=problem)
    async with ctx.rt.write() as s:
        row = await control.get_user(s, user.id)
        row.password_hash = auth.hash_password(new)
        await control.audit(
            s,
            ctx.actor,
            "user.updated",
            {"id": row.id, "changes_requested": {"password": "changed"}},
            resource_id=row.id,
        )
    ctx.session = ctx.web.sessions.start(row, "full")  # other sessions of this user end with the old password
    return ctx.redirect("/account", "Password changed. Other sessions of yours are signed out.")


ROUTES = [
    Route("/users", users_page, methods=["GET"]),
    Route("/users", user_add, methods=["POST"]),
    Route("/users/{uid}/role", user_role, methods=["POST"]),
    Route("/users/{uid}/reset-2fa", user_reset_2fa, methods=["POST"]),
    Route("/users/{uid}/remove", user_remove, methods=["POST"]),
    Route("/account", account_page, methods=["GET"]),
    Route("/account/password", account_password, methods=["POST"]),
]
