"""Helpers of the metering tests: a fake-upstream config, waiting for the applier, keyplane processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from keyplane.testing import FakeUpstream

FAKE_MODELS = ["gpt-4o-mini", "gpt-4o", "text-embedding-3-small"]


def fake_config(fake: FakeUpstream, extra: str = "", max_retries: int = 0) -> str:
    models = ", ".join(f'"{m}"' for m in FAKE_MODELS)
    return (
        f'[[upstreams]]\nname = "fake"\nbase_url = "{fake.base_url}"\nmodels = [{models}]\n'
        f"max_retries = {max_retries}\nretry_backoff = 0.01\nbreaker_failures = 100000\n\n"
        '[[upstreams]]\nname = "demo"\nbase_url = "demo"\nmodels = ["demo-*"]\n\n'
        '[prices."gpt-4o-mini"]\ninput = 0.15\noutput = 0.6\ncached_input = 0.075\n\n'
        '[prices."text-embedding-*"]\ninput = 0.02\n' + extra
    )


def drain(srv: Any) -> None:
    """Apply what the server's journal holds now and write the pending access-log lines (instead of
    waiting for the background tasks)."""
    features = srv.app.runtime.features

    async def go() -> None:
        await features.usage_applier.apply_pending()
        features.usage_flush()

    srv.call(go())


# --- keyplane as a real process ------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Proc:
    """`python -m uvicorn keyplane.cli:app_from_env --factory` in a process of its own."""

    def __init__(self, home: Path, env: dict[str, str], workers: int = 1, log: Path | None = None) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log = log or home / f"server-{self.port}.log"
        full = {**os.environ, "KEYPLANE_HOME": str(home), **env}
        cmd = [
            sys.executable,
            "-m",
            "uvicorn",
            "keyplane.cli:app_from_env",
            "--factory",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--log-level",
            "warning",
            "--timeout-graceful-shutdown",
            "10",
        ]
        if workers > 1:
            cmd += ["--workers", str(workers)]
        self._out = open(self.log, "ab")  # noqa: SIM115 - closed in wait()
        self.p = subprocess.Popen(cmd, env=full, stdout=self._out, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.p.poll() is not None:
                raise RuntimeError(f"keyplane exited with {self.p.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(self.base_url + "/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"keyplane not ready after {timeout}s:\n{self.log.read_text()[-3000:]}")

    def kill9(self) -> None:
        os.killpg(self.p.pid, signal.SIGKILL)  # the whole session: uvicorn's workers too
        self.wait()

    def terminate(self, timeout: float = 60) -> bool:
        """SIGTERM; True when the process shut down cleanly (lifespan shutdown ran to the end).

        uvicorn re-raises the signal it caught once shut down, so the exit status is -SIGTERM.
        """
        self.p.send_signal(signal.SIGTERM)
        code = self.wait(timeout)
        log = self.log.read_text(errors="replace")
        return code in (0, -signal.SIGTERM) and "Traceback" not in log and "ERROR" not in log

    def wait(self, timeout: float = 60) -> int:
        try:
            return self.p.wait(timeout)
        finally:
            self._out.close()
