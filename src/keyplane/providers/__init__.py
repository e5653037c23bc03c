"""Provider organizations governed through their Admin API (issue #18, docs/providers.md).

Layout: config.py (schema and validation of ``[[providers]]``), connector.py (the Admin API client: paging,
retries), models.py (SQL: mirror, history, usage buckets, cursors, events), sync.py (inventory sync),
ingest.py (usage and costs, incremental), rules.py (the kill switch on provider keys), poller.py
(the background Feature), report.py (hygiene), cli.py (`keyplane providers ...`).

Imports stay inside :func:`start`: keyplane.config imports keyplane.providers.config.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from keyplane.app import Feature
    from keyplane.runtime import Runtime


async def start(rt: Runtime) -> Feature:
    """Feature start-up (app.FEATURES): the background poller of every configured provider."""
    from keyplane.providers.poller import start_poller

    return await start_poller(rt)
