"""keyplane.toml's ``[models."<glob>"]`` (routing) and ``[cache]`` sections (docs/caching.md): schema and checks."""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from keyplane.guard.rules import parse_duration


class ModelSection(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``[models."<glob>"]``: how requests for the models a glob matches are routed (docs/caching.md)."""

    routing: Literal["weighted", "prefix"] = "weighted"
    block_chars: int = 64
    max_prefix_tokens: int = 2048
    min_match_tokens: int = 64
    load_factor: float = 1.25
    hash_load_factor: float = 1.0
    balance_abs: int = 16
    balance_rel: float = 2.0


class CacheSection(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``[cache]``: the exact response cache (docs/caching.md); off unless something opts in."""

    enabled: bool | None = None  # None: on when projects, keys or org_wide_projects name something
    backend: Literal["memory", "redis"] = "memory"
    ttl: str = "10m"
    projects: list[str] = msgspec.field(default_factory=list)  # ids or names; "*" = every project
    keys: list[str] = msgspec.field(default_factory=list)  # API key ids (key_...)
    org_wide_projects: list[str] = msgspec.field(default_factory=list)  # share one organization-wide cache
    max_entries: int = 10_000  # memory backend
    max_bytes: int = 64 * 1024 * 1024  # memory backend, bodies included
    max_entry_bytes: int = 1024 * 1024  # larger answers are not cached


def ttl_seconds(text: str) -> float:
    return parse_duration(text, "cache.ttl")


def cache_enabled(section: Any) -> bool:
    if section.enabled is not None:
        return bool(section.enabled)
    return bool(section.projects or section.keys or section.org_wide_projects)


def check_config(cfg: Any, flat: dict[str, Any]) -> list[str]:
    """Problems in ``[models.*]`` and ``[cache]``, each naming its field (config.py raises the first)."""
    out: list[str] = []
    for glob, m in cfg.models.items():
        where = f'$.models."{glob}"'
        if m.block_chars < 16:
            out.append(f"{where}.block_chars: must be >= 16")
        if m.max_prefix_tokens * 4 < m.block_chars:
            out.append(f"{where}.max_prefix_tokens: must cover at least one block")
        if m.min_match_tokens < 0 or m.balance_abs < 0:
            out.append(f"{where}: min_match_tokens and balance_abs must be >= 0")
        if m.load_factor < 1 or m.hash_load_factor < 1:
            out.append(f"{where}: load_factor and hash_load_factor must be >= 1")
        if m.balance_rel < 1:
            out.append(f"{where}.balance_rel: must be >= 1")
    for i, up in enumerate(cfg.upstreams):
        if up.prefix_cache_tokens < 0:
            out.append(f"$.upstreams[{i}].prefix_cache_tokens: must be >= 0")
    c = cfg.cache
    try:
        if ttl_seconds(c.ttl) <= 0:
            out.append("$.cache.ttl: must be > 0")
    except ValueError as e:
        out.append(f"$.cache.ttl: {e}")
    for name in ("max_entries", "max_bytes", "max_entry_bytes"):
        if getattr(c, name) <= 0:
            out.append(f"$.cache.{name}: must be > 0")
    if cache_enabled(c) and c.backend == "redis" and not flat.get("redis_url"):
        out.append('$.cache.backend: "redis" needs the redis_url setting (KEYPLANE_REDIS_URL)')
    return out
