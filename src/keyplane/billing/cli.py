"""`keyplane credit ...` and `keyplane limits ...`: prepaid credit, spend limits and rate limits.

Local commands, on the store directly like `keyplane keys`: changes are audited (actor: cli) and bump
the revision, so running instances apply them within a poll interval. Spend shown here is what the
SQL ledger holds (settled costs are written every ledger_flush_seconds).
"""

import time
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any

import typer
from rich.markup import escape

from keyplane import control
from keyplane.cli.common import JsonOpt, fail, out, print_json, run_store, settings, table, ts

ProjectOpt = Annotated[str | None, typer.Option("--project", "-p", help="Project id or unique name.")]
KeyOpt = Annotated[str | None, typer.Option("--key", "-k", help="Key id (key_...) of the project.")]


def _cents(usd: str, what: str) -> int:
    try:
        d = Decimal(usd.replace("$", "").replace(",", ""))
    except InvalidOperation:
        raise fail(f"{what} must be an amount in USD, e.g. 25 or 99.50 (got {usd!r}).") from None
    if not d.is_finite() or d < 0 or d != d.quantize(Decimal("0.01")):
        raise fail(f"{what} must be zero or more USD with at most 2 decimals (got {usd!r}).")
    return int(d * 100)


def _when(value: str | None) -> int | None:
    if value is None:
        return None
    if value.isdigit():
        return int(value)
    try:
        d = datetime.fromisoformat(value)
    except ValueError:
        raise fail(f"--expires-at must be a unix time or a date like 2027-01-31 (got {value!r}).") from None
    return int((d if d.tzinfo else d.replace(tzinfo=UTC)).timestamp())


def _usd(cents: int) -> str:
    from keyplane import fmt

    return fmt.usd_cents(cents)


async def _scope(session: Any, project: str | None, key: str | None) -> tuple[str, str, str | None, str]:
    """(scope, id, project id, label) from the options."""
    if key and not project:
        raise fail("--key needs --project (the key's project).")
    if not project:
        org = await control.get_org(session)
        return "organization", org.id if org else "", None, "organization"
    p = await control.find_project(session, project)
    if key:
        k = await control.get_key(session, key, p.id, "project")
        return "api_key", k.id, p.id, f"key {k.id} ({k.name})"
    return "project", p.id, p.id, f"project {p.id} ({p.name})"


def grant(
    amount_usd: Annotated[str, typer.Argument(help="Amount in USD, e.g. 25 or 99.50.")],
    note: Annotated[str | None, typer.Option(help="Why (shown with the grant).")] = None,
    expires_at: Annotated[str | None, typer.Option(help="When it expires: unix time or ISO date.")] = None,
    json: JsonOpt = False,
) -> None:
    """Add prepaid credit. Requests are refused once the credit is used up (the first grant turns it on)."""
    from keyplane.billing import credit
    from keyplane.billing.tiers import TierTable

    s = settings()
    body: dict[str, Any] = {"amount": _cents(amount_usd, "AMOUNT_USD"), "currency": "usd"}
    if note is not None:
        body["note"] = note
    if expires_at is not None:
        body["expires_at"] = _when(expires_at)
    table_ = TierTable(s.file.tiers, s.file.limits.tier)

    async def go(session: Any) -> Any:
        return await credit.create_grant(session, control.CLI_ACTOR, body, time.time(), table_)

    g = run_store(s, go, write=True)
    if json:
        print_json(credit.grant_object(g))
    else:
        out.print(f"granted {_usd(g.amount_cents)} of credit ({g.id})")


def balance(json: JsonOpt = False) -> None:
    """Credit granted, used (as of the last ledger flush) and available, in USD."""
    from keyplane.billing import credit, state

    s = settings()
    enforce = s.file.credit.enforce

    async def go(session: Any) -> dict[str, Any]:
        cfg = await _config(session, s)
        granted = sum(g.amount_micros for g in cfg.grants) // state.CENT
        now = time.time()
        return credit.balance_object(
            granted, cfg.credit_used(), cfg.credit_cap(now), 0, enforce if enforce is not None else bool(cfg.grants)
        )

    b = run_store(s, go)
    if json:
        print_json(b)
        return
    out.print(
        f"granted    {_usd(b['granted'])}\nused       {_usd(b['used'])}\n"
        f"expired    {_usd(b['expired'])}\navailable  {_usd(b['available'])}\n"
        f"enforced   {'yes' if b['enforced'] else 'no'}"
    )


