#!/usr/bin/env python3
"""Peak memory of the gateway for a large multipart upload: streamed (proxy/uploads.py) or read whole.

    .venv/bin/python scripts/upload_memory.py stream     # model first: streamed through
    .venv/bin/python scripts/upload_memory.py spool      # file first: the rest spooled to a temporary file
    .venv/bin/python scripts/upload_memory.py buffered   # the path before: the whole body held in memory

The fake upstream and the client (curl) run in processes of their own; the gateway runs in this one, with
tracemalloc (the peak of Python allocations over three 20 MB transcription uploads) and VmHWM (peak RSS).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ["KP_MEM_UP_KEY"] = "sk-upstream"

from tests.support import init_org, make_settings, start_server  # noqa: E402

from keyplane.proxy import uploads  # noqa: E402

SIZE = 20 * 1024 * 1024


def rss() -> str:
    with open("/proc/self/status") as f:
        return ", ".join(
            line.split(":")[0] + " " + line.split(":")[1].strip() for line in f if line.startswith("VmHWM")
        )


def main() -> None:
    mode = sys.argv[1] if len(sys.argv) > 1 else "stream"
    if mode == "buffered":
        uploads.STREAMED = frozenset()  # type: ignore[misc]
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    fake = subprocess.Popen(
        [sys.executable, "-m", "keyplane.testing.fake_upstream", "--port", str(port), "--no-record"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert fake.stdout is not None
    fake.stdout.readline()
    tmp = Path(tempfile.mkdtemp(prefix="kp-upload-memory-"))
    cfg = (
        f'[[upstreams]]\nname = "media"\nbase_url = "http://127.0.0.1:{port}/v1"\napi_key_env = "KP_MEM_UP_KEY"\n'
        'models = ["whisper-*"]\n'
    )
    settings = make_settings(tmp / "home", "", config_text=cfg, KEYPLANE_MAX_BODY_BYTES=str(64 * 1024 * 1024))
    srv = start_server(settings, init_org(settings))
    audio = tmp / "audio.wav"
    with audio.open("wb") as out:  # written a MiB at a time: the gateway's peak RSS is the gateway's
        out.write(b"RIFF")
        for _ in range(SIZE // (1024 * 1024)):
            out.write(os.urandom(1024 * 1024))
    fields = ["-F", "model=whisper-1", "-F", f"file=@{audio}"]
    if mode == "spool":
        fields = fields[2:] + fields[:2]

    def upload() -> str:
        auth = ["-H", f"Authorization: Bearer {srv.api_key}"]
        cmd = ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", *auth, *fields, srv.v1 + "/audio/transcriptions"]
        return subprocess.run(cmd, capture_output=True, text=True, check=False).stdout

    try:
        print("warm-up:", upload(), rss())
        tracemalloc.start()
        t0 = time.perf_counter()
        codes = [upload() for _ in range(3)]
        per = (time.perf_counter() - t0) / 3
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        print(f"{mode}: {codes} traced peak {peak / 1e6:.1f} MB, {per * 1000:.0f} ms per upload; {rss()}")
    finally:
        srv.stop()
        fake.terminate()


if __name__ == "__main__":
    main()
