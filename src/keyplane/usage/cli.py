"""`keyplane usage`: usage and spend over a time window, per model, key or project.

Reads the SQL store directly (no server needed): the records the applier has written, which is
every request finished more than usage_apply_seconds ago on a running server.
"""

import csv
import re
import sys
import time
from typing import Annotated, Any

import typer

from keyplane.cli.common import JsonOpt, fail, out, print_json, run_store, settings

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"(\d+)([smhdw])")
_BY = {"model": "model", "key": "api_key_id", "project": "project_id"}
_BAR_WIDTH = 40
_CHART_ROWS = 20
_PARTIAL = " ▏▎▍▌▋▊▉"


def parse_duration(text: str) -> int:
    """'24h', '7d', '90m', '1h30m', '2w' -> seconds."""
    t = text.strip().lower()
    parts = _DURATION.findall(t)
    if not parts or "".join(n + u for n, u in parts) != t:
        raise ValueError(f"cannot read the duration {text!r}: use e.g. 30m, 24h, 7d, 1h30m")
    seconds = sum(int(n) * _UNITS[u] for n, u in parts)
    if seconds <= 0:
        raise ValueError("the duration must be more than 0")
    return seconds


def bar(value: float, maximum: float, width: int = _BAR_WIDTH) -> str:
    if maximum <= 0 or value <= 0:
        return ""
    eighths = round(value / maximum * width * 8)
    full, part = divmod(max(eighths, 1), 8)
    return "█" * full + (_PARTIAL[part] if part else "")


async def collect(
    session: Any, settings: Any, *, start: int, end: int, by: str, project: str | None, key: str | None
) -> list[dict[str, Any]]:
    """Rows of the report, biggest spend (then tokens) first."""
    from keyplane import control
    from keyplane.errors import not_found
    from keyplane.usage import rollups

    project_ids: tuple[str, ...] = ()
    key_ids: tuple[str, ...] = ()
    if project:
        project_ids = ((await control.find_project(session, project)).id,)
    if key:
        key_ids = tuple(await control.find_key_ids(session, key, project_ids=project_ids))
        if not key_ids:
            raise not_found(f"No key found with id or name '{key}'.")
    dim = _BY[by]
    conn = await session.connection()
    acc = await rollups.aggregate(
        conn,
        start,
        end,
        width=None,
        group_by=(dim,),
        filters=rollups.Filters(project_ids=project_ids, api_key_ids=key_ids),
        minute_cutoff=rollups.cutoffs(settings, time.time())["usage_minute"],
    )
    names: dict[str, str] = {}
    if by == "project":
        names = await control.project_names(session)
    elif by == "key":
        names = {kid: name for kid, (name, _) in (await control.key_names(session)).items()}
    rows = []
    for (_, value), s in acc.items():
        n = int(s["requests"])
        rows.append(
            {
                by: value,
                "name": names.get(value or "") if by != "model" else None,
                "requests": n,
                "errors": int(s["errors"]),
                "input_tokens": int(s["input_tokens"]),
                "cached_tokens": int(s["cached_tokens"]),
                "output_tokens": int(s["output_tokens"]),
                "cost_usd": round(s["cost_micros"] / 1e6, 6),
                "avg_latency_ms": round(s["latency_ms_sum"] / n, 1) if n else None,
            }
        )
    rows.sort(key=lambda r: (-r["cost_usd"], -(r["input_tokens"] + r["output_tokens"]), str(r[by])))
    return rows


