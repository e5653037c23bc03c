"""The provider Admin API client: cursor and page paging, retries on 429/5xx/timeouts, no secret leaks.

httpx rather than the official SDK: the retries must wait on keyplane's injected clock (tests replay
429s with ``retry-after`` without sleeping) and errors must never carry the admin key. The admin key is
read from the environment variable the config names, at each connector's creation, and lives only in
the Authorization header. httpx is imported when a connector is made: a node with no ``[[providers]]``
never loads it (~2 MB of resident modules, issue 13).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from keyplane.providers.config import ProviderSection

if TYPE_CHECKING:
    import httpx

USAGE_KINDS = (
    "completions",
    "embeddings",
    "moderations",
    "images",
    "audio_speeches",
    "audio_transcriptions",
    "vector_stores",
    "code_interpreter_sessions",
    "file_search_calls",
    "web_search_calls",
)
_GROUP_BY = {
    "completions": ("project_id", "api_key_id", "model"),
    "embeddings": ("project_id", "api_key_id", "model"),
    "moderations": ("project_id", "api_key_id", "model"),
    "images": ("project_id", "api_key_id", "model"),
    "audio_speeches": ("project_id", "api_key_id", "model"),
    "audio_transcriptions": ("project_id", "api_key_id", "model"),
    "vector_stores": ("project_id",),
    "code_interpreter_sessions": ("project_id",),
    "file_search_calls": ("project_id", "api_key_id"),
    "web_search_calls": ("project_id", "api_key_id", "model"),
}
MAX_PAGES = 1000  # a provider that pages forever is a bug, not a reason to loop forever
MAX_RETRIES = 4
MAX_RETRY_AFTER = 60.0

Sleep = Callable[[float], Awaitable[None]]


class ProviderError(Exception):
    """The provider could not be reached or refused; the message names the call, never the key."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class Connector:
    def __init__(
        self,
        cfg: ProviderSection,
        env: Mapping[str, str] | None = None,
        *,
        sleep: Sleep = asyncio.sleep,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.cfg = cfg
        self.name = cfg.name
        key = (env if env is not None else os.environ).get(cfg.admin_key_env, "")
        if not key:
            raise ProviderError(
                f"provider {cfg.name}: the environment variable {cfg.admin_key_env} (admin_key_env) is not set"
            )
        self._sleep = sleep
        import httpx

        self._http = httpx.AsyncClient(
            base_url=cfg.base_url.rstrip("/"),
            timeout=cfg.timeout,
            transport=transport,
            headers={"authorization": f"Bearer {key}"},
            follow_redirects=False,
        )
        self.calls = 0

    async def close(self) -> None:
        await self._http.aclose()

    async def request(
        self,
        method: str,
        path: str,
        params: list[tuple[str, str]] | None = None,
        json: dict[str, Any] | None = None,
        *,
        retry: bool = True,
    ) -> dict[str, Any]:
        """One call, retried on 429, 5xx and timeouts (``retry=False``: a create that must not run twice)."""
        import httpx

        what = f"{method} {path}"
        for attempt in range(MAX_RETRIES + 1 if retry else 1):
            self.calls += 1
            try:
                r = await self._http.request(method, path, params=tuple(params or ()), json=json)
            except httpx.TimeoutException:
                if attempt == MAX_RETRIES or not retry:
                    raise ProviderError(f"provider {self.name}: {what} timed out") from None
                await self._sleep(min(2.0**attempt, MAX_RETRY_AFTER))
                continue
            except httpx.HTTPError as e:
                raise ProviderError(f"provider {self.name}: {what} failed ({type(e).__name__})") from None
            if r.status_code == 429 or r.status_code >= 500:
                if attempt == MAX_RETRIES or not retry:
                    raise ProviderError(f"provider {self.name}: {what} answered {r.status_code}", r.status_code)
                await self._sleep(_retry_after(r, attempt))
                continue
            if r.status_code >= 400:
                raise ProviderError(
                    f"provider {self.name}: {what} answered {r.status_code}: {_message(r)}", r.status_code
                )
            try:
                body = r.json()
            except ValueError:
                raise ProviderError(f"provider {self.name}: {what} answered invalid JSON") from None
            if not isinstance(body, dict):
                raise ProviderError(f"provider {self.name}: {what} answered an unexpected shape")
            return body
        raise AssertionError("unreachable")

    async def list_all(self, path: str) -> list[dict[str, Any]]:
        """Every item of a cursor-paged list (``after``/``has_more``/``last_id``)."""
        out: list[dict[str, Any]] = []
        after: str | None = None
        for _ in range(MAX_PAGES):
            params = [("limit", "100")] + ([("after", after)] if after else [])
            body = await self.request("GET", path, params)
            data = body.get("data") or []
            out.extend(d for d in data if isinstance(d, dict))
            after = body.get("last_id")
            if not body.get("has_more") or not after:
                return out
        raise ProviderError(f"provider {self.name}: GET {path} pages without end")

    async def buckets(self, path: str, params: list[tuple[str, str]]) -> AsyncIterator[dict[str, Any]]:
        """Every bucket of a page-paged usage or costs answer (``page``/``next_page``)."""
        page: str | None = None
        for _ in range(MAX_PAGES):
            body = await self.request("GET", path, params + ([("page", page)] if page else []))
            for b in body.get("data") or []:
                if isinstance(b, dict):
                    yield b
            page = body.get("next_page")
            if not body.get("has_more") or not page:
                return
        raise ProviderError(f"provider {self.name}: GET {path} pages without end")

    def usage(self, kind: str, start: int, end: int) -> AsyncIterator[dict[str, Any]]:
        params = [("start_time", str(start)), ("end_time", str(end)), ("bucket_width", "1h"), ("limit", "168")]
        params += [("group_by", g) for g in _GROUP_BY[kind]]
        return self.buckets(f"/organization/usage/{kind}", params)

    def costs(self, start: int, end: int) -> AsyncIterator[dict[str, Any]]:
        params = [
            ("start_time", str(start)),
            ("end_time", str(end)),
            ("bucket_width", "1d"),
            ("limit", "30"),
            ("group_by", "project_id"),
        ]
        return self.buckets("/organization/costs", params)

    async def delete_key(self, project_id: str, key_id: str) -> dict[str, Any]:
        return await self.request("DELETE", f"/organization/projects/{_seg(project_id)}/api_keys/{_seg(key_id)}")

    async def spend_limit(self, project_id: str) -> dict[str, Any] | None:
        """The project's hard spend limit (GET /organization/projects/{id}/spend_limit), None when none is set.

        A 404 answer means "no limit set", except OpenAI's "Invalid URL" 404 (an API without the endpoint),
        which is raised like every other refusal (403: an admin key without the permission): the caller
        records the limit as unknown, never as missing."""
        path = f"/organization/projects/{_seg(project_id)}/spend_limit"
        try:
            body = await self.request("GET", path)
        except ProviderError as e:
            if e.status == 404 and "Invalid URL" not in str(e):
                return None
            raise
        return body if body.get("threshold_amount") is not None else None

    # --- provisioning (keyplane.providers.bindings): the answers carry a key value, never logged ---------

    async def get_project(self, project_id: str) -> dict[str, Any]:
        return await self.request("GET", f"/organization/projects/{_seg(project_id)}")

    async def create_service_account(self, project_id: str, name: str) -> dict[str, Any]:
        """POST /organization/projects/{id}/service_accounts: the account and its first key (``api_key.value``,
        shown once). Not retried: a retry after a lost answer would make a second account."""
        return await self.request(
            "POST", f"/organization/projects/{_seg(project_id)}/service_accounts", json={"name": name}, retry=False
        )

    async def create_service_account_key(self, project_id: str, account_id: str, name: str) -> dict[str, Any]:
        """POST /organization/projects/{id}/service_accounts/{sa}/api_keys: a new key (``value``) of the account."""
        return await self.request(
            "POST",
            f"/organization/projects/{_seg(project_id)}/service_accounts/{_seg(account_id)}/api_keys",
            json={"name": name},
            retry=False,
        )

    async def delete_service_account(self, project_id: str, account_id: str) -> dict[str, Any]:
        return await self.request(
            "DELETE", f"/organization/projects/{_seg(project_id)}/service_accounts/{_seg(account_id)}"
        )


def _seg(value: str) -> str:
    """An id in a path: refuse anything that could change the path (ids come from the provider's own lists)."""
    if not value or not all(c.isalnum() or c in "-_" for c in value):
        raise ProviderError(f"invalid provider object id {value[:40]!r}")
    return value


def _retry_after(r: httpx.Response, attempt: int) -> float:
    raw = r.headers.get("retry-after-ms")
    try:
        if raw is not None:
            return min(max(float(raw) / 1000, 0.0), MAX_RETRY_AFTER)
        raw = r.headers.get("retry-after")
        if raw is not None:
            return min(max(float(raw), 0.0), MAX_RETRY_AFTER)
    except ValueError:
        pass
    return min(0.5 * 2.0**attempt, MAX_RETRY_AFTER)


def _message(r: httpx.Response) -> str:
    try:
        err = r.json().get("error") or {}
        msg = str(err.get("message") or "")
    except (ValueError, AttributeError):
        msg = ""
    # The provider may echo a redacted key; keep only a short, single line.
    return msg.splitlines()[0][:200] if msg else "(no message)"
