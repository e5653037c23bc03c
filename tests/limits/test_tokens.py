"""Prompt tokens at admission: the model's tokenizer from the bpe-openai wheel, never a download."""

from __future__ import annotations

import orjson
import pytest

from keyplane.limits import tokens


@pytest.fixture(scope="module", autouse=True)
def loaded():
    tokens.load()


def test_encodings_come_from_the_wheel_offline(monkeypatch):
    import tiktoken.load

    def no_download(*a, **k):
        raise AssertionError("tiktoken tried to fetch an encoding")

    monkeypatch.setattr(tiktoken.load, "read_file", no_download)
    monkeypatch.setattr(tokens, "_encodings", {})
    tokens.load()
    assert tokens._encodings["o200k_base"] is not None and tokens._encodings["cl100k_base"] is not None


@pytest.mark.parametrize("model,encoding", [
    ("gpt-4o-mini", "o200k_base"), ("gpt-4.1-nano", "o200k_base"), ("o3-mini", "o200k_base"),
    ("o4-mini", "o200k_base"), ("gpt-5", "o200k_base"), ("demo-echo", "o200k_base"),
    ("gpt-4-turbo", "cl100k_base"), ("gpt-3.5-turbo", "cl100k_base"), ("text-embedding-3-small", "cl100k_base"),
    ("llama3", None),
])
def test_encoding_per_model(model, encoding):
    assert tokens.encoding_name(model) == encoding


def test_counts():
    body = orjson.dumps({"model": "gpt-4o", "messages": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Hello, how are you?"}], "n": 2})
    n, choices = tokens.measure("/v1/chat/completions", "gpt-4o", body)
    # the cookbook's count: 3 per message + role + content, 3 to prime the reply
    assert n == 3 + (3 + 1 + 6) + (3 + 1 + 6) + 0 and choices == 2
    assert tokens.prompt_tokens("/v1/embeddings", "text-embedding-3-small",
                                orjson.dumps({"input": ["hello world", [1, 2, 3]]})) == 2 + 3
    assert tokens.prompt_tokens("/v1/responses", "gpt-4o", orjson.dumps({"input": "hello world"})) == 2
    assert tokens.prompt_tokens("/v1/chat/completions", "llama3",  # unknown model: 4 bytes a token
                                orjson.dumps({"messages": [{"role": "user", "content": "x" * 40}]})) == 3 + 3 + 1 + 10
    assert tokens.prompt_tokens("/v1/chat/completions", "gpt-4o", b"not json") == 2
