"""keyplane beside a bare Python proxy and Portkey, every guard on, in one run (issue 13's benchmark).

    .venv/bin/python bench/compare.py [--quick] [--update-docs] [--json]

One fixed-answer upstream (nginx + echo module), one load generator (wrk, one thread), each target one
process: direct (nginx alone), the bare no-logic Python proxy (bench/bare_proxy.py), keyplane as shipped
(`keyplane init`, `keyplane serve`: tier rate limits raised through the admin API but enforced, the
default kill-switch rules, a project spend limit and a credit grant set high but enforced, the usage
journal, its applier, metrics and the access log on) and Portkey (npm, skipped when npm is missing).
Interleaved rounds measure p50 at 1 connection, req/s at 32 and CPU per request (the process's CPU
over the 32-connection run and the 5 s after it, background work included); then a sustained
32-connection run per proxy measures RSS over time, the usage journal's lag and event-loop stalls.
The floors of issue 13 are printed met / not met; exit 0 only when all are met.
Environment: BENCH_SECONDS (sustained run, default 60), BENCH_ROUNDS (default 3), BENCH_ROUND_SECONDS
(each wrk measurement of a round, default 8). docs/benchmarks.md explains every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DOCS = ROOT / "docs" / "benchmarks.md"
BIN = Path(sys.executable).parent
PEERS = Path("/tmp/peers")
PORTKEY = "@portkey-ai/gateway@1.15.2"
ECHO_MODULE = Path("/usr/lib/nginx/modules/ngx_http_echo_module.so")
UPSTREAM_KEY = "sk-up"
BARE_HTTP1 = "bare proxy, keyplane's client"  # measured in the rounds only: not a floor's yardstick
TAIL_SECONDS = 5.0  # CPU per request counts the process's CPU for this long after the load stops
RAISED = 10**12  # rate limits: raised, still enforced (0 would mean "no limit")
sys.path.insert(0, str(HERE))
import revocation  # noqa: E402
from compare_kit import Processes, call, keyplane_home, longest_stall, rss_mb, wait_up  # noqa: E402
from floors import Figures, floors, markdown_table  # noqa: E402
from proxy_bench import cpu_seconds, free_port, machine, peak_rss_mb  # noqa: E402


@dataclass
class Target:
    name: str
    url: str  # the chat completions URL wrk posts to
    key: str
    headers: str = ""  # "k: v|k: v"
    pid: int | None = None
    loop_file: Path | None = None
    admin: tuple[str, str] | None = None  # keyplane: (base URL, admin key)
    rounds: list[dict[str, float]] = field(default_factory=list)
    sustained: dict[str, float] = field(default_factory=dict)


# --- the targets ---------------------------------------------------------------------------------


def ensure_tools() -> None:
    if shutil.which("wrk") and shutil.which("nginx") and ECHO_MODULE.exists():
        return
    print("installing wrk and nginx (apt-get)...", flush=True)
    subprocess.run(
        "apt-get update -qq && apt-get install -y -qq wrk nginx libnginx-mod-http-echo",
        shell=True,
        capture_output=True,
        check=False,
    )
    if not (shutil.which("wrk") and shutil.which("nginx") and ECHO_MODULE.exists()):
        raise SystemExit("wrk, nginx and its echo module are needed: apt-get install wrk nginx libnginx-mod-http-echo")


def start_nginx(ps: Processes) -> Target:
    port = free_port()
    conf = ps.folder / "nginx.conf"
    conf.write_text(
        (HERE / "upstream-nginx.conf").read_text().replace("@PORT@", str(port)).replace("@DIR@", str(ps.folder))
    )
    p = ps.start(["nginx", "-c", str(conf)], "nginx.log")
    base = f"http://127.0.0.1:{port}"
    wait_up(base + "/v1/models", p)
    return Target("direct", base + "/v1/chat/completions", UPSTREAM_KEY, pid=p.pid)


def start_bare(ps: Processes, upstream: str, client: str = "aiohttp") -> Target:
    """The bare proxy; ``client="http1"``: the same on keyplane's upstream client (bench/bare_proxy.py)."""
    suffix = "" if client == "aiohttp" else f"-{client}"
    port, loop_file = free_port(), ps.folder / f"loop-bare{suffix}.txt"
    env = {**os.environ, "BENCH_UPSTREAM": upstream, "BENCH_CLIENT": client}
    p = ps.start(
        [sys.executable, str(HERE / "loopmon.py"), "bare", "--port", str(port), "--loop-file", str(loop_file)],
        f"bare{suffix}.log",
        env,
    )
    wait_up(f"http://127.0.0.1:{port}/", p)
    name = "bare Python proxy" if client == "aiohttp" else BARE_HTTP1
    return Target(name, f"http://127.0.0.1:{port}/v1/chat/completions", "x", pid=p.pid, loop_file=loop_file)


