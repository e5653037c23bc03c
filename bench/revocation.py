"""Revocation with 50,000 keys in the store, for bench/compare.py (issue 13's last floor).

A separate keyplane (`keyplane init`, then 50,000 more service-account keys written straight into its
store before it starts, so its snapshot holds them all). A thread per instance sends a chat completion with
the victim key every few milliseconds; the key is revoked through the admin API of the first instance
(`POST /v1/organization/api_keys/{id}/revoke`); the figure is the time from sending the revocation to the
first refusal on the last instance to refuse, and the longest event-loop stall (bench/loopmon.py) of any
instance from the revocation until 2 s after the refusal (the snapshot's update included).

compare.py measures one instance on SQLite. ``python bench/revocation.py --fleet [--instances 2]`` measures a
fleet: the instances on one PostgreSQL database and one Redis (bench/compare_kit.py ``fleet_store``: BENCH_PG,
BENCH_REDIS), the revocation reaching the others over the invalidation bus; it needs nginx with the echo module
as compare.py does.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from compare_kit import Processes, call, fleet_store, keyplane_home, longest_stall, wait_up
from proxy_bench import free_port

HERE = Path(__file__).resolve().parent
KEYS = 50_000
BODY = {"model": "gpt-4o-mini", "max_tokens": 32, "messages": [{"role": "user", "content": "Say hello."}]}


def _copies(template: dict[str, Any], n: int) -> list[dict[str, Any]]:
    """n copies of a key row, each with its own id, name and digest (no value opens them)."""
    return [
        {
            **template,
            "id": f"key_bench{i:07d}{secrets.token_hex(4)}",
            "name": f"bench-{i}",
            "digest": secrets.token_hex(32),
            "last_used_at": None,
        }
        for i in range(n)
    ]


def seed_keys(db_path: Path, n: int) -> None:
    """n copies of init's service-account key in a SQLite store."""
    db = sqlite3.connect(db_path)
    try:
        cols = [r[1] for r in db.execute("PRAGMA table_info(api_keys)") if r[1] != "seq"]
        template = dict(
            zip(
                cols,
                db.execute(f"SELECT {', '.join(cols)} FROM api_keys WHERE kind = 'svc' LIMIT 1").fetchone(),
                strict=True,
            )
        )
        rows = _copies(template, n)
        db.executemany(f"INSERT INTO api_keys ({', '.join(cols)}) VALUES ({', '.join(':' + c for c in cols)})", rows)
        db.commit()
    finally:
        db.close()


def seed_keys_pg(url: str, n: int) -> None:
    """n copies of init's service-account key in a PostgreSQL store."""
    import asyncpg

    async def seed() -> None:
        conn = await asyncpg.connect(url)
        try:
            row = await conn.fetchrow("SELECT * FROM api_keys WHERE kind = 'svc' LIMIT 1")
            template = {k: v for k, v in dict(row).items() if k != "seq"}
            cols = list(template)
            rows = _copies(template, n)
            await conn.executemany(
                f"INSERT INTO api_keys ({', '.join(cols)}) VALUES ({', '.join(f'${i + 1}' for i in range(len(cols)))})",
                [tuple(r[c] for c in cols) for r in rows],
            )
        finally:
            await conn.close()

    asyncio.run(seed())


