"""Ask a keyplane gateway whether found keyplane keys are live, and revoke the live ones.

Only SHA-256(key) leaves this machine: the gateway stores HMAC(server secret, SHA-256(key)), so it
can look a key up from its hash, and a hash that leaks on the way is no key. The admin key goes in
the Authorization header and nowhere else (never in an error message).

Endpoints (admin API, bearer admin key):
    POST {gateway}/v1/organization/api_keys/lookup     {"sha256": ["<hex>", ...]}
        -> {"object": "list", "data": [{"sha256", "id", "project_id", "kind", "status"}, ...]}
    POST {gateway}/v1/organization/api_keys/{id}/revoke {"reason": "leaked: <file>:<line>[@<commit>]"}
        -> the key object
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from keyplane.scan.findings import Finding, ScanError, printable

LOOKUP_PATH: Final = "/v1/organization/api_keys/lookup"
REVOKE_PATH: Final = "/v1/organization/api_keys/{key_id}/revoke"
LOOKUP_BATCH: Final = 100
# A suspension can be lifted: a leaked suspended key is revoked too.
LIVE_STATUSES: Final = frozenset({"active", "suspended"})
STATUSES: Final = frozenset({"active", "revoked", "expired", "suspended"})
_HEX64: Final = re.compile(r"[0-9a-f]{64}")
_KEY_ID: Final = re.compile(r"[A-Za-z0-9_-]{1,128}")


class GatewayError(ScanError):
    """The gateway could not be reached, refused the admin key, or answered out of contract."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status  # the HTTP status of a refusal; None when the gateway was not reached


@dataclass(frozen=True, slots=True)
class KeyStatus:
    sha256: str
    id: str
    project_id: str | None
    kind: str
    status: str
    revoked_now: bool = False


@dataclass(slots=True)
class Verification:
    """What the gateway said about each found keyplane key, by SHA-256."""

    known: dict[str, KeyStatus] = field(default_factory=dict)
    checked: set[str] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)

    def status_of(self, finding: Finding) -> KeyStatus | None:
        return self.known.get(finding.secret_sha256)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    # A redirect would carry the admin key to wherever it points: refuse it.
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        raise urllib.error.HTTPError(req.full_url, code, f"redirect to {newurl} refused", headers, fp)


def is_plain_http(url: str) -> bool:
    """Whether ``url`` is unencrypted http (a URL scheme is case-insensitive: ``HTTP://`` too)."""
    return urllib.parse.urlsplit(url.strip()).scheme.lower() == "http"


def is_loopback(url: str) -> bool:
    host = urllib.parse.urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Gateway:
    def __init__(self, url: str, admin_key: str, timeout: float = 15.0) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ScanError(f"--gateway must be an http(s) URL, not {printable(url)!r}")
        if not admin_key.strip():
            raise ScanError("an admin key is needed: --admin-key or KEYPLANE_ADMIN_KEY")
        self.url = url.rstrip("/")
        self._admin_key = admin_key.strip()
        self._timeout = timeout
        self._opener = urllib.request.build_opener(_NoRedirect)

    def __repr__(self) -> str:
        return f"Gateway({self.url!r})"

    def _post(self, path: str, payload: dict[str, Any]) -> Any:
        # The scheme is checked in __init__: http(s) only.
        request = urllib.request.Request(  # noqa: S310
            self.url + path,
            data=json.dumps(payload).encode(),
            method="POST",
            headers={
                "Authorization": f"Bearer {self._admin_key}",
                "Content-Type": "application/json",
                "Accept": "application/json",
                "User-Agent": "keyplane-scan",
            },
        )
        try:
            with self._opener.open(request, timeout=self._timeout) as response:
                body = response.read()
        except urllib.error.HTTPError as exc:
            raise GatewayError(self._http_error(exc), exc.code) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise GatewayError(f"cannot reach the gateway at {self.url}: {printable(str(reason))}") from None
        try:
            return json.loads(body)
        except ValueError:
            raise GatewayError(f"the gateway at {self.url} answered {path} with something other than JSON") from None

    def _http_error(self, exc: urllib.error.HTTPError) -> str:
        message = ""
        try:
            document = json.loads(exc.read() or b"{}")
            message = str(document["error"]["message"])
        except (ValueError, KeyError, TypeError, OSError):
            message = str(exc.reason)
        # The gateway masks keys in its messages; mask ours again in case a proxy echoes it.
        message = printable(message.replace(self._admin_key, "***"))[:300]
        if exc.code in (401, 403):
            return f"the gateway refused the admin key (HTTP {exc.code}): {message}"
        return f"the gateway answered HTTP {exc.code}: {message}"

    def lookup(self, hashes: list[str]) -> list[KeyStatus]:
        found: list[KeyStatus] = []
        for i in range(0, len(hashes), LOOKUP_BATCH):
            batch = hashes[i : i + LOOKUP_BATCH]
            document = self._post(LOOKUP_PATH, {"sha256": batch})
            data = document.get("data") if isinstance(document, dict) else None
            if not isinstance(data, list):
                raise GatewayError("the gateway's lookup answer has no data list")
            for item in data:
                found.append(_key_status(item, batch))
        return found

    def revoke(self, key_id: str, reason: str) -> dict[str, Any]:
        if not _KEY_ID.fullmatch(key_id):
            raise GatewayError(f"the gateway returned an unusable key id {printable(key_id)!r}")
        document = self._post(REVOKE_PATH.format(key_id=key_id), {"reason": reason})
        if not isinstance(document, dict):
            raise GatewayError("the gateway's revoke answer is not a key object")
        return document


def _key_status(item: object, asked: list[str]) -> KeyStatus:
    if not isinstance(item, dict):
        raise GatewayError("the gateway's lookup answer has an entry that is not an object")
    sha = item.get("sha256")
    if not isinstance(sha, str) or not _HEX64.fullmatch(sha):
        raise GatewayError("the gateway's lookup answer has an entry without a valid sha256")
    # Compare in constant time: these are hashes of secrets.
    if not any(hmac.compare_digest(sha, mine) for mine in asked):
        raise GatewayError("the gateway's lookup answer names a hash that was not asked for")
    key_id, status = item.get("id"), item.get("status")
    if not isinstance(key_id, str) or status not in STATUSES:
        raise GatewayError("the gateway's lookup answer has an entry without an id or a known status")
    project = item.get("project_id")
    return KeyStatus(
        sha256=sha,
        id=key_id,
        project_id=project if isinstance(project, str) else None,
        kind=str(item.get("kind", "")),
        status=str(status),
    )


def revoke_reason(finding: Finding) -> str:
    return f"leaked: {finding.location}"


def verify(findings: Iterable[Finding], gateway: Gateway, revoke: bool) -> Verification:
    """Look up every found keyplane key; with ``revoke``, revoke the live ones (once each)."""
    first: dict[str, Finding] = {}
    for f in findings:
        if f.rule.verifiable:
            first.setdefault(f.secret_sha256, f)
    result = Verification(checked=set(first))
    if not first:
        return result
    for status in gateway.lookup(sorted(first)):
        result.known[status.sha256] = status
    if not revoke:
        return result
    for sha, status in sorted(result.known.items()):
        if status.status not in LIVE_STATUSES:
            continue
        try:
            answer = gateway.revoke(status.id, revoke_reason(first[sha]))
        except GatewayError as exc:
            result.errors.append(f"{status.id}: {exc}")
            continue
        new_status = answer.get("status") if isinstance(answer.get("status"), str) else "revoked"
        result.known[sha] = KeyStatus(
            status.sha256, status.id, status.project_id, status.kind, str(new_status), revoked_now=True
        )
    return result
