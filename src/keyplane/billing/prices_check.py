"""`keyplane prices check`: the models seen in traffic that the price table does not price.

Read from the daily usage rollups (kept longest), so a model served at cost 0 where no spend limit
applies (docs/limits-and-billing.md) is found before a limit refuses it. Exit status 1 when any is
found, so it can run in CI or cron.
"""

import time
from typing import Annotated, Any

import typer
from sqlalchemy import func, select

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


def register(app: typer.Typer) -> None:
    from keyplane.cli import JsonOpt, out, print_json, run_store, settings, table, ts

    prices_app = typer.Typer(
        help="The price table: what keyplane charges each model, endpoint and tool.", no_args_is_help=True
    )
    app.add_typer(prices_app, name="prices")

    @prices_app.command("check")
    def check(
        days: Annotated[int, typer.Option(min=1, max=3650, help="Look at the traffic of the last DAYS days.")] = 30,
        json: JsonOpt = False,
    ) -> None:
        """List the models seen in traffic that have no price (served at cost 0 without a spend limit,
        refused under one). Exits 1 when there is any: price them in keyplane.toml (docs/limits-and-billing.md)."""
        from keyplane.billing.prices import PriceTable

        s = settings()
        table_ = PriceTable.from_config(s.file.prices, s.prices_file)
        since = int(time.time()) - days * DAY

        async def go(session: Any) -> list[dict[str, Any]]:
            return await unpriced(session, table_, since)

        found = run_store(s, go)
        if json:
            print_json({"object": "list", "data": found, "days": days})
        elif not found:
            out.print(f"every model seen in the last {days} days has a price")
        else:
            table(
                f"models with no price (last {days} days)",
                ["model", "requests", "last seen (day)", "kinds"],
                [(e["model"], e["requests"], ts(e["last_seen"]), ", ".join(e["kinds"])) for e in found],
            )
        if found:
            raise typer.Exit(1)
