"""The /v1 proxy (data plane). Placeholder until the data plane lands: every path answers 404."""

from __future__ import annotations

from typing import Any

from keyplane import errors
from keyplane.runtime import Runtime


async def build_proxy(rt: Runtime) -> Any:
    from keyplane.app import send_error

    async def proxy(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send_error(send, errors.unknown_url(scope["method"], scope["path"]))

    return proxy
