"""Which upstream serves a request: model globs, weights, and a circuit breaker per upstream.

Built once at start-up from ``[[upstreams]]`` (or, with none configured, from config.DEFAULT_CONFIG).
``serving(model)`` names the upstreams whose globs match; ``candidates(pool)`` orders them for one
request: the healthy ones shuffled by weight (weighted sampling without replacement), then weight-0
backups; an upstream whose breaker is open is skipped until its cooldown ends. The clock and the
random source are injected (STYLE.md 6).
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
from typing import Any

import msgspec

from keyplane.config import DEFAULT_CONFIG, Settings, Upstream

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

    def available(self, now: float) -> bool:
        return self.failures < self.threshold or now >= self.open_until

    def success(self) -> None:
        self.failures = 0
        self.open_until = 0.0

    def failure(self, now: float) -> None:
        self.failures += 1
        if self.failures >= self.threshold:
            self.open_until = now + self.cooldown

    @property
    def state(self) -> str:
        return "closed" if self.failures < self.threshold else "open"


@dataclass(slots=True)
class Deployment:
    """One configured upstream and its state in this process."""

    config: Upstream
    api_key: str  # resolved from api_key_env at start-up ("" when none)
    breaker: Breaker
    pattern: re.Pattern[str]
    models_url: str = ""
    concrete_models: tuple[str, ...] = field(default_factory=tuple)

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
        if up.api_key_env and not key and up.require_key and up.base_url != "demo":
            notes.append(f"upstream `{up.name}` is not used: ${up.api_key_env} is not set")
            continue
        pattern = re.compile("|".join(f"(?:{fnmatch.translate(g)})" for g in up.models) or r"(?!)")
        concrete = tuple(g for g in up.models if not any(c in g for c in "*?["))
        out.append(Deployment(up, key, Breaker(max(1, up.breaker_failures), up.breaker_cooldown), pattern,
                              concrete_models=concrete))
    return out, notes


class Router:
    def __init__(self, deployments: list[Deployment], monotonic: Callable[[], float],
                 rng: random.Random | None = None) -> None:
        self.deployments = deployments
        self.monotonic = monotonic
        self.rng = rng or random.Random()
        self._by_model: dict[str, tuple[Deployment, ...]] = {}
        # For paths with no model (files, batches...): the non-demo upstreams, in config order.
        self.passthrough = tuple(d for d in deployments if not d.is_demo)
        self.affinity: Any = None  # prefix-affinity routing, set by keyplane.cache.attach (docs/caching.md)

    def serving(self, model: str) -> tuple[Deployment, ...]:
        found = self._by_model.get(model)
        if found is None:
            found = tuple(d for d in self.deployments if d.serves(model))
            if len(self._by_model) < 10_000:  # bounded: model names come from clients
                self._by_model[model] = found
        return found

    def route(self, pool: tuple[Deployment, ...], ctx: Any) -> tuple[Deployment, ...]:
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
