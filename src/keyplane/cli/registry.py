"""The `keyplane` command tree: every group and command, registered here and nowhere else.

Commands are plain module-level functions: the core ones in keyplane.cli, the features' beside their
code (``keyplane.<feature>.cli``). Their help is their docstring; a group's help is given here.
docs/cli-reference.md is generated from this tree (scripts/cli_reference.py).
"""

from __future__ import annotations

import typer

from keyplane.access import cli as access
from keyplane.billing import cli as billing
from keyplane.billing import prices_check
from keyplane.cli import common, doctor, init, keys, objects, projects, users
from keyplane.guard import cli as guard
from keyplane.members import cli as members
from keyplane.providers import cli as providers
from keyplane.scan import cli as scan
from keyplane.usage import cli as usage
from keyplane.web import cli as web


def _group(parent: typer.Typer, name: str, help: str) -> typer.Typer:
    group = typer.Typer(help=help, no_args_is_help=True)
    parent.add_typer(group, name=name)
    return group


app = typer.Typer(
    name="keyplane",
    help="keyplane: a self-hosted gateway and control plane for LLM API keys.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.callback()(common.root)

app.command("init")(init.init)
app.command("serve")(init.serve)

projects_app = _group(app, "projects", "Create, list and archive projects.")
projects_app.command("create")(projects.projects_create)
projects_app.command("list")(projects.projects_list)
projects_app.command("archive")(projects.projects_archive)

objects_app = _group(
    app, "objects", "Provider objects made outside keyplane (stored prompts...): assign them to a project."
)
objects_app.command("assign")(objects.assign)

keys_app = _group(app, "keys", "Create, list, revoke, rotate, suspend keys and change their permissions.")
keys_app.command("create")(keys.create)
keys_app.command("create-admin")(keys.create_admin)
keys_app.command("list")(keys.list_)
keys_app.command("revoke")(keys.revoke)
keys_app.command("rotate")(keys.rotate)
keys_app.command("permissions")(keys.permissions_)
keys_app.command("suspend")(keys.suspend)
keys_app.command("resume")(keys.resume)

users_app = _group(app, "users", "Add, list, change and remove users.")
users_app.command("add")(users.add)
users_app.command("list")(users.list_)
users_app.command("role")(users.role)
users_app.command("remove")(users.remove)
users_app.command("set-password")(web.set_password)
users_app.command("reset-2fa")(web.reset_2fa)
app.command("audit")(users.audit)

app.command("doctor")(doctor.doctor)
scan.register(app)  # `keyplane scan` (also a program of its own: python -m keyplane.scan)

credit_app = _group(app, "credit", "Prepaid credit: add grants, show the balance.")
credit_app.command("grant")(billing.grant)
credit_app.command("balance")(billing.balance)
credit_app.command("list")(billing.list_grants)
limits_app = _group(app, "limits", "Spend limits and rate limits of the organization, projects and keys.")
limits_app.command("show")(billing.show)
limits_app.command("set")(billing.set_)
prices_app = _group(app, "prices", "The price table: what keyplane charges each model, endpoint and tool.")
prices_app.command("check")(prices_check.check)

app.command("usage")(usage.usage)

guard_app = _group(app, "guard", "The kill switch: its rules, what they did, and a test alert to every sink.")
guard_app.command("rules")(guard.rules_)
guard_app.command("events")(guard.events)
guard_app.command("test-alert")(guard.test_alert)

providers_app = _group(
    app,
    "providers",
    "Provider organizations (OpenAI) governed through their Admin API: check the "
    "admin key, sync the inventory and usage, report on key hygiene.",
)
providers_app.command("list")(providers.list_)
providers_app.command("check")(providers.check_)
providers_app.command("sync")(providers.sync_)
providers_app.command("report")(providers.report_)
providers_app.command("bind")(providers.bind_)
providers_app.command("rotate")(providers.rotate_)
providers_app.command("unbind")(providers.unbind_)
providers_app.command("bindings")(providers.bindings_)

invites_app = _group(app, "invites", "Invite people: each invite has a one-time link to set a password.")
invites_app.command("create")(members.create)
invites_app.command("list")(members.list_)
invites_app.command("delete")(members.delete)
members_app = _group(app, "members", "Project members (owner or member): who may hold keys in a project.")
members_app.command("add")(members.add)
members_app.command("list")(members.members)
members_app.command("remove")(members.remove)

access_app = _group(app, "access", "Access policies: model and hosted tool permissions, IP allowlists.")
access_app.command("show")(access.show)
ip_app = _group(access_app, "ip-allowlist", "IP allowlists of the organization, a project or a key.")
ip_app.command("clear")(access.clear)


def _one_line_paragraphs(group: typer.Typer) -> None:
    """Each command's help as its docstring's paragraphs, each on one line (the terminal wraps them): typer's rich
    help keeps a docstring's hard line breaks, in the group's command list ("... and an" / "admin key ...") and on
    the command's own page, which then wraps raggedly. Blank lines still separate paragraphs."""
    import inspect

    for cmd in group.registered_commands:
        doc = inspect.getdoc(cmd.callback) if cmd.callback is not None else None
        if cmd.help is None and doc:
            cmd.help = "\n\n".join(" ".join(p.split()) for p in doc.split("\n\n"))
    for sub in group.registered_groups:
        if sub.typer_instance is not None:
            _one_line_paragraphs(sub.typer_instance)


_one_line_paragraphs(app)