def start_keyplane(ps: Processes, upstream: str, notes: list[str], settings: dict[str, str] | None = None) -> Target:
    """keyplane as shipped, every guard on (``settings``: KEYPLANE_* variables, a fleet's store)."""
    env, info = keyplane_home(ps, "kp-home", upstream, "BENCH_UPSTREAM_KEY", settings)
    env["BENCH_UPSTREAM_KEY"] = UPSTREAM_KEY
    port, loop_file = free_port(), ps.folder / "loop-keyplane.txt"
    p = ps.start(
        [sys.executable, str(HERE / "loopmon.py"), "keyplane", "--port", str(port), "--loop-file", str(loop_file)],
        "keyplane.log",
        env,
    )
    base, admin, project = f"http://127.0.0.1:{port}", info["admin_key"], info["project_id"]
    wait_up(base + "/healthz", p)
    org = base + "/v1/organization"
    _, limits, _ = call(f"{org}/projects/{project}/rate_limits?limit=1000", admin)
    for rl in limits["data"]:
        status, _, _ = call(
            f"{org}/projects/{project}/rate_limits/{rl['id']}",
            admin,
            {
                "max_requests_per_1_minute": RAISED,
                "max_tokens_per_1_minute": RAISED,
                "max_requests_per_1_day": RAISED,
                "max_tokens_per_1_day": RAISED,
            },
        )
        assert status == 200, f"raising rate limit {rl['id']}: {status}"
    status, spend, _ = call(
        f"{org}/projects/{project}/spend_limit",
        admin,
        {"currency": "USD", "interval": "month", "threshold_amount": 10**10},
    )
    assert status == 200 and spend["enforcement"]["status"] == "enforcing", f"spend limit: {status} {spend}"
    status, grant, _ = call(f"{org}/credit_grants", admin, {"amount": 10**9, "currency": "usd"})
    assert status == 200, f"credit grant: {status} {grant}"
    _, rules, _ = call(f"{org}/guard/rules", admin)
    active = [r["name"] for r in rules.get("data", []) if r.get("enabled", True) and not r.get("dry_run")]
    target = Target(
        "keyplane", base + "/v1/chat/completions", info["api_key"], pid=p.pid, loop_file=loop_file, admin=(base, admin)
    )
    deadline = time.monotonic() + 10  # the admin changes reach the snapshot (bus or poll)
    while True:
        status, _, headers = call(
            target.url,
            target.key,
            {"model": "gpt-4o-mini", "max_tokens": 32, "messages": [{"role": "user", "content": "Say hello."}]},
        )
        limit = {k.lower(): v for k, v in headers.items()}.get("x-ratelimit-limit-requests")
        if status == 200 and limit == str(RAISED):
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"keyplane probe: {status}, x-ratelimit-limit-requests {limit}")
        time.sleep(0.3)
    notes.append(
        f"keyplane guards: rate limits {len(limits['data'])} model(s) raised to {RAISED:,} and enforced "
        f"(x-ratelimit-limit-requests {limit}); project spend limit ${10**8:,} enforcing; credit grant "
        f"${10**7:,}; kill-switch rules active: {', '.join(active) or 'none'}; journal, applier, "
        "metrics and access log as shipped"
    )
    return target


def start_portkey(ps: Processes, upstream: str, notes: list[str]) -> Target | None:
    start = PEERS / "portkey/node_modules/@portkey-ai/gateway/build/start-server.js"
    if not start.exists():
        if not (shutil.which("npm") and shutil.which("node")):
            notes.append("Portkey skipped: npm/node not available (its floor is then not measured)")
            return None
        (PEERS / "portkey").mkdir(parents=True, exist_ok=True)
        subprocess.run(
            f"npm init -y >/dev/null && npm install -s {PORTKEY}",
            shell=True,
            cwd=PEERS / "portkey",
            capture_output=True,
            check=False,
        )
        if not start.exists():
            notes.append(f"Portkey skipped: `npm install {PORTKEY}` failed")
            return None
    port = free_port()
    p = ps.start(["node", str(start), f"--port={port}", "--headless"], "portkey.log")
    wait_up(f"http://127.0.0.1:{port}/", p)
    return Target(
        "Portkey 1.15.2",
        f"http://127.0.0.1:{port}/v1/chat/completions",
        UPSTREAM_KEY,
        pid=p.pid,
        headers=f"x-portkey-provider: openai|x-portkey-custom-host: {upstream}/v1",
    )


