"""SQL tables of the provider connector: the read-only mirror (with history), ingested usage, cursors, events.

Migration: store/migrations/versions/0011_providers.py. Values the provider returns are kept as JSON
(``data``) beside the few columns the queries need; the mirror holds only what the provider's Admin API
shows (redacted key values), never a secret.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from keyplane.store.models import Base, SeqType


class ProviderObject(Base):
    """One provider object as last seen: project, user, service_account, api_key or admin_key."""

    __tablename__ = "provider_mirror"
    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    provider: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(32))
    object_id: Mapped[str] = mapped_column(String(128))
    project_id: Mapped[str] = mapped_column(String(128), default="")
    data: Mapped[str] = mapped_column(Text)  # JSON as the provider returned it
    first_seen: Mapped[int] = mapped_column(BigInteger)
    last_seen: Mapped[int] = mapped_column(BigInteger)
    removed_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)

    __table_args__ = (UniqueConstraint("provider", "kind", "object_id", name="uq_provider_mirror_object"),)


class ProviderChange(Base):
    """The mirror's history: an object added, changed or removed at the provider, as a sync saw it."""

    __tablename__ = "provider_history"
    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    provider: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(32))
    object_id: Mapped[str] = mapped_column(String(128))
    change: Mapped[str] = mapped_column(String(16))  # added | changed | removed
    at: Mapped[int] = mapped_column(BigInteger)
    data: Mapped[str] = mapped_column(Text)

    __table_args__ = (Index("ix_provider_history_object", "provider", "kind", "object_id"),)


class ProviderUsage(Base):
    """One ingested bucket (hourly usage or daily cost) of a provider, per project, key and model.

    Unique per bucket and grouping: a re-poll replaces the bucket, never adds to it ('' for no value)."""

    __tablename__ = "provider_usage"
    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    provider: Mapped[str] = mapped_column(String(64))
    stream: Mapped[str] = mapped_column(String(32))  # completions, embeddings, ..., costs
    start_time: Mapped[int] = mapped_column(BigInteger)
    end_time: Mapped[int] = mapped_column(BigInteger)
    project_id: Mapped[str] = mapped_column(String(128), default="")
    api_key_id: Mapped[str] = mapped_column(String(128), default="")
    model: Mapped[str] = mapped_column(String(128), default="")
    input_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    output_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    requests: Mapped[int] = mapped_column(BigInteger, default=0)
    cost_micros: Mapped[int] = mapped_column(BigInteger, default=0)  # USD millionths (costs)
    data: Mapped[str] = mapped_column(Text, default="{}")

    __table_args__ = (
        UniqueConstraint(
            "provider", "stream", "start_time", "project_id", "api_key_id", "model", name="uq_provider_usage_bucket"
        ),
        Index("ix_provider_usage_time", "provider", "start_time"),
    )


class ProviderCursor(Base):
    """Where the next incremental poll of one stream starts (survives restarts)."""

    __tablename__ = "provider_cursors"
    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    provider: Mapped[str] = mapped_column(String(64))
    stream: Mapped[str] = mapped_column(String(32))
    next_start: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (UniqueConstraint("provider", "stream", name="uq_provider_cursors_stream"),)


class ProviderEvent(Base):
    """One firing of a provider rule: the figures and what was done at the provider."""

    __tablename__ = "provider_events"
    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[int] = mapped_column(BigInteger)
    provider: Mapped[str] = mapped_column(String(64))
    rule: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(32))
    scope: Mapped[str] = mapped_column(String(32))
    project_id: Mapped[str] = mapped_column(String(128), default="")
    key_id: Mapped[str] = mapped_column(String(128), default="")
    mode: Mapped[str] = mapped_column(String(16))
    action: Mapped[str] = mapped_column(String(16))  # revoked | alerted | failed | none (dry run)
    dry_run: Mapped[bool] = mapped_column(Boolean, default=False)
    figures: Mapped[str] = mapped_column(Text)
    message: Mapped[str] = mapped_column(Text)

    __table_args__ = (Index("ix_provider_events_entity", "provider", "rule", "key_id", "project_id"),)


class ProviderBinding(Base):
    """A keyplane project bound to a provider project: keyplane's own service account there, whose key
    (sealed with a key derived from the server secret, keyplane.providers.bindings.KeyBox) the proxy
    forwards the project's traffic with. Migration 0013_provider_bindings."""

    __tablename__ = "provider_bindings"
    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    project_id: Mapped[str] = mapped_column(String(64), unique=True)  # keyplane's project
    provider: Mapped[str] = mapped_column(String(64))
    provider_project_id: Mapped[str] = mapped_column(String(128))
    service_account_id: Mapped[str] = mapped_column(String(128))
    key_id: Mapped[str] = mapped_column(String(128))  # the provider's id of the key in use
    key_redacted: Mapped[str] = mapped_column(String(64))
    key_sealed: Mapped[str] = mapped_column(Text)  # Fernet token of the key value
    created_at: Mapped[int] = mapped_column(BigInteger)
    rotated_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # The key a rotation replaced: deleted at the provider once ``retire_at`` has passed (every instance has
    # reloaded the binding by then).
    retired_key_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    retire_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class ProviderLease(Base):
    """Who polls a provider in a fleet (keyplane.providers.lease): one row per provider, taken with an atomic
    ``UPDATE ... WHERE expires_at < now`` and renewed by its holder; ``synced_at`` is the start of the last
    background sync, so a new leader keeps the fleet's schedule. Migration 0015_provider_lease."""

    __tablename__ = "provider_leases"
    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    provider: Mapped[str] = mapped_column(String(64), unique=True)
    holder: Mapped[str] = mapped_column(String(128))
    expires_at: Mapped[int] = mapped_column(BigInteger)  # unix milliseconds
    acquired_at: Mapped[int] = mapped_column(BigInteger)  # unix milliseconds, when this holder took it
    synced_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)  # unix seconds
