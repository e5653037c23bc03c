"""SQL tables of the control plane. Times are unix seconds (integers), as the API shows them.

Every table with a public id also has ``seq``, an increasing integer used for stable ordering and
cursor pagination (``after=<id>`` -> ``seq > seq_of(id)``).
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# SQLite only autoincrements INTEGER PRIMARY KEY; PostgreSQL wants BIGINT for the same column.
SeqType = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    pass


class Meta(Base):
    """Small named values: the schema-independent revision counter of the control plane."""

    __tablename__ = "meta"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger, default=0)


class Organization(Base):
    __tablename__ = "organizations"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[int] = mapped_column(BigInteger)


class User(Base):
    __tablename__ = "users"
    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    name: Mapped[str] = mapped_column(String(256), default="")
    role: Mapped[str] = mapped_column(String(16))  # owner | reader
    password_hash: Mapped[str | None] = mapped_column(Text, nullable=True)
    totp_secret: Mapped[str | None] = mapped_column(Text, nullable=True)  # encrypted with the server secret
    totp_enabled: Mapped[bool] = mapped_column(Boolean, default=False)
    recovery_codes: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON list of digests
    added_at: Mapped[int] = mapped_column(BigInteger)


class Project(Base):
    __tablename__ = "projects"
    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(256))
    status: Mapped[str] = mapped_column(String(16), default="active")  # active | archived
    created_at: Mapped[int] = mapped_column(BigInteger)
    archived_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class ServiceAccount(Base):
    __tablename__ = "service_accounts"
    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"))
    name: Mapped[str] = mapped_column(String(256))
    role: Mapped[str] = mapped_column(String(16), default="member")
    created_at: Mapped[int] = mapped_column(BigInteger)
    deleted_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class ApiKey(Base):
    """A key of any kind. ``owner_user_id`` is a plain string, not a foreign key: the row and its
    audit trail outlive the user (service-account keys are not tied to any user at all)."""

    __tablename__ = "api_keys"
    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    kind: Mapped[str] = mapped_column(String(8))  # proj | svc | admin
    name: Mapped[str] = mapped_column(String(256))
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    redacted_value: Mapped[str] = mapped_column(String(32))
    project_id: Mapped[str | None] = mapped_column(ForeignKey("projects.id"), nullable=True)
    owner_user_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    service_account_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    permissions: Mapped[str] = mapped_column(Text, default='"all"')  # JSON: "all" | "read_only" | [scopes]
    created_at: Mapped[int] = mapped_column(BigInteger)
    last_used_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    expires_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    revoked_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    revoke_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    suspended_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    suspend_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Set on the old key of a rotation: it stops working at expires_at (the grace period).
    rotated_to: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # Set on the new key of a rotation: the first key of its line. Its old and new values share one spend
    # counter and one rate-limit bucket under that id (billing/engine.py), so a rotation resets neither.
    lineage_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    updated_at: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (Index("ix_api_keys_project", "project_id", "seq"),)


class AuditLog(Base):
    __tablename__ = "audit_logs"
    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    type: Mapped[str] = mapped_column(String(64))
    effective_at: Mapped[int] = mapped_column(BigInteger)
    project_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    actor_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    actor: Mapped[str] = mapped_column(Text)  # JSON, the API's actor object
    resource_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    details: Mapped[str] = mapped_column(Text)  # JSON, the "<event type>" object

    __table_args__ = (
        Index("ix_audit_effective", "effective_at"),
        Index("ix_audit_type", "type"),
        Index("ix_audit_project", "project_id"),
    )


# --- dashboard sign-in state shared by every instance (keyplane.web.fleet) ---------------------------


class WebSessionEnd(Base):
    """A dashboard session signed out before it expired: every instance refuses its cookie until expires_at."""

    __tablename__ = "web_session_ends"
    nonce: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    expires_at: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (Index("ix_web_session_ends_expires", "expires_at"),)


class WebTotpStep(Base):
    """A TOTP time step already used by a user (RFC 6238 5.2: a code is accepted once), kept while it could match."""

    __tablename__ = "web_totp_steps"
    user_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    step: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    expires_at: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (Index("ix_web_totp_steps_expires", "expires_at"),)


class WebLoginThrottle(Base):
    """Failed sign-ins per (email, address) pair or per address; ``key`` is a keyed digest, never the email."""

    __tablename__ = "web_login_throttle"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    first_at: Mapped[float] = mapped_column(Float)  # unix seconds, fractional: delays start at a few seconds
    last_at: Mapped[float] = mapped_column(Float)
    blocked_until: Mapped[float] = mapped_column(Float, default=0.0)

    __table_args__ = (Index("ix_web_login_throttle_last", "last_at"),)


# Provider ids longer than this (a fine-tuned model's name reaches 129 characters and more) are stored by digest.
PROVIDER_ID_MAX = 128
# The longest provider id keyplane owns at all (an id past it is refused where it is named, never unowned).
PROVIDER_ID_LIMIT = 1024


def provider_object_key(oid: str) -> str:
    """The ``provider_objects.id`` an object is owned under: its id, or for an id longer than the column
    (:data:`PROVIDER_ID_MAX`) ``sha256:`` and its digest, so that no id is too long to be owned."""
    if len(oid) <= PROVIDER_ID_MAX:
        return oid
    import hashlib

    return "sha256:" + hashlib.sha256(oid.encode("utf-8", "surrogatepass")).hexdigest()


class ProviderObject(Base):
    """A provider object (file, stored response, batch...) created through keyplane: the project that owns
    it and the upstream that holds it (proxy/tenancy.py, docs/proxy.md "What is isolated between projects").
    Its ``id`` is :func:`provider_object_key` of the provider's id."""

    __tablename__ = "provider_objects"
    id: Mapped[str] = mapped_column(String(128), primary_key=True)  # the provider's id: file-..., resp_...
    project_id: Mapped[str] = mapped_column(String(64))
    object: Mapped[str] = mapped_column(String(64))  # the provider's "object" field: file, response, batch...
    upstream: Mapped[str] = mapped_column(String(128))  # name of the [[upstreams]] entry that answered
    created_at: Mapped[int] = mapped_column(BigInteger)


