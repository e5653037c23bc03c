"""Control-plane operations shared by the admin API, the CLI and the dashboard, one module per entity.

Each change runs in one transaction that also writes its audit entry and bumps the revision
counter the snapshots follow (DESIGN.md: "Every change writes an audit event"). Writes take their
time from the clock of the runtime that opened the transaction (:func:`keyplane.control.base.now_s`).
"""

from __future__ import annotations

from keyplane.control.admin_keys import create_admin_key, lookup_sha256, validate_sha256_list
from keyplane.control.base import (
    CLI_ACTOR,
    MAX_NAME,
    SYSTEM_ACTOR,
    Actor,
    audit,
    bump_revision,
    check_name,
    check_permissions,
    check_positive_int,
    now_s,
    page,
    write_clock,
)
from keyplane.control.keys import (
    create_project_key,
    get_key,
    new_key_row,
    revoke_key,
    rotate_key,
    set_suspended,
    update_key,
)
from keyplane.control.organizations import AlreadyInitialized, get_org, init_org
from keyplane.control.projects import (
    archive_project,
    create_project,
    ensure_active,
    find_project,
    get_project,
    update_project,
)
from keyplane.control.service_accounts import create_service_account, delete_service_account, get_service_account
from keyplane.control.users import ROLES, add_user, check_role, delete_user, find_user, get_user, update_user_role

__all__ = [
    "CLI_ACTOR",
    "MAX_NAME",
    "ROLES",
    "SYSTEM_ACTOR",
    "Actor",
    "AlreadyInitialized",
    "add_user",
    "archive_project",
    "audit",
    "bump_revision",
    "check_name",
    "check_permissions",
    "check_positive_int",
    "check_role",
    "create_admin_key",
    "create_project",
    "create_project_key",
    "create_service_account",
    "delete_service_account",
    "delete_user",
    "ensure_active",
    "find_project",
    "find_user",
    "get_key",
    "get_org",
    "get_project",
    "get_service_account",
    "get_user",
    "init_org",
    "lookup_sha256",
    "new_key_row",
    "now_s",
    "page",
    "revoke_key",
    "rotate_key",
    "set_suspended",
    "update_key",
    "update_project",
    "update_user_role",
    "validate_sha256_list",
    "write_clock",
]
