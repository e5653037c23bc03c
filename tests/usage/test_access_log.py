"""The access log writes its lines in batches through keyplane's handler, the same lines as record by record."""

from __future__ import annotations

import io
import logging
import re
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


def _record_lines(fmt: logging.Formatter, rows: list[tuple[object, ...]]) -> list[str]:
    """The lines the logging module's own way makes of ``rows``: a LogRecord each, formatted."""
    out = []
    for row in rows:
        rec = access_log.log.makeRecord(
            access_log.log.name,
            logging.INFO,
            "",
            0,
            access_log._FORMAT,
            access_log._args(row),
            None,
            extra={"fields": access_log.fields(row)},
        )
        out.append(fmt.format(rec))
    return out


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_batched_lines_are_the_lines_a_record_each_would_make(root_stream, fmt):
    """The batch path formats without a LogRecord per line: its lines are exactly the formatter's."""
    stream = root_stream(fmt)
    a = AccessLog()
    ctxs = [
        _ctx(0),
        _ctx(1, error="upstream_error", ttft_ms=0.456, latency_ms=12.3456),
        _ctx(2, model=None, endpoint="/v1/files\n", cost_micros=0, status=499),
        _ctx(3, model="m\u2028x", latency_ms=1.4951),
    ]
    for i, c in enumerate(ctxs):
        a.add(c, "completions", 1_800_000_000.25 + i)
    rows = list(a.pending)
    a.flush()
    got = stream.getvalue().rstrip("\n").split("\n")  # not splitlines(): JSON lines keep U+2028 as is
    want = _record_lines(logging.getLogger().handlers[0].formatter, rows)  # type: ignore[arg-type]
    assert len(got) == len(want) == 4
    if fmt == "json":
        for g, w in zip(got, want, strict=True):
            gd, wd = orjson.loads(g), orjson.loads(w)
            assert abs(gd.pop("ts") - wd.pop("ts")) < 5 and gd == wd
            assert list(orjson.loads(g)) == list(orjson.loads(w))  # the same keys in the same order
    else:
        stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} "
        for g, w in zip(got, want, strict=True):
            assert re.match(stamp, g) and re.match(stamp, w)
            assert g[24:] == w[24:]  # after the timestamp: level, logger, message


def test_a_formatter_keyplane_did_not_set_up_still_formats_each_record(root_stream):
    stream = root_stream("text")
    logging.getLogger().handlers[0].setFormatter(logging.Formatter("%(levelname)s|%(message)s"))
    a = AccessLog()
    a.add(_ctx(5), "completions", 1_800_000_000.0)
    a.flush()
    (line,) = stream.getvalue().splitlines()
    assert line.startswith("INFO|req_5 POST /v1/chat/completions 200 model=gpt-4o-mini")
