"""Quotes of the media endpoints, each priced from the request and billed flat on success: images (per
image by model, quality and size, the most expensive the request allows when it says ``auto``, plus the
prompt's tokens for gpt-image models and, for a streamed one, 100 image output tokens per partial image; a
call naming no model is priced as the model the provider runs for it, keyplane.model_names), speech (per
character of ``input``) and transcription and translation (per minute: by the length of the uploaded file
when keyplane read it whole before admission and can bound it, billing/audio_length.py, a WAV, MP3, FLAC,
M4A, Ogg or WebM file; else an estimate from the upload's size, refused where a spend limit or credit applies; a
token-priced model is bounded by its tokens instead).
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any, Final

import orjson

from keyplane import errors, model_names
from keyplane.billing.audio_length import ceil_seconds
from keyplane.billing.price import MICROS, Price
from keyplane.billing.prices import PriceTable
from keyplane.billing.quote_record import Quote
from keyplane.limits import tokens

IMAGES: Final = frozenset({"/v1/images/generations", "/v1/images/edits", "/v1/images/variations"})
SPEECH: Final = "/v1/audio/speech"
TRANSCRIBE: Final = frozenset({"/v1/audio/transcriptions", "/v1/audio/translations"})
MAX_IMAGES: Final = 10  # the images API's largest n
# The duration an upload is reserved at: 8 kbit/s, the least bitrate speech codecs are used at (opus and
# mp3 go down to 6-8 kbit/s), so a file cannot carry more audio than it reserves; most are over-estimated.
AUDIO_BYTES_PER_MINUTE: Final = 60_000
# Image input tokens reserved per input image of a gpt-image edit (at the model's ``image_input`` rate): an
# allowance above what an image tokenizes to at the default (low) input fidelity, and one above what
# `input_fidelity: high` adds (OpenAI's image guide: about 4,200 tokens for a square image, 6,200 for a
# portrait or landscape one, on top of its tiles). An answer that reports its usage is billed that usage.
EDIT_IMAGE_TOKENS: Final = 6_000
HIGH_FIDELITY_IMAGE_TOKENS: Final = 7_500
# A streamed gpt-image call's `partial_images` (0 to 3): "each partial image incurs an additional 100 image
# output tokens" (OpenAI's image generation guide), at the model's `output` rate (its image output tokens).
MAX_PARTIAL_IMAGES: Final = 3
PARTIAL_IMAGE_TOKENS: Final = 100
_NOT_STREAMED: Final = frozenset({"", "0", "false"})


def _fields(body: bytes, form: dict[str, str] | None) -> dict[str, object]:
    if form is not None:
        return dict(form)
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return {}
    return obj if isinstance(obj, dict) else {}


def _json_images(f: dict[str, object]) -> int:
    """The input images of a JSON image edit: each entry of ``images``, and ``image`` and ``mask`` when given."""
    n = 0
    for key in ("images", "image", "mask"):
        v = f.get(key)
        if isinstance(v, list):
            n += len(v)
        elif v is not None:
            n += 1
    return n


def partial_images_cost(price: Price, partials: int) -> int:
    """Micro-dollars of ``partials`` partial images at the model's ``output`` rate (its image output tokens)."""
    return -(-partials * PARTIAL_IMAGE_TOKENS * price.output // MICROS)


def _partial_images(f: dict[str, object]) -> int:
    """The request's ``partial_images``: 0 to 3 (a JSON integer, or its digits in a form field or a string);
    0 when absent or null. Anything else is refused (the provider would refuse it too, after the call began)."""
    v = f.get("partial_images")
    if v is None:
        return 0
    if isinstance(v, str) and v.strip() in ("0", "1", "2", "3"):
        return int(v.strip())
    if isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_PARTIAL_IMAGES:
        return v
    raise errors.invalid_value(
        "partial_images",
        f"Invalid value for 'partial_images': expected an integer from 0 to {MAX_PARTIAL_IMAGES}.",
    )


def _streamed(f: dict[str, object]) -> bool:
    """The request asks for a stream: any ``stream`` but absent, null, false, 0 or the strings false and 0 (a
    value the provider might read either way counts as a stream: its partial images are reserved)."""
    v = f.get("stream")
    if v is None or v is False or (isinstance(v, int) and v == 0):
        return False
    return not (isinstance(v, str) and v.strip().lower() in _NOT_STREAMED)


def quote_images(
    prices: PriceTable, endpoint: str, model: str | None, body: bytes, form: dict[str, str] | None, files: int
) -> Quote:
    f = _fields(body, form)
    unread = form is None and not f  # an upload whose fields the proxy did not hand over: assume the most
    partials = MAX_PARTIAL_IMAGES
    if not unread:
        asked = _partial_images(f)  # an invalid value is refused, streamed or not
        partials = asked if _streamed(f) else 0
    named = f.get("model")
    name = model or (named if isinstance(named, str) else None)
    estimate: str | None = None
    if not name:
        # The model the provider runs (dall-e-2, or a GPT image model when a parameter only those take is
        # sent): priced as it and counted against its rate limits (the quote's model). Not known: priced as
        # the GPT image model, an estimate (refused under money controls until the call names its model).
        default = None
        if not unread:
            default = model_names.default_image_model(
                f, files if form is not None else 0, variation=endpoint == "/v1/images/variations"
            )
        name = default or model_names.GPT_IMAGE
        if default is None:
            estimate = (
                "the request names no `model`, and which model the provider runs for it (dall-e-2, or a GPT image "
                "model when a parameter only those take is sent) cannot be told from its fields; name the model"
            )
        if prices.lookup(name) is None:
            why = f"it names no `model`, and the provider would run {name}, which keyplane has no price for"
            return Quote(name, unpriced=errors.cost_not_bounded(endpoint, why + "; name a priced model"))
    price = prices.lookup(name)
    if price is None or not price.images:
        return Quote(name, unpriced=errors.model_not_priced(name))
    raw_n = f.get("n", MAX_IMAGES if unread else 1)
    try:
        n = int(raw_n)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        n = MAX_IMAGES
    n = n if 1 <= n <= MAX_IMAGES else MAX_IMAGES
    qualities = {q for q, _, _ in price.images}
    dall_e = "standard" in qualities and not unread
    quality = str(f.get("quality") or ("standard" if dall_e else "auto"))
    size = str(f.get("size") or ("1024x1024" if dall_e else "auto"))
    cands = [m for q, s, m in price.images if quality in (q, "auto") and size in (s, "auto")]
    if not cands:  # a quality or size the table does not list: the most expensive of the rest
        cands = [m for _, s, m in price.images if s == size] or [m for _, _, m in price.images]
    cost = n * max(cands)
    prompt = 0
    if price.input or price.image_input:
        p = f.get("prompt")
        text = tokens.counter(name).count(p) if isinstance(p, str) else 0
        images_in = 0
        if endpoint == "/v1/images/edits":
            if form is None and f:  # a JSON edit: its inputs are `images` (and `image`, `mask`), not file parts
                files = _json_images(f)
            fidelity = f.get("input_fidelity")
            low = fidelity is None or (isinstance(fidelity, str) and fidelity.strip().lower() == "low")
            images_in = (EDIT_IMAGE_TOKENS if low else HIGH_FIDELITY_IMAGE_TOKENS) * max(1, files)
        prompt = text + images_in
        image_rate = price.image_input if price.image_input is not None else price.input
        cost += -(-(text * price.input + images_in * image_rate) // MICROS)
    if partials:
        if price.output > 0:  # each image's partial images, at the image output rate
            cost += partial_images_cost(price, n * partials)
        elif estimate is None:
            estimate = (
                f"its partial images (`partial_images`, each billed as {PARTIAL_IMAGE_TOKENS} image output tokens) "
                f"have no price: the price table gives {name} no `output` rate (its image output tokens)"
            )
    # the price goes with it: an answer that reports its usage (a GPT image model's) is billed at it (billing/settle.py)
    return Quote(name, cost=cost, prompt=prompt, flat=True, units=n, estimate=estimate, price=price)


def quote_speech(prices: PriceTable, model: str | None, body: bytes) -> Quote:
    f = _fields(body, None)
    name = model or "tts-1"
    price = prices.lookup(name)
    if price is None or price.per_1m_characters is None:
        return Quote(name, unpriced=errors.model_not_priced(name))
    text = f.get("input")
    chars = len(text) if isinstance(text, str) else len(body)
    return Quote(name, cost=-(-chars * price.per_1m_characters // MICROS), flat=True, units=chars)


def minutes_of(size: int, max_seconds: int | None = None) -> int:
    """The most minutes of audio an upload of ``size`` bytes may hold (at least one), at most the model's
    ``max_seconds`` (a longer file is refused by the provider)."""
    minutes = max(1, -(-size // AUDIO_BYTES_PER_MINUTE))
    return min(minutes, max(1, -(-max_seconds // 60))) if max_seconds else minutes


def audio_length(form: Any) -> Fraction | None:
    """The length of the upload's audio file when keyplane measured it before admission (an upper bound of
    what it decodes to: proxy/multipart.py Form, billing/audio_length.py); None when it is not known."""
    measure = getattr(form, "audio_length", None)
    length = measure() if callable(measure) else None
    return length if isinstance(length, Fraction) else None


def seconds_of(length: Fraction, max_seconds: int | None = None) -> int:
    """The whole seconds a measured file is billed (rounded up, at least one), at most the model's
    ``max_seconds`` (a longer file is refused by the provider)."""
    seconds = max(1, ceil_seconds(length))
    return min(seconds, max_seconds) if max_seconds else seconds


def token_bounded(price: Price) -> bool:
    """A transcription model billed per token (gpt-4o-transcribe): bounded by its tokens, not its audio's length."""
    return price.audio_input is not None and bool(price.context_window) and bool(price.max_output)


def priced_by_length(prices: PriceTable, model: str) -> bool:
    """A transcription of ``model`` is priced by the audio's length (per minute: whisper-1), which keyplane
    bounds only by measuring the file before the call."""
    price = prices.lookup(model)
    return price is not None and price.per_minute is not None and not token_bounded(price)


def quote_transcription(prices: PriceTable, model: str | None, form: dict[str, str] | None, size: int) -> Quote:
    name = model or (form or {}).get("model") or "whisper-1"
    price = prices.lookup(name)
    if price is None or price.per_minute is None:
        return Quote(name, unpriced=errors.model_not_priced(name))
    minutes = minutes_of(size, price.max_seconds)
    if price.audio_input is not None and price.context_window and price.max_output:  # token_bounded(price)
        # Billed per token (gpt-4o-transcribe): bounded by a context window of audio and the output limit;
        # settle bills the tokens the answer reports, else this bound.
        bound = price.max_cost(price.context_window, price.max_output)
        return Quote(name, cost=bound, price=price, units=minutes * 60, per_minute=price.per_minute)
    length = audio_length(form)
    if length is not None:
        # Measured: the file cannot decode to more than this, so it is a bound (served under money
        # controls). Priced per second, rounded up, as settle prices the duration an answer reports.
        seconds = seconds_of(length, price.max_seconds)
        cost = -(-seconds * price.per_minute // 60)
        return Quote(name, cost=cost, flat=True, units=seconds, per_minute=price.per_minute)
    return Quote(
        name,
        cost=minutes * price.per_minute,
        flat=True,
        units=minutes * 60,
        per_minute=price.per_minute,
        estimate=(
            "the duration of the audio is not known before it is decoded (keyplane measures a WAV, MP3, FLAC, "
            "M4A/MP4 (AAC), Ogg or WebM (Opus) file, named .wav, .mp3, .mpga, .flac, .m4a, .mp4, .ogg, .oga, .opus, "
            ".webm or .weba, that it reads whole before the call)"
        ),
    )
