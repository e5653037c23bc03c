"""`keyplane prices check`: the models seen in traffic that the price table does not price, and the
entries of the table whose provenance is missing (no source or date) or old.

Unpriced models are read from the daily usage rollups (kept longest), so a model served at cost 0 where no
spend limit applies (docs/limits-and-billing.md) is found before a limit refuses it. Exit status 1 when any
is found, so it can run in CI or cron. Undated entries (no http(s) ``source`` or no ``taken`` date, their
own or the price file's) and stale ones (taken more than ``--max-age-days`` ago; a month counts from its
first day) are listed too, and make the exit status 1 with ``--strict``.
"""

import datetime
import time
from typing import Annotated, Any

import typer
from sqlalchemy import func, select

from keyplane.cli.common import JsonOpt, out, print_json, run_store, settings, table, ts

DAY = 86400
# Kinds that bill nothing or that keyplane counts apart from a model's price.
_FREE_KINDS = ("moderations", "web_search_calls", "file_search_calls", "code_interpreter_sessions")


async def unpriced(session: Any, prices: Any, since: int) -> list[dict[str, Any]]:
    """[{model, requests, last_seen, kinds}] of the models in traffic since ``since`` with no price."""
    from keyplane.usage.models import UsageDay

    d = UsageDay
    rows = (
        await session.execute(
            select(d.model, d.kind, func.sum(d.requests), func.max(d.bucket))
            .where(d.bucket >= since - since % DAY, d.model != "", d.kind.not_in(_FREE_KINDS))
            .group_by(d.model, d.kind)
        )
    ).all()
    found: dict[str, dict[str, Any]] = {}
    for model, kind, n, last in rows:
        if model.startswith("demo-") or prices.lookup(model) is not None:
            continue
        e = found.setdefault(model, {"model": model, "requests": 0, "last_seen": 0, "kinds": []})
        e["requests"] += int(n or 0)
        e["last_seen"] = max(e["last_seen"], int(last or 0))
        e["kinds"].append(kind)
    for e in found.values():
        e["kinds"].sort()
    return sorted(found.values(), key=lambda e: (-e["requests"], e["model"]))


MAX_AGE_DAYS = 180


def _taken_date(taken: str | None) -> datetime.date | None:
    """The day a ``taken`` value (YYYY-MM-DD, or YYYY-MM: its first day) stands for; None when it is no date."""
    if not taken:
        return None
    try:
        if len(taken) == 7:
            return datetime.date(int(taken[:4]), int(taken[5:7]), 1)
        return datetime.date.fromisoformat(taken) if len(taken) == 10 else None
    except ValueError:
        return None


def provenance_issues(
    data: dict[str, Any], configured: dict[str, Any], now: float, max_age_days: int = MAX_AGE_DAYS
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(undated, stale) entries of the table in use: the price file's (``data``: the shipped one or the
    prices_file setting's; its top-level source/taken apply to entries without their own) and keyplane.toml's
    ``[prices]`` entries (``configured``: their own source/taken only), each {model, origin, source, taken, ...}."""
    from keyplane.billing.prices_file import provenance

    entries: dict[str, tuple[str, str | None, str | None]] = {
        name: ("price file", src, taken) for name, (src, taken) in provenance(data).items()
    }
    for name, p in configured.items():
        entries[name] = ("keyplane.toml", getattr(p, "source", None), getattr(p, "taken", None))
    today = datetime.datetime.fromtimestamp(now, datetime.UTC).date()
    undated: list[dict[str, Any]] = []
    stale: list[dict[str, Any]] = []
    for name in sorted(entries):
        origin, src, taken = entries[name]
        day = _taken_date(taken)
        row: dict[str, Any] = {"model": name, "origin": origin, "source": src, "taken": taken}
        if not (src and src.startswith(("https://", "http://"))):
            undated.append(row | {"why": "no source address"})
        elif day is None:
            undated.append(row | {"why": "no date" if not taken else "the date is not YYYY-MM or YYYY-MM-DD"})
        elif (age := (today - day).days) > max_age_days:
            stale.append(row | {"age_days": age})
    return undated, stale


def _grouped(rows: list[dict[str, Any]], *keys: str) -> list[tuple[Any, ...]]:
    """One row per (keys...) with how many entries and their names (a table of 100 stale entries is one line)."""
    groups: dict[tuple[Any, ...], list[str]] = {}
    for r in rows:
        groups.setdefault(tuple(r.get(k) for k in keys), []).append(r["model"])
    out = []
    for k, names in groups.items():
        shown = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
        out.append((*k, len(names), shown))
    return out


def check(
    days: Annotated[int, typer.Option(min=1, max=3650, help="Look at the traffic of the last DAYS days.")] = 30,
    max_age_days: Annotated[
        int,
        typer.Option(min=1, max=36500, help="List the entries whose prices were taken more than this many days ago."),
    ] = MAX_AGE_DAYS,
    strict: Annotated[
        bool, typer.Option("--strict", help="Exit 1 also when an entry is undated (no source or date) or stale.")
    ] = False,
    json: JsonOpt = False,
) -> None:
    """List the models seen in traffic that have no price (served at cost 0 without a spend limit,
    refused under one), and the price entries with no source or date (undated) or taken more than
    --max-age-days ago (stale). Exits 1 when a model has no price (with --strict, also when an entry is
    undated or stale): price them in keyplane.toml or keep the prices_file current
    (docs/limits-and-billing.md "Keeping the table current")."""
    from keyplane.billing.prices import PriceTable
    from keyplane.billing.prices_file import load_data

    s = settings()
    table_ = PriceTable.from_config(s.file.prices, s.prices_file)
    now = time.time()
    since = int(now) - days * DAY
    undated, stale = provenance_issues(load_data(s.prices_file), s.file.prices, now, max_age_days)

    async def go(session: Any) -> list[dict[str, Any]]:
        return await unpriced(session, table_, since)

    found = run_store(s, go)
    if json:
        print_json(
            {
                "object": "list",
                "data": found,
                "days": days,
                "undated": undated,
                "stale": stale,
                "max_age_days": max_age_days,
            }
        )
    else:
        if not found:
            out.print(f"every model seen in the last {days} days has a price")
        else:
            table(
                f"models with no price (last {days} days)",
                ["model", "requests", "last seen (day)", "kinds"],
                [(e["model"], e["requests"], ts(e["last_seen"]), ", ".join(e["kinds"])) for e in found],
            )
        if undated:
            table(
                "price entries with no source or date (undated)",
                ["origin", "why", "entries", "models"],
                _grouped(undated, "origin", "why"),
            )
        if stale:
            table(
                f"price entries taken more than {max_age_days} days ago (stale)",
                ["origin", "taken", "age (days)", "entries", "models"],
                _grouped(stale, "origin", "taken", "age_days"),
            )
        if not undated and not stale:
            out.print(f"every price entry has a source and a date within the last {max_age_days} days")
    if found or (strict and (undated or stale)):
        raise typer.Exit(1)
