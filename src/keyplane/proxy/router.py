"""Which upstream serves a request: model globs, weights, and a circuit breaker per upstream.

Built once at start-up from ``[[upstreams]]`` (or, with none configured, from config.DEFAULT_CONFIG).
``serving(model, project)`` names the upstreams whose globs match among those the project may use;
``candidates(pool)`` orders them for one request: the healthy ones shuffled by weight (weighted
sampling without replacement), then weight-0 backups; an upstream whose breaker is open is skipped
until its cooldown ends. The clock and the random source are injected (STYLE.md 6).

Projects (docs/proxy.md "What is isolated between projects"): an upstream whose ``projects`` lists
ids or names is dedicated to them (their own provider credential); a project named by one uses only
its dedicated upstreams (and the demo), every other project only the shared ones. Paths with no
model (files, batches...) never go by weight: ``passthrough_for(project)`` is one upstream, the first
non-demo upstream the project may use in config order, so the objects a project creates are always
found where they were made.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import random
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec

from keyplane.config import DEFAULT_CONFIG, Settings, Upstream

if TYPE_CHECKING:
    from keyplane.proxy.context import RequestContext

log = logging.getLogger("keyplane.proxy")


@dataclass(slots=True)
class Breaker:
    """Consecutive-failure breaker: open for ``cooldown`` s after ``threshold`` failures in a row.

    After the cooldown the upstream is tried again (half-open); one more failure re-opens it at once,
    one success closes it.
    """

    threshold: int
    cooldown: float
    failures: int = 0
    open_until: float = 0.0
    # Tenants whose requests failed in the current run (at most 2 kept). A failure that a request can
    # cause (a 5xx, a timeout after the request was sent) opens the breaker only when two tenants
    # saw it: one tenant cannot shut an upstream for every other (issue #12 item 9). A connection
    # that cannot be made is nobody's request: it counts alone.
    tenants: set[str] = field(default_factory=set)
    anonymous: bool = False

    def available(self, now: float) -> bool:
        return self.failures < self.threshold or self.open_until == 0.0 or now >= self.open_until

    def success(self) -> None:
        self.failures = 0
        self.open_until = 0.0
        self.tenants.clear()
        self.anonymous = False

    def failure(self, now: float, tenant: str | None = None) -> None:
        self.failures += 1
        if tenant is None:
            self.anonymous = True
        elif len(self.tenants) < 2:
            self.tenants.add(tenant)
        if self.failures >= self.threshold and (self.anonymous or len(self.tenants) >= 2):
            self.open_until = now + self.cooldown

    @property
    def state(self) -> str:
        return "open" if self.open_until and self.failures >= self.threshold else "closed"


@dataclass(slots=True)
class Deployment:
    """One configured upstream and its state in this process."""

    config: Upstream
    api_key: str  # resolved from api_key_env at start-up ("" when none)
    breaker: Breaker
    pattern: re.Pattern[str]
    models_url: str = ""
    concrete_models: tuple[str, ...] = field(default_factory=tuple)
    # A dedicated upstream (``projects``) whose key is missing: never used, and its projects fall back to
    # no other upstream (fail closed: they would reach the shared provider key otherwise).
    disabled: bool = False
    # The service tier this upstream serves a request naming none at, when not the standard one: its
    # ``service_tier`` setting, raised by billing's settle when an answer to such a request reports a dearer one
    # (billing/settle.py). Admission reserves tier-less requests at it; kept in this process only.
    default_tier: str | None = None

    def __post_init__(self) -> None:
        if self.default_tier is None and self.config.service_tier not in ("", "default"):
            self.default_tier = self.config.service_tier

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def is_demo(self) -> bool:
        return self.config.base_url == "demo"

    def serves(self, model: str) -> bool:
        return self.pattern.fullmatch(model) is not None


def default_upstreams() -> list[Upstream]:
    data = tomllib.loads(DEFAULT_CONFIG)
    return msgspec.convert(data["upstreams"], list[Upstream])


def usable_upstreams(settings: Settings, env: Mapping[str, str] | None = None) -> tuple[list[Deployment], list[str]]:
    """The deployments this process may use, and a note for each one left out (for logs and doctor)."""
    env = os.environ if env is None else env
    ups = settings.file.upstreams or default_upstreams()
    out: list[Deployment] = []
    notes: list[str] = []
    for up in ups:
        key = env.get(up.api_key_env, "") if up.api_key_env else ""
        disabled = bool(up.api_key_env and not key and up.require_key and up.base_url != "demo")
        if disabled:
            notes.append(f"upstream `{up.name}` is not used: ${up.api_key_env} is not set")
            if not up.projects:
                continue
        pattern = re.compile("|".join(f"(?:{fnmatch.translate(g)})" for g in up.models) or r"(?!)")
        concrete = tuple(g for g in up.models if not any(c in g for c in "*?["))
        out.append(
            Deployment(
                up,
                key,
                Breaker(max(1, up.breaker_failures), up.breaker_cooldown),
                pattern,
                concrete_models=concrete,
                disabled=disabled,
            )
        )
    return out, notes


class Router:
    def __init__(
        self, deployments: list[Deployment], monotonic: Callable[[], float], rng: random.Random | None = None
    ) -> None:
        self.deployments = [d for d in deployments if not d.disabled]
        self.monotonic = monotonic
        self.rng = rng or random.Random()
        self._by_model: dict[tuple[str, str | None], tuple[Deployment, ...]] = {}
        self._shared = tuple(d for d in self.deployments if not d.config.projects)
        # project id or name -> the upstreams dedicated to it, plus the demo ones (which hold no data)
        self._dedicated: dict[str, tuple[Deployment, ...]] = {}
        for d in deployments:
            for p in d.config.projects:
                self._dedicated[p] = (*self._dedicated.get(p, ()), *(() if d.disabled else (d,)))
        demos = tuple(d for d in self._shared if d.is_demo)
        self._dedicated = {p: ds + demos for p, ds in self._dedicated.items()}
        # For paths with no model (files, batches...): ONE upstream, never a pick by weight (issue #12 item 8).
        self.passthrough = _first_store(self._shared)
        self.affinity: Any = None  # prefix-affinity routing, set by keyplane.cache.attach (docs/caching.md)

    def _own(self, project_id: str | None, project_name: str | None) -> tuple[str | None, tuple[Deployment, ...]]:
        """(the config entry naming the project, or None for the shared upstreams; the upstreams it may use)."""
        if self._dedicated:
            for p in (project_id, project_name):
                if p is not None and p in self._dedicated:
                    return p, self._dedicated[p]
        return None, self._shared

    def usable(self, project_id: str | None = None, project_name: str | None = None) -> tuple[Deployment, ...]:
        """The upstreams a project may use, in config order."""
        return self._own(project_id, project_name)[1]

    def serving(
        self, model: str, project_id: str | None = None, project_name: str | None = None
    ) -> tuple[Deployment, ...]:
        """The upstreams that serve ``model`` among those the project may use (the shared ones by default)."""
        which, usable = self._own(project_id, project_name)
        found = self._by_model.get((model, which))
        if found is None:
            found = tuple(d for d in usable if d.serves(model))
            if len(self._by_model) < 10_000:  # bounded: model names come from clients
                self._by_model[(model, which)] = found
        return found

    def passthrough_for(
        self, project_id: str | None, project_name: str | None = None, pinned: str | None = None
    ) -> tuple[Deployment, ...]:
        """The one upstream for a path with no model: ``pinned`` (the upstream that holds the object the
        path names) when the project may still use it, else the project's first non-demo upstream."""
        usable = self._own(project_id, project_name)[1]
        if pinned is not None:
            for d in usable:
                if d.name == pinned:
                    return (d,)
        return _first_store(usable) if usable is not self._shared else self.passthrough

    def route(self, pool: tuple[Deployment, ...], ctx: RequestContext) -> tuple[Deployment, ...]:
        """``pool`` in prefix-affinity order when the model is routed by prefix; else unchanged."""
        return pool if self.affinity is None else self.affinity.route(pool, ctx)

    def candidates(self, pool: tuple[Deployment, ...]) -> list[Deployment]:
        """The upstreams of ``pool`` to try, best first; those whose breaker is open are left out."""
        if getattr(pool, "ordered", False):  # already ordered by prefix-affinity routing (route())
            now = self.monotonic()
            return [d for d in pool if d.breaker.available(now)]
        if len(pool) == 1:
            d = pool[0]
            return [d] if d.breaker.available(self.monotonic()) else []
        now = self.monotonic()
        healthy: list[tuple[float, Deployment]] = []
        backups: list[Deployment] = []
        rnd = self.rng.random
        for d in pool:
            if not d.breaker.available(now):
                continue
            if d.config.weight <= 0:
                backups.append(d)
            else:
                # Efraimidis-Spirakis: u ** (1/w), largest first, is sampling by weight without replacement.
                healthy.append((rnd() ** (1.0 / d.config.weight), d))
        healthy.sort(key=lambda t: t[0], reverse=True)
        return [d for _, d in healthy] + backups

    def retry_after(self, pool: tuple[Deployment, ...]) -> float:
        """Seconds until the first breaker of ``pool`` lets a request through again."""
        now = self.monotonic()
        return max(0.0, min((d.breaker.open_until - now for d in pool), default=0.0))

    def by_name(self, name: str) -> Deployment | None:
        for d in self.deployments:
            if d.name == name:
                return d
        return None


def _first_store(ds: tuple[Deployment, ...]) -> tuple[Deployment, ...]:
    """The first upstream that can hold objects (not the demo), as a pool of one; () when there is none."""
    for d in ds:
        if not d.is_demo:
            return (d,)
    return ()
