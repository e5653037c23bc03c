"""Prompt tokens at admission: the model's tokenizer from the bpe-openai wheel (limits/encodings.py), never a
download, and counting with it (limits/tokens.py)."""

from __future__ import annotations

import orjson
import pytest

from keyplane.limits import encodings, tokens

BOTH = ("o200k_base", "cl100k_base")


@pytest.fixture(scope="module", autouse=True)
def loaded():
    encodings.load(BOTH)


def test_encodings_come_from_the_wheel_offline(monkeypatch):
    import tiktoken.load

    def no_download(*a, **k):
        raise AssertionError("tiktoken tried to fetch an encoding")

    monkeypatch.setattr(tiktoken.load, "read_file", no_download)
    monkeypatch.setattr(encodings, "_encodings", {})
    encodings.load(BOTH)
    assert encodings._encodings["o200k_base"] is not None and encodings._encodings["cl100k_base"] is not None


def test_same_counts_as_bpe_openai():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import bpe_openai

    text = "Héllo wörld! 12345 tokens, spaces   and\nnewlines; code: def f(x): return x**2 # ünïcode 你好"
    for name in BOTH:
        assert encodings._encodings[name].encode_ordinary(text) == bpe_openai.get_encoding(name).encode_ordinary(text)


def test_an_encoding_not_loaded_is_built_in_the_background(monkeypatch):
    import time

    monkeypatch.setattr(encodings, "_encodings", {"o200k_base": encodings._encodings["o200k_base"]})
    monkeypatch.setattr(tokens, "_counters", {})
    first = tokens.counter("gpt-4-turbo").count("hello world, hello world")
    assert first == tokens.upper_bound("hello world, hello world")  # no waiting on the request path
    deadline = time.monotonic() + 30
    while encodings._encodings.get("cl100k_base") is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    text = "hello world, hello world"
    real = len(encodings._encodings["cl100k_base"].encode_ordinary(text))
    assert real < tokens.upper_bound(text) and tokens.counter("gpt-4-turbo").count(text) == real


@pytest.mark.parametrize(
    "model,encoding",
    [
        ("gpt-4o-mini", "o200k_base"),
        ("gpt-4.1-nano", "o200k_base"),
        ("o3-mini", "o200k_base"),
        ("o4-mini", "o200k_base"),
        ("gpt-5", "o200k_base"),
        ("demo-echo", "o200k_base"),
        ("gpt-4-turbo", "cl100k_base"),
        ("gpt-3.5-turbo", "cl100k_base"),
        ("text-embedding-3-small", "cl100k_base"),
        ("llama3", None),
    ],
)
def test_encoding_per_model(model, encoding):
    assert encodings.encoding_name(model) == encoding


def test_counts():
    body = orjson.dumps(
        {
            "model": "gpt-4o",
            "messages": [
                {"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": "Hello, how are you?"},
            ],
            "n": 2,
        }
    )
    n, choices = tokens.measure("/v1/chat/completions", "gpt-4o", body)
    # the cookbook's count (3 per message + role + content, 3 to prime the reply) and one more per message: a
    # local model's template frames each in 4 (ChatML, Llama 3), its role rendered as text (counted as any string)
    assert n == 3 + (4 + 1 + 6) + (4 + 1 + 6) + 0 and choices == 2
    assert (
        tokens.prompt_tokens(
            "/v1/embeddings", "text-embedding-3-small", orjson.dumps({"input": ["hello world", [1, 2, 3]]})
        )
        == 2 + 3
    )
    assert tokens.prompt_tokens("/v1/responses", "gpt-4o", orjson.dumps({"input": "hello world"})) == 2
    # A model without a tokenizer: a token per byte of role and content (an upper bound), 4 for the message, 3 for
    # the reply.
    assert (
        tokens.prompt_tokens(
            "/v1/chat/completions", "llama3", orjson.dumps({"messages": [{"role": "user", "content": "x" * 40}]})
        )
        == 3 + 4 + 4 + 40
    )
    # what cannot be read counts one token per byte: the most its text can be
    assert tokens.prompt_tokens("/v1/chat/completions", "gpt-4o", b"not json") == 8


