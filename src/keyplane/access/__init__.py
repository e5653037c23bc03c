"""Access policies: model permissions, hosted tool permissions, IP allowlists (docs/access-control.md).

Layout: models.py (SQL), inspect.py (what a request body asks for), ip.py (client address, CIDR
lists), policy.py (the in-memory policies and the checks the proxy calls), routes.py and routes_ip.py
(admin API), expiry.py (``key.expiring`` notices to the alert sinks). The policies are small: each
instance holds them all in memory and reloads them when the snapshot moves (every control-plane write
bumps the revision and is published on the bus), so the request path never reads SQL.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from keyplane.app import Feature
    from keyplane.runtime import Runtime

log = logging.getLogger("keyplane.access")


async def start(rt: Runtime) -> Feature:
    """Feature start-up (app.FEATURES): load the policies, follow the snapshot, the admin endpoints."""
    from keyplane.access import ip, routes, routes_ip
    from keyplane.access.expiry import ExpiryNotifier
    from keyplane.access.policy import Policies
    from keyplane.app import Feature
    from keyplane.periodic import cancel_and_wait

    try:
        trusted = ip.parse_cidrs([c for c in getattr(rt.settings, "trusted_proxies", "").split(",") if c.strip()])
    except ValueError as e:
        from keyplane.configspec import ConfigError

        raise ConfigError(f"setting `trusted_proxies`: {e}") from None
    pols = Policies(trusted_proxies=trusted)
    # Billing's admission reads batch input files: a batch's requests are checked when it is created (only
    # while that step runs: without it, batches are refused under a policy, as keyplane cannot check them).
    pols.batches_checked = lambda: rt.features.batches is not None and rt.pipeline.billing is not None
    await pols.load(rt.read_engine)
    pols.behind = lambda rev: rt.snapshot.revision > rev  # the snapshot loaded changes these have not
    rt.features.access = pols
    moved = asyncio.Event()
    rt.snapshot.on_change(moved.set)

    async def follow() -> None:
        while True:
            await moved.wait()
            moved.clear()
            try:
                await pols.load(rt.engine)
            except Exception as e:  # the store may be away; the snapshot's next change retries
                log.warning("access policies reload failed (%s); retrying", type(e).__name__)
                await asyncio.sleep(1)
                moved.set()

    task = asyncio.get_running_loop().create_task(follow(), name="access-policies")
    notifier = ExpiryNotifier(rt)
    rt.features.access_expiry = notifier
    notifier.start()

    async def stop() -> None:
        await notifier.stop()
        await cancel_and_wait(task)

    return Feature(endpoints=[*routes.ENDPOINTS, *routes_ip.ENDPOINTS], stop=stop)
