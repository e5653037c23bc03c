"""The Single sign-on page: how dashboard SSO is configured, read-only (docs/sso-and-workload-identity.md).

SSO is set in the server's settings (keyplane.toml or the environment), not in the store, so the page only
shows it: the issuer, the client id, where the client secret comes from (the variable's name and whether it
is set, never its value), the groups claim and the group -> role mapping as the sign-in reads it
(keyplane.web.sso.role_map), entries it ignores included.
"""

from __future__ import annotations

import dataclasses
import os

from starlette.responses import Response
from starlette.routing import Route

from keyplane.web import sso
from keyplane.web.base import Ctx, not_permitted, view

ORG_READ_API = "/v1/organization"  # organization-level settings: what any organization read needs


@view()
async def sso_page(ctx: Ctx) -> Response:
    refused = not_permitted(ctx, "GET", ORG_READ_API)
    if refused is not None:
        return refused
    settings = ctx.rt.settings
    mapping = sso.role_map(settings)
    entries = [e.strip() for e in settings.sso_role_map.split(",") if e.strip()]
    # an entry the sign-in drops (no '=', or a role other than owner/reader): read by the same parser
    ignored = [e for e in entries if not sso.role_map(dataclasses.replace(settings, sso_role_map=e))]
    return ctx.render(
        "sso.html",
        nav="sso",
        enabled=sso.enabled(settings),
        issuer=settings.sso_issuer,
        client_id=settings.sso_client_id,
        secret_env=settings.sso_client_secret_env,
        secret_set=bool(os.environ.get(settings.sso_client_secret_env)),
        groups_claim=settings.sso_groups_claim,
        mapping=mapping,
        ignored=ignored,
        create_users=settings.sso_create_users,
        callback=str(ctx.request.url_for("sso_callback")),
    )


ROUTES = [Route("/sso", sso_page, methods=["GET"])]
