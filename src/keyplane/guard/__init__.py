"""The kill switch: anomaly detectors over each key's live usage, and what they do about it.

Layout: rules.py (rule definitions, validation, defaults), windows.py (bucketed sliding windows in
memory or Redis), detectors.py (pure detection), engine.py (observe step + background evaluator),
actions.py (revoke / suspend / alert, audit, events), store.py + models.py (SQL), routes.py (admin
API), cli.py (`keyplane guard ...`). User docs: docs/guard.md.

Imports stay inside :func:`start`: keyplane.config imports keyplane.guard.config (the [guard] schema)
and keyplane.guard.rules (its validation), and the CLI imports keyplane.guard.cli, none of which needs
the run-time machinery.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from keyplane.app import Feature
    from keyplane.runtime import Runtime


async def start(rt: Runtime) -> Feature:
    """Feature start-up (app.FEATURES): the observe step, the background tasks, the admin endpoints."""
    from keyplane.app import Feature
    from keyplane.guard import engine, routes

    guard = await engine.create(rt)
    rt.features.guard = guard
    await guard.start()
    # It observes settled requests and refusals before the upstream (401/403/404/429: probing).
    return Feature(endpoints=list(routes.ENDPOINTS), stop=guard.stop, guard=guard if guard.enabled else None)
