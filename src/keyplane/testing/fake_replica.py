"""A fake upstream with a prompt cache: an LRU of prefix blocks that reports cached_tokens, like vLLM.

For tests of prefix-affinity routing: each instance is one replica. Its blocks are its own (32
characters of the prompt as it renders it, ChatML), not keyplane's, so routing is tested against a
server that only behaves like a cache. Answers name the replica in ``system_fingerprint``
(``fp_<name>``), and ``served`` counts the chat/completions requests it answered.

    fake = FakeReplica("r1", cache_tokens=4096).start_in_thread()
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from typing import Any

from keyplane.testing import answers
from keyplane.testing.fake_upstream import Behaviour, FakeUpstream

BLOCK_CHARS = 32  # 8 of the fake's tokens (answers.count_tokens: four characters a token)


def render(req: dict[str, Any]) -> str:
    """The prompt as this server sees it: ChatML over answers.input_text's view of each message."""
    out = []
    for m in req.get("messages") or []:
        out.append(f"<|im_start|>{m.get('role', '')}\n{answers.input_text({'messages': [m]})}<|im_end|>\n")
    for k in ("prompt", "input"):
        if k in req:
            out.append(answers.input_text({k: req[k]}))
    return "".join(out)


class FakeReplica(FakeUpstream):
    def __init__(self, name: str, cache_tokens: int = 65_536, **kw: Any) -> None:
        super().__init__(**kw)
        self.name = name
        self.capacity = max(1, cache_tokens * 4 // BLOCK_CHARS)  # in blocks
        self.cache: OrderedDict[int, None] = OrderedDict()
        self.served = 0
        self.cached_reported: list[int] = []

    def reset(self) -> None:
        super().reset()
        self.cache.clear()
        self.served = 0
        self.cached_reported = []

    def _lookup(self, text: str) -> int:
        """Cached tokens of ``text`` (its leading blocks held); the cache then holds all of its blocks."""
        blocks = []
        h = 0
        for i in range(0, len(text) - len(text) % BLOCK_CHARS, BLOCK_CHARS):
            h = hash((h, text[i : i + BLOCK_CHARS]))
            blocks.append(h)
        hit = 0
        for b in blocks:
            if b not in self.cache:
                break
            hit += 1
        for b in reversed(blocks):
            if b in self.cache:
                self.cache.move_to_end(b)
            else:
                self.cache[b] = None
        while len(self.cache) > self.capacity:
            self.cache.popitem(last=False)
        return hit * BLOCK_CHARS // 4

    def _route(self, method: str, path: str, data: dict[str, Any], b: Behaviour, rid: str) -> Any:
        if method == "POST" and path in ("/v1/chat/completions", "/v1/completions", "/v1/responses"):
            cached = self._lookup(render(data))
            self.served += 1
            self.cached_reported.append(cached)
            b = dataclasses.replace(b, cached_tokens=cached)
            out = super()._route(method, path, data, b, rid)
            if isinstance(out, dict) and "system_fingerprint" in out:
                out["system_fingerprint"] = f"fp_{self.name}"
            return out
        return super()._route(method, path, data, b, rid)
