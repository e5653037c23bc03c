"""Prometheus metrics: built per app instance in start(rt) on a registry of our own, never at import.

With several worker processes, set PROMETHEUS_MULTIPROC_DIR (an empty folder, before keyplane
starts): prometheus_client then keeps values in files there and /metrics sums every worker's.
Otherwise each app instance has its own in-process registry.

Label cardinality stays bounded: projects are admin-created; models are the configured ones
(prices, upstreams' exact names, ``metrics_models``) plus up to MAX_GLOB_MODELS names that match an
upstream or price pattern and were answered successfully, anything else is ``other``; key ids only
with ``metrics_key_labels``; rejection reasons at most MAX_REASONS distinct values.

For the proxy: ``metrics.stream_started(rt)`` when a streamed response starts and
``metrics.stream_ended(rt)`` when it ends (the active-streams gauge).
"""

from __future__ import annotations

import bisect
import fnmatch
import hmac
import logging
import os
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import values as _values
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from keyplane import errors, keys

if TYPE_CHECKING:
    from keyplane.proxy.context import RequestContext
    from keyplane.runtime import Runtime

log = logging.getLogger("keyplane.usage")

MAX_GLOB_MODELS = 50
MAX_REASONS = 32
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0)
_REASON_RE = re.compile(r"[^a-z0-9_]+")


def _status_class(status: int) -> str:
    return f"{status // 100}xx" if 100 <= status < 600 else "none"


class ModelLabels:
    """Maps a model name to a bounded label value."""

    def __init__(self, settings: Any) -> None:
        exact: set[str] = {m.strip() for m in settings.metrics_models.split(",") if m.strip()}
        exact.add("demo-echo")  # the built-in offline upstream's model
        patterns: list[str] = []
        names = list(settings.file.prices)
        for up in settings.file.upstreams:
            names.extend(up.models)
        for n in names:
            if any(c in n for c in "*?["):
                patterns.append(n)  # even "*": MAX_GLOB_MODELS bounds what patterns admit
            else:
                exact.add(n)
        self.exact = exact
        self.patterns = patterns
        self.admitted: set[str] = set()

    def label(self, model: str | None, ok: bool) -> str:
        if not model:
            return "none"
        if model in self.exact or model in self.admitted:
            return model
        if ok and len(self.admitted) < MAX_GLOB_MODELS and any(fnmatch.fnmatchcase(model, p) for p in self.patterns):
            self.admitted.add(model)
            return model
        return "other"


class _Acc:
    """What one label set gathered since the last flush."""

    __slots__ = ("cost", "lat", "lat_sum", "n", "tcached", "tin", "tout", "ttft", "ttft_sum")

    def __init__(self) -> None:
        self.n = self.tin = self.tcached = self.tout = self.cost = 0
        self.lat = [0] * (len(LATENCY_BUCKETS) + 1)
        self.ttft = [0] * (len(TTFT_BUCKETS) + 1)
        self.lat_sum = self.ttft_sum = 0.0


