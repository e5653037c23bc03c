"""Verification of OIDC tokens (JWTs) against an issuer's JWKS: signatures, algorithm, time and audience.

The algorithm is pinned by the key, never taken from the token: the JWK's ``alg`` (or the one its type
implies) must equal the header's, and only asymmetric algorithms are accepted (no ``none``, no HMAC with
a public key as the secret). exp, iat, iss and aud are required and checked, nbf when present, with a small
leeway. Keys are found by ``kid``; an unknown kid refetches the JWKS (at most every MIN_REFETCH seconds),
which is how an issuer's key rotation is followed. PyJWT is imported at the first token it reads, not
at start-up: a node that never exchanges a token does not keep its modules resident (issue 13).
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson

LEEWAY_SECONDS = 60
MAX_SUBJECT_TOKEN = 16 * 1024
MAX_DOCUMENT = 512 * 1024
JWKS_TTL = 300.0
MIN_REFETCH = 10.0
ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"})


class TokenRejected(Exception):
    """Why a subject token was refused, in words safe to show the caller (never the token itself)."""


def check_url(url: str) -> str:
    """An https URL, or http to a loopback address (an issuer run next to keyplane, or a test's)."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return url
    if parts.scheme == "http" and parts.hostname:
        host = parts.hostname
        try:
            loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if loopback:
            return url
    raise ValueError(f"'{url}' is not an https URL (plain http is accepted only for a loopback address).")


async def get_json(session: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with session.get(check_url(url), allow_redirects=False) as r:
        if r.status != 200:
            raise TokenRejected(f"The issuer's {url} answered HTTP {r.status}.")
        body = await r.content.read(MAX_DOCUMENT + 1)
    if len(body) > MAX_DOCUMENT:
        raise TokenRejected(f"The issuer's {url} is too large.")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise TokenRejected(f"The issuer's {url} is not JSON.") from None
    if not isinstance(data, dict):
        raise TokenRejected(f"The issuer's {url} is not a JSON object.")
    return data


@dataclass
class _Cached:
    keys: list[dict[str, Any]]
    fetched: float


class JwksCache:
    """JWKS per provider, fetched through the discovery document (or given inline: uploaded_jwks)."""

    def __init__(self, timeout: float = 5.0) -> None:
        self._cache: dict[str, _Cached] = {}
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self.min_refetch = MIN_REFETCH
        self._locks: dict[str, asyncio.Lock] = {}  # one per provider: a slow or dead issuer delays no other
        self._failed: dict[str, float] = {}  # when a provider's last fetch failed: retried after min_refetch

    async def _fetch(self, issuer: str, verification: dict[str, Any]) -> list[dict[str, Any]]:
        async with aiohttp.ClientSession(timeout=self._timeout) as session:
            url = verification.get("discovery_url") or issuer.rstrip("/") + "/.well-known/openid-configuration"
            doc = await get_json(session, url)
            jwks_uri = doc.get("jwks_uri")
            if not isinstance(jwks_uri, str):
                raise TokenRejected("The issuer's discovery document has no jwks_uri.")
            jwks = await get_json(session, jwks_uri)
        keys = jwks.get("keys")
        return [k for k in keys if isinstance(k, dict)] if isinstance(keys, list) else []

    async def keys(
        self, provider_id: str, issuer: str, verification: dict[str, Any], kid: str | None
    ) -> list[dict[str, Any]]:
        if verification.get("type") == "uploaded_jwks":
            jwks = verification.get("jwks") or {}
            keys = jwks.get("keys") if isinstance(jwks, dict) else None
            return [k for k in keys if isinstance(k, dict)] if isinstance(keys, list) else []
        now = time.monotonic()
        # Keyed by what the keys were fetched for, not by the provider alone: an issuer or discovery URL changed
        # on another instance (which cannot forget() this cache) is never verified with the old issuer's keys.
        provider_id = f"{provider_id}\x00{issuer}\x00{orjson.dumps(verification, option=orjson.OPT_SORT_KEYS).decode()}"
        cached = self._cache.get(provider_id)
        stale = cached is None or now - cached.fetched > JWKS_TTL
        unknown_kid = cached is not None and kid is not None and not any(k.get("kid") == kid for k in cached.keys)
        if stale or (unknown_kid and cached is not None and now - cached.fetched >= self.min_refetch):
            if now - self._failed.get(provider_id, -1e9) < self.min_refetch:
                raise TokenRejected("The issuer's keys could not be fetched (recently failed; retried shortly).")
            lock = self._locks.setdefault(provider_id, asyncio.Lock())
            async with lock:  # one fetch at a time per provider: a burst of exchanges is not a burst of fetches
                again = self._cache.get(provider_id)
                if again is cached:
                    try:
                        cached = self._cache[provider_id] = _Cached(
                            await self._fetch(issuer, verification), time.monotonic()
                        )
                        self._failed.pop(provider_id, None)
                    except (aiohttp.ClientError, TimeoutError, ValueError, TokenRejected) as e:
                        self._failed[provider_id] = time.monotonic()
                        if isinstance(e, TokenRejected):
                            raise
                        raise TokenRejected(f"The issuer's keys could not be fetched ({type(e).__name__}).") from None
                else:
                    cached = again
        return cached.keys if cached is not None else []

    def forget(self, provider_id: str) -> None:
        for k in [k for k in self._cache if k.partition("\x00")[0] == provider_id]:
            del self._cache[k]
        for k in [k for k in self._failed if k.partition("\x00")[0] == provider_id]:
            del self._failed[k]


def key_id(token: str) -> str | None:
    """The ``kid`` of a token's header (unverified: only to pick the key), or None."""
    import jwt

    try:
        kid = jwt.get_unverified_header(token).get("kid")
    except jwt.PyJWTError:
        return None
    return kid if isinstance(kid, str) else None


def _pinned_algorithm(jwk: dict[str, Any]) -> str | None:
    alg = jwk.get("alg")
    if isinstance(alg, str):
        return alg
    kty, crv = jwk.get("kty"), jwk.get("crv")
    if kty == "RSA":
        return "RS256"
    if kty == "EC":
        return {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}.get(str(crv))
    if kty == "OKP" and crv in ("Ed25519", "Ed448"):
        return "EdDSA"
    return None


def verify(token: str, keys: list[dict[str, Any]], *, issuer: str, audience: str) -> dict[str, Any]:
    """The claims of a token signed by one of ``keys`` for ``issuer`` and ``audience``, or TokenRejected."""
    if len(token) > MAX_SUBJECT_TOKEN:
        raise TokenRejected("The subject token is too large.")
    import jwt

    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise TokenRejected("The subject token is not a JWT.") from None
    kid, alg = header.get("kid"), header.get("alg")
    usable = [k for k in keys if k.get("use", "sig") == "sig" and (kid is None or k.get("kid") == kid)]
    if not usable or (kid is None and len(usable) != 1):
        raise TokenRejected("No key of the issuer matches the subject token's key id (kid).")
    jwk = usable[0]
    pinned = _pinned_algorithm(jwk)
    if pinned is None or pinned not in ALGORITHMS or alg != pinned:
        raise TokenRejected("The subject token's algorithm is not the one its key is for.")
    try:
        key = jwt.PyJWK(jwk, algorithm=pinned).key
        claims: dict[str, Any] = jwt.decode(
            token,
            key,
            algorithms=[pinned],
            audience=audience,
            issuer=issuer,
            leeway=LEEWAY_SECONDS,
            options={"require": ["exp", "iat", "iss", "aud", "sub"], "verify_iat": True},
        )
    except jwt.ExpiredSignatureError:
        raise TokenRejected("The subject token has expired.") from None
    except jwt.ImmatureSignatureError:
        raise TokenRejected("The subject token is not valid yet (nbf or iat in the future).") from None
    except jwt.InvalidAudienceError:
        raise TokenRejected("The subject token's audience (aud) is not this provider's.") from None
    except jwt.InvalidIssuerError:
        raise TokenRejected("The subject token's issuer (iss) is not this provider's.") from None
    except jwt.MissingRequiredClaimError as e:
        raise TokenRejected(f"The subject token has no '{e.claim}' claim.") from None
    except jwt.PyJWTError:
        raise TokenRejected("The subject token's signature does not verify.") from None
    return claims


def attributes(claims: dict[str, Any], transformations: list[dict[str, str]]) -> dict[str, Any]:
    """The attributes rules match: every scalar top-level claim under its own name, plus each
    transformation's ``attribute`` = the claim at ``expression`` (``assertion.<claim>[.<nested>...]``). An
    attribute a transformation names comes from its expression only: absent when that claim is, whatever
    top-level claim of the same name the token carries."""
    out: dict[str, Any] = {k: v for k, v in claims.items() if isinstance(v, str | bool | int | float)}
    for t in transformations:  # a transformation owns its attribute: never a top-level claim of the same name
        out.pop(t["attribute"], None)
    for t in transformations:
        value = _lookup(claims, t["expression"].removeprefix("assertion.").split("."))
        if isinstance(value, str | bool | int | float):
            out[t["attribute"]] = value
    return out


def _lookup(value: Any, parts: list[str]) -> Any:
    """The claim at a dotted path whose keys may hold dots themselves (Kubernetes' ``kubernetes.io``): at each
    level the longest key that matches is taken. None when there is no such claim."""
    if not parts:
        return value
    if not isinstance(value, dict):
        return None
    for n in range(len(parts), 0, -1):
        key = ".".join(parts[:n])
        if key in value:
            return _lookup(value[key], parts[n:])
    return None


def matches(matchers: dict[str, Any], attrs: dict[str, Any]) -> bool:
    """Every matcher equals its attribute, exactly and of the same type (no globs: a rule names one workload)."""
    return bool(matchers) and all(
        name in attrs and type(attrs[name]) is type(want) and attrs[name] == want for name, want in matchers.items()
    )
