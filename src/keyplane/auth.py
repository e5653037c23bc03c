"""Authorization header parsing with diagnostics -> principal (the key's snapshot entry).

The fast path is one header scan, a checksum check and a dict lookup by digest (DESIGN.md hot-path
rules 1 and 2). Everything else here runs only on the way to a 401: it tells the caller what went
wrong in words (no ``Bearer``, Basic auth, stray whitespace, a key in the URL, an admin key or an
upstream provider key sent to the proxy), in OpenAI's error shape (reference "Error body").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl

from keyplane import errors, keys
from keyplane.identity import tokens as workload_tokens
from keyplane.runtime import Runtime
from keyplane.snapshot import KeyEntry

# Public scanners key OpenAI keys on this marker (base64 of "OpenAI"); see reference "Key formats".
OPENAI_MARKER = "T3BlbkFJ"
_OPENAI_PREFIXES = ("sk-proj-", "sk-svcacct-", "sk-admin-", "sk-None-")

_BEARER = b"bearer "
_H_AUTH = b"authorization"
_H_ORG = b"openai-organization"
_H_PROJECT = b"openai-project"
_ALT_KEY_HEADERS = (b"api-key", b"x-api-key")


def authenticate(rt: Runtime, headers: list[tuple[bytes, bytes]], query_string: bytes = b"") -> KeyEntry:
    """The active key entry of a /v1 request, or an OpenAI-shaped 401 (APIError)."""
    auth = org = project = None
    for name, value in headers:
        if name == _H_AUTH:
            auth = value
        elif name == _H_ORG:
            org = value
        elif name == _H_PROJECT:
            project = value
    token = bearer_token(auth, headers, query_string)
    if token.startswith(workload_tokens.PREFIX):  # a workload identity access token (keyplane.identity)
        entry = workload_tokens.entry_for(
            rt.settings.secret_key, token, rt.clock.now(), rt.features.identity, rt.snapshot
        )
    elif token_kind(token, query_string) == "admin":
        raise errors.invalid_key(
            keys.mask(token),
            "This is a keyplane admin key (sk-kp-admin-...): it works only on the admin API under "
            "/v1/organization. Model requests need a project key (sk-kp-proj-...) or a service-account "
            "key (sk-kp-svc-...).",
        )
    else:
        entry = active_entry(rt, token)
    snap = rt.snapshot
    if entry.project_id is not None:
        p = snap.projects.get(entry.project_id)
        if p is None or p.status != "active":
            raise errors.project_archived(keys.mask(token), p.name if p else entry.project_id, entry.project_id)
    if org is not None and org.decode("latin-1").strip() not in ("", snap.org_id):
        raise errors.mismatched_organization()
    if project is not None and project.decode("latin-1").strip() not in ("", entry.project_id):
        raise errors.mismatched_project()
    return entry


# --- the steps, shared with the admin API's authentication (admin/common.py) -------------------


def bearer_token(auth: bytes | None, headers: list[tuple[bytes, bytes]], query_string: bytes = b"") -> str:
    """The key of an ``Authorization: Bearer`` header value, or a 401 saying what is wrong with it."""
    if auth is None:
        raise _missing(headers, query_string)
    if auth[:7].lower() != _BEARER:
        raise _not_bearer(auth)
    return auth[7:].decode("latin-1")


def token_kind(token: str, query_string: bytes = b"") -> keys.KeyKind:
    """The kind of a well-formed key; a malformed one is refused here, before any lookup."""
    kind = keys.parse(token)
    if kind is None:
        raise _bad_token(token, query_string)
    return kind


def admin_entry(rt: Runtime, scope: Mapping[str, Any]) -> KeyEntry:
    """The active admin key of a request (the admin API, /metrics): the organization's IP allowlist first, before
    the key is even looked at (docs/access-control.md), then an OpenAI-shaped 401 for anything but an admin key
    that may be used now. What the key may do is its caller's to check (keyplane.members.permissions)."""
    headers: list[tuple[bytes, bytes]] = scope["headers"]
    access = rt.features.access
    if access is not None:
        access.check_org_ip(scope.get("client"), headers)
    qs: bytes = scope.get("query_string", b"")
    value = bearer_token(next((v for k, v in headers if k == _H_AUTH), None), headers, qs)
    if token_kind(value, qs) != "admin":
        raise errors.admin_key_required(
            f"Incorrect API key provided: {keys.mask(value)}. The admin API needs an admin key (sk-kp-admin-...); "
            "project and service-account keys work only on the /v1 model endpoints."
        )
    return active_entry(rt, value)