def list_grants(json: JsonOpt = False) -> None:
    """The credit grants, oldest first."""
    from keyplane import fmt
    from keyplane.billing import credit

    async def go(session: Any) -> list[Any]:
        return await credit.grants(session)

    rows = run_store(settings(), go)
    if json:
        print_json([credit.grant_object(g) for g in rows])
        return
    table(
        "Credit grants",
        ["id", "amount", "used", "created", "expires", "note"],
        [
            (g.id, _usd(g.amount_cents), fmt.usd(g.used_micros, "up"), ts(g.created_at), ts(g.expires_at), g.note)
            for g in rows
        ],
    )


def show(project: ProjectOpt = None, key: KeyOpt = None, json: JsonOpt = False) -> None:
    """The spend limit, this month's spend and the rate limits of the organization, a project or a key."""
    s = settings()

    async def go(session: Any) -> dict[str, Any]:
        return await _show(session, s, project, key)

    d = run_store(s, go)
    if json:
        print_json(d)
        return
    lim = d["spend_limit"]
    out.print(f"[bold]{escape(str(d['label']))}[/] (usage tier {d['tier']}, month {d['period']})")
    from keyplane import fmt

    out.print(f"spent this month  {fmt.usd(d['spent_micros'], 'up')}")  # (under a cent: four decimals)
    if lim:
        status = lim["enforcement"]["status"]
        out.print(f"spend limit       {_usd(lim['threshold_amount'])} per month ({status})")
        if lim.get("resets_at"):
            out.print(f"resets            {fmt.until(time.time(), lim['resets_at'])}")
    else:
        out.print("spend limit       none")
    rows = [
        (
            r["model"],
            r["max_requests_per_1_minute"] or "-",
            r["max_tokens_per_1_minute"] or "-",
            r["max_requests_per_1_day"] or "-",
            r["max_tokens_per_1_day"] or "-",
            r["source"],
        )
        for r in d["rate_limits"]
    ]
    if rows:
        table("Rate limits (0 or -: none)", ["model", "RPM", "TPM", "RPD", "TPD", "from"], rows)


