"""What a serving process keeps resident (issue 13: peak RSS <= 150 MB with every feature on).

Modules that only some nodes need are imported when first needed, not at start-up: alembic (a migration
is pending), OpenTelemetry (otlp_endpoint is set), httpx (a [[providers]] section), PyJWT (a workload
token is exchanged), cryptography (the dashboard seals or opens a secret). The tokenizer is built once,
before the rest of start-up, without tiktoken's Python copy of its ranks; glibc's malloc keeps its
initial thresholds (keyplane.footprint).
bench/compare.py measures the RSS itself; this pins what could regress silently.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from keyplane import footprint
from tests.support import init_org, make_settings

GLIBC = sys.platform == "linux" and (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")

LAZY = ("alembic", "opentelemetry", "httpx", "jwt", "cryptography")

_SERVE = """
import asyncio, json, sys
from keyplane import cli
from keyplane.limits import tokens

app = cli.app_from_env()  # the factory `keyplane serve` runs (its workers too)
early = sorted(tokens._encodings)

def maps():  # the process's mappings of 2 MB or more, but its heap
    if sys.platform != "linux":
        return set()
    spans = (line.split()[0] for line in open("/proc/self/maps") if not line.rstrip().endswith("[heap]"))
    return {s for s in spans if int(s.split("-")[1], 16) - int(s.split("-")[0], 16) >= 2 << 20}

async def run():
    await app.startup()
    await app.shutdown()

asyncio.run(run())
before = maps()
block = bytearray(2 << 20)  # above glibc's initial mmap threshold: mapped on its own, not kept in the heap
mapped = bool(maps() - before)
print(json.dumps({"modules": sorted({m.split(".")[0] for m in sys.modules}), "early": early,
                  "encodings": sorted(tokens._encodings), "mapped": mapped,
                  "ranks": [e._mergeable_ranks is None for e in tokens._encodings.values()]}))
"""


def test_a_serving_process_imports_only_what_it_uses(tmp_path):
    home = tmp_path / "home"
    init_org(make_settings(home))  # a store at the head: nothing to migrate
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KEYPLANE_", "OTEL_"))}
    env["KEYPLANE_HOME"] = str(home)
    out = subprocess.run([sys.executable, "-c", _SERVE], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert not set(LAZY) & set(seen["modules"]), set(LAZY) & set(seen["modules"])
    assert seen["early"] == ["o200k_base"]  # built before the app, which found it there
    assert seen["encodings"] == ["o200k_base"]  # cl100k_base: only when a model needs it
    assert seen["ranks"] == [True]
    if GLIBC:  # the tokenizer's freed 10 MB table no longer lifts malloc's threshold (blocks up to 8 MB were
        assert seen["mapped"]  # then kept in the heap, and the heap was never trimmed below ~20 MB free)


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's")
def test_malloc_settings_leave_the_operators_alone():
    assert footprint.tune_malloc({}) == {var: value for var, _, value in footprint.MALLOC_SETTINGS}
    assert "MALLOC_ARENA_MAX" not in footprint.tune_malloc({"MALLOC_ARENA_MAX": "8"})
    assert footprint.tune_malloc({"GLIBC_TUNABLES": "glibc.malloc.arena_max=8"}) == {}
