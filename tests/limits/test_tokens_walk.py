"""Counter.scan's walk (limits/tokens.py) counts exactly what the stack-based walk it replaced counted: the
same tokens and the same ``unbounded`` flag for any JSON value, keys counted or not, past MAX_DEPTH too; plain
text messages (the walk's shortcut for a long conversation) and values that only look like them included."""

from __future__ import annotations

import contextlib
import random
from typing import Any

import orjson
import pytest

from keyplane.limits import encodings, tokens
from keyplane.limits.tokens import _IMAGE_TYPES, _UNSEEN_TYPES, MAX_DEPTH, Scan


@pytest.fixture(scope="module", autouse=True)
def loaded():
    encodings.load(("o200k_base",))


def reference_scan(c: tokens.Counter, v: Any, scan: Scan | None = None, keys: bool = False) -> Scan:
    """The walk as it was (an explicit stack), kept here as the reference."""
    scan = scan or Scan()
    before = scan.tokens
    stack: list[tuple[Any, int]] = [(v, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, str):
            scan.tokens += c.count(node)
        elif isinstance(node, bool) or node is None:
            continue
        elif isinstance(node, int | float):
            scan.tokens += c.count(str(node))  # a number's text (a schema's enum is no token ids)
        elif depth > MAX_DEPTH:
            scan.unbounded = True
        elif isinstance(node, list):
            stack.extend((x, depth + 1) for x in node)
        elif isinstance(node, dict):
            t = node.get("type")
            if not isinstance(t, str):
                t = None
            if t in _IMAGE_TYPES:
                scan.tokens += c.image  # its model's image_tokens (the walk as it was: IMAGE_TOKENS_MAX for all)
                continue
            if t in _UNSEEN_TYPES or any(k in node for k in ("file_id", "file_url", "file_data")):
                scan.unbounded = True
                continue
            if keys:
                scan.tokens += sum(c.count(k) for k in node if isinstance(k, str))
            stack.extend((x, depth + 1) for x in node.values())  # every value, ids and enums too
    if keys and scan.tokens > before:  # a schema: at least its JSON text (when orjson writes it)
        with contextlib.suppress(orjson.JSONEncodeError, TypeError):
            scan.tokens = before + max(scan.tokens - before, c.count(orjson.dumps(v).decode()))
    return scan


def _value(rng: random.Random, depth: int) -> Any:
    r = rng.random()
    if depth > 6 or r < 0.35:
        return rng.choice(
            ["", "hello world", "x" * 129, "\u4f60\u597d", "a\ud800b", 1, 2.5, True, False, None, "image_url", "file"]
        )
    if r < 0.45 and rng.random() < 0.3:  # a plain text message, or one that only looks like one
        m: dict[str, Any] = {"role": rng.choice(["user", "", 1, None]), "content": rng.choice(["hi", "x" * 70, [], 2])}
        if rng.random() < 0.2:
            m[rng.choice(["name", "type", "file_id"])] = rng.choice(["n", "image_url", "file"])
        return m
    if r < 0.55:
        if rng.random() < 0.2:
            return [rng.randint(0, 9) for _ in range(rng.randint(1, 4))] + rng.choice([[], [True], ["x"]])
        return [_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    keys = ["type", "id", "role", "content", "text", "format", "detail", "file_id", "image", "description", "call_id"]
    d: dict[str, Any] = {}
    for k in rng.sample(keys, rng.randint(0, 5)):
        d[k] = _value(rng, depth + 1)
    if "type" in d and rng.random() < 0.5:
        d["type"] = rng.choice(["input_image", "image_url", "input_audio", "item_reference", "text", "function"])
    return d


@pytest.mark.parametrize("model", ["gpt-4o-mini", "llama-3-unknown"])
def test_same_count_as_the_stack_walk(model: str) -> None:
    c = tokens.Counter(model)
    rng = random.Random(7)
    for _ in range(3000):
        v = _value(rng, 0)
        for keys in (False, True):
            a, b = c.scan(v, keys=keys), reference_scan(c, v, keys=keys)
            assert (a.tokens, a.unbounded) == (b.tokens, b.unbounded), v


def test_past_max_depth_is_unbounded_as_before() -> None:
    c = tokens.Counter("gpt-4o-mini")
    for depth in (MAX_DEPTH - 1, MAX_DEPTH, MAX_DEPTH + 1, MAX_DEPTH + 5, 500):
        leaves = ("text", [1, 2], {"content": "x"}, {"role": "user", "content": "x"}, [{"role": "a", "content": "b"}])
        for leaf in leaves:
            v: Any = leaf
            for _ in range(depth):
                v = {"content": [v]}
            a, b = c.scan(v), reference_scan(c, v)
            assert (a.tokens, a.unbounded) == (b.tokens, b.unbounded), depth


def test_lone_surrogates_count_as_tiktoken_counts_them() -> None:
    enc = encodings._encodings["o200k_base"]
    c = tokens.Counter("gpt-4o")
    for text in ("a\ud800b", "\udfff", "ok \ud83d\ude00 \ud83d"):
        assert c.count(text) == len(enc.encode_ordinary(text))


@pytest.mark.parametrize("lists", [MAX_DEPTH - 1, MAX_DEPTH, MAX_DEPTH + 1])
def test_a_plain_message_past_max_depth_is_unbounded_as_before(lists: int) -> None:
    """The shortcut for a plain text message stops where the walk does: a message in a list at MAX_DEPTH is past it."""
    c = tokens.Counter("gpt-4o-mini")
    v: Any = [{"role": "user", "content": "hello there"}]
    for _ in range(lists):
        v = [v]
    a, b = c.scan(v), reference_scan(c, v)
    assert (a.tokens, a.unbounded) == (b.tokens, b.unbounded)
    assert a.unbounded is (lists >= MAX_DEPTH)