def set_(
    project: ProjectOpt = None,
    key: KeyOpt = None,
    spend_limit: Annotated[str | None, typer.Option(help="Monthly hard spend limit in USD.")] = None,
    no_spend_limit: Annotated[bool, typer.Option("--no-spend-limit", help="Remove the spend limit.")] = False,
    inactive: Annotated[bool, typer.Option("--inactive", help="Keep the spend limit without enforcing it.")] = False,
    model: Annotated[str | None, typer.Option("--model", "-m", help="Model whose rate limits to set.")] = None,
    rpm: Annotated[int | None, typer.Option(help="Requests per minute (0: no limit).", min=0)] = None,
    tpm: Annotated[int | None, typer.Option(help="Tokens per minute (0: no limit).", min=0)] = None,
    rpd: Annotated[int | None, typer.Option(help="Requests per day (0: no limit).", min=0)] = None,
    tpd: Annotated[int | None, typer.Option(help="Tokens per day (0: no limit).", min=0)] = None,
    reset: Annotated[bool, typer.Option("--reset", help="Back to the defaults for --model.")] = False,
    json: JsonOpt = False,
) -> None:
    """Set the spend limit (organization, --project or --key) and/or the rate limits of a model."""
    from keyplane.billing import ratelimits, spend

    rates = {n: v for n, v in zip(ratelimits.FIELDS, (rpm, tpm, rpd, tpd), strict=True) if v is not None}
    if spend_limit is None and not no_spend_limit and not rates and not reset:
        raise fail(
            "Nothing to set: give --spend-limit, --no-spend-limit, or --model with --rpm/--tpm/--rpd/--tpd "
            "(or --reset)."
        )
    if (rates or reset) and not model:
        raise fail("--rpm, --tpm, --rpd, --tpd and --reset need --model.")
    if (rates or reset) and not project:
        raise fail("Rate limits belong to a project or a key: give --project (and --key).")
    s = settings()
    cents = _cents(spend_limit, "--spend-limit") if spend_limit is not None else None

    async def go(session: Any) -> dict[str, Any]:
        scope, sid, pid, _label = await _scope(session, project, key)
        now = time.time()
        if cents is not None:
            body: dict[str, Any] = {"threshold_amount": cents, "currency": "USD", "interval": "month"}
            if inactive:
                body["enforcement"] = {"status": "inactive"}
            await spend.set_limit(session, control.CLI_ACTOR, scope, sid, pid, body, now)
        elif no_spend_limit:
            await spend.delete_limit(session, control.CLI_ACTOR, scope, sid, pid, now)
        if model and (rates or reset):
            if scope == "organization":
                raise fail("Rate limits belong to a project or a key.")
            cfg = await _config(session, s)
            tbl, prices = _tables(s)
            known = ratelimits.models_of(s, prices, tbl, {m for (_, _, m) in cfg.overrides})
            ratelimits.model_of(ratelimits.rl_id(model), known)
            if reset:
                await ratelimits.reset(session, control.CLI_ACTOR, scope, sid, pid or "", model, now)
            else:
                await ratelimits.update(session, control.CLI_ACTOR, scope, sid, pid or "", model, rates, now)
        await session.flush()
        return await _show(session, s, project, key, only=model)

    d = run_store(s, go, write=True)
    if json:
        print_json(d)
    else:
        out.print(f"updated the limits of {d['label']}", markup=False)


def _tables(s: Any) -> tuple[Any, Any]:
    from keyplane.billing.prices import PriceTable
    from keyplane.billing.tiers import TierTable

    return TierTable(s.file.tiers, s.file.limits.tier), PriceTable.from_config(s.file.prices, s.prices_file)


async def _config(session: Any, s: Any) -> Any:
    """The billing configuration, read in the CLI's own session."""
    from keyplane.billing import state

    tbl, _ = _tables(s)
    return await state.load_from(await session.connection(), tbl, -1)


async def _show(session: Any, s: Any, project: str | None, key: str | None, only: str | None = None) -> dict[str, Any]:
    from keyplane.billing import ratelimits, spend, state

    scope, sid, pid, label = await _scope(session, project, key)
    counter = sid  # the id its spend is counted under: a rotated key's line's first key (KeyEntry.budget_id)
    if scope == "api_key":
        counter = (await control.get_key(session, sid, pid, "project")).lineage_id or sid
    now = time.time()
    period = state.period_of(now)
    tbl, prices = _tables(s)
    cfg = await _config(session, s)
    micros = await spend.ledger_spent(session, period, scope, counter)
    row = await spend.find_limit(session, scope, sid)
    out: dict[str, Any] = {
        "scope": scope,
        "id": sid,
        "label": label,
        "tier": cfg.tier,
        "period": period,
        "spent": -(-int(micros) // state.CENT),
        "spent_micros": int(micros),
        "spend_limit": spend.limit_object(scope, row, int(micros), now) if row else None,
        "rate_limits": [],
    }
    if scope != "organization":
        models = ratelimits.models_of(s, prices, tbl, {m for (_, _, m) in cfg.overrides})
        for m in models:
            if only and m != only:
                continue
            over = cfg.overrides.get((scope, sid, m))
            base = tbl.limits(cfg.tier, m) if scope == "project" else (0, 0, 0, 0)
            if scope == "api_key" and over is None:
                continue
            obj = ratelimits.rate_limit_object(scope, m, ratelimits.merge(base, over))
            obj["source"] = "custom" if over is not None else f"tier {cfg.tier}"
            out["rate_limits"].append(obj)
    return out
