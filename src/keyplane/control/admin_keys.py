"""Admin keys, and finding keys by their SHA-256 (the leak scanner)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from keyplane import keys
from keyplane.control.base import (
    Actor,
    audit,
    bump_revision,
    check_name,
    check_positive_int,
    now_s,
    page,
)
from keyplane.control.keys import (
    new_key_row,
)
from keyplane.domain import Invalid
from keyplane.scopes import parse_permissions
from keyplane.store.models import ApiKey, User

# --- admin keys --------------------------------------------------------------------------------


async def create_admin_key(
    s: AsyncSession,
    actor: Actor,
    secret: bytes,
    name: Any,
    *,
    owner_user_id: str | None = None,
    expires_in_seconds: Any = None,
    at: int | None = None,
    role: Any = None,
) -> tuple[ApiKey, str]:
    name = check_name(name)
    if role not in (None, "owner", "reader"):  # the admin key's role (keyplane.members.permissions)
        raise Invalid("'role' must be 'owner' or 'reader'.", param="role", code="invalid_value")
    ttl = check_positive_int(expires_in_seconds, "expires_in_seconds")
    t = at if at is not None else now_s()
    if owner_user_id is None:
        owner = (await s.execute(select(User).where(User.role == "owner").order_by(User.seq))).scalar()
        owner_user_id = owner.id if owner else None
    row, value = new_key_row(
        secret,
        "admin",
        name or "",
        project_id=None,
        owner_user_id=owner_user_id,
        service_account_id=None,
        permissions=parse_permissions("read_only" if role == "reader" else "all"),
        expires_at=t + ttl if ttl else None,
        at=t,
    )
    s.add(row)
    await audit(s, actor, "api_key.created", {"id": row.id, "data": {"scopes": ["admin"]}}, resource_id=row.id, at=t)
    await bump_revision(s)
    return row, value


async def list_admin_keys(
    s: AsyncSession, *, after: str | None = None, limit: int = 20, descending: bool = False
) -> tuple[list[ApiKey], bool]:
    """A page of the admin keys not revoked, in creation order (newest first when ``descending``):
    (keys, has_more)."""
    stmt = select(ApiKey).where(ApiKey.kind == "admin", ApiKey.revoked_at.is_(None))
    return await page(s, ApiKey, stmt, after=after, limit=limit, descending=descending)


async def lookup_sha256(s: AsyncSession, secret: bytes, hashes: list[str]) -> list[tuple[str, ApiKey]]:
    """Keys whose SHA-256 is in ``hashes`` (the leak scanner never sends a key itself)."""
    digests = {keys.digest_of_sha256(secret, h): h for h in hashes}
    rows = (await s.execute(select(ApiKey).where(ApiKey.digest.in_(list(digests))))).scalars()
    return [(digests[r.digest], r) for r in rows]


def validate_sha256_list(value: Any) -> list[str]:
    if not isinstance(value, list) or not value or len(value) > 1000:
        raise Invalid("'sha256' must be a list of 1 to 1000 hex SHA-256 digests.", param="sha256")
    out = []
    for h in value:
        if not isinstance(h, str) or len(h) != 64:
            raise Invalid("'sha256' entries must be 64 hex characters.", param="sha256")
        try:
            bytes.fromhex(h)
        except ValueError:
            raise Invalid("'sha256' entries must be 64 hex characters.", param="sha256") from None
        out.append(h.lower())
    return out
