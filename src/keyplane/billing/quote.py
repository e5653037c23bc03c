"""What a spending request may cost, read from its body before the call (admission's price step).

Every POST the provider bills comes here (DESIGN.md hot-path rule 0), with or without a ``model``, and
goes to its endpoint family's quote:

- token endpoints (chat, completions, responses, embeddings): the prompt counted with the model's
  tokenizer, plus the output it may write; a request without an output limit is given one, reserved and
  written into the forwarded body (billing/quote_tokens.py), and the hosted tools it enables are bounded
  and priced per call (billing/quote_tools.py);
- images, speech, transcription and translation: priced from the request, billed flat on success
  (billing/quote_media.py); a transcription's minutes are measured from a WAV or MP3 upload held whole
  (billing/audio_length.py), otherwise estimated from the upload's size (refused where a spend limit or
  credit applies);
- everything else that spends (fine-tuning, assistants runs, realtime, videos...): no price. A batch
  (``POST /v1/batches``) has none here either: admission prices it from its input file, quoted line by
  line with this code when it was uploaded (billing/batches.py).

A :class:`~keyplane.billing.quote_record.Quote` says which, and admission decides (docs/limits-and-billing.md
"What a request may cost").
"""

from __future__ import annotations

import re
from typing import Any, Final

from keyplane import errors
from keyplane.billing.prices import PriceTable
from keyplane.billing.quote_media import IMAGES, SPEECH, TRANSCRIBE, quote_images, quote_speech, quote_transcription
from keyplane.billing.quote_record import Quote
from keyplane.billing.quote_tokens import TOKEN_ENDPOINTS, quote_tokens

_WHY: Final = (
    ("/v1/batches", "a batch is priced only at its creation, from an input file uploaded through keyplane"),
    ("/v1/fine_tuning", "training is billed per token of an uploaded file keyplane does not read"),
    ("/v1/threads", "a run reads its whole stored thread and may call paid tools"),
    ("/v1/evals", "an eval run calls models over a stored data set"),
    ("/v1/realtime", "a realtime session is billed as it runs, outside the request"),
)


_FILENAME: Final = re.compile(rb"(?i)filename\*?=")


def _count_files(body: bytes) -> int:
    return len(_FILENAME.findall(body))


def quote(
    prices: PriceTable,
    endpoint: str,
    model: str | None,
    body: bytes,
    max_tokens: int | None,
    context_ref: bool,
    form: dict[str, str] | None,
    default_max_tokens: int,
    upload: Any = None,
    default_tier: str | None = None,
) -> Quote:
    """``upload``: a multipart upload not held in ``body`` (proxy/uploads.py: ``estimate_bytes``, ``files``);
    ``body`` is then its beginning (the text fields). ``default_tier``: the tier the upstreams serve a request
    that names none (or `auto`) at, when it is not the standard one; such a request is priced at it."""
    if endpoint in TOKEN_ENDPOINTS:
        return quote_tokens(prices, endpoint, model, body, max_tokens, context_ref, default_max_tokens, default_tier)
    if endpoint in IMAGES:
        # The file parts as the multipart parser read them (RFC 7578 parameter names are case-insensitive: a
        # byte count of `filename=` missed `FILENAME=`); a form from elsewhere: every spelling counted.
        parsed = getattr(form, "files", None)
        files = upload.files if upload is not None else parsed if isinstance(parsed, int) else _count_files(body)

        return quote_images(prices, endpoint, model, body, form, files)
    if endpoint == SPEECH:
        return quote_speech(prices, model, body)
    if endpoint in TRANSCRIBE:
        return quote_transcription(prices, model, form, upload.estimate_bytes if upload is not None else len(body))
    why = next((w for prefix, w in _WHY if endpoint.startswith(prefix)), "keyplane has no price for this endpoint")
    return Quote(model, unpriced=errors.cost_not_bounded(endpoint, why))
