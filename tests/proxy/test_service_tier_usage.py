"""The tier that served a request, read in the same decode as its usage (proxy/usage.py, proxy/sse.py): billing
settles at it (docs/limits-and-billing.md "Service tiers")."""

from __future__ import annotations

import orjson

from keyplane.proxy import sse
from keyplane.proxy.usage import from_body

USAGE = {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}


def _sse(obj: dict[str, object], event: str | None = None) -> bytes:
    head = f"event: {event}\n".encode() if event else b""
    return head + b"data: " + orjson.dumps(obj) + b"\n\n"


def _tier(answer: dict[str, object]) -> str | None:
    u = from_body(orjson.dumps(answer))
    assert u is not None
    return u.service_tier


def test_a_whole_answer_says_its_tier():
    assert _tier({"usage": USAGE, "service_tier": "priority"}) == "priority"
    assert _tier({"usage": USAGE, "service_tier": None}) is None
    assert _tier({"usage": USAGE}) is None


def test_a_chat_stream_says_its_tier_in_the_usage_chunk():
    relay = sse.StreamRelay(sse.CHAT, strip_usage=True)
    chunk = {"object": "chat.completion.chunk", "service_tier": "priority"}
    out = relay.feed(_sse({**chunk, "choices": [{"delta": {"content": "hi"}}], "usage": None}))
    out += relay.feed(_sse({**chunk, "choices": [], "usage": USAGE}) + b"data: [DONE]\n\n")
    assert relay.usage is not None and relay.usage.service_tier == "priority"
    assert relay.usage.numbers() == (3, 0, 5)
    assert b'"usage":{' not in out  # the usage chunk the client did not ask for is still dropped


def test_a_responses_stream_says_its_tier_in_response_completed():
    relay = sse.StreamRelay(sse.RESPONSES, strip_usage=False)
    usage = {"input_tokens": 3, "output_tokens": 5, "total_tokens": 8}
    relay.feed(_sse({"type": "response.output_text.delta", "delta": "hi"}, "response.output_text.delta"))
    relay.feed(
        _sse(
            {"type": "response.completed", "response": {"usage": usage, "service_tier": "flex", "output": []}},
            "response.completed",
        )
    )
    assert relay.usage is not None and relay.usage.service_tier == "flex"
