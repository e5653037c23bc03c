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
    assert first == tokens.upper_bound("hello world, hello world")  # no waiting on the request path
    deadline = time.monotonic() + 30
    while tokens._encodings.get("cl100k_base") is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    text = "hello world, hello world"
    real = len(tokens._encodings["cl100k_base"].encode_ordinary(text))
    assert real < tokens.upper_bound(text) and tokens.counter("gpt-4-turbo").count(text) == real


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
    # A model without a tokenizer: a token per byte of content (an upper bound), 4 for the message, 3 for the reply.
    assert tokens.prompt_tokens("/v1/chat/completions", "llama3",
                                orjson.dumps({"messages": [{"role": "user", "content": "x" * 40}]})) == 3 + 4 + 40
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


ADVERSARIAL = [
    "hello world " * 50,
    "\u6f22\u5b57\u304b\u306a\u4ea4\u3058\u308a\u6587" * 40,  # CJK: 3 bytes a character
    "\U0001f600\U0001f9d1\u200d\U0001f680\U0001faf6\U0001f3fd" * 40,  # emoji and ZWJ sequences: 4 bytes
    "".join(chr(c) for c in range(0x4e00, 0x4e00 + 600, 7)),  # rare ideographs: byte-level merges fail
    "\u0915\u094d\u0937\u093e" * 60 + " x9Q#z!~" * 40,  # Devanagari conjuncts, then symbol soup
]


@pytest.mark.parametrize("text", ADVERSARIAL, ids=["english", "cjk", "emoji", "rare", "mixed"])
def test_a_model_without_a_tokenizer_reserves_an_upper_bound(text):
    """A model keyplane has no tokenizer for counts one token per UTF-8 byte: never fewer than a real
    byte-level tokenizer makes (the usual 4-bytes-a-token estimate under-counts these up to 4x, and a
    race under a hard limit could spend the difference)."""
    counted = tokens.counter("my-llama-70b").count(text)
    assert counted == len(text.encode("utf-8"))
    for name in ("o200k_base", "cl100k_base"):
        tokens.load((name,))
        real = len(tokens._encodings[name].encode_ordinary(text))
        assert counted >= real, name
