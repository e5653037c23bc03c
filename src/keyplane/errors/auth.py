"""Who may call: authentication (401) and authorization (403) errors.

Built on :class:`keyplane.errors.base.APIError`; import them through ``keyplane.errors``.
"""

from __future__ import annotations

from keyplane.errors.base import APIError

_SEE = "You can find your API key in the keyplane dashboard or ask your keyplane administrator."


# --- authentication (401) --------------------------------------------------------------------


def missing_key(hint: str = "") -> APIError:
    msg = (
        "You didn't provide an API key. You need to provide your API key in an Authorization header "
        "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
    )
    return APIError(401, f"{msg} {hint}".strip() if hint else msg)


def invalid_key(masked: str, hint: str = "") -> APIError:
    msg = f"Incorrect API key provided: {masked}. {_SEE}"
    if hint:
        msg = f"{msg} {hint}"
    return APIError(401, msg, code="invalid_api_key")


def key_inactive(masked: str, why: str) -> APIError:
    """A key that exists but may not be used now (revoked, expired, suspended)."""
    return APIError(401, f"The API key {masked} {why}", code="invalid_api_key")


def mismatched_organization() -> APIError:
    return APIError(
        401, "OpenAI-Organization header should match organization for API key", code="mismatched_organization"
    )


def mismatched_project() -> APIError:
    return APIError(401, "OpenAI-Project header should match project for API key", code="mismatched_project")


def project_archived(masked: str, project_name: str, project_id: str) -> APIError:
    """A key of an archived project: archiving stops every key of the project at once."""
    return APIError(
        401,
        f"The API key {masked} belongs to project `{project_name}` ({project_id}), which has been archived; "
        "keys of an archived project can no longer be used. Use a key of an active project.",
        code="project_archived",
    )


def admin_key_required(hint: str) -> APIError:
    return APIError(401, hint, code="invalid_api_key")


# --- authorization (403) ---------------------------------------------------------------------


def missing_scope(scope: str, role_hint: str = "") -> APIError:
    msg = (
        f"You have insufficient permissions for this operation. Missing scopes: {scope}. "
        "Check that this API key's permissions in keyplane (All, Restricted or Read only) allow it: a keyplane "
        "owner can change them on the key's dashboard page or with `keyplane keys permissions`."
    )
    if role_hint:
        msg = f"{msg} {role_hint}"
    return APIError(403, msg, code="missing_scope")


def forbidden(message: str, code: str | None = None) -> APIError:
    return APIError(403, message, code=code)


# Access policies (keyplane.access, docs/access-control.md): refused before any upstream call.
def access_refused(message: str, code: str) -> APIError:
    return APIError(403, message, code=code)


def model_not_permitted(model: str, scope: str, target: str, mode: str) -> APIError:
    where = f"project {target}" if scope == "project" else f"API key {target}"
    how = "is not in the allow list" if mode == "allow_list" else "is in the deny list"
    return APIError(
        403,
        f"The model `{model}` {how} of the model permissions of {where}. "
        "Ask your keyplane administrator to change the policy.",
        param="model",
        code="model_not_permitted",
    )


def tool_not_permitted(tool: str, scope: str, target: str) -> APIError:
    where = f"project {target}" if scope == "project" else f"API key {target}"
    return APIError(
        403,
        f"The hosted tool `{tool}` is disabled by the hosted tool permissions of {where}.",
        param="tools",
        code="tool_not_permitted",
    )


def ip_not_allowed(address: str, scope: str) -> APIError:
    return APIError(
        403,
        f"Requests from the address {address} are not allowed by the IP allowlist of this {scope}.",
        code="ip_not_allowed",
    )
