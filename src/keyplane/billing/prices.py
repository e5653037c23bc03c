"""The price table: which :class:`~keyplane.billing.price.Price` a model is billed at, and its service tier,
Batch API and long-context factors.

The table is the shipped ``prices.toml`` (or the ``prices_file`` setting's) with keyplane.toml's
``[prices."name"]`` entries added or replacing by name; billing/prices_file.py reads and parses it, and
billing/price.py holds the cost arithmetic on one price, in integer micro-dollars.

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
from typing import Any

from keyplane.billing.price import MICROS, Price
from keyplane.billing.prices_file import (
    PriceError,
    entry,
    load_data,
    shipped,
    shipped_containers,
    shipped_extras,
    shipped_tools,
    to_micros,
)

log = logging.getLogger("keyplane.billing")

# A dated snapshot of a model: -YYYY-MM-DD or -MMDD at the end of its name.
_SNAPSHOT = re.compile(r"-(?:\d{4}-\d{2}-\d{2}|\d{4})$")


def family(model: str) -> str:
    """The model a dated snapshot belongs to (``gpt-4o-mini-2024-07-18`` -> ``gpt-4o-mini``)."""
    m = _SNAPSHOT.search(model)
    return model[: m.start()] if m and m.start() > 0 else model


def _specificity(pattern: str) -> int:
    return sum(1 for c in pattern if c not in "*?[]")


def _is_glob(name: str) -> bool:
    return any(c in name for c in "*?[")


class PriceTable:
    def __init__(
        self, entries: dict[str, Price], configured: frozenset[str] = frozenset(), tools: dict[str, int] | None = None
    ) -> None:
        self.entries = entries
        self.tools = tools if tools is not None else {}  # hosted tool type -> micro-dollars per call
        # code interpreter container memory ("1g", "4g"...) -> micro-dollars per session; the default
        # container's price is tools["code_interpreter"]
        self.containers: dict[str, int] = {}
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
        entries = {name: entry(name, p) for name, p in shipped(data).items()}
        for name, p in configured.items():
            entries[name] = entry(name, p)
        tiers, long = shipped_extras(data)
        for model, (above, factor, out_factor) in long.items():
            if model in entries and model not in configured:
                entries[model] = dataclasses.replace(
                    entries[model], long_above=above, long_factor=factor, long_output_factor=out_factor
                )
        table = cls(entries, frozenset(configured), shipped_tools(data))
        table.containers = shipped_containers(data)
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
