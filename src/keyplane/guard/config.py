"""The ``[guard]`` section of keyplane.toml and its ``[[guard.rules]]`` (docs/guard.md).

keyplane.guard.rules.check_section checks what the types cannot (config.load_settings calls it).
"""

from __future__ import annotations

from typing import Literal

import msgspec


class GuardRule(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """One kill-switch rule (docs/guard.md); the rules API takes the same fields as JSON."""

    name: str
    kind: Literal["token_surge", "spend_surge", "error_spike", "new_origins", "ceiling"]
    threshold: float
    scope: Literal["key", "project", "provider_key", "provider_project"] = "key"  # provider_*: docs/providers.md
    window: str = "1h"
    metric: Literal["tokens", "cost_usd", "requests"] | None = None  # None: the kind's own metric
    min_volume: float = 0
    mode: Literal["revoke", "suspend", "alert"] = "suspend"
    cooldown: str = "1h"
    dry_run: bool = False
    baseline_periods: int = 24  # surges: how many preceding windows make the baseline
    statuses: list[int] = msgspec.field(default_factory=lambda: [401, 403, 404, 429])  # error_spike
    enabled: bool = True


class GuardSection(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    enabled: bool = True
    defaults: bool = True  # the shipped rules (token-surge, error-spike) unless turned off or replaced by name
    rules: list[GuardRule] = msgspec.field(default_factory=list)
