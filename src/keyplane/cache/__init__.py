"""Prompt-cache-aware routing and the exact response cache (docs/caching.md).

- prefix.py: a request's canonical prompt prefix as chained block hashes;
- affinity.py: the per-replica LRUs, the block index and the choice (longest match, consistent
  hashing with bounded loads, least loaded);
- response_cache.py: identical deterministic requests answered from memory or Redis.

``attach(rt, router)`` is called once by the proxy at start-up: it gives the router a
:class:`PrefixRouting` when some ``[models."<glob>"]`` says ``routing = "prefix"``, builds the response
cache when ``[cache]`` opts something in, and registers their settle steps and metrics. With neither
configured it returns None and the proxy does no extra work.
"""

from __future__ import annotations

import fnmatch
import logging
from typing import TYPE_CHECKING, Any, Final

import msgspec

from keyplane.cache.affinity import AffinityConfig, Decision, Pool, PrefixRouter
from keyplane.cache.config import cache_enabled, check_config, ttl_seconds
from keyplane.cache.response_cache import MemoryStore, RedisStore, ResponseCache

if TYPE_CHECKING:
    from keyplane.proxy.context import RequestContext
    from keyplane.runtime import Runtime

log = logging.getLogger("keyplane.cache")

__all__ = ["CacheFeature", "PrefixRouting", "attach", "check_config"]

# Endpoints with a prompt to route on (embeddings have no prompt cache).
PROMPT_ENDPOINTS: Final = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/responses"})


class Ordered(tuple):  # type: ignore[type-arg]
    """A pool already in the order to try (the router's candidates() keeps it; breakers still apply)."""

    ordered = True


def _config(m: Any) -> AffinityConfig:
    return AffinityConfig(
        block_chars=m.block_chars,
        max_prefix_tokens=m.max_prefix_tokens,
        min_match_tokens=m.min_match_tokens,
        load_factor=m.load_factor,
        hash_load_factor=m.hash_load_factor,
        balance_abs=m.balance_abs,
        balance_rel=m.balance_rel,
    )


class PrefixRouting:
    """The proxy's side of prefix-affinity routing: pools of Deployments in, a preferred order out."""

    def __init__(self, deployments: list[Any], models: dict[str, Any], monotonic: Any) -> None:
        replicas = [(d.name, d.config.prefix_cache_tokens) for d in deployments]
        # One router per [models."<glob>"] section with routing = "prefix", in the file's order.
        self.rules: list[tuple[str, PrefixRouter]] = [
            (glob, PrefixRouter(replicas, _config(m))) for glob, m in models.items() if m.routing == "prefix"
        ]
        self.monotonic = monotonic
        self._by_model: dict[str, tuple[PrefixRouter, dict[tuple[str, ...], Pool]] | None] = {}

    def _rule(self, model: str) -> tuple[PrefixRouter, dict[tuple[str, ...], Pool]] | None:
        try:
            return self._by_model[model]
        except KeyError:
            pass
        found: tuple[PrefixRouter, dict[tuple[str, ...], Pool]] | None = None
        for glob, r in self.rules:
            if fnmatch.fnmatchcase(model, glob):
                found = (r, {})
                break
        if len(self._by_model) < 10_000:  # bounded: model names come from clients
            self._by_model[model] = found
        return found

    def route(self, pool: tuple[Any, ...], ctx: RequestContext) -> tuple[Any, ...]:
        """``pool`` in the order to try for this request; unchanged when its model is routed by weight."""
        if len(pool) < 2 or ctx.endpoint not in PROMPT_ENDPOINTS or ctx.model is None:
            return pool
        rule = self._rule(ctx.model)
        if rule is None:
            return pool
        router, pools = rule
        now = self.monotonic()
        live = [d for d in pool if d.config.weight > 0 and d.breaker.available(now)]
        if not live:
            return pool
        names = tuple(d.name for d in live)
        p = pools.get(names)
        if p is None:
            p = router.pool(names, [d.config.weight for d in live])
            if len(pools) < 1000:
                pools[names] = p
        try:
            decision = router.route(p, ctx.model, ctx.body)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return pool  # not a prompt we can read: the upstream will say what is wrong with it
        except Exception:  # a bug here must not fail a request the upstream can answer
            log.exception("prefix routing failed for %s; routing by weight", ctx.request_id)
            return pool
        ctx.route = decision
        first = live[names.index(decision.name)]
        rest = sorted((d for d in live if d is not first), key=lambda d: router.inflight(d.name))
        backups = [d for d in pool if d.config.weight <= 0]
        return Ordered([first, *rest, *backups])


