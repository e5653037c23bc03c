"""The price table: what a model's tokens, images, characters or minutes cost, held as integers.

The shipped table is ``prices.toml`` beside this module (OpenAI list prices, written like
keyplane.toml's ``[prices."name"]`` entries); an entry in keyplane.toml adds one or replaces one by
name. TOML gives floats; each is read back through its shortest decimal form into an integer number
of micro-dollars (per 1M tokens, per image, per 1M characters, per minute), so 0.15 is exactly
150000, never 0.1499999. A token request costs, in micro-dollars, rounded up once:
(uncached input x input + cached input x cached_input + output x output) / 1M.

Realtime models bill text and audio tokens at separate rates: such an entry has ``audio_input``,
``cached_audio_input`` and ``audio_output`` beside its text rates, and a usage reported by modality
(:class:`Tokens`, a realtime ``response.done``) is priced by :meth:`Price.cost_by`. Whatever is not
attributed to a modality, and any usage reported without its details, is priced at the dearest rates,
as is every reservation: never less than the provider bills.

Lookup (:meth:`PriceTable.lookup`): the exact name; then, for a dated snapshot
(``gpt-4o-mini-2024-07-18``, ``gpt-4-0613``), its model's entry; then the most specific matching glob
(most literal characters); then ``[prices.default]``. The shipped table has no broad globs: a name it
does not know (``gpt-5-pro`` once was priced as ``gpt-5`` through ``gpt-5*``) has no price, and
admission refuses it wherever a spend limit or credit applies (docs/limits-and-billing.md).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import logging
import re
import tomllib
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import msgspec

from keyplane.billing.config import Price as PriceConfig

log = logging.getLogger("keyplane.billing")

MICROS = 1_000_000  # micro-dollars per dollar; also tokens per price unit (1M)
DATA = Path(__file__).with_name("prices.toml")
# A dated snapshot of a model: -YYYY-MM-DD or -MMDD at the end of its name.
_SNAPSHOT = re.compile(r"-(?:\d{4}-\d{2}-\d{2}|\d{4})$")


def family(model: str) -> str:
    """The model a dated snapshot belongs to (``gpt-4o-mini-2024-07-18`` -> ``gpt-4o-mini``)."""
    m = _SNAPSHOT.search(model)
    return model[: m.start()] if m and m.start() > 0 else model


MAX_TABLE_BYTES = 4 * 1024 * 1024


def load_data(source: str = "") -> dict[str, Any]:
    """The price table file: ``source`` (a path, or an http(s) URL the operator keeps current), else the
    shipped prices.toml. Raises PriceError when it cannot be read or is not TOML."""
    try:
        if not source:
            return tomllib.loads(DATA.read_text("utf-8"))
        if source.startswith(("http://", "https://")):
            import httpx

            with httpx.stream("GET", source, timeout=10, follow_redirects=True) as r:
                r.raise_for_status()
                chunks, size = [], 0
                for chunk in r.iter_bytes():
                    size += len(chunk)
                    if size > MAX_TABLE_BYTES:
                        raise PriceError(f"prices_file {source}: larger than {MAX_TABLE_BYTES} bytes")
                    chunks.append(chunk)
            return tomllib.loads(b"".join(chunks).decode("utf-8"))
        return tomllib.loads(Path(source).expanduser().read_text("utf-8"))
    except PriceError:
        raise
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise PriceError(f"prices_file {source or DATA}: cannot read it: {e}") from None
    except Exception as e:  # httpx errors
        raise PriceError(f"prices_file {source}: cannot fetch it: {type(e).__name__}: {e}") from None


def shipped(data: dict[str, Any] | None = None) -> dict[str, PriceConfig]:
    """The entries of prices.toml (or of ``data``, a loaded price table file)."""
    data = load_data() if data is None else data
    try:
        return msgspec.convert(data.get("prices", {}), dict[str, PriceConfig])
    except msgspec.ValidationError as e:
        raise PriceError(f"price table: {e}") from None


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
class Tokens:
    """A usage by modality. Cached tokens are part of the input of their modality; ``other_in`` and
    ``other_out`` are tokens the usage does not attribute to text or audio (image input, missing details):
    priced at the dearest rate; ``cached_rest`` are cached tokens it does not attribute: each is given the
    smallest discount its input could have had."""

    text_in: int = 0
    audio_in: int = 0
    other_in: int = 0
    cached_text: int = 0
    cached_audio: int = 0
    cached_rest: int = 0
    text_out: int = 0
    audio_out: int = 0
    other_out: int = 0

    @property
    def prompt(self) -> int:
        return self.text_in + self.audio_in + self.other_in

    @property
    def cached(self) -> int:
        return min(self.cached_text + self.cached_audio + self.cached_rest, self.prompt)

    @property
    def completion(self) -> int:
        return self.text_out + self.audio_out + self.other_out


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
    max_seconds: int | None = None  # most seconds of audio one transcription may carry
    # Long-context tier: a request whose prompt has more than ``long_above`` tokens is billed at
    # ``long_factor`` (micro-units: 2_000_000 is twice) of these prices, input and output.
    long_above: int | None = None
    long_factor: int = MICROS
    # Audio tokens (realtime models): per 1M tokens; None: the model has no separate audio rate.
    audio_input: int | None = None
    cached_audio_input: int | None = None
    audio_output: int | None = None

    def _tier(self, prompt: int, total: int) -> int:
        if self.long_above is not None and prompt > self.long_above:
            return -(-total * self.long_factor // MICROS)
        return total

    # The dearest rates (audio or text): what tokens of an unknown modality are billed at (set from the above).
    top_input: int = dataclasses.field(init=False, default=0)
    top_cached: int = dataclasses.field(init=False, default=0)
    top_output: int = dataclasses.field(init=False, default=0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "top_input", max(self.input, self.audio_input or 0))
        object.__setattr__(self, "top_cached", max(self.cached_input, self.cached_audio_input or 0))
        object.__setattr__(self, "top_output", max(self.output, self.audio_output or 0))

    def cost(self, prompt: int, cached: int, completion: int) -> int:
        """Micro-dollars for a usage (cached tokens are part of the prompt tokens), rounded up. Its modality
        unknown, a model with audio rates bills it at the dearest ones (:meth:`cost_by` knows better)."""
        cached = min(max(cached, 0), prompt)
        total = (prompt - cached) * self.top_input + cached * self.top_cached + completion * self.top_output
        return -(-self._tier(prompt, total) // MICROS)

    def cost_by(self, t: Tokens) -> tuple[int, int]:
        """(micro-dollars, their input part) for a usage by modality, each rounded up: text at the text rates,
        audio at the audio rates, the rest at the dearest (module docstring)."""
        a_in = self.audio_input if self.audio_input is not None else self.input
        a_cached = (
            self.cached_audio_input
            if self.cached_audio_input is not None
            else (self.audio_input if self.audio_input is not None else self.cached_input)
        )
        a_out = self.audio_output if self.audio_output is not None else self.output
        ct, ca = min(max(t.cached_text, 0), t.text_in), min(max(t.cached_audio, 0), t.audio_in)
        total_in = ct * self.cached_input + ca * a_cached
        # [uncached tokens, rate, cached rate] per modality; unattributed cached tokens go where their
        # discount is smallest, so that the bill is the largest the usage allows.
        pools = [
            [t.text_in - ct, self.input, self.cached_input],
            [t.audio_in - ca, a_in, a_cached],
            [t.other_in, self.top_input, self.top_cached],
        ]
        rest = max(t.cached_rest, 0)
        for pool in sorted(pools, key=lambda p: p[1] - p[2]):
            take = min(rest, max(pool[0], 0))
            pool[0] -= take
            rest -= take
            total_in += take * pool[2]
        total_in += sum(max(n, 0) * rate for n, rate, _ in pools)
        out = t.text_out * self.output + t.audio_out * a_out + t.other_out * self.top_output
        prompt = t.prompt
        cost = -(-self._tier(prompt, total_in + out) // MICROS)
        return cost, min(cost, -(-self._tier(prompt, total_in) // MICROS))

    def max_cost(self, prompt: int, max_output: int) -> int:
        """The most a request can cost: no cache hit and every allowed output token, at the dearest rates."""
        return -(-self._tier(prompt, prompt * self.top_input + max_output * self.top_output) // MICROS)

    def scaled(self, factor: int) -> Price:
        """This price times ``factor`` (micro-units), each rate rounded up (a service tier)."""

        def up(v: int) -> int:
            return -(-v * factor // MICROS)

        def up_opt(v: int | None) -> int | None:
            return None if v is None else up(v)

        return dataclasses.replace(
            self,
            input=up(self.input),
            cached_input=up(self.cached_input),
            output=up(self.output),
            audio_input=up_opt(self.audio_input),
            cached_audio_input=up_opt(self.cached_audio_input),
            audio_output=up_opt(self.audio_output),
        )


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
            raise PriceError(f'{where}.images: keys are "quality size" (e.g. "hd 1024x1792"), got {key!r}')
        images.append((quality, size.strip(), to_micros(usd, f"{where}.images.{key}")))
    for field in ("max_output", "context_window", "max_seconds"):
        v = getattr(p, field)
        if v is not None and v < 1:
            raise PriceError(f"{where}.{field}: must be >= 1")
    chars = to_micros(p.per_1m_characters, f"{where}.per_1m_characters") if p.per_1m_characters is not None else None
    minute = to_micros(p.per_minute, f"{where}.per_minute") if p.per_minute is not None else None
    tokens = p.input is not None and not images and chars is None and minute is None
    a_in, a_cached, a_out = (
        to_micros(v, f"{where}.{f}") if (v := getattr(p, f)) is not None else None
        for f in ("audio_input", "cached_audio_input", "audio_output")
    )
    if a_cached is not None and a_in is None:
        raise PriceError(f"{where}.cached_audio_input: needs audio_input")
    if a_cached is None:
        a_cached = a_in  # as cached_input defaults to input
    return Price(
        inp,
        cached,
        to_micros(p.output, f"{where}.output"),
        p.max_output,
        p.context_window,
        tuple(images),
        chars,
        minute,
        tokens,
        audio_input=a_in,
        cached_audio_input=a_cached,
        audio_output=a_out,
        max_seconds=p.max_seconds,
    )


_TAKEN = re.compile(r"^\d{4}-\d{2}(-\d{2})?$")


def provenance(data: dict[str, Any]) -> dict[str, tuple[str | None, str | None]]:
    """Each entry's (source, taken) in a loaded price file: its own, else the file's."""
    top_source, top_taken = data.get("source"), data.get("taken")
    out: dict[str, tuple[str | None, str | None]] = {}
    for name, p in shipped(data).items():
        out[name] = (
            p.source or (top_source if isinstance(top_source, str) else None),
            p.taken or (top_taken if isinstance(top_taken, str) else None),
        )
    return out


def undated(data: dict[str, Any]) -> list[str]:
    """Entries of a price file without a source URL or a date (YYYY-MM or YYYY-MM-DD) they were taken."""
    return sorted(
        name
        for name, (src, taken) in provenance(data).items()
        if not (src and src.startswith(("https://", "http://"))) or not (taken and _TAKEN.match(taken))
    )


def shipped_tools(data: dict[str, Any]) -> dict[str, int]:
    """The [tools] table: micro-dollars per hosted tool call (code_interpreter: per session)."""
    return {name: to_micros(v, f"$.tools.{name}") for name, v in data.get("tools", {}).items()}


def shipped_extras(data: dict[str, Any]) -> tuple[dict[str, dict[str, int]], dict[str, tuple[int, int]]]:
    """The [service_tiers] ({tier: {model or "default": factor}}) and [long_context] ({model: (above,
    factor)}) tables; factors in micro-units."""
    tiers: dict[str, dict[str, int]] = {}
    for tier, by_model in data.get("service_tiers", {}).items():
        tiers[tier] = {m: to_micros(v, f"$.service_tiers.{tier}.{m}") for m, v in by_model.items()}
    long: dict[str, tuple[int, int]] = {}
    for model, v in data.get("long_context", {}).items():
        above = v.get("above")
        if not isinstance(above, int) or above < 1:
            raise PriceError(f"$.long_context.{model}.above: must be an integer >= 1")
        long[model] = (above, to_micros(v.get("factor", 1), f"$.long_context.{model}.factor"))
    return tiers, long


class PriceTable:
    def __init__(
        self, entries: dict[str, Price], configured: frozenset[str] = frozenset(), tools: dict[str, int] | None = None
    ) -> None:
        self.entries = entries
        self.tools = tools if tools is not None else {}  # hosted tool type -> micro-dollars per call
        self.service_tiers: dict[str, dict[str, int]] = {}  # tier -> model (or "default") -> factor
        self.batch: dict[str, int] = {}  # the Batch API's factor by model (or "default"), micro-units
        self.configured = configured  # names from keyplane.toml (their globs are the administrator's)
        self._exact = {k: v for k, v in entries.items() if not _is_glob(k) and k != "default"}
        self._globs = sorted(((k, v) for k, v in entries.items() if _is_glob(k)), key=lambda kv: -_specificity(kv[0]))
        self.default = entries.get("default")
        self._cache: dict[str, Price | None] = {}
        self._told: set[str] = set()

    @classmethod
    def from_config(cls, configured: dict[str, Any], source: str = "") -> PriceTable:
        """The shipped table (or the prices_file setting's) with keyplane.toml's [prices.*] entries
        added or replacing."""
        data = load_data(source)
        entries = {name: _entry(name, p) for name, p in shipped(data).items()}
        for name, p in configured.items():
            entries[name] = _entry(name, p)
        tiers, long = shipped_extras(data)
        for model, (above, factor) in long.items():
            if model in entries and model not in configured:
                entries[model] = dataclasses.replace(entries[model], long_above=above, long_factor=factor)
        table = cls(entries, frozenset(configured), shipped_tools(data))
        table.service_tiers = tiers
        table.batch = {m: to_micros(v, f"$.batch.{m}") for m, v in data.get("batch", {}).items()}
        return table

    def batch_factor(self, model: str) -> int:
        """The Batch API's factor for a model (micro-units): the [batch] table's entry for the model (or its
        family), else its ``default``; the standard price (1x) when the table has none, never less."""
        for name in (model, family(model)):
            if name in self.batch:
                return self.batch[name]
        return self.batch.get("default", MICROS)

    def tier_factor(self, model: str, tier: str | None) -> int | None:
        """The service tier's factor for a model (micro-units), 1x for the standard tiers; None when the
        tier is one keyplane has no price for."""
        if tier is None or tier in ("auto", "default"):
            return MICROS
        by_model = self.service_tiers.get(tier)
        if by_model is None:
            return None
        for name in (model, family(model)):
            if name in by_model:
                return by_model[name]
        return by_model.get("default")

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
                        self._tell(
                            f'model `{model}` is priced by the glob [prices."{pattern}"] of keyplane.toml; '
                            "give it an entry of its own if its list price differs"
                        )
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
        table = PriceTable.from_config(cfg.prices, flat.get("prices_file") or "")
    except PriceError as e:
        problems.append(str(e))
    else:
        problems.extend(_unpriced_upstream_tiers(table, cfg.upstreams))
    from keyplane.billing.tiers import check_tiers

    problems.extend(check_tiers(cfg.tiers, cfg.limits.tier))
    for name in ("reservation_ttl_seconds", "ledger_flush_seconds"):
        if flat.get(name, 1) <= 0:
            problems.append(f"setting `{name}` must be > 0")
    return problems


def _unpriced_upstream_tiers(table: PriceTable, upstreams: list[Any]) -> list[str]:
    """An upstream's ``service_tier`` must be one the table prices: every request it serves naming no tier is
    reserved at it, and a tier without a price would refuse them all under money controls."""
    known = sorted(table.service_tiers)
    return [
        f"$.upstreams[{i}].service_tier: `{up.service_tier}` is not a tier of the price table "
        f"(its [service_tiers]: {', '.join(known) or 'none'}; or `default`)"
        for i, up in enumerate(upstreams)
        if up.service_tier not in ("", "default") and up.service_tier not in known
    ]
