"""`keyplane providers list|check|sync|report|bind|rotate|unbind|bindings`: provider organizations from the
command line (docs/providers.md).

Every command takes --json. The provider admin key is read from the variable ``admin_key_env`` names and
is never printed; errors name the provider and the call only.
"""

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Annotated, Any, TypeVar

import typer

from keyplane.cli.common import JsonOpt, fail, out, print_json, settings, table

T = TypeVar("T")


NameArg = Annotated[str | None, typer.Argument(help="The provider's name in [[providers]] (default: all).")]


def _pick(name: str | None) -> list[Any]:
    s = settings()
    chosen = [p for p in s.file.providers if name is None or p.name == name]
    if not chosen:
        raise fail(
            f"no provider named {name!r} in [[providers]]"
            if name
            else "no [[providers]] in keyplane.toml (docs/providers.md)"
        )
    return chosen


def _run(fn: Callable[[], Coroutine[Any, Any, T]]) -> T:
    from keyplane.providers.connector import ProviderError

    try:
        return asyncio.run(fn())
    except ProviderError as e:
        raise fail(str(e)) from None


async def _with_store(fn: Callable[[Any], Awaitable[T]]) -> T:
    from keyplane.store import db

    engine = db.make_engine(settings().database_url)
    try:
        await db.migrate(engine)
        return await fn(db.sessionmaker(engine))
    finally:
        await engine.dispose()


def list_(json: JsonOpt = False) -> None:
    """The configured providers (never their keys)."""
    items = [
        {
            "name": p.name,
            "kind": p.kind,
            "base_url": p.base_url,
            "admin_key_env": p.admin_key_env,
            "sync_interval": p.sync_interval,
            "backfill_days": p.backfill_days,
        }
        for p in settings().file.providers
    ]
    if json:
        print_json(items)
    else:
        table(
            "providers",
            ["name", "kind", "base_url", "admin_key_env", "sync every (s)"],
            [[i["name"], i["kind"], i["base_url"], i["admin_key_env"], i["sync_interval"]] for i in items],
        )


def check_(name: NameArg = None, json: JsonOpt = False) -> None:
    """Prove the admin key works and show what it can see."""
    from keyplane.providers.connector import Connector
    from keyplane.providers.service import check

    async def go() -> list[dict[str, Any]]:
        results = []
        for cfg in _pick(name):
            conn = Connector(cfg)
            try:
                results.append(await check(conn))
            finally:
                await conn.close()
        return results

    results = _run(go)
    if json:
        print_json(results)
        return
    for r in results:
        seen = ", ".join(f"{n} {k.replace('_', ' ')}s" for k, n in r["visible"].items())
        out.print(f"provider {r['provider']}: admin key works; it sees {seen}", markup=False, highlight=False)


def sync_(name: NameArg = None, json: JsonOpt = False) -> None:
    """Sync the inventory, ingest usage and costs, and evaluate the provider rules, now."""
    from keyplane.alerts import Dispatcher
    from keyplane.providers.connector import Connector
    from keyplane.providers.service import prices_for, rules_for, sync_provider

    s = settings()
    rules = rules_for(s)
    prices = prices_for(s, rules)

    async def go() -> list[dict[str, Any]]:
        dispatcher = Dispatcher.from_config(s.file.alerts)

        async def body(sessions: Any) -> list[dict[str, Any]]:
            results = []
            for cfg in _pick(name):
                conn = Connector(cfg)
                try:
                    results.append(await sync_provider(sessions, conn, int(time.time()), rules, dispatcher, prices))
                finally:
                    await conn.close()
            return results

        try:
            return await _with_store(body)
        finally:
            await dispatcher.aclose()

    results = _run(go)
    if json:
        print_json(results)
        return
    for r in results:
        c = r["changes"]
        out.print(
            f"provider {r['provider']}: {sum(r['inventory'].values())} objects ({c['added']} added, "
            f"{c['changed']} changed, {c['removed']} removed), {sum(r['usage_rows'].values())} usage rows, "
            f"{len(r['events'])} rule firings",
            markup=False,
            highlight=False,
        )
        for ev in r["events"]:
            out.print(
                f"  {ev['message']}: {ev['action']}{' (dry run)' if ev['dry_run'] else ''}",
                markup=False,
                highlight=False,
            )


def report_(
    name: NameArg = None,
    unused_days: Annotated[
        int, typer.Option("--unused-days", min=1, max=3650, help="A key unused this many days is reported.")
    ] = 30,
    json: JsonOpt = False,
) -> None:
    """Key hygiene from the last sync: unused keys, keys of departed users, keys in the default project,
    service accounts without keys, admin keys without expiry, projects without a spend limit."""
    from keyplane.providers.report import FINDINGS, report

    names = [p.name for p in _pick(name)]

    async def go() -> list[dict[str, Any]]:
        async def body(sessions: Any) -> list[dict[str, Any]]:
            async with sessions() as sess:
                return [await report(sess, n, int(time.time()), unused_days) for n in names]

        return await _with_store(body)

    results = _run(go)
    if json:
        print_json(results)
        return
    for r in results:
        seen = ", ".join(f"{n} {k.replace('_', ' ')}s" for k, n in r["inventory"].items())
        out.print(f"provider {r['provider']} (last sync: {seen or 'never synced'}):", markup=False, highlight=False)
        for field in FINDINGS:
            items = r[field]
            out.print(f"  {field.replace('_', ' ')}: {len(items)}", markup=False, highlight=False)
            for i in items:
                extra = f" ({i['reason']})" if i.get("reason") else ""
                out.print(
                    f"    {i.get('id')} {i.get('redacted_value') or i.get('name') or ''}{extra}",
                    markup=False,
                    highlight=False,
                )


