"""Issue 13's floors over bench/compare.py's figures, and the report (markdown, also printed)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

RSS_GROWTH_MB = 1.0  # "no growth" between the middle and the end of the sustained run, within this much
NAMES = ("direct", "bare Python proxy", "keyplane")


@dataclass
class Figures:
    name: str
    p50_ms: float  # best p50 at 1 connection over the rounds
    rps_32: float  # best req/s at 32 connections over the rounds
    cpu_us: float  # lowest CPU per request over the rounds (the 32-connection run + the tail after it)
    errors: int  # non-2xx answers and socket errors, all rounds
    sustained: dict[str, float] = field(default_factory=dict)


@dataclass
class Check:
    floor: str
    value: str
    met: bool


def _lag_s(kp: Figures) -> float | None:
    s = kp.sustained
    by_count = s["lag_max"] / s["rps"] if "lag_max" in s and s.get("rps") else None
    if by_count is None or "lag_age_max" not in s:
        return by_count
    return max(by_count, s["lag_age_max"])  # the oldest waiting record's age, measured (the stricter)


def floors(rows: list[Figures], revoke: dict[str, float] | None) -> list[Check]:
    by = {r.name: r for r in rows}
    d, bare, kp = (by[n] for n in NAMES)
    pk = next((r for r in rows if r.name.startswith("Portkey")), None)
    added, bare_added = kp.p50_ms - d.p50_ms, bare.p50_ms - d.p50_ms
    s = kp.sustained
    growth = s["rss_end"] - s["rss_half"]
    lag_s = _lag_s(kp)
    ratio = f"{added / bare_added:.2f}x" if bare_added > 0 else "-"
    out = [
        Check(
            "req/s at 32 connections >= 0.5x the bare proxy's",
            f"{kp.rps_32:,.0f} vs {bare.rps_32:,.0f}: {kp.rps_32 / bare.rps_32:.2f}x",
            kp.rps_32 >= 0.5 * bare.rps_32,
        ),
        Check(
            "req/s at 32 connections >= 4x Portkey's",
            f"{kp.rps_32:,.0f} vs {pk.rps_32:,.0f}: {kp.rps_32 / pk.rps_32:.2f}x" if pk else "Portkey not measured",
            bool(pk and kp.rps_32 >= 4 * pk.rps_32),
        ),
        Check(
            "added p50 at 1 connection <= 1.5x the bare proxy's",
            f"{added:.3f} ms vs {bare_added:.3f} ms: {ratio}",
            added <= 1.5 * bare_added,
        ),
        Check(
            "CPU per request, background included, <= 3x the bare proxy's",
            f"{kp.cpu_us:.0f} us vs {bare.cpu_us:.0f} us: {kp.cpu_us / bare.cpu_us:.2f}x",
            kp.cpu_us <= 3 * bare.cpu_us,
        ),
        Check("peak RSS <= 150 MB", f"{s['peak_rss']:.0f} MB", s["peak_rss"] <= 150),
        Check(
            f"no RSS growth between the {s['half_s']:.0f}th and the {s['end_s']:.0f}th second "
            f"(within {RSS_GROWTH_MB:g} MB)",
            f"{s['rss_half']:.1f} -> {s['rss_end']:.1f} MB ({growth:+.1f})",
            growth <= RSS_GROWTH_MB,
        ),
        Check(
            "usage journal never more than 2 s behind at the sustained rate",
            f"at most {s['lag_max']:,.0f} records = {s['lag_max'] / s['rps']:.2f} s at {s['rps']:,.0f} req/s, "
            f"oldest record {s.get('lag_age_max', float('nan')):.2f} s; "
            f"caught up {s['drain_s']:.1f} s after the load"
            if lag_s is not None
            else "lag not exposed",
            lag_s is not None and lag_s <= 2,
        ),
        _revocation(revoke),
        Check(
            "every request through keyplane answered 200 (else the figures mean nothing)",
            f"{kp.errors + int(s.get('errors', 0))} errors",
            kp.errors + s.get("errors", 0) == 0,
        ),
    ]
    return out


def _revocation(r: dict[str, float] | None) -> Check:
    name = "a revocation with 50,000 keys in the store refused on every instance within 1 s, no loop stall over 20 ms"
    if r is None:
        return Check(name, "not measured (--no-revocation)", False)
    stall = r.get("stall_ms")
    value = (
        f"{r['keys']:,.0f} keys, {r['instances']:.0f} instance (single node; a fleet: bench/revocation.py --fleet): "
        f"refused after {r['refused_s']:.3f} s, longest loop stall "
        + (f"{stall:.1f} ms" if stall is not None else "not measured")
    )
    return Check(name, value, r["refused_s"] <= 1 and stall is not None and stall <= 20)


def _f(v: float | None, fmt: str, unit: str = "") -> str:
    return "-" if v is None or v != v else f"{v:{fmt}}{unit}"


def markdown_table(
    rows: list[Figures],
    checks: list[Check],
    notes: list[str],
    m: dict[str, Any],
    rounds: int,
    round_s: float,
    sustain_s: float,
    took: float,
    quick: bool,
) -> str:
    d = rows[0]
    lines = [
        "| target | added p50 @1 conn | req/s @32 conn | CPU per request (incl. background) | peak RSS "
        f"| RSS @{sustain_s / 2:g} s -> @{sustain_s:g} s | journal lag at end (max) | longest loop stall "
        "| errors |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        s = r.sustained
        added = "-" if r is d else f"{r.p50_ms - d.p50_ms:.3f} ms"
        lag = "-"
        if "lag_max" in s:
            lag = f"{s['lag_end']:,.0f} ({s['lag_max']:,.0f}) records = {s['lag_max'] / s['rps']:.2f} s max"
        rss = f"{s['rss_half']:.0f} -> {s['rss_end']:.0f} MB" if s else "-"
        cpu = f"{r.cpu_us:.0f} us" + (" (nginx itself)" if r is d else "")
        lines.append(
            f"| {r.name} | {added} (p50 {r.p50_ms:.3f} ms) | {r.rps_32:,.0f} | {cpu} | "
            f"{_f(s.get('peak_rss'), '.0f', ' MB')} | {rss} | {lag} | {_f(s.get('stall_ms'), '.1f', ' ms')} "
            f"| {r.errors + int(s.get('errors', 0))} |"
        )
    lines += ["", "| floor (issue 13) | this run | |", "|---|---|---|"]
    lines += [f"| {c.floor} | {c.value} | {'met' if c.met else '**not met**'} |" for c in checks]
    lines += [""] + [f"- {n}" for n in notes]
    by = {r.name: r for r in rows}
    same = by.get("bare proxy, keyplane's client")
    if same is not None and "keyplane" in by and same.rps_32 > 0:
        kp = by["keyplane"]
        lines.append(
            "- keyplane forwards on its own HTTP/1.1 client (keyplane/proxy/http1.py), the bare proxy on aiohttp's, "
            'as issue 13 defines it; the row "bare proxy, keyplane\'s client" is the same no-logic hop on '
            f"keyplane's client: keyplane serves {kp.rps_32 / same.rps_32:.2f}x its req/s at 32 connections and "
            f"adds {kp.p50_ms - same.p50_ms:.3f} ms to its p50 (what keyplane's checks, metering and logs cost "
            "over the same hop)."
        )
    lines.append(
        f"- Machine: {m['cpus']} CPUs ({m['cpu']}), Python {m['python']}; {rounds} interleaved round(s) of "
        f"{round_s:g} s per wrk measurement (best of the rounds), then a {sustain_s:g} s sustained run per "
        f"proxy; took {took / 60:.1f} min; measured {time.strftime('%Y-%m-%d %H:%M')}; 1-minute load "
        f"average at the start {m['load_before']:.2f}"
        + (" (--quick: a smoke check, not figures to quote)" if quick else "")
        + "."
    )
    lines.append(f"- Floors: {sum(c.met for c in checks)} of {len(checks)} met.")
    return "\n".join(lines)
