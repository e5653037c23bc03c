"""Settings: keyplane.toml keys and KEYPLANE_* environment variables, assembled from the features' declarations.

Precedence: environment variable > keyplane.toml > default. The file lives at ``--config`` or
``$KEYPLANE_HOME/keyplane.toml``.

Each feature owns its settings (keyplane.configspec): its flat settings are the fields of a dataclass
in its own package (``keyplane.usage.config.UsageSettings``...), each declared once with its type,
default, environment variable and doc line, and its keyplane.toml sections are msgspec structs there
too, with the checks the types cannot express. This module imports them, never the reverse:
:class:`Settings` inherits every feature's flat settings, :class:`FileConfig` holds every section, and
:func:`load_settings` reads, converts and checks them all. Structured sections are validated with
msgspec, whose messages name the bad field (``$.upstreams[0].weight``); an unknown key anywhere is
an error naming its line and the nearest valid name (keyplane.config_keys). The docs table is
generated from the declarations (``python -m keyplane.config_docs``).
"""

from __future__ import annotations

import os
import secrets
import stat
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import msgspec

from keyplane.access.config import AccessSettings
from keyplane.alerts.config import AlertSink as AlertSink
from keyplane.alerts.config import AlertsSection, check_sinks
from keyplane.billing.config import BillingSettings, CreditSection, Tier, check_prices
from keyplane.billing.config import Price as Price
from keyplane.billing.config import TierRateLimit as TierRateLimit
from keyplane.billing.prices import check_config as check_billing
from keyplane.cache.config import CacheSection, ModelSection
from keyplane.cache.config import check_config as check_cache
from keyplane.config_keys import unknown_key
from keyplane.configspec import POSITIVE, ConfigError, Setting, coerce, setting, settings_of
from keyplane.guard.config import GuardRule as GuardRule
from keyplane.guard.config import GuardSection
from keyplane.guard.rules import check_section
from keyplane.identity.config import SsoSettings
from keyplane.limits.config import LimitsSection, LimitsSettings
from keyplane.providers.config import ProviderSection, check_providers
from keyplane.usage.config import UsageSettings


@dataclass(frozen=True, kw_only=True)
class CoreSettings:
    """The flat settings of keyplane itself: where its stores are, how it serves, how it logs."""

    home: Path = setting(  # noqa: RUF009 (a Path is immutable; setting() is a field declaration)
        Path(".keyplane"),
        "Folder for the SQLite store, the secret key, the usage journal and keyplane.toml.",
        parse=str,
    )
    database_url: str = setting(
        "",
        "SQL store. Empty: SQLite (WAL) at $KEYPLANE_HOME/keyplane.db. postgresql://... for a fleet.",
    )
    redis_url: str = setting(
        "",
        "Redis for a fleet: shared rate limits, budget reservations and the invalidation bus.",
    )
    database_timeout_seconds: float = setting(
        5.0,
        "Longest wait on the SQL store: connecting, each statement (PostgreSQL), waiting for a pooled "
        "connection, and SQLite's busy wait for the write lock. Past it the admin API answers 503 and "
        '/readyz/control reports the store unreachable (docs/operations.md "PostgreSQL loss").',
        valid=POSITIVE,
    )
    redis_timeout_seconds: float = setting(
        1.0,
        "Longest wait on Redis: connecting and each command. Past it an admission answers 503 "
        '(limits_unavailable) rather than hang (docs/operations.md "Degradation").',
        valid=POSITIVE,
    )
    secret_key: bytes = setting(
        b"",
        "Server secret keying key digests and encrypting stored credentials. Empty: read from, or "
        "generated into, $KEYPLANE_HOME/secret.key (mode 0600). Never put it in keyplane.toml.",
        parse=str,
    )
    host: str = setting("127.0.0.1", "Address `keyplane serve` binds to.")
    port: int = setting(
        8080, "Port `keyplane serve` listens on.", valid=(lambda v: 0 < v < 65536, "between 1 and 65535")
    )
    max_body_bytes: int = setting(
        32 * 1024 * 1024, "Largest request body accepted; larger ones get 413.", valid=POSITIVE
    )
    snapshot_poll_seconds: float = setting(
        0.5,
        "How often each instance checks the store for control-plane changes (key revocations reach "
        "every instance within this time, plus the reload).",
    )
    max_staleness_seconds: float = setting(
        10.0,
        "Longest time an instance serves /v1 without confirming its keys and limits are current (a "
        "successful poll of the store, or a bus event or heartbeat it has fully applied); past it, /v1 "
        'answers 503 until it can confirm again (docs/operations.md "Partitions and revocation"). '
        "0: no bound.",
        valid=(lambda v: v >= 0, ">= 0 (0: no bound)"),
    )
    last_used_flush_seconds: float = setting(
        10.0, "How often keys' last_used_at is written to the store (batched, never per request)."
    )
    log_format: str = setting("text", "Log format: text or json (JSON lines).", choices=("text", "json"))
    log_level: str = setting("info", "Log level: debug, info, warning, error.")
    default_max_tokens: int = setting(4096, "Output tokens reserved at admission when a request sets no max_tokens.")