def measure(
    ps: Processes, upstream: str, upstream_key: str, settings: dict[str, str] | None = None, instances: int = 1
) -> dict[str, float]:
    """The revocation run: ``instances`` keyplanes on one store (``settings``: a fleet's KEYPLANE_* variables;
    without them, one instance on SQLite)."""
    env, info = keyplane_home(ps, "kp-revoke", upstream, "BENCH_UPSTREAM_KEY", settings)
    env["BENCH_UPSTREAM_KEY"] = upstream_key
    if settings and settings.get("KEYPLANE_DATABASE_URL"):
        seed_keys_pg(settings["KEYPLANE_DATABASE_URL"], KEYS)
    else:
        seed_keys(Path(env["KEYPLANE_HOME"]) / "keyplane.db", KEYS)
    bases: list[str] = []
    loop_files: list[Path] = []
    for i in range(instances):
        port, loop_file = free_port(), ps.folder / f"loop-revoke-{i}.txt"
        p = ps.start(
            [sys.executable, str(HERE / "loopmon.py"), "keyplane", "--port", str(port), "--loop-file", str(loop_file)],
            f"keyplane-revoke-{i}.log",
            env,
        )
        bases.append(f"http://127.0.0.1:{port}")
        loop_files.append(loop_file)
        wait_up(bases[-1] + "/healthz", p, 120)
    victim = info["api_key"]
    for base in bases:
        status, _, _ = call(base + "/v1/chat/completions", victim, BODY)
        if status != 200:
            raise RuntimeError(f"revocation run: the victim key answered {status} before the revocation")
    time.sleep(3)  # past the start-up's own stalls
    refused: dict[int, float] = {}
    stop = threading.Event()

    def probe(i: int) -> None:
        url = bases[i] + "/v1/chat/completions"
        while not stop.is_set():
            if call(url, victim, BODY)[0] == 401:
                refused[i] = time.monotonic()
                return
            time.sleep(0.002)

    probers = [threading.Thread(target=probe, args=(i,), daemon=True) for i in range(instances)]
    for t in probers:
        t.start()
    time.sleep(0.5)
    wall0, sent = time.time(), time.monotonic()
    status, _, _ = call(
        f"{bases[0]}/v1/organization/api_keys/{info['api_key_id']}/revoke",
        info["admin_key"],
        {"reason": "bench: revocation with 50,000 keys"},
    )
    if status != 200:
        raise RuntimeError(f"revocation run: the admin API answered {status}")
    deadline = time.monotonic() + 10
    for t in probers:
        t.join(max(0.0, deadline - time.monotonic()))
    stop.set()
    time.sleep(2.5)
    every = len(refused) == instances
    out = {
        "keys": float(KEYS + 1),
        "instances": float(instances),
        "refused_s": max(refused.values()) - sent if every else float("inf"),
    }
    stalls = [s for s in (longest_stall(f, wall0, time.time()) for f in loop_files) if s is not None]
    if stalls:
        out["stall_ms"] = max(stalls)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fleet", action="store_true", help="the instances on PostgreSQL and Redis (else: SQLite)")
    ap.add_argument("--instances", type=int, default=None, help="keyplane processes (default: 2 with --fleet, else 1)")
    a = ap.parse_args()
    instances = a.instances or (2 if a.fleet else 1)
    if instances < 1 or (instances > 1 and not a.fleet):
        ap.error("several instances share a store only with --fleet")
    import compare

    compare.ensure_tools()
    with tempfile.TemporaryDirectory(prefix="kp-revoke-") as tmp:
        ps = Processes(Path(tmp))
        try:
            up = compare.start_nginx(ps).url.rsplit("/v1/", 1)[0]
            if a.fleet:
                with fleet_store() as settings:
                    try:
                        out = measure(ps, up, compare.UPSTREAM_KEY, settings, instances)
                    finally:
                        ps.stop_all()  # before the store they use is dropped
            else:
                out = measure(ps, up, compare.UPSTREAM_KEY, None, instances)
        finally:
            ps.stop_all()
    print(json.dumps(out))
    met = out["refused_s"] <= 1.0 and out.get("stall_ms", 0.0) <= 20.0
    store = " (PostgreSQL + Redis)" if a.fleet else ""
    stall = out.get("stall_ms", float("nan"))
    print(
        f"{out['keys']:,.0f} keys, {instances} instance(s){store}: refused on every instance after "
        f"{out['refused_s']:.3f} s, longest loop stall {stall:.1f} ms: " + ("met" if met else "not met")
    )
    raise SystemExit(0 if met else 1)


if __name__ == "__main__":
    main()