def test_counting_is_an_upper_bound_and_names_what_it_cannot_see():
    c = "/v1/chat/completions"
    # every string is counted, whatever the key it sits under
    plain = tokens.measure(c, "gpt-4o", orjson.dumps({"messages": [{"role": "user", "content": "hi"}]}))
    hidden = tokens.measure(
        c,
        "gpt-4o",
        orjson.dumps({"messages": [{"role": "user", "content": [{"type": "refusal", "refusal": "word " * 500}]}]}),
    )
    assert hidden.prompt > plain.prompt + 400 and not hidden.unbounded
    # an image counts as the most one image is billed; files and audio are billed by what is not in the body
    img = tokens.measure(
        c,
        "gpt-4o",
        orjson.dumps(
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * 10_000}}
                        ],
                    }
                ]
            }
        ),
    )
    assert img.prompt >= tokens.IMAGE_TOKENS_MAX and not img.unbounded
    for part in (
        {"type": "file", "file": {"file_data": "data:application/pdf;base64,AAAA"}},
        {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
        {"type": "input_file", "file_id": "file-1"},
    ):
        m = tokens.measure(c, "gpt-4o", orjson.dumps({"messages": [{"role": "user", "content": [part]}]}))
        assert m.unbounded, part
    r = tokens.measure("/v1/responses", "gpt-4o", orjson.dumps({"prompt": {"id": "pmpt_1"}, "input": "x"}))
    assert r.unbounded
    # hosted tools are billed per call
    assert tokens.measure(
        "/v1/responses", "gpt-4o", orjson.dumps({"input": "x", "tools": [{"type": "web_search"}]})
    ).hosted_tools
    assert not tokens.measure(
        "/v1/responses",
        "gpt-4o",
        orjson.dumps({"input": "x", "tools": [{"type": "function", "name": "f", "parameters": {}}]}),
    ).hosted_tools
    # bodies that crashed counting before (red-team review): a number for messages, deep nesting
    assert tokens.measure(c, "gpt-4o", b'{"messages": 5}').prompt >= 0
    deep = b'{"prompt": ' + b"[" * 900 + b'"a"' + b"]" * 900 + b"}"
    assert tokens.measure("/v1/completions", "gpt-4o", deep).unbounded


ADVERSARIAL = [
    "hello world " * 50,
    "\u6f22\u5b57\u304b\u306a\u4ea4\u3058\u308a\u6587" * 40,  # CJK: 3 bytes a character
    "\U0001f600\U0001f9d1\u200d\U0001f680\U0001faf6\U0001f3fd" * 40,  # emoji and ZWJ sequences: 4 bytes
    "".join(chr(c) for c in range(0x4E00, 0x4E00 + 600, 7)),  # rare ideographs: byte-level merges fail
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
        encodings.load((name,))
        real = len(encodings._encodings[name].encode_ordinary(text))
        assert counted >= real, name


# --- issue 13: memory. The Python ranks are dropped after the build; each encoding is built once. ---

CORPUS = [
    *ADVERSARIAL,
    "Héllo wörld! 12345 tokens, spaces   and\nnewlines; code: def f(x): return x**2 # ünïcode 你好",
    "<|endoftext|> <|endofprompt|> <|fim_prefix|> plain text that looks special",
    "    indented\n\n\n\t\ttabs  \r\n trailing   \n" * 10,
    "1234567890 3.14159 -42 1e10 0x1F 000123 " * 20,
    "I'm we've they'LL you'D it's THEY'RE " * 20,
    'https://example.com/path?q=1&r=%20x#frag user@example.com {"k": [1, 2, {"n": null}]}',
    "Привет, мир! \u0393\u03b5\u03b9\u03ac \u03c3\u03bf\u03c5 \u03ba\u03cc\u03c3\u03bc\u03b5! مرحبا بالعالم שלום עולם "
    "こんにちは世界 안녕하세요 세계",  # Greek escaped: ruff's RUF001 reads its letters as Latin look-alikes
    "\ud800 lone surrogate and \udfff",  # tiktoken re-encodes these: counted, not refused
    "a" * 5000,
    "".join(chr(c) for c in range(32, 0x2000, 3)),
]


@pytest.fixture(scope="module")
def reference():
    """Each encoding built the plain tiktoken way, its Python ranks kept."""
    import base64
    import gzip

    import tiktoken

    out = {}
    for name in BOTH:
        with gzip.open(encodings._rank_file(name), "rb") as f:
            ranks = {base64.b64decode(t): int(r) for t, r in (line.split() for line in f if line.strip())}
        pat, special = encodings._SPECS[name]
        out[name] = tiktoken.Encoding(name=name, pat_str=pat, mergeable_ranks=ranks, special_tokens=special)
    return out


@pytest.mark.parametrize("name", BOTH)
def test_dropping_the_python_ranks_changes_no_count(name, reference):
    """limits/encodings.py drops tiktoken's Python copy of the ranks (its Rust core has its own): the tokens,
    hence every count, are those of an Encoding that keeps it, on every kind of text."""
    enc = encodings._encodings[name]
    assert enc._mergeable_ranks is None and reference[name]._mergeable_ranks is not None
    for text in CORPUS:
        assert enc.encode_ordinary(text) == reference[name].encode_ordinary(text), text[:40]
    model = "gpt-4o" if name == "o200k_base" else "gpt-4-turbo"
    tokens._counters.clear()
    for text in CORPUS:
        assert tokens.counter(model).count(text) == len(reference[name].encode_ordinary(text))


def test_each_encoding_is_built_once_per_process(monkeypatch):
    import threading
    import time

    built: list[str] = []

    def slow_build(name):
        built.append(name)
        time.sleep(0.2)  # wide enough for every caller to arrive while the first builds
        return object()

    monkeypatch.setattr(encodings, "_encodings", {})
    monkeypatch.setattr(tokens, "_counters", {})
    monkeypatch.setattr(encodings, "_build", slow_build)
    callers = [threading.Thread(target=encodings.load, args=(("cl100k_base",),)) for _ in range(4)]
    callers.append(threading.Thread(target=encodings.prebuild, args=("cl100k_base",)))
    for t in callers:
        t.start()
    for t in callers:
        t.join()
    assert built == ["cl100k_base"]
    encodings.load(("cl100k_base",))
    encodings.prebuild("cl100k_base")
    assert built == ["cl100k_base"]


def test_a_prebuild_that_fails_is_left_for_load_to_report(monkeypatch, caplog):
    def broken(name):
        raise FileNotFoundError(name)

    monkeypatch.setattr(encodings, "_encodings", {})
    monkeypatch.setattr(encodings, "_build", broken)
    encodings.prebuild()  # before logging is set up (`keyplane serve`): silent, and not recorded
    assert "o200k_base" not in encodings._encodings
    encodings.load()  # the billing feature's start: says why, then counts with the upper bound
    assert encodings._encodings["o200k_base"] is None and "tokenizer o200k_base unavailable" in caplog.text


def test_an_image_counts_what_its_model_may_bill() -> None:
    """gpt-4o-mini bills an image at up to 48,169 tokens (2,833 + 5,667 per tile, 8 tiles), under any of its names;
    other models at IMAGE_TOKENS_MAX."""
    img = {"type": "image_url", "image_url": {"url": "https://example.com/a.png", "detail": "high"}}
    body = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": [img, img]}]})
    for name in ("gpt-4o-mini", "gpt-4o-mini-2024-07-18", "openai/GPT-4o-mini", "ft:gpt-4o-mini-2024-07-18:acme::x1"):
        assert tokens.image_tokens(name) == 48_169, name
        m = tokens.measure("/v1/chat/completions", name, body)
        assert m.images == 2 and m.prompt >= 2 * 48_169, name
    for name in ("gpt-4o", "gpt-4.1-mini", "llava"):
        assert tokens.image_tokens(name) == tokens.IMAGE_TOKENS_MAX
        assert tokens.measure("/v1/chat/completions", name, body).prompt < 2 * 48_169


def test_an_item_given_by_id_without_its_content_is_unseen_input() -> None:
    """keyplane/items.py: an image generation call given by its id alone (the provider reads the stored image) is
    input the body does not show (the context window is reserved); the same item with its result is not."""
    by_id = {"type": "image_generation_call", "id": "ig_1"}
    whole = {**by_id, "result": "aGk=", "status": "completed"}
    for item, unseen in ((by_id, True), (whole, False), ({"type": "reasoning", "id": "rs_1", "summary": []}, True)):
        body = orjson.dumps({"model": "gpt-4o", "input": [{"role": "user", "content": "hi"}, item]})
        assert tokens.measure("/v1/responses", "gpt-4o", body).unbounded is unseen, item


def test_short_strings_are_counted_once_per_encoding_exactly_and_the_memory_is_bounded(monkeypatch):
    """Roles, part types and short contents recur in every request: counted once per encoding, then looked up (no
    call into tiktoken, which releases the GIL). The counts are the encoder's own, a string past SHORT_CHARS is
    always encoded, and the table never holds more than SHORT_ENTRIES strings."""
    import random

    monkeypatch.setattr(tokens, "_short_counts", {})
    monkeypatch.setattr(tokens, "SHORT_ENTRIES", 50)
    c = tokens.Counter("gpt-4o-mini")
    calls: list[str] = []
    core = c._core
    assert core is not None

    def spy(text: str) -> list[int]:
        calls.append(text)
        return core(text)

    c._core = spy
    rnd = random.Random(7)
    words = ["user", "assistant", "text", "hi", "a b c", "日本語のテキスト", "x" * tokens.SHORT_CHARS]
    for _ in range(200):
        w = rnd.choice(words)
        assert c.count(w) == len(core(w))
    assert sorted(calls) == sorted(words)  # each once
    other = tokens.Counter("gpt-4o")  # same encoding: same table
    other._core = spy
    assert other.count("assistant") == len(core("assistant")) and calls.count("assistant") == 1
    long = "y" * (tokens.SHORT_CHARS + 1)
    c.count(long)
    c.count(long)
    assert calls.count(long) == 2  # never kept
    for i in range(500):
        c.count(f"w{i}")
        assert len(tokens._short_counts["o200k_base"]) <= 50
    assert c.count("\ud800 lone") == len(tokens.encodings.get("o200k_base").encode_ordinary("\ud800 lone"))