class _Metrics:
    """Counters on the metrics registry of keyplane.usage (one of our own when it is absent)."""

    def __init__(self, rt: Runtime) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge

        m = rt.features.usage_metrics
        registry = m.registry if m is not None else CollectorRegistry()
        self.label = m.models.label if m is not None else (lambda model, ok: model or "none")
        self.decisions = Counter(
            "keyplane_prefix_routing_decisions",
            "Prefix-affinity routing choices: affinity "
            "(longest cached prefix), hash (new prefix, consistent hashing), least_loaded.",
            ("model", "decision"),
            registry=registry,
        )
        self.prompt = Counter(
            "keyplane_prefix_routing_prompt_tokens",
            "Prompt tokens of prefix-routed requests, by the upstream that answered.",
            ("model", "upstream"),
            registry=registry,
        )
        self.cached = Counter(
            "keyplane_prefix_routing_cached_tokens",
            "Of those, the tokens the upstream reported cached (usage.prompt_tokens_details.cached_tokens).",
            ("model", "upstream"),
            registry=registry,
        )
        self.ratio = Gauge(
            "keyplane_prompt_cache_hit_ratio",
            "Cached / prompt tokens of prefix-routed requests, "
            "over about the last 100 requests of the model (decaying).",
            ("model",),
            registry=registry,
            multiprocess_mode="mostrecent",
        )
        self.responses = Counter(
            "keyplane_response_cache_lookups",
            "Response cache: hit, miss, or bypass (asked, streaming or not deterministic).",
            ("model", "result"),
            registry=registry,
        )
        self._decayed: dict[str, list[float]] = {}

    def observe_route(self, ctx: RequestContext, d: Decision) -> None:
        model = self.label(ctx.model, True)
        self.decisions.labels(model, d.reason).inc()
        if not (0 < ctx.status < 400) or not ctx.prompt_tokens or ctx.usage_estimated:
            return
        up = ctx.upstream or "none"
        self.prompt.labels(model, up).inc(ctx.prompt_tokens)
        if ctx.cached_tokens:
            self.cached.labels(model, up).inc(ctx.cached_tokens)
        acc = self._decayed.setdefault(model, [0.0, 0.0])
        acc[0] = acc[0] * 0.99 + min(ctx.cached_tokens, ctx.prompt_tokens)
        acc[1] = acc[1] * 0.99 + ctx.prompt_tokens
        self.ratio.labels(model).set(acc[0] / acc[1])

    def observe_response(self, ctx: RequestContext, result: str) -> None:
        self.responses.labels(self.label(ctx.model, True), result).inc()


class CacheFeature:
    def __init__(
        self, rt: Runtime, routing: PrefixRouting | None, responses: ResponseCache | None, metrics: _Metrics
    ) -> None:
        self.rt = rt
        self.routing = routing
        self.responses = responses
        self.metrics = metrics

    async def serve(self, ctx: RequestContext, headers: list[tuple[bytes, bytes]], send: Any, finish: Any) -> Any:
        """The response cache's step (see ResponseCache.serve): None when answered, else the send to use."""
        if self.responses is None:
            return send
        return await self.responses.serve(ctx, headers, send, finish)

    # Settle steps. A response-cache hit must cost nothing but its request: billing (order 10) bills a
    # success that reports no tokens at its admission estimate, so for billing a hit is a request that
    # got no answer (status 0, no tokens: cost 0, reservation and token buckets released); right after
    # it, its status and tokens (all cached, none generated) come back for metering (order 20).

    async def release_route(self, ctx: RequestContext) -> None:
        d, ctx.route = ctx.route, None
        if d is None:
            return
        try:
            if ctx.upstream:
                d.served_by(ctx.upstream)
            self.metrics.observe_route(ctx, d)
        except Exception:
            log.exception("prefix routing: settle failed for %s", ctx.request_id)
        finally:
            d.release()

    async def aclose(self) -> None:
        if self.responses is not None:
            await self.responses.aclose()


def attach(rt: Runtime, router: Any) -> CacheFeature | None:
    """Wire prefix routing into ``router`` and build the response cache, as configured; None when neither is."""
    s = rt.settings
    routing = None
    if any(m.routing == "prefix" for m in s.file.models.values()):
        routing = PrefixRouting(router.deployments, s.file.models, router.monotonic)
        router.affinity = routing
    responses = None
    metrics: _Metrics | None = None
    section = s.file.cache
    if cache_enabled(section):
        metrics = _Metrics(rt)
        store = (
            RedisStore(s.redis_url, s.redis_prefix)
            if section.backend == "redis"
            else MemoryStore(section.max_entries, section.max_bytes)
        )
        responses = ResponseCache(section, ttl_seconds(section.ttl), store, rt.clock, rt, metrics.observe_response)
    if routing is None and responses is None:
        return None
    feature = CacheFeature(rt, routing, responses, metrics or _Metrics(rt))
    if routing is not None:
        rt.pipeline.routing = feature  # releases the chosen upstream first thing at settle
    return feature
