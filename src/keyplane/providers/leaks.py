"""`keyplane scan --verify/--revoke` for provider keys: found sk-proj-/sk-svcacct- keys against the mirror.

Only the found key's last four characters go to the gateway (POST /v1/organization/providers/keys/match);
the prefix and suffix of each mirrored redacted value are compared here (keyplane.providers.match). With
``revoke``, a key that matches exactly one mirrored key is deleted at the provider through the gateway.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from keyplane.providers.match import SUFFIX_LEN, candidates
from keyplane.scan.findings import ScanError

RULES = frozenset({"openai-project-key", "openai-service-account-key", "openai-key"})
MATCH_PATH = "/v1/organization/providers/keys/match"
REVOKE_PATH = "/v1/organization/providers/{name}/projects/{project_id}/api_keys/{key_id}/revoke"
_ID = re.compile(r"[A-Za-z0-9_.-]{1,128}")


class _Gateway(Protocol):
    def _post(self, path: str, payload: dict[str, Any]) -> Any: ...


class _Finding(Protocol):
    @property
    def secret(self) -> str: ...

    @property
    def location(self) -> str: ...

    @property
    def redacted(self) -> str: ...


@dataclass
class ProviderMatch:
    location: str
    redacted: str
    matches: list[dict[str, Any]]
    revoked: bool = False
    error: str | None = None


@dataclass
class ProviderVerification:
    results: list[ProviderMatch] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = list(self.notes)
        for r in self.results:
            if not r.matches:
                out.append(f"{r.location}: provider key {r.redacted}: not a key of a governed organization")
                continue
            names = ", ".join(f"{m['provider']}/{m['project_id']}/{m['id']}" for m in r.matches)
            state = " (revoked at the provider now)" if r.revoked else ""
            if len(r.matches) > 1:
                state = " (ambiguous: not revoked)"
            if r.error:
                state = f" (revoke failed: {r.error})"
            out.append(f"{r.location}: provider key {r.redacted} is live: {names}{state}")
        return out


def verify_provider_keys(
    findings: Iterable[_Finding], gateway: _Gateway, revoke: bool, rule_of: Any = lambda f: f.rule.id
) -> ProviderVerification:
    found = [f for f in findings if rule_of(f) in RULES and len(f.secret) > SUFFIX_LEN]
    result = ProviderVerification()
    if not found:
        return result
    try:
        answer = gateway._post(MATCH_PATH, {"suffixes": sorted({f.secret[-SUFFIX_LEN:] for f in found})})
    except ScanError as e:
        if getattr(e, "status", None) != 404:
            raise
        # A gateway without the provider connector (an older keyplane, or another service): the provider
        # keys stay findings, unverified; that is said, and is not a failure of the scan.
        result.notes.append(
            "the gateway has no provider connector (POST /v1/organization/providers/keys/match "
            "answered 404): provider keys were not verified"
        )
        return result
    keys = answer.get("data") if isinstance(answer, dict) else None
    if not isinstance(keys, list):
        result.errors.append("the gateway's provider key answer has no data list")
        return result
    done: set[tuple[str, str, str]] = set()
    for f in found:
        m = ProviderMatch(f.location, f.redacted, candidates(f.secret, [k for k in keys if isinstance(k, dict)]))
        result.results.append(m)
        if not revoke or len(m.matches) != 1:
            continue
        k = m.matches[0]
        ident = (str(k.get("provider")), str(k.get("project_id")), str(k.get("id")))
        if not all(_ID.fullmatch(x) for x in ident):
            m.error = "unusable ids in the gateway's answer"
            continue
        if ident in done:
            m.revoked = True
            continue
        try:
            gateway._post(
                REVOKE_PATH.format(
                    **{
                        n: urllib.parse.quote(v, safe="")
                        for n, v in zip(("name", "project_id", "key_id"), ident, strict=True)
                    }
                ),
                {"reason": f"leaked: {f.location}"},
            )
        except Exception as e:  # GatewayError: reported beside the finding, the scan goes on
            m.error = str(e)
            result.errors.append(f"{ident[2]}: {e}")
            continue
        done.add(ident)
        m.revoked = True
    return result
