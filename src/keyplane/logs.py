"""Logging set-up: text or JSON lines. Never a key or a prompt in a log line."""

from __future__ import annotations

import logging
import sys
import time

import orjson

_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F, 0x85, 0x2028, 0x2029)}


def safe(text: str, limit: int = 200) -> str:
    """Client-supplied text (a path, a model name) fit for a log line: control characters escaped
    (a CR/LF cannot forge a line), cut at ``limit`` characters."""
    out = text.translate(_CONTROL)
    return out if len(out) <= limit else out[:limit] + "..."


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        d = {"ts": round(time.time(), 3), "level": record.levelname.lower(), "logger": record.name,
             "msg": record.getMessage()}
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            d.update(extra)
        if record.exc_info and record.exc_info[0] is not None:
            d["error"] = record.exc_info[0].__name__
        return orjson.dumps(d).decode()


def setup_logging(fmt: str, level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