class Upstream(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """One ``[[upstreams]]`` table: where requests go (docs/proxy.md).

    The string under each field is its doc line: docs/configuration.md's table of the section is generated
    from them (python -m keyplane.config_docs).
    """

    name: str
    """unique name, shown in metrics and usage"""
    base_url: str
    """`https://...` of an OpenAI-compatible API, ending in `/v1`; or `demo` for the built-in offline upstream"""
    api_key_env: str = ""
    """name of the environment variable that holds the provider key (never the key itself)"""
    models: list[str] = msgspec.field(default_factory=lambda: ["*"])
    """glob patterns of the models this upstream serves"""
    weight: int = 1
    """share of traffic among upstreams serving the same model"""
    connect_timeout: float = 5.0
    """seconds"""
    read_timeout: float = 600.0
    """seconds between bytes of the answer"""
    max_retries: int = 2
    """further attempts on other upstreams (or this one) on connection errors, timeouts, 429 and 5xx"""
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    """extra headers sent upstream (e.g. `api-version` for Azure); a client header of that name is dropped"""
    require_key: bool = True
    """skip this upstream while `api_key_env` is unset"""
    retry_backoff: float = 0.5
    """first retry backoff in seconds; doubles per retry, minus up to 25% jitter"""
    retry_backoff_max: float = 8.0
    """cap of the backoff"""
    max_retry_wait: float = 60.0
    """an upstream `retry-after` longer than this is not waited for"""
    breaker_failures: int = 5
    """failures in a row that open this upstream's circuit breaker"""
    breaker_cooldown: float = 30.0
    """seconds an open breaker keeps the upstream out before one probe"""
    prefix_cache_tokens: int = 262_144
    """how many prompt tokens this upstream's prompt cache holds, for prefix-affinity routing
    ([caching.md](caching.md))"""
    projects: list[str] = msgspec.field(default_factory=list)
    """project ids or names this upstream is dedicated to (their own provider credential); empty: shared
    ([proxy.md](proxy.md#what-is-isolated-between-projects))"""
    service_tier: str = ""
    """the service tier the provider project serves a request that names none (or `auto`) at, when dearer than
    the standard one (`priority`): such requests are reserved at its price; empty: learned from the answers
    ([limits-and-billing.md](limits-and-billing.md#prices))"""


class FileConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The sections of keyplane.toml, each owned by its feature; the flat settings are :class:`Settings`'."""

    upstreams: list[Upstream] = msgspec.field(default_factory=list)
    prices: dict[str, Price] = msgspec.field(default_factory=dict)
    credit: CreditSection = msgspec.field(default_factory=CreditSection)
    guard: GuardSection = msgspec.field(default_factory=GuardSection)
    alerts: AlertsSection = msgspec.field(default_factory=AlertsSection)
    tiers: list[Tier] = msgspec.field(default_factory=list)
    limits: LimitsSection = msgspec.field(default_factory=LimitsSection)
    metrics: dict[str, Any] = msgspec.field(default_factory=dict)  # free-form: no metrics setting reads it yet
    models: dict[str, ModelSection] = msgspec.field(default_factory=dict)
    cache: CacheSection = msgspec.field(default_factory=CacheSection)
    providers: list[ProviderSection] = msgspec.field(default_factory=list)

    def project_refs(self) -> frozenset[str]:
        """The project ids and names the sections name (an upstream's ``projects``, the response cache's lists).
        A name there gives whichever project bears it what the section gives, so the admin API never moves one
        between projects (control.update_project)."""
        refs = [p for up in self.upstreams for p in up.projects]
        refs += [*self.cache.projects, *self.cache.org_wide_projects]
        return frozenset(r.strip() for r in refs if r.strip() and r.strip() != "*")


@dataclass(frozen=True, kw_only=True)
class Settings(CoreSettings, UsageSettings, LimitsSettings, BillingSettings, AccessSettings, SsoSettings):
    """Every flat setting (one field each, inherited from the feature declaring it), and the file's sections."""

    file: FileConfig
    config_path: Path | None

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


# Every flat setting, in the order of the docs table: keyplane's own, then each feature's.
SETTINGS: Final[tuple[Setting, ...]] = tuple(s for base in Settings.__bases__ for s in settings_of(base))
_BY_NAME: Final = {s.name: s for s in SETTINGS}


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
    text = ""
    if path.exists():
        text = path.read_text("utf-8")
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: not valid TOML: {e}") from None
    elif config_path:
        raise ConfigError(f"config file {path} does not exist")

    flat: dict[str, Any] = {}
    for s in SETTINGS:
        if s.name in overrides and overrides[s.name] is not None:
            flat[s.name] = coerce(s, overrides[s.name], "command line")
        elif s.env in env and env[s.env] != "":
            flat[s.name] = coerce(s, env[s.env], f"environment {s.env}")
        elif s.name in data:
            if s.name == "secret_key":
                raise ConfigError(f"{path}: `secret_key` must not be in the config file; set KEYPLANE_SECRET_KEY")
            flat[s.name] = coerce(s, data[s.name], str(path))
        else:
            flat[s.name] = s.default
    if problem := unknown_key(data, FileConfig, _BY_NAME, text):
        raise ConfigError(f"{path}: {problem}")
    try:
        file_cfg = msgspec.convert({k: v for k, v in data.items() if k not in _BY_NAME}, FileConfig)
    except msgspec.ValidationError as e:
        raise ConfigError(f"{path}: {e}") from None
    _validate(file_cfg, flat, path)

    home = Path(flat["home"])
    flat.update(
        home=home,
        database_url=database_url_for(flat["database_url"], home),
        secret_key=load_secret(home, flat["secret_key"] or "", create_secret),
    )
    return Settings(**flat, file=file_cfg, config_path=path if path.exists() else None)


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
    # Each feature's checks of its sections, then each flat setting's own.
    for problem in (
        *check_prices(cfg.prices),
        *check_billing(cfg, flat),
        *check_section(cfg.guard),
        *check_sinks(cfg.alerts),
        *check_providers(cfg.providers),
        *check_cache(cfg, flat),
    ):
        raise ConfigError(f"{path}: {problem}")
    for s in SETTINGS:
        if bad := s.check(flat[s.name]):
            raise ConfigError(bad)


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