class BatchCost(Base):
    """What a batch input file may cost, and a batch's reservation and metering (billing/batches.py,
    docs/limits-and-billing.md "Batches"). One row per file uploaded with purpose=batch through keyplane
    (``object`` file) and per batch created from one (``object`` batch). Fine-tuning jobs and eval runs started
    through keyplane have one too (``object`` fine_tuning.job, eval.run: nothing estimated or metered), so that
    the background poll cancels them once their key is stopped (billing/job_poll.py); every query selects its
    ``object``."""

    __tablename__ = "batch_costs"
    id: Mapped[str] = mapped_column(String(128), primary_key=True)  # file-..., batch_..., ftjob-..., evalrun_...
    object: Mapped[str] = mapped_column(String(16))  # file | batch | fine_tuning.job | eval.run
    project_id: Mapped[str] = mapped_column(String(64))
    api_key_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    estimate_micros: Mapped[int | None] = mapped_column(BigInteger, nullable=True)  # None: cannot be bounded
    why: Mapped[str | None] = mapped_column(String(512), nullable=True)  # why it cannot be bounded
    lines: Mapped[int] = mapped_column(Integer, default=0)
    # JSON: file: models; batch: the reservation; eval.run: its eval_id
    data: Mapped[str] = mapped_column(Text, default="{}")
    upstream: Mapped[str | None] = mapped_column(String(128), nullable=True)
    input_file_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    created_at: Mapped[int] = mapped_column(BigInteger)
    claimed_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)  # metering in progress (a lease)
    settled_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)  # metered and settled (a job: done), once
    cost_micros: Mapped[int] = mapped_column(BigInteger, default=0)  # what was metered
