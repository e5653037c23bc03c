"""The price table file: reading it (the shipped ``prices.toml``, a path or an http(s) URL) and parsing its
entries into :class:`~keyplane.billing.price.Price` values, its [tools] (code interpreter containers by
memory), [service_tiers] and [long_context] tables, and each entry's provenance.

The shipped table is ``prices.toml`` beside this module (OpenAI list prices, written like
keyplane.toml's ``[prices."name"]`` entries); an entry in keyplane.toml adds one or replaces one by
name (billing/prices.py). TOML gives floats; each is read back through its shortest decimal form into an
integer number of micro-dollars (per 1M tokens, per image, per 1M characters, per minute), so 0.15 is
exactly 150000, never 0.1499999.
"""

from __future__ import annotations

import re
import tomllib
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import msgspec

from keyplane.billing.config import Price as PriceConfig
from keyplane.billing.price import MICROS, Price

DATA = Path(__file__).with_name("prices.toml")
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


def entry(name: str, p: PriceConfig) -> Price:
    """A ``[prices."name"]`` entry as a Price (PriceError when a value is not one)."""
    where = f"$.prices.{name}"
    inp = to_micros(p.input, f"{where}.input") if p.input is not None else 0
    cached = to_micros(p.cached_input, f"{where}.cached_input") if p.cached_input is not None else inp
    images: list[tuple[str, str, int]] = []
    for key, usd in p.images.items():
        quality, _, size = key.strip().partition(" ")
        if not size or " " in size.strip():
            raise PriceError(f'{where}.images: keys are "quality size" (e.g. "hd 1024x1792"), got {key!r}')
        images.append((quality, size.strip(), to_micros(usd, f"{where}.images.{key}")))
    for field in ("max_output", "context_window", "max_seconds", "image_tokens"):
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
    img_in = to_micros(p.image_input, f"{where}.image_input") if p.image_input is not None else None
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
        image_tokens=p.image_tokens,
        reasoning=p.reasoning,
        image_input=img_in,
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


# The memory of a code interpreter container whose request names none (OpenAI's default).
DEFAULT_CONTAINER = "1g"
_MEMORY = re.compile(r"^[0-9]+[kmgt]$")


def shipped_tools(data: dict[str, Any]) -> dict[str, int]:
    """The [tools] table: micro-dollars per hosted tool call; ``code_interpreter``: the session price of
    its default container (the container prices by memory: :func:`shipped_containers`)."""
    out: dict[str, int] = {}
    for name, v in data.get("tools", {}).items():
        if name == "code_interpreter":
            default = shipped_containers(data).get(DEFAULT_CONTAINER)
            if default is not None:
                out[name] = default
        else:
            out[name] = to_micros(v, f"$.tools.{name}")
    return out


def shipped_containers(data: dict[str, Any]) -> dict[str, int]:
    """Micro-dollars per code interpreter container session by its ``memory_limit`` ("1g", "4g"...): the
    ``[tools.code_interpreter]`` table (its ``source`` and ``taken`` are its provenance, not prices), or, for
    a number (``code_interpreter = 0.03``, the form of older price files), the default container's price
    only, so that a larger container is not priced at it."""
    v = data.get("tools", {}).get("code_interpreter")
    if v is None:
        return {}
    if not isinstance(v, dict):
        return {DEFAULT_CONTAINER: to_micros(v, "$.tools.code_interpreter")}
    out: dict[str, int] = {}
    for memory, usd in v.items():
        where = f"$.tools.code_interpreter.{memory}"
        if memory in ("source", "taken"):
            if not isinstance(usd, str):
                raise PriceError(f"{where}: must be a string")
            continue
        if not _MEMORY.match(memory):
            raise PriceError(f'{where}: keys are container memory limits ("1g", "4g", "16g"...), got {memory!r}')
        out[memory] = to_micros(usd, where)
    return out


def shipped_extras(
    data: dict[str, Any],
) -> tuple[dict[str, dict[str, int]], dict[str, tuple[int, int, int | None]]]:
    """The [service_tiers] ({tier: {model or "default": factor}}) and [long_context] ({model: (above,
    factor, output factor or None)}) tables; factors in micro-units."""
    tiers: dict[str, dict[str, int]] = {}
    for tier, by_model in data.get("service_tiers", {}).items():
        tiers[tier] = {m: to_micros(v, f"$.service_tiers.{tier}.{m}") for m, v in by_model.items()}
    long: dict[str, tuple[int, int, int | None]] = {}
    for model, v in data.get("long_context", {}).items():
        above = v.get("above")
        if not isinstance(above, int) or above < 1:
            raise PriceError(f"$.long_context.{model}.above: must be an integer >= 1")
        unknown = sorted(set(v) - {"above", "factor", "output_factor"})
        if unknown:
            raise PriceError(f"$.long_context.{model}.{unknown[0]}: unknown field (above, factor, output_factor)")
        out = v.get("output_factor")
        long[model] = (
            above,
            to_micros(v.get("factor", 1), f"$.long_context.{model}.factor"),
            None if out is None else to_micros(out, f"$.long_context.{model}.output_factor"),
        )
    return tiers, long
