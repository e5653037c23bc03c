"""`keyplane guard rules|events|test-alert`: the kill switch from the command line (on the store)."""

from typing import Annotated, Any

import typer

from keyplane.cli.common import JsonOpt, fail, out, print_json, run_store, settings, table, ts


def rules_(json: JsonOpt = False) -> None:
    """List the effective rules: shipped defaults, keyplane.toml, and changes made over the admin API."""
    from keyplane.guard.rules import config_rules, effective
    from keyplane.guard.store import load_stored

    s = settings()

    async def go(session: Any) -> tuple[dict[str, Any], dict[str, int]]:
        stored, times = await load_stored(session)
        return effective(config_rules(s.file.guard), stored), times

    rules, times = run_store(s, go)
    items = [r.to_json(times.get(n)) for n, r in rules.items()]
    if json:
        print_json(items)
        return
    if not s.file.guard.enabled:
        out.print("[yellow]The kill switch is off (guard.enabled = false): no rule is evaluated.[/]")
    table(
        "Kill switch rules",
        [
            "name",
            "kind",
            "scope",
            "window",
            "threshold",
            "metric",
            "min volume",
            "mode",
            "cooldown",
            "dry run",
            "enabled",
            "source",
        ],
        [
            (
                d["name"],
                d["kind"],
                d["scope"],
                d["window"],
                d["threshold"],
                d["metric"],
                d["min_volume"],
                d["mode"],
                d["cooldown"],
                "yes" if d["dry_run"] else "no",
                "yes" if d["enabled"] else "no",
                d["source"],
            )
            for d in items
        ],
    )


def events(
    key: Annotated[str | None, typer.Option("--key", help="Only this key id.")] = None,
    rule: Annotated[str | None, typer.Option("--rule", help="Only this rule.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="How many, newest first.")] = 20,
    json: JsonOpt = False,
) -> None:
    """What the rules did, newest first: the key, the figures, the action."""
    from keyplane.guard.service import events_in

    async def go(session: Any) -> list[dict[str, Any]]:
        return (await events_in(session, limit=limit, key_id=key, rule=rule))[0]

    items = run_store(settings(), go)
    if json:
        print_json(items)
        return
    table(
        "Kill switch events",
        ["id", "when", "rule", "key", "action", "dry run", "message", "resolved"],
        [
            (
                d["id"],
                ts(d["created_at"]),
                d["rule"],
                d["key_id"],
                d["action"],
                "yes" if d["dry_run"] else "no",
                d["message"],
                ts(d["resolved_at"]),
            )
            for d in items
        ],
    )


def test_alert(
    attempts: Annotated[int, typer.Option(min=1, max=10, help="Attempts per sink.")] = 1,
    json: JsonOpt = False,
) -> None:
    """Send a test alert (event guard.test) to every configured sink and say which ones took it."""
    import asyncio

    from keyplane.alerts import Alert, AlertConfigError, Dispatcher

    s = settings()
    if not s.file.alerts.sinks:
        raise fail("no alert sink is configured: add [[alerts.sinks]] to keyplane.toml (docs/guard.md)")
    try:
        d = Dispatcher.from_config(s.file.alerts)
    except AlertConfigError as e:
        raise fail(str(e)) from None
    d.max_attempts = attempts
    alert = Alert(
        "guard.test",
        "keyplane test alert: the kill switch can reach this sink",
        {"rule": {"name": "test"}, "key": None, "project": None, "figures": {}, "action": "none", "dry_run": True},
        severity="info",
        dedup_key="keyplane:test",
    )

    async def go() -> list[tuple[str, str, str | None]]:
        try:
            return await d.deliver_now(alert)
        finally:
            await d.aclose()

    results = asyncio.run(go())
    items = [
        {"sink": n, "type": sk.type, "result": r, "error": e}
        for (n, r, e), sk in zip(results, [x for x in d.sinks if _takes(x, alert)], strict=True)
    ]
    if json:
        print_json(items)
    else:
        table(
            "Test alert",
            ["sink", "type", "result", "error"],
            [(i["sink"], i["type"], i["result"], i["error"]) for i in items],
        )
    if any(i["result"] != "delivered" for i in items):
        raise typer.Exit(1)


def _takes(sink: Any, alert: Any) -> bool:
    from keyplane.alerts.model import _accepts

    return _accepts(sink, alert)
