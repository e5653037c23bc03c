"""RFC 8693 token exchange at ``POST /oauth/token``: a workload's OIDC token in, a keyplane access token out.

Accepts the JSON body the official SDK's workload-identity client posts (openai/auth/_workload.py:
grant_type, subject_token, subject_token_type, identity_provider_id, service_account_id) and the
form-encoded body of RFC 8693. Reads SQL on every exchange (rare, off the request path), so a rule,
provider or service account disabled a moment ago is refused at once. Errors are RFC 6749 shaped
(``{"error", "error_description"}``), which the SDK raises as ``openai.OAuthError``.
"""

from __future__ import annotations

import collections
import ipaddress
import math
import time
from typing import Any
from urllib.parse import parse_qsl

import orjson
from sqlalchemy import select

from keyplane.access import ip
from keyplane.identity import oidc, tokens
from keyplane.identity.models import FederationRuleRow, WorkloadIdentityProviderRow
from keyplane.identity.state import generation
from keyplane.runtime import Runtime
from keyplane.store.models import ServiceAccount

GRANT_TYPE = "urn:ietf:params:oauth:grant-type:token-exchange"
SUBJECT_TYPES = ("urn:ietf:params:oauth:token-type:jwt", "urn:ietf:params:oauth:token-type:id_token")
MAX_BODY = 32 * 1024
ACCESS_TOKEN_SECONDS = 900  # 15 minutes; the SDK refreshes at half-life (min(buffer, expires_in / 2))
# Exchanges are rare (one per workload per ~7 minutes) and each may verify a signature and fetch an issuer's
# keys: bounded per client address and per provider id, on each instance (docs/sso-and-workload-identity.md).
PER_IP = (60, 60.0)  # 60 exchanges a minute from one address, all of them at once at most
PER_PROVIDER = (600, 60.0)  # 600 a minute naming one provider id
MAX_BUCKETS = 10_000  # addresses and provider ids remembered (least recently seen forgotten first)


class RateLimiter:
    """Token buckets by name, on the monotonic clock, at most ``MAX_BUCKETS`` of them."""

    def __init__(self, limit: int, period: float) -> None:
        self.limit, self.rate = limit, limit / period
        self._buckets: collections.OrderedDict[str, tuple[float, float]] = collections.OrderedDict()

    def take(self, name: str) -> float:
        """0 when admitted (one taken), else the seconds until one is."""
        now = time.monotonic()
        tokens, at = self._buckets.pop(name, (float(self.limit), now))
        tokens = min(float(self.limit), tokens + (now - at) * self.rate)
        wait = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / self.rate
        self._buckets[name] = (tokens, now)
        while len(self._buckets) > MAX_BUCKETS:
            self._buckets.popitem(last=False)
        return wait


class _Refused(Exception):
    def __init__(self, status: int, error: str, description: str) -> None:
        self.status, self.error, self.description = status, error, description


class _Limited(Exception):
    def __init__(self, what: str, limit: int, wait: float) -> None:
        self.what, self.limit, self.wait = what, limit, wait


