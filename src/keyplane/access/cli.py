"""`keyplane access show` and `keyplane access ip-allowlist clear`: the access policies from the server's
command line. The CLI works on the store directly, so no IP allowlist ever applies to it: it is how an
operator who locked themselves out of the admin API and the dashboard lifts the organization's list.
"""

from typing import Annotated, Any

import typer

from keyplane.cli.common import JsonOpt, fail, out, print_json, run_store, settings, table, ts


def show(json: JsonOpt = False) -> None:
    """Every access policy set: model permissions, hosted tool permissions and IP allowlists."""
    items = run_store(settings(), _policies)
    if json:
        print_json(items)
        return
    if not items:
        out.print(
            "no access policy set: every key may use every model and hosted tool, from any address.", markup=False
        )
        return
    table(
        "Access policies",
        ["kind", "scope", "id", "policy", "updated"],
        [(i["kind"], i["scope"], i["id"] or "-", i["summary"], ts(i["updated_at"])) for i in items],
    )


def clear(
    project: Annotated[
        str | None,
        typer.Option("--project", "-p", help="A project's list (id or name) instead of the organization's."),
    ] = None,
    key: Annotated[
        str | None, typer.Option("--key", help="A key's list (key id) instead of the organization's.")
    ] = None,
    json: JsonOpt = False,
) -> None:
    """Lift an IP allowlist (the organization's by default); written to the audit log."""
    if project and key:
        raise fail("give --project or --key, not both.")

    async def go(s: Any) -> dict[str, Any]:
        return await _clear(s, project, key)

    done = run_store(settings(), go, write=True)
    if json:
        print_json(done)
        return
    what = "the organization's" if done["scope"] == "organization" else f"{done['scope']} {done['id']}'s"
    if done["deleted"]:
        out.print(f"lifted {what} IP allowlist (it was: {', '.join(done['cidrs'])}).", markup=False)
    else:
        out.print(f"{what} IP allowlist was not set: nothing to lift.", markup=False)


async def _policies(s: Any) -> list[dict[str, Any]]:
    from keyplane.access.service import all_policies

    return await all_policies(s)


async def _clear(s: Any, project: str | None, key: str | None) -> dict[str, Any]:
    import orjson

    from keyplane import control
    from keyplane.access.service import drop, stored

    scope, target, pid = "org", "org", None
    if project:
        p = await control.find_project(s, project)
        scope, target, pid = "project", p.id, p.id
    elif key:
        found = await control.get_key(s, key)  # "No API key found with id '...'." when there is none
        scope, target, pid = "key", key, found.project_id
    row = await stored(s, "ip", scope, target)
    cidrs: list[str] = (orjson.loads(row.value).get("cidrs") or []) if row is not None else []
    if row is not None:
        await drop(s, control.CLI_ACTOR, "ip", scope, target, pid, "ip_allowlist.deleted")
    return {
        "object": "ip_allowlist.deleted",
        "scope": "organization" if scope == "org" else scope,
        "id": None if scope == "org" else target,
        "deleted": row is not None,
        "cidrs": cidrs,
    }
