"""Which calls may reason unseen (proxy/estimate.py may_reason): a stream of one cut before its usage is billed the
output it reserved, since the provider generated tokens it never streamed (docs/proxy.md "Streaming")."""

from __future__ import annotations

import pytest

from keyplane.billing.config import Price as PriceConfig
from keyplane.billing.prices_file import entry
from keyplane.proxy.estimate import may_reason

PLAIN = b'{"model":"m","messages":[{"role":"user","content":"hi"}]}'


@pytest.mark.parametrize(
    "model",
    [
        "o3",
        "o4-mini",
        "gpt-5.4",
        "openai/gpt-oss-120b",
        "codex-mini-latest",
        "deepseek-reasoner",
        "deepseek-r1:14b",
        "qwq-32b",
        "gemini-2.5-pro",
        "google/gemini-3-flash",
        "grok-4",
        "grok-3-mini",
        "qwen3:8b",
        "Qwen/Qwen3-235B-A22B",
        "magistral-medium",
        "glm-4.6",
        "phi-4-reasoning",
        "kimi-k2-thinking",
    ],
)
def test_reasoning_models_are_known_by_name(model: str) -> None:
    assert may_reason(model, PLAIN)


@pytest.mark.parametrize("model", ["gpt-4o-mini", "gpt-4.1", "gemini-2.0-flash", "grok-3", "llama3.1:8b", "glm-4"])
def test_other_models_do_not_reason_unless_asked(model: str) -> None:
    assert not may_reason(model, PLAIN)
    for field in (
        b'"reasoning_effort": "low"',
        b'"reasoning":{"effort":"high"}',
        b'"thinking": {"type": "enabled", "budget_tokens": 4000}',
        b'"enable_thinking":true',
        b'"thinking_config": {"thinking_budget": 1024}',
        b'"include_thoughts": true',
    ):
        assert may_reason(model, PLAIN[:-1] + b"," + field + b"}"), field


def test_the_price_entry_decides_when_it_declares() -> None:
    """An operator alias the names miss (`house-model` serving a reasoning model) is declared `reasoning = true`; a
    name taken for a reasoning model that is not one may be declared `false`."""
    assert may_reason("house-model", PLAIN, declared=True)
    assert not may_reason("o3-lookalike", PLAIN, declared=False)
    assert may_reason("o3", PLAIN, declared=None)
    assert entry("house-model", PriceConfig(input=1, output=2, reasoning=True)).reasoning is True
    assert entry("x", PriceConfig(input=1, output=2)).reasoning is None


def test_a_price_entry_with_a_wrong_reasoning_value_is_refused() -> None:
    import msgspec

    assert msgspec.convert({"input": 1, "reasoning": True}, PriceConfig).reasoning is True
    with pytest.raises(msgspec.ValidationError, match="reasoning"):
        msgspec.convert({"input": 1, "reasoning": "yes"}, PriceConfig)