ProjectArg = Annotated[str, typer.Argument(help="The keyplane project (id or name).")]


def _binding_out(b: dict[str, Any], json: bool, verb: str) -> None:
    if json:
        print_json(b)
        return
    out.print(
        f"project {b['project_id']} {verb} provider {b['provider']} project {b['provider_project_id']}: "
        f"service account {b['service_account_id']}, key {b['key_id']} ({b['redacted_value']})",
        markup=False,
        highlight=False,
    )


def _bound_provider(project: str) -> str:
    from keyplane.providers.bindings import BindingError, _binding

    async def body(sessions: Any) -> str:
        async with sessions() as sess:
            try:
                return (await _binding(sess, project)).provider
            except BindingError as e:
                raise fail(str(e)) from None

    return _run(lambda: _with_store(body))


def _provisioning(name: str | None, fn: Callable[[Any, Any, Any], Awaitable[T]]) -> T:
    """Run ``fn(sessions, connector, key box)`` against one provider; refusals exit 1 with their message."""
    from keyplane.providers.bindings import BindingError, KeyBox
    from keyplane.providers.connector import Connector

    chosen = _pick(name)
    if len(chosen) != 1:
        raise fail("several [[providers]]: name one with --provider")

    async def go() -> T:
        conn = Connector(chosen[0])
        try:
            return await _with_store(lambda sessions: fn(sessions, conn, KeyBox(settings().secret_key)))
        finally:
            await conn.close()

    try:
        return _run(go)
    except BindingError as e:
        raise fail(str(e)) from None


def bind_(
    project: ProjectArg,
    provider_project_id: Annotated[str, typer.Argument(help="The provider project's id (proj_...).")],
    provider: Annotated[
        str | None, typer.Option("--provider", help="The provider's name (default: the only one).")
    ] = None,
    json: JsonOpt = False,
) -> None:
    """Bind a project to a provider project: keyplane creates its own service account there and forwards the
    project's traffic with its key (stored encrypted, never shown)."""
    from keyplane import control
    from keyplane.providers.bindings import bind

    b = _provisioning(
        provider,
        lambda sessions, conn, box: bind(
            sessions, conn, box, project, provider_project_id, int(time.time()), control.CLI_ACTOR
        ),
    )
    _binding_out(b, json, "bound to")


def rotate_(
    project: ProjectArg,
    grace: Annotated[
        int,
        typer.Option(
            "--grace",
            min=0,
            max=86400,
            help="Seconds the old key keeps working after the swap (every instance reloads the bindings every 5 s).",
        ),
    ] = 15,
    json: JsonOpt = False,
) -> None:
    """Rotate a bound project's provider key: a new key of its service account first, the swap, then the old
    key deleted at the provider after --grace seconds (this command waits for it)."""
    from keyplane import control
    from keyplane.providers.bindings import retire_due, rotate

    async def go(sessions: Any, conn: Any, box: Any) -> dict[str, Any]:
        b = await rotate(sessions, conn, box, project, int(time.time()), control.CLI_ACTOR, grace)
        await asyncio.sleep(grace)
        b["retired"] = await retire_due(sessions, {conn.name: conn}, int(time.time()))
        return b

    b = _provisioning(_bound_provider(project), go)
    _binding_out(b, json, "rotated: bound to")
    if not json and b["retired"]:
        out.print(f"old key {', '.join(b['retired'])} deleted at the provider", markup=False, highlight=False)


def unbind_(
    project: ProjectArg,
    grace: Annotated[
        int,
        typer.Option(
            "--grace",
            min=0,
            max=86400,
            help="Seconds between the switch back to the shared key and the deletion "
            "of the service account (every instance reloads every 5 s).",
        ),
    ] = 6,
    json: JsonOpt = False,
) -> None:
    """Unbind a project: it goes back to the shared upstream key, then its service account (and key) is
    deleted at the provider after --grace seconds (this command waits)."""
    from keyplane import control
    from keyplane.providers.bindings import unbind

    b = _provisioning(
        _bound_provider(project),
        lambda sessions, conn, box: unbind(sessions, conn, project, int(time.time()), control.CLI_ACTOR, grace),
    )
    _binding_out(b, json, "unbound from")


def bindings_(json: JsonOpt = False) -> None:
    """The projects bound to provider projects (never their keys)."""
    from keyplane.providers.bindings import list_bindings

    async def body(sessions: Any) -> list[dict[str, Any]]:
        async with sessions() as sess:
            return await list_bindings(sess)

    items = _run(lambda: _with_store(body))
    if json:
        print_json(items)
    else:
        table(
            "provider bindings",
            ["project", "provider", "provider project", "service account", "key"],
            [
                [
                    b["project_id"],
                    b["provider"],
                    b["provider_project_id"],
                    b["service_account_id"],
                    b["redacted_value"],
                ]
                for b in items
            ],
        )