# --- measuring -----------------------------------------------------------------------------------


def wrk(t: Target, connections: int, seconds: float) -> dict[str, float]:
    env = {**os.environ, "KP_KEY": t.key, "KP_HDRS": t.headers}
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "-s", str(HERE / "chat.lua"), t.url],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout
    d = json.loads(next(ln for ln in out.splitlines() if ln.startswith("WRKJSON "))[len("WRKJSON ") :])
    return {
        "p50_ms": d["p50"] / 1000,
        "p99_ms": d["p99"] / 1000,
        "rps": d["requests"] / (d["duration"] / 1e6),
        "requests": d["requests"],
        "errors": d["errors"] + d["non2xx"],
    }


def one_round(t: Target, seconds: float) -> None:
    c1 = wrk(t, 1, seconds)
    cpu0 = cpu_seconds(t.pid)
    c32 = wrk(t, 32, seconds)
    time.sleep(TAIL_SECONDS)  # background work the load left behind (journal applier, ledger, GC)
    cpu = cpu_seconds(t.pid) - cpu0
    t.rounds.append(
        {
            "p50_ms": c1["p50_ms"],
            "p99_ms": c1["p99_ms"],
            "rps_32": c32["rps"],
            "cpu_us": cpu * 1e6 / max(1, c32["requests"]),
            "errors": c1["errors"] + c32["errors"],
        }
    )


def journal_lag(t: Target) -> float | None:
    """keyplane_usage_journal_lag_records from /metrics (a scrape flushes it first), or None."""
    if t.admin is None:
        return None
    status, text, _ = call(t.admin[0] + "/metrics", t.admin[1])
    m = re.search(r"^keyplane_usage_journal_lag_records (\S+)$", str(text), re.M) if status == 200 else None
    return float(m.group(1)) if m else None


def journal_age(t: Target) -> float | None:
    """keyplane_usage_journal_lag_seconds (the oldest unapplied record's age) from /metrics, or None."""
    if t.admin is None:
        return None
    status, text, _ = call(t.admin[0] + "/metrics", t.admin[1])
    m = re.search(r"^keyplane_usage_journal_lag_seconds (\S+)$", str(text), re.M) if status == 200 else None
    return float(m.group(1)) if m else None


def metric_sum(t: Target, name: str) -> float:
    assert t.admin is not None
    _, text, _ = call(t.admin[0] + "/metrics", t.admin[1])
    return sum(float(m.group(1)) for m in re.finditer(rf"^{name}(?:{{[^}}]*}})? (\S+)$", str(text), re.M))


def sustained(t: Target, seconds: float) -> None:
    """32 connections for ``seconds``: RSS and journal lag sampled every second, then the drain."""
    samples: list[tuple[float, float, float | None]] = []  # (seconds since start, RSS MB, lag records)
    ages: list[float] = []  # keyplane_usage_journal_lag_seconds samples
    stop = threading.Event()
    t0 = time.monotonic()

    def sample() -> None:
        while not stop.wait(1.0 - (time.monotonic() - t0) % 1.0):
            samples.append((time.monotonic() - t0, rss_mb(t.pid), journal_lag(t)))
            age = journal_age(t)
            if age is not None:
                ages.append(age)

    sampler = threading.Thread(target=sample, daemon=True)
    wall0 = time.time()
    sampler.start()
    run = wrk(t, 32, seconds)
    stop.set()
    sampler.join()
    end_lag = journal_lag(t)
    drain = 0.0
    while end_lag and drain < 30:  # how long the applier needs to catch up once the load stops
        time.sleep(0.1)
        drain += 0.1
        end_lag = journal_lag(t)
    time.sleep(max(0.0, TAIL_SECONDS - drain))
    half = min(samples, key=lambda s: abs(s[0] - seconds / 2)) if samples else (0, float("nan"), None)
    last = max((s for s in samples if s[0] <= seconds + 0.5), key=lambda s: s[0], default=half)
    lags = [s[2] for s in samples if s[2] is not None]
    t.sustained = {
        "seconds": seconds,
        "rps": run["rps"],
        "errors": run["errors"],
        "rss_half": half[1],
        "rss_end": last[1],
        "half_s": half[0],
        "end_s": last[0],
        "peak_rss": peak_rss_mb(t.pid or 0),
    }
    if lags:
        t.sustained.update(lag_end=last[2] or 0.0, lag_max=max(lags), drain_s=drain)
    if ages:
        t.sustained["lag_age_max"] = max(ages)
    stall = longest_stall(t.loop_file, wall0, time.time())
    if stall is not None:
        t.sustained["stall_ms"] = stall


