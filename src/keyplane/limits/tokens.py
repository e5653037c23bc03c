"""Prompt tokens counted at admission, with the model's own tokenizer.

The encodings come from the ``bpe-openai`` package, which ships the o200k_base and cl100k_base rank
files inside its wheel: they are handed to ``tiktoken.Encoding`` directly, so nothing is ever
downloaded at run time (tiktoken's own loader would fetch them from the internet). o200k_base
serves gpt-4o, gpt-4.1, gpt-5, o1/o3/o4 and the demo models; cl100k_base the older GPT-4/3.5 and the
text-embedding models; any other model gets the cheap estimate of one token per four bytes.
o200k_base is built at start-up; another encoding is built on a thread the first time a model needs
it, and the estimate stands in until it is ready (settle reconciles to the real usage anyway).

Chat prompts are counted the way OpenAI's cookbook does: 3 tokens per message, the role and content,
1 for a name, 3 to prime the reply. What cannot be known in advance (images, audio) is charged a
fixed amount; settle corrects the token buckets to the real usage anyway.
"""

from __future__ import annotations

import base64
import gzip
import importlib.util
import logging
import threading
from pathlib import Path
from typing import Any

import orjson

log = logging.getLogger("keyplane.limits")

_O200K = ("gpt-4o", "gpt-4.1", "gpt-4.5", "gpt-5", "o1", "o3", "o4", "chatgpt-4o", "omni-moderation", "codex-",
          "computer-use", "demo-")
_CL100K = ("gpt-4", "gpt-3.5", "gpt-35", "text-embedding-3", "text-embedding-ada")
IMAGE_TOKENS = 765  # one high-detail 512px tile set; low detail is 85
AUDIO_TOKENS = 1000

