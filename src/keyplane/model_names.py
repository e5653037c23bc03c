"""Which names a model request counts as: the one home of model-name variants.

An upstream may serve one model under several names: a provider prefix (OpenRouter's ``openai/gpt-4o``,
``models/gpt-4o``), a tag after ``:`` or ``@`` (Ollama's ``llama3.1:latest``, OpenRouter's ``:nitro`` and
``:online``, ``llama3.1@8b``) and another case (an upstream may match names case-insensitively). A fine-tune
(``ft:gpt-4o-mini:acme::id``) is a model of its own: its colons are not a tag.

Two readers, one derivation: the access policy's deny list refuses a request under every name it counts as
(:func:`names`), and billing's rate limits count it against the one model it runs (:func:`base_model`, which is
always one of those names, compared case-insensitively). Neither reads dated snapshots (``-2024-07-18``): the
policy's matching and the price table's ``family`` do. Imports nothing of keyplane (both may import it).
"""

from __future__ import annotations

FINE_TUNE = "ft:"


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
