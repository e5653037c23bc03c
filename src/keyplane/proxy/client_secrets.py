"""Ephemeral client secrets for browser Realtime sessions (``POST /v1/realtime/client_secrets``).

A key with ``api.model.request`` mints a short-lived secret (``ek_kp_...``, 10 s to 2 h, 10 min by
default) that a browser passes in the WebSocket subprotocol (``openai-insecure-api-key.<secret>``) to
open one or more ``/v1/realtime`` sessions before it expires. The secret is signed, not stored: it
names the key, its project, its expiry and (when the request named one) the only model it may open,
under an HMAC with the instance's secret key (every instance of a fleet shares it). A session opened
with it is the key's own: authorized, admitted, metered and cut exactly as the key (revoking the key
ends its secrets and their live sessions; the secret's expiry only bounds when a session may start).

A secret minted with a workload identity access token (``sk-kp-wit-``) expires no later than that token,
and it (and every session it opened) ends when the token's federation rule or provider is disabled or
deleted, as the token does (keyplane.identity.state.IdentityState.key_ended).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Awaitable, Callable
from typing import Any, Final

import orjson

from keyplane import errors
from keyplane.identity import tokens as workload_tokens
from keyplane.proxy import request
from keyplane.runtime import Runtime
from keyplane.snapshot import KeyEntry

PATH: Final = "/v1/realtime/client_secrets"
PREFIX: Final = "ek_kp_"
SCOPE: Final = "api.model.request"
DEFAULT_SECONDS: Final = 600
MIN_SECONDS: Final = 10
MAX_SECONDS: Final = 7200
MAX_BODY: Final = 64 * 1024
_DOMAIN: Final = b"keyplane realtime client secret v1\x00"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(secret: bytes, payload: str) -> str:
    return _b64(hmac.new(secret, _DOMAIN + payload.encode("ascii"), hashlib.sha256).digest())


async def mint(
    rt: Runtime,
    entry: KeyEntry,
    scope: dict[str, Any],
    receive: Any,
    own_model: Callable[[str], Awaitable[None]] | None = None,
) -> dict[str, Any]:
    """The answer to POST /v1/realtime/client_secrets (OpenAI's ClientSecretCreateResponse shape).

    ``own_model`` refuses a fine-tuned model another project made (proxy/intake.own_model); the handshake
    checks the secret's model again."""
    if not entry.permissions.allows(SCOPE):
        raise errors.missing_scope(SCOPE)
    body = await request.read_body(scope, receive, MAX_BODY)
    obj: Any = {}
    if body.strip():
        try:
            obj = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise errors.invalid_json() from None
    if not isinstance(obj, dict):
        raise errors.not_a_json_object()
    seconds = DEFAULT_SECONDS
    after = obj.get("expires_after")
    if after is not None:
        s = after.get("seconds") if isinstance(after, dict) else None
        if not isinstance(s, int) or isinstance(s, bool) or not MIN_SECONDS <= s <= MAX_SECONDS:
            raise errors.invalid_value(
                "expires_after.seconds",
                f"'expires_after.seconds' must be an integer from {MIN_SECONDS} to {MAX_SECONDS}.",
            )
        seconds = s
    session = obj.get("session")
    if session is not None and not isinstance(session, dict):
        raise errors.invalid_value("session", "'session' must be an object.")
    model = (session or {}).get("model")
    if model is not None and (not isinstance(model, str) or not 0 < len(model) <= 256):
        raise errors.invalid_value("session.model", "'session.model' must be a model name.")
    access = rt.features.access
    if access is not None and model is not None:  # a secret for a model the key may not use is refused now
        access.check_request(entry.project_id, entry.id, PATH, "POST", model, True, b"", False)
    if own_model is not None and model is not None:
        await own_model(model)
    kind = (session or {}).get("type", "realtime")
    if kind != "realtime":
        raise errors.invalid_value("session.type", "keyplane relays realtime sessions only (`type: realtime`).")
    now = rt.clock.now()
    expires_at = int(now) + seconds
    claims: dict[str, Any] = {"k": entry.id, "p": entry.project_id, "e": expires_at, "m": model}
    if workload_key(rt, entry.id):  # never outlives the workload access token that asked for it, nor its terms
        token_expiry, claims["g"] = _workload_token(rt, scope, now)
        claims["e"] = expires_at = min(expires_at, token_expiry)
    payload = _b64(orjson.dumps(claims))
    value = f"{PREFIX}{payload}.{_sign(rt.settings.secret_key, payload)}"
    return {
        "value": value,
        "expires_at": expires_at,
        "session": {"type": "realtime", "object": "realtime.session", "model": model, "expires_at": expires_at},
    }


def workload_key(rt: Runtime, key_id: str) -> bool:
    """Whether a key is a federation rule's keyless key (it acts only through workload access tokens)."""
    identity = rt.features.identity
    return identity is not None and key_id in identity.by_key


def workload_ended(rt: Runtime, key_id: str, generation: str | None = None) -> str | None:
    """Why a federation rule's key may no longer act (rule or provider disabled or deleted, or changed since
    the ``generation`` its token was issued under), else None."""
    identity = rt.features.identity
    return identity.key_ended(key_id, generation) if identity is not None else None


def _workload_token(rt: Runtime, scope: dict[str, Any], now: float) -> tuple[int, str]:
    """(expiry, rule generation) of the workload access token a request authenticated with."""
    for _, v in scope["headers"]:
        value = v.decode("latin-1").strip()
        value = value[7:].strip() if value[:7].lower() == "bearer " else value
        if value.startswith(workload_tokens.PREFIX):
            secret = rt.settings.secret_key
            return (workload_tokens.expires_at(secret, value, now), workload_tokens.generation_of(secret, value, now))
    return int(now), ""  # not found: nothing to bound it by, so nothing usable is minted


def verify(rt: Runtime, token: str) -> tuple[KeyEntry, str | None, str | None]:
    """The key a client secret was minted for, the model it is bound to, and (minted with a workload access
    token) the rule generation that token was issued under; or a 401."""
    refused = errors.invalid_key(
        PREFIX + "..." + token[-4:] if len(token) > 12 else PREFIX + "...",
        "The realtime client secret is not valid, has expired, or its key is no longer active.",
    )
    payload, _, sig = token[len(PREFIX) :].partition(".")
    if not payload or not sig or len(token) > 1024 or not payload.isascii() or not sig.isascii():
        raise refused
    if not hmac.compare_digest(sig, _sign(rt.settings.secret_key, payload)):
        raise refused
    try:
        claims = orjson.loads(_unb64(payload))
    except (ValueError, orjson.JSONDecodeError):
        raise refused from None
    if not isinstance(claims, dict) or not isinstance(claims.get("e"), int):
        raise refused
    now = rt.clock.now()
    if now >= claims["e"]:
        raise refused
    snap = rt.snapshot
    entry = snap.keys_by_id.get(str(claims.get("k")))
    if entry is None or entry.project_id != claims.get("p") or entry.inactive_reason(now):
        raise refused
    gen = claims.get("g")
    generation = gen if isinstance(gen, str) else None
    if workload_key(rt, entry.id) and (generation is None or workload_ended(rt, entry.id, generation)):
        raise refused  # minted with a workload token whose rule or provider was disabled or changed since
    if entry.project_id is not None:
        p = snap.projects.get(entry.project_id)
        if p is None or p.status != "active":
            raise errors.project_archived(entry.redacted_value, p.name if p else entry.project_id, entry.project_id)
    model = claims.get("m")
    return entry, model if isinstance(model, str) else None, generation
