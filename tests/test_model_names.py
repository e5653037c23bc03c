"""keyplane.model_names: which names a model request counts as (the access policy's deny list reads them all,
billing's rate limits the one it runs)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keyplane.model_names import base_model, is_fine_tune, names, unprefixed


@pytest.mark.parametrize(
    ("model", "want"),
    [
        ("gpt-4o", {"gpt-4o"}),
        ("llama3.1:latest", {"llama3.1:latest", "llama3.1"}),
        ("llama3.1@8b", {"llama3.1@8b", "llama3.1"}),
        ("openai/gpt-4o:nitro", {"openai/gpt-4o:nitro", "gpt-4o:nitro", "openai/gpt-4o", "gpt-4o"}),
        ("openai/gpt-4o:online", {"openai/gpt-4o:online", "gpt-4o:online", "openai/gpt-4o", "gpt-4o"}),
        ("models/GPT-4o", {"models/GPT-4o", "GPT-4o"}),
        ("gpt-4o@latest:x", {"gpt-4o@latest:x", "gpt-4o@latest", "gpt-4o"}),
        ("ft:gpt-4o-mini:acme::abc", {"ft:gpt-4o-mini:acme::abc"}),  # a fine-tune's colons are not a tag
        ("FT:gpt-4o:acme::abc", {"FT:gpt-4o:acme::abc"}),
        ("ft:gpt-4o:acme::abc@x", {"ft:gpt-4o:acme::abc@x", "ft:gpt-4o:acme::abc"}),
        ("", set()),
    ],
)
def test_names_a_request_counts_as(model: str, want: set[str]) -> None:
    assert names(model) == want


@pytest.mark.parametrize(
    ("model", "want"),
    [
        ("openai/gpt-4o-mini:nitro", "gpt-4o-mini"),
        ("GPT-4o-mini", "gpt-4o-mini"),
        (" gpt-4o-mini ", "gpt-4o-mini"),
        ("llama3.1:latest", "llama3.1"),
        ("llama3.1@8b", "llama3.1"),
        ("openai/gpt-4o:online", "gpt-4o"),
        ("ft:gpt-4o-mini:acme::abc", "ft:gpt-4o-mini:acme::abc"),  # a fine-tune is its own model
        ("openai/FT:gpt-4o:acme::abc", "ft:gpt-4o:acme::abc"),
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini-2024-07-18"),  # snapshots are the price table's family()
        ("x/", "x/"),  # nothing left: the name as asked
        (":latest", ":latest"),
    ],
)
def test_base_model(model: str, want: str) -> None:
    assert base_model(model) == want


def test_parts() -> None:
    assert unprefixed(" openai/gpt-4o ") == "gpt-4o" and unprefixed("a/b/c") == "c" and unprefixed("gpt") == "gpt"
    assert is_fine_tune(" Ft:gpt-4o:acme::id") and not is_fine_tune("gpt-4o:ft")


_NAME = st.text(alphabet=st.sampled_from(list("ftFT:@/ -.aGp4o\u212a")), max_size=16)


@settings(max_examples=500, deadline=None)
@given(_NAME)
def test_the_limits_model_is_one_of_the_names_the_policy_reads(model: str) -> None:
    """A deny list naming the model a request's rate limits count against names the request too."""
    if model:
        assert base_model(model).strip().casefold() in {n.strip().casefold() for n in names(model)}
