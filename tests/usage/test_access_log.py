"""The access log writes its lines in batches through keyplane's handler, the same lines as record by record."""

from __future__ import annotations

import io
import logging
from types import SimpleNamespace

import orjson
import pytest

from keyplane import logs
from keyplane.usage import access_log
from keyplane.usage.access_log import AccessLog


def _ctx(i: int, **kw: object) -> SimpleNamespace:
    d = dict(
        request_id=f"req_{i}",
        method="POST",
        endpoint="/v1/chat/completions",
        status=200,
        project_id="proj_1",
        key=SimpleNamespace(id="key_1", owner_user_id=None),
        model="gpt-4o-mini\r\nforged",
        upstream="u",
        stream=False,
        prompt_tokens=10 + i,
        cached_tokens=0,
        completion_tokens=5,
        cost_micros=123,
        latency_ms=1.234,
        ttft_ms=None,
        attempts=1,
        disconnected=False,
        error=None,
    )
    d.update(kw)
    return SimpleNamespace(**d)


@pytest.fixture
def root_stream():
    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    stream = io.StringIO()

    def setup(fmt: str) -> io.StringIO:
        logs.setup_logging(fmt, "info")
        root.handlers[0].setStream(stream)
        return stream

    yield setup
    root.handlers[:] = saved
    root.setLevel(level)


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_a_batch_is_one_write_with_every_line(root_stream, fmt, monkeypatch):
    stream = root_stream(fmt)
    writes: list[str] = []
    real = stream.write
    monkeypatch.setattr(stream, "write", lambda s: writes.append(s) or real(s))
    a = AccessLog()
    for i in range(50):
        a.add(_ctx(i, error="rate_limit_exceeded" if i == 7 else None), "completions", 1_800_000_000.0 + i)
    a.flush()
    assert len(writes) == 1  # one write for the batch (a StreamHandler writes and flushes per line)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 50  # the CR/LF in the model name is escaped: no forged line
    if fmt == "json":
        rows = [orjson.loads(x) for x in lines]
        assert [r["request_id"] for r in rows] == [f"req_{i}" for i in range(50)]
        assert rows[7]["error"] == "rate_limit_exceeded" and rows[3]["input_tokens"] == 13
        assert rows[0]["cost_usd"] == 0.000123 and rows[0]["logger"] == "keyplane.access"
    else:
        assert "req_7 POST /v1/chat/completions 200 model=gpt-4o-mini\\x0d\\x0aforged tokens=17/5" in lines[7]
        assert lines[7].endswith("error=rate_limit_exceeded")


def test_a_handler_keyplane_did_not_set_up_gets_every_record(root_stream, monkeypatch):
    root_stream("text")
    got: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            got.append(record)

    h = Collect()
    access_log.log.addHandler(h)
    try:
        assert logs.batch_handlers(access_log.log, logging.INFO) is None
        a = AccessLog()
        for i in range(5):
            a.add(_ctx(i), "completions", 1_800_000_000.0)
        a.flush()
    finally:
        access_log.log.removeHandler(h)
    assert [r.fields["request_id"] for r in got] == [f"req_{i}" for i in range(5)]  # type: ignore[attr-defined]
