"""The price table: USD per 1M tokens per model (glob patterns allowed), held as integers.

``[prices."gpt-4o-mini"] input = 0.15  cached_input = 0.075  output = 0.60`` in keyplane.toml adds or
replaces an entry of the shipped table (OpenAI list prices). TOML gives floats; each is read back
through its shortest decimal form into an integer number of micro-dollars per 1M tokens, so 0.15
is exactly 150000, never 0.1499999. A request costs, in micro-dollars, rounded up once:
(uncached input x input + cached input x cached_input + output x output) / 1M.

Lookup: an exact name first, then the most specific matching glob (most literal characters), then
``[prices.default]``. A model with none of these is refused at admission.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

MICROS = 1_000_000  # micro-dollars per dollar; also tokens per price unit (1M)

# USD per 1M tokens: (input, cached input or None, output). OpenAI list prices; variants a glob
# covers (audio, realtime, search previews) may cost more: give them their own entry when used.
DEFAULT_PRICES: dict[str, tuple[str, str | None, str]] = {
    "gpt-5*": ("1.25", "0.125", "10"),
    "gpt-5-mini*": ("0.25", "0.025", "2"),
    "gpt-5-nano*": ("0.05", "0.005", "0.40"),
    "gpt-4.1*": ("2", "0.50", "8"),
    "gpt-4.1-mini*": ("0.40", "0.10", "1.60"),
    "gpt-4.1-nano*": ("0.10", "0.025", "0.40"),
    "gpt-4o*": ("2.50", "1.25", "10"),
    "gpt-4o-2024-05-13": ("5", None, "15"),
    "gpt-4o-mini*": ("0.15", "0.075", "0.60"),
    "chatgpt-4o-latest": ("5", None, "15"),
    "o1*": ("15", "7.50", "60"),
    "o1-mini*": ("1.10", "0.55", "4.40"),
    "o1-pro*": ("150", None, "600"),
    "o3*": ("2", "0.50", "8"),
    "o3-mini*": ("1.10", "0.55", "4.40"),
    "o3-pro*": ("20", None, "80"),
    "o3-deep-research*": ("10", "2.50", "40"),
    "o4-mini*": ("1.10", "0.275", "4.40"),
    "o4-mini-deep-research*": ("2", "0.50", "8"),
    "gpt-4-turbo*": ("10", None, "30"),
    "gpt-4-*-preview": ("10", None, "30"),
    "gpt-4": ("30", None, "60"),
    "gpt-4-0613": ("30", None, "60"),
    "gpt-4-0314": ("30", None, "60"),
    "gpt-4-32k*": ("60", None, "120"),
    "gpt-3.5-turbo*": ("0.50", None, "1.50"),
    "text-embedding-3-small": ("0.02", None, "0"),
    "text-embedding-3-large": ("0.13", None, "0"),
    "text-embedding-ada-002": ("0.10", None, "0"),
    "omni-moderation-*": ("0", None, "0"),
    "text-moderation-*": ("0", None, "0"),
    "demo-*": ("0", None, "0"),
}


# Names a glob of the table covers that its stems do not give.
EXTRA_KNOWN = ("omni-moderation-latest", "text-moderation-latest", "chatgpt-4o-latest", "demo-echo")


class PriceError(ValueError):
    pass


def to_micros(value: Any, where: str) -> int:
    """USD (a TOML float or int, or a decimal string) as an exact integer of micro-dollars."""
    if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
        raise PriceError(f"{where}: must be a number")
    try:
        d = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    except InvalidOperation:
        raise PriceError(f"{where}: must be a number") from None
    if not d.is_finite() or d < 0:
        raise PriceError(f"{where}: must be a number >= 0")
    m = d * MICROS
    if m != m.to_integral_value():
        raise PriceError(f"{where}: at most 6 decimals (micro-dollars), got {value}")
    return int(m)


@dataclass(frozen=True, slots=True)
class Price:
    """Micro-dollars per 1M tokens."""

    input: int
    cached_input: int
    output: int

    def cost(self, prompt: int, cached: int, completion: int) -> int:
        """Micro-dollars for a usage (cached tokens are part of the prompt tokens), rounded up."""
        cached = min(max(cached, 0), prompt)
        total = (prompt - cached) * self.input + cached * self.cached_input + completion * self.output
        return -(-total // MICROS)

    def max_cost(self, prompt: int, max_output: int) -> int:
        """The most a request can cost: no cache hit and every allowed output token."""
        return -(-(prompt * self.input + max_output * self.output) // MICROS)


def _specificity(pattern: str) -> int:
    return sum(1 for c in pattern if c not in "*?[]")


class PriceTable:
    def __init__(self, entries: dict[str, Price]) -> None:
        self.entries = entries
        self._exact = {k: v for k, v in entries.items() if not any(c in k for c in "*?[") and k != "default"}
        self._globs = sorted(((k, v) for k, v in entries.items() if any(c in k for c in "*?[")),
                             key=lambda kv: -_specificity(kv[0]))
        self.default = entries.get("default")
        self._cache: dict[str, Price | None] = {}

    @classmethod
    def from_config(cls, configured: dict[str, Any]) -> PriceTable:
        """The shipped table with keyplane.toml's [prices.*] entries added or replacing."""
        entries: dict[str, Price] = {}
        for name, (i, c, o) in DEFAULT_PRICES.items():
            inp = to_micros(i, name)
            entries[name] = Price(inp, to_micros(c, name) if c is not None else inp, to_micros(o, name))
        for name, p in configured.items():
            where = f"$.prices.{name}"
            inp = to_micros(p.input, f"{where}.input")
            cached = to_micros(p.cached_input, f"{where}.cached_input") if p.cached_input is not None else inp
            entries[name] = Price(inp, cached, to_micros(p.output, f"{where}.output"))
        return cls(entries)

    def lookup(self, model: str) -> Price | None:
        try:
            return self._cache[model]
        except KeyError:
            pass
        found = self._exact.get(model)
        if found is None:
            for pattern, price in self._globs:
                if fnmatch.fnmatchcase(model, pattern):
                    found = price
                    break
        if found is None:
            found = self.default
        if len(self._cache) < 10_000:  # bounded: model names come from clients
            self._cache[model] = found
        return found

    def known_models(self) -> list[str]:
        """Model names the table knows (to list rate limits for the upstreams' globs): its exact names,
        and the stem of each ``name*`` glob (``gpt-4o-mini*`` -> gpt-4o-mini)."""
        names = set(self._exact) | set(EXTRA_KNOWN)
        for pattern, _ in self._globs:
            stem = pattern[:-1]
            if pattern.endswith("*") and not any(c in stem for c in "*?[") and not stem.endswith("-"):
                names.add(stem)
        return sorted(names)


def check_config(cfg: Any, flat: dict[str, Any]) -> list[str]:
    """Problems in [prices], [[tiers]], [limits] and the limits settings, for config.load_settings."""
    problems: list[str] = []
    try:
        PriceTable.from_config(cfg.prices)
    except PriceError as e:
        problems.append(str(e))
    from keyplane.billing.tiers import check_tiers

    problems.extend(check_tiers(cfg.tiers, cfg.limits.tier))
    for name in ("reservation_ttl_seconds", "ledger_flush_seconds"):
        if flat.get(name, 1) <= 0:
            problems.append(f"setting `{name}` must be > 0")
    return problems
