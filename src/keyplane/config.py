"""Settings: one table drives keyplane.toml keys, KEYPLANE_* environment variables, CLI help and docs.

Precedence: environment variable > keyplane.toml > default. The file lives at ``--config`` or
``$KEYPLANE_HOME/keyplane.toml``. Structured sections (``[[upstreams]]``, ``[prices.*]``...) are
validated with msgspec, whose messages name the bad field (``$.upstreams[0].weight``).
"""

from __future__ import annotations

import os
import secrets
import stat
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import msgspec


@dataclass(frozen=True, slots=True)
class Setting:
    name: str  # key in keyplane.toml (top level)
    env: str  # environment variable
    default: Any
    type: type
    help: str


SETTINGS: Final[tuple[Setting, ...]] = (
    Setting(
        "home",
        "KEYPLANE_HOME",
        ".keyplane",
        str,
        "Folder for the SQLite store, the secret key, the usage journal and keyplane.toml.",
    ),
    Setting(
        "database_url",
        "KEYPLANE_DATABASE_URL",
        "",
        str,
        "SQL store. Empty: SQLite (WAL) at $KEYPLANE_HOME/keyplane.db. postgresql://... for a fleet.",
    ),
    Setting(
        "redis_url",
        "KEYPLANE_REDIS_URL",
        "",
        str,
        "Redis for a fleet: shared rate limits, budget reservations and the invalidation bus.",
    ),
    Setting(
        "database_timeout_seconds",
        "KEYPLANE_DATABASE_TIMEOUT_SECONDS",
        5.0,
        float,
        "Longest wait on the SQL store: connecting, each statement (PostgreSQL), waiting for a pooled "
        "connection, and SQLite's busy wait for the write lock. Past it the admin API answers 503 and "
        '/readyz/control reports the store unreachable (docs/operations.md "PostgreSQL loss").',
    ),
    Setting(
        "redis_timeout_seconds",
        "KEYPLANE_REDIS_TIMEOUT_SECONDS",
        1.0,
        float,
        "Longest wait on Redis: connecting and each command. Past it an admission answers 503 "
        '(limits_unavailable) rather than hang (docs/operations.md "Degradation").',
    ),
    Setting(
        "secret_key",
        "KEYPLANE_SECRET_KEY",
        "",
        str,
        "Server secret keying key digests and encrypting stored credentials. Empty: read from, or "
        "generated into, $KEYPLANE_HOME/secret.key (mode 0600). Never put it in keyplane.toml.",
    ),
    Setting("host", "KEYPLANE_HOST", "127.0.0.1", str, "Address `keyplane serve` binds to."),
    Setting("port", "KEYPLANE_PORT", 8080, int, "Port `keyplane serve` listens on."),
    Setting(
        "max_body_bytes",
        "KEYPLANE_MAX_BODY_BYTES",
        32 * 1024 * 1024,
        int,
        "Largest request body accepted; larger ones get 413.",
    ),
    Setting(
        "snapshot_poll_seconds",
        "KEYPLANE_SNAPSHOT_POLL_SECONDS",
        0.5,
        float,
        "How often each instance checks the store for control-plane changes (key revocations reach "
        "every instance within this time, plus the reload).",
    ),
    Setting(
        "max_staleness_seconds",
        "KEYPLANE_MAX_STALENESS_SECONDS",
        10.0,
        float,
        "Longest time an instance serves /v1 without confirming its keys and limits are current (a "
        "successful poll of the store, or a bus event or heartbeat it has fully applied); past it, /v1 "
        'answers 503 until it can confirm again (docs/operations.md "Partitions and revocation"). '
        "0: no bound.",
    ),
    Setting(
        "last_used_flush_seconds",
        "KEYPLANE_LAST_USED_FLUSH_SECONDS",
        10.0,
        float,
        "How often keys' last_used_at is written to the store (batched, never per request).",
    ),
    Setting("log_format", "KEYPLANE_LOG_FORMAT", "text", str, "Log format: text or json (JSON lines)."),
    Setting("log_level", "KEYPLANE_LOG_LEVEL", "info", str, "Log level: debug, info, warning, error."),
    Setting(
        "default_max_tokens",
        "KEYPLANE_DEFAULT_MAX_TOKENS",
        4096,
        int,
        "Output tokens reserved at admission when a request sets no max_tokens.",
    ),
    # Metering (docs/metering.md).
    Setting(
        "usage_journal_dir",
        "KEYPLANE_USAGE_JOURNAL_DIR",
        "",
        str,
        "Folder of the usage journal (one file set per worker process). Empty: $KEYPLANE_HOME/journal.",
    ),
    Setting(
        "usage_journal_fsync",
        "KEYPLANE_USAGE_JOURNAL_FSYNC",
        "interval",
        str,
        "When the journal is fsynced: `always` (every record; survives power loss), `interval` (every "
        "usage_journal_fsync_seconds; a power loss may lose that last interval), `never` (left to the OS). "
        "In every mode a killed process loses no record once it was written.",
    ),
    Setting(
        "usage_journal_fsync_seconds",
        "KEYPLANE_USAGE_JOURNAL_FSYNC_SECONDS",
        1.0,
        float,
        "fsync period of the journal in `interval` mode.",
    ),
    Setting(
        "usage_journal_segment_bytes",
        "KEYPLANE_USAGE_JOURNAL_SEGMENT_BYTES",
        16 * 1024 * 1024,
        int,
        "Size at which a journal segment file is closed and a new one started; applied segments are deleted.",
    ),
    Setting(
        "usage_apply_seconds",
        "KEYPLANE_USAGE_APPLY_SECONDS",
        0.5,
        float,
        "How often journal records are applied to the SQL store (in batches).",
    ),
    Setting(
        "usage_apply_batch",
        "KEYPLANE_USAGE_APPLY_BATCH",
        2000,
        int,
        "Most records applied to the SQL store in one transaction.",
    ),
    Setting(
        "usage_minute_retention_days",
        "KEYPLANE_USAGE_MINUTE_RETENTION_DAYS",
        7,
        int,
        "Days per-minute usage rollups are kept (0: forever).",
    ),
    Setting(
        "usage_hour_retention_days",
        "KEYPLANE_USAGE_HOUR_RETENTION_DAYS",
        400,
        int,
        "Days per-hour usage rollups are kept (0: forever).",
    ),
    Setting(
        "usage_day_retention_days",
        "KEYPLANE_USAGE_DAY_RETENTION_DAYS",
        0,
        int,
        "Days per-day usage rollups are kept (0: forever).",
    ),
    Setting(
        "usage_request_retention_days",
        "KEYPLANE_USAGE_REQUEST_RETENTION_DAYS",
        30,
        int,
        "Days the per-request usage records (GET /v1/organization/usage/requests) are kept (0: forever).",
    ),
    Setting(
        "metrics_auth",
        "KEYPLANE_METRICS_AUTH",
        "admin_or_token",
        str,
        "Who may read /metrics: `admin_or_token` (an admin key or the metrics token), `admin`, `token`, "
        "or `none` (open: only behind a private network).",
    ),
    Setting(
        "metrics_token_env",
        "KEYPLANE_METRICS_TOKEN_ENV",
        "KEYPLANE_METRICS_TOKEN",
        str,
        "Name of the environment variable holding the bearer token Prometheus sends to /metrics.",
    ),
    Setting(
        "metrics_key_labels",
        "KEYPLANE_METRICS_KEY_LABELS",
        False,
        bool,
        "Add an api_key_id label to the per-request metrics (one series per key: mind the cardinality).",
    ),
    Setting(
        "metrics_models",
        "KEYPLANE_METRICS_MODELS",
        "",
        str,
        "Comma-separated model names used as metric labels, besides those of the price table and the "
        "upstreams' exact model names; any other model is labelled `other`.",
    ),
    Setting(
        "log_requests",
        "KEYPLANE_LOG_REQUESTS",
        True,
        bool,
        "Write one access-log line per request (logger keyplane.access; never a key or a prompt).",
    ),
    Setting(
        "otlp_endpoint",
        "KEYPLANE_OTLP_ENDPOINT",
        "",
        str,
        "OTLP/HTTP endpoint for OpenTelemetry traces, e.g. http://127.0.0.1:4318/v1/traces. Empty: no "
        "tracing. Needs the `otel` extra: pip install 'keyplane[otel]'.",
    ),
    # Limits and billing (docs/limits-and-billing.md).
    Setting(
        "redis_prefix",
        "KEYPLANE_REDIS_PREFIX",
        "kp",
        str,
        "Prefix of every Redis key keyplane writes (several deployments, or tests, can share one Redis).",
    ),
    Setting(
        "reservation_ttl_seconds",
        "KEYPLANE_RESERVATION_TTL_SECONDS",
        900.0,
        float,
        "How long a request's budget reservation holds when it is never settled (a crashed process); "
        "keep it above the longest request.",
    ),
    Setting(
        "ledger_flush_seconds",
        "KEYPLANE_LEDGER_FLUSH_SECONDS",
        1.0,
        float,
        "How often settled costs are written to the SQL spend ledger (in batches, never per request).",
    ),
    Setting(
        "prices_file",
        "KEYPLANE_PRICES_FILE",
        "",
        str,
        "The price table to use instead of the shipped one: a file path or an http(s) URL of a TOML file "
        'written like keyplane\'s prices.toml, read at start (docs/limits-and-billing.md "Prices").',
    ),
    # Access policies (docs/access-control.md).
    Setting(
        "trusted_proxies",
        "KEYPLANE_TRUSTED_PROXIES",
        "",
        str,
        "Comma-separated CIDRs of the reverse proxies whose X-Forwarded-For / Forwarded headers are "
        "believed for the client address IP allowlists check. Empty: the socket's peer address only.",
    ),
    # Dashboard SSO with OpenID Connect (docs/sso-and-workload-identity.md).
    Setting(
        "sso_issuer",
        "KEYPLANE_SSO_ISSUER",
        "",
        str,
        "OpenID Connect issuer URL for dashboard sign-in (authorization code + PKCE). Empty: no SSO; "
        "password + TOTP always stays available.",
    ),
    Setting("sso_client_id", "KEYPLANE_SSO_CLIENT_ID", "", str, "The dashboard's client id at the SSO issuer."),
    Setting(
        "sso_client_secret_env",
        "KEYPLANE_SSO_CLIENT_SECRET_ENV",
        "KEYPLANE_SSO_CLIENT_SECRET",
        str,
        "Name of the environment variable holding the client secret (never in keyplane.toml).",
    ),
    Setting(
        "sso_groups_claim", "KEYPLANE_SSO_GROUPS_CLAIM", "groups", str, "ID token claim listing the user's groups."
    ),
    Setting(
        "sso_role_map",
        "KEYPLANE_SSO_ROLE_MAP",
        "",
        str,
        "Comma-separated group=role pairs (role: owner or reader), e.g. `platform=owner,eng=reader`. A user "
        "in no mapped group is refused; the highest role wins and is applied at every sign-in.",
    ),
    Setting(
        "sso_create_users",
        "KEYPLANE_SSO_CREATE_USERS",
        False,
        bool,
        "Create a dashboard user at the first SSO sign-in (just in time); off: only existing users.",
    ),
)
_BY_NAME: Final = {s.name: s for s in SETTINGS}
# Settings of metering, passed to Settings by name (docs/metering.md).
_METERING: Final = (
    "usage_journal_dir",
    "usage_journal_fsync",
    "usage_journal_fsync_seconds",
    "usage_journal_segment_bytes",
    "usage_apply_seconds",
    "usage_apply_batch",
    "usage_minute_retention_days",
    "usage_hour_retention_days",
    "usage_day_retention_days",
    "usage_request_retention_days",
    "metrics_auth",
    "metrics_token_env",
    "metrics_key_labels",
    "metrics_models",
    "log_requests",
    "otlp_endpoint",
)
# Settings of limits and billing, passed to Settings by name (docs/limits-and-billing.md).
_LIMITS: Final = ("redis_prefix", "reservation_ttl_seconds", "ledger_flush_seconds", "prices_file")
# Timeouts of the stores, passed to Settings by name (docs/operations.md "Degradation").
_TIMEOUTS: Final = ("database_timeout_seconds", "redis_timeout_seconds")
# Settings of the invalidation bus, passed to Settings by name (docs/operations.md).
_BUS: Final = ("max_staleness_seconds",)
# Settings of access policies, passed to Settings by name (docs/access-control.md).
_ACCESS: Final = ("trusted_proxies",)
# Dashboard SSO, passed to Settings by name (docs/sso-and-workload-identity.md).
_SSO: Final = (
    "sso_issuer",
    "sso_client_id",
    "sso_client_secret_env",
    "sso_groups_claim",
    "sso_role_map",
    "sso_create_users",
)


