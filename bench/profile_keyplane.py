"""Profile keyplane as compare.py runs it (every guard on) under wrk, with py-spy, threads included.

    .venv/bin/python bench/profile_keyplane.py [--seconds 20] [--out /tmp/kp-profile]

Starts nginx (the fixed-answer upstream) and keyplane exactly as bench/compare.py does, warms it up,
then runs compare.py's sustained 32-connection run (RSS and journal lag sampled) while ``py-spy
record`` samples the process (every thread: the serving loop, the usage applier, aiosqlite's threads).
Writes a speedscope profile and a flat "top" summary of each thread's own and cumulative time per
function, and each thread's CPU per request (from /proc: the serving loop against the applier's and
SQLite's threads). ``--no-spy`` measures only that, without the sampler's overhead. ``--connections 1``
profiles the load of the added-p50 measurement instead (a plain wrk run: p50 and p99 reported). ``--fleet``
runs keyplane as one instance of a fleet: its store on PostgreSQL (a database of its own, made for the run
and dropped after it, on the server of BENCH_PG, default postgresql://postgres@127.0.0.1:5432/test) and its
limits, budgets and bus on Redis (BENCH_REDIS, default redis://127.0.0.1:6379/0, keys under a prefix of the
run's own, deleted after it). Needs py-spy (`.venv/bin/pip install py-spy`) and the same tools as compare.py
(wrk, nginx with the echo module).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import compare  # noqa: E402
from compare_kit import Processes, fleet_store  # noqa: E402
from proxy_bench import cpu_seconds  # noqa: E402


def summarize(speedscope: Path, top: int) -> str:
    """Self and total time per frame, per thread, from py-spy's speedscope output."""
    doc = json.loads(speedscope.read_text())
    frames = doc["shared"]["frames"]
    out: list[str] = []
    for prof in doc["profiles"]:
        total = len(prof["samples"]) or 1  # py-spy's weights are seconds: count samples instead
        own: collections.Counter[int] = collections.Counter()
        cum: collections.Counter[int] = collections.Counter()
        for stack in prof["samples"]:
            w = 1
            if stack:
                own[stack[-1]] += w
            for f in set(stack):
                cum[f] += w
        if total < 20:
            continue

        def name(i: int) -> str:
            f = frames[i]
            file = str(f.get("file", "")).split("site-packages/")[-1].split("src/")[-1]
            return f"{f['name']} ({file}:{f.get('line', '')})"

        out.append(f"\n== {prof['name']}: {total} samples")
        out.append("-- own time")
        out += [f"{100 * w / total:5.1f}%  {name(i)}" for i, w in own.most_common(top)]
        out.append("-- total time")
        out += [f"{100 * w / total:5.1f}%  {name(i)}" for i, w in cum.most_common(top)]
    return "\n".join(out)


def thread_cpu(pid: int) -> dict[int, tuple[str, float]]:
    """{thread id: (name, CPU seconds)} of every thread of ``pid``, from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[int, tuple[str, float]] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
            name = (task / "comm").read_text().strip()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        out[int(task.name)] = (name, (int(fields[11]) + int(fields[12])) / tick)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    ap.add_argument("--top", type=int, default=40)
    ap.add_argument("--out", default="/tmp/kp-profile")
    ap.add_argument("--bare", action="store_true", help="profile the bare Python proxy instead (the yardstick)")
    ap.add_argument("--no-spy", action="store_true", help="only each thread's CPU per request (no sampling overhead)")
    ap.add_argument(
        "--connections",
        type=int,
        default=32,
        help="wrk's connections: 32 is compare.py's sustained run (RSS and journal lag sampled); any other number "
        "a plain wrk run (1: the added-p50 measurement's load)",
    )
    ap.add_argument(
        "--fleet",
        action="store_true",
        help="keyplane as a fleet instance: its store on PostgreSQL (BENCH_PG) and its limits on Redis (BENCH_REDIS)",
    )
    args = ap.parse_args()
    if args.connections < 1:
        ap.error("--connections must be at least 1")
    if args.fleet and args.bare:
        ap.error("--fleet is keyplane's store: not with --bare")
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not args.no_spy and not Path(spy).exists():
        raise SystemExit("py-spy is needed: .venv/bin/pip install py-spy")
    compare.ensure_tools()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    with (
        tempfile.TemporaryDirectory(prefix="kp-profile-") as tmp,
        fleet_store() if args.fleet else contextlib.nullcontext({}) as settings,
    ):
        ps = Processes(Path(tmp))
        try:
            direct = compare.start_nginx(ps)
            up = direct.url.rsplit("/v1/", 1)[0]
            t = compare.start_bare(ps, up) if args.bare else compare.start_keyplane(ps, up, notes, settings)
            compare.wrk(t, 32, 5)  # warm-up
            time.sleep(3)
            prof = out / "keyplane.speedscope.json"
            spy_p = (
                None
                if args.no_spy
                else subprocess.Popen(
                    [
                        spy,
                        "record",
                        "--pid",
                        str(t.pid),
                        "--rate",
                        str(args.rate),
                        "--format",
                        "speedscope",
                        "--threads",
                        "--nonblocking",
                        "--output",
                        str(prof),
                        "--duration",
                        str(int(args.seconds + 5)),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
            time.sleep(0.5)
            cpu0 = cpu_seconds(t.pid)
            threads0 = thread_cpu(t.pid)
            if args.connections == 32:
                compare.sustained(t, args.seconds)  # 32 connections; samples RSS and the journal's lag
                r = t.sustained
            else:
                r = compare.wrk(t, args.connections, args.seconds)
            threads1 = thread_cpu(t.pid)
            cpu = cpu_seconds(t.pid) - cpu0
            if spy_p is not None:
                spy_p.wait(timeout=60)
            requests = r["rps"] * args.seconds
            head = (
                f"{r['rps']:.0f} req/s at {args.connections} connections, {r['errors']:.0f} errors; CPU per request "
                f"incl. the drain and 5 s after: {cpu * 1e6 / max(1, requests):.0f} us; "
            )
            if args.connections == 32:
                head += (
                    f"journal lag max {r.get('lag_max', 0):.0f} records ({r.get('lag_max', 0) / max(1, r['rps']):.2f}"
                    f" s), oldest {r.get('lag_age_max', 0):.2f} s, drained {r.get('drain_s', 0):.1f} s after; peak "
                    f"RSS {r['peak_rss']:.0f} MB; longest loop stall {r.get('stall_ms', float('nan')):.0f} ms"
                )
            else:
                head += f"p50 {r['p50_ms']:.3f} ms, p99 {r['p99_ms']:.3f} ms"
            used = {k: (name, cpu1 - threads0.get(k, (name, 0.0))[1]) for k, (name, cpu1) in threads1.items()}
            per_thread = "\n".join(
                f"  thread {k} ({name}): {s * 1e6 / max(1, requests):.0f} us/request"
                for k, (name, s) in sorted(used.items())
                if s > 0.05
            )
            head += "\nCPU per request by thread (the sustained run and its drain):\n" + per_thread
            text = head + ("" if spy_p is None else "\n" + summarize(prof, args.top))
            (out / "summary.txt").write_text(text)
            print(text)
            print(f"\nspeedscope profile: {prof} (open at https://www.speedscope.app)")
        finally:
            ps.stop_all()


if __name__ == "__main__":
    main()
