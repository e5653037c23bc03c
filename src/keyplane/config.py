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
from typing import Any, Final

import msgspec


@dataclass(frozen=True, slots=True)
class Setting:
    name: str  # key in keyplane.toml (top level)
    env: str  # environment variable
    default: Any
    type: type
    help: str


SETTINGS: Final[tuple[Setting, ...]] = (
    Setting("home", "KEYPLANE_HOME", ".keyplane", str,
            "Folder for the SQLite store, the secret key, the usage journal and keyplane.toml."),
    Setting("database_url", "KEYPLANE_DATABASE_URL", "", str,
            "SQL store. Empty: SQLite (WAL) at $KEYPLANE_HOME/keyplane.db. postgresql://... for a fleet."),
    Setting("redis_url", "KEYPLANE_REDIS_URL", "", str,
            "Redis for a fleet: shared rate limits, budget reservations and the invalidation bus."),
    Setting("secret_key", "KEYPLANE_SECRET_KEY", "", str,
            "Server secret keying key digests and encrypting stored credentials. Empty: read from, or "
            "generated into, $KEYPLANE_HOME/secret.key (mode 0600). Never put it in keyplane.toml."),
    Setting("host", "KEYPLANE_HOST", "127.0.0.1", str, "Address `keyplane serve` binds to."),
    Setting("port", "KEYPLANE_PORT", 8080, int, "Port `keyplane serve` listens on."),
    Setting("max_body_bytes", "KEYPLANE_MAX_BODY_BYTES", 32 * 1024 * 1024, int,
            "Largest request body accepted; larger ones get 413."),
    Setting("snapshot_poll_seconds", "KEYPLANE_SNAPSHOT_POLL_SECONDS", 0.5, float,
            "How often each instance checks the store for control-plane changes (key revocations reach "
            "every instance within this time, plus the reload)."),
    Setting("last_used_flush_seconds", "KEYPLANE_LAST_USED_FLUSH_SECONDS", 10.0, float,
            "How often keys' last_used_at is written to the store (batched, never per request)."),
    Setting("log_format", "KEYPLANE_LOG_FORMAT", "text", str, "Log format: text or json (JSON lines)."),
    Setting("log_level", "KEYPLANE_LOG_LEVEL", "info", str, "Log level: debug, info, warning, error."),
    Setting("default_max_tokens", "KEYPLANE_DEFAULT_MAX_TOKENS", 4096, int,
            "Output tokens reserved at admission when a request sets no max_tokens."),
)
_BY_NAME: Final = {s.name: s for s in SETTINGS}


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


class Price(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    input: float
    output: float = 0.0
    cached_input: float | None = None


class CreditSection(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    enforce: bool | None = None


class FileConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The structured parts of keyplane.toml; flat settings are read from SETTINGS."""

    upstreams: list[Upstream] = msgspec.field(default_factory=list)
    prices: dict[str, Price] = msgspec.field(default_factory=dict)
    credit: CreditSection = msgspec.field(default_factory=CreditSection)
    # Sections owned by later features are accepted as free-form tables until they grow types.
    guard: dict[str, Any] = msgspec.field(default_factory=dict)
    alerts: dict[str, Any] = msgspec.field(default_factory=dict)
    tiers: list[dict[str, Any]] = msgspec.field(default_factory=list)
    limits: dict[str, Any] = msgspec.field(default_factory=dict)
    metrics: dict[str, Any] = msgspec.field(default_factory=dict)


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
        raise ConfigError(
            f"{origin}: setting `{setting.name}` must be {setting.type.__name__}, got {raw!r}"
        ) from None


def database_url_for(raw: str, home: Path) -> str:
    """Normalise a user-facing URL to the async driver SQLAlchemy needs."""
    if not raw:
        return f"sqlite+aiosqlite:///{(home / 'keyplane.db').resolve()}"
    if raw.startswith(("postgresql://", "postgres://")):
        return "postgresql+asyncpg://" + raw.split("://", 1)[1]
    if raw.startswith("sqlite:///"):
        return "sqlite+aiosqlite:///" + raw[len("sqlite:///"):]
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
            raise ConfigError(f"{where}.base_url: must start with http:// or https:// (or be \"demo\")")
        if up.api_key_env and up.api_key_env.startswith("sk-"):
            raise ConfigError(
                f"{where}.api_key_env: looks like a key; name the environment variable that holds it instead"
            )
    for model, price in cfg.prices.items():
        for field in ("input", "output", "cached_input"):
            v = getattr(price, field)
            if v is not None and v < 0:
                raise ConfigError(f"{path}: $.prices.{model}.{field}: must be >= 0")
    if flat["log_format"] not in ("text", "json"):
        raise ConfigError("setting `log_format` must be text or json")
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
