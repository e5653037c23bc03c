"""Identity: keyless service accounts through workload identity federation (and dashboard SSO).

Feature start-up (app.FEATURES). Kept free of imports at module level: keyplane.auth imports
keyplane.identity.tokens on the request path, and must not pull the admin API in with it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from keyplane.app import Feature
    from keyplane.runtime import Runtime


async def start(rt: Runtime) -> Feature:
    from keyplane.app import Feature
    from keyplane.identity import exchange, oidc, routes
    from keyplane.identity.state import IdentityState

    state = IdentityState(rt.read_engine, rt.snapshot)
    await state.load()
    rt.features.identity = state
    rt.features.identity_jwks = oidc.JwksCache()
    return Feature(endpoints=list(routes.ENDPOINTS), routes={"/oauth/token": exchange.token_route(rt)}, stop=state.stop)
