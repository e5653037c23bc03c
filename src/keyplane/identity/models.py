"""SQL tables of workload identity federation (docs/sso-and-workload-identity.md)."""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from keyplane.store.models import Base, SeqType


class WorkloadIdentityProviderRow(Base):
    """An OIDC issuer whose tokens keyplane accepts in exchange for short-lived access tokens."""

    __tablename__ = "workload_identity_providers"
    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(256))
    description: Mapped[str | None] = mapped_column(Text, nullable=True)
    issuer: Mapped[str] = mapped_column(String(1024))
    audience: Mapped[str] = mapped_column(String(1024))
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    verification: Mapped[str] = mapped_column(Text)  # JSON: {"type": "discovery"|"uploaded_jwks", ...}
    attribute_transformations: Mapped[str] = mapped_column(Text, default="[]")  # JSON list
    created_at: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[int] = mapped_column(BigInteger)


class FederationRuleRow(Base):
    """Claims that bind a provider's tokens to a service account. ``key_id`` is the rule's keyless key row:
    it carries the rule's permissions, limits and usage; no value of it was ever generated for anyone."""

    __tablename__ = "workload_identity_federation_rules"
    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    provider_id: Mapped[str] = mapped_column(String(64))
    project_id: Mapped[str] = mapped_column(String(64))
    service_account_id: Mapped[str] = mapped_column(String(64))
    key_id: Mapped[str] = mapped_column(String(64))
    name: Mapped[str | None] = mapped_column(String(256), nullable=True)
    description: Mapped[str | None] = mapped_column(Text, nullable=True)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    attribute_matchers: Mapped[str] = mapped_column(Text)  # JSON object
    permissions: Mapped[str] = mapped_column(Text)  # JSON: {"type": "service_account_default"} | restricted
    created_at: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (Index("ix_wif_rules_provider", "provider_id", "seq"),)
