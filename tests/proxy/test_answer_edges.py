"""An Images API answer relayed unread: its usage is read off its first and last bytes (proxy/usage.AnswerEdges),
wherever the answer puts it, and text inside a JSON string is never taken for it."""

from __future__ import annotations

import base64
import os

import orjson

from keyplane.proxy.usage import AnswerEdges, image_tokens

USAGE = {"input_tokens": 1550, "output_tokens": 272, "input_tokens_details": {"text_tokens": 50, "image_tokens": 1500}}


def _fed(body: bytes, chunk: int) -> AnswerEdges:
    e = AnswerEdges()
    for i in range(0, len(body), chunk):
        e.feed(body[i : i + chunk])
    return e


def test_the_usage_at_the_end_of_a_large_answer_in_any_chunking():
    image = base64.b64encode(os.urandom(300_000)).decode()
    body = orjson.dumps({"created": 1, "data": [{"b64_json": image}], "usage": USAGE})
    for chunk in (1, 7, 4096, 65_536, len(body)):
        u = _fed(body, chunk).usage()
        assert u is not None and u.numbers() == (1550, 0, 272), chunk
        t = image_tokens(u)
        assert t is not None and (t.text_in, t.other_in, t.other_out) == (50, 1500, 272)


def test_the_usage_at_the_start_and_in_a_streamed_answers_last_event():
    head_first = orjson.dumps({"usage": USAGE, "data": [{"b64_json": "A" * 100_000}]})
    assert _fed(head_first, 4096).usage() is not None
    events = (
        b"".join(
            b"event: image_generation.partial_image\ndata: " + orjson.dumps({"b64_json": "B" * 50_000}) + b"\n\n"
            for _ in range(3)
        )
        + b"event: image_generation.completed\ndata: "
        + orjson.dumps({"type": "x", "usage": USAGE})
        + b"\n\n"
    )
    u = _fed(events, 8192).usage()
    assert u is not None and u.numbers() == (1550, 0, 272)


def test_text_that_spells_a_usage_is_not_one():
    """A revised prompt (the model's words, from the caller's prompt) that spells a usage object is a JSON string:
    its quotes are escaped, so no ``"usage"`` key is found in it; an answer without usage has none."""
    fake = '"usage": {"input_tokens": 0, "output_tokens": 0}'
    body = orjson.dumps({"data": [{"b64_json": "C" * 40_000, "revised_prompt": fake}]})
    assert _fed(body, 1000).usage() is None
    body = orjson.dumps({"data": [{"revised_prompt": fake}], "usage": USAGE})
    u = _fed(body, 10).usage()
    assert u is not None and u.numbers() == (1550, 0, 272)
