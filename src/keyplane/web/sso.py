"""Dashboard sign-in with OpenID Connect: authorization code flow with PKCE (docs/sso-and-workload-identity.md).

    GET /login/sso            -> the issuer's authorization endpoint (state, nonce, PKCE S256)
    GET /login/sso/callback   <- code + state; the code is exchanged with the client secret and the PKCE
                                 verifier; the ID token is verified (keyplane.identity.oidc) and its nonce
                                 checked; the groups claim gives the role; the user is signed in.

The flow's state lives in a short-lived cookie encrypted and authenticated with the server secret (no
server-side store, so any instance of a fleet can take the callback). Password + TOTP stays available
for break-glass; the issuer is trusted for the second factor of SSO users.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from typing import Any
from urllib.parse import urlencode

import aiohttp
import orjson
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from keyplane import control
from keyplane.config import Settings
from keyplane.identity import oidc
from keyplane.store.models import User
from keyplane.web.base import Ctx, Refused, safe_next, session_actor, view
from keyplane.web.login import _signed_in

COOKIE = "kp_sso"
FLOW_SECONDS = 600
_RANK = {"reader": 1, "owner": 2}


class SSOError(Exception):
    """Why an SSO sign-in was refused, in words for the login page."""


def enabled(settings: Settings) -> bool:
    return bool(settings.sso_issuer and settings.sso_client_id)


def role_map(settings: Settings) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in settings.sso_role_map.split(","):
        group, _, role = pair.strip().rpartition("=")
        if group and role.strip() in _RANK:
            out[group.strip()] = role.strip()
    return out


def role_for(settings: Settings, groups: Any) -> str | None:
    """The highest role any of the user's groups maps to; None when none does."""
    if isinstance(groups, str):
        groups = [groups]
    if not isinstance(groups, list):
        return None
    mapping = role_map(settings)
    roles = [mapping[g] for g in groups if isinstance(g, str) and g in mapping]
    return max(roles, key=_RANK.__getitem__) if roles else None


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _callback_url(ctx: Ctx) -> str:
    # The issuer only redirects to URLs registered for the client, so a forged Host header gets nowhere.
    return str(ctx.request.url_for("sso_callback"))


async def _discovery(settings: Settings) -> dict[str, Any]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        doc = await oidc.get_json(session, settings.sso_issuer.rstrip("/") + "/.well-known/openid-configuration")
    for field in ("authorization_endpoint", "token_endpoint"):
        if not isinstance(doc.get(field), str):
            raise SSOError(f"The issuer's discovery document has no {field}.")
        oidc.check_url(doc[field])
    return doc


def _failed(ctx: Ctx, message: str, status: int = 401) -> Response:
    response = ctx.render("login.html", status=status, email="", error=message, next="/")
    response.delete_cookie(COOKIE, path="/login/sso")
    return response


@view(stage="anon")
async def sso_start(ctx: Ctx) -> Response:
    settings = ctx.rt.settings
    if not enabled(settings):
        return ctx.redirect("/login")
    try:
        doc = await _discovery(settings)
    except (SSOError, oidc.TokenRejected, ValueError, aiohttp.ClientError, TimeoutError):
        return _failed(
            ctx,
            "Single sign-on is unavailable: the identity provider could not be reached. Sign in with your password.",
            503,
        )
    state, nonce, verifier = secrets.token_urlsafe(24), secrets.token_urlsafe(24), secrets.token_urlsafe(48)
    flow = {
        "state": state,
        "nonce": nonce,
        "verifier": verifier,
        "exp": int(ctx.rt.clock.now()) + FLOW_SECONDS,
        "next": safe_next(ctx.request.query_params.get("next")),
    }
    query = urlencode(
        {
            "response_type": "code",
            "client_id": settings.sso_client_id,
            "redirect_uri": _callback_url(ctx),
            "scope": "openid email profile",
            "state": state,
            "nonce": nonce,
            "code_challenge": _b64(hashlib.sha256(verifier.encode()).digest()),
            "code_challenge_method": "S256",
        }
    )
    response = RedirectResponse(f"{doc['authorization_endpoint']}?{query}", status_code=303)
    response.set_cookie(
        COOKIE,
        ctx.web.box.seal(orjson.dumps(flow).decode()),
        max_age=FLOW_SECONDS,
        path="/login/sso",
        httponly=True,
        samesite="lax",
        secure=ctx.request.url.scheme == "https",
    )
    return response


