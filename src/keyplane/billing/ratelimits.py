"""Rate limits per (project, model) in the platform's ``project.rate_limit`` shape, and the same per key.

Every model a project can use has one, with id ``rl-<model>``: the exact model names the configured
upstreams serve, and for their glob patterns the known names (price table, tier tables) that match.
A project's values are its tier's defaults unless set through the API; a key has no limits of its
own until set (0 means no limit). A dated snapshot of a model and a variant name of it
(keyplane.model_names) count against its model's limits and bucket unless it has limits of its own
(:func:`limits_model`). ``max_tokens_per_1_day`` is a keyplane addition; the image, audio and batch
fields of the platform's object are accepted and shown as null (not enforced).
"""

from __future__ import annotations

import fnmatch
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from keyplane import control
from keyplane.billing.models import RateLimitOverride
from keyplane.billing.prices import PriceTable, family
from keyplane.billing.tiers import TierTable
from keyplane.domain import Invalid, NotFound
from keyplane.model_names import base_model

if TYPE_CHECKING:
    from keyplane.billing.engine import Billing

FIELDS = ("max_requests_per_1_minute", "max_tokens_per_1_minute", "max_requests_per_1_day", "max_tokens_per_1_day")
IGNORED = ("max_images_per_1_minute", "max_audio_megabytes_per_1_minute", "batch_1_day_max_input_tokens")
MAX_LIMIT = 10**12


def catalog(b: Billing) -> list[str]:
    """The model names of the rate-limit lists (sorted)."""
    return models_of(b.rt.settings, b.prices, b.tiers, {m for (_, _, m) in b.cfg.overrides})


def models_of(settings: Any, prices: PriceTable, table: TierTable, extra: set[str]) -> list[str]:
    from keyplane.proxy.router import default_upstreams

    ups = settings.file.upstreams or default_upstreams()
    known = set(prices.known_models()) | extra
    for t in table.tiers:
        known.update(g for g in t.rate_limits if not any(c in g for c in "*?["))
    out: set[str] = set()
    for up in ups:
        for pattern in up.models:
            if any(c in pattern for c in "*?["):
                out.update(m for m in known if fnmatch.fnmatchcase(m, pattern))
            else:
                out.add(pattern)
    if "demo" in {u.base_url for u in ups}:
        out.add("demo-echo")
    return sorted(out)


def limits_model(b: Billing, key_id: str, project_id: str, model: str) -> str:
    """The model whose limits (and bucket) a request counts against: a dated snapshot and a variant name share
    their model's (``gpt-4o-mini-2024-07-18``, ``openai/gpt-4o-mini:nitro`` -> ``gpt-4o-mini``) unless it has
    limits of its own (so a name does not escape its model's limits)."""
    fam = family(base_model(model))
    if fam == model:
        return model
    ov = b.cfg.overrides
    if ("project", project_id, model) in ov or ("api_key", key_id, model) in ov:
        return model
    if any(model in t.rate_limits for t in b.tiers.tiers):
        return model
    return fam


def merge(
    base: tuple[int, int, int, int], over: tuple[int | None, int | None, int | None, int | None] | None
) -> tuple[int, int, int, int]:
    """Overrides over defaults, field by field."""
    if over is None:
        return base
    return (
        over[0] if over[0] is not None else base[0],
        over[1] if over[1] is not None else base[1],
        over[2] if over[2] is not None else base[2],
        over[3] if over[3] is not None else base[3],
    )


def rl_id(model: str) -> str:
    return f"rl-{model}"


def model_of(rate_limit_id: str, models: list[str]) -> str:
    model = rate_limit_id[3:] if rate_limit_id.startswith("rl-") else ""
    if model not in models:
        raise NotFound(
            f"No rate limit found with id '{rate_limit_id}': no upstream serves a model of that name.",
            param="rate_limit_id",
            code="rate_limit_not_found",
        )
    return model


