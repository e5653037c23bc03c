"""keyplane's short-lived workload access tokens (docs/sso-and-workload-identity.md, docs/security.md).

    sk-kp-wit-<base64url(JSON payload)>.<base64url(HMAC-SHA256)>

The payload names the federation rule, its service account, the expiry and the rule's generation
(``{"r", "s", "e", "g", "n"}``: a digest of the rule's matchers and its provider's issuer, audience, keys
and transformations when the token was issued, keyplane.identity.state.generation);
the MAC is HMAC-SHA256 over the payload's base64 text, keyed with a key derived from the server secret
(KEYPLANE_SECRET_KEY) for this use only. Nothing is stored per token: a token is accepted while its MAC
checks (constant-time), it has not expired, its rule, provider and service account are still enabled
and the rule's generation is unchanged (editing the terms a token was issued under ends it) in the
in-process identity state (reloaded from every control-plane change: keyplane.identity.state).
The request then runs as the rule's keyless key row, whose snapshot entry holds permissions and limits.

This module is on the request path and imports nothing heavy (keyplane.auth imports it).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from typing import Any, Protocol

import orjson

from keyplane import errors
from keyplane.snapshot import KeyEntry, Snapshot

PREFIX = "sk-kp-wit-"
MAX_TOKEN = 1024
_DOMAIN = b"keyplane workload access token v1"
_SHOWN = "sk-kp-wit-..."


class RuleView(Protocol):  # read-only: the state's RuleEntry is frozen
    @property
    def enabled(self) -> bool: ...

    @property
    def provider_id(self) -> str: ...

    @property
    def service_account_id(self) -> str: ...

    @property
    def key_id(self) -> str: ...

    @property
    def generation(self) -> str: ...


class IdentityView(Protocol):
    """What the token check needs of the identity state (keyplane.identity.state.IdentityState)."""

    def rule(self, rule_id: str) -> RuleView | None: ...

    def provider_enabled(self, provider_id: str) -> bool: ...


def _mac_key(secret: bytes) -> bytes:
    return hmac.new(secret, _DOMAIN, hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def mint(secret: bytes, *, rule_id: str, service_account_id: str, expires_at: int, generation: str = "") -> str:
    payload = _b64(
        orjson.dumps(
            {"r": rule_id, "s": service_account_id, "e": expires_at, "g": generation, "n": secrets.token_urlsafe(9)}
        )
    )
    mac = hmac.new(_mac_key(secret), payload.encode(), hashlib.sha256).digest()
    return f"{PREFIX}{payload}.{_b64(mac)}"


def _refused(why: str) -> errors.APIError:
    return errors.key_inactive(_SHOWN, why)


def verify(secret: bytes, token: str, now: float) -> tuple[str, str]:
    """(rule id, service account id) of a well-formed, authentic, unexpired token, or a 401."""
    claims = _claims(secret, token, now)
    return claims["r"], claims["s"]


def expires_at(secret: bytes, token: str, now: float) -> int:
    """When a well-formed, authentic, unexpired token expires (a 401 otherwise): what it mints (a realtime
    client secret) expires no later."""
    exp: int = _claims(secret, token, now)["e"]
    return exp


def generation_of(secret: bytes, token: str, now: float) -> str:
    """The rule generation an authentic, unexpired token was issued under ("" for none; a 401 otherwise)."""
    gen = _claims(secret, token, now).get("g")
    return gen if isinstance(gen, str) else ""


def _claims(secret: bytes, token: str, now: float) -> dict[str, Any]:
    if len(token) > MAX_TOKEN or not token.startswith(PREFIX) or token.count(".") != 1:
        raise errors.invalid_key(_SHOWN, "The workload access token is malformed.")
    payload, _, mac_text = token[len(PREFIX) :].partition(".")
    expected = hmac.new(_mac_key(secret), payload.encode(), hashlib.sha256).digest()
    try:
        mac = _unb64(mac_text)
        claims = orjson.loads(_unb64(payload)) if hmac.compare_digest(mac, expected) else None
    except (binascii.Error, ValueError, orjson.JSONDecodeError):
        claims = None
    if not isinstance(claims, dict):
        raise errors.invalid_key(_SHOWN, "The workload access token is not one this server issued.")
    rule_id, sa_id, exp = claims.get("r"), claims.get("s"), claims.get("e")
    if not isinstance(rule_id, str) or not isinstance(sa_id, str) or not isinstance(exp, int):
        raise errors.invalid_key(_SHOWN, "The workload access token is malformed.")
    if now >= exp:
        raise _refused("has expired: exchange a fresh workload token at /oauth/token.")
    return claims


def entry_for(secret: bytes, token: str, now: float, state: IdentityView | None, snap: Snapshot) -> KeyEntry:
    """The key entry a workload access token acts as, or a 401 naming why not."""
    claims = _claims(secret, token, now)
    rule_id, sa_id = claims["r"], claims["s"]
    rule = state.rule(str(rule_id)) if state is not None else None
    if rule is None or rule.service_account_id != sa_id:
        raise _refused("is no longer valid: its federation rule was deleted.")
    if not rule.enabled:
        raise _refused("is no longer valid: its federation rule is disabled.")
    gen = claims.get("g")
    if not isinstance(gen, str) or not hmac.compare_digest(gen, rule.generation):
        raise _refused(
            "is no longer valid: its federation rule or provider changed since it was issued; "
            "exchange a fresh workload token at /oauth/token."
        )
    if not state or not state.provider_enabled(rule.provider_id):
        raise _refused("is no longer valid: its workload identity provider is disabled or deleted.")
    entry = snap.keys_by_id.get(rule.key_id)
    if entry is None or entry.service_account_id != sa_id:
        raise _refused("is no longer valid: its service account was deleted.")
    why = entry.inactive_reason(now)
    if why:
        raise _refused(why)
    return entry
