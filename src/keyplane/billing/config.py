"""Billing's settings and sections of keyplane.toml: ``[prices.*]``, ``[credit]``, ``[[tiers]]``.

User docs: docs/limits-and-billing.md.

keyplane.billing.prices.check_config checks what the types cannot (config.load_settings calls it).
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

from keyplane.configspec import POSITIVE, setting


@dataclass(frozen=True, kw_only=True)
class BillingSettings:
    reservation_ttl_seconds: float = setting(
        900.0,
        "How long a request's budget reservation holds without renewal: the process running a request "
        "renews it every min(TTL / 3, 60 s) until it is settled, so this is how long a crashed process's "
        "reservations hold budget, not a bound on requests.",
        valid=POSITIVE,
    )
    ledger_flush_seconds: float = setting(
        1.0,
        "How often settled costs are written to the SQL spend ledger (in batches, never per request).",
        valid=POSITIVE,
    )
    prices_file: str = setting(
        "",
        "The price table to use instead of the shipped one: a file path or an http(s) URL of a TOML file "
        'written like keyplane\'s prices.toml, read at start (docs/limits-and-billing.md "Prices").',
    )


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
    max_seconds: int | None = None  # most seconds of audio one transcription may carry (what it reserves at most)
    image_tokens: int | None = None  # most input tokens one image is billed (None: limits/tokens.IMAGE_TOKENS_MAX)
    # Audio tokens of realtime (and audio) models, per 1M tokens; ``input``/``cached_input``/``output`` are
    # then the text rates. cached_audio_input defaults to audio_input.
    audio_input: float | None = None
    cached_audio_input: float | None = None
    audio_output: float | None = None
    # Image input tokens of a GPT image model (an edit's input images), per 1M tokens; None: at ``input``.
    image_input: float | None = None
    # The model reasons unseen (output tokens it never streams): a stream cut before its usage is billed the
    # output it reserved. None: decided by the model's name and the request (proxy/estimate.py may_reason).
    reasoning: bool | None = None
    source: str | None = None  # where this entry's prices were read (the price file's own when absent)
    taken: str | None = None  # when (YYYY-MM or YYYY-MM-DD; the price file's own when absent)


# The rates of a [prices.*] entry that must not be negative.
RATES = (
    "input",
    "output",
    "cached_input",
    "per_1m_characters",
    "per_minute",
    "audio_input",
    "image_input",
    "cached_audio_input",
    "audio_output",
)


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


def check_prices(prices: dict[str, Price]) -> list[str]:
    """Negative rates in ``[prices.*]``, each naming its field."""
    return [
        f"$.prices.{model}.{name}: must be >= 0"
        for model, price in prices.items()
        for name in RATES
        if (v := getattr(price, name)) is not None and v < 0
    ]
