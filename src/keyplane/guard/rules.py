"""Kill-switch rules: parsing, validation, the shipped defaults and the effective set.

A rule is the ``[[guard.rules]]`` table of keyplane.toml (keyplane.guard.config.GuardRule), the same fields as JSON
over the admin API. :func:`compile_rule` checks what msgspec's types cannot (durations, ranges,
which metric a kind takes) and raises :class:`RuleError` naming the field; the result is a
:class:`Rule` with durations in seconds, which the detectors use.

The effective set: the shipped defaults (unless ``guard.defaults = false``), then the config rules
(a config rule with a default's name replaces it), then the rules changed over the API, stored in
SQL, which override by name; an API deletion of a config rule is stored as a tombstone.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import msgspec

from keyplane.guard.config import GuardRule, GuardSection

KINDS = ("token_surge", "spend_surge", "error_spike", "new_origins", "ceiling")
SURGES = ("token_surge", "spend_surge")
PROVIDER_SCOPES = ("provider_key", "provider_project")  # evaluated on ingested provider usage (keyplane.providers)
DEFAULT_METRIC = {
    "token_surge": "tokens",
    "spend_surge": "cost_usd",
    "ceiling": "tokens",
    "error_spike": "requests",
    "new_origins": "requests",
}
MIN_WINDOW = 60.0
MAX_WINDOW = 7 * 86400.0
MAX_COOLDOWN = 30 * 86400.0
MAX_NAME = 64
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_DUR_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0}

# Shipped defaults (docs/guard.md): on unless `guard.defaults = false` or replaced by a rule of the same name.
DEFAULT_RULES: tuple[GuardRule, ...] = (
    GuardRule(
        name="token-surge",
        kind="token_surge",
        scope="key",
        window="1h",
        threshold=3.0,
        metric="tokens",
        min_volume=20000,
        mode="suspend",
        cooldown="1h",
    ),
    # keyplane's own auth and permission refusals of an authenticated key (401/403): the signature of
    # a stolen key tried on what it may not do. 404 is left out (a new user calling endpoints that
    # keyplane or the upstream does not serve is exploring, not probing), and so is 429 (keyplane's
    # own rate limits answer it to honest clients too).
    GuardRule(
        name="error-spike",
        kind="error_spike",
        scope="key",
        window="10m",
        threshold=0.5,
        min_volume=30,
        mode="suspend",
        cooldown="1h",
        statuses=[401, 403],
    ),
)


class RuleError(ValueError):
    """A bad rule; ``field`` names the offending field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def parse_duration(value: str, field: str = "window") -> float:
    """Go-style durations: 90s, 10m, 1h, 1h30m, 1d, 2w (seconds as a float)."""
    if not isinstance(value, str) or not value.strip():
        raise RuleError(field, f'\'{field}\' must be a duration such as "10m", "1h" or "1d".')
    text = value.strip()
    pos, total = 0, 0.0
    for m in _DUR_RE.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNIT[m.group(2)]
        pos = m.end()
    if pos != len(text) or pos == 0:
        raise RuleError(field, f'\'{field}\' is not a duration: {value!r} (use e.g. "10m", "1h", "1d").')
    return total


def format_duration(seconds: float) -> str:
    s = int(seconds)
    for unit, n in (("w", 7 * 86400), ("d", 86400), ("h", 3600), ("m", 60)):
        if s and s % n == 0:
            return f"{s // n}{unit}"
    return f"{s}s"


@dataclass(frozen=True, slots=True)
class Rule:
    """A validated rule: the definition as given plus durations in seconds."""

    spec: GuardRule
    window_s: float
    cooldown_s: float
    metric: str
    source: str = "config"  # default | config | api

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def kind(self) -> str:
        return self.spec.kind

    @property
    def scope(self) -> str:
        return self.spec.scope

    @property
    def threshold(self) -> float:
        return self.spec.threshold

    @property
    def min_volume(self) -> float:
        return self.spec.min_volume

    @property
    def mode(self) -> str:
        return self.spec.mode

    @property
    def dry_run(self) -> bool:
        return self.spec.dry_run

    def to_json(self, updated_at: int | None = None) -> dict[str, Any]:
        d: dict[str, Any] = {"object": "guard.rule", "id": self.name}
        d.update(msgspec.to_builtins(self.spec))
        d["metric"] = self.metric
        d["source"] = self.source
        d["updated_at"] = updated_at
        return d


