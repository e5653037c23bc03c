"""The ``[limits]`` section and the Redis key prefix (docs/limits-and-billing.md)."""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

from keyplane.configspec import setting


@dataclass(frozen=True, kw_only=True)
class LimitsSettings:
    redis_prefix: str = setting(
        "kp",
        "Prefix of every Redis key keyplane writes (several deployments, or tests, can share one Redis).",
    )


class LimitsSection(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    enabled: bool = True  # rate limits (spend limits and credit apply either way)
    tier: str = ""  # pin the organization to this tier; empty: by qualification