def figures(t: Target) -> Figures:
    r = t.rounds
    return Figures(
        name=t.name,
        p50_ms=min(x["p50_ms"] for x in r),
        rps_32=max(x["rps_32"] for x in r),
        cpu_us=min(x["cpu_us"] for x in r),
        errors=int(sum(x["errors"] for x in r)),
        sustained=dict(t.sustained),
    )


def run(
    rounds: int, round_s: float, sustain_s: float, warm_s: float, skip_revocation: bool
) -> tuple[list[Figures], dict[str, float] | None, list[str]]:
    ensure_tools()
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="kp-compare-") as tmp:
        ps = Processes(Path(tmp))
        try:
            direct = start_nginx(ps)
            upstream = direct.url.rsplit("/v1/", 1)[0]
            targets = [direct, start_bare(ps, upstream), start_keyplane(ps, upstream, notes)]
            portkey = start_portkey(ps, upstream, notes)
            targets += [portkey] if portkey else []
            targets.append(start_bare(ps, upstream, "http1"))
            for t in targets:
                wrk(t, 8, warm_s)
            for i in range(rounds):
                for t in targets:
                    one_round(t, round_s)
                print(f"round {i + 1}/{rounds} done", flush=True)
            for t in targets[1:]:
                if t.name == BARE_HTTP1:
                    continue
                sustained(t, sustain_s)
                print(f"sustained run of {t.name} done", flush=True)
            revoke = None if skip_revocation else revocation.measure(ps, upstream, UPSTREAM_KEY)
            kp = targets[2]
            cost = metric_sum(kp, "keyplane_cost_usd_total")
            notes.append(
                f"keyplane priced its requests: keyplane_cost_usd_total = ${cost:.4f} at the end"
                if cost > 0
                else "WARNING: keyplane recorded no cost (the benchmark model was not priced)"
            )
        except BaseException:
            for log in sorted(Path(tmp).glob("*.log")):
                print(f"--- {log.name} (last lines)\n" + "\n".join(log.read_text(errors="replace").splitlines()[-15:]))
            raise
        finally:
            ps.stop_all()
    return [figures(t) for t in targets], revoke, notes


def update_docs(text: str) -> None:
    start, end = "<!-- compare:start -->", "<!-- compare:end -->"
    doc = DOCS.read_text()
    if start not in doc:
        raise SystemExit(f"{DOCS} has no {start} marker")
    head, rest = doc.split(start, 1)
    DOCS.write_text(f"{head}{start}\n{text}\n{end}{rest.split(end, 1)[1]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--quick", action="store_true", help="smoke check: 1 round of 2 s, a 10 s sustained run")
    ap.add_argument("--update-docs", action="store_true", help="write the table into docs/benchmarks.md")
    ap.add_argument("--no-revocation", action="store_true", help="skip the revocation run (50,000 keys)")
    ap.add_argument("--json", action="store_true", help="print the raw figures as JSON too")
    a = ap.parse_args()
    rounds = int(os.environ.get("BENCH_ROUNDS", "1" if a.quick else "3"))
    round_s = float(os.environ.get("BENCH_ROUND_SECONDS", "2" if a.quick else "8"))
    sustain_s = float(os.environ.get("BENCH_SECONDS", "10" if a.quick else "60"))
    m = machine()
    began = time.monotonic()
    rows, revoke, notes = run(rounds, round_s, sustain_s, 1 if a.quick else 2, a.no_revocation)
    checks = floors(rows, revoke)
    text = markdown_table(rows, checks, notes, m, rounds, round_s, sustain_s, time.monotonic() - began, a.quick)
    print("\n" + text)
    if a.json:
        print(json.dumps({"machine": m, "rows": [r.__dict__ for r in rows], "revocation": revoke, "notes": notes}))
    if a.update_docs:
        update_docs(text)
        print(f"\nwrote {DOCS.relative_to(ROOT)}")
    sys.exit(0 if all(c.met for c in checks) else 1)


if __name__ == "__main__":
    main()
