"""Which names a model request counts as: the one home of model-name variants.

An upstream may serve one model under several names: a provider prefix (OpenRouter's ``openai/gpt-4o``,
``models/gpt-4o``), a tag after ``:`` or ``@`` (Ollama's ``llama3.1:latest``, OpenRouter's ``:nitro`` and
``:online``, ``llama3.1@8b``) and another case (an upstream may match names case-insensitively). A fine-tune
(``ft:gpt-4o-mini:acme::id``) is a model of its own: its colons are not a tag.

Two readers, one derivation: the access policy's deny list refuses a request under every name it counts as
(:func:`names`), and billing's rate limits count it against the one model it runs (:func:`base_model`, which is
always one of those names, compared case-insensitively). Neither reads dated snapshots (``-2024-07-18``): the
policy's matching and the price table's ``family`` do. Imports nothing of keyplane (both may import it).

Also the model an Images API call runs when it names none (:func:`default_image_model`): billing prices it and
counts it against that model's rate limits; the access policy refuses such a call under model permissions.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

FINE_TUNE = "ft:"

# The Images API's `model` "defaults to `dall-e-2` unless a parameter specific to the GPT image models is used"
# (OpenAI's API reference); then a GPT image model runs: gpt-image-1, the one the reference documents.
DALL_E_2: Final = "dall-e-2"
GPT_IMAGE: Final = "gpt-image-1"
# Parameters only the GPT image models take: any value but null sends one (a JSON edit's `images` too).
_GPT_IMAGE_PARAMS: Final = frozenset(
    {
        "background",
        "images",
        "input_fidelity",
        "moderation",
        "output_compression",
        "output_format",
        "partial_images",
        "stream",
    }
)
# The parameters dall-e-2 takes (generations, edits), and the values of `quality` and `size` only it or only the
# GPT image models take (dall-e-3's `hd`, `1792x1024`... are neither: a call naming no model cannot be told).
_DALL_E_2_PARAMS: Final = frozenset(
    {"model", "prompt", "n", "size", "quality", "response_format", "user", "image", "mask"}
)
_DALL_E_2_VALUES: Final = {
    "quality": frozenset({"standard", "auto"}),
    "size": frozenset({"256x256", "512x512", "1024x1024"}),
}
_GPT_IMAGE_VALUES: Final = {
    "quality": frozenset({"low", "medium", "high"}),
    "size": frozenset({"1536x1024", "1024x1536", "auto"}),
}


def unprefixed(model: str) -> str:
    """The name without a provider prefix (``openai/gpt-4o`` -> ``gpt-4o``)."""
    return model.strip().rsplit("/", 1)[-1]


def is_fine_tune(name: str) -> bool:
    """A fine-tune's name (``ft:base:org::id``), however spelled."""
    return name.strip().casefold().startswith(FINE_TUNE)


def names(model: str) -> set[str]:
    """Every name a request for ``model`` counts as, as spelled (compare them case-insensitively, stripped):
    the name itself, without its provider prefix, and each of those without an ``@`` tag, then without a
    ``:`` tag (not a fine-tune's). ``openai/gpt-4o:nitro`` -> ``openai/gpt-4o:nitro``, ``gpt-4o:nitro``,
    ``openai/gpt-4o``, ``gpt-4o``. Empty names are left out."""
    out = {model, unprefixed(model)}
    out |= {n.split("@", 1)[0] for n in out}
    out |= {n.split(":", 1)[0] for n in out if not is_fine_tune(n)}
    return {n for n in out if n}


def base_model(model: str) -> str:
    """The model a variant name runs (casefolded): no provider prefix, no tag (``openai/gpt-4o-mini:nitro``,
    ``GPT-4o-mini`` -> ``gpt-4o-mini``; ``llama3.1:latest``, ``llama3.1@8b`` -> ``llama3.1``); a fine-tune is
    its own (``ft:gpt-4o:acme::id`` stays). ``model`` itself when nothing is left."""
    m = unprefixed(model).strip().casefold()
    if not is_fine_tune(m):
        m = m.split("@", 1)[0].split(":", 1)[0]
    return m or model


def default_image_model(fields: Mapping[str, object], files: int = 0, variation: bool = False) -> str | None:
    """The model the Images API runs for a call that names none, from its ``fields`` (a JSON body's, a multipart
    form's text fields) and the ``files`` of a multipart edit: dall-e-2, or gpt-image-1 when a parameter or value
    only the GPT image models take is sent, or more input images than dall-e-2's one and its mask; a variation
    is always dall-e-2 (the only model that makes them). None when it cannot be told: a parameter or a value
    neither is known to take (then the caller should refuse to guess where a wrong guess costs)."""
    if variation:
        return DALL_E_2
    given = {k: v for k, v in fields.items() if v is not None}
    if files > 2 or any(k in _GPT_IMAGE_PARAMS for k in given):
        return GPT_IMAGE
    for key, values in _GPT_IMAGE_VALUES.items():
        v = given.get(key)
        if isinstance(v, str) and v.strip().lower() in values:
            return GPT_IMAGE
    if any(k not in _DALL_E_2_PARAMS for k in given):
        return None
    for key, values in _DALL_E_2_VALUES.items():
        v = given.get(key)
        if v is not None and not (isinstance(v, str) and v.strip().lower() in values):
            return None
    return DALL_E_2
