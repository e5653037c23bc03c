"""The Providers page (read-only, owner and reader): each governed provider organization's inventory summary,
its key hygiene report from the last sync, and what the provider rules did.

It reads what the admin API shows (GET /v1/organization/providers, .../providers/{name}/report,
.../providers/events) through the same service functions (keyplane.providers.service, by way of
keyplane.web.features); `keyplane providers report --json` shares the report through keyplane.providers.report.
"""

from __future__ import annotations

from typing import Any

from starlette.responses import Response
from starlette.routing import Route

from keyplane.web import features
from keyplane.web.base import Ctx, view

DEFAULT_UNUSED_DAYS = 30

# finding -> (title, what it means, columns shown: (field, label))
_KEY_COLS = (
    ("id", "Key id"),
    ("project_id", "Provider project"),
    ("redacted_value", "Key"),
    ("created_at", "Created"),
    ("last_used_at", "Last used"),
)
FINDINGS: tuple[tuple[str, str, str, tuple[tuple[str, str], ...]], ...] = (
    (
        "unused_keys",
        "Unused keys",
        "Project keys not used (or, never used, created) in the last {days} days.",
        _KEY_COLS,
    ),
    (
        "keys_of_departed_users",
        "Keys of departed users",
        "Keys owned by a user who is no longer in the organization.",
        (*_KEY_COLS, ("owner_user_id", "Owner")),
    ),
    (
        "keys_in_default_project",
        "Keys in the default project",
        "Keys in the project named “Default project”, which every member can use.",
        _KEY_COLS,
    ),
    (
        "service_accounts_without_keys",
        "Service accounts without keys",
        "Service accounts that own no key.",
        (("id", "Service account"), ("project_id", "Provider project"), ("name", "Name")),
    ),
    (
        "admin_keys_without_expiry",
        "Admin keys without expiry",
        "Organization admin keys with no expiry date.",
        (("id", "Admin key id"), ("name", "Name"), ("redacted_value", "Key")),
    ),
    (
        "projects_without_spend_limit",
        "Projects without a spend limit",
        "Active projects with no hard monthly spend limit set at the provider.",
        (("id", "Provider project"), ("name", "Name")),
    ),
    (
        "projects_spend_limit_unknown",
        "Projects whose spend limit is unknown",
        "The provider did not show these projects' spend limit; they are not counted as unlimited.",
        (("id", "Provider project"), ("name", "Name"), ("reason", "Why")),
    ),
)
_TIMES = ("created_at", "last_used_at")


def _days(raw: str | None) -> int:
    try:
        v = int(raw or DEFAULT_UNUSED_DAYS)
    except ValueError:
        return DEFAULT_UNUSED_DAYS
    return min(max(v, 1), 3650)


@view()
async def providers_page(ctx: Ctx) -> Response:
    days = _days(ctx.request.query_params.get("unused_days"))
    listed = await features.providers(ctx)
    items: list[dict[str, Any]] = []
    for p in listed.items():
        rep = await features.provider_report(ctx, str(p.get("id") or ""), days)
        items.append(
            {
                "provider": p,
                "report": rep.data if rep.ok and isinstance(rep.data, dict) else None,
                "error": None if rep.ok else rep.error,
            }
        )
    events = await features.provider_events(ctx, limit=20) if items else None
    return ctx.render(
        "providers.html",
        nav="providers",
        available=listed.available,
        error=None if listed.ok or not listed.available else listed.error,
        providers=items,
        days=days,
        findings=FINDINGS,
        times=_TIMES,
        events=events.items() if events else [],
    )


ROUTES = [Route("/providers", providers_page, methods=["GET"])]
