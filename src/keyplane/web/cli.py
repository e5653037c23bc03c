"""`keyplane users set-password` and `keyplane users reset-2fa`: dashboard sign-in recovery on the server."""

import sys
from typing import Annotated, Any

import typer

from keyplane import control
from keyplane.cli.common import fail, out, run_store, settings
from keyplane.web import auth

UserArg = Annotated[str, typer.Argument(help="User id (user-...) or email.")]


def set_password(
    user: UserArg,
    password_stdin: Annotated[
        bool,
        typer.Option("--password-stdin", help="Read the password from standard input (one line) instead of prompting."),
    ] = False,
) -> None:
    """Set a user's dashboard password (prompted twice, hidden). Their open sessions end."""
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = typer.prompt("New password", hide_input=True, confirmation_prompt=True)
    problem = auth.password_problem(password)
    if problem:
        raise fail(problem)
    hashed = auth.hash_password(password)

    async def go(s: Any) -> Any:
        u = await control.find_user(s, user)
        u.password_hash = hashed
        await control.audit(
            s,
            control.CLI_ACTOR,
            "user.updated",
            {"id": u.id, "changes_requested": {"password": "set"}},
            resource_id=u.id,
        )
        return u

    u = run_store(settings(), go, write=True)
    nxt = "" if u.totp_enabled else " They set up an authenticator app at their first sign-in."
    out.print(f"password set for {u.email}.{nxt}", markup=False)


def reset_2fa(user: UserArg) -> None:
    """Remove a user's authenticator and recovery codes; they enrol again at their next sign-in."""

    async def go(s: Any) -> Any:
        u = await control.find_user(s, user)
        u.totp_secret, u.totp_enabled, u.recovery_codes = None, False, None
        await control.audit(
            s,
            control.CLI_ACTOR,
            "user.updated",
            {"id": u.id, "changes_requested": {"mfa": "reset"}},
            resource_id=u.id,
        )
        return u

    u = run_store(settings(), go, write=True)
    out.print(
        f"two-factor sign-in reset for {u.email}: they set up a new authenticator at their next sign-in.",
        markup=False,
    )
