"""The fake provider's organization (keyplane.testing.fake_provider): what it holds (projects, users,
service accounts, keys, usage buckets, costs, spend limits, and the server's knobs: faults, recorded
requests, page size) and the helpers tests build it with.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Bucket:
    """One hourly usage row of the fake: what /organization/usage/completions reports."""

    start_time: int
    project_id: str
    api_key_id: str
    model: str
    input_tokens: int
    output_tokens: int
    requests: int = 1


@dataclass
class FakeOrganization:
    admin_key: str = "sk-admin-fake0123456789"
    projects: list[dict[str, Any]] = field(default_factory=list)
    users: list[dict[str, Any]] = field(default_factory=list)
    service_accounts: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    api_keys: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    admin_keys: list[dict[str, Any]] = field(default_factory=list)
    usage: list[Bucket] = field(default_factory=list)
    costs: list[dict[str, Any]] = field(default_factory=list)  # {start_time, project_id, value}
    spend_limits: dict[str, dict[str, Any]] = field(default_factory=dict)  # project id -> project.spend_limit
    spend_limit_status: int = 0  # 403: the admin key may not read limits; 404: an API without the endpoint
    secrets: dict[str, str] = field(default_factory=dict)  # key id -> value (what /v1/chat/completions accepts)
    shared_key: str = "sk-proj-shared-upstream-key-0000"  # a key of no project here (keyplane's shared upstream)
    model_calls: list[tuple[str, str]] = field(default_factory=list)  # (key id or "shared", model) per completion
    created: int = 0
    faults: collections.deque[tuple[int, float | None]] = field(default_factory=collections.deque)
    requests: list[tuple[str, str, str]] = field(default_factory=list)
    page_size: int = 2  # small, so every test pages
    hang_seconds: float = 5.0

    # --- building an organization ---------------------------------------------------------------

    def add_project(self, pid: str, name: str, created_at: int = 1_700_000_000) -> None:
        self.projects.append(
            {
                "id": pid,
                "object": "organization.project",
                "name": name,
                "created_at": created_at,
                "archived_at": None,
                "status": "active",
            }
        )
        self.service_accounts.setdefault(pid, [])
        self.api_keys.setdefault(pid, [])

    def add_user(self, uid: str, email: str, role: str = "reader") -> dict[str, Any]:
        u = {
            "object": "organization.user",
            "id": uid,
            "name": email.split("@")[0],
            "email": email,
            "role": role,
            "added_at": 1_700_000_000,
        }
        self.users.append(u)
        return u

    def add_service_account(self, pid: str, sid: str, name: str) -> dict[str, Any]:
        sa = {
            "object": "organization.project.service_account",
            "id": sid,
            "name": name,
            "role": "member",
            "created_at": 1_700_000_000,
        }
        self.service_accounts[pid].append(sa)
        return sa

    def add_key(
        self,
        pid: str,
        kid: str,
        secret: str,
        *,
        user: dict[str, Any] | None = None,
        service_account: dict[str, Any] | None = None,
        last_used_at: int | None = None,
        created_at: int = 1_700_000_000,
    ) -> None:
        owner: dict[str, Any] = (
            {"type": "user", "user": user}
            if user is not None
            else {"type": "service_account", "service_account": service_account}
        )
        self.secrets[kid] = secret
        self.api_keys[pid].append(
            {
                "object": "organization.project.api_key",
                "id": kid,
                "name": kid,
                "redacted_value": redact(secret),
                "created_at": created_at,
                "last_used_at": last_used_at,
                "owner": owner,
            }
        )

    def set_spend_limit(self, pid: str, dollars: int, enforcing: bool = False) -> None:
        self.spend_limits[pid] = {
            "object": "project.spend_limit",
            "currency": "USD",
            "interval": "month",
            "threshold_amount": dollars * 100,
            "enforcement": {"status": "enforcing" if enforcing else "inactive"},
            "notification_channel": None,
        }

    def key_ids(self) -> set[str]:
        return {k["id"] for keys in self.api_keys.values() for k in keys}


def redact(secret: str) -> str:
    """OpenAI's redacted form: the prefix, ``**...**`` and the last four characters."""
    head = secret[:8]
    return f"{head}**********{secret[-4:]}"
