"""Upstreams left out at start-up (their provider key is not set), and the error that names them.

With the default keyplane.toml and no ``OPENAI_API_KEY``, a request for ``gpt-4o-mini`` or for
``/v1/files`` has no upstream. "The model does not exist" or a retryable 503 would send the user
looking in the wrong place (and the SDKs would retry in vain): the answer names what is missing,
``upstream openai skipped: $OPENAI_API_KEY is not set``, as a 503 with ``x-should-retry: false``
(docs/proxy.md "Request errors").

That answer is for a model keyplane knows (its price table's names and globs, the upstreams' exact model names,
dated snapshots and provider-prefixed or tagged variants of them). A name it does not know, such as a typo that
a skipped upstream's glob happens to match (``gpt-4o-mni`` against ``gpt-*``), answers OpenAI's 404
``model_not_found`` instead, with the closest known name when there is one ("Did you mean `gpt-4o-mini`?"):
setting the provider key would not make that request work.
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from keyplane import errors, model_names
from keyplane.config import Upstream
from keyplane.runtime import Runtime

if TYPE_CHECKING:
    from keyplane.billing.prices import PriceTable


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
        return [
            up
            for up in self.upstreams
            if usable(up.projects, mine, dedicated) and (up.serves(model) if model else up.stores_objects)
        ]


def usable(projects: Iterable[str], mine: set[str], dedicated: bool) -> bool:
    """May a project (known by ``mine``: its id and name) use an upstream dedicated to ``projects`` (none: shared)?
    A project some upstream is dedicated to (``dedicated``) uses only those; any other project only shared ones."""
    return bool(mine.intersection(projects)) if dedicated else not projects


def no_route(rt: Runtime, model: str | None, project_id: str | None, key_id: str = "") -> errors.APIError:
    """The error for a request no upstream may serve: what is missing when an upstream was skipped for
    want of its key, else ``model_not_found`` (a model) or ``no_upstream`` (a path with no model)."""
    skipped = rt.features.skipped_upstreams  # this process's (set by build_proxy)
    p = rt.snapshot.projects.get(project_id or "")
    name = p.name if p is not None else None
    if skipped is not None and skipped.upstreams:
        found = skipped.relevant(model, project_id, name)
        if found and (model is None or known(rt, model)):
            return errors.upstream_skipped([(u.name, u.env) for u in found], model)
        if model:
            return model_not_found(rt, model, found, project_id, name, key_id)
    if model:
        return model_not_found(rt, model, None, project_id, name, key_id)
    return errors.no_upstream(None)


def model_not_found(
    rt: Runtime,
    model: str,
    skipped: list[SkippedUpstream] | None = None,
    project_id: str | None = None,
    project_name: str | None = None,
    key_id: str = "",
) -> errors.APIError:
    """OpenAI's 404 ``model_not_found``, naming the closest known model when one is close ("Did you mean"); with
    none, the skipped upstreams the name would have gone to (a model too new for keyplane's price table).

    A name is suggested only to a key that could use it (:func:`_suggestable`): an upstream dedicated to another
    project, or a model the key's model permissions hide, is named to no one else (GET /v1/models lists neither)."""
    err = errors.model_not_found(model)
    exact, _ = _known_names(rt)
    mine = {x for x in (project_id, project_name) if x}
    upstreams = rt.settings.file.upstreams
    dedicated = any(mine.intersection(up.projects) for up in upstreams)
    patterns = [g.casefold() for up in upstreams if usable(up.projects, mine, dedicated) for g in up.models]
    close = [
        n
        for n in difflib.get_close_matches(model.strip().casefold(), exact, n=5, cutoff=0.8)
        if _suggestable(rt, n, patterns, project_id, key_id)
    ]
    if close:
        err.message += f" Did you mean `{close[0]}`?"
    elif skipped:
        err.message += (
            " (keyplane knows no model by this name; "
            + "; ".join(f"upstream {u.name}, which would be asked, is skipped: ${u.env} is not set" for u in skipped)
            + ".)"
        )
    return err


def known(rt: Runtime, model: str) -> bool:
    """Is ``model`` a model keyplane knows by name: the price table's (exact names and globs) or an exact model
    name of a configured upstream (an upstream's globs say where a name would go, not that it exists); also as a
    dated snapshot or a provider-prefixed or tagged variant of one (``gpt-4o-mini-2024-07-18``,
    ``openai/gpt-4o-mini:nitro``), compared case-insensitively. Every name is known when the administrator
    priced unknown ones (``[prices.default]``): they are expected."""
    from keyplane.billing.prices import family

    if model_names.is_fine_tune(model) or _prices(rt).default is not None:  # only the provider knows fine-tunes
        return True
    exact, globs = _known_names(rt)
    candidates = {n.strip().casefold() for n in model_names.names(model)}
    candidates |= {family(n) for n in candidates}
    return any(n in exact or any(fnmatch.fnmatchcase(n, g) for g in globs) for n in candidates)


_fallback: list[tuple[object, PriceTable]] = []  # (settings, its price table) when billing is off: read once


def _prices(rt: Runtime) -> PriceTable:
    billing = rt.features.billing
    if billing is not None:
        return billing.prices
    s = rt.settings
    if _fallback and _fallback[0][0] is s:  # (the settings object itself is held: no id reused by another)
        return _fallback[0][1]
    from keyplane.billing.prices import PriceTable

    table = PriceTable.from_config(s.file.prices, s.prices_file)
    _fallback[:] = [(s, table)]
    return table


def _suggestable(rt: Runtime, name: str, patterns: list[str], project_id: str | None, key_id: str) -> bool:
    """May ``name`` be suggested to this key: an upstream its project may use serves it (``patterns``: those
    upstreams' model names and globs, by :func:`usable`), and its model permissions show it."""
    access = rt.features.access
    if access is not None and not access.model_visible(project_id, key_id, name):
        return False
    return any(fnmatch.fnmatchcase(name, g) for g in patterns)


def _is_glob(name: str) -> bool:
    return any(c in name for c in "*?[")


def _known_names(rt: Runtime) -> tuple[list[str], list[str]]:
    """(exact names, glob patterns), casefolded: the price table's names and globs, and the exact names among
    the upstreams' ``models``."""
    priced = [n.casefold() for n in _prices(rt).entries if n != "default"]
    served = [m.casefold() for up in rt.settings.file.upstreams for m in up.models if not _is_glob(m)]
    exact = sorted({n for n in priced + served if not _is_glob(n)})
    globs = sorted({n for n in priced if _is_glob(n)})
    return exact, globs
