"""The flat settings of metering (docs/metering.md): the usage journal, rollups, metrics and tracing."""

from __future__ import annotations

from dataclasses import dataclass

from keyplane.configspec import POSITIVE, setting


@dataclass(frozen=True, kw_only=True)
class UsageSettings:
    usage_journal_dir: str = setting(
        "",
        "Folder of the usage journal (one file set per worker process). Empty: $KEYPLANE_HOME/journal.",
    )
    usage_journal_fsync: str = setting(
        "interval",
        "When the journal is fsynced: `always` (every record; survives power loss), `interval` (every "
        "usage_journal_fsync_seconds; a power loss may lose that last interval), `never` (left to the OS). "
        "In every mode a killed process loses no record once it was written.",
        choices=("always", "interval", "never"),
    )
    usage_journal_fsync_seconds: float = setting(1.0, "fsync period of the journal in `interval` mode.", valid=POSITIVE)
    usage_journal_segment_bytes: int = setting(
        16 * 1024 * 1024,
        "Size at which a journal segment file is closed and a new one started; applied segments are deleted.",
        valid=POSITIVE,
    )
    usage_apply_seconds: float = setting(
        0.5, "How often journal records are applied to the SQL store (in batches).", valid=POSITIVE
    )
    usage_apply_batch: int = setting(2000, "Most records applied to the SQL store in one transaction.", valid=POSITIVE)
    usage_minute_retention_days: int = setting(7, "Days per-minute usage rollups are kept (0: forever).")
    usage_hour_retention_days: int = setting(400, "Days per-hour usage rollups are kept (0: forever).")
    usage_day_retention_days: int = setting(0, "Days per-day usage rollups are kept (0: forever).")
    usage_request_retention_days: int = setting(
        30,
        "Days the per-request usage records (GET /v1/organization/usage/requests) are kept (0: forever).",
    )
    metrics_auth: str = setting(
        "admin_or_token",
        "Who may read /metrics: `admin_or_token` (an admin key or the metrics token), `admin`, `token`, "
        "or `none` (open: only behind a private network).",
        choices=("admin_or_token", "admin", "token", "none"),
    )
    metrics_token_env: str = setting(
        "KEYPLANE_METRICS_TOKEN",
        "Name of the environment variable holding the bearer token Prometheus sends to /metrics.",
    )
    metrics_key_labels: bool = setting(
        False,
        "Add an api_key_id label to the per-request metrics (one series per key: mind the cardinality).",
    )
    metrics_models: str = setting(
        "",
        "Comma-separated model names used as metric labels, besides those of the price table and the "
        "upstreams' exact model names; any other model is labelled `other`.",
    )
    log_requests: bool = setting(
        True,
        "Write one access-log line per request (logger keyplane.access; never a key or a prompt).",
    )
    otlp_endpoint: str = setting(
        "",
        "OTLP/HTTP endpoint for OpenTelemetry traces, e.g. http://127.0.0.1:4318/v1/traces. Empty: no "
        "tracing. Needs the `otel` extra: pip install 'keyplane[otel]'.",
    )
