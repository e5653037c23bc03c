"""The canonical prefix: turn N+1 extends turn N; cache keys and models separate prefixes."""

from __future__ import annotations

import orjson
import pytest

from keyplane.cache import prefix

SYSTEM = "You are a careful assistant. " * 20
TOOLS = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]


def body(messages, **kw) -> bytes:
    return orjson.dumps({"model": "m", "messages": messages, **kw})


def hashes(b: bytes, model: str = "m") -> list[int]:
    return prefix.of_body(b, model, 8192, 64).hashes


def test_next_turn_extends_the_previous_one():
    turn1 = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "What is a prefix cache? " * 4}]
    turn2 = [
        *turn1,
        {"role": "assistant", "content": "A cache of computed attention."},
        {"role": "user", "content": "And why route on it?"},
    ]
    h1, h2 = hashes(body(turn1, tools=TOOLS)), hashes(body(turn2, tools=TOOLS))
    assert len(h1) > 5 and h2[: len(h1)] == h1
    # Settings that do not change the prompt do not change the prefix.
    assert hashes(body(turn1, tools=TOOLS, temperature=0, max_tokens=9)) == h1


def test_text_parts_and_strings_render_alike_and_images_by_hash():
    text = [{"role": "user", "content": SYSTEM}]
    parts = [{"role": "user", "content": [{"type": "text", "text": SYSTEM}]}]
    assert hashes(body(text)) == hashes(body(parts))
    img = "data:image/png;base64," + "A" * 100_000
    a = prefix.canonical(body([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": img}}]}]), 8192)[
        0
    ]
    assert "AAAA" not in a and "<image:" in a and len(a) < 200


def test_tools_and_model_come_first():
    m = [{"role": "user", "content": SYSTEM}]
    assert hashes(body(m, tools=TOOLS))[0] != hashes(body(m))[0]
    assert hashes(body(m), "m")[0] != hashes(body(m), "other")[0]


@pytest.mark.parametrize("field", ["prompt_cache_key", "user"])
def test_cache_key_is_combined_into_the_hash(field):
    m = [{"role": "user", "content": SYSTEM}]
    assert hashes(body(m, **{field: "a"}))[0] != hashes(body(m, **{field: "b"}))[0]
    # prompt_cache_key wins over the legacy user field
    assert hashes(body(m, prompt_cache_key="k", user="a")) == hashes(body(m, prompt_cache_key="k", user="b"))


def test_capped_and_whole_length_counted():
    long = [{"role": "user", "content": "x" * 50_000}]
    p = prefix.of_body(body(long), "m", 4096, 64)
    assert len(p.hashes) == 4096 // 64 and p.total_chars > 50_000


def test_responses_and_completions_bodies():
    r = orjson.dumps(
        {
            "model": "m",
            "instructions": SYSTEM,
            "input": [
                {"role": "user", "content": [{"type": "input_text", "text": "hi " * 40}]},
                {"type": "function_call_output", "call_id": "c1", "output": "42"},
            ],
        }
    )
    assert len(prefix.of_body(r, "m", 8192, 64).hashes) > 5
    c = orjson.dumps({"model": "m", "prompt": SYSTEM})
    assert len(prefix.of_body(c, "m", 8192, 64).hashes) > 5
    assert prefix.of_body(orjson.dumps({"model": "m", "input": "short"}), "m", 8192, 64).hashes == []


def test_hashes_do_not_depend_on_the_process():
    # xxh3 is specified bit for bit (unlike Python's hash(), salted per process): a fixed value here
    # means every keyplane instance, on any host, computes the same blocks.
    assert prefix.block_hashes("a" * 64, 0, 64)[0] == [0x2DDDCEF07D26EE8C]
