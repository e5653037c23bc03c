"""The price table: what a model's tokens, images, characters or minutes cost, held as integers.

The shipped table is ``prices.toml`` beside this module (OpenAI list prices, written like
keyplane.toml's ``[prices."name"]`` entries); an entry in keyplane.toml adds one or replaces one by
name. TOML gives floats; each is read back through its shortest decimal form into an integer number
of micro-dollars (per 1M tokens, per image, per 1M characters, per minute), so 0.15 is exactly
150000, never 0.1499999. A token request costs, in micro-dollars, rounded up once:
(uncached input x input + cached input x cached_input + output x output) / 1M.

Lookup (:meth:`PriceTable.lookup`): the exact name; then, for a dated snapshot
(``gpt-4o-mini-2024-07-18``, ``gpt-4-0613``), its model's entry; then the most specific matching glob
(most literal characters); then ``[prices.default]``. The shipped table has no broad globs: a name it
does not know (``gpt-5-pro`` once was priced as ``gpt-5`` through ``gpt-5*``) has no price, and
admission refuses it wherever a spend limit or credit applies (docs/limits-and-billing.md).
"""

from __future__ import annotations

import fnmatch
import logging
import re
import tomllib
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import msgspec

from keyplane.config import Price as PriceConfig

log = logging.getLogger("keyplane.billing")

MICROS = 1_000_000  # micro-dollars per dollar; also tokens per price unit (1M)
DATA = Path(__file__).with_name("prices.toml")
# A dated snapshot of a model: -YYYY-MM-DD or -MMDD at the end of its name.
_SNAPSHOT = re.compile(r"-(?:\d{4}-\d{2}-\d{2}|\d{4})$")


def family(model: str) -> str:
    """The model a dated snapshot belongs to (``gpt-4o-mini-2024-07-18`` -> ``gpt-4o-mini``)."""
    m = _SNAPSHOT.search(model)
    return model[:m.start()] if m and m.start() > 0 else model


def shipped() -> dict[str, PriceConfig]:
    """The entries of prices.toml."""
    with DATA.open("rb") as f:
        data = tomllib.load(f)
    return msgspec.convert(data.get("prices", {}), dict[str, PriceConfig])


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
    """Micro-dollars: per 1M tokens (input, cached_input, output), per image, per 1M characters, per
    minute. ``tokens`` is False for an entry that prices no tokens (images, speech, transcription)."""

    input: int
    cached_input: int
    output: int
    max_output: int | None = None
    context_window: int | None = None
    images: tuple[tuple[str, str, int], ...] = ()  # (quality, size, micro-dollars per image)
    per_1m_characters: int | None = None
    per_minute: int | None = None
    tokens: bool = True

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


def _is_glob(name: str) -> bool:
    return any(c in name for c in "*?[")


def _entry(name: str, p: PriceConfig) -> Price:
    where = f"$.prices.{name}"
    inp = to_micros(p.input, f"{where}.input") if p.input is not None else 0
    cached = to_micros(p.cached_input, f"{where}.cached_input") if p.cached_input is not None else inp
    images: list[tuple[str, str, int]] = []
    for key, usd in p.images.items():
        quality, _, size = key.strip().partition(" ")
        if not size or " " in size.strip():
            raise PriceError(f"{where}.images: keys are \"quality size\" (e.g. \"hd 1024x1792\"), got {key!r}")
        images.append((quality, size.strip(), to_micros(usd, f"{where}.images.{key}")))
    for field in ("max_output", "context_window"):
        v = getattr(p, field)
        if v is not None and v < 1:
            raise PriceError(f"{where}.{field}: must be >= 1")
    chars = to_micros(p.per_1m_characters, f"{where}.per_1m_characters") if p.per_1m_characters is not None else None
    minute = to_micros(p.per_minute, f"{where}.per_minute") if p.per_minute is not None else None
    tokens = p.input is not None and not images and chars is None and minute is None
    return Price(inp, cached, to_micros(p.output, f"{where}.output"), p.max_output, p.context_window,
                 tuple(images), chars, minute, tokens)


class PriceTable:
    def __init__(self, entries: dict[str, Price], configured: frozenset[str] = frozenset()) -> None:
        self.entries = entries
        self.configured = configured  # names from keyplane.toml (their globs are the administrator's)
        self._exact = {k: v for k, v in entries.items() if not _is_glob(k) and k != "default"}
        self._globs = sorted(((k, v) for k, v in entries.items() if _is_glob(k)),
                             key=lambda kv: -_specificity(kv[0]))
        self.default = entries.get("default")
        self._cache: dict[str, Price | None] = {}
        self._told: set[str] = set()

    @classmethod
    def from_config(cls, configured: dict[str, Any]) -> PriceTable:
        """The shipped table with keyplane.toml's [prices.*] entries added or replacing."""
        entries = {name: _entry(name, p) for name, p in shipped().items()}
        for name, p in configured.items():
            entries[name] = _entry(name, p)
        return cls(entries, frozenset(configured))

    def lookup(self, model: str) -> Price | None:
        try:
            return self._cache[model]
        except KeyError:
            pass
        found = self._exact.get(model)
        if found is None:
            fam = family(model)
            if fam != model:
                found = self._exact.get(fam)
        if found is None:
            for pattern, price in self._globs:
                if fnmatch.fnmatchcase(model, pattern):
                    found = price
                    if pattern in self.configured:
                        self._tell(f"model `{model}` is priced by the glob [prices.\"{pattern}\"] of keyplane.toml; "
                                   "give it an entry of its own if its list price differs")
                    break
        if found is None:
            found = self.default
        if len(self._cache) < 10_000:  # bounded: model names come from clients
            self._cache[model] = found
        return found

    def _tell(self, message: str) -> None:
        if message not in self._told and len(self._told) < 1000:
            self._told.add(message)
            log.warning("%s", message)

    def known_models(self) -> list[str]:
        """Model names the table knows (to list rate limits for the upstreams' globs)."""
        return sorted(set(self._exact) | {"omni-moderation-latest", "text-moderation-latest", "demo-echo"})


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
