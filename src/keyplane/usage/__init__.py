"""Metering: the usage journal, rollups, the Usage and Costs API, Prometheus metrics, access logs, traces.

Flow (DESIGN.md): settle (billing, order 10) -> record (journal, order 20) -> observe (metrics, access
log, traces, order 30). The applier moves journal records to SQL in batches in the background.
See docs/metering.md.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from keyplane.periodic import Periodic

if TYPE_CHECKING:
    from keyplane.runtime import Runtime

log = logging.getLogger("keyplane.usage")
FLUSH_SECONDS = 0.25  # request-path sums -> prometheus_client, pending access-log lines -> the log


def journal_folder(settings: Any) -> Path:
    return Path(settings.usage_journal_dir) if settings.usage_journal_dir else Path(settings.home) / "journal"


def _engine_factory(rt: Runtime) -> Any:
    """A maker of the applier thread's own engine (None: apply on the serving loop, e.g. in-memory SQLite). For a
    SQLite file, a blocking one: the thread applies on it directly, with no aiosqlite thread between (every
    statement through aiosqlite is two hand-offs between threads, each a wait for the GIL behind the serving
    thread, which cost the serving loop about 5% of its throughput under load: docs/benchmarks.md)."""
    from keyplane.store import db

    url = rt.engine.url
    s = rt.settings
    if url.get_backend_name() != "sqlite":
        return lambda: db.make_engine(s.database_url, timeout=s.database_timeout_seconds)
    if not url.database or url.database == ":memory:" or "mode=memory" in str(url):
        return None
    return lambda: db.make_blocking_engine(s.database_url, s.database_timeout_seconds)


async def start(rt: Runtime) -> Any:
    from keyplane.app import Feature
    from keyplane.usage import api, rollups
    from keyplane.usage import metrics as metrics_mod
    from keyplane.usage.applier import Applier
    from keyplane.usage.holds import Holds
    from keyplane.usage.journal import JournalWriter
    from keyplane.usage.recorder import Recorder
    from keyplane.usage.tracing import Tracing

    s = rt.settings
    folder = journal_folder(s)
    writer = JournalWriter(folder, fsync=s.usage_journal_fsync, segment_bytes=s.usage_journal_segment_bytes)
    writer.open()
    holds = Holds(folder, writer.writer)  # the running requests under a money control (usage/holds.py)
    metrics = metrics_mod.Metrics(s)

    def on_applied(n: int) -> None:
        metrics.applied.inc(n)
        metrics.journal_lag.set(applier.lag)

    async def prune() -> None:
        deleted = await rollups.prune(rt.engine, s, rt.clock.now())
        if any(deleted.values()):
            log.info("usage retention: deleted %s", ", ".join(f"{n} rows of {t}" for t, n in deleted.items() if n))

    applier = Applier(
        rt.engine,
        folder,
        writer,
        batch=s.usage_apply_batch,
        interval=s.usage_apply_seconds,
        prune=prune,
        on_applied=on_applied,
    )
    applier.holds = holds
    if rt.features.billing is not None:  # a dead writer's holds: billed, and counted in the budgets once
        applier.on_holds = rt.features.billing.dead_holds
    try:  # what a previous run (or a dead worker) left in its journal, before serving
        n = await applier.replay_orphans()
        if n:
            metrics.applied.inc(n)
    except Exception as e:
        log.warning("usage journal: replay at start failed (%s); retrying in the background", type(e).__name__)
    applier.start(_engine_factory(rt))

    fsync: Periodic | None = None
    if s.usage_journal_fsync == "interval":

        async def fsync_step() -> None:  # off the event loop
            if writer.dirty or writer._retired:
                await asyncio.to_thread(writer.sync)

        fsync = Periodic(
            "usage journal fsync",
            fsync_step,
            s.usage_journal_fsync_seconds,
            level=logging.ERROR,
            cap=s.usage_journal_fsync_seconds,
        ).start()

    tracing = Tracing.create(s)
    recorder = Recorder(rt, writer, applier, metrics, tracing, holds)
    metrics.lag_source = lambda: applier.lag
    metrics.lag_seconds_source = lambda: applier.lag_seconds

    def flush() -> None:  # what the request path gathered -> prometheus_client and the access log
        metrics.flush(applier.lag)
        if recorder.access_log is not None:
            recorder.access_log.flush()

    loop = asyncio.get_running_loop()
    lag = {"last": loop.time(), "worst": 0.0, "since": loop.time()}  # the event-loop lag probe's state

    async def flush_step() -> None:
        # The event-loop lag probe: how late this step's timer fired (Periodic sleeps FLUSH_SECONDS from the end
        # of the last step), the worst over the last second.
        t1 = loop.time()
        lag["worst"] = max(lag["worst"], t1 - lag["last"] - FLUSH_SECONDS)
        if t1 - lag["since"] >= 1.0:
            metrics.loop_lag.set(max(0.0, lag["worst"]))
            lag["worst"], lag["since"] = 0.0, t1
        try:
            flush()
        finally:
            lag["last"] = loop.time()

    flusher = Periodic("usage flush (metrics, access log)", flush_step, FLUSH_SECONDS, cap=FLUSH_SECONDS).start()
    rt.features.usage_metrics = metrics
    rt.features.usage_applier = applier
    rt.features.usage_writer = writer
    rt.features.usage_holds = holds
    rt.features.usage_recorder = recorder
    rt.features.usage_flush = flush
    from keyplane.usage.storage import VectorStores

    rt.features.usage_vector_stores = VectorStores(rt)  # sizes the upstream reports (proxy/tenancy.py)

    async def stop() -> None:
        if fsync is not None:
            await fsync.stop()
        await flusher.stop()
        flush()
        drained = await applier.stop()
        writer.close()
        holds.close()  # removed when nothing is held (else the next start bills what is)
        if drained:
            applier.own.remove_files()
        writer.release()
        if tracing is not None:
            await asyncio.to_thread(tracing.shutdown)
        metrics.close()

    return Feature(
        endpoints=api.endpoints(),
        routes={"/metrics": metrics_mod.metrics_route(rt, metrics)},
        stop=stop,
        usage=recorder,
    )
