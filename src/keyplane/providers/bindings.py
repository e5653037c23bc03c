"""Provisioning per project (issue #18 item 6): a keyplane project bound to a provider project is forwarded
with the key of keyplane's own service account there.

- :func:`bind` creates the service account through the Admin API (``POST /organization/projects/{id}/
  service_accounts``; its key is in that answer only), seals the key with a Fernet key derived from the
  server secret (:class:`KeyBox`) and stores the binding (``provider_bindings``).
- :func:`rotate` creates a new key of the same account first (``POST .../service_accounts/{sa}/api_keys``),
  swaps it in, and only then retires the old one: it is deleted at the provider once ``grace`` seconds have
  passed (every instance reloads the bindings every :data:`RELOAD_SECONDS`), by :func:`retire_due` (the
  server's reload loop, or the CLI that rotated). No request ever goes out with a deleted key.
- :func:`unbind` deletes the service account at the provider (its keys with it) and the binding.
- :class:`UpstreamKeys` is the proxy's hook: an in-memory map project -> key, reloaded from SQL, that
  swaps the Authorization of the shared upstreams pointing at the bound provider's API (same ``base_url``)
  for the project's own key (see :meth:`UpstreamKeys.apply`).

The key value is never logged, audited, returned by the API or shown by the CLI: only its redacted form.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from keyplane import control
from keyplane.providers.config import ProviderSection
from keyplane.providers.connector import Connector, ProviderError
from keyplane.providers.models import ProviderBinding
from keyplane.store.models import Project
from keyplane.web.auth import SecretBox

log = logging.getLogger("keyplane.providers")

RELOAD_SECONDS = 5.0  # how often each instance reloads the bindings (a rotation's grace must exceed it)
DEFAULT_GRACE = 15  # seconds an old key lives after a rotation
MAX_GRACE = 86_400


class BindingError(Exception):
    """A refusal the caller shows as is (status: the HTTP status of the admin API's answer)."""

    def __init__(self, message: str, status: int = 400, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.param = param


class KeyBox(SecretBox):
    """The provider keys of bindings, sealed with a key derived from the server secret for this purpose."""

    def __init__(self, server_secret: bytes) -> None:
        super().__init__(server_secret, "provider key encryption")


def redact(value: str) -> str:
    """As the provider shows a key: its prefix, stars, its last four characters."""
    return f"{value[:11]}****{value[-4:]}" if len(value) > 16 else "****"


def binding_json(b: ProviderBinding) -> dict[str, Any]:
    return {
        "object": "provider.binding",
        "id": b.project_id,
        "project_id": b.project_id,
        "provider": b.provider,
        "provider_project_id": b.provider_project_id,
        "service_account_id": b.service_account_id,
        "key_id": b.key_id,
        "redacted_value": b.key_redacted,
        "created_at": b.created_at,
        "rotated_at": b.rotated_at,
        "retired_key_id": b.retired_key_id,
        "retire_at": b.retire_at,
    }


async def _project(s: AsyncSession, ref: str) -> Project:
    p = (await s.execute(select(Project).where(Project.id == ref))).scalar()
    if p is None:
        p = (await s.execute(select(Project).where(Project.name == ref, Project.status == "active"))).scalar()
    if p is None:
        raise BindingError(f"No project '{ref}'.", 404, "project_id")
    if p.status != "active":
        raise BindingError(f"Project '{ref}' is archived.", 400, "project_id")
    return p


async def _binding(s: AsyncSession, project_ref: str) -> ProviderBinding:
    b = (await s.execute(select(ProviderBinding).where(ProviderBinding.project_id == project_ref))).scalar()
    if b is None:
        p = (await s.execute(select(Project).where(Project.name == project_ref))).scalar()
        if p is not None:
            b = (await s.execute(select(ProviderBinding).where(ProviderBinding.project_id == p.id))).scalar()
    if b is None:
        raise BindingError(f"Project '{project_ref}' is not bound to a provider project.", 404, "project_id")
    return b


async def list_bindings(s: AsyncSession) -> list[dict[str, Any]]:
    rows = (await s.execute(select(ProviderBinding).order_by(ProviderBinding.seq))).scalars()
    return [binding_json(b) for b in rows]


async def bind(
    sessions: async_sessionmaker[AsyncSession],
    conn: Connector,
    box: KeyBox,
    project_ref: str,
    provider_project_id: str,
    now: int,
    actor: control.Actor,
) -> dict[str, Any]:
    """Create keyplane's service account in the provider project and bind the keyplane project to it."""
    async with sessions() as s:
        project = await _project(s, project_ref)
        if (await s.execute(select(ProviderBinding).where(ProviderBinding.project_id == project.id))).scalar():
            raise BindingError(f"Project '{project.name}' is already bound; unbind it first.", 409, "project_id")
    try:
        target = await conn.get_project(provider_project_id)
    except ProviderError as e:
        if e.status == 404:
            raise BindingError(
                f"provider {conn.name} has no project '{provider_project_id}'.", 404, "provider_project_id"
            ) from None
        raise
    if target.get("status") == "archived":
        raise BindingError(f"provider project '{provider_project_id}' is archived.", 400, "provider_project_id")
    created = await conn.create_service_account(provider_project_id, f"keyplane {project.name} ({project.id})"[:100])
    key = created.get("api_key") or {}
    value, key_id, sa_id = str(key.get("value") or ""), str(key.get("id") or ""), str(created.get("id") or "")
    if not value or not key_id or not sa_id:
        raise ProviderError(
            f"provider {conn.name}: POST /organization/projects/{{id}}/service_accounts answered no service account key"
        )
    row = ProviderBinding(
        project_id=project.id,
        provider=conn.name,
        provider_project_id=provider_project_id,
        service_account_id=sa_id,
        key_id=key_id,
        key_redacted=redact(value),
        key_sealed=box.seal(value),
        created_at=now,
    )
    try:
        async with sessions() as s, s.begin():
            s.add(row)
            await control.audit(
                s,
                actor,
                "provider.binding.created",
                binding_json(row),
                project_id=project.id,
                resource_id=project.id,
                at=now,
            )
    except Exception as exc:
        # Not stored (a concurrent bind of the same project won the unique row): leave no account behind.
        try:
            await conn.delete_service_account(provider_project_id, sa_id)
        except ProviderError as e:
            log.error("provider %s: could not delete the unused service account %s: %s", conn.name, sa_id, e)
        if isinstance(exc, IntegrityError):
            raise BindingError(
                f"Project '{project.name}' is already bound; unbind it first.", 409, "project_id"
            ) from None
        raise
    return binding_json(row)


async def rotate(
    sessions: async_sessionmaker[AsyncSession],
    conn: Connector,
    box: KeyBox,
    project_ref: str,
    now: int,
    actor: control.Actor,
    grace: int = DEFAULT_GRACE,
) -> dict[str, Any]:
    """A new key first, then the swap; the old key is retired (deleted at the provider) ``grace`` seconds later."""
    async with sessions() as s:
        b = await _binding(s, project_ref)
    if b.retired_key_id:  # a rotation still in its grace: retire that key now, before it is forgotten
        await _delete_old(conn, b.provider_project_id, b.retired_key_id)
    key = await conn.create_service_account_key(b.provider_project_id, b.service_account_id, f"keyplane rotation {now}")
    value, key_id = str(key.get("value") or ""), str(key.get("id") or "")
    if not value or not key_id:
        raise ProviderError(f"provider {conn.name}: POST .../service_accounts/{{id}}/api_keys answered no key")
    async with sessions() as s, s.begin():
        row = (await s.execute(select(ProviderBinding).where(ProviderBinding.seq == b.seq))).scalar_one()
        old = row.key_id
        row.key_id, row.key_redacted, row.key_sealed, row.rotated_at = key_id, redact(value), box.seal(value), now
        row.retired_key_id, row.retire_at = old, now + max(0, grace)
        await control.audit(
            s,
            actor,
            "provider.binding.rotated",
            {**binding_json(row), "old_key_id": old},
            project_id=row.project_id,
            resource_id=row.project_id,
            at=now,
        )
        out = binding_json(row)
    return out


async def _delete_old(conn: Connector, provider_project_id: str, key_id: str) -> None:
    try:
        await conn.delete_key(provider_project_id, key_id)
    except ProviderError as e:
        if e.status != 404:  # already gone is fine
            raise


async def retire_due(sessions: async_sessionmaker[AsyncSession], conns: dict[str, Connector], now: int) -> list[str]:
    """Delete at the provider the old keys whose grace has passed; returns their ids. A failure is logged and
    retried at the next call."""
    async with sessions() as s:
        due = list(
            (
                await s.execute(
                    select(ProviderBinding).where(
                        ProviderBinding.retired_key_id.is_not(None), ProviderBinding.retire_at <= now
                    )
                )
            ).scalars()
        )
    done: list[str] = []
    for b in due:
        conn = conns.get(b.provider)
        if conn is None or b.retired_key_id is None:
            continue
        try:
            await _delete_old(conn, b.provider_project_id, b.retired_key_id)
        except ProviderError as e:
            log.error(
                "provider %s: could not delete the rotated-out key %s of project %s: %s",
                b.provider,
                b.retired_key_id,
                b.project_id,
                e,
            )
            continue
        async with sessions() as s, s.begin():
            row = (await s.execute(select(ProviderBinding).where(ProviderBinding.seq == b.seq))).scalar()
            if row is not None and row.retired_key_id == b.retired_key_id:
                row.retired_key_id, row.retire_at = None, None
        done.append(b.retired_key_id)
    return done


async def unbind(
    sessions: async_sessionmaker[AsyncSession],
    conn: Connector,
    project_ref: str,
    now: int,
    actor: control.Actor,
    grace: float = 0,
) -> dict[str, Any]:
    """Drop the binding (the project goes back to the shared key), wait ``grace`` seconds (other instances
    reload meanwhile), then delete keyplane's service account at the provider, its keys with it."""
    async with sessions() as s:
        b = await _binding(s, project_ref)
    async with sessions() as s, s.begin():
        row = (await s.execute(select(ProviderBinding).where(ProviderBinding.seq == b.seq))).scalar()
        if row is not None:
            await s.delete(row)
        await control.audit(
            s,
            actor,
            "provider.binding.deleted",
            binding_json(b),
            project_id=b.project_id,
            resource_id=b.project_id,
            at=now,
        )
    if grace > 0:
        await asyncio.sleep(grace)
    try:
        await conn.delete_service_account(b.provider_project_id, b.service_account_id)
    except ProviderError as e:
        if e.status != 404:
            raise
    return {**binding_json(b), "object": "provider.binding.deleted", "deleted": True}


# --- the proxy's hook -------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1024)
def _root(url: str) -> str:
    """An API root as one string however it is spelled: lower-case scheme and host, explicit port, no trailing /."""
    try:
        u = urlsplit(url.strip())
        port = u.port or {"https": 443, "http": 80}.get(u.scheme.lower(), 0)
    except ValueError:
        return url.rstrip("/")
    return f"{u.scheme.lower()}://{(u.hostname or '').lower()}:{port}{u.path.rstrip('/')}"


@dataclass(frozen=True, slots=True)
class _Bound:
    base_url: str  # the provider's API root: the upstreams with this base_url get the key
    key: str | None  # None: the sealed key does not open (the server secret changed): fail closed


class UpstreamKeys:
    """project id -> its own provider key, in memory (reloaded from SQL every RELOAD_SECONDS)."""

    def __init__(self, providers: Sequence[ProviderSection], box: KeyBox) -> None:
        self._urls = {p.name: _root(p.base_url) for p in providers}
        self.box = box
        self.bound: dict[str, _Bound] = {}
        self._copies: dict[tuple[str, str], tuple[Any, str, Any]] = {}

    async def reload(self, s: AsyncSession) -> None:
        bound: dict[str, _Bound] = {}
        for b in (await s.execute(select(ProviderBinding))).scalars():
            url = self._urls.get(b.provider)
            if url is None:
                log.error(
                    "project %s is bound to provider %s, which is not in [[providers]]: its requests are refused",
                    b.project_id,
                    b.provider,
                )
                bound[b.project_id] = _Bound("", None)
                continue
            key = self.box.open(b.key_sealed)
            if key is None:
                log.error(
                    "project %s: its provider key does not decrypt (was the server secret changed?); its "
                    "requests are refused until `keyplane providers rotate %s`",
                    b.project_id,
                    b.project_id,
                )
            bound[b.project_id] = _Bound(url, key)
        self.bound = bound
        if len(self._copies) > 10_000:
            self._copies.clear()

    def apply(self, project_id: str | None, pool: Any) -> Any:
        """The pool the proxy forwards a project's request to: for a bound project, each shared upstream whose
        base_url is the bound provider's API root carries the project's own key; dedicated upstreams
        (``projects = [...]``) and other upstreams are left as they are. A binding whose key cannot be read
        leaves no such upstream, and one to a provider no longer in [[providers]] no shared upstream at all (the
        request is refused, never sent with the shared key). The API roots are compared as URLs (scheme and host
        in any case, the default port written or not, a trailing /): one spelled two ways is one API."""
        b = self.bound.get(project_id) if project_id else None
        if b is None or not pool:
            return pool
        out = []
        for d in pool:
            if not b.base_url and not (d.config.projects or d.is_demo):
                continue  # bound to a provider no longer configured: which upstreams are its API is unknown
            if d.config.projects or d.is_demo or _root(d.config.base_url) != _root(b.base_url):
                out.append(d)
                continue
            if b.key is None:
                continue
            k = (project_id or "", d.name)
            cached = self._copies.get(k)
            if cached is None or cached[0] is not d or cached[1] != b.key:
                cached = (d, b.key, dataclasses.replace(d, api_key=b.key))
                self._copies[k] = cached
            out.append(cached[2])
        return tuple(out)
