"""Public identifiers in the platform's styles (proj_..., key_..., user-...)."""

from __future__ import annotations

import secrets
import string

_ALNUM = string.ascii_letters + string.digits


def new_id(prefix: str, n: int = 24) -> str:
    return prefix + "".join(secrets.choice(_ALNUM) for _ in range(n))


def project_id() -> str:
    return new_id("proj_")


def key_id() -> str:
    return new_id("key_")


def user_id() -> str:
    return new_id("user-")


def org_id() -> str:
    return new_id("org-")


def service_account_id() -> str:
    return new_id("svc_acct_")


def audit_id() -> str:
    return new_id("audit_log-")


def request_id() -> str:
    return "req_" + secrets.token_hex(16)
