"""The ``[alerts]`` section of keyplane.toml and its ``[[alerts.sinks]]`` (docs/guard.md "Alert sinks")."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import msgspec


class AlertSink(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """One alert destination (docs/guard.md "Alert sinks"); secrets come from environment variables."""

    type: Literal["webhook", "slack", "pagerduty", "email"]
    name: str = ""
    url: str = ""  # webhook, slack; pagerduty: the Events v2 endpoint (default PagerDuty's)
    secret_env: str = ""  # webhook: HMAC-SHA256 key of the keyplane-signature header
    routing_key_env: str = ""  # pagerduty
    smtp_host: str = ""
    smtp_port: int = 587
    smtp_security: Literal["starttls", "ssl", "none"] = "starttls"
    smtp_username: str = ""
    smtp_password_env: str = ""
    email_from: str = ""
    email_to: list[str] = msgspec.field(default_factory=list)
    events: list[str] = msgspec.field(default_factory=list)  # glob patterns (guard.*, spend.*); empty: all
    timeout: float = 10.0


class AlertsSection(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    sinks: list[AlertSink] = msgspec.field(default_factory=list)
    max_attempts: int = 6  # per alert and sink, with exponential backoff
    retry_backoff: float = 1.0
    retry_backoff_max: float = 60.0


def check_sinks(section: AlertsSection) -> Iterable[str]:
    """Problems of keyplane.toml's [alerts] section, each naming its field (config._validate)."""
    if section.max_attempts < 1:
        yield "$.alerts.max_attempts: must be at least 1"
    if section.retry_backoff < 0 or section.retry_backoff_max < section.retry_backoff:
        yield "$.alerts.retry_backoff: must be >= 0 and at most retry_backoff_max"
    for i, s in enumerate(section.sinks):
        where = f"$.alerts.sinks[{i}]"
        if s.type in ("webhook", "slack") and not s.url.startswith(("http://", "https://")):
            yield f"{where}.url: a {s.type} sink needs an http:// or https:// url"
        if s.type == "pagerduty":
            if not s.routing_key_env:
                yield (
                    f"{where}.routing_key_env: a pagerduty sink needs the name of the variable holding its routing key"
                )
            if s.url and not s.url.startswith(("http://", "https://")):
                yield f"{where}.url: must start with http:// or https://"
        if s.type == "email":
            if not s.smtp_host:
                yield f"{where}.smtp_host: an email sink needs an SMTP host"
            if "@" not in s.email_from:
                yield f"{where}.email_from: an email sink needs a sender address"
            if not s.email_to or any("@" not in a for a in s.email_to):
                yield f"{where}.email_to: an email sink needs a list of recipient addresses"
            if not 0 < s.smtp_port < 65536:
                yield f"{where}.smtp_port: must be between 1 and 65535"
        for env_field in ("secret_env", "routing_key_env", "smtp_password_env"):
            v = getattr(s, env_field)
            if v and (v.startswith(("sk-", "http")) or len(v) > 128):
                yield f"{where}.{env_field}: name the environment variable that holds the secret, not the secret"
        if s.timeout <= 0:
            yield f"{where}.timeout: must be > 0"
