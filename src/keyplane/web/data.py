"""Shaping admin API answers (usage buckets, costs, lists of unknown shape) for the pages."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from markupsafe import Markup

from keyplane import control
from keyplane.scopes import AREAS, Permissions, parse_permissions
from keyplane.web.base import cents, num, usd, when

RANGES = {
    "24h": ("Last 24 hours", 1, "1h"),
    "7d": ("Last 7 days", 7, "1d"),
    "30d": ("Last 30 days", 30, "1d"),
    "90d": ("Last 90 days", 90, "1d"),
}


def month_start(now: float) -> int:
    d = datetime.fromtimestamp(now, UTC)
    return int(datetime(d.year, d.month, 1, tzinfo=UTC).timestamp())


def range_window(now: float, key: str) -> tuple[int, int, str, int]:
    """(start, end, bucket_width, bucket count) for a range key; buckets aligned to whole hours/days."""
    _, days, width = RANGES.get(key, RANGES["30d"])
    if width == "1h":
        end = (int(now) // 3600 + 1) * 3600
        return end - 24 * 3600, end, width, 24
    d = datetime.fromtimestamp(now, UTC).date() + timedelta(days=1)
    end = int(datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp())
    return end - days * 86400, end, width, days


@dataclass
class Totals:
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    cost: float = 0.0

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def add(self, r: dict[str, Any]) -> None:
        self.requests += int(r.get("num_model_requests") or 0)
        self.input_tokens += int(r.get("input_tokens") or 0)
        self.output_tokens += int(r.get("output_tokens") or 0)
        self.cached_tokens += int(r.get("input_cached_tokens") or 0)


@dataclass
class UsageView:
    times: list[int] = field(default_factory=list)
    requests: list[int] = field(default_factory=list)
    input_tokens: list[int] = field(default_factory=list)
    output_tokens: list[int] = field(default_factory=list)
    cost: list[float] = field(default_factory=list)
    total: Totals = field(default_factory=Totals)
    rows: list[dict[str, Any]] = field(default_factory=list)

    def chart_json(self) -> Markup:
        data = {
            "t": self.times,
            "requests": self.requests,
            "input": self.input_tokens,
            "output": self.output_tokens,
            "cost": self.cost,
        }
        # Inside <script type="application/json">: "<" escaped so no "</script>" can close it.
        return Markup(orjson.dumps(data).decode().replace("<", "\\u003c"))  # noqa: S704


def usage_view(
    usage: list[dict[str, Any]], costs: list[dict[str, Any]], start: int, width: str, count: int
) -> UsageView:
    step = 3600 if width == "1h" else 86400
    times = [start + i * step for i in range(count)]
    index = {t: i for i, t in enumerate(times)}
    v = UsageView(
        times=times, requests=[0] * count, input_tokens=[0] * count, output_tokens=[0] * count, cost=[0.0] * count
    )
    for b in usage:
        i = index.get(int(b.get("start_time") or 0))
        for r in b.get("results") or []:
            v.total.add(r)
            if i is not None:
                v.requests[i] += int(r.get("num_model_requests") or 0)
                v.input_tokens[i] += int(r.get("input_tokens") or 0)
                v.output_tokens[i] += int(r.get("output_tokens") or 0)
            if any(int(r.get(k) or 0) for k in ("num_model_requests", "input_tokens", "output_tokens")):
                v.rows.append({**r, "start_time": b.get("start_time")})
    for b in costs:
        i = index.get(int(b.get("start_time") or 0))
        for r in b.get("results") or []:
            amount = cost_value(r)
            v.total.cost += amount
            if i is not None:
                v.cost[i] += amount
    v.rows.sort(key=lambda r: (-(r.get("start_time") or 0), -(r.get("num_model_requests") or 0)))
    return v


def cost_value(r: dict[str, Any]) -> float:
    a = r.get("amount")
    if isinstance(a, dict):
        a = a.get("value")
    try:
        return float(a or 0)
    except (TypeError, ValueError):
        return 0.0


def balance_value(d: Any) -> float | None:
    """Credit available in USD from a credit_balance answer (amounts in integer cents)."""
    if not isinstance(d, dict):
        return None
    v = d.get("available", d.get("balance"))
    if isinstance(v, dict):
        v = v.get("value")
    return float(v) / 100 if isinstance(v, int | float) and not isinstance(v, bool) else None


def grouped(usage: list[dict[str, Any]], key: str) -> list[tuple[str, Totals]]:
    out: dict[str, Totals] = defaultdict(Totals)
    for b in usage:
        for r in b.get("results") or []:
            out[str(r.get(key) or "-")].add(r)
    return sorted(out.items(), key=lambda kv: (-kv[1].requests, -kv[1].tokens))


def grouped_costs(costs: list[dict[str, Any]], key: str) -> dict[str, float]:
    out: dict[str, float] = defaultdict(float)
    for b in costs:
        for r in b.get("results") or []:
            out[str(r.get(key) or "-")] += cost_value(r)
    return dict(out)


async def names(s: Any) -> tuple[dict[str, str], dict[str, str]]:
    """Project and key names by id, to label usage rows."""
    projects = await control.project_names(s)
    keys = {k: f"{n} ({r})" for k, (n, r) in (await control.key_names(s)).items()}
    return projects, keys


# --- permissions (the editor's All / Restricted per area / Read only) --------------------------


def area_levels(p: Permissions) -> dict[str, str]:
    out = {}
    for a in AREAS:
        if a == "model":
            out[a] = "request" if p.allows("api.model.request") else "read" if p.allows("api.model.read") else "none"
        else:
            out[a] = "write" if p.allows(f"api.{a}.write") else "read" if p.allows(f"api.{a}.read") else "none"
    return out


def permissions_from(raw: str) -> Permissions:
    return parse_permissions(orjson.loads(raw))


def summary(p: Permissions) -> str:
    if p.mode == "all":
        return "All"
    if p.mode == "read_only":
        return "Read only"
    parts = [f"{AREAS[a][0].split(' and ')[0]}: {lvl}" for a, lvl in area_levels(p).items() if lvl != "none"]
    return "Restricted (" + ", ".join(parts) + ")" if parts else "Restricted"


class PermissionsError(ValueError):
    pass


def permissions_from_form(mode: str, levels: dict[str, str]) -> str | list[str]:
    if mode == "all":
        return "all"
    if mode == "read_only":
        return "read_only"
    if mode != "restricted":
        raise PermissionsError("Choose All, Restricted or Read only.")
    scopes: list[str] = []
    for a in AREAS:
        lvl = levels.get(a) or "none"
        if lvl == "none":
            continue
        if lvl == "read":
            scopes.append(f"api.{a}.read")
        elif lvl in ("write", "request"):
            scopes.append("api.model.request" if a == "model" else f"api.{a}.write")
        else:
            raise PermissionsError(f"Unknown level {lvl!r} for {AREAS[a][0]}.")
    if not scopes:
        raise PermissionsError(
            "A restricted key needs at least one area set to Read or Write; choose Read only or All otherwise."
        )
    return scopes


# --- lists of a shape the dashboard does not know in advance ----------------------------------


def columns(items: list[dict[str, Any]], hide: tuple[str, ...] = ("object",)) -> list[str]:
    cols: list[str] = []
    for it in items[:50]:
        for k in it:
            if k not in cols and k not in hide:
                cols.append(k)
    return cols[:9]


def cell(key: str, value: Any) -> Any:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if key.endswith(("_at", "_time")) or key in ("effective_at", "created", "time", "timestamp"):
        return when(value, "-")
    if key.endswith("_cents") or key == "threshold_amount":
        return cents(value)
    if key in ("amount", "balance", "value", "remaining", "granted", "used", "cost", "spend") or key.endswith("_usd"):
        if isinstance(value, dict) and "value" in value:
            return usd(value["value"])
        return usd(value) if isinstance(value, int | float) else str(value)
    if isinstance(value, int | float):
        return num(value)
    if isinstance(value, dict | list):
        text = orjson.dumps(value).decode()
        return text if len(text) <= 120 else text[:117] + "..."
    return str(value)


def label(key: str) -> str:
    return key.replace("_", " ").capitalize()


def detail_lines(value: Any, limit: int = 40) -> list[tuple[str, str]]:
    """An audit entry's details as ``key: value`` lines (nested keys dotted, lists joined), bounded."""
    out: list[tuple[str, str]] = []

    def walk(prefix: str, v: Any) -> None:
        if len(out) >= limit:
            return
        if isinstance(v, dict) and v:
            for k, x in v.items():
                walk(f"{prefix}.{k}" if prefix else str(k), x)
            return
        if isinstance(v, list) and all(not isinstance(x, dict | list) for x in v):
            text = ", ".join("-" if x is None else str(x) for x in v) or "(none)"
        elif isinstance(v, dict | list):
            text = orjson.dumps(v).decode()
        elif isinstance(v, bool):
            text = "yes" if v else "no"
        else:
            text = "-" if v is None else str(v)
        out.append((prefix or "value", text if len(text) <= 200 else text[:197] + "..."))

    walk("", value)
    return out


_LIMIT_INDEX = {
    "max_requests_per_1_minute": 0,
    "max_tokens_per_1_minute": 1,
    "max_requests_per_1_day": 2,
    "max_tokens_per_1_day": 3,
}


def rate_marks(billing: Any, project_id: str, rates: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per model of a project's rate limits: ``custom`` (set through the API or the dashboard) or the tier's
    default, and the tier's default of each field, to show beside a custom value. {} without billing."""
    if billing is None:
        return {}
    out: dict[str, dict[str, Any]] = {}
    for rl in rates:
        model = str(rl.get("model") or "")
        over = billing.cfg.overrides.get(("project", project_id, model))
        tier = billing.tiers.limits(billing.cfg.tier, model)
        fields = {f: (over is not None and over[i] is not None and over[i] != tier[i]) for f, i in _LIMIT_INDEX.items()}
        out[model] = {
            "custom": any(fields.values()),
            "fields": fields,
            "tier": {f: tier[i] for f, i in _LIMIT_INDEX.items()},
            "tier_name": billing.cfg.tier,
        }
    return out