async def _send_limited(send: Any, e: _Limited) -> None:
    """429 in OpenAI's error shape, with the exact wait (the SDK's token exchange raises on it)."""
    secs = max(1, math.ceil(e.wait))
    body = orjson.dumps(
        {
            "error": {
                "message": f"Rate limit reached for token exchanges (/oauth/token) {e.what}: "
                f"limit {e.limit} per minute. "
                f"Please try again in {secs}s.",
                "type": "requests",
                "param": None,
                "code": "rate_limit_exceeded",
            }
        }
    )
    await send(
        {
            "type": "http.response.start",
            "status": 429,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"cache-control", b"no-store"),
                (b"retry-after", str(secs).encode()),
                (b"retry-after-ms", str(max(1, math.ceil(e.wait * 1000))).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _send(send: Any, status: int, body: dict[str, Any]) -> None:
    data = orjson.dumps(body)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(data)).encode()),
                (b"cache-control", b"no-store"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": data})


async def _read(receive: Any) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        msg = await receive()
        chunk = msg.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            raise _Refused(413, "invalid_request", "The request body is too large.")
        chunks.append(chunk)
        if not msg.get("more_body"):
            return b"".join(chunks)


def _params(scope: dict[str, Any], body: bytes) -> dict[str, Any]:
    ctype = next((v for k, v in scope["headers"] if k == b"content-type"), b"").split(b";")[0].strip().lower()
    try:
        if ctype == b"application/x-www-form-urlencoded":
            return dict(parse_qsl(body.decode(), keep_blank_values=True))
        data = orjson.loads(body)
    except (ValueError, orjson.JSONDecodeError):
        raise _Refused(400, "invalid_request", "The body must be JSON or form-encoded.") from None
    if not isinstance(data, dict):
        raise _Refused(400, "invalid_request", "The body must be a JSON object.")
    return data


def _field(p: dict[str, Any], name: str) -> str:
    v = p.get(name)
    if not isinstance(v, str) or not v or len(v) > oidc.MAX_SUBJECT_TOKEN:
        raise _Refused(400, "invalid_request", f"Missing or invalid '{name}'.")
    return v


async def _exchange(rt: Runtime, p: dict[str, Any], per_provider: RateLimiter | None = None) -> dict[str, Any]:
    pid_named = p.get("identity_provider_id")
    if per_provider is not None and isinstance(pid_named, str):
        wait = per_provider.take(pid_named[:128])
        if wait:
            raise _Limited("for this identity provider", per_provider.limit, wait)
    if p.get("grant_type") != GRANT_TYPE:
        raise _Refused(400, "unsupported_grant_type", f"grant_type must be '{GRANT_TYPE}'.")
    if p.get("subject_token_type") not in SUBJECT_TYPES:
        raise _Refused(400, "invalid_request", "subject_token_type must be a JWT or an ID token.")
    subject, pid, sa_id = _field(p, "subject_token"), _field(p, "identity_provider_id"), _field(p, "service_account_id")
    # One refusal for an unknown, disabled or mismatched provider/account: the caller learns nothing about ids.
    denied = _Refused(
        400, "invalid_grant", "No enabled federation rule of this provider binds this token to this service account."
    )
    async with rt.read() as s:
        prov = (
            await s.execute(select(WorkloadIdentityProviderRow).where(WorkloadIdentityProviderRow.id == pid))
        ).scalar()
        sa = (
            await s.execute(
                select(ServiceAccount).where(ServiceAccount.id == sa_id, ServiceAccount.deleted_at.is_(None))
            )
        ).scalar()
        rules = (
            (
                await s.execute(
                    select(FederationRuleRow)
                    .where(
                        FederationRuleRow.provider_id == pid,
                        FederationRuleRow.service_account_id == sa_id,
                        FederationRuleRow.enabled.is_(True),
                    )
                    .order_by(FederationRuleRow.seq)
                )
            )
            .scalars()
            .all()
        )
    if prov is None or not prov.enabled or sa is None or not rules:
        raise denied
    jwks = rt.features.identity_jwks
    if jwks is None:  # the token route is mounted by the identity feature's start, which sets it
        raise RuntimeError("the identity feature is not running")
    try:
        keys = await jwks.keys(prov.id, prov.issuer, orjson.loads(prov.verification), oidc.key_id(subject))
        claims = oidc.verify(subject, keys, issuer=prov.issuer, audience=prov.audience)
    except oidc.TokenRejected as e:
        raise _Refused(400, "invalid_subject_token", str(e)) from None
    attrs = oidc.attributes(claims, orjson.loads(prov.attribute_transformations))
    rule = next(
        (r for r in rules if r.project_id == sa.project_id and oidc.matches(orjson.loads(r.attribute_matchers), attrs)),
        None,
    )
    if rule is None:
        raise denied
    ttl = ACCESS_TOKEN_SECONDS
    exp = int(rt.clock.now()) + ttl
    gen = generation(
        issuer=prov.issuer,
        audience=prov.audience,
        verification=prov.verification,
        transformations=prov.attribute_transformations,
        project_id=rule.project_id,
        service_account_id=rule.service_account_id,
        matchers=rule.attribute_matchers,
    )
    token = tokens.mint(
        rt.settings.secret_key, rule_id=rule.id, service_account_id=sa.id, expires_at=exp, generation=gen
    )
    return {
        "access_token": token,
        "issued_token_type": "urn:ietf:params:oauth:token-type:access_token",
        "token_type": "Bearer",
        "expires_in": ttl,
    }


def _trusted(rt: Runtime) -> tuple[ip.IPNet, ...]:
    try:
        return ip.parse_cidrs([c for c in getattr(rt.settings, "trusted_proxies", "").split(",") if c.strip()])
    except ValueError:
        return ()


def _bucket_of(address: str) -> str:
    """An IPv4 address, or the /64 of an IPv6 one (one host holds a whole /64); unreadable ones share one."""
    a = ip.parse_address(address)
    if a is None:
        return "unknown"
    if a.version == 6:
        return str(ipaddress.ip_network(f"{a}/64", strict=False))
    return str(a)


def token_route(rt: Runtime) -> Any:
    per_ip, per_provider = RateLimiter(*PER_IP), RateLimiter(*PER_PROVIDER)
    trusted = _trusted(rt)

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["method"] != "POST":
            await _send(send, 405, {"error": "invalid_request", "error_description": "Use POST."})
            return
        client = scope.get("client")
        address = _bucket_of(ip.client_address(client[0] if client else None, scope["headers"], trusted))
        try:
            wait = per_ip.take(address)
            if wait:
                raise _Limited("from this address", per_ip.limit, wait)
            answer = await _exchange(rt, _params(scope, await _read(receive)), per_provider)
        except _Limited as e:
            await _send_limited(send, e)
            return
        except _Refused as e:
            await _send(send, e.status, {"error": e.error, "error_description": e.description})
            return
        await _send(send, 200, answer)

    return app
