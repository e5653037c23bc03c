"""Project members and service-account keys (docs/members-and-roles.md).

A feature (app.FEATURES): its admin endpoints are added at start-up. Imports of the run-time machinery
stay inside :func:`start`; keyplane.control imports :mod:`keyplane.members.ops` for the member rule.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from keyplane.app import Feature
    from keyplane.runtime import Runtime


async def start(rt: Runtime) -> Feature:
    """Feature start-up (app.FEATURES): the admin endpoints."""
    from keyplane.app import Feature
    from keyplane.members import project_role_routes, role_routes, routes

    return Feature(endpoints=[*routes.ENDPOINTS, *role_routes.ENDPOINTS, *project_role_routes.ENDPOINTS])