async def _id_token_claims(ctx: Ctx, code: str, flow: dict[str, Any]) -> dict[str, Any]:
    settings = ctx.rt.settings
    doc = await _discovery(settings)
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": _callback_url(ctx),
        "code_verifier": flow["verifier"],
        "client_id": settings.sso_client_id,
        "client_secret": os.environ.get(settings.sso_client_secret_env, ""),
    }
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
        session.post(doc["token_endpoint"], data=form, allow_redirects=False) as r,
    ):
        body = await r.content.read(oidc.MAX_DOCUMENT)
    if r.status != 200:
        raise SSOError(f"The identity provider refused the sign-in (HTTP {r.status}).")
    answer = orjson.loads(body)
    id_token = answer.get("id_token") if isinstance(answer, dict) else None
    if not isinstance(id_token, str):
        raise SSOError("The identity provider returned no ID token.")
    jwks = ctx.rt.features.identity_jwks or oidc.JwksCache()
    keys = await jwks.keys(
        "sso", settings.sso_issuer, {"type": "discovery", "discovery_url": None}, oidc.key_id(id_token)
    )
    claims = oidc.verify(id_token, keys, issuer=settings.sso_issuer, audience=settings.sso_client_id)
    if not hmac.compare_digest(str(claims.get("nonce", "")), flow["nonce"]):
        raise SSOError("The ID token's nonce does not match this sign-in.")
    return claims


async def _user_for(ctx: Ctx, claims: dict[str, Any]) -> User:
    settings = ctx.rt.settings
    email = claims.get("email")
    if not isinstance(email, str) or "@" not in email or claims.get("email_verified") is False:
        raise SSOError("The identity provider gave no verified email address for this account.")
    email = email.strip().lower()
    role = role_for(settings, claims.get(settings.sso_groups_claim))
    if role is None:
        raise SSOError("Your account is in no group allowed to use this dashboard.")
    actor = session_actor(None, ctx.ip, email)
    async with ctx.rt.write() as s:
        user = await control.user_by_email(s, email)
        if user is None:
            if not settings.sso_create_users:
                raise SSOError("There is no dashboard user with this email; an administrator must add you first.")
            name = claims.get("name") if isinstance(claims.get("name"), str) else ""
            user = await control.add_user(s, actor, email=email, role=role, name=str(name)[:256])
        elif user.role != role:
            user = await control.update_user_role(s, actor, user.id, role)
    return user


@view(stage="anon")
async def sso_callback(ctx: Ctx) -> Response:
    if not enabled(ctx.rt.settings):
        return ctx.redirect("/login")
    q = ctx.request.query_params
    sealed = ctx.request.cookies.get(COOKIE)
    raw = ctx.web.box.open(sealed) if sealed else None
    flow = orjson.loads(raw) if raw else None
    if (
        not isinstance(flow, dict)
        or flow.get("exp", 0) < ctx.rt.clock.now()
        or not hmac.compare_digest(str(q.get("state", "")), str(flow.get("state")))
    ):
        return _failed(ctx, "The single sign-on attempt expired or did not start here. Try again.", 400)
    if q.get("error") or not q.get("code"):
        return _failed(ctx, "The identity provider did not sign you in.")
    try:
        claims = await _id_token_claims(ctx, q["code"], flow)
        user = await _user_for(ctx, claims)
    except (SSOError, oidc.TokenRejected) as e:
        return _failed(ctx, str(e), 403)
    except Refused as e:  # e.g. the last owner would lose the role
        return _failed(ctx, e.message, 403)
    except (aiohttp.ClientError, TimeoutError, ValueError, orjson.JSONDecodeError):
        return _failed(ctx, "The identity provider could not be reached. Sign in with your password.", 503)
    response = await _signed_in(ctx, user, "sso", flow.get("next") or "/")
    response.delete_cookie(COOKIE, path="/login/sso")
    return response


ROUTES = [
    Route("/login/sso", sso_start, methods=["GET"]),
    Route("/login/sso/callback", sso_callback, methods=["GET"], name="sso_callback"),
]
