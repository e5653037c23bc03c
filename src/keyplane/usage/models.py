"""SQL tables of metering: one row per request, and rollups per minute, hour and day.

Rollup rows are keyed by (bucket, project, key, user, model, kind, service tier); an absent dimension is
stored as "" rather than NULL, because NULLs never conflict in a unique index and the upserts need them to
(the tier is never absent: ``default`` when the answer named none).
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Float, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from keyplane.store.models import Base, SeqType


class UsageRequest(Base):
    """One finished request, applied from the journal; ``id`` (the request id) makes replays idempotent."""

    __tablename__ = "usage_requests"
    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[int] = mapped_column(BigInteger)  # unix seconds, when the response completed
    org_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    project_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    api_key_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    user_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    model: Mapped[str | None] = mapped_column(String(256), nullable=True)
    upstream: Mapped[str | None] = mapped_column(String(128), nullable=True)
    kind: Mapped[str] = mapped_column(String(32))
    endpoint: Mapped[str] = mapped_column(String(256))
    status: Mapped[int] = mapped_column(Integer)
    input_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cached_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    output_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cost_micros: Mapped[int] = mapped_column(BigInteger, default=0)
    cost_input_micros: Mapped[int] = mapped_column(BigInteger, default=0)
    units: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")  # images, characters, seconds
    input_audio_tokens: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")  # part of input
    output_audio_tokens: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")  # part of output
    latency_ms: Mapped[float] = mapped_column(Float, default=0.0)
    ttft_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    stream: Mapped[bool] = mapped_column(Boolean, default=False)
    disconnected: Mapped[bool] = mapped_column(Boolean, default=False)
    estimated: Mapped[bool] = mapped_column(Boolean, default=False)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(String(256), nullable=True)
    upstream_request_id: Mapped[str | None] = mapped_column(
        String(128), nullable=True
    )  # not indexed: no query reads by it
    # The tier the answer says served it (journal.served_tier): the Usage API's service_tier grouping.
    service_tier: Mapped[str] = mapped_column(String(32), default="default", server_default="default")

    __table_args__ = (
        Index("ix_usage_requests_created", "created_at"),
        Index("ix_usage_requests_key", "api_key_id", "created_at"),
        Index("ix_usage_requests_project", "project_id", "created_at"),
    )


class _Rollup:
    __tablename__: str
    bucket: Mapped[int] = mapped_column(BigInteger, primary_key=True)  # unix seconds, start of the bucket
    project_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    api_key_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    model: Mapped[str] = mapped_column(String(256), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32), primary_key=True)
    service_tier: Mapped[str] = mapped_column(String(32), primary_key=True, default="default", server_default="default")
    requests: Mapped[int] = mapped_column(BigInteger, default=0)
    model_requests: Mapped[int] = mapped_column(BigInteger, default=0)  # answered by a model (usage API)
    errors: Mapped[int] = mapped_column(BigInteger, default=0)  # status >= 400
    input_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cached_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    output_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cost_micros: Mapped[int] = mapped_column(BigInteger, default=0)
    cost_input_micros: Mapped[int] = mapped_column(BigInteger, default=0)
    units: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    input_audio_tokens: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    output_audio_tokens: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    latency_ms_sum: Mapped[float] = mapped_column(Float, default=0.0)


class UsageMinute(_Rollup, Base):
    __tablename__ = "usage_minute"


class UsageHour(_Rollup, Base):
    __tablename__ = "usage_hour"


class UsageDay(_Rollup, Base):
    __tablename__ = "usage_day"


# (granularity in seconds, table), coarsest first.
ROLLUPS: tuple[tuple[int, type[_Rollup]], ...] = ((86400, UsageDay), (3600, UsageHour), (60, UsageMinute))
SUMS: tuple[str, ...] = (
    "requests",
    "model_requests",
    "errors",
    "input_tokens",
    "cached_tokens",
    "output_tokens",
    "cost_micros",
    "cost_input_micros",
    "units",
    "input_audio_tokens",
    "output_audio_tokens",
    "latency_ms_sum",
)
DIMS: tuple[str, ...] = ("project_id", "api_key_id", "user_id", "model", "kind", "service_tier")


class VectorStoreSize(Base):
    """A vector store's size as the upstream reported it (``usage_bytes`` of the object) when it passed
    through keyplane: created, retrieved, modified, listed or deleted (usage/storage.py). A row is written
    when the size or state changes; the Usage API's vector_stores bucket is read from them."""

    __tablename__ = "usage_vector_stores"
    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    vector_store_id: Mapped[str] = mapped_column(String(128))
    project_id: Mapped[str] = mapped_column(String(64))
    observed_at: Mapped[int] = mapped_column(BigInteger)  # unix seconds
    usage_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    expires_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)  # the upstream's, if it said
    gone: Mapped[bool] = mapped_column(Boolean, default=False)  # deleted or expired

    __table_args__ = (
        Index("ix_usage_vector_stores_project", "project_id", "observed_at"),
        Index("ix_usage_vector_stores_store", "vector_store_id", "observed_at"),
    )
