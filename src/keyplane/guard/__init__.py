"""The kill switch: anomaly detectors over each key's live usage, and what they do about it.

Layout: rules.py (rule definitions, validation, defaults), windows.py (bucketed sliding windows in
memory or Redis), detectors.py (pure detection), engine.py (settle step + background evaluator),
actions.py (revoke / suspend / alert, audit, events), store.py + models.py (SQL), routes.py (admin
API), cli.py (`keyplane guard ...`). User docs: docs/guard.md.

Imports stay inside :func:`start`: keyplane.config imports keyplane.guard.rules for validation, and
the CLI imports keyplane.guard.cli, neither of which needs the run-time machinery.
"""

from __future__ import annotations

from typing import Any


async def start(rt: Any) -> Any:
    """Feature start-up (app.FEATURES): the settle step, the background tasks, the admin endpoints."""
    from keyplane import hooks
    from keyplane.app import Feature
    from keyplane.guard import engine, routes

    guard = await engine.create(rt)
    rt.extras["guard"] = guard
    if guard.enabled:
        hooks.add_settle(rt, guard.settle, order=30)
        hooks.add_refused(rt, guard.settle, order=30)  # 401/403/404/429 before the upstream: probing
    await guard.start()
    return Feature(endpoints=list(routes.ENDPOINTS), stop=guard.stop)
