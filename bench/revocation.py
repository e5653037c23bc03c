"""Revocation with 50,000 keys in the store, for bench/compare.py (issue 13's last floor).

A separate keyplane (`keyplane init`, then 50,000 more service-account keys written straight into its
SQLite store before it starts, so its snapshot holds them all), one instance. A thread sends a chat
completion with the victim key every few milliseconds; the key is revoked through the admin API
(`POST /v1/organization/api_keys/{id}/revoke`); the figure is the time from sending the revocation
to the first refusal, counted from when the revocation was sent, and the longest event-loop stall (bench/loopmon.py)
from the revocation until 2 s after the refusal (the snapshot's reload included).
"""

from __future__ import annotations

import secrets
import sqlite3
import sys
import threading
import time
from pathlib import Path

from compare_kit import Processes, call, keyplane_home, longest_stall, wait_up
from proxy_bench import free_port

HERE = Path(__file__).resolve().parent
KEYS = 50_000
BODY = {"model": "gpt-4o-mini", "max_tokens": 32, "messages": [{"role": "user", "content": "Say hello."}]}


def seed_keys(db_path: Path, n: int) -> None:
    """n copies of init's service-account key, each with its own id and digest (no value opens them)."""
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
        rows = []
        for i in range(n):
            rows.append(
                {
                    **template,
                    "id": f"key_bench{i:07d}{secrets.token_hex(4)}",
                    "name": f"bench-{i}",
                    "digest": secrets.token_hex(32),
                    "last_used_at": None,
                }
            )
        db.executemany(f"INSERT INTO api_keys ({', '.join(cols)}) VALUES ({', '.join(':' + c for c in cols)})", rows)
        db.commit()
    finally:
        db.close()


def measure(ps: Processes, upstream: str, upstream_key: str) -> dict[str, float]:
    env, info = keyplane_home(ps, "kp-revoke", upstream, "BENCH_UPSTREAM_KEY")
    env["BENCH_UPSTREAM_KEY"] = upstream_key
    seed_keys(Path(env["KEYPLANE_HOME"]) / "keyplane.db", KEYS)
    port, loop_file = free_port(), ps.folder / "loop-revoke.txt"
    p = ps.start(
        [sys.executable, str(HERE / "loopmon.py"), "keyplane", "--port", str(port), "--loop-file", str(loop_file)],
        "keyplane-revoke.log",
        env,
    )
    base = f"http://127.0.0.1:{port}"
    wait_up(base + "/healthz", p, 120)
    url, victim = base + "/v1/chat/completions", info["api_key"]
    status, _, _ = call(url, victim, BODY)
    if status != 200:
        raise RuntimeError(f"revocation run: the victim key answered {status} before the revocation")
    time.sleep(3)  # past the start-up's own stalls
    refused: list[float] = []
    stop = threading.Event()

    def probe() -> None:
        while not stop.is_set():
            if call(url, victim, BODY)[0] == 401:
                refused.append(time.monotonic())
                return
            time.sleep(0.002)

    prober = threading.Thread(target=probe, daemon=True)
    prober.start()
    time.sleep(0.5)
    wall0, sent = time.time(), time.monotonic()
    status, _, _ = call(
        f"{base}/v1/organization/api_keys/{info['api_key_id']}/revoke",
        info["admin_key"],
        {"reason": "bench: revocation with 50,000 keys"},
    )
    if status != 200:
        raise RuntimeError(f"revocation run: the admin API answered {status}")
    prober.join(10)
    stop.set()
    time.sleep(2.5)
    out = {"keys": float(KEYS + 1), "instances": 1.0, "refused_s": refused[0] - sent if refused else float("inf")}
    stall = longest_stall(loop_file, wall0, time.time())
    if stall is not None:
        out["stall_ms"] = stall
    return out
