"""What the identity admin routes share: who may widen a rule or a provider, and this instance's identity
state reloaded after a change (keyplane.identity.routes, rule_routes). Their queries are queries.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from starlette.requests import Request

from keyplane.admin.common import require_in_project, runtime

if TYPE_CHECKING:
    from keyplane.identity.oidc import JwksCache
    from keyplane.identity.state import IdentityState
    from keyplane.snapshot import KeyEntry

# What widens who gets a rule's keys (a provider's: every rule of it), vs. names and descriptions.
WIDENS_RULE = ("attribute_matchers", "permissions")
WIDENS_PROVIDER = ("issuer", "audience", "verification", "attribute_transformations")


def widens(b: dict[str, Any], fields: tuple[str, ...]) -> bool:
    return any(f in b for f in fields) or b.get("enabled") is True


def require_keys_of(request: Request, entry: KeyEntry, project_id: str, sa_id: str) -> None:
    """A rule hands out keys of a project's service account: creating or widening one (or its provider) takes
    what creating such a key directly takes in that project (api.project.write there, organization-wide or from
    a project role), not only api.organization.write."""
    path = f"/v1/organization/projects/{project_id}/service_accounts/{sa_id}/api_keys"
    require_in_project(request, entry, project_id, "POST", path)


def _state(request: Request) -> IdentityState:
    state = runtime(request).features.identity
    if state is None:  # these endpoints are mounted by the identity feature's start
        raise RuntimeError("the identity feature is not running")
    return state


def jwks(request: Request) -> JwksCache:
    cache = runtime(request).features.identity_jwks
    if cache is None:
        raise RuntimeError("the identity feature is not running")
    return cache


async def changed(request: Request) -> None:
    """This instance's identity state now; the others follow the snapshot's change (keyplane.identity.state).
    The change is committed: should the reload fail, the state's own reload retries until it loads."""
    state = _state(request)
    try:
        await state.load()
    except Exception:
        state.schedule()


def now(request: Request) -> int:
    return int(runtime(request).clock.now())
