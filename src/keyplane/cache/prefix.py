"""The prompt prefix of a request, as chained block hashes (what prefix-affinity routing keys on).

Text is laid out in the order chat templates render it: the model, the tools, then each message's
role and text parts (an image or audio part by a hash of its data), so turn N+1 of a conversation
extends turn N and shares its blocks. ``prompt_cache_key`` (or, without it, the legacy ``user``) seeds
the chain with the model, as the platform combines it with the prefix hash (reference "Prompt
caching"): the same text under two keys is two prefixes.

Blocks are ``block_chars`` bytes of that text; block i's hash covers blocks 0..i (each is seeded by
the one before), so two prompts share block i's hash only if they share everything up to it. Only
full blocks are hashed, and only the first ``max_chars`` (a few thousand tokens: past that, two
prompts are alike enough for routing). xxh3 keeps it to well under a microsecond a block; its
hashes are the same in every process, so several keyplane instances agree on them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec
import xxhash

_xxh = xxhash.xxh3_64_intdigest


class _Message(msgspec.Struct):
    role: str = ""
    content: Any = None
    name: str | None = None
    tool_calls: Any = None
    tool_call_id: str | None = None
    # Responses API input items
    type: str | None = None
    call_id: str | None = None
    arguments: str | None = None
    output: Any = None


class _Body(msgspec.Struct):
    model: str | None = None
    tools: msgspec.Raw = msgspec.Raw()  # kept as the bytes sent: no need to walk them
    functions: msgspec.Raw = msgspec.Raw()
    messages: list[_Message] | None = None
    instructions: str | None = None
    input: str | list[_Message] | None = None
    prompt: Any = None
    prompt_cache_key: str | None = None
    user: str | None = None


_decoder = msgspec.json.Decoder(_Body)


@dataclass(slots=True)
class Prefix:
    """One request's prefix: the chained hashes of its full blocks, and the size of the whole prompt."""

    hashes: list[int]
    ring_key: int  # where consistent hashing places it: its first block (or the whole text when shorter)
    total_chars: int  # length of the whole canonical prompt, past the hashed part too (an estimate of its size)


def _media(kind: str, data: Any) -> str:
    raw = data if isinstance(data, str) else msgspec.json.encode(data).decode()
    return f"<{kind}:{_xxh(raw.encode()):016x}>"


def _part(p: Any, out: list[str]) -> None:
    if isinstance(p, str):
        out.append(p)
    elif isinstance(p, dict):
        t = p.get("type")
        text = p.get("text")
        if isinstance(text, str):
            out.append(text)
        elif t in ("image_url", "input_image"):
            img = p.get("image_url") or p.get("file_id") or p.get("file_url")
            out.append(_media("image", img.get("url") if isinstance(img, dict) else img))
        elif t in ("input_audio", "file", "input_file"):
            out.append(_media(t, p.get(t) or p.get("file_data") or p.get("file_id")))
        elif p:
            out.append(msgspec.json.encode(p).decode())
    elif isinstance(p, list):
        for x in p:
            _part(x, out)


class _Text:
    """Collects the canonical text up to ``limit`` characters, and counts the length of all of it."""

    __slots__ = ("limit", "n", "parts", "total")

    def __init__(self, limit: int) -> None:
        self.parts: list[str] = []
        self.n = 0
        self.total = 0
        self.limit = limit

    def add(self, s: str) -> None:
        self.total += len(s)
        if self.n < self.limit:
            self.parts.append(s)
            self.n += len(s)

    def message(self, m: _Message) -> None:
        if m.type is not None and m.type not in ("message",):  # responses items: calls and their outputs
            self.add(f"\x1e{m.type}\x1f{m.call_id or ''}{m.name or ''}{m.arguments or ''}")
            if m.output is not None:
                out: list[str] = []
                _part(m.output, out)
                self.add("".join(out))
            return
        self.add(f"\x1e{m.role}\x1f" if m.name is None else f"\x1e{m.role}:{m.name}\x1f")
        if m.tool_call_id:
            self.add(m.tool_call_id + "\x1f")
        if m.content is not None:
            if isinstance(m.content, str):
                self.add(m.content)
            else:
                out = []
                _part(m.content, out)
                for s in out:
                    self.add(s)
        if m.tool_calls:
            self.add(msgspec.json.encode(m.tool_calls).decode())


def canonical(body: bytes, max_chars: int) -> tuple[str, str, int]:
    """(text up to about max_chars, routing key, whole length) of a chat/completions/responses body.

    Raises msgspec.DecodeError / ValidationError for bodies that are not such a request.
    """
    req = _decoder.decode(body)
    t = _Text(max_chars)
    t.add(f"\x1dmodel\x1f{req.model or ''}")
    if req.tools:
        t.add("\x1dtools\x1f" + bytes(req.tools).decode("utf-8", "replace"))
    if req.functions:
        t.add("\x1dfunctions\x1f" + bytes(req.functions).decode("utf-8", "replace"))
    if req.instructions:
        t.add("\x1esystem\x1f" + req.instructions)
    if req.messages:
        for m in req.messages:
            t.message(m)
    if req.input is not None:
        if isinstance(req.input, str):
            t.add("\x1euser\x1f" + req.input)
        else:
            for m in req.input:
                t.message(m)
    if req.prompt is not None:
        p = req.prompt[0] if isinstance(req.prompt, list) and req.prompt else req.prompt
        t.add("\x1eprompt\x1f" + (p if isinstance(p, str) else msgspec.json.encode(p).decode()))
    key = req.prompt_cache_key if req.prompt_cache_key is not None else (req.user or "")
    return "".join(t.parts)[:max_chars], key, t.total


def seed(model: str, cache_key: str) -> int:
    return _xxh(f"{model}\x00{cache_key}".encode())


def block_hashes(text: str, chain_seed: int, block_chars: int) -> tuple[list[int], int]:
    """(chained hashes of the full blocks of ``text``, ring key)."""
    data = text.encode()
    n = len(data) - len(data) % block_chars
    out: list[int] = []
    h = chain_seed
    for i in range(0, n, block_chars):
        h = _xxh(data[i : i + block_chars], h)
        out.append(h)
    ring = out[0] if out else _xxh(data, chain_seed)
    return out, ring


def of_body(body: bytes, model: str, max_chars: int, block_chars: int) -> Prefix:
    text, key, total = canonical(body, max_chars)
    hashes, ring = block_hashes(text, seed(model, key), block_chars)
    return Prefix(hashes, ring, total)