# The encodings' split patterns and special tokens, as tiktoken and bpe-openai define them.
_SPECS: dict[str, tuple[str, dict[str, int]]] = {
    "o200k_base": ("|".join([
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]), {"<|endoftext|>": 199_999, "<|endofprompt|>": 200_018}),
    "cl100k_base": (
        r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s""",  # noqa: E501
        {"<|endoftext|>": 100_257, "<|fim_prefix|>": 100_258, "<|fim_middle|>": 100_259, "<|fim_suffix|>": 100_260,
         "<|endofprompt|>": 100_276}),
}
# name -> tiktoken Encoding, or None when it could not be built. Process-wide: the tables are large
# and immutable. Written by the loader thread, read by the request path (a dict lookup).
_encodings: dict[str, Any] = {}
_loading: set[str] = set()
_lock = threading.Lock()


def encoding_name(model: str) -> str | None:
    if model.startswith(_O200K):
        return "o200k_base"
    if model.startswith(_CL100K):
        return "cl100k_base"
    return None


def _rank_file(name: str) -> Path:
    """The rank file shipped inside the bpe-openai wheel, found without importing the package (its
    native library maps ~70 MB that keyplane does not use)."""
    spec = importlib.util.find_spec("bpe_openai")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the bpe-openai package is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / f"{name}.tiktoken.gz"


def _build(name: str) -> Any:
    import tiktoken

    pat_str, special = _SPECS[name]
    ranks: dict[bytes, int] = {}
    with gzip.open(_rank_file(name), "rb") as f:
        for line in f:
            if line.strip():
                token, rank = line.split()
                ranks[base64.b64decode(token)] = int(rank)
    enc = tiktoken.Encoding(name=name, pat_str=pat_str, mergeable_ranks=ranks, special_tokens=special)
    # tiktoken keeps the Python dict only for pickling; its Rust core holds its own copy. Dropping it
    # saves ~20 MB per encoding.
    enc._mergeable_ranks = None
    return enc


def load(names: tuple[str, ...] = ("o200k_base",)) -> None:
    """Build encodings now (about half a second each; call it off the event loop)."""
    for name in names:
        if name in _encodings:
            continue
        try:
            enc = _build(name)
        except Exception as e:  # the package or its data missing: fall back to the estimate
            log.warning("tokenizer %s unavailable (%s); estimating 4 bytes per token", name, type(e).__name__)
            enc = None
        _encodings[name] = enc
        _counters.clear()  # counters made before the encoding was there used the estimate


def _load_in_background(name: str) -> None:
    """First use of an encoding that is not loaded: build it on a thread, estimate meanwhile."""
    with _lock:
        if name in _encodings or name in _loading:
            return
        _loading.add(name)

    def run() -> None:
        try:
            load((name,))
        finally:
            _loading.discard(name)

    threading.Thread(target=run, name=f"keyplane-tokenizer-{name}", daemon=True).start()


def estimate(text: str) -> int:
    return (len(text.encode("utf-8", "surrogatepass")) + 3) // 4


class Counter:
    """Counts the prompt of one model; ``count`` is the hot function."""

    __slots__ = ("_encode",)

    def __init__(self, model: str) -> None:
        name = encoding_name(model)
        enc = _encodings.get(name) if name else None
        if name and name not in _encodings:
            _load_in_background(name)
        self._encode = enc.encode_ordinary if enc is not None else None

    def count(self, text: str) -> int:
        if not text:
            return 0
        if self._encode is None:
            return estimate(text)
        return len(self._encode(text))

    def content(self, v: Any) -> int:
        """A message content, a responses input item, a prompt: strings, parts, token arrays."""
        if isinstance(v, str):
            return self.count(v)
        if isinstance(v, list):
            if v and isinstance(v[0], int):
                return len(v)  # token ids
            return sum(self.content(x) for x in v)
        if isinstance(v, dict):
            t = v.get("type")
            if t in ("image_url", "input_image", "image"):
                return IMAGE_TOKENS
            if t in ("input_audio", "audio"):
                return AUDIO_TOKENS
            n = 0
            for k in ("text", "content", "input_text", "output", "arguments"):
                if k in v:
                    n += self.content(v[k])
            return n
        return 0

    def chat(self, req: dict[str, Any]) -> int:
        n = 3
        for m in req.get("messages") or ():
            if not isinstance(m, dict):
                continue
            n += 3 + self.count(str(m.get("role") or "")) + self.content(m.get("content"))
            if m.get("name"):
                n += 1 + self.count(str(m["name"]))
            if m.get("tool_calls"):
                n += self.count(orjson.dumps(m["tool_calls"]).decode())
        for k in ("tools", "functions", "response_format"):
            if req.get(k):
                n += self.count(orjson.dumps(req[k]).decode())
        return n

    def responses(self, req: dict[str, Any]) -> int:
        n = self.content(req.get("instructions"))
        inp = req.get("input")
        if isinstance(inp, list):
            for item in inp:
                n += 3 + self.content(item)
        else:
            n += self.content(inp)
        if req.get("tools"):
            n += self.count(orjson.dumps(req["tools"]).decode())
        return n


_counters: dict[str, Counter] = {}


def counter(model: str) -> Counter:
    c = _counters.get(model)
    if c is None:
        c = Counter(model)
        if len(_counters) < 10_000:  # bounded: model names come from clients
            _counters[model] = c
    return c


def measure(endpoint: str, model: str, body: bytes) -> tuple[int, int]:
    """(prompt tokens, number of choices ``n``) of a request body."""
    try:
        req = orjson.loads(body)
    except orjson.JSONDecodeError:
        return (len(body) + 3) // 4, 1
    if not isinstance(req, dict):
        return 0, 1
    n = req.get("n")
    n = n if isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= 128 else 1
    c = counter(model)
    if endpoint == "/v1/chat/completions":
        return c.chat(req), n
    if endpoint == "/v1/responses":
        return c.responses(req), 1
    if endpoint == "/v1/completions":
        return c.content(req.get("prompt")), n
    if endpoint == "/v1/embeddings":
        return c.content(req.get("input")), 1
    return c.content(req.get("input") or req.get("prompt") or req.get("messages")), 1


def prompt_tokens(endpoint: str, model: str, body: bytes) -> int:
    """The prompt tokens of a request body (0 when it is not a JSON object)."""
    return measure(endpoint, model, body)[0]
