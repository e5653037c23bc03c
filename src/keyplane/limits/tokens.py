"""Prompt tokens counted at admission, with the model's own tokenizer.

The encodings come from the ``bpe-openai`` package, which ships the o200k_base and cl100k_base rank
files inside its wheel: they are handed to ``tiktoken.Encoding`` directly, so nothing is ever
downloaded at run time (tiktoken's own loader would fetch them from the internet). o200k_base
serves gpt-4o, gpt-4.1, gpt-5, o1/o3/o4 and the demo models; cl100k_base the older GPT-4/3.5 and the
text-embedding models; any other model gets the cheap estimate of one token per four bytes.

Chat prompts are counted the way OpenAI's cookbook does: 3 tokens per message, the role and content,
1 for a name, 3 to prime the reply. What cannot be known in advance (images, audio) is charged a
fixed amount; settle corrects the token buckets to the real usage anyway.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import orjson

log = logging.getLogger("keyplane.limits")

_O200K = ("gpt-4o", "gpt-4.1", "gpt-4.5", "gpt-5", "o1", "o3", "o4", "chatgpt-4o", "omni-moderation", "codex-",
          "computer-use", "demo-")
_CL100K = ("gpt-4", "gpt-3.5", "gpt-35", "text-embedding-3", "text-embedding-ada")
IMAGE_TOKENS = 765  # one high-detail 512px tile set; low detail is 85
AUDIO_TOKENS = 1000
_encodings: dict[str, Any] = {}  # process-wide: the rank tables are large and immutable


def encoding_name(model: str) -> str | None:
    if model.startswith(_O200K):
        return "o200k_base"
    if model.startswith(_CL100K):
        return "cl100k_base"
    return None


def load(names: tuple[str, ...] = ("o200k_base", "cl100k_base")) -> None:
    """Build the encodings (about a second for both; done once per process, off the request path)."""
    for name in names:
        if name in _encodings:
            continue
        try:
            import tiktoken

            # bpe-openai reads its data (at import) with a deprecated importlib call: not our warning to raise.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                from bpe_openai import registry

                spec = getattr(registry, name)()
            _encodings[name] = tiktoken.Encoding(name=spec["name"], pat_str=spec["pat_str"],
                                                 mergeable_ranks=spec["mergeable_ranks"],
                                                 special_tokens=spec["special_tokens"])
        except Exception as e:  # the package or its data missing: fall back to the estimate
            log.warning("tokenizer %s unavailable (%s); estimating 4 bytes per token", name, type(e).__name__)
            _encodings[name] = None
    _counters.clear()  # counters made before the encodings were there used the estimate


def estimate(text: str) -> int:
    return (len(text.encode("utf-8", "surrogatepass")) + 3) // 4


class Counter:
    """Counts the prompt of one model; ``count`` is the hot function."""

    __slots__ = ("_encode",)

    def __init__(self, model: str) -> None:
        name = encoding_name(model)
        enc = _encodings.get(name) if name else None
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
