"""The flat settings of access policies (docs/access-control.md)."""

from __future__ import annotations

from dataclasses import dataclass

from keyplane.configspec import setting


@dataclass(frozen=True, kw_only=True)
class AccessSettings:
    trusted_proxies: str = setting(
        "",
        "Comma-separated CIDRs of the reverse proxies whose X-Forwarded-For / Forwarded headers are "
        "believed for the client address IP allowlists check. Empty: the socket's peer address only.",
    )
