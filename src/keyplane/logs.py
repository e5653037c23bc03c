"""Logging set-up: text or JSON lines. Never a key or a prompt in a log line."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import orjson

_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F, 0x85, 0x2028, 0x2029)}


def safe(text: str, limit: int = 200) -> str:
    """Client-supplied text (a path, a model name) fit for a log line: control characters escaped
    (a CR/LF cannot forge a line), cut at ``limit`` characters."""
    if len(text) <= limit and text.isprintable():  # the usual case: nothing to escape (isprintable is False for
        return text  # every character _CONTROL escapes), without translate's lookup per character
    out = text.translate(_CONTROL)
    return out if len(out) <= limit else out[:limit] + "..."


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class TextFormatter(logging.Formatter):
    """keyplane's text lines. :meth:`batch` formats many plain messages of one logger, written at one
    instant (the access log's batches), as :meth:`format` would, without a LogRecord each."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def batch(self, name: str, level: int, messages: list[str], fields: list[dict[str, Any]] | None) -> list[str]:
        rec = logging.LogRecord(name, level, "", 0, "", None, None)  # for its time: one for the batch
        head = f"{self.formatTime(rec, self.datefmt)} {rec.levelname} {name}: "
        return [head + m for m in messages]


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        d = {
            "ts": round(time.time(), 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            d.update(extra)
        if record.exc_info and record.exc_info[0] is not None:
            d["error"] = record.exc_info[0].__name__
        return orjson.dumps(d).decode()

    def batch(self, name: str, level: int, messages: list[str], fields: list[dict[str, Any]] | None) -> list[str]:
        """What :meth:`format` makes of records of ``messages`` with ``fields``, made at one instant."""
        assert fields is not None
        head = {"ts": round(time.time(), 3), "level": logging.getLevelName(level).lower(), "logger": name}
        out = []
        for m, f in zip(messages, fields, strict=True):
            d = {**head, "msg": m}
            d.update(f)
            out.append(orjson.dumps(d).decode())
        return out


BatchFormatter = TextFormatter | JsonFormatter


class LineHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The process's log handler: a StreamHandler that can also write many records at once
    (:meth:`emit_many`: one write and one flush for a batch, where ``emit`` flushes, a system call, per
    line). The access log writes its lines this way (usage/access_log.py)."""

    def write_lines(self, lines: list[str]) -> None:
        """Lines already formatted (:meth:`TextFormatter.batch`, :meth:`JsonFormatter.batch`), in one write."""
        if not lines:
            return
        try:
            with self.lock:  # type: ignore[union-attr]
                self.stream.write(self.terminator.join(lines) + self.terminator)
                self.flush()
        except Exception:
            self.handleError(logging.LogRecord("keyplane", logging.ERROR, "", 0, "batch write failed", None, None))

    def emit_many(self, records: list[logging.LogRecord]) -> None:
        lines: list[str] = []
        for record in records:
            if record.levelno < self.level or not self.filter(record):
                continue
            try:
                lines.append(self.format(record) + self.terminator)
            except Exception:
                self.handleError(record)
        if not lines:
            return
        try:
            with self.lock:  # type: ignore[union-attr]
                self.stream.write("".join(lines))
                self.flush()
        except Exception:
            self.handleError(records[-1])


def batch_handlers(logger: logging.Logger, level: int) -> list[LineHandler] | None:
    """The handlers a record of ``logger`` at ``level`` reaches (Logger.callHandlers' walk), when every
    one of them can write batches; None when any cannot (then log record by record)."""
    if logger.disabled or not logger.isEnabledFor(level) or logger.filters:
        return None
    out: list[LineHandler] = []
    c: logging.Logger | None = logger
    while c is not None:
        for h in c.handlers:
            if type(h) is not LineHandler:
                return None
            out.append(h)
        if not c.propagate:
            break
        c = c.parent
    return out


def setup_logging(fmt: str, level: str) -> None:
    handler = LineHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
