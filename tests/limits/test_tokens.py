"""Prompt tokens at admission: the model's tokenizer from the bpe-openai wheel, never a download."""

from __future__ import annotations

import orjson
import pytest

from keyplane.limits import tokens

BOTH = ("o200k_base", "cl100k_base")


@pytest.fixture(scope="module", autouse=True)
def loaded():
    tokens.load(BOTH)


def test_encodings_come_from_the_wheel_offline(monkeypatch):
    import tiktoken.load

    def no_download(*a, **k):
        raise AssertionError("tiktoken tried to fetch an encoding")

    monkeypatch.setattr(tiktoken.load, "read_file", no_download)
    monkeypatch.setattr(tokens, "_encodings", {})
    tokens.load(BOTH)
    assert tokens._encodings["o200k_base"] is not None and tokens._encodings["cl100k_base"] is not None


def test_same_counts_as_bpe_openai():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import bpe_openai

    text = "Héllo wörld! 12345 tokens, spaces   and\nnewlines; code: def f(x): return x**2 # ünïcode 你好"
    for name in BOTH:
        assert tokens._encodings[name].encode_ordinary(text) == bpe_openai.get_encoding(name).encode_ordinary(text)


def test_an_encoding_not_loaded_is_built_in_the_background(monkeypatch):
    import time

    monkeypatch.setattr(tokens, "_encodings", {"o200k_base": tokens._encodings["o200k_base"]})
    monkeypatch.setattr(tokens, "_counters", {})
    first = tokens.counter("gpt-4-turbo").count("hello world, hello world")
    assert first == tokens.estimate("hello world, hello world")  # no waiting on the request path
    deadline = time.monotonic() + 30
    while tokens._encodings.get("cl100k_base") is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    text = "hello world, hello world"
    real = len(tokens._encodings["cl100k_base"].encode_ordinary(text))
    assert real != tokens.estimate(text) and tokens.counter("gpt-4-turbo").count(text) == real


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
    # what cannot be read counts one token per byte: the most its text can be
    assert tokens.prompt_tokens("/v1/chat/completions", "gpt-4o", b"not json") == 8


def test_counting_is_an_upper_bound_and_names_what_it_cannot_see():
    c = "/v1/chat/completions"
    # every string is counted, whatever the key it sits under
    plain = tokens.measure(c, "gpt-4o", orjson.dumps({"messages": [{"role": "user", "content": "hi"}]}))
    hidden = tokens.measure(c, "gpt-4o", orjson.dumps({"messages": [
        {"role": "user", "content": [{"type": "refusal", "refusal": "word " * 500}]}]}))
    assert hidden.prompt > plain.prompt + 400 and not hidden.unbounded
    # an image counts as the most one image is billed; files and audio are billed by what is not in the body
    img = tokens.measure(c, "gpt-4o", orjson.dumps({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * 10_000}}]}]}))
    assert img.prompt >= tokens.IMAGE_TOKENS_MAX and not img.unbounded
    for part in ({"type": "file", "file": {"file_data": "data:application/pdf;base64,AAAA"}},
                 {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
                 {"type": "input_file", "file_id": "file-1"}):
        m = tokens.measure(c, "gpt-4o", orjson.dumps({"messages": [{"role": "user", "content": [part]}]}))
        assert m.unbounded, part
    r = tokens.measure("/v1/responses", "gpt-4o", orjson.dumps({"prompt": {"id": "pmpt_1"}, "input": "x"}))
    assert r.unbounded
    # hosted tools are billed per call
    assert tokens.measure("/v1/responses", "gpt-4o", orjson.dumps(
        {"input": "x", "tools": [{"type": "web_search"}]})).hosted_tools
    assert not tokens.measure("/v1/responses", "gpt-4o", orjson.dumps(
        {"input": "x", "tools": [{"type": "function", "name": "f", "parameters": {}}]})).hosted_tools
    # bodies that crashed counting before (red-team review): a number for messages, deep nesting
    assert tokens.measure(c, "gpt-4o", b'{"messages": 5}').prompt >= 0
    deep = b'{"prompt": ' + b"[" * 900 + b'"a"' + b"]" * 900 + b"}"
    assert tokens.measure("/v1/completions", "gpt-4o", deep).unbounded
