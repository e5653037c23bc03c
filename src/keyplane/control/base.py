"""What every control-plane write shares: the actor, the time, validation, the audit entry and
the revision bump, cursor paging."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import Select, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from keyplane import ids
from keyplane.domain import Invalid
from keyplane.scopes import InvalidPermissions, Permissions, parse_permissions
from keyplane.store.models import ApiKey, AuditLog, Meta

MAX_NAME = 256


@dataclass(frozen=True, slots=True)
class Actor:
    """Who made a change, in the audit log's actor shape."""

    type: str  # api_key | session | cli | system
    id: str | None = None
    detail: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"type": self.type}
        if self.detail is not None:
            d[self.type] = self.detail
        return d


CLI_ACTOR = Actor("cli", None, {"via": "keyplane command line"})
SYSTEM_ACTOR = Actor("system", None, {"via": "keyplane"})


# The clock of the control-plane write in progress: Runtime.write() (keyplane.runtime) sets it for its
# transaction, so every write of the admin API and the dashboard takes its time from the runtime's
# injected clock; the CLI's own transactions use the system clock.
_write_clock: ContextVar[Callable[[], float] | None] = ContextVar("keyplane_write_clock", default=None)


def now_s(clock_now: float | None = None) -> int:
    """Unix seconds for a write: ``clock_now`` when given, else the clock of the write in progress."""
    if clock_now is None:
        clock = _write_clock.get()
        clock_now = clock() if clock is not None else time.time()
    return int(clock_now)


@contextlib.contextmanager
def write_clock(now: Callable[[], float]) -> Iterator[None]:
    """Writes inside take their time from ``now`` (see :func:`now_s`)."""
    token = _write_clock.set(now)
    try:
        yield
    finally:
        _write_clock.reset(token)


# --- validation helpers ------------------------------------------------------------------------


def check_name(value: object, param: str = "name", required: bool = True) -> str | None:
    if value is None:
        if required:
            raise Invalid(f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter")
        return None
    if not isinstance(value, str):
        raise Invalid(f"Invalid type for '{param}': expected a string.", param=param, code="invalid_type")
    value = value.strip()
    if not value:
        raise Invalid(f"'{param}' must not be empty.", param=param, code="invalid_value")
    if len(value) > MAX_NAME:
        raise Invalid(
            f"'{param}' is too long: at most {MAX_NAME} characters.", param=param, code="string_above_max_length"
        )
    return value


def check_permissions(value: Any) -> Permissions:
    try:
        return parse_permissions(value)
    except InvalidPermissions as e:
        raise Invalid(str(e), param="permissions", code="invalid_value") from None


def check_positive_int(value: Any, param: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise Invalid(f"'{param}' must be a positive integer.", param=param, code="invalid_value")
    return value


# --- revision and audit ------------------------------------------------------------------------


async def bump_revision(s: AsyncSession) -> None:
    res = await s.execute(
        update(Meta).where(Meta.name == "revision").values(value=Meta.value + 1).returning(Meta.value)
    )
    value = res.scalar()
    if value is None:
        s.add(Meta(name="revision", value=1))
        value = 1
    s.info.setdefault("keyplane.revisions", []).append(value)  # published after commit (keyplane.bus)


async def audit(
    s: AsyncSession,
    actor: Actor,
    type: str,
    details: dict[str, Any],
    *,
    project_id: str | None = None,
    resource_id: str | None = None,
    at: int | None = None,
) -> None:
    s.add(
        AuditLog(
            id=ids.audit_id(),
            type=type,
            effective_at=at if at is not None else now_s(),
            project_id=project_id,
            actor_id=actor.id,
            actor=orjson.dumps(actor.to_dict()).decode(),
            resource_id=resource_id,
            details=orjson.dumps(details).decode(),
        )
    )


async def revoke_keys_where(s: AsyncSession, *where: Any, reason: str, at: int) -> int:
    """Revoke the keys not revoked yet that match ``where`` (SQL conditions on ApiKey), row by row rather than with one
    bulk UPDATE: each revocation then travels on the bus as the key's new status (keyplane.bus.publish), so an
    instance cut from the store refuses the key at once, as for any revocation. Returns how many."""
    rows = (await s.execute(select(ApiKey).where(ApiKey.revoked_at.is_(None), *where))).scalars().all()
    for row in rows:
        row.revoked_at, row.revoke_reason, row.updated_at = at, reason, at
    return len(rows)


# --- pagination --------------------------------------------------------------------------------


async def page(
    s: AsyncSession,
    model: Any,
    stmt: Select[Any],
    *,
    after: str | None,
    before: str | None = None,
    limit: int,
    descending: bool = False,
) -> tuple[list[Any], bool]:
    """Cursor paging on ``seq``: returns (rows, has_more)."""
    for cursor, is_after in ((after, True), (before, False)):
        if not cursor:
            continue
        seq = (await s.execute(select(model.seq).where(model.id == cursor))).scalar()
        if seq is None:
            raise Invalid(f"No object with id '{cursor}' to page from.", param="after" if is_after else "before")
        forward = is_after != descending
        stmt = stmt.where(model.seq > seq if forward else model.seq < seq)
    stmt = stmt.order_by(model.seq.desc() if descending else model.seq.asc()).limit(limit + 1)
    rows = list((await s.execute(stmt)).scalars())
    return rows[:limit], len(rows) > limit
