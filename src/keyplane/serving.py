"""The serving process: ``python -m keyplane.serving [--config PATH] --host H --port P [--workers N]``.

`keyplane serve` checks the configuration and the store, prints its messages, then replaces itself with
this module (os.execv: same process id, same signals), so the process that serves carries none of the
command line's modules (typer, click, rich and what they import, ~9 MB; issue 13: peak RSS <= 150 MB).
Its settings come from its arguments (and keyplane.toml and the KEYPLANE_* variables, as for every
command), never from variables the command line sets for it.

With ``--workers N`` uvicorn's supervisor spawns N processes (multiprocessing, spawn) and hands each the
pickled uvicorn Config, whose app is :func:`build_app` bound to these options (functools.partial): each
worker builds its app from the same explicit options, with no import string read back from the
environment. uvicorn.run() itself refuses anything but an import string with workers, so :func:`run`
starts its supervisor the way uvicorn.run() does.

:func:`app_from_env` is the factory for any other ASGI server
(``uvicorn --factory keyplane.serving:app_from_env``, also at its old path ``keyplane.cli:app_from_env``):
its documented contract is the environment, KEYPLANE_CONFIG and the other KEYPLANE_* variables.

This module imports only the standard library and keyplane.footprint at import time: the tokenizer and
malloc's settings come first in a process that serves (keyplane.footprint), then uvicorn and the app.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from keyplane import footprint

if TYPE_CHECKING:
    from keyplane.config import Settings

_STARTUP_FAILURE = 3  # uvicorn's exit status when the server did not start


@dataclass(frozen=True)
class ServeOptions:
    """What `keyplane serve` resolved: the keyplane.toml (None: $KEYPLANE_HOME/keyplane.toml), the address
    and port to bind (None: the settings'), and the number of worker processes."""

    config: str | None = None
    host: str | None = None
    port: int | None = None
    workers: int = 1

    def argv(self) -> list[str]:
        """The command line of the serving process for these options."""
        args = [sys.executable, "-m", "keyplane.serving"]
        if self.config is not None:
            args += ["--config", self.config]
        if self.host is not None:
            args += ["--host", self.host]
        if self.port is not None:
            args += ["--port", str(self.port)]
        return [*args, "--workers", str(self.workers)]


def parse_args(argv: Sequence[str] | None = None) -> ServeOptions:
    p = argparse.ArgumentParser(
        prog="python -m keyplane.serving",
        description="The keyplane serving process (`keyplane serve` runs it; use that).",
    )
    p.add_argument("--config", help="keyplane.toml to use (default: $KEYPLANE_HOME/keyplane.toml).")
    p.add_argument("--host", help="Address to bind (setting host).")
    p.add_argument("--port", type=int, help="Port to listen on (setting port).")
    p.add_argument("--workers", type=int, default=1, help="Worker processes (each with its own snapshot).")
    a = p.parse_args(argv)
    if a.workers < 1:
        p.error("--workers must be 1 or more")
    return ServeOptions(config=a.config, host=a.host, port=a.port, workers=a.workers)


def load(opts: ServeOptions) -> Settings:
    """The settings of ``opts``; a bad configuration ends the process with status 2, as the CLI does."""
    from keyplane.config import ConfigError, load_settings

    try:
        return load_settings(opts.config, create_secret=True, overrides={"host": opts.host, "port": opts.port})
    except ConfigError as e:
        sys.stderr.write(f"error: {e}\n")
        raise SystemExit(2) from None


def build_app(opts: ServeOptions) -> Any:
    """The ASGI app of a worker process (``--workers N``), built from the options it was handed."""
    footprint.prepare()  # a process of its own: malloc's settings and the tokenizer before the rest
    from keyplane.app import create_app
    from keyplane.logs import setup_logging

    s = load(opts)
    setup_logging(s.log_format, s.log_level)
    return create_app(s)


def _app_of(s: Settings) -> Any:
    from keyplane.app import create_app

    return create_app(s)


def run(opts: ServeOptions, factory: Callable[[], Any] | None = None) -> None:
    """Serve until stopped: one process (``workers == 1``) or uvicorn's supervisor and its workers.
    ``factory`` replaces the app factory (one worker only: bench/loopmon.py wraps the app)."""
    if opts.workers == 1:  # this process serves: its malloc settings and tokenizer come first
        footprint.prepare()
    import uvicorn

    from keyplane import http_protocol
    from keyplane.logs import setup_logging

    s = load(opts)
    setup_logging(s.log_format, s.log_level)
    if factory is None:
        factory = functools.partial(_app_of, s) if opts.workers == 1 else functools.partial(build_app, opts)
    elif opts.workers > 1:
        raise ValueError("a replacement factory serves in one process only")
    config = uvicorn.Config(
        factory,
        factory=True,
        host=s.host,
        port=s.port,
        workers=opts.workers,
        loop="auto",
        http=http_protocol.protocol(),  # the httptools protocol, one write per answer (keyplane.http_protocol)
        log_level=s.log_level,
        access_log=False,
        lifespan="on",
        log_config=None,
        timeout_graceful_shutdown=10,
        # The client address is the socket's: forwarded-for headers are believed only from
        # keyplane's own `trusted_proxies` (IP allowlists, docs/access-control.md), not uvicorn's default.
        proxy_headers=False,
    )
    server = uvicorn.Server(config)
    try:
        if opts.workers > 1:
            from uvicorn.supervisors import Multiprocess

            Multiprocess(config, sockets=[config.bind_socket()]).run()
        else:
            server.run()
    except KeyboardInterrupt:
        pass
    if opts.workers == 1 and not server.started:
        raise SystemExit(_STARTUP_FAILURE)


def app_from_env() -> Any:
    """ASGI factory for any ASGI server (``uvicorn --factory keyplane.serving:app_from_env``): the settings
    from the environment (KEYPLANE_CONFIG, KEYPLANE_HOME and the other KEYPLANE_* variables)."""
    footprint.prepare()  # a worker process of its own (`uvicorn --factory`, gunicorn...); else done already
    from keyplane.app import create_app
    from keyplane.config import load_settings

    return create_app(load_settings(os.environ.get("KEYPLANE_CONFIG") or None, create_secret=True))


def main(argv: Sequence[str] | None = None) -> None:
    run(parse_args(argv))


if __name__ == "__main__":
    main()
