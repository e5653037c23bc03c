"""`keyplane providers list|check|sync|report`: provider organizations from the command line (docs/providers.md).

Every command takes --json. The provider admin key is read from the variable ``admin_key_env`` names and
is never printed; errors name the provider and the call only.
"""

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Annotated, Any, TypeVar

import typer

T = TypeVar("T")


def register(app: typer.Typer) -> None:
    from keyplane.cli import JsonOpt, fail, out, print_json, settings, table

    providers_app = typer.Typer(help="Provider organizations (OpenAI) governed through their Admin API: check the "
                                     "admin key, sync the inventory and usage, report on key hygiene.",
                                no_args_is_help=True)
    app.add_typer(providers_app, name="providers")
    NameArg = Annotated[str | None, typer.Argument(help="The provider's name in [[providers]] (default: all).")]

    def _pick(name: str | None) -> list[Any]:
        s = settings()
        chosen = [p for p in s.file.providers if name is None or p.name == name]
        if not chosen:
            raise fail(f"no provider named {name!r} in [[providers]]" if name else
                       "no [[providers]] in keyplane.toml (docs/providers.md)")
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

    @providers_app.command("list")
    def list_(json: JsonOpt = False) -> None:
        """The configured providers (never their keys)."""
        items = [{"name": p.name, "kind": p.kind, "base_url": p.base_url, "admin_key_env": p.admin_key_env,
                  "sync_interval": p.sync_interval, "backfill_days": p.backfill_days}
                 for p in settings().file.providers]
        if json:
            print_json(items)
        else:
            table("providers", ["name", "kind", "base_url", "admin_key_env", "sync every (s)"],
                  [[i["name"], i["kind"], i["base_url"], i["admin_key_env"], i["sync_interval"]] for i in items])

    @providers_app.command("check")
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

    @providers_app.command("sync")
    def sync_(name: NameArg = None, json: JsonOpt = False) -> None:
        """Sync the inventory, ingest usage and costs, and evaluate the provider rules, now."""
        from keyplane.alerts import Dispatcher
        from keyplane.providers.connector import Connector
        from keyplane.providers.service import rules_for, sync_provider

        s = settings()

        async def go() -> list[dict[str, Any]]:
            dispatcher = Dispatcher.from_config(s.file.alerts)

            async def body(sessions: Any) -> list[dict[str, Any]]:
                results = []
                for cfg in _pick(name):
                    conn = Connector(cfg)
                    try:
                        results.append(await sync_provider(sessions, conn, int(time.time()), rules_for(s), dispatcher))
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
            out.print(f"provider {r['provider']}: {sum(r['inventory'].values())} objects ({c['added']} added, "
                      f"{c['changed']} changed, {c['removed']} removed), {sum(r['usage_rows'].values())} usage rows, "
                      f"{len(r['events'])} rule firings", markup=False, highlight=False)
            for ev in r["events"]:
                out.print(f"  {ev['message']}: {ev['action']}{' (dry run)' if ev['dry_run'] else ''}", markup=False,
                          highlight=False)

    @providers_app.command("report")
    def report_(name: NameArg = None, unused_days: Annotated[int, typer.Option(
            "--unused-days", min=1, max=3650, help="A key unused this many days is reported.")] = 30,
            json: JsonOpt = False) -> None:
        """Key hygiene from the last sync: unused keys, keys of departed users, keys in the default project,
        service accounts without keys, admin keys without expiry."""
        from keyplane.providers.report import report

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
            out.print(f"provider {r['provider']} (last sync):", markup=False, highlight=False)
            for field in ("unused_keys", "keys_of_departed_users", "keys_in_default_project",
                          "service_accounts_without_keys", "admin_keys_without_expiry"):
                items = r[field]
                out.print(f"  {field.replace('_', ' ')}: {len(items)}", markup=False, highlight=False)
                for i in items:
                    out.print(f"    {i.get('id')} {i.get('redacted_value') or i.get('name') or ''}", markup=False,
                              highlight=False)