def active_entry(rt: Runtime, token: str) -> KeyEntry:
    """The snapshot entry of a key that may be used now, or a 401 naming why not."""
    entry = rt.snapshot.keys.get(keys.digest(rt.settings.secret_key, token))
    if entry is None:
        raise errors.invalid_key(keys.mask(token))
    if entry.revoked_at is not None or entry.suspended_at is not None or entry.expires_at is not None:
        why = entry.inactive_reason(rt.clock.now())
        if why:
            raise errors.key_inactive(keys.mask(token), why)
    return entry


# --- diagnostics (only on the way to a 401) -----------------------------------------------------


def _query_key(query_string: bytes) -> str | None:
    if not query_string:
        return None
    for k, v in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True):
        if k.lower() in ("api_key", "key", "apikey", "api-key", "access_token"):
            return v
    return None


def _missing(headers: list[tuple[bytes, bytes]], query_string: bytes) -> errors.APIError:
    in_query = _query_key(query_string)
    if in_query is not None:
        return errors.missing_key(
            "keyplane does not read keys from the URL (?api_key= / ?key=): URLs end up in logs and browser "
            "history. Send the key in the Authorization header instead, and since it has been in a URL, "
            "consider rotating it (`keyplane keys rotate`)."
        )
    for name, _ in headers:
        if name in _ALT_KEY_HEADERS:
            return errors.missing_key(
                f"The key was sent in the `{name.decode()}` header; keyplane reads it only from "
                "`Authorization: Bearer YOUR_KEY` (the OpenAI SDKs do this when given base_url and api_key)."
            )
    return errors.missing_key()


def _not_bearer(auth: bytes) -> errors.APIError:
    value = auth.decode("latin-1").strip()
    scheme = value.split(" ", 1)[0].lower()
    if scheme == "basic":
        return errors.missing_key(
            "The Authorization header uses Basic auth; keyplane expects `Authorization: Bearer YOUR_KEY`."
        )
    if value.startswith("sk-"):
        return errors.missing_key(
            "The Authorization header holds the key without the word `Bearer`: send `Authorization: Bearer sk-kp-...`."
        )
    if scheme == "bearer":  # "Bearer" with nothing after it
        return errors.missing_key("The Authorization header has the word `Bearer` but no key after it.")
    word = value.split(" ", 1)[0]
    # Only a short alphabetic scheme name is echoed: anything else may be the start of a secret.
    shown = f"the scheme `{word}`" if word.isascii() and word.isalpha() and len(word) <= 12 else "an unknown scheme"
    return errors.missing_key(
        f"The Authorization header uses {shown}; keyplane expects `Authorization: Bearer YOUR_KEY`."
    )


def _bad_token(token: str, query_string: bytes) -> errors.APIError:
    masked = keys.mask(token.strip())
    stripped = token.strip()
    for junk in ("\\n", "\\r", "%0A", "%0a", "%0D", "%0d"):
        if stripped.endswith(junk):
            stripped = stripped[: -len(junk)].rstrip()
    if stripped != token and keys.parse(stripped) is not None:
        return errors.invalid_key(
            masked,
            "The key is followed (or preceded) by a space or a newline: remove the whitespace around it "
            "(often a trailing newline from a file or an environment variable, e.g. `echo` without -n).",
        )
    unquoted = stripped.strip("\"'`").strip()
    if unquoted != stripped and keys.parse(unquoted) is not None:
        return errors.invalid_key(
            keys.mask(unquoted),
            "The key is wrapped in quotes: send it without them (`Authorization: Bearer sk-kp-...`). Quotes "
            'often come from an env file or a config value that kept them (`KEY="sk-kp-..."` read as-is).',
        )
    if not stripped:
        return errors.missing_key("The Authorization header has the word `Bearer` but no key after it.")
    if stripped.lower().startswith("bearer "):
        return errors.invalid_key(masked, "The header says `Bearer` twice: send `Authorization: Bearer sk-kp-...`.")
    if OPENAI_MARKER in stripped or stripped.startswith(_OPENAI_PREFIXES):
        return errors.invalid_key(
            masked,
            "This looks like an OpenAI key (sk-proj-..., sk-svcacct-...), not a keyplane key (sk-kp-...). "
            "The provider key belongs on the keyplane server (the `api_key_env` of an upstream); give "
            "clients keyplane keys. If this key was shared by mistake, rotate it at the provider.",
        )
    if stripped.startswith(workload_tokens.PREFIX):  # reaches here only on the admin API
        return errors.invalid_key(
            masked,
            "This is a workload access token (sk-kp-wit-...): it works only on the "
            "/v1 model endpoints; the admin API needs an admin key (sk-kp-admin-...).",
        )
    if keys.looks_like_keyplane_key(stripped):
        return errors.invalid_key(
            masked,
            "The key is malformed (its checksum does not match), so it was refused without a lookup: check "
            "that it was copied whole, with no character added, missing or changed.",
        )
    return errors.invalid_key(masked)