class Metrics:
    def __init__(self, settings: Any) -> None:
        self.settings = settings
        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        if self.multiprocess and _values.ValueClass.__name__ == "MutexValue":
            log.warning(
                "PROMETHEUS_MULTIPROC_DIR was set after prometheus_client was imported: metrics stay "
                "per process; set it before keyplane starts"
            )
            self.multiprocess = False
        self.registry = CollectorRegistry(auto_describe=True)  # where the collectors live
        if self.multiprocess:
            from prometheus_client import multiprocess

            self.exposed = CollectorRegistry()
            multiprocess.MultiProcessCollector(self.exposed)
        else:
            self.exposed = self.registry
        self.key_labels = bool(settings.metrics_key_labels)
        self.models = ModelLabels(settings)
        self._reasons: set[str] = set()
        r = self.registry
        k = ("api_key_id",) if self.key_labels else ()
        self.requests = Counter(
            "keyplane_requests",
            "Requests finished, by project, model, status class and kind.",
            ("project_id", "model", "status_class", "kind", *k),
            registry=r,
        )
        self.tokens = Counter(
            "keyplane_tokens",
            "Tokens by direction (input includes cached; cached is a part of input).",
            ("project_id", "model", "type", *k),
            registry=r,
        )
        self.cost = Counter("keyplane_cost_usd", "Spend in US dollars.", ("project_id", "model", *k), registry=r)
        self.latency = Histogram(
            "keyplane_request_duration_seconds",
            "Time from request to the end of the response.",
            ("model", "kind"),
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "keyplane_time_to_first_token_seconds",
            "Time to the first byte of the answer.",
            ("model",),
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.upstream_errors = Counter(
            "keyplane_upstream_errors",
            "Error answers after the upstream was called.",
            ("upstream", "status_class"),
            registry=r,
        )
        self.upstream_retries = Counter(
            "keyplane_upstream_retries", "Upstream attempts beyond the first.", ("upstream",), registry=r
        )
        self.rejections = Counter(
            "keyplane_admission_rejections", "Requests refused before any upstream call.", ("reason",), registry=r
        )
        self.disconnects = Counter(
            "keyplane_client_disconnects", "Requests whose client went away before the end.", ("model",), registry=r
        )
        self.active_streams = Gauge(
            "keyplane_active_streams", "Streamed responses in progress.", registry=r, multiprocess_mode="livesum"
        )
        self.journal_lag = Gauge(
            "keyplane_usage_journal_lag_records",
            "Usage records journaled but not yet applied to the SQL store.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.journal_lag_seconds = Gauge(
            "keyplane_usage_journal_lag_seconds",
            "Age of the oldest usage record journaled but not yet applied to the SQL store (0: none waits).",
            registry=r,
            multiprocess_mode="max",
        )
        self.loop_lag = Gauge(
            "keyplane_event_loop_lag_seconds",
            "How late the serving event loop ran a 0.25 s "
            "timer, worst in the last second: time requests waited behind other work.",
            registry=r,
            multiprocess_mode="max",
        )
        self.journal_records = Counter(
            "keyplane_usage_journal_records", "Usage records appended to the journal.", registry=r
        )
        self.journal_errors = Counter(
            "keyplane_usage_journal_errors",
            "Usage records the journal could not take (kept in memory and applied from there).",
            registry=r,
        )
        self.applied = Counter("keyplane_usage_applied_records", "Usage records applied to the SQL store.", registry=r)
        self._pending: dict[tuple[Any, ...], _Acc] = {}
        self.appended = 0  # journal appends since the last flush
        self.lag_source: Any = None  # () -> int, set by start(): the applier's lag, read at flush
        self.lag_seconds_source: Callable[[], float] | None = None  # () -> the applier's lag in seconds

    # --- per request ---------------------------------------------------------------------------
    #
    # prometheus_client takes a lock per inc()/observe() (and, in multiprocess mode, writes an mmap):
    # about 20 µs for the dozen updates of a request. The request path only adds to plain Python
    # sums here (one event loop per process: no lock needed); flush() moves them into the
    # prometheus_client objects before each scrape and every 0.25 s (for other workers' scrapes).

    def observe(self, ctx: RequestContext, kind: str, timed: bool = True) -> None:
        """Count a finished request; ``timed=False`` for a refusal (no latency to observe)."""
        status = ctx.status
        model = self.models.label(ctx.model, 0 < status < 400)
        ck = (
            ctx.project_id or "none",
            model,
            _status_class(status),
            kind,
            (ctx.key.id or "none") if self.key_labels else None,
        )
        acc = self._pending.get(ck)
        if acc is None:
            acc = self._pending[ck] = _Acc()
        acc.n += 1
        acc.tin += ctx.prompt_tokens
        acc.tcached += ctx.cached_tokens
        acc.tout += ctx.completion_tokens
        acc.cost += ctx.cost_micros
        if not timed:
            self._rare(ctx, model, status)
            return
        latency = ctx.latency_ms / 1000.0
        acc.lat[bisect.bisect_left(LATENCY_BUCKETS, latency)] += 1
        acc.lat_sum += latency
        if ctx.ttft_ms is not None:
            ttft = ctx.ttft_ms / 1000.0
            acc.ttft[bisect.bisect_left(TTFT_BUCKETS, ttft)] += 1
            acc.ttft_sum += ttft
        if ctx.disconnected or ctx.upstream is None or status >= 400 or ctx.attempts > 1:
            self._rare(ctx, model, status)

    def _rare(self, ctx: RequestContext, model: str, status: int) -> None:
        if ctx.disconnected:
            self.disconnects.labels(model).inc()
        upstream = ctx.upstream
        if upstream:
            if status >= 400:
                self.upstream_errors.labels(upstream, _status_class(status)).inc()
            if ctx.attempts > 1:
                self.upstream_retries.labels(upstream).inc(ctx.attempts - 1)
        elif status >= 500 or (ctx.error or "").startswith("upstream"):
            # No upstream answered at all (all failing, unreachable, breaker open).
            self.upstream_errors.labels("none", _status_class(status)).inc()
        elif 400 <= status < 499:
            self.rejections.labels(self._reason(ctx.error, status)).inc()

    def flush(self, journal_lag: int | None = None) -> None:
        """Move the sums gathered since the last flush into the prometheus_client objects."""
        pending, self._pending = self._pending, {}
        for (project, model, status_class, kind, key), acc in pending.items():
            k = (key,) if self.key_labels else ()
            self.requests.labels(project, model, status_class, kind, *k).inc(acc.n)
            for direction, n in (("input", acc.tin), ("cached", acc.tcached), ("output", acc.tout)):
                self.tokens.labels(project, model, direction, *k).inc(n)
            self.cost.labels(project, model, *k).inc(acc.cost / 1e6)
            for hist, counts, total in (
                (self.latency.labels(model, kind), acc.lat, acc.lat_sum),
                (self.ttft.labels(model), acc.ttft, acc.ttft_sum),
            ):
                if not any(counts):
                    continue
                # Histogram internals (non-cumulative counts per bucket, as observe() keeps them).
                hist._sum.inc(total)
                for i, c in enumerate(counts):
                    if c:
                        hist._buckets[i].inc(c)
        if self.appended:
            n, self.appended = self.appended, 0
            self.journal_records.inc(n)
        if journal_lag is not None:
            self.journal_lag.set(journal_lag)
        if self.lag_seconds_source is not None:
            self.journal_lag_seconds.set(self.lag_seconds_source())

    def _reason(self, error: str | None, status: int) -> str:
        reason = _REASON_RE.sub("_", (error or f"status_{status}").lower()).strip("_")[:48] or f"status_{status}"
        if reason in self._reasons:
            return reason
        if len(self._reasons) < MAX_REASONS:
            self._reasons.add(reason)
            return reason
        return "other"

    # --- exposition ----------------------------------------------------------------------------

    def render(self) -> bytes:
        self.flush(self.lag_source() if self.lag_source is not None else None)
        return generate_latest(self.exposed)

    def close(self) -> None:
        self.flush(self.lag_source() if self.lag_source is not None else None)
        if self.multiprocess:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(os.getpid())


def _authorized(rt: Runtime, header: str | None, scope: dict[str, Any]) -> bool:
    """Whether the request may read the metrics. An admin key is held to the organization's IP allowlist, as on
    the admin API (docs/access-control.md): a 403 ``ip_not_allowed`` is raised off it."""
    mode = rt.settings.metrics_auth
    if mode == "none":
        return True
    if not header:
        return False
    scheme, _, value = header.partition(" ")
    value = value.strip()
    if scheme.lower() != "bearer" or not value:
        return False
    if mode in ("token", "admin_or_token"):
        token = os.environ.get(rt.settings.metrics_token_env, "")
        if token and hmac.compare_digest(value.encode(), token.encode()):
            return True
    if mode in ("admin", "admin_or_token") and keys.parse(value) == "admin":
        # As on the admin API (keyplane.auth.admin_entry): the IP allowlist, an active admin key, and what it may
        # do: the metrics are organization-wide usage and costs, read with api.organization.read.
        from keyplane import auth, domain
        from keyplane.members import permissions as admin_permissions

        entry = auth.admin_entry(rt, scope)
        granted = admin_permissions.of_key(entry.permissions, entry.owner_user_id, rt.snapshot.grants)
        try:
            admin_permissions.check_granted(granted, "GET", "/v1/organization/usage")
        except domain.DomainError as e:
            raise domain.api_error(e) from None
        return True
    return False


def metrics_route(rt: Runtime, metrics: Metrics) -> Any:
    """The ASGI app for GET /metrics."""
    import asyncio

    from keyplane.app import send_error

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["method"] not in ("GET", "HEAD"):
            await send_error(send, errors.method_not_allowed(scope["method"], scope["path"]))
            return
        header = None
        for k, v in scope.get("headers", ()):
            if k == b"authorization":
                header = v.decode("latin-1")
        try:
            authorized = _authorized(rt, header, scope)
        except errors.APIError as e:
            await send_error(send, e)
            return
        if not authorized:
            msg = (
                "/metrics needs an admin key or the metrics token "
                f"(${rt.settings.metrics_token_env}) as a Bearer token."
            )
            await send_error(
                send,
                errors.APIError(401, msg, code="invalid_api_key"),
                [(b"www-authenticate", b'Bearer realm="keyplane metrics"')],
            )
            return
        body = await asyncio.to_thread(metrics.render) if metrics.multiprocess else metrics.render()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", CONTENT_TYPE_LATEST.encode()),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})

    return app


# --- active streams: the proxy's side ----------------------------------------------------------------


def _of(rt: Runtime) -> Metrics | None:
    return rt.features.usage_metrics if rt is not None else None


def stream_started(rt: Runtime) -> None:
    """A streamed response began (the proxy calls this; pair it with stream_ended in a finally)."""
    m = _of(rt)
    if m is not None:
        m.active_streams.inc()


def stream_ended(rt: Runtime) -> None:
    m = _of(rt)
    if m is not None:
        m.active_streams.dec()