def rate_limit_object(scope: str, model: str, limits: tuple[int, int, int, int]) -> dict[str, Any]:
    return {
        "object": "project.rate_limit" if scope == "project" else "api_key.rate_limit",
        "id": rl_id(model),
        "model": model,
        "max_requests_per_1_minute": limits[0],
        "max_tokens_per_1_minute": limits[1],
        "max_requests_per_1_day": limits[2],
        "max_tokens_per_1_day": limits[3],
        "max_images_per_1_minute": None,
        "max_audio_megabytes_per_1_minute": None,
        "batch_1_day_max_input_tokens": None,
    }


def limits_of(b: Billing, scope: str, sid: str, model: str) -> tuple[int, int, int, int]:
    return b.effective_limits(scope, sid, model) if scope == "project" else b.key_limits(sid, model)


def page(
    b: Billing, scope: str, sid: str, after: str | None, before: str | None, limit: int
) -> tuple[list[dict[str, Any]], bool]:
    models = catalog(b)
    ids = [rl_id(m) for m in models]
    start, end = 0, len(models)
    if after:
        if after not in ids:
            raise Invalid(f"No object with id '{after}' to page from.", param="after")
        start = ids.index(after) + 1
    if before:
        if before not in ids:
            raise Invalid(f"No object with id '{before}' to page from.", param="before")
        end = ids.index(before)
        start = max(start, end - limit) if not after else start
    chosen = models[start:end][:limit]
    more = start + len(chosen) < end
    return [rate_limit_object(scope, m, limits_of(b, scope, sid, m)) for m in chosen], more


def check_update(body: dict[str, Any]) -> dict[str, int]:
    changes: dict[str, int] = {}
    for name, v in body.items():
        if name not in FIELDS and name not in IGNORED:
            raise Invalid(f"Unknown parameter: '{name}'.", param=name, code="unknown_parameter")
        if v is None and name in IGNORED:
            continue
        if isinstance(v, bool) or not isinstance(v, int):
            raise Invalid(f"'{name}' must be an integer (0: no limit).", param=name, code="invalid_type")
        if not 0 <= v <= MAX_LIMIT:
            raise Invalid(f"'{name}' must be between 0 (no limit) and {MAX_LIMIT}.", param=name, code="invalid_value")
        if name in FIELDS:
            changes[name] = v
    if not changes:
        raise Invalid(
            f"Nothing to update: give at least one of {', '.join(FIELDS)}.", code="missing_required_parameter"
        )
    return changes


async def _row(s: AsyncSession, scope: str, sid: str, model: str) -> RateLimitOverride | None:
    r = RateLimitOverride
    return (await s.execute(select(r).where(r.scope == scope, r.scope_id == sid, r.model == model))).scalar()


async def update(
    s: AsyncSession,
    actor: control.Actor,
    scope: str,
    sid: str,
    project_id: str,
    model: str,
    changes: dict[str, int],
    now: float,
) -> None:
    t = int(now)
    row = await _row(s, scope, sid, model)
    if row is None:
        row = RateLimitOverride(scope=scope, scope_id=sid, model=model, project_id=project_id, updated_at=t)
        s.add(row)
    for name, v in changes.items():
        setattr(row, name, v)
    row.updated_at = t
    details: dict[str, Any] = {"id": rl_id(model), "changes_requested": dict(changes)}
    if scope == "api_key":
        details["api_key_id"] = sid
    await control.audit(s, actor, "rate_limit.updated", details, project_id=project_id, resource_id=rl_id(model), at=t)
    await control.bump_revision(s)


async def reset(
    s: AsyncSession, actor: control.Actor, scope: str, sid: str, project_id: str, model: str, now: float
) -> None:
    """keyplane extension: back to the defaults (the tier's for a project, none for a key)."""
    row = await _row(s, scope, sid, model)
    if row is not None:
        await s.delete(row)
    details: dict[str, Any] = {"id": rl_id(model)}
    if scope == "api_key":
        details["api_key_id"] = sid
    await control.audit(
        s, actor, "rate_limit.deleted", details, project_id=project_id, resource_id=rl_id(model), at=int(now)
    )
    await control.bump_revision(s)
