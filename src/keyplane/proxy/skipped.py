"""Upstreams left out at start-up (their provider key is not set), and the error that names them.

With the default keyplane.toml and no ``OPENAI_API_KEY``, a request for ``gpt-4o-mini`` or for
``/v1/files`` has no upstream. "The model does not exist" or a retryable 503 would send the user
looking in the wrong place (and the SDKs would retry in vain): the answer names what is missing,
``upstream openai skipped: $OPENAI_API_KEY is not set``, as a 503 with ``x-should-retry: false``
(docs/proxy.md "Request errors").
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable
from dataclasses import dataclass

from keyplane import errors
from keyplane.config import Upstream
from keyplane.runtime import Runtime


@dataclass(frozen=True, slots=True)
class SkippedUpstream:
    name: str
    env: str  # the variable that is not set
    pattern: re.Pattern[str]
    projects: tuple[str, ...]  # dedicated to these projects (ids or names); () when shared
    stores_objects: bool  # a real provider (not the demo): the one /v1/files, batches... would go to

    def serves(self, model: str) -> bool:
        return self.pattern.fullmatch(model) is not None


@dataclass(frozen=True, slots=True)
class Skipped:
    upstreams: tuple[SkippedUpstream, ...]
    dedicated: frozenset[str]  # every project (id or name) some upstream is dedicated to

    @classmethod
    def of(cls, configured: Iterable[Upstream], used: Iterable[str]) -> Skipped:
        """The configured upstreams the router left out (``used``: the names of those it kept)."""
        configured = list(configured)
        kept = set(used)
        out = []
        for up in configured:
            if up.name in kept or not up.api_key_env:
                continue
            pattern = re.compile("|".join(f"(?:{fnmatch.translate(g)})" for g in up.models) or r"(?!)")
            out.append(SkippedUpstream(up.name, up.api_key_env, pattern, tuple(up.projects), up.base_url != "demo"))
        return cls(tuple(out), frozenset(p for up in configured for p in up.projects))

    def relevant(self, model: str | None, project_id: str | None, project_name: str | None) -> list[SkippedUpstream]:
        """The skipped upstreams that would have served this request had their key been set."""
        mine = {p for p in (project_id, project_name) if p}
        dedicated = bool(mine & self.dedicated)
        found = []
        for up in self.upstreams:
            if (bool(mine & set(up.projects)) if dedicated else not up.projects) and (
                up.serves(model) if model else up.stores_objects
            ):
                found.append(up)
        return found


def no_route(rt: Runtime, model: str | None, project_id: str | None) -> errors.APIError:
    """The error for a request no upstream may serve: what is missing when an upstream was skipped for
    want of its key, else ``model_not_found`` (a model) or ``no_upstream`` (a path with no model)."""
    skipped = rt.features.skipped_upstreams  # this process's (set by build_proxy)
    if skipped is not None and skipped.upstreams:
        p = rt.snapshot.projects.get(project_id or "")
        found = skipped.relevant(model, project_id, p.name if p is not None else None)
        if found:
            return errors.upstream_skipped([(u.name, u.env) for u in found], model)
    if model:
        return errors.model_not_found(model)
    return errors.no_upstream(None)