def compile_rule(spec: GuardRule, source: str = "config") -> Rule:
    """Check a rule beyond its types; RuleError names the field."""
    name = spec.name.strip() if isinstance(spec.name, str) else ""
    if not name or len(name) > MAX_NAME or not _NAME_RE.match(name):
        raise RuleError(
            "name", f"'name' must be 1 to {MAX_NAME} letters, digits, '-', '_' or '.', starting with a letter or digit."
        )
    window = parse_duration(spec.window, "window")
    if not MIN_WINDOW <= window <= MAX_WINDOW:
        raise RuleError("window", "'window' must be from 1m to 7d.")
    cooldown = parse_duration(spec.cooldown, "cooldown")
    if not 0 <= cooldown <= MAX_COOLDOWN:
        raise RuleError("cooldown", "'cooldown' must be from 0s to 30d.")
    t = spec.threshold
    if t != t:  # NaN
        raise RuleError("threshold", "'threshold' must be a number.")
    if spec.kind in SURGES and not 0 < t <= 1000:
        raise RuleError(
            "threshold",
            "'threshold' of a surge is the growth over the baseline (3.0 = +300%): "
            "it must be above 0 and at most 1000.",
        )
    if spec.kind == "error_spike" and not 0 < t <= 1:
        raise RuleError("threshold", "'threshold' of error_spike is the share of errors: above 0 and at most 1.")
    if spec.kind == "new_origins" and not 1 <= t <= 1_000_000:
        raise RuleError(
            "threshold", "'threshold' of new_origins is a number of new client IPs or user agents: at least 1."
        )
    if spec.kind == "ceiling" and not 0 < t < 1e15:
        raise RuleError("threshold", "'threshold' of a ceiling is an amount of `metric` per window: above 0.")
    if not 0 <= spec.min_volume < 1e15:
        raise RuleError("min_volume", "'min_volume' must be 0 or more.")
    metric = spec.metric or DEFAULT_METRIC[spec.kind]
    if spec.kind in ("error_spike", "new_origins") and metric != "requests":
        raise RuleError("metric", f"'metric' of {spec.kind} is always 'requests' (min_volume counts requests).")
    if not 1 <= spec.baseline_periods <= 720:
        raise RuleError("baseline_periods", "'baseline_periods' must be from 1 to 720.")
    if spec.kind == "error_spike" and (not spec.statuses or any(not 400 <= s <= 499 for s in spec.statuses)):
        raise RuleError("statuses", "'statuses' must be a non-empty list of 4xx status codes.")
    if spec.scope == "project" and spec.kind == "new_origins":
        raise RuleError("scope", 'new_origins works per key only: use scope "key".')
    if spec.scope in PROVIDER_SCOPES:
        if spec.kind not in ("token_surge", "spend_surge", "ceiling"):
            raise RuleError("kind", "provider rules take token_surge, spend_surge or ceiling (hourly buckets).")
        if spec.mode == "suspend":
            raise RuleError("mode", 'a provider key cannot be suspended: use "revoke" or "alert".')
        if window % 3600:
            raise RuleError("window", "'window' of a provider rule is whole hours (the provider's buckets).")
    if name != spec.name:
        spec = msgspec.structs.replace(spec, name=name)
    return Rule(spec=spec, window_s=window, cooldown_s=cooldown, metric=metric, source=source)


def rule_from_json(data: Any, source: str = "api") -> Rule:
    """A rule from a JSON object of the API; RuleError names the field."""
    if not isinstance(data, dict):
        raise RuleError("body", "The request body must be a JSON object.")
    if data.get("scope") in PROVIDER_SCOPES:
        raise RuleError("scope", "provider rules are set in keyplane.toml (docs/providers.md).")
    data = {k: v for k, v in data.items() if k not in ("object", "id", "source", "updated_at")}
    try:
        spec = msgspec.convert(data, GuardRule)
    except msgspec.ValidationError as e:
        raise RuleError(_field_of(str(e)), f"Invalid rule: {e}") from None
    return compile_rule(spec, source)


def _field_of(message: str) -> str:
    m = re.search(r"`\$\.([A-Za-z_]+)", message)
    if m:
        return m.group(1)
    m = re.search(r"required field `([A-Za-z_]+)`", message)
    if m:
        return m.group(1)
    m = re.search(r"unknown field `([A-Za-z_]+)`", message)
    return m.group(1) if m else "body"


def check_section(section: GuardSection) -> Iterable[str]:
    """Problems of keyplane.toml's [guard] section, each naming its field (config._validate)."""
    names: set[str] = set()
    for i, spec in enumerate(section.rules):
        where = f"$.guard.rules[{i}]"
        try:
            rule = compile_rule(spec)
        except RuleError as e:
            yield f"{where}.{e.field}: {e.message}"
            continue
        if rule.name in names:
            yield f"{where}.name: duplicate rule name {rule.name!r}"
        names.add(rule.name)


def config_rules(section: GuardSection) -> dict[str, Rule]:
    """The rules keyplane.toml gives (with the defaults), by name, in order."""
    out: dict[str, Rule] = {}
    if section.defaults:
        for spec in DEFAULT_RULES:
            out[spec.name] = compile_rule(spec, "default")
    for spec in section.rules:
        if spec.scope in PROVIDER_SCOPES:
            continue  # keyplane.providers evaluates them (provider_rules)
        rule = compile_rule(spec, "config")
        out[rule.name] = rule
    return out


def provider_rules(section: GuardSection) -> list[Rule]:
    """The enabled provider_key / provider_project rules of keyplane.toml."""
    return [compile_rule(spec, "config") for spec in section.rules if spec.scope in PROVIDER_SCOPES and spec.enabled]


def effective(base: dict[str, Rule], stored: dict[str, Rule | None]) -> dict[str, Rule]:
    """Config rules overlaid by the stored API changes (None: deleted)."""
    out = dict(base)
    for name, rule in stored.items():
        if rule is None:
            out.pop(name, None)
        else:
            out[name] = rule
    return dict(sorted(out.items()))
