"""Honest degradation: which store an error means is down, and one log line per change of state.

During an outage every request that touches the failed store fails the same way; logging each one (a
traceback per request, ~390 per instance per 10 s in a Redis outage) buries the one line an operator
needs. :class:`Outage` logs when a dependency goes down (once, with the first error) and when it comes
back (with how many failures it absorbed); :func:`store_outage` tells an outage from a bug, so that
the admin API answers 503 (retryable, OpenAI-shaped) for the first and 500 for the second.
"""

from __future__ import annotations

import asyncio
import logging
import time

_DB_ERRORS: tuple[type[BaseException], ...] = ()
_REDIS_ERRORS: tuple[type[BaseException], ...] = ()


def _load() -> None:
    global _DB_ERRORS, _REDIS_ERRORS
    from sqlalchemy import exc as sa_exc

    db: list[type[BaseException]] = [sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError]
    try:
        import asyncpg

        db += [
            asyncpg.PostgresConnectionError,
            asyncpg.InterfaceError,
            asyncpg.exceptions.QueryCanceledError,
            asyncpg.exceptions.CannotConnectNowError,
        ]
    except ImportError:  # pragma: no cover - asyncpg is a dependency
        pass
    _DB_ERRORS = tuple(db)
    try:
        from redis import exceptions as redis_exc

        _REDIS_ERRORS = (redis_exc.ConnectionError, redis_exc.TimeoutError, redis_exc.BusyLoadingError)
    except ImportError:  # pragma: no cover - redis is a dependency
        _REDIS_ERRORS = ()


def store_outage(exc: BaseException) -> str | None:
    """``"database"`` or ``"redis"`` when ``exc`` (or what caused it) means that store is unreachable,
    timed out or refusing connections; None for anything else (a bug, a constraint violation...)."""
    if not _DB_ERRORS:
        _load()
    seen = 0
    e: BaseException | None = exc
    while e is not None and seen < 6:
        if isinstance(e, _REDIS_ERRORS):
            return "redis"
        if isinstance(e, _DB_ERRORS) and (getattr(e, "connection_invalidated", False) or not _is_sql_logic(e)):
            return "database"
        orig = getattr(e, "orig", None)
        e = orig if isinstance(orig, BaseException) and orig is not e else e.__cause__ or e.__context__
        seen += 1
    if isinstance(exc, (ConnectionError, TimeoutError, asyncio.TimeoutError)):
        return "database"
    return None


def _is_sql_logic(e: BaseException) -> bool:
    """An OperationalError that is the statement's fault rather than the store's (SQLite: no such table)."""
    text = str(e).lower()
    return "no such table" in text or "syntax error" in text


class Outage:
    """The state of one dependency (``name``: "PostgreSQL", "Redis"...) as seen by one component, logged
    on change only: ``failed(e)`` logs a warning the first time, ``ok()`` logs once when it recovers."""

    def __init__(self, name: str, what: str, logger: logging.Logger) -> None:
        self.name = name
        self.what = what  # what is affected, e.g. "admin API", "settles"
        self.log = logger
        self.down_since: float | None = None
        self.failures = 0

    @property
    def down(self) -> bool:
        return self.down_since is not None

    def failed(self, e: BaseException) -> None:
        self.failures += 1
        if self.down_since is None:
            self.down_since = time.monotonic()
            first = str(e).splitlines()[0][:200] if str(e) else ""
            self.log.warning(
                "%s unreachable (%s: %s): %s degraded; logging again when it is back",
                self.name,
                type(e).__name__,
                first,
                self.what,
            )

    def ok(self) -> None:
        if self.down_since is not None:
            self.log.warning(
                "%s reachable again after %.1fs: %s back to normal (%d failures meanwhile)",
                self.name,
                time.monotonic() - self.down_since,
                self.what,
                self.failures,
            )
            self.down_since = None
            self.failures = 0
