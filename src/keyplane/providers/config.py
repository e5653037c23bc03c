"""keyplane.toml's ``[[providers]]`` tables (docs/providers.md): their schema and validation (config.py calls it)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Literal

import msgspec

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


class ProviderSection(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """One ``[[providers]]`` organization keyplane governs through its Admin API (docs/providers.md)."""

    name: str
    kind: Literal["openai"] = "openai"
    base_url: str = "https://api.openai.com/v1"
    admin_key_env: str = ""  # the name of the variable holding the provider admin key, never the key
    sync_interval: float = 300.0  # seconds between background syncs; 0: on demand only
    backfill_days: int = 7  # usage fetched on the first sync
    timeout: float = 30.0


def check_providers(providers: list[ProviderSection]) -> Iterable[str]:
    names: set[str] = set()
    for i, p in enumerate(providers):
        where = f"$.providers[{i}]"
        if not _NAME_RE.match(p.name):
            yield f"{where}.name: 1 to 64 letters, digits, '-', '_' or '.'"
        if p.name in names:
            yield f"{where}.name: duplicate provider name {p.name!r}"
        names.add(p.name)
        if not p.base_url.startswith(("http://", "https://")):
            yield f"{where}.base_url: must start with http:// or https://"
        if p.admin_key_env.startswith("sk-"):
            yield f"{where}.admin_key_env: looks like a key; name the environment variable that holds it instead"
        elif not _ENV_RE.match(p.admin_key_env):
            yield f"{where}.admin_key_env: the name of the environment variable holding the provider admin key"
        if p.sync_interval != 0 and not 30 <= p.sync_interval <= 86400:
            yield f"{where}.sync_interval: 0 (on demand only) or from 30 to 86400 seconds"
        if not 0 <= p.backfill_days <= 90:
            yield f"{where}.backfill_days: from 0 to 90"
        if not 0 < p.timeout <= 300:
            yield f"{where}.timeout: above 0 and at most 300 seconds"
