"""What a serving process keeps resident (issue 13: peak RSS <= 150 MB with every feature on).

Modules that only some nodes need are imported when first needed, not at start-up: alembic (a migration
is pending), OpenTelemetry (otlp_endpoint is set), httpx (a [[providers]] section), PyJWT (a workload
token is exchanged), cryptography (the dashboard seals or opens a secret). The tokenizer is built once,
before the rest of start-up, without tiktoken's Python copy of its ranks; glibc's malloc keeps its
initial thresholds (keyplane.footprint). `keyplane serve` hands over to keyplane.serving (os.execv), so the
command line's modules (typer, rich and what they bring) are not resident in the process that serves.
bench/compare.py measures the RSS itself; this pins what could regress silently.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from keyplane import footprint
from tests.support import init_org, make_settings

GLIBC = sys.platform == "linux" and (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")

LAZY = ("alembic", "opentelemetry", "httpx", "jwt", "cryptography")
# The command line's (typer parses options with pydantic): never in the serving process. (click is there:
# uvicorn's package imports its own command line, uvicorn.main, whatever part of uvicorn is imported.)
CLI_ONLY = ("typer", "rich", "pydantic", "pydantic_core", "shellingham", "annotated_doc", "pygments", "markdown_it")

_SERVE = """
import asyncio, json, sys
from keyplane import footprint, serving
from keyplane.limits import encodings

opts = serving.parse_args(sys.argv[1:])  # as `keyplane serve` runs it: python -m keyplane.serving ...
footprint.prepare()
import uvicorn
app = serving.build_app(opts)  # the factory each worker runs; one process: the same steps
early = sorted(encodings._encodings)

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
                  "encodings": sorted(encodings._encodings), "mapped": mapped,
                  "ranks": [e._mergeable_ranks is None for e in encodings._encodings.values()]}))
"""


def test_a_serving_process_imports_only_what_it_uses(tmp_path):
    home = tmp_path / "home"
    init_org(make_settings(home))  # a store at the head: nothing to migrate
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KEYPLANE_", "OTEL_"))}
    env["KEYPLANE_HOME"] = str(home)
    args = ["--host", "127.0.0.1", "--port", "8080", "--workers", "1"]
    out = subprocess.run([sys.executable, "-c", _SERVE, *args], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert not set(LAZY) & set(seen["modules"]), set(LAZY) & set(seen["modules"])
    assert not set(CLI_ONLY) & set(seen["modules"]), set(CLI_ONLY) & set(seen["modules"])
    assert seen["early"] == ["o200k_base"]  # built before the app, which found it there
    assert seen["encodings"] == ["o200k_base"]  # cl100k_base: only when a model needs it
    assert seen["ranks"] == [True]
    if GLIBC:  # the tokenizer's freed 10 MB table no longer lifts malloc's threshold (blocks up to 8 MB were
        assert seen["mapped"]  # then kept in the heap, and the heap was never trimmed below ~20 MB free)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
def test_keyplane_serve_becomes_a_serving_process_without_the_command_line(tmp_path):
    """The real `keyplane serve`: the same process (pid) runs `python -m keyplane.serving` with its settings on
    its command line, and imports none of the CLI's modules (Python's import log, after the hand-over line)."""
    home = tmp_path / "home"
    init_org(make_settings(home))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KEYPLANE_", "OTEL_"))}
    env |= {"KEYPLANE_HOME": str(home), "PYTHONPROFILEIMPORTTIME": "1"}  # every import, on stderr, both processes
    port, log = _free_port(), tmp_path / "serve.log"
    cmd = [sys.executable, "-c", "from keyplane.cli import main; main()", "serve", "--host", "127.0.0.1"]
    with log.open("wb") as err:
        p = subprocess.Popen([*cmd, "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + 90
        while True:
            assert p.poll() is None, log.read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        argv = Path(f"/proc/{p.pid}/cmdline").read_bytes().split(b"\0")[:-1]
    finally:
        p.terminate()
        p.wait(30)
    assert [a.decode() for a in argv] == [
        *[sys.executable, "-m", "keyplane.serving"],
        *["--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
    ]
    text = log.read_text()
    cli_part, _, serving_part = text.partition("keyplane serving on http://127.0.0.1:")
    assert serving_part, text[-3000:]

    def imported(part: str) -> set[str]:
        return {ln.rsplit("|", 1)[1].strip().split(".")[0] for ln in part.splitlines() if ln.startswith("import time:")}

    assert "typer" in imported(cli_part)  # the log does show the command line's imports
    assert "uvicorn" in imported(serving_part) and not set(CLI_ONLY) & imported(serving_part)


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's")
def test_malloc_settings_leave_the_operators_alone():
    assert footprint.tune_malloc({}) == {var: value for var, _, value in footprint.MALLOC_SETTINGS}
    assert "MALLOC_ARENA_MAX" not in footprint.tune_malloc({"MALLOC_ARENA_MAX": "8"})
    assert footprint.tune_malloc({"GLIBC_TUNABLES": "glibc.malloc.arena_max=8"}) == {}