def usage(
    project: Annotated[str | None, typer.Option("--project", "-p", help="Project id or unique name.")] = None,
    key: Annotated[str | None, typer.Option("--key", "-k", help="Key id (key_...) or name.")] = None,
    since: Annotated[str, typer.Option(help="Time window back from now: 30m, 24h, 7d, 1h30m...")] = "24h",
    by: Annotated[str, typer.Option(help="Group by model, key or project.")] = "model",
    json: JsonOpt = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="Print CSV (for spreadsheets).")] = False,
) -> None:
    """Usage and spend per model, key or project: a table and a bar chart (or --json, --csv)."""
    from rich.markup import escape
    from rich.table import Table

    from keyplane import fmt

    if by not in _BY:
        raise fail(f"--by must be one of: {', '.join(_BY)}", 2)
    if json and as_csv:
        raise fail("choose one of --json and --csv", 2)
    try:
        seconds = parse_duration(since)
    except ValueError as e:
        raise fail(str(e), 2) from None
    s = settings()
    now = time.time()
    start, end = int(now) - seconds, int(now) + 1
    rows = run_store(s, lambda session: collect(session, s, start=start, end=end, by=by, project=project, key=key))
    total = {
        f: sum(r[f] for r in rows) for f in ("requests", "errors", "input_tokens", "cached_tokens", "output_tokens")
    }
    total["cost_usd"] = round(sum(r["cost_usd"] for r in rows), 6)
    if json:
        print_json({"since": since, "start_time": start, "end_time": end, "by": by, "rows": rows, "total": total})
        return
    fields = [
        by,
        "name",
        "requests",
        "errors",
        "input_tokens",
        "cached_tokens",
        "output_tokens",
        "cost_usd",
        "avg_latency_ms",
    ]
    if as_csv:
        w = csv.writer(sys.stdout, lineterminator="\n")
        w.writerow(fields)
        for r in rows:
            w.writerow(["" if r[f] is None else r[f] for f in fields])
        return
    use_cost = total["cost_usd"] > 0

    def value(r: dict[str, Any]) -> float:
        return float(r["cost_usd"]) if use_cost else float(r["input_tokens"] + r["output_tokens"])

    def label(r: dict[str, Any]) -> str:
        name = r[by] or "-"
        return f"{r['name']} ({name})" if r.get("name") else name

    def cell(r: dict[str, Any]) -> str:
        return escape(label(r))  # a project or key name is not Rich markup

    t = Table(title=f"Usage by {by}, last {since}", title_justify="left")
    t.add_column(by, overflow="fold")  # long names fold; the numbers never get cut
    for c in ("requests", "errors", "input", "cached", "output", "cost", "avg ms"):
        t.add_column(c, justify="right", no_wrap=True)
    for r in rows:
        t.add_row(
            cell(r),
            f"{r['requests']:,}",
            f"{r['errors']:,}",
            f"{r['input_tokens']:,}",
            f"{r['cached_tokens']:,}",
            f"{r['output_tokens']:,}",
            fmt.usd_dollars(r["cost_usd"], "up"),
            "-" if r["avg_latency_ms"] is None else f"{r['avg_latency_ms']:.0f}",
        )
    if rows:
        t.add_section()
        t.add_row(
            "total",
            f"{total['requests']:,}",
            f"{total['errors']:,}",
            f"{total['input_tokens']:,}",
            f"{total['cached_tokens']:,}",
            f"{total['output_tokens']:,}",
            fmt.usd_dollars(total["cost_usd"], "up"),
            "",
        )
    out.print(t)
    if not rows:
        out.print("No usage in this window.")
        return
    # The bar chart: spend per group (tokens when nothing was priced).
    top = max(value(r) for r in rows)
    width = max(len(label(r)) for r in rows[:_CHART_ROWS])
    bar_width = max(10, min(_BAR_WIDTH, out.width - width - 16))
    out.print(f"\n[bold]{'spend' if use_cost else 'tokens'} by {by}[/]")
    for r in rows[:_CHART_ROWS]:
        shown = fmt.usd_dollars(value(r), "up") if use_cost else f"{int(value(r)):,}"
        pad = " " * (width - len(label(r)))
        out.print(
            f"{cell(r)}{pad}  [cyan]{bar(value(r), top, bar_width):<{bar_width}}[/] {shown}",
            highlight=False,
            soft_wrap=True,
        )
    if len(rows) > _CHART_ROWS:
        out.print(f"... and {len(rows) - _CHART_ROWS} more (see --json or --csv)")