class ConfigError(ValueError):
    """A bad setting; the message names it."""


class Upstream(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: str
    base_url: str
    api_key_env: str = ""
    models: list[str] = msgspec.field(default_factory=lambda: ["*"])
    weight: int = 1
    connect_timeout: float = 5.0
    read_timeout: float = 600.0
    max_retries: int = 2
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    # An upstream whose api_key_env is set but empty is skipped unless this is false.
    require_key: bool = True
    # Retries (docs/proxy.md): backoff from retry_backoff s, doubling up to retry_backoff_max, with jitter;
    # a retry-after from the upstream is honoured, but one longer than max_retry_wait s is not waited for.
    retry_backoff: float = 0.5
    retry_backoff_max: float = 8.0
    max_retry_wait: float = 60.0
    # Circuit breaker: after breaker_failures failures in a row the upstream is skipped for breaker_cooldown s.
    breaker_failures: int = 5
    breaker_cooldown: float = 30.0
    # Prefix-affinity routing (docs/caching.md): the size of this upstream's prompt cache, in tokens.
    prefix_cache_tokens: int = 262_144
    # Dedicated upstream (docs/proxy.md "What is isolated between projects"): only these projects (ids or
    # names) use it, and they use no upstream shared by every project. Empty: shared.
    projects: list[str] = msgspec.field(default_factory=list)


class ModelSection(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``[models."<glob>"]``: how requests for the models a glob matches are routed (docs/caching.md)."""

    routing: Literal["weighted", "prefix"] = "weighted"
    block_chars: int = 64
    max_prefix_tokens: int = 2048
    min_match_tokens: int = 64
    load_factor: float = 1.25
    hash_load_factor: float = 1.0
    balance_abs: int = 16
    balance_rel: float = 2.0


class CacheSection(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``[cache]``: the exact response cache (docs/caching.md); off unless something opts in."""

    enabled: bool | None = None  # None: on when projects, keys or org_wide_projects name something
    backend: Literal["memory", "redis"] = "memory"
    ttl: str = "10m"
    projects: list[str] = msgspec.field(default_factory=list)  # ids or names; "*" = every project
    keys: list[str] = msgspec.field(default_factory=list)  # API key ids (key_...)
    org_wide_projects: list[str] = msgspec.field(default_factory=list)  # share one organization-wide cache
    max_entries: int = 10_000  # memory backend
    max_bytes: int = 64 * 1024 * 1024  # memory backend, bodies included
    max_entry_bytes: int = 1024 * 1024  # larger answers are not cached


class Price(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """One [prices."model"] entry (docs/limits-and-billing.md "Prices"); USD."""

    input: float | None = None  # per 1M tokens; None: not a token-priced model
    output: float = 0.0
    cached_input: float | None = None
    max_output: int | None = None  # most output tokens in one answer
    context_window: int | None = None  # most input tokens
    images: dict[str, float] = msgspec.field(default_factory=dict)  # per image, by "quality size"
    per_1m_characters: float | None = None  # speech
    per_minute: float | None = None  # transcription, translation
    # Audio tokens of realtime (and audio) models, per 1M tokens; ``input``/``cached_input``/``output`` are
    # then the text rates. cached_audio_input defaults to audio_input.
    audio_input: float | None = None
    cached_audio_input: float | None = None
    audio_output: float | None = None
    source: str | None = None  # where this entry's prices were read (the price file's own when absent)
    taken: str | None = None  # when (YYYY-MM or YYYY-MM-DD; the price file's own when absent)


class CreditSection(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    enforce: bool | None = None


class TierRateLimit(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Default limits of a tier for the models a glob matches; 0 means no limit."""

    rpm: int = 0  # max_requests_per_1_minute
    tpm: int = 0  # max_tokens_per_1_minute
    rpd: int = 0  # max_requests_per_1_day
    tpd: int = 0  # max_tokens_per_1_day


class Tier(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A usage tier (docs/limits-and-billing.md "Tiers"): reached by amount paid and days since first payment."""

    name: str
    min_paid: float = 0.0  # USD of credit grants, in total
    min_days: int = 0  # days since the first credit grant
    usage_limit: float | None = None  # USD per month, shown with the tier (informational)
    rate_limits: dict[str, TierRateLimit] = msgspec.field(default_factory=dict)  # model glob -> limits


class LimitsSection(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    enabled: bool = True  # rate limits (spend limits and credit apply either way)
    tier: str = ""  # pin the organization to this tier; empty: by qualification


class GuardRule(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """One kill-switch rule (docs/guard.md); the rules API takes the same fields as JSON."""

    name: str
    kind: Literal["token_surge", "spend_surge", "error_spike", "new_origins", "ceiling"]
    threshold: float
    scope: Literal["key", "project", "provider_key", "provider_project"] = "key"  # provider_*: docs/providers.md
    window: str = "1h"
    metric: Literal["tokens", "cost_usd", "requests"] | None = None  # None: the kind's own metric
    min_volume: float = 0
    mode: Literal["revoke", "suspend", "alert"] = "suspend"
    cooldown: str = "1h"
    dry_run: bool = False
    baseline_periods: int = 24  # surges: how many preceding windows make the baseline
    statuses: list[int] = msgspec.field(default_factory=lambda: [401, 403, 404, 429])  # error_spike
    enabled: bool = True


class GuardSection(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    enabled: bool = True
    defaults: bool = True  # the shipped rules (token-surge, error-spike) unless turned off or replaced by name
    rules: list[GuardRule] = msgspec.field(default_factory=list)


class AlertSink(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """One alert destination (docs/guard.md "Alert sinks"); secrets come from environment variables."""

    type: Literal["webhook", "slack", "pagerduty", "email"]
    name: str = ""
    url: str = ""  # webhook, slack; pagerduty: the Events v2 endpoint (default PagerDuty's)
    secret_env: str = ""  # webhook: HMAC-SHA256 key of the keyplane-signature header
    routing_key_env: str = ""  # pagerduty
    smtp_host: str = ""
    smtp_port: int = 587
    smtp_security: Literal["starttls", "ssl", "none"] = "starttls"
    smtp_username: str = ""
    smtp_password_env: str = ""
    email_from: str = ""
    email_to: list[str] = msgspec.field(default_factory=list)
    events: list[str] = msgspec.field(default_factory=list)  # glob patterns (guard.*, spend.*); empty: all
    timeout: float = 10.0


class AlertsSection(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    sinks: list[AlertSink] = msgspec.field(default_factory=list)
    max_attempts: int = 6  # per alert and sink, with exponential backoff
    retry_backoff: float = 1.0
    retry_backoff_max: float = 60.0


class ProviderSection(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """One ``[[providers]]`` organization keyplane governs through its Admin API (docs/providers.md)."""

    name: str
    kind: Literal["openai"] = "openai"
    base_url: str = "https://api.openai.com/v1"
    admin_key_env: str = ""  # the name of the variable holding the provider admin key, never the key
    sync_interval: float = 300.0  # seconds between background syncs; 0: on demand only
    backfill_days: int = 7  # usage fetched on the first sync
    timeout: float = 30.0


class FileConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The structured parts of keyplane.toml; flat settings are read from SETTINGS."""

    upstreams: list[Upstream] = msgspec.field(default_factory=list)
    prices: dict[str, Price] = msgspec.field(default_factory=dict)
    credit: CreditSection = msgspec.field(default_factory=CreditSection)
    # Sections owned by later features are accepted as free-form tables until they grow types.
    guard: GuardSection = msgspec.field(default_factory=GuardSection)
    alerts: AlertsSection = msgspec.field(default_factory=AlertsSection)
    tiers: list[Tier] = msgspec.field(default_factory=list)
    limits: LimitsSection = msgspec.field(default_factory=LimitsSection)
    metrics: dict[str, Any] = msgspec.field(default_factory=dict)
    models: dict[str, ModelSection] = msgspec.field(default_factory=dict)
    cache: CacheSection = msgspec.field(default_factory=CacheSection)
    providers: list[ProviderSection] = msgspec.field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Settings:
    home: Path
    database_url: str
    redis_url: str
    secret_key: bytes
    host: str
    port: int
    max_body_bytes: int
    snapshot_poll_seconds: float
    last_used_flush_seconds: float
    log_format: str
    log_level: str
    default_max_tokens: int
    file: FileConfig
    config_path: Path | None
    # Metering (docs/metering.md)
    usage_journal_dir: str = ""
    usage_journal_fsync: str = "interval"
    usage_journal_fsync_seconds: float = 1.0
    usage_journal_segment_bytes: int = 16 * 1024 * 1024
    usage_apply_seconds: float = 0.5
    usage_apply_batch: int = 2000
    usage_minute_retention_days: int = 7
    usage_hour_retention_days: int = 400
    usage_day_retention_days: int = 0
    usage_request_retention_days: int = 30
    metrics_auth: str = "admin_or_token"
    metrics_token_env: str = "KEYPLANE_METRICS_TOKEN"
    metrics_key_labels: bool = False
    metrics_models: str = ""
    log_requests: bool = True
    otlp_endpoint: str = ""
    # Limits and billing (docs/limits-and-billing.md)
    redis_prefix: str = "kp"
    reservation_ttl_seconds: float = 900.0
    ledger_flush_seconds: float = 1.0
    prices_file: str = ""  # the price table's file or URL ("" = the shipped prices.toml)
    # Timeouts of the stores (docs/operations.md "Degradation")
    database_timeout_seconds: float = 5.0
    redis_timeout_seconds: float = 1.0
    # The invalidation bus (docs/operations.md "Partitions and revocation")
    max_staleness_seconds: float = 10.0
    # Access policies (docs/access-control.md)
    trusted_proxies: str = ""
    # Dashboard SSO (docs/sso-and-workload-identity.md)
    sso_issuer: str = ""
    sso_client_id: str = ""
    sso_client_secret_env: str = "KEYPLANE_SSO_CLIENT_SECRET"
    sso_groups_claim: str = "groups"
    sso_role_map: str = ""
    sso_create_users: bool = False

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


def _coerce(setting: Setting, raw: Any, origin: str) -> Any:
    try:
        if setting.type is bool and isinstance(raw, str):
            return raw.strip().lower() in ("1", "true", "yes", "on")
        if setting.type is int and isinstance(raw, float):
            raise TypeError
        return setting.type(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"{origin}: setting `{setting.name}` must be {setting.type.__name__}, got {raw!r}") from None


def database_url_for(raw: str, home: Path) -> str:
    """Normalise a user-facing URL to the async driver SQLAlchemy needs."""
    if not raw:
        return f"sqlite+aiosqlite:///{(home / 'keyplane.db').resolve()}"
    if raw.startswith(("postgresql://", "postgres://")):
        return "postgresql+asyncpg://" + raw.split("://", 1)[1]
    if raw.startswith("sqlite:///"):
        return "sqlite+aiosqlite:///" + raw[len("sqlite:///") :]
    if raw.startswith(("postgresql+asyncpg://", "sqlite+aiosqlite://")):
        return raw
    raise ConfigError(
        f"setting `database_url`: unsupported URL scheme in {raw.split('://', 1)[0]!r}; "
        "use postgresql://... or sqlite:///path"
    )


def secret_key_path(home: Path) -> Path:
    return home / "secret.key"


def load_secret(home: Path, env_value: str, create: bool) -> bytes:
    """KEYPLANE_SECRET_KEY, else $KEYPLANE_HOME/secret.key (generated with mode 0600 when create)."""
    if env_value:
        return env_value.encode("utf-8")
    path = secret_key_path(home)
    if path.exists():
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise ConfigError(f"{path} is readable by others (mode {mode:o}); run: chmod 600 {path}")
        return path.read_text("utf-8").strip().encode("utf-8")
    if not create:
        return b""
    home.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(48)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(value + "\n")
    return value.encode("utf-8")


def load_settings(
    config_path: str | os.PathLike[str] | None = None,
    env: dict[str, str] | None = None,
    create_secret: bool = False,
    overrides: dict[str, Any] | None = None,
) -> Settings:
    """Read settings from the environment and keyplane.toml; raise ConfigError naming the bad field."""
    env = dict(os.environ if env is None else env)
    overrides = overrides or {}
    home = Path(overrides.get("home") or env.get("KEYPLANE_HOME") or _BY_NAME["home"].default)
    path = Path(config_path) if config_path else home / "keyplane.toml"
    data: dict[str, Any] = {}
    if path.exists():
        try:
            data = tomllib.loads(path.read_text("utf-8"))
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: not valid TOML: {e}") from None
    elif config_path:
        raise ConfigError(f"config file {path} does not exist")

    flat: dict[str, Any] = {}
    for s in SETTINGS:
        if s.name in overrides and overrides[s.name] is not None:
            flat[s.name] = _coerce(s, overrides[s.name], "command line")
        elif s.env in env and env[s.env] != "":
            flat[s.name] = _coerce(s, env[s.env], f"environment {s.env}")
        elif s.name in data:
            if s.name == "secret_key":
                raise ConfigError(f"{path}: `secret_key` must not be in the config file; set KEYPLANE_SECRET_KEY")
            flat[s.name] = _coerce(s, data[s.name], str(path))
        else:
            flat[s.name] = s.default
    structured = {k: v for k, v in data.items() if k not in _BY_NAME}
    try:
        file_cfg = msgspec.convert(structured, FileConfig)
    except msgspec.ValidationError as e:
        raise ConfigError(f"{path}: {e}") from None
    _validate(file_cfg, flat, path)

    home = Path(flat["home"])
    return Settings(
        home=home,
        database_url=database_url_for(flat["database_url"], home),
        redis_url=flat["redis_url"],
        secret_key=load_secret(home, flat["secret_key"], create_secret),
        host=flat["host"],
        port=flat["port"],
        max_body_bytes=flat["max_body_bytes"],
        snapshot_poll_seconds=flat["snapshot_poll_seconds"],
        last_used_flush_seconds=flat["last_used_flush_seconds"],
        log_format=flat["log_format"],
        log_level=flat["log_level"],
        default_max_tokens=flat["default_max_tokens"],
        file=file_cfg,
        config_path=path if path.exists() else None,
        **{name: flat[name] for name in _METERING},
        **{name: flat[name] for name in _LIMITS},
        **{name: flat[name] for name in _TIMEOUTS},
        **{name: flat[name] for name in _BUS},
        **{name: flat[name] for name in _ACCESS},
        **{name: flat[name] for name in _SSO},
    )


def _validate(cfg: FileConfig, flat: dict[str, Any], path: Path) -> None:
    names: set[str] = set()
    for i, up in enumerate(cfg.upstreams):
        where = f"{path}: $.upstreams[{i}]"
        if up.name in names:
            raise ConfigError(f"{where}.name: duplicate upstream name {up.name!r}")
        names.add(up.name)
        if up.weight < 0:
            raise ConfigError(f"{where}.weight: must be >= 0")
        if up.base_url != "demo" and not up.base_url.startswith(("http://", "https://")):
            raise ConfigError(f'{where}.base_url: must start with http:// or https:// (or be "demo")')
        if up.api_key_env and up.api_key_env.startswith("sk-"):
            raise ConfigError(
                f"{where}.api_key_env: looks like a key; name the environment variable that holds it instead"
            )
    for model, price in cfg.prices.items():
        for field in (
            "input",
            "output",
            "cached_input",
            "per_1m_characters",
            "per_minute",
            "audio_input",
            "cached_audio_input",
            "audio_output",
        ):
            v = getattr(price, field)
            if v is not None and v < 0:
                raise ConfigError(f"{path}: $.prices.{model}.{field}: must be >= 0")
    from keyplane.billing.prices import check_config

    for problem in check_config(cfg, flat):
        raise ConfigError(f"{path}: {problem}")
    from keyplane.alerts import check_sinks
    from keyplane.guard.rules import check_section

    for problem in (*check_section(cfg.guard), *check_sinks(cfg.alerts)):
        raise ConfigError(f"{path}: {problem}")
    from keyplane.providers.config import check_providers

    for problem in check_providers(cfg.providers):
        raise ConfigError(f"{path}: {problem}")
    from keyplane.cache import check_config as check_cache

    for problem in check_cache(cfg, flat):
        raise ConfigError(f"{path}: {problem}")
    if flat["log_format"] not in ("text", "json"):
        raise ConfigError("setting `log_format` must be text or json")
    if flat["usage_journal_fsync"] not in ("always", "interval", "never"):
        raise ConfigError("setting `usage_journal_fsync` must be always, interval or never")
    if flat["metrics_auth"] not in ("admin_or_token", "admin", "token", "none"):
        raise ConfigError("setting `metrics_auth` must be admin_or_token, admin, token or none")
    for name in (
        "usage_journal_fsync_seconds",
        "usage_apply_seconds",
        "usage_apply_batch",
        "usage_journal_segment_bytes",
    ):
        if flat[name] <= 0:
            raise ConfigError(f"setting `{name}` must be > 0")
    if flat["max_staleness_seconds"] < 0:
        raise ConfigError("setting `max_staleness_seconds` must be >= 0 (0: no bound)")
    for name in _TIMEOUTS:
        if flat[name] <= 0:
            raise ConfigError(f"setting `{name}` must be > 0")
    if flat["max_body_bytes"] <= 0:
        raise ConfigError("setting `max_body_bytes` must be > 0")
    if not 0 < flat["port"] < 65536:
        raise ConfigError("setting `port` must be between 1 and 65535")


DEFAULT_CONFIG: Final = """\
# keyplane.toml: written by `keyplane init`. Every setting is documented in docs/configuration.md.
# Environment variables KEYPLANE_* override the flat settings below.

# host = "127.0.0.1"
# port = 8080

# The built-in offline upstream: model `demo-echo` answers deterministically, so keyplane can be
# tried with no provider key.
[[upstreams]]
name = "demo"
base_url = "demo"
models = ["demo-*"]

# OpenAI, used only when OPENAI_API_KEY is set in keyplane's environment.
[[upstreams]]
name = "openai"
base_url = "https://api.openai.com/v1"
api_key_env = "OPENAI_API_KEY"      # the name of the variable, never the key itself
models = ["gpt-*", "o1*", "o3*", "o4*", "chatgpt-*", "text-embedding-*", "omni-moderation-*"]
weight = 1
"""


def settings_markdown() -> str:
    """The settings table for docs/configuration.md (a test keeps the docs in step)."""
    rows = ["| setting (keyplane.toml) | environment | default | meaning |", "|---|---|---|---|"]
    for s in SETTINGS:
        default = "(empty)" if s.default == "" else f"`{s.default}`"
        rows.append(f"| `{s.name}` | `{s.env}` | {default} | {s.help} |")
    return "\n".join(rows)


if __name__ == "__main__":  # python -m keyplane.config: the settings table for docs/configuration.md
    print(settings_markdown())
